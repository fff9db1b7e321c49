//! shoal-manager: the `shoal` CLI's library. Reads FVCOM NetCDF ([`fvcom`]), writes synthetic
//! FVCOM ([`synth`]) and CF trajectories ([`output`]), and drives runs ([`run`]): on the zenoh
//! fabric ([`fabric`]) with in-process or remote node agents, or alone in this process; checks
//! the fleet ([`fleet`]: `shoal doctor`, `shoal pi`).

pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fabric;
pub mod fleet;
pub mod fvcom;
pub mod inspect;
pub mod output;
pub mod partition;
pub mod plot;
pub mod release;
pub mod run;
pub mod synth;
pub mod timefmt;
