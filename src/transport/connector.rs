//! Client-side dialing of every network percore serves: `tcp@host:port`, `reuseport@host:port`
//! (dialed as tcp, as rpcx clients do), `unix@/path`, and `http@host:port` (rpcx's HTTP CONNECT
//! handshake), each optionally over TLS.
//!
//! A [`Connector`] is made once per target (it parses the address and loads the TLS files) and
//! dials as often as the client needs; every dial returns the one stream type [`Conn`], a
//! futures-io `AsyncRead + AsyncWrite` on the current glommio executor. Over TLS the layering is
//! rpcx's: TLS first, then (for `http`) CONNECT inside it.

use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use glommio::net::{TcpStream, UnixStream};
use rustls_pki_types::ServerName;

use super::http_connect;
use super::prefixed::Prefixed;
use super::tls::{self, ClientTls, TlsError};
use crate::config::{MAX_UNIX_PATH, Network};

/// What to dial: `network@address`, e.g. `tcp@127.0.0.1:8972` or `unix@/run/percore.sock`. A
/// bare `host:port` is `tcp`. Unlike a listen address, the host may be a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub network: Network,
    pub address: String,
}

impl FromStr for Target {
    type Err = DialError;

    fn from_str(s: &str) -> Result<Target, DialError> {
        let bad = |why: String| DialError::Address(format!("{s:?}: {why}"));
        let (network, address) = s.split_once('@').unwrap_or(("tcp", s));
        let network = match network {
            "tcp" | "tcp4" | "tcp6" => Network::Tcp,
            "reuseport" => Network::Reuseport,
            "http" => Network::Http,
            "unix" => Network::Unix,
            other => {
                return Err(bad(format!(
                    "network {other:?} cannot be dialed (tcp, reuseport, http or unix)"
                )));
            }
        };
        if address.is_empty() {
            return Err(bad("no address after the network".into()));
        }
        if network.is_ip() {
            match address.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(bad("expected host:port".into())),
            }
        } else if address.len() > MAX_UNIX_PATH {
            return Err(bad(format!(
                "a unix socket path is at most {MAX_UNIX_PATH} bytes"
            )));
        }
        Ok(Target {
            network,
            address: address.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.network.name(), self.address)
    }
}

impl Target {
    /// The host part of a `host:port` address (brackets of an IPv6 literal removed);
    /// `localhost` for unix.
    pub fn host(&self) -> &str {
        if !self.network.is_ip() {
            return "localhost";
        }
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// How to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialOptions {
    /// Gives up on the whole dial (connect, TLS handshake, CONNECT) after this long.
    pub timeout: Duration,
    /// Dial over TLS with these settings.
    pub tls: Option<ClientTls>,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Why a dial failed; every variant names the target.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address cannot be dialed as written.
    #[error("bad address {0}")]
    Address(String),
    /// The TLS options cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The socket could not connect.
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    /// The TLS handshake failed (wrong CA, wrong name, not a TLS server...).
    #[error("TLS handshake with {target} failed: {source}")]
    Handshake { target: String, source: io::Error },
    /// The server did not accept rpcx's HTTP CONNECT.
    #[error("HTTP CONNECT to {target} failed: {source}")]
    HttpConnect { target: String, source: io::Error },
    /// The whole dial took longer than [`DialOptions::timeout`].
    #[error("dialing {target} timed out after {after:?}")]
    Timeout { target: String, after: Duration },
}

/// Dials one target again and again with the same settings.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish()
    }
}

impl Connector {
    /// Parses `addr` and prepares TLS (reading the CA and client certificate files now).
    pub fn new(addr: &str, options: &DialOptions) -> Result<Connector, DialError> {
        let target: Target = addr.parse()?;
        let tls = match &options.tls {
            None => None,
            Some(opts) => {
                let config = tls::client_config(opts)?;
                let name = opts.server_name.as_deref().unwrap_or(target.host());
                Some((TlsConnector::from(config), tls::server_name(name)?))
            }
        };
        Ok(Connector {
            target,
            timeout: options.timeout,
            tls,
        })
    }

