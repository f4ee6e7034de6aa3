//! Unix domain socket listeners, shared by every core.
//!
//! SO_REUSEPORT does not apply to Unix sockets, so percore binds **one** listening socket and
//! gives every core its own `dup` of it; each core waits in `accept` on that one socket and the
//! kernel hands each new connection to exactly one of them. The alternative, one core accepting
//! and passing connections to the others over a channel, would add a cross-thread hop per
//! connection and make core 0 a bottleneck and a single point of failure; with a shared accept
//! queue every core takes work at the rate it can serve it. The cost is that an idle listener
//! wakes every waiting core for each new connection (only one gets it), which at a handful of
//! cores and connection (not request) rate is noise.
//!
//! The socket file: a file left by a crashed run is detected by connecting to it (refused means
//! nobody listens: stale, removed and replaced); a path where a live server answers is an error
//! that says so; a path that is not a socket is never removed. When the server stops, the last
//! core to finish drops the [`SocketFile`], which removes the file if it is still the one this
//! server made.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{info, warn};

/// Why a Unix listener could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UnixListenError {
    /// Another process accepts connections on the path.
    #[error("unix socket {0} is in use by a live server (connecting to it succeeded)")]
    InUse(PathBuf),
    /// Something that is not a socket is at the path; it is left alone.
    #[error("{0} exists and is not a unix socket; not removing it")]
    NotASocket(PathBuf),
    /// A system call failed.
    #[error("unix socket {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

/// The socket file of a listener; removed when this is dropped, if it is still ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the file we bound, so a file someone else put there since is kept.
    id: (u64, u64),
}

impl SocketFile {
    /// The path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "cannot remove the unix socket file");
                }
            }
            _ => {}
        }
    }
}

/// Binds a listening Unix stream socket at `path`, replacing a stale socket file, and returns
/// `count` descriptors of it (one per core; all the same socket) and its [`SocketFile`].
pub fn listen(
    path: &Path,
    count: usize,
    backlog: u32,
) -> Result<(Vec<OwnedFd>, SocketFile), UnixListenError> {
    let io_err = |error| UnixListenError::Io {
        path: path.to_owned(),
        error,
    };
    remove_stale(path)?;
    let socket =
        Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None).map_err(io_err)?;
    let addr = SockAddr::unix(path).map_err(io_err)?;
    socket.bind(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            // Someone bound it between our probe and our bind.
            UnixListenError::InUse(path.to_owned())
        } else {
            io_err(e)
        }
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(io_err)?;
    let mut fds = Vec::with_capacity(count);
    let first = OwnedFd::from(socket);
    for _ in 1..count {
        // F_DUPFD_CLOEXEC: a new descriptor for the same listening socket.
        fds.push(first.try_clone().map_err(io_err)?);
    }
    fds.push(first);
    Ok((fds, file))
}

/// Removes a socket file nobody listens on; errors if somebody does or if it is not a socket.
fn remove_stale(path: &Path) -> Result<(), UnixListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(UnixListenError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(UnixListenError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixListenError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing a stale unix socket file (nobody listens on it)");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(UnixListenError::Io {
                    path: path.to_owned(),
                    error,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(UnixListenError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("percore-unit-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn stale_file_is_replaced_and_live_one_refused_and_file_removed_on_drop() {
        let path = temp_path("lifecycle");
        let _ = std::fs::remove_file(&path);
        // A stale socket: bound, then its listener closed (the file stays).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (fds, file) = listen(&path, 2, 16).unwrap();
        assert_eq!(fds.len(), 2);
        let err = listen(&path, 1, 16).unwrap_err();
        assert!(matches!(err, UnixListenError::InUse(_)), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()));
        drop(fds);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let path = temp_path("regular");
        std::fs::write(&path, b"data").unwrap();
        let err = listen(&path, 1, 16).unwrap_err();
        assert!(matches!(err, UnixListenError::NotASocket(_)), "{err}");
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
    }
}
