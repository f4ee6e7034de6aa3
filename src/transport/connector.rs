//! The one dialer: every network percore dials, for the client, `percore call` and `percore
//! bench` alike.
//!
//! A [`Connector`] is made once per server address (it parses nothing more and reads the TLS
//! files once) and dials as often as the client needs. Every dial returns the one stream type
//! [`Stream`], a futures-io `AsyncRead + AsyncWrite` on the current glommio executor:
//!
//! | address | dial |
//! |---|---|
//! | `tcp@host:port`, `reuseport@host:port` | TCP (rpcx dials `reuseport` servers as `tcp`), TCP_NODELAY |
//! | `http@host:port` | TCP, then rpcx's `CONNECT /_rpcx_ HTTP/1.0` |
//! | `unix@/path` | a Unix domain stream socket |
//! | `quic@host:port` | QUIC (TLS 1.3, ALPN `rpcx`) on the process's QUIC client thread, one connection and one stream ([`super::quic`]) |
//! | `kcp@host:port` | a KCP session over UDP in kcp-go's format ([`DialOptions::kcp`]), driven by the process's KCP client reactor thread ([`super::kcp`]) |
//!
//! Each but `kcp` can run over TLS ([`DialOptions::tls`]); the layering is rpcx's: TLS first, then (for
//! `http`) CONNECT inside it. QUIC always runs TLS: its [`DialOptions::tls`] must say how to
//! check the server (a CA or insecure skip-verify). A host name is resolved with the system resolver and every
//! address it resolves to is tried in turn until one connects. The whole dial (every connect
//! attempt, the TLS handshake, CONNECT) is bounded by [`DialOptions::timeout`].
//!
//! Plain TCP, the common case, is a direct variant of [`Stream`] with nothing around the socket
//! but the enum's match (no boxing, no replay buffer).

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use glommio::net::{TcpStream, UnixStream};
use rustls_pki_types::ServerName;

use super::addr::{Addr, AddrError, Network};
use super::http_connect;
use super::kcp::{self, KcpConfig, KcpConfigError, KcpSetup, KcpStream};
use super::prefixed::Prefixed;
use super::quic::{self, DialConfig, QuicError, QuicStream};
use super::tls::{self, ClientTls, TlsError};

/// How to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialOptions {
    /// Gives up on the whole dial (connect, TLS handshake, CONNECT) after this long; zero means
    /// no limit of percore's own (the kernel's connect timeout still applies).
    pub timeout: Duration,
    /// Dial over TLS with these settings.
    pub tls: Option<ClientTls>,
    /// Settings of `kcp@` sessions (the server's `[kcp]` must match); unused by the others.
    pub kcp: KcpConfig,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            timeout: Duration::from_secs(10),
            tls: None,
            kcp: KcpConfig::default(),
        }
    }
}

/// Why a dial failed; every variant names the target.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address cannot be dialed as written.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// The TLS options cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The socket could not connect (to any of the addresses the name resolves to).
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
    /// The KCP settings cannot be used.
    #[error("{0}")]
    Kcp(#[from] KcpConfigError),
    /// A QUIC dial failed (the message names the target: refused, wrong ALPN, handshake...).
    #[error("{0}")]
    Quic(#[from] QuicError),
}

impl DialError {
    /// The error as an `io::Error` of the matching kind, its message intact.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            DialError::Connect { source, .. } => source.kind(),
            DialError::Timeout { .. } | DialError::Quic(QuicError::Timeout { .. }) => {
                io::ErrorKind::TimedOut
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self.to_string())
    }
}

/// Dials one address again and again with the same settings.
#[derive(Clone)]
pub struct Connector {
    addr: Addr,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// For `quic`: its TLS settings and the server name to check.
    quic: Option<(DialConfig, String)>,
    /// For `kcp@`: the checked settings with their key, derived once here.
    kcp: Option<Arc<KcpSetup>>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish()
    }
}

impl Connector {
    /// Parses `addr` and prepares TLS (reading the CA and client certificate files now).
    pub fn new(addr: &str, options: &DialOptions) -> Result<Connector, DialError> {
        Connector::to(addr.parse()?, options)
    }

