//! One port, several protocols: the first byte of a connection says which. This is the one
//! router; every listener (`tcp`, `reuseport`, `http`, `unix`) sends its connections here.
//!
//! | first byte | protocol |
//! |---|---|
//! | `0x08` | rpcx frames |
//! | `0x16` | a TLS ClientHello: handshake, then route again on the first bytes inside TLS |
//! | `C` | HTTP `CONNECT /_rpcx_` (rpcx's `http` network), then rpcx frames |
//! | `G P D H O T` | HTTP: `GET`, `POST`/`PUT`/`PATCH`, `DELETE`, `HEAD`, `OPTIONS`, `TRACE`: the gateway and JSON-RPC (`gateway`), or a 404 with `gateway.enabled = false` |
//!
//! Anything else is refused as rpcx refuses it (`wrong magic number: N`). With `[tls]` set and
//! `tls.allow_plaintext = false`, only TLS is served. On an `http` listener, plain HTTP other
//! than `CONNECT /_rpcx_` gets rpcx's `405 must CONNECT` (as rpcx's own `http` listener does);
//! elsewhere it goes to the gateway, or to [`http_not_served`] when the gateway is off.
//!
//! Everything before the first rpcx frame (the first byte, the TLS handshake, the CONNECT head)
//! must arrive within `limits.handshake_timeout` of the accept, or the connection is closed.
//! Plaintext sockets are sniffed with `peek`, so plaintext rpcx is served on the bare socket;
//! inside TLS the sniffed bytes are read and replayed ([`Prefixed`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::logs::limited_warn;
use super::{Core, conn, gateway};
use crate::metrics::BadFrame;
use crate::metrics::{Close, Transport};
use crate::service::Registry;
use crate::transport::addr::Network;
use crate::transport::http_connect;
use crate::transport::prefixed::Prefixed;

/// What a connection's first byte announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Rpcx,
    Tls,
    Connect,
    Http,
    Unknown(u8),
}

pub(crate) fn classify(first: u8) -> Kind {
    match first {
        crate::protocol::MAGIC => Kind::Rpcx,
        0x16 => Kind::Tls,
        b'C' => Kind::Connect,
        b'G' | b'P' | b'D' | b'H' | b'O' | b'T' => Kind::Http,
        other => Kind::Unknown(other),
    }
}

/// A byte stream of any transport, once it no longer needs to be a particular type.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// An accepted socket that can be sniffed without consuming its bytes.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + 'static {
    /// Waits for input and copies the first bytes without consuming them.
    fn peek(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>>;
}

impl Socket for glommio::net::TcpStream {
    async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(glommio::net::TcpStream::peek(self, buf).await?)
    }
}

impl Socket for glommio::net::UnixStream {
    async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(glommio::net::UnixStream::peek(self, buf).await?)
    }
}

/// Serves an accepted connection by what its first bytes announce.
pub(crate) async fn route<S: Socket, R: Registry>(
    core: &Rc<Core<R>>,
    stream: S,
    peer: SocketAddr,
    network: Network,
    transport: Transport,
) -> Close {
    let deadline = Instant::now() + core.config.limits.handshake_timeout;
    let mut first = [0u8; 1];
    let kind = match within(deadline, stream.peek(&mut first)).await {
        None => return handshake_timeout(core, peer, "nothing sent"),
        Some(Ok(0)) => return Close::Eof,
        Some(Err(_)) => return Close::ReadError,
        Some(Ok(_)) => classify(first[0]),
    };
    if kind != Kind::Tls && core.tls.is_some() && !core.config.tls.allow_plaintext {
        core.metrics.plaintext_refused.inc();
        limited_warn!(core.logs, "plaintext", core = core.index, %peer, "closing connection: plaintext on a TLS-only listener (tls.allow_plaintext = false)");
        return Close::BadFrame;
    }
    match kind {
        // The hot path: the bare socket, no wrapper.
        Kind::Rpcx => conn::serve_on(core, stream, peer, transport).await.close(),
        Kind::Tls => serve_tls(core, stream, peer, network, transport, deadline).await,
        // The plaintext gateway also gets the bare socket.
        Kind::Http if network != Network::Http && core.config.gateway.enabled => {
            gateway::serve(core, stream, peer, transport).await
        }
        kind => {
            route_boxed(
                core,
                kind,
                Box::new(stream),
                peer,
                network,
                transport,
                deadline,
            )
            .await
        }
    }
}

