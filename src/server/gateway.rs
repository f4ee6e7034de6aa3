//! rpcx's HTTP gateway ("http invoke", PROTOCOL.md §5) and JSON-RPC 2.0 (§6), on the HTTP/1.1
//! connection loop of [`super::http`].
//!
//! A connection whose first byte is an HTTP method's lands here (see `sniff`). Each request is
//! either a gateway call (the service, method and serialize type in `X-RPCX-*` headers, the body
//! the encoded args) or, when it carries `X-JSONRPC-2.0: true` or the connection's first request
//! did (rpcx routes whole connections by the first request), a JSON-RPC 2.0 call (in `jsonrpc`).
//! Both end in the same `dispatch::invoke` the rpcx frame loop uses.
//!
//! A gateway call is three steps, in the order rpcx's `handleGatewayRequest` takes them:
//! [`check`] the headers (a bad or missing one is answered 200 with rpcx's error headers),
//! [`call`] the method, and write the [`reply`].
//!
//! **percore** choices where rpcx (Go's net/http) leaves it open: a request with
//! `X-RPCX-Oneway` runs and gets an empty 200 (there is nothing to wait for); `X-RPCX-Heartbeat`
//! is answered with the body echoed; `X-RPCX-CompressType: 1` means a gzip request body, and the
//! reply body is never compressed; methods other than GET, POST and PUT get 405.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::io::{AsyncRead, AsyncWrite};
use percent_encoding::percent_decode_str;

use super::Core;
use super::dispatch::{self, DEADLINE_EXCEEDED, Invoked, UNAUTHENTICATED};
use super::http::{self, Head, HttpMethod, Refusal, Response, Wait, push_header, shrink};
use super::jsonrpc;
use crate::buf::{SCRATCH_KEEP, release};
use crate::codec;
use crate::metrics::BadHttp;
use crate::metrics::Transport;
use crate::protocol::{META_AUTH, Metadata, push_meta};
use crate::service::Registry;

// Header names as PROTOCOL.md §5 spells them (HTTP header names are case-insensitive).
const X_VERSION: &str = "X-RPCX-Version";
const X_MESSAGE_ID: &str = "X-RPCX-MessageID";
const X_SERVICE_PATH: &str = "X-RPCX-ServicePath";
const X_SERVICE_METHOD: &str = "X-RPCX-ServiceMethod";
const X_SERIALIZE_TYPE: &str = "X-RPCX-SerializeType";
const X_META: &str = "X-RPCX-Meta";
const X_STATUS: &str = "X-RPCX-MessageStatusType";
const X_ERROR: &str = "X-RPCX-ErrorMessage";

/// Serves gateway and JSON-RPC requests on `stream` until the HTTP loop ends.
pub(crate) async fn serve<S, R: Registry>(
    core: &Rc<Core<R>>,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
) -> crate::metrics::Close
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut gateway = Gateway {
        core: Rc::clone(core),
        headers: RpcxHeaders::default(),
        first_request: true,
        jsonrpc_conn: false,
        scratch: Scratch::default(),
        refused: None,
    };
    http::serve(core, stream, peer, transport, &mut gateway).await
}

/// One HTTP connection's gateway state.
struct Gateway<R> {
    core: Rc<Core<R>>,
    /// The current request's rpcx headers.
    headers: RpcxHeaders,
    first_request: bool,
    /// rpcx routes a whole connection to JSON-RPC by its first request's header.
    jsonrpc_conn: bool,
    scratch: Scratch,
    /// The last request was refused over a limit: the connection closes after its reply.
    refused: Option<Refusal>,
}

/// The headers of a request the gateway reads (PROTOCOL.md §5).
#[derive(Clone, Debug, Default)]
pub(crate) struct RpcxHeaders {
    /// `X-JSONRPC-2.0: true`.
    jsonrpc: bool,
    service_path: Option<String>,
    service_method: Option<String>,
    serialize: Option<String>,
    message_id: Option<String>,
    version: Option<String>,
    meta: Option<String>,
    auth: Option<String>,
    compress: Option<String>,
    oneway: bool,
    heartbeat: bool,
    /// The request's own `X-RPCX-*` header lines, which rpcx copies into a bad-header reply.
    echo: Vec<u8>,
}

/// Per-connection buffers reused from request to request.
#[derive(Default)]
struct Scratch {
    inflated: Vec<u8>,
    meta_in: Vec<u8>,
    meta_out: Vec<u8>,
    payload: Vec<u8>,
    /// A JSON-RPC reply body.
    json: Vec<u8>,
}

