//! shoal-manager: the `shoal` CLI's library, in folders that follow the data: [`input`] (FVCOM
//! reader, run configuration, release), [`output`] (trajectory writer, checkpoints, plots),
//! [`station`] (the fleet: membership, check-ups, the status page), [`run`] (preparation, the
//! one schedule, and the two ways of stepping it: in this process or on the zenoh fabric) and
//! [`tools`] (synth, bench, inspect, demo, the link relay), with [`nc`] and [`fault`] beneath
//! them all and [`cli`] above.
//!
//! Imports run one way, down this list: `input` uses none of the others; `output` uses
//! `input`; `station` uses `input` and `output`; `run` uses those three; `tools` and `cli` use
//! any. Every import names its folder (`crate::input::config`, not an alias), and the test
//! `imports_run_one_way` below reads the sources to keep it so.

pub mod cli;
pub mod fault;
pub mod input;
pub mod nc;
pub mod output;
pub mod run;
pub mod station;
pub mod tools;

#[cfg(test)]
mod layers;
