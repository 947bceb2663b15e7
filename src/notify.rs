//! The systemd notification protocol (`sd_notify(3)`): `READY=1` once the
//! API serves, `WATCHDOG=1` while the daemon is alive, `STOPPING=1` on the
//! way out. One datagram per message to `$NOTIFY_SOCKET`, a path or an
//! abstract name written with a leading `@`. Without `$NOTIFY_SOCKET` (not
//! started by systemd) every call is a no-op.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the service manager listens, read once from the environment.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then
    /// removes them from the environment so that child processes (QEMU,
    /// helpers) never talk to the service manager in the daemon's name.
    /// Call it before any other thread exists: it edits the environment.
    pub fn take_from_env() -> io::Result<Option<Notifier>> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let wd_pid = std::env::var("WATCHDOG_PID").ok();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        let Some(path) = path else {
            return Ok(None);
        };
        let addr = parse_addr(path.as_encoded_bytes())?;
        // The watchdog is ours only when WATCHDOG_PID is absent or names us.
        let ours = wd_pid.is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
            watchdog,
        }))
    }

    /// The watchdog timeout the manager asked for (`WatchdogSec=`), if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification: newline-separated `KEY=value` assignments.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::other("short write to NOTIFY_SOCKET"));
        }
        Ok(())
    }
}

/// `@name` is an abstract socket (Linux), anything else a filesystem path.
fn parse_addr(raw: &[u8]) -> io::Result<SocketAddr> {
    match raw.split_first() {
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        )),
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        Some((b'/', _)) => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(raw))
        }
        Some(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(addr: SocketAddr) -> Notifier {
        Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr,
            watchdog: None,
        }
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = notifier(parse_addr(path.as_os_str().as_encoded_bytes()).unwrap());
        n.notify("READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("libgo-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = notifier(parse_addr(format!("@{name}").as_bytes()).unwrap());
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn refuses_a_relative_or_empty_address() {
        assert!(parse_addr(b"").is_err());
        assert!(parse_addr(b"run/notify").is_err());
    }
}