impl<R: Registry> http::Handler for Gateway<R> {
    fn begin(&mut self) {
        let mut echo = std::mem::take(&mut self.headers.echo);
        echo.clear();
        self.headers = RpcxHeaders {
            echo,
            ..RpcxHeaders::default()
        };
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), Refusal> {
        self.headers.read(name, value)
    }

    fn request(&mut self, head: &Head, body: &[u8], out: &mut Vec<u8>) -> Option<Wait> {
        let wait = self.serve_request(head, body, out);
        // What a big request grew is given back between requests.
        let s = &mut self.scratch;
        for buf in [
            &mut s.inflated,
            &mut s.meta_in,
            &mut s.meta_out,
            &mut s.payload,
            &mut s.json,
        ] {
            release(buf, SCRATCH_KEEP);
        }
        wait
    }

    fn take_refusal(&mut self) -> Option<Refusal> {
        self.refused.take()
    }
}

impl RpcxHeaders {
    /// Takes the header if it is one the gateway reads.
    fn read(&mut self, name: &str, value: &[u8]) -> Result<(), Refusal> {
        let h = self;
        if name.eq_ignore_ascii_case("x-jsonrpc-2.0") {
            h.jsonrpc = value.trim_ascii().eq_ignore_ascii_case(b"true");
            return Ok(());
        }
        if name.eq_ignore_ascii_case("authorization") {
            return set_once(&mut h.auth, name, value);
        }
        if name.len() <= 7 || !name[..7].eq_ignore_ascii_case("x-rpcx-") {
            return Ok(());
        }
        let field = &name[7..];
        let mut flag = None;
        let slot = if field.eq_ignore_ascii_case("servicepath") {
            &mut h.service_path
        } else if field.eq_ignore_ascii_case("servicemethod") {
            &mut h.service_method
        } else if field.eq_ignore_ascii_case("serializetype") {
            &mut h.serialize
        } else if field.eq_ignore_ascii_case("messageid") {
            &mut h.message_id
        } else if field.eq_ignore_ascii_case("version") {
            &mut h.version
        } else if field.eq_ignore_ascii_case("meta") {
            &mut h.meta
        } else if field.eq_ignore_ascii_case("compresstype") {
            &mut h.compress
        } else {
            // rpcx: a non-empty value sets the flag.
            if field.eq_ignore_ascii_case("oneway") {
                h.oneway |= !value.is_empty();
            } else if field.eq_ignore_ascii_case("heartbeat") {
                h.heartbeat |= !value.is_empty();
            }
            &mut flag
        };
        set_once(slot, name, value)?;
        // What a bad-header reply echoes; the error headers themselves are percore's to set.
        if !field.eq_ignore_ascii_case("messagestatustype")
            && !field.eq_ignore_ascii_case("errormessage")
        {
            push_header(&mut h.echo, name, value);
        }
        Ok(())
    }
}

impl<R: Registry> Gateway<R> {
    fn serve_request(&mut self, head: &Head, body: &[u8], out: &mut Vec<u8>) -> Option<Wait> {
        if self.first_request {
            self.jsonrpc_conn = self.headers.jsonrpc;
            self.first_request = false;
        }
        let (core, h, scratch) = (&self.core, &self.headers, &mut self.scratch);
        if h.jsonrpc || self.jsonrpc_conn {
            request_metadata(h, &mut scratch.meta_in);
            let Scratch {
                meta_in,
                meta_out,
                payload,
                json,
                ..
            } = scratch;
            let wait = match jsonrpc::serve(core, body, meta_in, meta_out, payload, json) {
                None => None,
                Some(jsonrpc::Wait::Delay(delay)) => Some(Wait::Delay(delay)),
                Some(jsonrpc::Wait::Until(body)) => {
                    let head = head.clone();
                    return Some(Wait::Until(Box::pin(async move {
                        let mut out = Vec::new();
                        jsonrpc_reply(&head, &body.await[..], &mut out);
                        out
                    })));
                }
            };
            jsonrpc_reply(head, json, out);
            shrink(json);
            return wait;
        }
        if head.method == HttpMethod::Other {
            core.metrics.gateway_errors.inc();
            let mut resp = Response::start(out, 405, head);
            resp.header("Allow", b"GET, POST, PUT");
            resp.finish(b"");
            return None;
        }
        core.metrics.gateway_requests.inc();
        let call_headers = match check(head, h) {
            Ok(checked) => checked,
            Err(Bad { text, service_path }) => {
                // rpcx answers these with 200, the request's X-RPCX-* headers and the error.
                core.metrics.gateway_errors.inc();
                let mut resp = Response::start(out, 200, head);
                resp.raw_headers(&h.echo);
                if let Some(path) = service_path {
                    resp.header_text(X_SERVICE_PATH, &path);
                }
                error_headers(&mut resp, &text);
                resp.finish(b"");
                return None;
            }
        };
        let outcome = call(core, h, &call_headers, body, scratch);
        if let Outcome::BadBody(text, true) = &outcome {
            // Over the inflate limit: answered, then the connection closes (a client sending
            // such bodies should not keep a connection that grew to hold one).
            self.refused = Some(Refusal::new(500, BadHttp::BodyTooLarge, text.clone()));
            let closing = Head {
                keep_alive: false,
                ..head.clone()
            };
            failed(
                core,
                &closing,
                h,
                &call_headers.service_path,
                500,
                text,
                out,
            );
            return None;
        }
        reply(
            core,
            head,
            h,
            &call_headers.service_path,
            outcome,
            scratch,
            body,
            out,
        )
    }
}