    /// A connector for an address already parsed.
    pub fn to(addr: Addr, options: &DialOptions) -> Result<Connector, DialError> {
        if addr.network == Network::Kcp {
            if options.tls.is_some() {
                // rpcx has no TLS over KCP; its crypt layer is kcp-go's block cipher.
                return Err(AddrError::new(
                    &addr,
                    "TLS is not an option of kcp (its encryption is [kcp] crypt and key)"
                        .to_string(),
                )
                .into());
            }
            return Ok(Connector {
                kcp: Some(options.kcp.prepare()?),
                addr,
                timeout: options.timeout,
                tls: None,
                quic: None,
            });
        }
        if addr.network == Network::Quic {
            let Some(opts) = &options.tls else {
                return Err(TlsError {
                    key: "tls-ca",
                    path: None,
                    message: format!(
                        "{addr} always runs TLS 1.3: give the CA that signed the server's certificate (--tls-ca) or skip the check (--tls-insecure)"
                    ),
                }
                .into());
            };
            let config = DialConfig::new(tls::quic_client_config(opts)?)?;
            let name = opts.server_name.as_deref().unwrap_or(addr.host());
            tls::server_name(name)?;
            return Ok(Connector {
                quic: Some((config, name.to_owned())),
                addr,
                timeout: options.timeout,
                tls: None,
                kcp: None,
            });
        }
        let tls = match &options.tls {
            None => None,
            Some(opts) => {
                let config = tls::client_config(opts)?;
                let name = opts.server_name.as_deref().unwrap_or(addr.host());
                Some((TlsConnector::from(config), tls::server_name(name)?))
            }
        };
        Ok(Connector {
            addr,
            timeout: options.timeout,
            tls,
            quic: None,
            kcp: None,
        })
    }

    /// The address this dials.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// Opens one connection, ready for rpcx frames. Must run on a glommio executor.
    pub async fn connect(&self) -> Result<Stream, DialError> {
        if self.timeout.is_zero() {
            return self.dial().await;
        }
        let timeout = async {
            glommio::timer::sleep(self.timeout).await;
            Err(DialError::Timeout {
                target: self.addr.to_string(),
                after: self.timeout,
            })
        };
        futures_lite::future::or(self.dial(), timeout).await
    }

    async fn dial(&self) -> Result<Stream, DialError> {
        let target = || self.addr.to_string();
        let connect_failed = |source: io::Error| DialError::Connect {
            target: target(),
            source,
        };
        if let Some((config, name)) = &self.quic {
            let stream = quic::dial(&self.addr.address, name, config, self.timeout).await?;
            return Ok(Stream::Quic(Box::new(stream)));
        }
        if let Some(setup) = &self.kcp {
            // UDP has no connect to fail, so the first address is the one: KCP has no
            // handshake, and a peer that is not there shows on the stream's first read.
            let addr = self
                .addr
                .address
                .to_socket_addrs()
                .map_err(connect_failed)?
                .next()
                .ok_or_else(|| {
                    connect_failed(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the name resolves to no address",
                    ))
                })?;
            return kcp::dial(addr, setup)
                .map(Stream::Kcp)
                .map_err(connect_failed);
        }
        let plain = match self.addr.network {
            Network::Unix => UnixStream::connect(&self.addr.address)
                .await
                .map(Stream::Unix)
                .map_err(|e| connect_failed(e.into()))?,
            _ => {
                let addrs = self
                    .addr
                    .address
                    .to_socket_addrs()
                    .map_err(connect_failed)?;
                Stream::Tcp(connect_any(addrs).await.map_err(connect_failed)?)
            }
        };
        let mut stream = match &self.tls {
            None => plain,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), plain)
                    .await
                    .map_err(|source| DialError::Handshake {
                        target: target(),
                        source,
                    })?;
                Stream::Tls(Box::new(tls))
            }
        };
        if self.addr.network == Network::Http {
            let rest = http_connect::client_handshake(&mut stream)
                .await
                .map_err(|source| DialError::HttpConnect {
                    target: target(),
                    source,
                })?;
            if !rest.is_empty() {
                // Bytes the server sent after its answer belong to the rpcx stream.
                stream = Stream::Replay(Box::new(Prefixed::new(rest, stream)));
            }
        }
        Ok(stream)
    }
}

