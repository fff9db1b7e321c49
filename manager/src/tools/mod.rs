//! The commands around a run: synthetic FVCOM files, benchmarks, inspection, the demo, and a
//! delaying relay for benchmarks over simulated links (`shoal link`). (The fleet's checks,
//! `shoal doctor` and `shoal pi`, are the station's: `crate::station::fleet`.)

pub mod bench;
pub mod demo;
pub mod inspect;
pub mod jobs;
pub mod link;
pub mod synth;