/// A JSON-RPC reply: 200 with the body (empty when every call was a notification).
fn jsonrpc_reply(head: &Head, json: &[u8], out: &mut Vec<u8>) {
    let mut resp = Response::start(out, 200, head);
    if !json.is_empty() {
        resp.header("Content-Type", b"application/json");
    }
    resp.finish(json);
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

/// A gateway call's headers, checked.
struct Checked<'h> {
    /// `X-RPCX-ServicePath`, or the URL path when that header is missing or empty.
    service_path: Cow<'h, str>,
    method: &'h str,
    serialize: i64,
    gzipped: bool,
}

/// Headers that do not make a call: rpcx's error text, and the service path to name in the
/// reply when it came from the URL.
struct Bad {
    text: String,
    service_path: Option<String>,
}

/// Step 1: header values that do not convert, then the three required headers, in rpcx's order.
fn check<'h>(head: &'h Head, h: &'h RpcxHeaders) -> Result<Checked<'h>, Bad> {
    let from_url = h.service_path.as_deref().is_none_or(str::is_empty);
    let service_path: Cow<'_, str> = match &h.service_path {
        Some(p) if !p.is_empty() => Cow::Borrowed(p),
        _ => {
            let path = head.target.split(['?', '#']).next().unwrap_or_default();
            percent_decode_str(path.trim_start_matches('/')).decode_utf8_lossy()
        }
    };
    let bad = |text: String| Bad {
        service_path: (from_url && !service_path.is_empty()).then(|| service_path.to_string()),
        text,
    };
    // The message ID is only echoed, but rpcx refuses one that is not a u64.
    if let Some(id) = &h.message_id
        && parse_decimal(id).is_none()
    {
        return Err(bad(format!(
            "strconv.ParseUint: parsing {id:?}: invalid syntax"
        )));
    }
    let mut serialize: i64 = 0;
    if let Some(st) = h.serialize.as_deref().filter(|s| !s.is_empty()) {
        serialize = st
            .parse::<i64>()
            .map_err(|_| bad(format!("strconv.Atoi: parsing {st:?}: invalid syntax")))?;
    }
    let gzipped = match h.compress.as_deref().unwrap_or_default() {
        "" | "0" => false,
        "1" => true,
        other => return Err(bad(format!("unknown compress type: {other}"))),
    };
    let method = h.service_method.as_deref().unwrap_or_default();
    if service_path.is_empty() {
        return Err(bad("empty servicepath".into()));
    }
    if method.is_empty() {
        return Err(bad("empty servicemethod".into()));
    }
    if h.serialize.as_deref().is_none_or(str::is_empty) {
        return Err(bad("empty serialized type".into()));
    }
    Ok(Checked {
        service_path,
        method,
        serialize,
        gzipped,
    })
}

/// What became of a gateway call.
enum Outcome {
    /// A heartbeat: echo the (inflated) body.
    Heartbeat,
    /// The body did not inflate: 500 with this text; true when it was over the inflate limit.
    BadBody(String, bool),
    /// The call ran (or was refused by dispatch).
    Invoked(Invoked),
}

