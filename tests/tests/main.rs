//! The workspace's integration tests, one binary: real NetCDF files written by `shoal synth`'s
//! code and the real SFBOFS subset, real runs through the manager, output read back.

mod analytic;
mod bad_input;
mod boundaries;
mod determinism;
mod diffusion;
mod fabric;
mod faults;
mod fleet;
mod geometry;
mod gpu;
mod jobs;
mod larvae;
mod output;
mod peer;
mod plots;
mod reader;
mod real_data;
mod status;
