//! shoal-manager: the `shoal` CLI's library, in folders that follow the data: [`input`] (FVCOM
//! reader, run configuration, release), [`run`] (preparation, the one schedule, and the two ways
//! of stepping it: in this process or on the zenoh fabric), [`output`] (trajectory writer,
//! checkpoints, plots) and [`tools`] (synth, bench, inspect, demo, doctor and pi).

pub mod cli;
pub mod input;
pub mod nc;
pub mod output;
pub mod run;
pub mod tools;

// The modules by their short names, as the crate's users and its own code name them.
pub use input::{config, crs, fvcom, release, sites, timefmt};
pub use output::plot;
pub use run::partition;
pub use tools::{bench, demo, fleet, inspect, synth};
