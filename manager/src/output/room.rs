//! Room on the disk the outputs go to: what a failed write (a full SD card, a read-only
//! remount) says about where it failed.

use std::path::Path;

/// The free and total bytes of the file system holding `path` (or the directory it would be
/// in), for an unprivileged writer; `None` when the file system cannot be asked.
pub fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct from a NUL-terminated path; nothing is kept.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let unit = s.f_frsize as u64;
    Some((s.f_bavail as u64 * unit, s.f_blocks as u64 * unit))
}

/// "12.0 MB free of 900.0 MB on /data" for the file system holding `path`, in words.
pub fn room_words(path: &Path) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    match free_space(path) {
        Some((free, total)) => format!(
            "{:.1} MB free of {:.1} MB where {} is",
            mb(free),
            mb(total),
            path.display()
        ),
        None => format!("the free space where {} is is unknown", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_file_yet_to_be_is_its_directorys() {
        let (free, total) = free_space(&std::env::temp_dir().join("not-yet.nc")).unwrap();
        assert!(total > 0 && free <= total);
        assert!(room_words(Path::new("/nowhere/at/all/x.nc")).contains("unknown"));
    }
}
