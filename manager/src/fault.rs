//! Faults the tests inject into a manager process, from `SHOAL_TEST_FAULT`:
//! `checkpoint-write:STEP` kills the process with SIGKILL inside the window of writing the
//! checkpoint after step STEP (the new one complete in its temporary file, not yet renamed);
//! `checkpoint:STEP` kills it just after that checkpoint is in place; `sigterm:STEP` and
//! `sigint:STEP` send the process that signal as step STEP begins (an operator's
//! `systemctl stop` or Ctrl-C at a known moment). For the job server: `submit-cut:0` kills
//! `shoal submit` with its submission written but not yet queued; `job-ran:N` kills `shoal
//! serve` when job N's run has finished, before it is recorded as done; `job-done:N` just after
//! it is recorded, before the next job. Unset, nothing happens.

/// Whether the test asked for a fault of `kind` at `step`. The variable is read once per
/// process: the schedule asks every step.
fn asked(kind: &str, step: u32) -> bool {
    static FAULT: std::sync::OnceLock<Option<(String, u32)>> = std::sync::OnceLock::new();
    FAULT
        .get_or_init(|| {
            let v = std::env::var("SHOAL_TEST_FAULT").ok()?;
            let (k, s) = v.split_once(':')?;
            Some((k.to_string(), s.parse().ok()?))
        })
        .as_ref()
        .is_some_and(|(k, s)| k == kind && *s == step)
}

/// Kills this process if the test asked for a fault of `kind` at `step`.
pub fn maybe_die(kind: &str, step: u32) {
    if asked(kind, step) {
        // SAFETY: kill(2) on this process; it does not return.
        unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
    }
}

/// Sends this process SIGTERM or SIGINT if the test asked for it as step `step` begins.
pub fn maybe_signal(step: u32) {
    for (kind, signal) in [("sigterm", libc::SIGTERM), ("sigint", libc::SIGINT)] {
        if asked(kind, step) {
            // SAFETY: raise(3) delivers the signal to this thread before it returns; the
            // process's handler (or the default action) deals with it.
            unsafe { libc::raise(signal) };
        }
    }
}
