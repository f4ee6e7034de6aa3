//! JSON-RPC 2.0 over the HTTP gateway (PROTOCOL.md §6).
//!
//! A body is one request object or a batch (an array of them). `method` is `Service.Method`,
//! split at the last `.`; `params` (any JSON value) becomes a JSON payload (serialize type 1)
//! for `dispatch::invoke`, and the handler's JSON reply becomes `result` as it is. A request
//! without `id` is a notification: it runs as oneway and gets no reply object; a body of only
//! notifications gets an empty 200.
//!
//! Error codes: -32700 the body is not JSON; -32600 not a request object (not an object, no
//! `"jsonrpc": "2.0"`, `method` not a string, a bad `id`, an empty batch); -32601 a method name
//! without a service part (rpcx's text `must contains servicepath and method`); -32602 no
//! `params`; -32603 whatever the call itself failed with (rpcx's texts: unknown service or
//! method, codec errors, handler errors).
//!
//! **percore** beyond rpcx: batches (rpcx issue #264), and a malformed request is answered with
//! an error object (with `id: null` when it had none) instead of being dropped or crashing
//! (rpcx crashes on a notification without params). A notification that is well formed but
//! fails is not answered, as the spec requires.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;

use super::Core;
use super::dispatch::{self, DEADLINE_EXCEEDED, Deferred, Invoked, UNAUTHENTICATED};
use crate::protocol::Metadata;
use crate::service::Registry;

/// Invalid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// Not a valid request object.
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// No such method (here: a name that is not `Service.Method`).
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// Bad or missing params.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// The call failed.
pub(crate) const INTERNAL_ERROR: i64 = -32603;

/// The serialize type JSON-RPC params travel as.
const JSON: u8 = 1;

/// A reply body that cannot go out yet.
pub(crate) enum Wait {
    /// The body is in `reply`: send it after the longest delay a handler asked for.
    Delay(Duration),
    /// Async calls are running: the body is what this future gives once they are all done.
    Until(Pin<Box<dyn Future<Output = Vec<u8>>>>),
}

/// Serves one JSON-RPC body. The reply body goes to `reply` (left empty when there is nothing
/// to answer), unless it has to wait; `meta_in` is the request metadata block every call of the
/// body gets.
pub(crate) fn serve<R: Registry>(
    core: &Rc<Core<R>>,
    body: &[u8],
    meta_in: &[u8],
    meta_out: &mut Vec<u8>,
    payload: &mut Vec<u8>,
    reply: &mut Vec<u8>,
) -> Option<Wait> {
    reply.clear();
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            core.metrics.gateway_errors.inc();
            write_error(
                reply,
                &Value::Null,
                PARSE_ERROR,
                &format!("parse error: {e}"),
            );
            return None;
        }
    };
    let mut call = Call::new(core, meta_in, meta_out, payload);
    match value {
        Value::Array(requests) if requests.len() > core.config.gateway.max_batch => {
            core.metrics.gateway_errors.inc();
            write_error(
                reply,
                &Value::Null,
                INVALID_REQUEST,
                &format!(
                    "invalid request: a batch of {} calls is over gateway.max_batch ({})",
                    requests.len(),
                    core.config.gateway.max_batch
                ),
            );
        }
        Value::Array(requests) if requests.is_empty() => {
            core.metrics.gateway_errors.inc();
            write_error(
                reply,
                &Value::Null,
                INVALID_REQUEST,
                "invalid request: empty batch",
            );
        }
        // A long batch takes turns with the core's other connections: CALLS_PER_TURN calls,
        // then a yield, so one request cannot hold the core for the whole batch.
        Value::Array(requests) if requests.len() > CALLS_PER_TURN => {
            let (core, meta_in) = (Rc::clone(core), meta_in.to_vec());
            return Some(Wait::Until(Box::pin(async move {
                let (mut meta_out, mut payload, mut body) = (Vec::new(), Vec::new(), Vec::new());
                let mut call = Call::new(&core, &meta_in, &mut meta_out, &mut payload);
                let mut answered = 0;
                for (i, request) in requests.into_iter().enumerate() {
                    if i > 0 && i % CALLS_PER_TURN == 0 {
                        futures_lite::future::yield_now().await;
                    }
                    call.in_batch(request, &mut body, &mut answered);
                }
                close_batch(&mut body, answered);
                let (delay, pending) = (call.delay, std::mem::take(&mut call.pending));
                finish(&core, delay, pending, body).await
            })));
        }
        Value::Array(requests) => {
            let mut answered = 0;
            for request in requests {
                call.in_batch(request, reply, &mut answered);
            }
            close_batch(reply, answered);
        }
        request => {
            call.one(request, reply);
        }
    }
    if call.pending.is_empty() {
        return call.delay.map(Wait::Delay);
    }
    let (delay, pending) = (call.delay, std::mem::take(&mut call.pending));
    Some(Wait::Until(Box::pin(finish(
        core,
        delay,
        pending,
        std::mem::take(reply),
    ))))
}

