//! HTTP/1.1 server side, for the gateway and JSON-RPC: a sans-IO request reader (head parsing
//! with `httparse`, `Content-Length` and chunked bodies, all bounded) and response writer, and
//! the connection loop that drives them for a [`Handler`].
//!
//! The loop is sequential, as HTTP/1.1 replies must be in request order: read what is there,
//! serve every complete request in it (pipelining), write all their replies at once, read again.
//!
//! Bounds, all in `[gateway]`: the request head (`max_header_bytes`, `max_headers` → 431), the
//! body (`max_body_bytes` → 413, checked against `Content-Length` before any of the body is
//! read, and while de-chunking), a whole request within `request_timeout` of its first byte, and
//! `idle_timeout` between requests. Input that cannot be parsed gets a 400 (501 for a transfer
//! coding other than chunked); each of these replies closes the connection, with one log line
//! and a per-core metric ([`BadHttp`]).
//!
//! What a request means is the handler's business: it sees the headers this module does not
//! interpret itself ([`Handler::header`]) and each whole request ([`Handler::request`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::Core;
use super::end::End;
use crate::buf::{ReadBuf, SHRINK_ABOVE};
use crate::config::Gateway;
use crate::metrics::{BadHttp, Transport};
use crate::service::Registry;

/// First size of a connection's read buffer; it grows to hold a request head and shrinks back.
pub(crate) const INITIAL_READ_BUFFER: usize = 8 << 10;
/// Longest chunk-size line accepted (hex size plus extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// Characters percent-encoded in header values written from untrusted text: controls (so no
/// text can end a header line), `%` (so the encoding is unambiguous) and, by
/// `utf8_percent_encode` itself, every non-ASCII byte.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b'%');

/// What serves the requests of one HTTP connection.
pub(crate) trait Handler {
    /// A new request head is being read: forget the previous request's headers.
    fn begin(&mut self);
    /// A header this module does not interpret itself (everything but `Content-Length`,
    /// `Transfer-Encoding`, `Connection` and `Expect`).
    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), Refusal>;
    /// A whole request: append its reply to `out`, or say what it waits for.
    fn request(&mut self, head: &Head, body: &[u8], out: &mut Vec<u8>) -> Option<Wait>;
    /// After a request: the reply just written refused it over a limit, and the connection is
    /// to close (logged and counted as this refusal).
    fn take_refusal(&mut self) -> Option<Refusal> {
        None
    }
}

/// A reply that cannot go out yet; the replies before it are sent first (HTTP/1.1 answers in
/// order), and no later request is read until it is done.
pub(crate) enum Wait {
    /// The reply is in `out`: send it after this delay.
    Delay(Duration),
    /// The reply is what this future gives, once it is done (an async handler's call).
    Until(Pin<Box<dyn Future<Output = Vec<u8>>>>),
}

/// Input refused with an HTTP error status; the connection closes after the reply.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) reason: BadHttp,
    pub(crate) what: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, reason: BadHttp, what: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            what: what.into(),
        }
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Refusal {
        Refusal::new(400, BadHttp::Malformed, what)
    }
}

/// Where the connection is in the current request.
enum State {
    /// Waiting for a complete request head.
    Head,
    /// Reading a body of a known length: bytes still to come.
    Length(usize),
    /// Reading a chunked body.
    Chunked(Chunk),
}

/// Where a chunked body decoder is.
#[derive(Clone, Copy)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data: bytes left.
    Data(usize),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailers,
}

/// What the HTTP layer takes from a request head; the handler gets the other headers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Head {
    pub(crate) method: HttpMethod,
    /// The request target as sent (path and query).
    pub(crate) target: String,
    pub(crate) keep_alive: bool,
    /// HTTP/1.0: keep-alive must be said in the reply.
    pub(crate) http10: bool,
    pub(crate) expect_continue: bool,
    pub(crate) content_length: Option<usize>,
    pub(crate) chunked: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Other,
}

/// Serves HTTP requests on `stream` with `handler` until the peer closes it, asks to, idles
/// out, or sends input that is refused.
pub(crate) async fn serve<S, H, R: Registry>(
    core: &Rc<Core<R>>,
    mut stream: S,
    peer: SocketAddr,
    transport: Transport,
    handler: &mut H,
) -> crate::metrics::Close
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let end = run(core, &mut stream, transport, handler).await;
    end.report(core, peer, transport);
    let _ = stream.close().await;
    end.close()
}

