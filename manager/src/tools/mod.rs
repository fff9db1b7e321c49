//! The commands around a run: synthetic FVCOM files, benchmarks, inspection, the demo, and the
//! fleet's checks (`shoal doctor`, `shoal pi`).

pub mod bench;
pub mod demo;
pub mod fleet;
pub mod inspect;
pub mod synth;