/// Step 2: the request metadata, the body (inflated), and the call.
fn call<R: Registry>(
    core: &Core<R>,
    h: &RpcxHeaders,
    checked: &Checked<'_>,
    body: &[u8],
    scratch: &mut Scratch,
) -> Outcome {
    request_metadata(h, &mut scratch.meta_in);
    if checked.gzipped {
        let limit = core.config.limits.max_decompressed_bytes;
        if let Err(e) = codec::gunzip(body, limit, &mut scratch.inflated) {
            let too_large = matches!(e, codec::CodecError::TooLarge { .. });
            return Outcome::BadBody(e.to_string(), too_large);
        }
    }
    if h.heartbeat {
        return Outcome::Heartbeat;
    }
    let body = if checked.gzipped {
        &scratch.inflated[..]
    } else {
        body
    };
    // Checked by Metadata::parse's own rules when it was built, so this cannot fail.
    let metadata = Metadata::parse(&scratch.meta_in).unwrap_or_default();
    // A serialize type outside a byte has no codec, as a wire value with no codec has none.
    let Ok(serialize) = u8::try_from(checked.serialize) else {
        let text = format!("can not find codec for {}", checked.serialize);
        return Outcome::Invoked(Invoked::Failed(Cow::Owned(text)));
    };
    let call = dispatch::Call {
        path: &checked.service_path,
        method: checked.method,
        serialize,
        metadata,
        payload: body,
    };
    Outcome::Invoked(dispatch::invoke(
        core,
        &call,
        &mut scratch.meta_out,
        &mut scratch.payload,
    ))
}