/// Routes what is not plaintext rpcx, on a stream already past any TLS layer.
async fn route_boxed<R: Registry>(
    core: &Rc<Core<R>>,
    kind: Kind,
    stream: Box<dyn Io>,
    peer: SocketAddr,
    network: Network,
    transport: Transport,
    deadline: Instant,
) -> Close {
    let counts = core.metrics.transport(transport);
    match kind {
        Kind::Rpcx => conn::serve_on(core, stream, peer, transport).await.close(),
        Kind::Connect => serve_connect(core, stream, peer, transport, deadline).await,
        Kind::Http if network == Network::Http => {
            serve_connect(core, stream, peer, transport, deadline).await
        }
        Kind::Http if core.config.gateway.enabled => {
            gateway::serve(core, stream, peer, transport).await
        }
        Kind::Http => http_not_served(core, stream, peer, transport).await,
        Kind::Tls => {
            counts.bad_frame(BadFrame::BadMagic);
            limited_warn!(core.logs, "bad_magic", core = core.index, %peer, reason = "bad_magic", "closing connection: a TLS record inside TLS");
            Close::BadFrame
        }
        Kind::Unknown(byte) => {
            counts.bad_frame(BadFrame::BadMagic);
            limited_warn!(core.logs, "bad_magic", core = core.index, %peer, reason = "bad_magic", "closing connection: wrong magic number: {byte}");
            Close::BadFrame
        }
    }
}

/// TLS handshake (bounded by the handshake deadline), then the same routing inside TLS.
async fn serve_tls<S: Socket, R: Registry>(
    core: &Rc<Core<R>>,
    stream: S,
    peer: SocketAddr,
    network: Network,
    transport: Transport,
    deadline: Instant,
) -> Close {
    let Some(acceptor) = core.tls.clone() else {
        core.metrics
            .transport(transport)
            .bad_frame(BadFrame::BadMagic);
        limited_warn!(core.logs, "bad_magic", core = core.index, %peer, reason = "bad_magic", "closing connection: TLS ClientHello, but TLS is not configured");
        return Close::BadFrame;
    };
    let mut tls = match within(deadline, acceptor.accept(stream)).await {
        None => return handshake_timeout(core, peer, "TLS handshake not finished"),
        Some(Err(e)) => {
            core.metrics.tls_handshake_failures.inc();
            limited_warn!(core.logs, "tls_handshake", core = core.index, %peer, error = %e, "closing connection: TLS handshake failed");
            return Close::TlsHandshake;
        }
        Some(Ok(tls)) => tls,
    };
    core.metrics.tls_handshakes.inc();
    // Inside TLS there is no peek: read what the first record brings and replay it.
    let mut buf = vec![0u8; 4096];
    let n = match within(deadline, tls.read(&mut buf)).await {
        None => return handshake_timeout(core, peer, "nothing sent inside TLS"),
        Some(Ok(0)) => return Close::Eof,
        Some(Err(_)) => return Close::ReadError,
        Some(Ok(n)) => n,
    };
    buf.truncate(n);
    let kind = classify(buf[0]);
    let stream: Box<dyn Io> = Box::new(Prefixed::new(buf, tls));
    route_boxed(core, kind, stream, peer, network, transport, deadline).await
}

