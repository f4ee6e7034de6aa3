//! One port, several protocols: the first byte of a connection says which.
//!
//! | first byte | protocol |
//! |---|---|
//! | `0x08` | rpcx frames |
//! | `0x16` | a TLS ClientHello |
//! | `C` | HTTP `CONNECT` (rpcx's `http` network) |
//! | `G P D H O T` | HTTP: `GET`, `POST`/`PUT`/`PATCH`, `DELETE`, `HEAD`, `OPTIONS`, `TRACE`: the gateway and JSON-RPC (`gateway`), or a 404 with `gateway.enabled = false` |
//!
//! Anything else is refused as rpcx refuses it (`wrong magic number: N`). A connection that sends
//! nothing within `limits.handshake_timeout` is closed.

use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::{Core, conn, gateway};
use crate::metrics::{Close, Transport};

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

/// Serves an accepted TCP connection by what its first byte announces; returns why it closed.
pub(crate) async fn route_tcp(
    core: &Rc<Core>,
    mut stream: glommio::net::TcpStream,
    peer: SocketAddr,
) -> Close {
    let tcp = core.metrics.transport(Transport::TCP);
    let mut first = [0u8; 1];
    let timeout = core.config.limits.handshake_timeout;
    let peeked = futures_lite::future::or(async { Some(stream.peek(&mut first).await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    let kind = match peeked {
        None => {
            debug!(core = core.index, %peer, "closing connection: nothing sent within the handshake timeout");
            return Close::HandshakeTimeout;
        }
        Some(Ok(0)) => return Close::Eof,
        Some(Err(_)) => return Close::ReadError,
        Some(Ok(_)) => classify(first[0]),
    };
    match kind {
        Kind::Rpcx => conn::serve(core, stream, peer).await.close(),
        Kind::Http if core.config.gateway.enabled => gateway::serve(core, stream, peer).await,
        Kind::Http | Kind::Connect => {
            tcp.bad_frame("bad_magic");
            debug!(core = core.index, %peer, "HTTP request on the rpcx port: answering 404 and closing");
            let _ = stream.write_all(HTTP_NOT_SERVED).await;
            let _ = stream.close().await;
            Close::BadFrame
        }
        Kind::Tls => {
            tcp.bad_frame("bad_magic");
            warn!(core = core.index, %peer, "closing connection: TLS ClientHello, but TLS is not configured");
            Close::BadFrame
        }
        Kind::Unknown(byte) => {
            tcp.bad_frame("bad_magic");
            warn!(core = core.index, %peer, reason = "bad_magic", "closing connection: wrong magic number: {byte}");
            Close::BadFrame
        }
    }
}

/// The answer to plain HTTP on a port that serves only rpcx frames.
const HTTP_NOT_SERVED: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 50\r\n\r\nthis port serves rpcx frames; HTTP is not enabled\n";

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
