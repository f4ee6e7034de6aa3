//! Dialing `network@address` for the client.
//!
//! [`DialAddr`] is a parsed address and [`dial`] opens a byte stream to it. Every network is a
//! variant of [`DialNetwork`] and of [`Stream`], so adding one (unix sockets, TLS, HTTP
//! CONNECT, ...) is: a variant in each, a name in [`DialAddr::from_str`](std::str::FromStr), and
//! an arm in [`dial`] and in the two I/O impls. rpcx's `reuseport` servers are dialed as `tcp`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};

/// How a client reaches a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialNetwork {
    /// `tcp`, `tcp4`, `tcp6` and `reuseport`: a TCP connection with TCP_NODELAY.
    Tcp,
}

impl DialNetwork {
    /// The network's canonical name.
    pub fn name(self) -> &'static str {
        match self {
            DialNetwork::Tcp => "tcp",
        }
    }
}

/// A server address `network@address`, e.g. `tcp@127.0.0.1:8972`. A bare `host:port` is `tcp`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialAddr {
    /// The transport.
    pub network: DialNetwork,
    /// The network-specific part: `host:port` for TCP.
    pub address: String,
    /// The address as the user wrote it, for messages and as the server's key.
    text: String,
}

/// An address that cannot be dialed; the message names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad server address {addr:?}: {reason}")]
pub struct AddrError {
    /// The address as written.
    pub addr: String,
    /// What is wrong with it.
    pub reason: String,
}

impl DialAddr {
    /// The address as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for DialAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for DialAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| AddrError {
            addr: s.to_owned(),
            reason,
        };
        let (network, address) = s.split_once('@').unwrap_or(("tcp", s));
        let network = match network {
            "tcp" | "tcp4" | "tcp6" | "reuseport" => DialNetwork::Tcp,
            "unix" | "http" | "quic" | "kcp" | "tls" => {
                return Err(bad(format!(
                    "network {network:?} is not supported by the client yet (tcp and reuseport are)"
                )));
            }
            other => {
                return Err(bad(format!(
                    "unknown network {other:?} (expected tcp or reuseport)"
                )));
            }
        };
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{address:?} has no port (expected host:port)")))?;
        if host.is_empty() {
            return Err(bad(format!("{address:?} has no host")));
        }
        if port.parse::<u16>().is_err() {
            return Err(bad(format!(
                "port {port:?} is not a number from 0 to 65535"
            )));
        }
        Ok(DialAddr {
            network,
            address: address.to_owned(),
            text: s.to_owned(),
        })
    }
}

/// Opens a stream to `addr`, giving up after `timeout` (zero: no limit of our own).
pub async fn dial(addr: &DialAddr, timeout: Duration) -> io::Result<Stream> {
    match addr.network {
        DialNetwork::Tcp => {
            let sock = resolve(&addr.address)?;
            let stream = if timeout.is_zero() {
                glommio::net::TcpStream::connect(sock).await
            } else {
                glommio::net::TcpStream::connect_timeout(sock, timeout).await
            }
            .map_err(io::Error::from)?;
            // Requests are batched per write already; Nagle would only add latency.
            stream.set_nodelay(true).map_err(io::Error::from)?;
            Ok(Stream::Tcp(stream))
        }
    }
}

/// The first socket address of `host:port` (a name is looked up with the system resolver).
fn resolve(address: &str) -> io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        )
    })
}

/// A connected byte stream of any network.
pub enum Stream {
    /// A TCP connection.
    Tcp(glommio::net::TcpStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_errors_name_the_address() {
        let a: DialAddr = "tcp@127.0.0.1:8972".parse().unwrap();
        assert_eq!(
            (a.network, a.address.as_str()),
            (DialNetwork::Tcp, "127.0.0.1:8972")
        );
        let b: DialAddr = "reuseport@[::1]:9".parse().unwrap();
        assert_eq!(b.address, "[::1]:9");
        assert_eq!(
            "localhost:1".parse::<DialAddr>().unwrap().to_string(),
            "localhost:1"
        );
        for bad in [
            "udp@1.2.3.4:5",
            "tcp@1.2.3.4",
            "tcp@:5",
            "tcp@h:99999",
            "unix@/tmp/x",
        ] {
            let err = bad.parse::<DialAddr>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
