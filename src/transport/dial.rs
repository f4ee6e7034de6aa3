//! Dialing `network@address` for the client.
//!
//! [`DialAddr`] is a parsed address and [`dial`] opens a byte stream to it. Plain TCP is dialed
//! here directly (the common case keeps its bare stream); `unix`, `http` (rpcx's HTTP CONNECT)
//! and anything over TLS go through [`super::connector`]. Adding a network is: a variant of
//! [`DialNetwork`], a name in [`DialAddr::from_str`](std::str::FromStr), and an arm in the
//! connector. rpcx's `reuseport` servers are dialed as `tcp`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};

use super::connector::{self, Conn, Connector, DialOptions};
use super::tls::ClientTls;
use crate::config::MAX_UNIX_PATH;

/// How a client reaches a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialNetwork {
    /// `tcp`, `tcp4`, `tcp6` and `reuseport`: a TCP connection with TCP_NODELAY.
    Tcp,
    /// `http`: TCP, then rpcx's `CONNECT /_rpcx_ HTTP/1.0` handshake.
    Http,
    /// `unix`: a Unix domain stream socket at a path.
    Unix,
}

impl DialNetwork {
    /// The network's canonical name.
    pub fn name(self) -> &'static str {
        match self {
            DialNetwork::Tcp => "tcp",
            DialNetwork::Http => "http",
            DialNetwork::Unix => "unix",
        }
    }
}

/// A server address `network@address`, e.g. `tcp@127.0.0.1:8972`. A bare `host:port` is `tcp`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialAddr {
    /// The transport.
    pub network: DialNetwork,
    /// The network-specific part: `host:port`, or the path for `unix`.
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
            "http" => DialNetwork::Http,
            "unix" => DialNetwork::Unix,
            "quic" | "kcp" | "tls" => {
                return Err(bad(format!(
                    "network {network:?} is not supported by the client yet (tcp, reuseport, http and unix are; TLS is an option of each)"
                )));
            }
            other => {
                return Err(bad(format!(
                    "unknown network {other:?} (expected tcp, reuseport, http or unix)"
                )));
            }
        };
        if network == DialNetwork::Unix {
            if address.is_empty() {
                return Err(bad("no socket path after unix@".into()));
            }
            if address.len() > MAX_UNIX_PATH {
                return Err(bad(format!(
                    "a unix socket path is at most {MAX_UNIX_PATH} bytes"
                )));
            }
            return Ok(DialAddr {
                network,
                address: address.to_owned(),
                text: s.to_owned(),
            });
        }
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

/// Opens a stream to `addr`, over TLS when `tls` is given, giving up after `timeout` (zero: no
/// limit of our own for plain TCP; the connector's default for the others).
pub async fn dial(
    addr: &DialAddr,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> io::Result<Stream> {
    match (addr.network, tls) {
        (DialNetwork::Tcp, None) => {
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
        (network, tls) => {
            let options = DialOptions {
                timeout: if timeout.is_zero() {
                    DialOptions::default().timeout
                } else {
                    timeout
                },
                tls: tls.cloned(),
            };
            let target = format!("{}@{}", network.name(), addr.address);
            let conn = Connector::new(&target, &options)
                .map_err(dial_error)?
                .connect()
                .await
                .map_err(dial_error)?;
            Ok(Stream::Conn(conn))
        }
    }
}

/// The connector's error as an `io::Error`, its message intact (it names the target).
fn dial_error(e: connector::DialError) -> io::Error {
    let kind = match &e {
        connector::DialError::Connect { source, .. } => source.kind(),
        connector::DialError::Timeout { .. } => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
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
    /// Any other network, or TLS: the connector's stream.
    Conn(Conn),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Conn(s) => Pin::new(s).poll_read(cx, buf),
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
            Stream::Conn(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Conn(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_close(cx),
            Stream::Conn(s) => Pin::new(s).poll_close(cx),
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
        let u: DialAddr = "unix@/tmp/x.sock".parse().unwrap();
        assert_eq!(
            (u.network, u.address.as_str()),
            (DialNetwork::Unix, "/tmp/x.sock")
        );
        let h: DialAddr = "http@127.0.0.1:8973".parse().unwrap();
        assert_eq!(h.network, DialNetwork::Http);
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
            "unix@",
            "quic@1.2.3.4:5",
        ] {
            let err = bad.parse::<DialAddr>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