/// Calls of one batch run between yields to the core's other tasks.
const CALLS_PER_TURN: usize = 16;

/// Ends a batch's array, or leaves the body empty when no call is answered (all notifications).
fn close_batch(body: &mut Vec<u8>, answered: usize) {
    if answered > 0 {
        body.push(b']');
    } else {
        body.clear();
    }
}

/// The body once its async calls are done: every one runs now, side by side, each a task of
/// this core (spawned before the returned future is first polled); each result is put where
/// its call's object belongs, after the longest delay a handler asked for.
fn finish<R: Registry>(
    core: &Core<R>,
    delay: Option<Duration>,
    pending: Vec<(usize, Value, Deferred)>,
    mut body: Vec<u8>,
) -> impl Future<Output = Vec<u8>> + 'static {
    let tasks: Vec<_> = pending
        .into_iter()
        .map(|(at, id, deferred)| (at, id, glommio::spawn_local(deferred)))
        .collect();
    let metrics = std::sync::Arc::clone(&core.metrics);
    let started = std::time::Instant::now();
    async move {
        let mut objects = Vec::with_capacity(tasks.len());
        for (at, id, task) in tasks {
            let mut object = Vec::new();
            match task.await {
                Ok(payload) => {
                    if !write_result(&mut object, &id, &payload) {
                        metrics.gateway_errors.inc();
                    }
                }
                Err(text) => {
                    metrics.gateway_errors.inc();
                    write_error(&mut object, &id, INTERNAL_ERROR, &text);
                }
            }
            objects.push((at, object));
        }
        if let Some(rest) = delay.and_then(|d| d.checked_sub(started.elapsed())) {
            glommio::timer::sleep(rest).await;
        }
        // From the last place to the first, so each `at` still points where its object goes.
        for (at, object) in objects.into_iter().rev() {
            body.splice(at..at, object);
        }
        body
    }
}

/// What the calls of one body share.
struct Call<'a, R> {
    core: &'a Core<R>,
    meta_in: &'a [u8],
    meta_out: &'a mut Vec<u8>,
    payload: &'a mut Vec<u8>,
    /// The params of the call being run, as a JSON payload.
    params: Vec<u8>,
    delay: Option<Duration>,
    /// Async calls still running: where in the reply body their object goes, and their id.
    pending: Vec<(usize, Value, Deferred)>,
}

impl<'a, R: Registry> Call<'a, R> {
    fn new(
        core: &'a Core<R>,
        meta_in: &'a [u8],
        meta_out: &'a mut Vec<u8>,
        payload: &'a mut Vec<u8>,
    ) -> Call<'a, R> {
        Call {
            core,
            meta_in,
            meta_out,
            payload,
            params: Vec::new(),
            delay: None,
            pending: Vec::new(),
        }
    }

    /// One call of a batch: its object appended to `body` (an array opened on the first), with
    /// the comma before it; `answered` counts the objects.
    fn in_batch(&mut self, request: Value, body: &mut Vec<u8>, answered: &mut usize) {
        let at = body.len();
        body.push(if *answered == 0 { b'[' } else { b',' });
        if self.one(request, body) {
            *answered += 1;
        } else {
            body.truncate(at);
        }
    }

    /// Runs one request object and appends its reply object; false if it has none (a
    /// notification that ran).
    fn one(&mut self, request: Value, reply: &mut Vec<u8>) -> bool {
        let metrics = &self.core.metrics;
        metrics.jsonrpc_calls.inc();
        let fail = |reply: &mut Vec<u8>, id: &Value, code: i64, text: &str| {
            metrics.gateway_errors.inc();
            write_error(reply, id, code, text);
            true
        };
        let Checked {
            id,
            reply_id,
            method,
            dot,
            params,
        } = match check(request) {
            Ok(checked) => checked,
            Err(Rejected {
                reply_id,
                code,
                text,
            }) => return fail(reply, &reply_id, code, text),
        };
        self.params.clear();
        // A serde_json Value always serializes.
        let _ = serde_json::to_writer(&mut self.params, &params);
        let metadata = Metadata::parse(self.meta_in).unwrap_or_default();
        let call = dispatch::Call {
            path: &method[..dot],
            method: &method[dot + 1..],
            serialize: JSON,
            metadata,
            payload: &self.params,
        };
        let invoked = dispatch::invoke(self.core, &call, self.meta_out, self.payload);
        if id.is_none() {
            if let Invoked::Pending(deferred) = invoked {
                // A notification's async handler runs too; nobody waits for it.
                glommio::spawn_local(async move {
                    let _ = deferred.await;
                })
                .detach();
            }
            return false;
        }
        match invoked {
            Invoked::Ready => {}
            Invoked::After(delay) => {
                self.delay = Some(self.delay.map_or(delay, |d| d.max(delay)));
            }
            Invoked::Expired(deadline) => {
                self.delay = Some(self.delay.map_or(deadline, |d| d.max(deadline)));
                return fail(reply, &reply_id, INTERNAL_ERROR, DEADLINE_EXCEEDED);
            }
            Invoked::Pending(deferred) => {
                self.pending.push((reply.len(), reply_id, deferred));
                return true;
            }
            // rpcx answers every call failure (an auth failure too) with -32603 and its text.
            Invoked::Failed(text) => return fail(reply, &reply_id, INTERNAL_ERROR, &text),
            Invoked::Unauthenticated => {
                return fail(reply, &reply_id, INTERNAL_ERROR, UNAUTHENTICATED);
            }
        }
        if !write_result(reply, &reply_id, self.payload) {
            metrics.gateway_errors.inc();
        }
        true
    }
}