/// Connects to each address in turn and returns the first connection made (with TCP_NODELAY:
/// requests are batched per write already, so Nagle would only add latency), or the last
/// address's error. Name resolution before it blocks, but dials are rare: once per
/// connection, not per call.
pub async fn connect_any(addrs: impl IntoIterator<Item = SocketAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => {
                last = io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{addr}: refused or unreachable"),
                )
            }
        }
    }
    Err(last)
}

/// One dialed connection, whatever its network and layers.
pub enum Stream {
    /// Plain TCP: the socket itself.
    Tcp(TcpStream),
    /// A Unix domain socket.
    Unix(UnixStream),
    /// TLS over TCP or Unix.
    Tls(Box<futures_rustls::client::TlsStream<Stream>>),
    /// Bytes already read (after an HTTP CONNECT answer), then the stream.
    Replay(Box<Prefixed<Stream>>),
    /// A QUIC stream (its connection is driven by the QUIC client thread).
    Quic(Box<QuicStream>),
    /// A KCP session (its UDP socket and protocol live on the KCP client reactor thread).
    Kcp(KcpStream),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Stream::Unix(s) => f.debug_tuple("Unix").field(s).finish(),
            Stream::Tls(s) => f.debug_tuple("Tls").field(&s.get_ref().0).finish(),
            Stream::Replay(s) => f.debug_tuple("Replay").field(s.inner()).finish(),
            Stream::Quic(s) => f.debug_tuple("Quic").field(s).finish(),
            Stream::Kcp(s) => f.debug_tuple("Kcp").field(s).finish(),
        }
    }
}

impl Stream {
    /// Whether the connection runs over TLS (QUIC always does).
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Tls(_) | Stream::Quic(_) => true,
            Stream::Replay(s) => s.inner().is_tls(),
            Stream::Tcp(_) | Stream::Unix(_) | Stream::Kcp(_) => false,
        }
    }

    /// The negotiated TLS version, when over TLS.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Stream::Tls(s) => s.get_ref().1.protocol_version(),
            Stream::Replay(s) => s.inner().tls_version(),
            Stream::Quic(_) => Some(rustls::ProtocolVersion::TLSv1_3),
            Stream::Tcp(_) | Stream::Unix(_) | Stream::Kcp(_) => None,
        }
    }
}

/// Forwards a poll to whichever stream this is.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Kcp($s) => $e,
            Stream::Tls(s) => {
                let $s = &mut **s;
                $e
            }
            Stream::Replay(s) => {
                let $s = &mut **s;
                $e
            }
            Stream::Quic(s) => {
                let $s = &mut **s;
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_close(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kcp_dials_with_its_settings_and_refuses_tls() {
        assert!(Connector::new("kcp@127.0.0.1:1", &DialOptions::default()).is_ok());
        let mut bad = DialOptions::default();
        bad.kcp.mtu = 20;
        let err = Connector::new("kcp@127.0.0.1:1", &bad).unwrap_err();
        assert!(err.to_string().contains("kcp.mtu"), "{err}");
        let tls = DialOptions {
            tls: Some(ClientTls {
                insecure_skip_verify: true,
                ..ClientTls::default()
            }),
            ..DialOptions::default()
        };
        let err = Connector::new("kcp@127.0.0.1:1", &tls).unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn quic_needs_tls_options() {
        let addr = "quic@127.0.0.1:1";
        let err = Connector::new(addr, &DialOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tls-ca: "), "{err}");
        assert!(
            err.contains(addr) && err.contains("--tls-insecure"),
            "{err}"
        );
        let insecure = DialOptions {
            tls: Some(ClientTls {
                insecure_skip_verify: true,
                ..ClientTls::default()
            }),
            ..DialOptions::default()
        };
        assert!(Connector::new(addr, &insecure).is_ok());
    }

    #[test]
    fn a_dead_address_first_does_not_stop_the_dial() {
        // One listener that refuses (bound, never listening... closed right away) and one that
        // accepts: the dial goes on to the second, as it does for a name resolving to both.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        let peer = crate::client::block_on(move || async move {
            let s = connect_any([dead_addr, live_addr]).await.unwrap();
            s.peer_addr().unwrap()
        })
        .unwrap();
        assert_eq!(peer, live_addr);
        let err =
            crate::client::block_on(
                move || async move { connect_any([dead_addr]).await.unwrap_err() },
            )
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().contains(&dead_addr.to_string()), "{err}");
    }
}