    /// The target this dials.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Opens one connection, ready for rpcx frames. Must run on a glommio executor.
    pub async fn connect(&self) -> Result<Conn, DialError> {
        let dial = self.dial();
        let timeout = async {
            glommio::timer::sleep(self.timeout).await;
            Err(DialError::Timeout {
                target: self.target.to_string(),
                after: self.timeout,
            })
        };
        futures_lite::future::or(dial, timeout).await
    }

    async fn dial(&self) -> Result<Conn, DialError> {
        let target = || self.target.to_string();
        let plain = match self.target.network {
            Network::Unix => UnixStream::connect(&self.target.address)
                .await
                .map(Plain::Unix)
                .map_err(|e| DialError::Connect {
                    target: target(),
                    source: e.into(),
                })?,
            Network::Tcp | Network::Reuseport | Network::Http => {
                Plain::Tcp(connect_tcp(&self.target.address).await.map_err(|source| {
                    DialError::Connect {
                        target: target(),
                        source,
                    }
                })?)
            }
        };
        let inner = match &self.tls {
            None => Inner::Plain(plain),
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), plain)
                    .await
                    .map_err(|source| DialError::Handshake {
                        target: target(),
                        source,
                    })?;
                Inner::Tls(Box::new(stream))
            }
        };
        let mut conn = Conn(Prefixed::new(Vec::new(), inner));
        if self.target.network == Network::Http {
            let rest = http_connect::client_handshake(conn.0.inner_mut())
                .await
                .map_err(|source| DialError::HttpConnect {
                    target: target(),
                    source,
                })?;
            conn = Conn(Prefixed::new(rest, conn.0.into_inner()));
        }
        Ok(conn)
    }
}

/// Dials `addr` once; see [`Connector`] to dial the same target repeatedly.
pub async fn dial(addr: &str, options: &DialOptions) -> Result<Conn, DialError> {
    Connector::new(addr, options)?.connect().await
}

async fn connect_tcp(address: &str) -> io::Result<TcpStream> {
    // Name resolution blocks; dials are rare (once per connection, not per call).
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Requests are batched by the client already; Nagle would only add latency.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// A socket before TLS.
#[derive(Debug)]
pub enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

enum Inner {
    Plain(Plain),
    Tls(Box<futures_rustls::client::TlsStream<Plain>>),
}

/// One dialed connection: plain or TLS, TCP or Unix, after any CONNECT handshake.
pub struct Conn(Prefixed<Inner>);

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.inner() {
            Inner::Plain(p) => f.debug_tuple("Conn").field(p).finish(),
            Inner::Tls(_) => f.write_str("Conn(Tls)"),
        }
    }
}

impl Conn {
    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.0.inner(), Inner::Tls(_))
    }

    /// The negotiated TLS version, when over TLS.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self.0.inner() {
            Inner::Tls(s) => s.get_ref().1.protocol_version(),
            Inner::Plain(_) => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Plain::Tcp($s) => $e,
            Plain::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_close(cx))
    }
}

impl AsyncRead for Inner {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Inner {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_close(cx),
            Inner::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t: Target = "reuseport@example.com:8972".parse().unwrap();
        assert_eq!((t.network, t.host()), (Network::Reuseport, "example.com"));
        let t: Target = "127.0.0.1:1".parse().unwrap();
        assert_eq!(t.to_string(), "tcp@127.0.0.1:1");
        let t: Target = "http@[::1]:80".parse().unwrap();
        assert_eq!(t.host(), "::1");
        let t: Target = "unix@/run/x.sock".parse().unwrap();
        assert_eq!(t.host(), "localhost");
        for bad in [
            "quic@1.2.3.4:5",
            "tcp@nohost",
            "tcp@:80",
            "unix@",
            "tcp@h:99999",
        ] {
            let err = bad.parse::<Target>().unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
