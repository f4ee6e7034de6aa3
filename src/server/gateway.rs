//! HTTP/1.1 on the rpcx port: rpcx's HTTP gateway ("http invoke") and JSON-RPC 2.0.
//!
//! A connection whose first byte is an HTTP method's lands here (see `sniff`). Requests are
//! parsed with `httparse`; each one is either a gateway call (PROTOCOL.md §5: the service, method
//! and serialize type in `X-RPCX-*` headers, the body the encoded args) or, when it carries
//! `X-JSONRPC-2.0: true` or the connection's first request did (rpcx routes whole connections by
//! the first request), a JSON-RPC 2.0 call (§6, in `jsonrpc`). Both end in the same
//! `dispatch::invoke` the rpcx frame loop uses.
//!
//! The loop is sequential, as HTTP/1.1 replies must be in request order: read what is there,
//! serve every complete request in it (pipelining), write all their replies at once, read again.
//!
//! Bounds, all in `[gateway]`: the request head (`max_header_bytes`, `max_headers` → 431), the
//! body (`max_body_bytes` → 413, checked against `Content-Length` before any of the body is
//! read, and while de-chunking), a whole request within `request_timeout` of its first byte, and
//! `idle_timeout` between requests. Input that cannot be parsed gets a 400 (501 for a transfer
//! coding other than chunked); each of these replies closes the connection, with one log line
//! and a per-core metric.
//!
//! **percore** choices where rpcx (Go's net/http) leaves it open: a request with
//! `X-RPCX-Oneway` runs and gets an empty 200 (there is nothing to wait for); `X-RPCX-Heartbeat`
//! is answered with the body echoed; `X-RPCX-CompressType: 1` means a gzip request body, and the
//! reply body is never compressed; methods other than GET, POST and PUT get 405.

use crate::buf::{ReadBuf, SHRINK_ABOVE};
use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use tracing::{debug, warn};

use super::Core;
use super::dispatch::{self, Invoked, UNAUTHENTICATED};
use super::jsonrpc;
use crate::codec;
use crate::config::Gateway;
use crate::metrics::Transport;
use crate::protocol::{META_AUTH, META_SERVER_TIMEOUT, Metadata, push_meta};

/// First size of a connection's read buffer; it grows to hold a request head and shrinks back.
const INITIAL_READ_BUFFER: usize = 8 << 10;
/// Longest chunk-size line accepted (hex size plus extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// Characters percent-encoded in header values percore writes from untrusted text: controls
/// (so no text can end a header line), `%` (so the encoding is unambiguous) and, by
/// `utf8_percent_encode` itself, every non-ASCII byte.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b'%');

// Header names as PROTOCOL.md §5 spells them (HTTP header names are case-insensitive).
const X_VERSION: &str = "X-RPCX-Version";
const X_MESSAGE_ID: &str = "X-RPCX-MessageID";
const X_SERVICE_PATH: &str = "X-RPCX-ServicePath";
const X_SERVICE_METHOD: &str = "X-RPCX-ServiceMethod";
const X_SERIALIZE_TYPE: &str = "X-RPCX-SerializeType";
const X_META: &str = "X-RPCX-Meta";
const X_STATUS: &str = "X-RPCX-MessageStatusType";
const X_ERROR: &str = "X-RPCX-ErrorMessage";

/// Why an HTTP connection ended.
#[derive(Debug)]
enum Close {
    /// The peer closed its side between requests.
    Eof,
    /// The request asked for it (`Connection: close`, or HTTP/1.0 without keep-alive).
    Requested,
    /// No request within `idle_timeout`.
    Idle,
    /// Reading failed (reset), or the peer closed in the middle of a request.
    ReadError(io::Error),
    /// Writing failed.
    WriteFailed,
    /// Bad input, answered with this status before closing (metric reason, description).
    Refused(Refusal),
}

/// Input refused with an HTTP error status; the connection closes after the reply.
#[derive(Debug)]
struct Refusal {
    status: u16,
    /// One of `metrics::BAD_HTTP_REASONS`.
    reason: &'static str,
    what: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, what: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            what: what.into(),
        }
    }

    fn malformed(what: impl Into<String>) -> Refusal {
        Refusal::new(400, "malformed", what)
    }
}

