//! rpcx's `http` network: an HTTP `CONNECT` that turns into a plain rpcx byte stream.
//!
//! The Go client writes exactly [`CONNECT_REQUEST`] and the Go server answers exactly
//! [`CONNECTED`]; after that the connection carries rpcx frames (PROTOCOL.md §7). Any other
//! request on such a listener gets rpcx's `405 must CONNECT` ([`must_connect`]).
//!
//! percore is strict about what it answers and lenient about what it reads: CRLF line ends are
//! accepted as well as LF, headers after the request line are skipped, and the head is bounded by
//! [`MAX_HEAD_BYTES`] (the caller bounds it in time).

use std::io;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The path rpcx serves CONNECT on (`share.DefaultRPCPath`).
pub const RPC_PATH: &str = "/_rpcx_";
/// What the Go client sends, byte for byte.
pub const CONNECT_REQUEST: &[u8] = b"CONNECT /_rpcx_ HTTP/1.0\n\n";
/// What the Go server answers, byte for byte (the client checks the status text).
pub const CONNECTED: &[u8] = b"HTTP/1.0 200 Connected to rpcx\n\n";
/// The status the Go client compares with (`resp.Status`).
pub const CONNECTED_STATUS: &str = "200 Connected to rpcx";
/// Longest request or response head (request line plus headers) read before giving up.
pub const MAX_HEAD_BYTES: usize = 4096;

/// Why an HTTP head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed the connection before the blank line.
    #[error("connection closed before the end of the HTTP head")]
    Eof,
    /// No blank line within [`MAX_HEAD_BYTES`].
    #[error("HTTP head longer than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// The first line is not `METHOD PATH HTTP/x.y`.
    #[error("malformed HTTP request line")]
    Malformed,
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl HeadError {
    /// The metric/log reason name.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::Eof => "truncated",
            HeadError::TooLarge => "too_large",
            HeadError::Malformed => "bad_http",
            HeadError::Io(_) => "io",
        }
    }
}

/// The parts of an HTTP request line percore looks at.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `HTTP/1.0` (answered in kind; anything else is answered as HTTP/1.1).
    pub http10: bool,
}

impl RequestLine<'_> {
    /// True for rpcx's `CONNECT /_rpcx_`.
    pub fn is_rpcx_connect(&self) -> bool {
        self.method == "CONNECT" && self.path == RPC_PATH
    }
}

/// Where the head in `buf` ends: the index just past its blank line (LF LF, or CRLF CRLF, or a
/// mix), or `None` if it has not ended yet.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(at) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + at;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Parses the request line at the start of a head.
pub fn request_line(head: &[u8]) -> Result<RequestLine<'_>, HeadError> {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..end]).map_err(|_| HeadError::Malformed)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if method.is_empty() || path.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed);
    }
    Ok(RequestLine {
        method,
        path,
        http10: version == "HTTP/1.0",
    })
}

/// Reads from `stream` into `buf` until a whole head is there; returns the head's length.
/// Bytes after it (a pipelined first frame) stay in `buf` after the head.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, HeadError> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(end);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let want = chunk.len().min(MAX_HEAD_BYTES + 3 - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// rpcx's answer to anything but `CONNECT /_rpcx_` on its HTTP listener.
pub fn must_connect(http10: bool) -> &'static [u8] {
    if http10 {
        MUST_CONNECT_10
    } else {
        MUST_CONNECT_11
    }
}

const MUST_CONNECT_10: &[u8] = b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\nConnection: close\r\n\r\n405 must CONNECT\n";
const MUST_CONNECT_11: &[u8] = b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\nConnection: close\r\n\r\n405 must CONNECT\n";

/// The client's side: sends [`CONNECT_REQUEST`] and checks the answer. Returns bytes read past
/// the answer's head (normally none), which belong to the rpcx stream.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> io::Result<Vec<u8>> {
    stream.write_all(CONNECT_REQUEST).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let end = read_head(stream, &mut buf).await.map_err(|e| match e {
        HeadError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("HTTP CONNECT: {other}")),
    })?;
    let status = status_of(&buf[..end]);
    if status != Some(CONNECTED_STATUS) {
        let line = String::from_utf8_lossy(&buf[..end]);
        let line = line.lines().next().unwrap_or("").trim_end();
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("HTTP CONNECT refused: the server answered {line:?}"),
        ));
    }
    Ok(buf.split_off(end))
}

/// The status (`200 Connected to rpcx`) of a response head's first line.
fn status_of(head: &[u8]) -> Option<&str> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (version, status) = line.split_once(' ')?;
    version.starts_with("HTTP/1.").then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_with_lf_or_crlf() {
        assert_eq!(head_end(CONNECT_REQUEST), Some(CONNECT_REQUEST.len()));
        assert_eq!(head_end(b"CONNECT /_rpcx_ HTTP/1.0\r\n\r\nxx"), Some(28));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"\n"), None);
    }

    #[test]
    fn request_lines() {
        let line = request_line(CONNECT_REQUEST).unwrap();
        assert!(line.is_rpcx_connect() && line.http10);
        let line = request_line(b"CONNECT /other HTTP/1.1\r\n\r\n").unwrap();
        assert!(!line.is_rpcx_connect() && !line.http10);
        assert!(request_line(b"CONNECT\n\n").is_err());
        assert!(request_line(b"CONNECT /_rpcx_ FTP/1.0\n\n").is_err());
    }

    #[test]
    fn responses() {
        assert_eq!(status_of(CONNECTED), Some(CONNECTED_STATUS));
        for r in [MUST_CONNECT_10, MUST_CONNECT_11] {
            let text = std::str::from_utf8(r).unwrap();
            let (_, body) = text.split_once("\r\n\r\n").unwrap();
            assert_eq!(body, "405 must CONNECT\n");
            assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        }
    }
}