async fn run<S, H, R: Registry>(
    core: &Rc<Core<R>>,
    stream: &mut S,
    transport: Transport,
    handler: &mut H,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let cfg = &core.config.gateway;
    let mut rbuf = ReadBuf::new(INITIAL_READ_BUFFER);
    let mut out: Vec<u8> = Vec::new();
    let mut body = Vec::new();
    let mut state = State::Head;
    let mut head = Head::default();
    // When the request in progress sent its first byte.
    let mut started: Option<Instant> = None;
    loop {
        // Serve every complete request already buffered.
        loop {
            if started.is_none() && !rbuf.data().is_empty() {
                started = Some(Instant::now());
            }
            let step = match advance(cfg, &mut state, &mut head, &mut rbuf, &mut body, handler) {
                Ok(step) => step,
                Err(refusal) => {
                    write_refusal(&mut out, &refusal);
                    let _ = write_out(core, transport, stream, &mut out).await;
                    return End::BadHttp(refusal);
                }
            };
            match step {
                Step::NeedMore => break,
                Step::HeadDone => {
                    if head.expect_continue && !matches!(state, State::Length(0) | State::Head) {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                }
                Step::Request => {
                    started = None;
                    let before = out.len();
                    if let Some(wait) = handler.request(&head, &body, &mut out) {
                        // Replies go out in order: flush the ones before this, then wait.
                        let mut ready: Vec<u8> = out.drain(..before).collect();
                        if write_out(core, transport, stream, &mut ready)
                            .await
                            .is_err()
                        {
                            return End::WriteFailed;
                        }
                        match wait {
                            Wait::Delay(delay) => glommio::timer::sleep(delay).await,
                            Wait::Until(reply) => {
                                let bytes = reply.await;
                                out.extend_from_slice(&bytes);
                            }
                        }
                    }
                    shrink(&mut body);
                    if let Some(refusal) = handler.take_refusal() {
                        let _ = write_out(core, transport, stream, &mut out).await;
                        return End::BadHttp(refusal);
                    }
                    if !head.keep_alive {
                        return match write_out(core, transport, stream, &mut out).await {
                            Ok(()) => End::Requested,
                            Err(_) => End::WriteFailed,
                        };
                    }
                }
            }
        }
        if !out.is_empty() && write_out(core, transport, stream, &mut out).await.is_err() {
            return End::WriteFailed;
        }
        let mid_request = started.is_some() || !matches!(state, State::Head);
        let wait = match started {
            Some(at) => cfg.request_timeout.saturating_sub(at.elapsed()),
            None => cfg.idle_timeout,
        };
        let read =
            futures_lite::future::or(async { Some(stream.read(rbuf.spare()).await) }, async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
        match read {
            None if mid_request => {
                let refusal = Refusal::new(
                    408,
                    BadHttp::Timeout,
                    format!("request not complete within {:?}", cfg.request_timeout),
                );
                write_refusal(&mut out, &refusal);
                let _ = write_out(core, transport, stream, &mut out).await;
                return End::BadHttp(refusal);
            }
            None => return End::IdleTimeout,
            Some(Ok(0)) if mid_request => {
                return End::ReadError(io::ErrorKind::UnexpectedEof.into());
            }
            Some(Ok(0)) => return End::Eof,
            Some(Ok(n)) => {
                rbuf.filled(n);
                core.metrics.transport(transport).bytes_in.add(n as u64);
            }
            Some(Err(e)) => return End::ReadError(e),
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin, R: Registry>(
    core: &Core<R>,
    transport: Transport,
    stream: &mut S,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let result = stream.write_all(out).await;
    core.metrics
        .transport(transport)
        .bytes_out
        .add(out.len() as u64);
    out.clear();
    shrink(out);
    result
}

/// Drops a buffer's memory once a big request has passed.
pub(crate) fn shrink(buf: &mut Vec<u8>) {
    crate::buf::release(buf, SHRINK_ABOVE);
}

/// What [`advance`] got to.
enum Step {
    /// The buffered bytes end inside a request.
    NeedMore,
    /// A request head was parsed; its body (if any) comes next.
    HeadDone,
    /// A whole request (head in `head`, body in `scratch.body`) is ready to serve.
    Request,
}

/// Moves the current request forward with the buffered bytes (sans-IO: no reads, no writes).
fn advance(
    cfg: &Gateway,
    state: &mut State,
    head: &mut Head,
    rbuf: &mut ReadBuf,
    body: &mut Vec<u8>,
    handler: &mut impl Handler,
) -> Result<Step, Refusal> {
    match state {
        State::Head => {
            let Some(used) = parse_head(
                rbuf.data(),
                cfg.max_headers,
                cfg.max_header_bytes,
                head,
                handler,
            )?
            else {
                return Ok(Step::NeedMore);
            };
            rbuf.consume(used);
            body.clear();
            *state = if head.chunked {
                State::Chunked(Chunk::Size)
            } else {
                let len = head.content_length.unwrap_or(0);
                if len > cfg.max_body_bytes {
                    return Err(Refusal::new(
                        413,
                        BadHttp::BodyTooLarge,
                        format!(
                            "Content-Length {len} is over gateway.max_body_bytes ({})",
                            cfg.max_body_bytes
                        ),
                    ));
                }
                State::Length(len)
            };
            Ok(Step::HeadDone)
        }
        State::Length(left) => {
            let take = (*left).min(rbuf.data().len());
            body.extend_from_slice(&rbuf.data()[..take]);
            rbuf.consume(take);
            *left -= take;
            if *left > 0 {
                return Ok(Step::NeedMore);
            }
            *state = State::Head;
            Ok(Step::Request)
        }
        State::Chunked(chunk) => {
            if dechunk(chunk, rbuf, body, cfg.max_body_bytes, cfg.max_header_bytes)? {
                *state = State::Head;
                return Ok(Step::Request);
            }
            Ok(Step::NeedMore)
        }
    }
}

/// Parses a request head from the start of `data` into `head`, giving `handler` the headers
/// this module does not interpret; `Ok(None)` means the head is not complete yet. Returns the
/// head's length.
fn parse_head(
    data: &[u8],
    max_headers: usize,
    max_bytes: usize,
    head: &mut Head,
    handler: &mut impl Handler,
) -> Result<Option<usize>, Refusal> {
    let too_large = || {
        Refusal::new(
            431,
            BadHttp::HeadersTooLarge,
            format!("request head over gateway.max_header_bytes ({max_bytes})"),
        )
    };
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let used = match req.parse(data) {
        Ok(httparse::Status::Complete(used)) if used > max_bytes => return Err(too_large()),
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if data.len() > max_bytes => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                BadHttp::HeadersTooLarge,
                format!("more than gateway.max_headers ({max_headers}) header lines"),
            ));
        }
        Err(e) => return Err(Refusal::malformed(format!("bad HTTP request: {e}"))),
    };
    *head = Head::default();
    handler.begin();
    // A complete parse always has a method, path and version.
    head.method = match req.method.unwrap_or_default() {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        _ => HttpMethod::Other,
    };
    head.target.push_str(req.path.unwrap_or_default());
    let http10 = req.version == Some(0);
    head.http10 = http10;
    let mut close = false;
    let mut keep_alive = false;
    for h in req.headers.iter() {
        let (name, value) = (h.name, h.value);
        if name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| Refusal::malformed("bad Content-Length"))?;
            if head.content_length.is_some_and(|l| l != len) {
                return Err(Refusal::malformed("conflicting Content-Length headers"));
            }
            head.content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") || head.chunked {
                return Err(Refusal::new(
                    501,
                    BadHttp::Unsupported,
                    format!(
                        "Transfer-Encoding {:?} (only chunked is served)",
                        String::from_utf8_lossy(value)
                    ),
                ));
            }
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else {
            handler.header(name, value)?;
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(Refusal::malformed(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    head.keep_alive = if http10 { keep_alive && !close } else { !close };
    Ok(Some(used))
}

/// Decodes as much of a chunked body as is buffered into `body`; true when it is complete.
fn dechunk(
    chunk: &mut Chunk,
    rbuf: &mut ReadBuf,
    body: &mut Vec<u8>,
    max_body: usize,
    max_line: usize,
) -> Result<bool, Refusal> {
    loop {
        let data = rbuf.data();
        match *chunk {
            Chunk::Size => match httparse::parse_chunk_size(data) {
                Ok(httparse::Status::Complete((used, size))) => {
                    rbuf.consume(used);
                    if size == 0 {
                        *chunk = Chunk::Trailers;
                        continue;
                    }
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    if size > max_body.saturating_sub(body.len()) {
                        return Err(Refusal::new(
                            413,
                            BadHttp::BodyTooLarge,
                            format!("chunked body over gateway.max_body_bytes ({max_body})"),
                        ));
                    }
                    *chunk = Chunk::Data(size);
                }
                Ok(httparse::Status::Partial) if data.len() > MAX_CHUNK_LINE.min(max_line) => {
                    return Err(Refusal::malformed("chunk-size line too long"));
                }
                Ok(httparse::Status::Partial) => return Ok(false),
                Err(_) => return Err(Refusal::malformed("bad chunk size")),
            },
            Chunk::Data(left) => {
                if data.is_empty() {
                    return Ok(false);
                }
                let take = left.min(data.len());
                body.extend_from_slice(&data[..take]);
                rbuf.consume(take);
                *chunk = if take == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - take)
                };
            }
            Chunk::DataEnd => {
                if data.len() < 2 {
                    return Ok(false);
                }
                if &data[..2] != b"\r\n" {
                    return Err(Refusal::malformed("chunk data not followed by CRLF"));
                }
                rbuf.consume(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                // Trailer fields are read and dropped; an empty line ends the body.
                let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
                    if data.len() > max_line {
                        return Err(Refusal::new(
                            431,
                            BadHttp::HeadersTooLarge,
                            "trailer line over gateway.max_header_bytes",
                        ));
                    }
                    return Ok(false);
                };
                rbuf.consume(end + 2);
                if end == 0 {
                    return Ok(true);
                }
            }
        }
    }
}

/// Writes one HTTP/1.1 reply into the connection's output buffer.
pub(crate) struct Response<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> Response<'o> {
    /// The status line, and `Connection` when the request's HTTP version needs it said.
    pub(crate) fn start(out: &'o mut Vec<u8>, status: u16, head: &Head) -> Response<'o> {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut resp = Response { out };
        if !head.keep_alive {
            resp.header("Connection", b"close");
        } else if head.http10 {
            resp.header("Connection", b"keep-alive");
        }
        resp
    }

    /// A header whose value is already safe (it came from a parsed request header or is ours).
    pub(crate) fn header(&mut self, name: &str, value: &[u8]) {
        push_header(self.out, name, value);
    }

    /// A header whose value is untrusted text: controls, `%` and non-ASCII percent-encoded.
    pub(crate) fn header_text(&mut self, name: &str, value: &str) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        for part in utf8_percent_encode(value, HEADER_UNSAFE) {
            self.out.extend_from_slice(part.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
    }

    /// Header lines already in wire form (`Name: value\r\n` each).
    pub(crate) fn raw_headers(&mut self, lines: &[u8]) {
        self.out.extend_from_slice(lines);
    }

    /// Ends the head with `Content-Length` and appends the body.
    pub(crate) fn finish(self, body: &[u8]) {
        self.out.extend_from_slice(b"Content-Length: ");
        self.out
            .extend_from_slice(body.len().to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
    }
}

/// Appends one header line.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The reply to refused input; the connection closes after it.
fn write_refusal(out: &mut Vec<u8>, refusal: &Refusal) {
    let mut body = refusal.what.clone().into_bytes();
    body.push(b'\n');
    let close = Head::default(); // keep_alive false: the connection closes.
    let mut resp = Response::start(out, refusal.status, &close);
    resp.header("Content-Type", b"text/plain; charset=utf-8");
    resp.finish(&body);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// Feeds `data` to the request reader in pieces of `chunk` bytes, as reads would bring it, with
/// small limits, and checks the reader's bounds hold: it never keeps more than the head limit
/// plus one read buffered, never collects more body than the body limit, and refuses only with
/// the statuses it documents. For the fuzz target (`fuzz/`).
#[doc(hidden)]
pub fn fuzz_reader(data: &[u8], chunk: usize) {
    struct Null;
    impl Handler for Null {
        fn begin(&mut self) {}
        fn header(&mut self, _: &str, _: &[u8]) -> Result<(), Refusal> {
            Ok(())
        }
        fn request(&mut self, _: &Head, _: &[u8], _: &mut Vec<u8>) -> Option<Wait> {
            None
        }
    }
    let cfg = Gateway {
        max_header_bytes: 256,
        max_headers: 8,
        max_body_bytes: 300,
        ..Gateway::default()
    };
    let chunk = chunk.clamp(1, 512);
    let (mut state, mut head, mut body) = (State::Head, Head::default(), Vec::new());
    let mut rbuf = ReadBuf::new(INITIAL_READ_BUFFER);
    for piece in data.chunks(chunk) {
        let n = piece.len().min(rbuf.spare().len());
        rbuf.spare()[..n].copy_from_slice(&piece[..n]);
        rbuf.filled(n);
        loop {
            match advance(&cfg, &mut state, &mut head, &mut rbuf, &mut body, &mut Null) {
                Ok(Step::NeedMore) => break,
                Ok(_) => assert!(body.len() <= cfg.max_body_bytes),
                Err(r) => {
                    assert!(matches!(r.status, 400 | 413 | 431 | 501));
                    return;
                }
            }
        }
        assert!(rbuf.data().len() <= cfg.max_header_bytes + 512 + MAX_CHUNK_LINE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps every header it is given, as `name: value` lines.
    #[derive(Default)]
    struct Headers(Vec<String>);

    impl Handler for Headers {
        fn begin(&mut self) {
            self.0.clear();
        }
        fn header(&mut self, name: &str, value: &[u8]) -> Result<(), Refusal> {
            self.0
                .push(format!("{name}: {}", String::from_utf8_lossy(value)));
            Ok(())
        }
        fn request(&mut self, _: &Head, _: &[u8], _: &mut Vec<u8>) -> Option<Wait> {
            None
        }
    }

    fn head(text: &str) -> Result<Option<(usize, Head, Vec<String>)>, Refusal> {
        let mut head = Head::default();
        let mut seen = Headers::default();
        parse_head(text.as_bytes(), 16, 1024, &mut head, &mut seen)
            .map(|o| o.map(|n| (n, head, seen.0)))
    }

    #[test]
    fn head_fields() {
        let text = "POST /Arith?x=1 HTTP/1.1\r\nx-rpcx-servicemethod: Mul\r\n\
                    Authorization: t\r\nContent-Length: 7\r\n\r\nbody";
        let (n, h, others) = head(text).unwrap().unwrap();
        assert_eq!(n, text.len() - "body".len());
        assert_eq!(h.method, HttpMethod::Post);
        assert_eq!(h.target, "/Arith?x=1");
        assert!(h.keep_alive);
        assert_eq!(h.content_length, Some(7));
        assert_eq!(others, ["x-rpcx-servicemethod: Mul", "Authorization: t"]);
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn head_refusals() {
        let status = |t: &str| head(t).err().map(|r| r.status);
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            Some(400)
        );
        let many: String = (0..20).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
        assert_eq!(
            status(&format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000))),
            Some(431)
        );
        assert_eq!(status("GET / HTTP/1.1\r\nbad header\r\n\r\n"), Some(400));
    }

    #[test]
    fn http10_closes_unless_asked() {
        let (_, h, _) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let (_, h, _) = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (_, h, _) = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_bodies_across_reads() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        // Feed it one byte at a time: the decoder keeps its place.
        let mut rbuf = ReadBuf::new(INITIAL_READ_BUFFER);
        let mut chunk = Chunk::Size;
        let mut body = Vec::new();
        let mut done = false;
        for &b in wire.iter() {
            rbuf.spare()[0] = b;
            rbuf.filled(1);
            if dechunk(&mut chunk, &mut rbuf, &mut body, 100, 100).unwrap() {
                done = true;
                break;
            }
        }
        assert!(done);
        assert_eq!(body, b"Wikipedia");
        assert!(rbuf.data().is_empty());
        let mut rbuf = ReadBuf::new(INITIAL_READ_BUFFER);
        rbuf.spare()[..8].copy_from_slice(b"10\r\nabcd");
        rbuf.filled(8);
        let err = dechunk(&mut Chunk::Size, &mut rbuf, &mut Vec::new(), 8, 100).unwrap_err();
        assert_eq!(err.status, 413);
    }

    proptest::proptest! {
        /// Any bytes, split anywhere, never panic the request reader, and it never holds more
        /// than the head limit plus one read in its buffer or more than the body limit.
        #[test]
        fn request_reader_takes_any_input(
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ]),
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(1usize..64, 1..20),
        ) {
            let cfg = Gateway { max_header_bytes: 256, max_headers: 8, max_body_bytes: 300, ..Gateway::default() };
            let mut wire = prefix.to_vec();
            wire.extend_from_slice(&input);
            let (mut state, mut head, mut rbuf, mut body) = (State::Head, Head::default(), ReadBuf::new(INITIAL_READ_BUFFER), Vec::new());
            let mut at = 0;
            'feed: for cut in cuts.iter().cycle() {
                if at >= wire.len() {
                    break;
                }
                let n = (*cut).min(wire.len() - at);
                rbuf.spare()[..n].copy_from_slice(&wire[at..at + n]);
                rbuf.filled(n);
                at += n;
                loop {
                    match advance(&cfg, &mut state, &mut head, &mut rbuf, &mut body, &mut Headers::default()) {
                        Ok(Step::NeedMore) => break,
                        Ok(_) => {}
                        Err(r) => {
                            proptest::prop_assert!(matches!(r.status, 400 | 413 | 431 | 501));
                            break 'feed;
                        }
                    }
                    proptest::prop_assert!(body.len() <= cfg.max_body_bytes);
                }
                proptest::prop_assert!(rbuf.data().len() <= cfg.max_header_bytes + 64);
            }
        }
    }
}