/// Step 3: the HTTP reply for the outcome, or what it waits for.
#[allow(clippy::too_many_arguments)] // the request, its outcome and where the reply goes
fn reply<R: Registry>(
    core: &Rc<Core<R>>,
    head: &Head,
    h: &RpcxHeaders,
    service_path: &str,
    outcome: Outcome,
    scratch: &Scratch,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Option<Wait> {
    let invoked = match outcome {
        Outcome::BadBody(text, _) => {
            failed(core, head, h, service_path, 500, &text, out);
            return None;
        }
        Outcome::Heartbeat => {
            let mut resp = success(out, head, h, service_path);
            resp.header(X_META, h.meta.as_deref().unwrap_or_default().as_bytes());
            let body = if h.compress.as_deref() == Some("1") {
                &scratch.inflated[..]
            } else {
                body
            };
            resp.finish(body);
            return None;
        }
        Outcome::Invoked(invoked) => invoked,
    };
    if h.oneway {
        if let Invoked::Pending(deferred) = invoked {
            // rpcx runs a oneway call's handler too; nobody waits for it.
            glommio::spawn_local(async move {
                let _ = deferred.await;
            })
            .detach();
        }
        // Nothing to wait for, not even an error; HTTP still needs an answer.
        success(out, head, h, service_path).finish(b"");
        return None;
    }
    let wait = match invoked {
        Invoked::Ready => None,
        Invoked::After(delay) => Some(Wait::Delay(delay)),
        Invoked::Expired(deadline) => {
            failed(core, head, h, service_path, 500, DEADLINE_EXCEEDED, out);
            return Some(Wait::Delay(deadline));
        }
        Invoked::Pending(deferred) => {
            let (core, head, h) = (Rc::clone(core), head.clone(), h.clone());
            let service_path = service_path.to_owned();
            return Some(Wait::Until(Box::pin(async move {
                let mut out = Vec::new();
                match deferred.await {
                    Ok(payload) => ok(&head, &h, &service_path, &[], &payload, &mut out),
                    Err(text) => failed(&core, &head, &h, &service_path, 500, &text, &mut out),
                }
                out
            })));
        }
        // Service, lookup and codec errors.
        Invoked::Failed(text) => {
            failed(core, head, h, service_path, 500, &text, out);
            return None;
        }
        // rpcx's gateway answers a failed auth check with 401 and the error headers.
        Invoked::Unauthenticated => {
            failed(core, head, h, service_path, 401, UNAUTHENTICATED, out);
            return None;
        }
    };
    ok(
        head,
        h,
        service_path,
        &scratch.meta_out,
        &scratch.payload,
        out,
    );
    wait
}

/// A successful call's reply: rpcx's headers, the reply metadata, the payload.
fn ok(
    head: &Head,
    h: &RpcxHeaders,
    service_path: &str,
    meta: &[u8],
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let mut resp = success(out, head, h, service_path);
    resp.header(X_META, reply_meta(meta).as_bytes());
    if h.serialize.as_deref() == Some("1") {
        resp.header("Content-Type", b"application/json");
    }
    resp.finish(payload);
}

/// An error reply after the headers were accepted: `status` with rpcx's headers and the text.
fn failed<R: Registry>(
    core: &Core<R>,
    head: &Head,
    h: &RpcxHeaders,
    service_path: &str,
    status: u16,
    text: &str,
    out: &mut Vec<u8>,
) {
    core.metrics.gateway_errors.inc();
    let mut resp = Response::start(out, status, head);
    rpcx_headers(&mut resp, h, service_path);
    error_headers(&mut resp, text);
    resp.finish(b"");
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
fn request_metadata(head: &RpcxHeaders, block: &mut Vec<u8>) {
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
fn success<'o>(
    out: &'o mut Vec<u8>,
    head: &Head,
    h: &RpcxHeaders,
    service_path: &str,
) -> Response<'o> {
    let mut resp = Response::start(out, 200, head);
    rpcx_headers(&mut resp, h, service_path);
    resp
}

fn rpcx_headers(resp: &mut Response<'_>, h: &RpcxHeaders, service_path: &str) {
    fn text(v: &Option<String>) -> &[u8] {
        v.as_deref().unwrap_or_default().as_bytes()
    }
    resp.header(X_VERSION, text(&h.version));
    resp.header(X_MESSAGE_ID, text(&h.message_id));
    resp.header_text(X_SERVICE_PATH, service_path);
    resp.header(X_SERVICE_METHOD, text(&h.service_method));
    resp.header(X_SERIALIZE_TYPE, text(&h.serialize));
}

/// rpcx's error headers (the text percent-encoded: it may quote the client's own input).
fn error_headers(resp: &mut Response<'_>, text: &str) {
    resp.header(X_STATUS, b"Error");
    resp.header_text(X_ERROR, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_headers(lines: &[(&str, &str)]) -> RpcxHeaders {
        let mut h = RpcxHeaders::default();
        for (name, value) in lines {
            h.read(name, value.as_bytes()).unwrap();
        }
        h
    }

    #[test]
    fn rpcx_headers_are_read_case_insensitively_and_first_wins() {
        let h = gateway_headers(&[
            ("x-rpcx-servicemethod", "Mul"),
            ("X-Rpcx-Serializetype", "3"),
            ("X-RPCX-Oneway", "1"),
            ("Authorization", "t"),
            ("X-RPCX-ServiceMethod", "Add"),
            ("Host", "x"),
        ]);
        assert_eq!(h.service_method.as_deref(), Some("Mul"));
        assert_eq!(h.serialize.as_deref(), Some("3"));
        assert_eq!(h.auth.as_deref(), Some("t"));
        assert!(h.oneway && !h.heartbeat);
        assert!(
            String::from_utf8(h.echo)
                .unwrap()
                .contains("X-Rpcx-Serializetype: 3\r\n")
        );
    }

    #[test]
    fn header_checks_in_rpcx_order() {
        let head = Head {
            target: "/Ar%69th?x=1".into(),
            ..Head::default()
        };
        let text =
            |lines: &[(&str, &str)]| check(&head, &gateway_headers(lines)).err().map(|b| b.text);
        assert_eq!(text(&[]), Some("empty servicemethod".into()));
        assert_eq!(
            text(&[("X-RPCX-ServiceMethod", "Mul")]),
            Some("empty serialized type".into())
        );
        assert!(
            text(&[("X-RPCX-MessageID", "x"), ("X-RPCX-SerializeType", "y")])
                .unwrap()
                .contains("ParseUint")
        );
        assert!(
            text(&[("X-RPCX-SerializeType", "y")])
                .unwrap()
                .contains("Atoi")
        );
        assert_eq!(
            text(&[("X-RPCX-CompressType", "2")]),
            Some("unknown compress type: 2".into())
        );
        let h = gateway_headers(&[
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-SerializeType", "3"),
        ]);
        let ok = check(&head, &h).ok().unwrap();
        assert_eq!(
            (&*ok.service_path, ok.method, ok.serialize),
            ("Arith", "Mul", 3)
        );
    }

    #[test]
    fn metadata_in_and_out() {
        let h = RpcxHeaders {
            meta: Some("b=2&a=%C3%A9+x&b=3".into()),
            auth: Some("Bearer t".into()),
            ..RpcxHeaders::default()
        };
        let mut block = Vec::new();
        request_metadata(&h, &mut block);
        let meta = Metadata::parse(&block).unwrap();
        let entries: Vec<_> = meta.iter().collect();
        assert_eq!(entries, [("b", "2"), ("a", "é x"), ("__AUTH", "Bearer t")]);
        assert_eq!(reply_meta(&block), "__AUTH=Bearer+t&a=%C3%A9+x&b=2");
    }

    #[test]
    fn error_text_is_percent_encoded() {
        let mut out = Vec::new();
        let head = Head {
            keep_alive: true,
            ..Head::default()
        };
        let mut resp = Response::start(&mut out, 500, &head);
        error_headers(&mut resp, "can't find service Ärith\r\nX: y 100%");
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
