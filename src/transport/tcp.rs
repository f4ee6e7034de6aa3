//! TCP listeners: one SO_REUSEPORT socket per core on the same address.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` listening sockets to `addr` with SO_REUSEPORT, so the kernel spreads incoming
/// connections over them. With port 0 the first socket picks the port and the others join it.
/// Returns the bound address and the sockets.
pub fn listen_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
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