/// A request object that passed the checks, its parts moved out of it (no copies).
struct Checked {
    /// As sent; `None` for a notification.
    id: Option<Value>,
    /// What the reply carries as its id.
    reply_id: Value,
    method: String,
    /// Where `method` splits into service and method.
    dot: usize,
    params: Value,
}

/// A request object refused: the id to answer with, the code and the text.
struct Rejected {
    reply_id: Value,
    code: i64,
    text: &'static str,
}

/// The JSON-RPC 2.0 checks of one request object, in order: an object, a valid id, `"jsonrpc":
/// "2.0"`, a method `Service.Method`, params present.
fn check(request: Value) -> Result<Checked, Rejected> {
    let reject = |reply_id: &Value, code, text| Rejected {
        reply_id: reply_id.clone(),
        code,
        text,
    };
    let Value::Object(mut request) = request else {
        return Err(reject(
            &Value::Null,
            INVALID_REQUEST,
            "invalid request: not an object",
        ));
    };
    let id = request.remove("id");
    let reply_id = match &id {
        None => Value::Null,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => id.clone(),
        Some(_) => {
            return Err(reject(
                &Value::Null,
                INVALID_REQUEST,
                "invalid request: id must be a string, a number or null",
            ));
        }
    };
    if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(reject(
            &reply_id,
            INVALID_REQUEST,
            "invalid request: jsonrpc must be \"2.0\"",
        ));
    }
    let Some(Value::String(method)) = request.remove("method") else {
        return Err(reject(
            &reply_id,
            INVALID_REQUEST,
            "invalid request: method must be a string",
        ));
    };
    let Some(dot) = method.rfind('.').filter(|&d| d > 0 && d + 1 < method.len()) else {
        return Err(reject(
            &reply_id,
            METHOD_NOT_FOUND,
            "must contains servicepath and method",
        ));
    };
    let Some(params) = request.remove("params") else {
        return Err(reject(
            &reply_id,
            INVALID_PARAMS,
            "invalid params: missing params",
        ));
    };
    Ok(Checked {
        id,
        reply_id,
        method,
        dot,
        params,
    })
}

/// Runs the request checks on any body and writes what the server would answer for each
/// refused object or with each valid id; every answer must be well-formed JSON. For the fuzz
/// target (`fuzz/`).
#[doc(hidden)]
pub fn fuzz_body(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let requests = match value {
        Value::Array(requests) => requests,
        request => vec![request],
    };
    for request in requests.into_iter().take(256) {
        let mut out = Vec::new();
        match check(request) {
            Ok(checked) => {
                assert!(checked.dot > 0 && checked.dot + 1 < checked.method.len());
                let _ = write_result(&mut out, &checked.reply_id, b"null");
            }
            Err(r) => write_error(&mut out, &r.reply_id, r.code, r.text),
        }
        assert!(serde_json::from_slice::<Value>(&out).is_ok(), "{out:?}");
    }
}

/// Appends `{"jsonrpc":"2.0","result":PAYLOAD,"id":ID}` (`null` for an empty payload), or the
/// error object if the payload is not JSON; false then.
fn write_result(reply: &mut Vec<u8>, id: &Value, payload: &[u8]) -> bool {
    let payload = if payload.is_empty() { b"null" } else { payload };
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
        write_error(reply, id, INTERNAL_ERROR, "the reply is not JSON");
        return false;
    }
    reply.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
    reply.extend_from_slice(payload);
    reply.extend_from_slice(b",\"id\":");
    let _ = serde_json::to_writer(&mut *reply, id);
    reply.push(b'}');
    true
}

/// Appends `{"jsonrpc":"2.0","error":{"code":C,"message":M},"id":ID}`.
fn write_error(reply: &mut Vec<u8>, id: &Value, code: i64, message: &str) {
    reply.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":");
    reply.extend_from_slice(code.to_string().as_bytes());
    reply.extend_from_slice(b",\"message\":");
    // Strings and JSON values always serialize.
    let _ = serde_json::to_writer(&mut *reply, message);
    reply.extend_from_slice(b"},\"id\":");
    let _ = serde_json::to_writer(&mut *reply, id);
    reply.push(b'}');
}
