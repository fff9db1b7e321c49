//! Faults the tests inject into a manager process, from `SHOAL_TEST_FAULT`:
//! `checkpoint-write:STEP` kills the process with SIGKILL inside the window of writing the
//! checkpoint after step STEP (the new one complete in its temporary file, not yet renamed);
//! `checkpoint:STEP` kills it just after that checkpoint is in place. Unset, nothing happens.

/// Kills this process if the test asked for a fault of `kind` at `step`.
pub fn maybe_die(kind: &str, step: u32) {
    let asked = std::env::var("SHOAL_TEST_FAULT")
        .ok()
        .and_then(|v| {
            let (k, s) = v.split_once(':')?;
            Some(k == kind && s.parse::<u32>().ok()? == step)
        })
        .unwrap_or(false);
    if asked {
        // SAFETY: kill(2) on this process; it does not return.
        unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
    }
}