/// rpcx's HTTP CONNECT: `CONNECT /_rpcx_` is answered `200 Connected to rpcx` and the connection
/// carries rpcx frames from then on; any other request gets `405 must CONNECT` and is closed.
async fn serve_connect<R: Registry>(
    core: &Rc<Core<R>>,
    mut stream: Box<dyn Io>,
    peer: SocketAddr,
    transport: Transport,
    deadline: Instant,
) -> Close {
    let mut buf = Vec::new();
    let end = match within(deadline, http_connect::read_head(&mut stream, &mut buf)).await {
        None => return handshake_timeout(core, peer, "HTTP CONNECT head not finished"),
        Some(Ok(end)) => end,
        Some(Err(http_connect::HeadError::Eof)) => return Close::Eof,
        Some(Err(http_connect::HeadError::Io(_))) => return Close::ReadError,
        Some(Err(e)) => {
            core.metrics.http_connect_refused.inc();
            limited_warn!(core.logs, "http_connect", core = core.index, %peer, reason = e.reason(), "closing connection: {e}");
            return Close::BadFrame;
        }
    };
    let line = match http_connect::request_line(&buf[..end]) {
        Ok(line) => line,
        Err(e) => {
            core.metrics.http_connect_refused.inc();
            limited_warn!(core.logs, "http_connect", core = core.index, %peer, reason = e.reason(), "closing connection: {e}");
            return Close::BadFrame;
        }
    };
    if !line.is_rpcx_connect() {
        core.metrics.http_connect_refused.inc();
        limited_warn!(core.logs, "must_connect", core = core.index, %peer, method = line.method, path = line.path, "answering 405 must CONNECT and closing");
        let _ = stream
            .write_all(http_connect::must_connect(line.http10))
            .await;
        let _ = stream.close().await;
        return Close::BadFrame;
    }
    if stream.write_all(http_connect::CONNECTED).await.is_err() {
        return Close::WriteError;
    }
    core.metrics.http_connects.inc();
    debug!(core = core.index, %peer, "HTTP CONNECT accepted");
    let rest = buf.split_off(end);
    conn::serve_on(core, Prefixed::new(rest, stream), peer, transport)
        .await
        .close()
}

/// Plain HTTP on an rpcx listener with `gateway.enabled = false`: a short 404 and close.
pub(crate) async fn http_not_served<R: Registry>(
    core: &Rc<Core<R>>,
    mut stream: Box<dyn Io>,
    peer: SocketAddr,
    transport: Transport,
) -> Close {
    core.metrics
        .transport(transport)
        .bad_frame(BadFrame::BadMagic);
    debug!(core = core.index, %peer, "HTTP request on the rpcx port: answering 404 and closing");
    let _ = stream.write_all(HTTP_NOT_SERVED).await;
    let _ = stream.close().await;
    Close::BadFrame
}

/// The answer to plain HTTP on a port that serves only rpcx frames.
const HTTP_NOT_SERVED: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 50\r\n\r\nthis port serves rpcx frames; HTTP is not enabled\n";

fn handshake_timeout<R: Registry>(core: &Core<R>, peer: SocketAddr, what: &str) -> Close {
    debug!(core = core.index, %peer, "closing connection: {what} within the handshake timeout");
    Close::HandshakeTimeout
}

/// `fut`'s output, or `None` if `deadline` passes first.
async fn within<T>(deadline: Instant, fut: impl Future<Output = T>) -> Option<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(left).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes() {
        assert_eq!(classify(0x08), Kind::Rpcx);
        assert_eq!(classify(0x16), Kind::Tls);
        assert_eq!(classify(b'C'), Kind::Connect);
        for b in *b"GPDHOT" {
            assert_eq!(classify(b), Kind::Http);
        }
        assert_eq!(classify(0x09), Kind::Unknown(9));
        let text = std::str::from_utf8(HTTP_NOT_SERVED).unwrap();
        let (_, payload) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", payload.len())));
    }
}