/// Serves HTTP requests on `stream` until the peer closes it, asks to, idles out, or sends
/// input that is refused.
pub(crate) async fn serve<S>(
    core: &Rc<Core>,
    mut stream: S,
    peer: SocketAddr,
    transport: Transport,
) -> crate::metrics::Close
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let close = run(core, &mut stream, transport).await;
    match &close {
        Close::Refused(r) => {
            core.metrics.bad_http(r.reason);
            warn!(core = core.index, %peer, reason = r.reason, status = r.status, "closing HTTP connection: {}", r.what);
        }
        Close::Idle => debug!(core = core.index, %peer, "HTTP connection idle: closing"),
        Close::Requested => {
            debug!(core = core.index, %peer, "HTTP connection closed as the request asked")
        }
        Close::ReadError(e) => {
            debug!(core = core.index, %peer, error = %e, "HTTP connection read failed")
        }
        Close::WriteFailed => debug!(core = core.index, %peer, "HTTP connection write failed"),
        Close::Eof => debug!(core = core.index, %peer, "HTTP connection closed by peer"),
    }
    let _ = stream.close().await;
    close.reason()
}

impl Close {
    /// The `reason` label of the connection close.
    fn reason(&self) -> crate::metrics::Close {
        use crate::metrics::Close as Reason;
        match self {
            Close::Refused(_) => Reason::BadFrame,
            Close::Idle => Reason::IdleTimeout,
            // Asked for by the peer (`Connection: close`), as good as the peer closing.
            Close::Requested | Close::Eof => Reason::Eof,
            Close::ReadError(_) => Reason::ReadError,
            Close::WriteFailed => Reason::WriteError,
        }
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

/// What a complete request asks for, taken out of the head so the read buffer can move on.
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) method: HttpMethod,
    /// The request target as sent (path and query).
    pub(crate) target: String,
    pub(crate) keep_alive: bool,
    /// HTTP/1.0: keep-alive must be said in the reply.
    http10: bool,
    expect_continue: bool,
    content_length: Option<usize>,
    chunked: bool,
    /// `X-JSONRPC-2.0: true`.
    pub(crate) jsonrpc: bool,
    pub(crate) service_path: Option<String>,
    pub(crate) service_method: Option<String>,
    pub(crate) serialize: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) meta: Option<String>,
    pub(crate) auth: Option<String>,
    pub(crate) compress: Option<String>,
    pub(crate) oneway: bool,
    pub(crate) heartbeat: bool,
    /// The request's own `X-RPCX-*` header lines, which rpcx copies into a bad-header reply.
    echo: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Other,
}

/// Per-connection buffers reused from request to request.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) body: Vec<u8>,
    pub(crate) inflated: Vec<u8>,
    pub(crate) meta_in: Vec<u8>,
    pub(crate) meta_out: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    /// A JSON-RPC reply body.
    pub(crate) json: Vec<u8>,
}

