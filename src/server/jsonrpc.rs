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

use std::time::Duration;

use serde_json::Value;

use super::Core;
use super::dispatch::{self, DEADLINE_EXCEEDED, Invoked, UNAUTHENTICATED};
use crate::protocol::Metadata;

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

/// Serves one JSON-RPC body. The reply body goes to `reply` (left empty when there is nothing
/// to answer); `meta_in` is the request metadata block every call of the body gets. Returns the
/// longest delay a handler asked for, to wait before the reply is sent.
pub(crate) fn serve(
    core: &Core,
    body: &[u8],
    meta_in: &[u8],
    meta_out: &mut Vec<u8>,
    payload: &mut Vec<u8>,
    reply: &mut Vec<u8>,
) -> Option<Duration> {
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
    let mut call = Call {
        core,
        meta_in,
        meta_out,
        payload,
        params: Vec::new(),
        delay: None,
    };
    match value {
        Value::Array(requests) if requests.is_empty() => {
            core.metrics.gateway_errors.inc();
            write_error(
                reply,
                &Value::Null,
                INVALID_REQUEST,
                "invalid request: empty batch",
            );
        }
        Value::Array(requests) => {
            reply.push(b'[');
            for request in requests {
                let at = reply.len();
                if at > 1 {
                    reply.push(b',');
                }
                if !call.one(request, reply) {
                    reply.truncate(at);
                }
            }
            if reply.len() > 1 {
                reply.push(b']');
            } else {
                reply.clear();
            }
        }
        request => {
            call.one(request, reply);
        }
    }
    call.delay
}

/// What the calls of one body share.
struct Call<'a> {
    core: &'a Core,
    meta_in: &'a [u8],
    meta_out: &'a mut Vec<u8>,
    payload: &'a mut Vec<u8>,
    /// The params of the call being run, as a JSON payload.
    params: Vec<u8>,
    delay: Option<Duration>,
}

impl Call<'_> {
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
        let Value::Object(mut request) = request else {
            return fail(
                reply,
                &Value::Null,
                INVALID_REQUEST,
                "invalid request: not an object",
            );
        };
        let id = request.remove("id");
        let reply_id = match &id {
            None => Value::Null,
            Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => id.clone(),
            Some(_) => {
                return fail(
                    reply,
                    &Value::Null,
                    INVALID_REQUEST,
                    "invalid request: id must be a string, a number or null",
                );
            }
        };
        if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return fail(
                reply,
                &reply_id,
                INVALID_REQUEST,
                "invalid request: jsonrpc must be \"2.0\"",
            );
        }
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            return fail(
                reply,
                &reply_id,
                INVALID_REQUEST,
                "invalid request: method must be a string",
            );
        };
        let Some(dot) = method.rfind('.').filter(|&d| d > 0 && d + 1 < method.len()) else {
            return fail(
                reply,
                &reply_id,
                METHOD_NOT_FOUND,
                "must contains servicepath and method",
            );
        };
        let Some(params) = request.get("params") else {
            return fail(
                reply,
                &reply_id,
                INVALID_PARAMS,
                "invalid params: missing params",
            );
        };
        self.params.clear();
        // A serde_json Value always serializes.
        let _ = serde_json::to_writer(&mut self.params, params);
        let metadata = Metadata::parse(self.meta_in).unwrap_or_default();
        let invoked = dispatch::invoke(
            self.core,
            &method[..dot],
            &method[dot + 1..],
            JSON,
            metadata,
            &self.params,
            self.meta_out,
            self.payload,
        );
        if id.is_none() {
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
            // rpcx answers every call failure (an auth failure too) with -32603 and its text.
            Invoked::Failed(text) => return fail(reply, &reply_id, INTERNAL_ERROR, &text),
            Invoked::Unauthenticated => {
                return fail(reply, &reply_id, INTERNAL_ERROR, UNAUTHENTICATED);
            }
        }
        if self.payload.is_empty() {
            self.payload.extend_from_slice(b"null");
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(self.payload).is_err() {
            return fail(reply, &reply_id, INTERNAL_ERROR, "the reply is not JSON");
        }
        reply.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
        reply.extend_from_slice(self.payload);
        reply.extend_from_slice(b",\"id\":");
        let _ = serde_json::to_writer(&mut *reply, &reply_id);
        reply.push(b'}');
        true
    }
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
