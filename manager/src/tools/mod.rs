//! The commands around a run: synthetic FVCOM files, benchmarks, inspection, the demo, and the
//! fleet's checks (`shoal doctor`, `shoal pi`), and a delaying relay for benchmarks over
//! simulated links (`shoal link`).

pub mod bench;
pub mod demo;
pub mod fleet;
pub mod inspect;
pub mod link;
pub mod synth;
