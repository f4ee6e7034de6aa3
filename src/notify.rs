//! systemd's readiness protocol (`sd_notify(3)`), written out: one datagram of `KEY=VALUE` lines
//! to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! Without the variable (not started by systemd with `Type=notify`) every call does nothing.
//!
//! percore sends `READY=1` once every core accepts connections, `STATUS=` with what it serves,
//! and `STOPPING=1` when a shutdown starts.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The socket systemd listens on, if any.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `Ok(None)` when it is not set.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => Notifier::new(&path.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// For the socket at `path` (`@name` is abstract).
    pub fn new(path: &str) -> io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends one message, e.g. `"READY=1\nSTATUS=serving"`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}

/// Sends `state` if systemd asked for notifications; failures are logged, never fatal (the
/// service manager then times the start out, which says more than an error here could).
pub fn notify(state: &str) {
    match Notifier::from_env() {
        Ok(Some(n)) => {
            if let Err(e) = n.send(state) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("percore-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str().unwrap())
            .unwrap()
            .send("READY=1\nSTATUS=ok")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
    }
}
