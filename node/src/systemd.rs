//! systemd's notification protocol (sd_notify), spoken directly: a unit with `Type=notify` hears
//! `READY=1` once the node has announced itself on the fabric, `WATCHDOG=1` while the node is
//! healthy (with `WatchdogSec=`; systemd restarts it when these stop), and `STOPPING=1` as it
//! leaves. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), `WATCHDOG_USEC`
    /// and `WATCHDOG_PID` (when set, the watchdog is this process's only if the pid is ours).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let s = s.to_string_lossy().into_owned();
            let addr = if let Some(name) = s.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&s).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Whether a service manager listens.
    pub fn active(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog period systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.active())
    }

    /// Sends `state` (e.g. `READY=1`); errors are ignored, as systemd's own library does.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            let _ = sock.send_to_addr(state.as_bytes(), addr);
        }
    }
}
