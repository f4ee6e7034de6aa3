//! TCP listeners: one SO_REUSEPORT socket per core on the same address.
//!
//! SO_REUSEPORT also lets another process bind the same address, and the kernel then splits new
//! connections between the two: a second `percore serve` (with other settings, other auth)
//! started by mistake would silently take part of the traffic. So unless sharing is asked for
//! (`server.share_port`, for a hand-over restart), [`listen_reuseport`] first checks that no one
//! else listens there, and names who does.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Why the listening sockets could not be made.
#[derive(Debug)]
pub enum ListenError {
    /// Another process listens on the address (and `server.share_port` is off).
    Taken {
        /// Who, when /proc tells: `pid 1234 (percore)`.
        by: Option<String>,
    },
    /// The socket calls failed.
    Io(io::Error),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Taken { by } => {
                f.write_str("the address is already in use")?;
                if let Some(by) = by {
                    write!(f, " by {by}")?;
                }
                f.write_str(
                    " (stop it, or set server.share_port = true to share the port with it on purpose, e.g. for a hand-over restart)",
                )
            }
            ListenError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ListenError {}

impl From<io::Error> for ListenError {
    fn from(e: io::Error) -> Self {
        ListenError::Io(e)
    }
}

/// Binds `count` listening sockets to `addr` with SO_REUSEPORT, so the kernel spreads incoming
/// connections over them. With port 0 the first socket picks the port and the others join it.
/// Unless `share` is set, an address another process listens on is refused. Returns the bound
/// address and the sockets.
pub fn listen_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
    share: bool,
) -> Result<(SocketAddr, Vec<OwnedFd>), ListenError> {
    if !share && addr.port() != 0 {
        refuse_if_taken(addr)?;
    }
    let mut bound = addr;
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        // Inherited by accepted sockets on Linux; each connection also sets it explicitly.
        socket.set_tcp_nodelay(true)?;
        socket.bind(&bound.into())?;
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        }
        fds.push(OwnedFd::from(socket));
    }
    Ok((bound, fds))
}

/// A bind without SO_REUSEPORT fails with EADDRINUSE when anyone listens on `addr`, whatever
/// options they used (SO_REUSEADDR alone does not let two listeners share a port).
fn refuse_if_taken(addr: SocketAddr) -> Result<(), ListenError> {
    let probe = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(ListenError::Taken {
            by: who_listens(addr),
        }),
        // Anything else (no such address, permission) shows again on the real bind.
        Err(_) => Ok(()),
    }
}

/// The process listening on `addr`, from /proc/net/tcp{,6} (its socket inode) and /proc/*/fd
/// (who holds that inode): `pid 1234 (percore)`. None when /proc does not tell (another
/// network namespace, no permission).
fn who_listens(addr: SocketAddr) -> Option<String> {
    let inode = listening_inode(addr)?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&target)));
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    None
}

/// The inode of a socket listening on `addr` (or on the wildcard address of its family and port).
fn listening_inode(addr: SocketAddr) -> Option<u64> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    let port = format!(":{:04X}", addr.port());
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
        (*state == "0A" && local.ends_with(&port)).then(|| inode.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_someone_listens_on_is_refused_and_named_unless_shared() {
        let (bound, _first) =
            listen_reuseport("127.0.0.1:0".parse().unwrap(), 1, 16, false).unwrap();
        let err = listen_reuseport(bound, 1, 16, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already in use"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("server.share_port"), "{err}");
        // Shared on purpose: the kernel splits connections between the two.
        assert!(listen_reuseport(bound, 1, 16, true).is_ok());
    }
}
