//! systemd `Type=notify` readiness and watchdog (`sd_notify(3)`).
//!
//! `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` are read once, on first use, and kept:
//! the environment is never read again or changed, so nothing here races with other threads.
//! Without `NOTIFY_SOCKET` (run by hand, in a container, in tests) every call is a no-op.
//! A failed send is logged at debug level and otherwise ignored: systemd being unreachable must
//! not stop provisioning (a missed watchdog ping is what makes systemd act, as intended).
//!
//! The daemon calls [`ready`] once it holds its listener and has started work (leader or
//! standby), [`status`] when its role or health changes, [`watchdog_ping`] every
//! [`watchdog_interval`] from the loop that proves it is alive, and [`stopping`] when a stop is
//! asked.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

use sd_notify::NotifyState;

/// Where notifications go, and the watchdog period systemd asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Notifier {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` (the latter checked against our
    /// pid by `sd_notify::watchdog_enabled`, so a child never pings for its parent).
    pub(crate) fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    #[cfg(test)]
    /// Notifications to this socket path (`@name` for an abstract socket), with a watchdog
    /// period of `watchdog` (the full `WATCHDOG_USEC`, not halved). For tests, and for callers
    /// that get the socket some other way.
    pub(crate) fn to_socket(socket: impl Into<OsString>, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            socket: Some(socket.into()),
            watchdog,
        }
    }

    #[cfg(test)]
    /// Whether a service manager is listening.
    pub(crate) fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Start-up is finished.
    pub(crate) fn ready(&self) -> io::Result<()> {
        self.send(&[NotifyState::Ready])
    }

    /// A stop was asked; systemd shows "deactivating" and waits for us to exit.
    pub(crate) fn stopping(&self) -> io::Result<()> {
        self.send(&[NotifyState::Stopping])
    }

    /// One line for `systemctl status`. Newlines would end the field, so they become spaces.
    pub(crate) fn status(&self, text: &str) -> io::Result<()> {
        let text = text.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&text)])
    }

    /// How often to call [`Notifier::watchdog_ping`]: half the period systemd asked for, as
    /// `sd_watchdog_enabled(3)` advises; `None` when no watchdog is set.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|d| !d.is_zero()).map(|d| d / 2)
    }

    /// "Still alive". A no-op unless a watchdog is set.
    pub(crate) fn watchdog_ping(&self) -> io::Result<()> {
        if self.watchdog.is_none() {
            return Ok(());
        }
        self.send(&[NotifyState::Watchdog])
    }

    /// One datagram, `KEY=VALUE` lines, as `sd_notify(3)` sends them.
    fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let sock = UnixDatagram::unbound()?;
        let sent = match socket.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(message.as_bytes(), &addr)?
            }
            None => sock.send_to(message.as_bytes(), socket)?,
        };
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification datagram cut short",
            ));
        }
        Ok(())
    }
}

/// The process-wide notifier, from the environment at first use.
pub(crate) fn notifier() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(Notifier::from_env)
}

fn logged(what: &str, result: io::Result<()>) {
    if let Err(e) = result {
        tracing::debug!("systemd notification {what} not sent: {e}");
    }
}

/// `READY=1`: see the module documentation for when.
pub(crate) fn ready() {
    logged("READY", notifier().ready());
}

/// `STOPPING=1`.
pub(crate) fn stopping() {
    logged("STOPPING", notifier().stopping());
}

/// `STATUS=...`, shown by `systemctl status`. Never put a secret in it.
pub(crate) fn status(text: &str) {
    logged("STATUS", notifier().status(text));
}

/// Half of `WATCHDOG_USEC`, or `None` when systemd set no watchdog.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    notifier().watchdog_interval()
}

/// `WATCHDOG=1`.
pub(crate) fn watchdog_ping() {
    logged("WATCHDOG", notifier().watchdog_ping());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for systemd: a datagram socket in a temp dir.
    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, sock)
    }

    fn receive(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_state_as_systemd_reads_it() {
        let (_dir, path, sock) = listener();
        let notifier = Notifier::to_socket(&path, Some(Duration::from_secs(30)));
        assert!(notifier.is_enabled());
        notifier.ready().unwrap();
        assert_eq!(receive(&sock), "READY=1\n");
        notifier.status("leader, 3 pending\nsecond line").unwrap();
        assert_eq!(receive(&sock), "STATUS=leader, 3 pending second line\n");
        notifier.watchdog_ping().unwrap();
        assert_eq!(receive(&sock), "WATCHDOG=1\n");
        notifier.stopping().unwrap();
        assert_eq!(receive(&sock), "STOPPING=1\n");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn abstract_sockets_work_too() {
        let name = format!("mbg-provision-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::to_socket(format!("@{name}"), None)
            .ready()
            .unwrap();
        assert_eq!(receive(&sock), "READY=1\n");
    }

    #[test]
    fn without_a_socket_or_watchdog_nothing_is_sent() {
        let off = Notifier::default();
        assert!(!off.is_enabled());
        off.ready().unwrap();
        off.status("x").unwrap();
        off.stopping().unwrap();
        assert_eq!(off.watchdog_interval(), None);

        // A socket but no watchdog: pings are not sent.
        let (_dir, path, sock) = listener();
        let notifier = Notifier::to_socket(&path, None);
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.watchdog_ping().unwrap();
        notifier.ready().unwrap();
        assert_eq!(receive(&sock), "READY=1\n", "the ping was not sent first");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::to_socket(dir.path().join("absent.sock"), None);
        assert!(notifier.ready().is_err());
    }

    /// The environment path, in a child process so that no test thread races on the
    /// environment: the child runs `env_child` with `NOTIFY_SOCKET` and `WATCHDOG_USEC` set.
    #[test]
    fn the_process_wide_notifier_reads_the_environment() {
        let (_dir, path, sock) = listener();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "systemd::tests::env_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "4000000")
            .env_remove("WATCHDOG_PID")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(receive(&sock), "READY=1\n");
        assert_eq!(receive(&sock), "STATUS=watchdog 2s\n");
        assert_eq!(receive(&sock), "WATCHDOG=1\n");
        assert_eq!(receive(&sock), "STOPPING=1\n");
    }

    #[test]
    #[ignore = "run by the_process_wide_notifier_reads_the_environment"]
    fn env_child() {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return; // run by hand with --ignored: nothing to talk to
        }
        assert!(notifier().is_enabled());
        ready();
        let interval = watchdog_interval().expect("WATCHDOG_USEC is set");
        status(&format!("watchdog {}s", interval.as_secs()));
        watchdog_ping();
        stopping();
    }
}
