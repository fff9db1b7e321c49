//! The one door to the NetCDF library: `open`, `create` and `append` as the `netcdf` crate has
//! them, each first silencing HDF5's own error printing on the calling thread.
//!
//! Why per thread: Debian's HDF5 (and most distributions') is built thread-safe, and a
//! thread-safe HDF5 keeps one error stack, with its own "print automatically" switch, per
//! thread. netcdf-c turns printing off once, on the thread that first initialises it; any other
//! thread (a test harness's, the writer's, a field server's) then gets HDF5's default, which
//! prints a whole stack to stderr for every failed call, including the ones netcdf-c makes on
//! purpose to ask whether an optional attribute (`_QuantizeBitRoundNumberOfSignificantBits` and
//! its kin) exists. Errors still come back as values and shoal reports them in its own words.

use std::cell::Cell;
use std::path::Path;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Turns off HDF5's automatic error printing for the calling thread (once per thread). Call it
/// before touching an open file from a thread that did not open it.
pub fn quiet() {
    QUIET.with(|q| {
        if !q.get() {
            // SAFETY: H5Eset_auto2 with the default stack and no handler only clears a
            // per-thread setting; it initialises the library first when needed.
            unsafe {
                hdf5_sys::h5e::H5Eset_auto2(hdf5_sys::h5e::H5E_DEFAULT, None, std::ptr::null_mut());
            }
            q.set(true);
        }
    });
}

/// `netcdf::open`, quietly.
pub fn open(path: impl AsRef<Path>) -> netcdf::Result<netcdf::File> {
    quiet();
    netcdf::open(path)
}

/// `netcdf::create`, quietly.
pub fn create(path: impl AsRef<Path>) -> netcdf::Result<netcdf::FileMut> {
    quiet();
    netcdf::create(path)
}

/// `netcdf::append`, quietly.
pub fn append(path: impl AsRef<Path>) -> netcdf::Result<netcdf::FileMut> {
    quiet();
    netcdf::append(path)
}
