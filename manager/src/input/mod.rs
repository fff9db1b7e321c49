//! What a run reads: the FVCOM files, the run configuration, the release, and FVCOM's clock.

pub mod config;
pub mod crs;
pub mod fvcom;
pub mod identity;
pub mod release;
pub mod sites;
pub mod timefmt;
