//! Stopping a run when asked: SIGTERM (`systemctl stop`, a shutdown) or SIGINT (Ctrl-C) makes
//! the schedule stop at the next step boundary, write a checkpoint there and end with
//! [`Stopped`], which says where the run stopped and how it goes on. A second signal while the
//! first is being honoured ends the process at once, as an impatient operator expects.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked the run to stop (0: none yet).
static ASKED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe calls here: an atomic swap, and `_exit` on the second signal.
    if ASKED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Makes SIGTERM and SIGINT ask the run to stop at the next step boundary (see [`asked`]),
/// instead of ending the process where it stands. For `shoal run`; once per process.
pub fn listen() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only touches an atomic (and `_exit`s the second
        // time); `sa_mask` is emptied before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Asks the run in this process to stop as `signal` would (the job server's cancel).
pub fn ask(signal: i32) {
    ASKED.store(signal, Ordering::SeqCst);
}

/// Forgets a request to stop that has been honoured (the job server goes on with its queue).
pub fn clear() {
    ASKED.store(0, Ordering::SeqCst);
}

/// The signal that asked the run to stop, if one did.
pub fn asked() -> Option<i32> {
    match ASKED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A run stopped by a signal, at a step boundary, its checkpoint written.
#[derive(Debug)]
pub struct Stopped {
    pub signal: i32,
    /// The step the run stopped after, of how many.
    pub step: u32,
    pub n_steps: u32,
    /// The model time it stopped at, as a date.
    pub when: String,
    pub checkpoint: PathBuf,
    /// The run file, for the command that resumes (filled in by the command line).
    pub run_file: Option<PathBuf>,
}

impl Stopped {
    /// The exit code: 128 plus the signal, the shell's convention for a process a signal ended
    /// (130 for SIGINT, 143 for SIGTERM), not a failure's 1.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        s => format!("signal {s}"),
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run_file = self
            .run_file
            .as_ref()
            .map_or("RUN.toml".to_string(), |p| p.display().to_string());
        write!(
            f,
            "stopped by {} after step {} of {} (model time {}); the checkpoint is {}; \
             `shoal run {run_file} --resume` (with the options it had) goes on from it",
            signal_name(self.signal),
            self.step,
            self.n_steps,
            self.when,
            self.checkpoint.display()
        )
    }
}

impl std::error::Error for Stopped {}