async fn run<S>(core: &Rc<Core>, stream: &mut S, transport: Transport) -> Close
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &core.config.gateway;
    let mut rbuf = ReadBuf::new(INITIAL_READ_BUFFER);
    let mut out: Vec<u8> = Vec::new();
    let mut scratch = Scratch::default();
    let mut state = State::Head;
    let mut head = Head::default();
    // rpcx routes a whole connection to JSON-RPC by its first request's header.
    let mut first_request = true;
    let mut jsonrpc_conn = false;
    // When the request in progress sent its first byte.
    let mut started: Option<Instant> = None;
    loop {
        // Serve every complete request already buffered.
        loop {
            if started.is_none() && !rbuf.data().is_empty() {
                started = Some(Instant::now());
            }
            let step = match advance(cfg, &mut state, &mut head, &mut rbuf, &mut scratch.body) {
                Ok(step) => step,
                Err(refusal) => {
                    write_refusal(&mut out, &refusal);
                    let _ = write_out(core, transport, stream, &mut out).await;
                    return Close::Refused(refusal);
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
                    if first_request {
                        jsonrpc_conn = head.jsonrpc;
                        first_request = false;
                    }
                    let before = out.len();
                    let delay = serve_request(core, &head, jsonrpc_conn, &mut scratch, &mut out);
                    if let Some(delay) = delay {
                        // Replies go out in order: flush the ones before this, then wait.
                        let mut ready: Vec<u8> = out.drain(..before).collect();
                        if write_out(core, transport, stream, &mut ready)
                            .await
                            .is_err()
                        {
                            return Close::WriteFailed;
                        }
                        glommio::timer::sleep(delay).await;
                    }
                    shrink(&mut scratch.body);
                    if !head.keep_alive {
                        return match write_out(core, transport, stream, &mut out).await {
                            Ok(()) => Close::Requested,
                            Err(_) => Close::WriteFailed,
                        };
                    }
                }
            }
        }
        if !out.is_empty() && write_out(core, transport, stream, &mut out).await.is_err() {
            return Close::WriteFailed;
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
                    "timeout",
                    format!("request not complete within {:?}", cfg.request_timeout),
                );
                write_refusal(&mut out, &refusal);
                let _ = write_out(core, transport, stream, &mut out).await;
                return Close::Refused(refusal);
            }
            None => return Close::Idle,
            Some(Ok(0)) if mid_request => {
                return Close::ReadError(io::ErrorKind::UnexpectedEof.into());
            }
            Some(Ok(0)) => return Close::Eof,
            Some(Ok(n)) => {
                rbuf.filled(n);
                core.metrics.transport(transport).bytes_in.add(n as u64);
            }
            Some(Err(e)) => return Close::ReadError(e),
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(
    core: &Core,
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

fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > SHRINK_ABOVE {
        *buf = Vec::new();
    }
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
) -> Result<Step, Refusal> {
    match state {
        State::Head => {
            let Some(used) = parse_head(rbuf.data(), cfg.max_headers, cfg.max_header_bytes, head)?
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
                        "body_too_large",
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

/// Parses a request head from the start of `data` into `head`; `Ok(None)` means it is not
/// complete yet. Returns the head's length.
fn parse_head(
    data: &[u8],
    max_headers: usize,
    max_bytes: usize,
    head: &mut Head,
) -> Result<Option<usize>, Refusal> {
    let too_large = || {
        Refusal::new(
            431,
            "headers_too_large",
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
                "headers_too_large",
                format!("more than gateway.max_headers ({max_headers}) header lines"),
            ));
        }
        Err(e) => return Err(Refusal::malformed(format!("bad HTTP request: {e}"))),
    };
    *head = Head::default();
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
        let name = h.name;
        let value = h.value;
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
                    "unsupported",
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
        } else if name.eq_ignore_ascii_case("x-jsonrpc-2.0") {
            head.jsonrpc = value.trim_ascii().eq_ignore_ascii_case(b"true");
        } else if name.eq_ignore_ascii_case("authorization") {
            set_once(&mut head.auth, name, value)?;
        } else if name.len() > 7 && name[..7].eq_ignore_ascii_case("x-rpcx-") {
            let field = &name[7..];
            let mut flag = None;
            let slot = if field.eq_ignore_ascii_case("servicepath") {
                &mut head.service_path
            } else if field.eq_ignore_ascii_case("servicemethod") {
                &mut head.service_method
            } else if field.eq_ignore_ascii_case("serializetype") {
                &mut head.serialize
            } else if field.eq_ignore_ascii_case("messageid") {
                &mut head.message_id
            } else if field.eq_ignore_ascii_case("version") {
                &mut head.version
            } else if field.eq_ignore_ascii_case("meta") {
                &mut head.meta
            } else if field.eq_ignore_ascii_case("compresstype") {
                &mut head.compress
            } else {
                // rpcx: a non-empty value sets the flag.
                if field.eq_ignore_ascii_case("oneway") {
                    head.oneway |= !value.is_empty();
                } else if field.eq_ignore_ascii_case("heartbeat") {
                    head.heartbeat |= !value.is_empty();
                }
                &mut flag
            };
            set_once(slot, name, value)?;
            // What a bad-header reply echoes; the error headers themselves are percore's to set.
            if !field.eq_ignore_ascii_case("messagestatustype")
                && !field.eq_ignore_ascii_case("errormessage")
            {
                push_header(&mut head.echo, name, value);
            }
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

/// Keeps the first value of a header, as Go's `Header.Get` does.
fn set_once(slot: &mut Option<String>, name: &str, value: &[u8]) -> Result<(), Refusal> {
    if slot.is_none() {
        let value = std::str::from_utf8(value)
            .map_err(|_| Refusal::malformed(format!("{name} is not UTF-8")))?;
        *slot = Some(value.to_owned());
    }
    Ok(())
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
                            "body_too_large",
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
                            "headers_too_large",
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

/// Serves one complete request, appending its reply to `out`. Returns a delay to wait before
/// the reply may be sent (a handler's simulated work).
fn serve_request(
    core: &Rc<Core>,
    head: &Head,
    jsonrpc_conn: bool,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Option<Duration> {
    if head.jsonrpc || jsonrpc_conn {
        let Scratch {
            body,
            meta_in,
            meta_out,
            payload,
            json,
            ..
        } = scratch;
        request_metadata(head, meta_in);
        let delay = jsonrpc::serve(core, body, meta_in, meta_out, payload, json);
        let mut resp = Response::start(out, 200, head);
        if !json.is_empty() {
            resp.header("Content-Type", b"application/json");
        }
        resp.finish(json);
        shrink(json);
        return delay;
    }
    if head.method == HttpMethod::Other {
        core.metrics.gateway_errors.inc();
        let mut resp = Response::start(out, 405, head);
        resp.header("Allow", b"GET, POST, PUT");
        resp.finish(b"");
        return None;
    }
    gateway(core, head, scratch, out)
}

/// An rpcx gateway call (PROTOCOL.md §5), in the order rpcx's `handleGatewayRequest` checks.
fn gateway(core: &Core, head: &Head, scratch: &mut Scratch, out: &mut Vec<u8>) -> Option<Duration> {
    core.metrics.gateway_requests.inc();
    let from_url = head.service_path.as_deref().is_none_or(str::is_empty);
    let service_path: Cow<'_, str> = match &head.service_path {
        Some(p) if !p.is_empty() => Cow::Borrowed(p),
        _ => {
            let path = head.target.split(['?', '#']).next().unwrap_or_default();
            percent_decode_str(path.trim_start_matches('/')).decode_utf8_lossy()
        }
    };
    let method = head.service_method.as_deref().unwrap_or_default();

    // Header values that do not convert, then the three required headers.
    let mut bad = None;
    // The message ID is only echoed, but rpcx refuses one that is not a u64.
    if let Some(id) = &head.message_id
        && parse_decimal(id).is_none()
    {
        bad = Some(format!("strconv.ParseUint: parsing {id:?}: invalid syntax"));
    }
    let mut serialize: i64 = 0;
    if bad.is_none()
        && let Some(st) = head.serialize.as_deref().filter(|s| !s.is_empty())
    {
        match st.parse::<i64>() {
            Ok(v) => serialize = v,
            Err(_) => bad = Some(format!("strconv.Atoi: parsing {st:?}: invalid syntax")),
        }
    }
    let mut gzipped = false;
    if bad.is_none()
        && let Some(ct) = head.compress.as_deref().filter(|s| !s.is_empty())
    {
        match ct {
            "0" => {}
            "1" => gzipped = true,
            other => bad = Some(format!("unknown compress type: {other}")),
        }
    }
    if bad.is_none() && service_path.is_empty() {
        bad = Some("empty servicepath".into());
    }
    if bad.is_none() && method.is_empty() {
        bad = Some("empty servicemethod".into());
    }
    if bad.is_none() && head.serialize.as_deref().is_none_or(str::is_empty) {
        bad = Some("empty serialized type".into());
    }
    if let Some(text) = bad {
        // rpcx answers these with 200, the request's X-RPCX-* headers and the error headers.
        core.metrics.gateway_errors.inc();
        let mut resp = Response::start(out, 200, head);
        resp.raw_headers(&head.echo);
        if from_url && !service_path.is_empty() {
            resp.header_text(X_SERVICE_PATH, &service_path);
        }
        resp.error(&text);
        resp.finish(b"");
        return None;
    }

    request_metadata(head, &mut scratch.meta_in);
    let body: &[u8] = if gzipped {
        let limit = core.config.limits.max_decompressed_bytes;
        if let Err(e) = codec::gunzip(&scratch.body, limit, &mut scratch.inflated) {
            failed(core, head, &service_path, 500, &e.to_string(), out);
            return None;
        }
        &scratch.inflated
    } else {
        &scratch.body
    };
    if head.heartbeat {
        let mut resp = success(out, head, &service_path);
        resp.header(X_META, head.meta.as_deref().unwrap_or_default().as_bytes());
        resp.finish(body);
        return None;
    }
    // Checked by Metadata::parse's own rules when it was built, so this cannot fail.
    let metadata = Metadata::parse(&scratch.meta_in).unwrap_or_default();
    // A serialize type outside a byte has no codec, as a wire value with no codec has none.
    let wire_serialize = u8::try_from(serialize).unwrap_or(u8::MAX);
    let invoked = if (0..=255).contains(&serialize) {
        dispatch::invoke(
            core,
            &service_path,
            method,
            wire_serialize,
            metadata,
            body,
            &mut scratch.meta_out,
            &mut scratch.payload,
        )
    } else {
        Invoked::Failed(Cow::Owned(format!("can not find codec for {serialize}")))
    };
    if head.oneway {
        // Nothing to wait for, not even an error; HTTP still needs an answer.
        success(out, head, &service_path).finish(b"");
        return None;
    }
    let delay = match invoked {
        Invoked::Ready => None,
        Invoked::After(delay) => {
            let deadline = metadata
                .get(META_SERVER_TIMEOUT)
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(Duration::from_millis);
            match deadline {
                Some(deadline) if deadline < delay => {
                    failed(
                        core,
                        head,
                        &service_path,
                        500,
                        "context deadline exceeded",
                        out,
                    );
                    return Some(deadline);
                }
                _ => Some(delay),
            }
        }
        // Service, lookup and codec errors.
        Invoked::Failed(text) => {
            failed(core, head, &service_path, 500, &text, out);
            return None;
        }
        // rpcx's gateway answers a failed auth check with 401 and the error headers.
        Invoked::Unauthenticated => {
            failed(core, head, &service_path, 401, UNAUTHENTICATED, out);
            return None;
        }
    };
    let mut resp = success(out, head, &service_path);
    let meta = reply_meta(&scratch.meta_out);
    resp.header(X_META, meta.as_bytes());
    if head.serialize.as_deref() == Some("1") {
        resp.header("Content-Type", b"application/json");
    }
    resp.finish(&scratch.payload);
    delay
}

/// A decimal u64 as Go's `strconv.ParseUint(s, 10, 64)` takes it (no sign).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The request's metadata block: `X-RPCX-Meta` (URL-query-encoded, first value of a key wins,
/// as Go's `url.Values.Get`) and `Authorization` as `__AUTH`.
pub(crate) fn request_metadata(head: &Head, block: &mut Vec<u8>) {
    block.clear();
    let mut seen: Vec<Cow<'_, str>> = Vec::new();
    if let Some(meta) = &head.meta {
        for (k, v) in form_urlencoded::parse(meta.as_bytes()) {
            if seen.contains(&k) || (head.auth.is_some() && k == META_AUTH) {
                continue;
            }
            push_meta(block, k.as_bytes(), v.as_bytes());
            seen.push(k);
        }
    }
    if let Some(auth) = &head.auth {
        push_meta(block, META_AUTH.as_bytes(), auth.as_bytes());
    }
}

/// A reply metadata block as `X-RPCX-Meta`: URL-query-encoded, keys sorted (Go's
/// `url.Values.Encode`).
fn reply_meta(block: &[u8]) -> String {
    let meta = Metadata::parse(block).unwrap_or_default();
    let mut pairs: Vec<(&str, &str)> = meta.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// Starts a reply with the headers of rpcx's success path.
fn success<'o>(out: &'o mut Vec<u8>, head: &Head, service_path: &str) -> Response<'o> {
    let mut resp = Response::start(out, 200, head);
    rpcx_headers(&mut resp, head, service_path);
    resp
}

/// An error reply after the headers were accepted: `status` with rpcx's headers and the text.
fn failed(
    core: &Core,
    head: &Head,
    service_path: &str,
    status: u16,
    text: &str,
    out: &mut Vec<u8>,
) {
    core.metrics.gateway_errors.inc();
    let mut resp = Response::start(out, status, head);
    rpcx_headers(&mut resp, head, service_path);
    resp.error(text);
    resp.finish(b"");
}

fn rpcx_headers(resp: &mut Response<'_>, head: &Head, service_path: &str) {
    resp.header(
        X_VERSION,
        head.version.as_deref().unwrap_or_default().as_bytes(),
    );
    resp.header(
        X_MESSAGE_ID,
        head.message_id.as_deref().unwrap_or_default().as_bytes(),
    );
    resp.header_text(X_SERVICE_PATH, service_path);
    resp.header(
        X_SERVICE_METHOD,
        head.service_method
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    resp.header(
        X_SERIALIZE_TYPE,
        head.serialize.as_deref().unwrap_or_default().as_bytes(),
    );
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
    fn header(&mut self, name: &str, value: &[u8]) {
        push_header(self.out, name, value);
    }

    /// A header whose value is untrusted text: controls, `%` and non-ASCII percent-encoded.
    fn header_text(&mut self, name: &str, value: &str) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        for part in utf8_percent_encode(value, HEADER_UNSAFE) {
            self.out.extend_from_slice(part.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn raw_headers(&mut self, lines: &[u8]) {
        self.out.extend_from_slice(lines);
    }

    /// rpcx's error headers.
    fn error(&mut self, text: &str) {
        self.header(X_STATUS, b"Error");
        self.header_text(X_ERROR, text);
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

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(usize, Head)>, Refusal> {
        let mut head = Head::default();
        parse_head(text.as_bytes(), 16, 1024, &mut head).map(|o| o.map(|n| (n, head)))
    }

    #[test]
    fn head_fields() {
        let text = "POST /Arith?x=1 HTTP/1.1\r\nx-rpcx-servicemethod: Mul\r\n\
                    X-Rpcx-Serializetype: 3\r\nX-RPCX-Oneway: 1\r\nAuthorization: t\r\n\
                    Content-Length: 7\r\n\r\nbody";
        let (n, h) = head(text).unwrap().unwrap();
        assert_eq!(n, text.len() - "body".len());
        assert_eq!(h.method, HttpMethod::Post);
        assert_eq!(h.service_method.as_deref(), Some("Mul"));
        assert_eq!(h.serialize.as_deref(), Some("3"));
        assert_eq!(h.auth.as_deref(), Some("t"));
        assert!(h.oneway && !h.heartbeat && h.keep_alive);
        assert_eq!(h.content_length, Some(7));
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
        let (_, h) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let (_, h) = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (_, h) = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
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

    #[test]
    fn metadata_in_and_out() {
        let h = Head {
            meta: Some("b=2&a=%C3%A9+x&b=3".into()),
            auth: Some("Bearer t".into()),
            ..Head::default()
        };
        let mut block = Vec::new();
        request_metadata(&h, &mut block);
        let meta = Metadata::parse(&block).unwrap();
        let entries: Vec<_> = meta.iter().collect();
        assert_eq!(entries, [("b", "2"), ("a", "é x"), ("__AUTH", "Bearer t")]);
        assert_eq!(reply_meta(&block), "__AUTH=Bearer+t&a=%C3%A9+x&b=2");
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
                    match advance(&cfg, &mut state, &mut head, &mut rbuf, &mut body) {
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

    #[test]
    fn error_text_is_percent_encoded() {
        let mut out = Vec::new();
        let head = Head {
            keep_alive: true,
            ..Head::default()
        };
        let mut resp = Response::start(&mut out, 500, &head);
        resp.error("can't find service Ärith\r\nX: y 100%");
        resp.finish(b"");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "X-RPCX-ErrorMessage: can't find service %C3%84rith%0D%0AX: y 100%25\r\n"
            ),
            "{text}"
        );
    }
}
