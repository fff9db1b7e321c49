//! shoal-common: mesh geometry, FVCOM conventions, particle state and the kernels that move
//! particles. It knows nothing of NetCDF, zenoh, threads or the clock: every function takes its
//! data and time as arguments, so it is testable alone and builds for any target.

pub mod behaviour;
pub mod fields;
pub mod kernel;
pub mod keys;
pub mod mesh;
pub mod paged;
pub mod particles;
pub mod projection;
pub mod rng;
pub mod simd;
pub mod snapshot;
pub mod wire;

pub use fields::{FieldLevel, RawSlice, Window};
pub use kernel::{advance, Happiness, Integrator, StepParams, Tally, VerticalMixing};
pub use mesh::{Mesh, MeshInput, MeshNote};
pub use particles::{status, Particles};
pub use projection::TransverseMercator;
