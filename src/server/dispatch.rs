//! From a decoded call to a reply, whatever carried it: rpcx frames, the HTTP gateway, JSON-RPC.
//!
//! [`invoke`] checks the caller's token (when `[auth]` has any), looks the method up, checks the
//! serialize type has a codec, runs the handler with panics caught, and holds a delayed reply
//! against the caller's deadline (`__ServerTimeout`), counting the call per method; every
//! transport-specific loop turns the [`Invoked`] into its own reply.

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

use super::Core;
use crate::codec::SerializeType;
use crate::metrics::MethodMetrics;
use crate::protocol::{META_AUTH, META_SERVER_TIMEOUT, Metadata};
use crate::service::{LookupError, MethodId, Outcome, Pending, Registry, Reply, Request};

/// What became of a call.
pub(crate) enum Invoked {
    /// The reply's metadata block and payload are in the output buffers: send them now.
    Ready,
    /// As `Ready`, but send after this delay (simulated work).
    After(Duration),
    /// The handler asked for a delay past the caller's `__ServerTimeout`: send an error reply
    /// with [`DEADLINE_EXCEEDED`] once this deadline passes (the reply itself is dropped).
    Expired(Duration),
    /// Send an error reply with this text (rpcx's exact texts for lookup and codec errors).
    Failed(Cow<'static, str>),
    /// An async handler is running: its reply (the encoded payload) or error text comes from
    /// this future, which also counts the call when it ends, turns a panic into rpcx's
    /// internal-error text and gives up at the caller's `__ServerTimeout`.
    Pending(Deferred),
    /// The call's `__AUTH` token is missing or not accepted: send an error reply with
    /// [`UNAUTHENTICATED`] (none if oneway), then close the connection (rpcx's behaviour).
    /// The handler did not run.
    Unauthenticated,
}

/// The error text of a call that failed the auth check (rpcx's example `AuthFunc` text).
pub(crate) const UNAUTHENTICATED: &str = "invalid token";

/// The error text of a call whose reply would come after the caller's deadline (Go's
/// `context.DeadlineExceeded`).
pub(crate) const DEADLINE_EXCEEDED: &str = "context deadline exceeded";

/// One call as dispatch sees it, whatever carried it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call<'a> {
    /// The service (rpcx's service path).
    pub(crate) path: &'a str,
    pub(crate) method: &'a str,
    /// The wire serialize type of the payload and of the reply.
    pub(crate) serialize: u8,
    pub(crate) metadata: Metadata<'a>,
    /// The args, already decompressed.
    pub(crate) payload: &'a [u8],
}

/// Runs a call. On `Ready`/`After` the reply's metadata block (wire form) is in `meta_out` and
/// its payload in `payload_out`; both are cleared first.
pub(crate) fn invoke<R: Registry>(
    core: &Core<R>,
    call: &Call<'_>,
    meta_out: &mut Vec<u8>,
    payload_out: &mut Vec<u8>,
) -> Invoked {
    let found = R::lookup(call.path, call.method);
    invoke_found(core, call, found, meta_out, payload_out, Panics::Caught)
}

/// Where a handler's panic is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Panics {
    /// Around the handler: the call fails with rpcx's internal-error text.
    Caught,
    /// By the caller, around many calls: the rpcx loop catches once per batch rather than once
    /// per call, and answers the call whose handler panicked with [`panicked`].
    Propagate,
}

/// [`invoke`] with the method already looked up (the rpcx loop keeps the last lookup of a
/// connection and reuses it while its calls name the same method).
#[inline(always)]
pub(crate) fn invoke_found<R: Registry>(
    core: &Core<R>,
    call: &Call<'_>,
    found: Result<MethodId, LookupError>,
    meta_out: &mut Vec<u8>,
    payload_out: &mut Vec<u8>,
    panics: Panics,
) -> Invoked {
    if !core.auth.is_empty() && !authorized(&core.auth, call.metadata.get(META_AUTH)) {
        core.metrics.auth_failures.inc();
        return Invoked::Unauthenticated;
    }
    let metrics = &core.metrics;
    let found = match found {
        Ok(method) => method,
        Err(e) => {
            let unknown = metrics.unknown_method();
            unknown.started.inc();
            unknown.handled(false);
            unknown.timed(Duration::ZERO);
            return Invoked::Failed(Cow::Owned(e.text(call.path, call.method)));
        }
    };
    let started = start(metrics.method(found.index as usize));
    let outcome = run(core, found, call, meta_out, payload_out, panics);
    conclude(core, found, call.metadata, started, outcome)
}

/// [`invoke_found`] for the rpcx loop's fast lane: a call to a registered `method` with no
/// metadata, on a server without tokens (the caller checked both); `counts` are `method`'s.
/// It runs what `invoke_found` runs for such a call, with a shorter way for the common answer,
/// `Ready`.
#[inline(always)]
pub(crate) fn invoke_plain<R: Registry>(
    core: &Core<R>,
    method: MethodId,
    counts: &MethodMetrics,
    serialize: u8,
    payload: &[u8],
    meta_out: &mut Vec<u8>,
    payload_out: &mut Vec<u8>,
) -> Invoked {
    let started = start(counts);
    let codec = match SerializeType::from_wire(serialize) {
        Ok(codec) => codec,
        Err(e) => {
            let text = Err(Cow::Owned(e.to_string()));
            return conclude(core, method, Metadata::default(), started, text);
        }
    };
    let req = Request {
        codec,
        metadata: Metadata::default(),
        payload,
    };
    let mut reply = Reply::new(meta_out, payload_out);
    // What `run` does with `Panics::Propagate`, the handler's answer looked at before it is
    // turned into `run`'s (a move of the whole result per call otherwise).
    let outcome = core.services.call(method, &req, &mut reply);
    if let Ok(Outcome::Ready) = outcome {
        counts.handled_ok.inc();
        if let Some(started) = started {
            counts.timed(started.elapsed());
        }
        // Nothing to drop in `Ready`.
        std::mem::forget(outcome);
        return Invoked::Ready;
    }
    let outcome = outcome.map_err(|e| e.0);
    conclude(core, method, Metadata::default(), started, outcome)
}

/// Counts a call of `method` as started, and says when it started if it is one of the calls
/// timed. One call in TIME_ONE_CALL_IN per method and core is timed (the first one included):
/// two clock reads and a bucket search cost ~150 instructions, 8% of a pipelined Arith.Mul call
/// (benches/instructions.sh), for a histogram a sample describes as well.
#[inline(always)]
fn start(counts: &MethodMetrics) -> Option<Instant> {
    let timed = counts.started.get().is_multiple_of(TIME_ONE_CALL_IN);
    counts.started.inc();
    timed.then(Instant::now)
}

/// What a call whose handler ran becomes, counted (an async call when it ends).
#[inline(always)]
fn conclude<R: Registry>(
    core: &Core<R>,
    method: MethodId,
    metadata: Metadata<'_>,
    started: Option<Instant>,
    outcome: Result<Outcome, Cow<'static, str>>,
) -> Invoked {
    // One match on the outcome: each arm says what is sent, whether the call succeeded, and
    // how long it took past its handler (a delay).
    let (invoked, ok, delay) = match outcome {
        Ok(Outcome::Ready) => (Invoked::Ready, true, Duration::ZERO),
        Ok(Outcome::After(delay)) => match server_timeout(metadata) {
            Some(deadline) if deadline < delay => (Invoked::Expired(deadline), false, deadline),
            _ => (Invoked::After(delay), true, delay),
        },
        // Counted when it ends.
        Ok(Outcome::Pending(pending)) => {
            let deadline = server_timeout(metadata);
            return Invoked::Pending(finish_later(core, method, deadline, started, pending));
        }
        Err(text) => (Invoked::Failed(text), false, Duration::ZERO),
    };
    let counts = core.metrics.method(method.index as usize);
    counts.handled(ok);
    if let Some(started) = started {
        counts.timed(started.elapsed() + delay);
    }
    invoked
}

/// The caller's deadline: `__ServerTimeout`, decimal milliseconds (PROTOCOL.md §2).
#[inline]
fn server_timeout(metadata: Metadata<'_>) -> Option<Duration> {
    metadata
        .get(META_SERVER_TIMEOUT)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// How many calls of a method share one timing in `rpcx_server_handling_seconds`.
pub const TIME_ONE_CALL_IN: u64 = 16;

/// True if `token` is one of `accepted`, bare or as `Bearer <token>` (the gateway's
/// `Authorization` header). Every accepted token is compared in full, without an early exit on
/// the first differing byte.
#[inline]
fn authorized(accepted: &[Box<[u8]>], token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let token = token.trim();
    let bare = match token.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => token[7..].trim_start(),
        _ => token,
    };
    accepted
        .iter()
        .fold(false, |found, t| found | same_bytes(t, bare.as_bytes()))
}

#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The call itself, once it is known to be allowed and registered: its outcome, or the error
/// text for the client (a codec that is not there, the handler's error, its panic).
#[inline(always)]
fn run<R: Registry>(
    core: &Core<R>,
    method: MethodId,
    call: &Call<'_>,
    meta_out: &mut Vec<u8>,
    payload_out: &mut Vec<u8>,
    panics: Panics,
) -> Result<Outcome, Cow<'static, str>> {
    let codec = SerializeType::from_wire(call.serialize).map_err(|e| Cow::Owned(e.to_string()))?;
    let req = Request {
        codec,
        metadata: call.metadata,
        payload: call.payload,
    };
    let mut reply = Reply::new(meta_out, payload_out);
    if panics == Panics::Propagate {
        return core
            .services
            .call(method, &req, &mut reply)
            .map_err(|e| e.0);
    }
    // A panicking handler answers rpcx's internal-error text instead of taking the core down.
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        core.services.call(method, &req, &mut reply)
    })) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(e.0),
        Err(panic) => Err(Cow::Owned(panic_text(panic))),
    }
}

/// Counts a call of `method` whose handler panicked out of [`invoke_found`] with
/// [`Panics::Propagate`] (it was counted as started), and gives the error text to answer it
/// with. It is not timed: the sample that would have timed it is skipped.
#[cold]
pub(crate) fn panicked<R: Registry>(
    core: &Core<R>,
    method: MethodId,
    panic: Box<dyn std::any::Any + Send>,
) -> String {
    core.metrics.method(method.index as usize).handled(false);
    panic_text(panic)
}

/// rpcx's text for a handler that panicked, with the panic's message.
fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("[service internal error]: {what}")
}

/// An async call as the connection awaits it: the encoded reply payload, or the error text.
pub(crate) type Deferred = Pin<Box<dyn Future<Output = Result<Vec<u8>, Cow<'static, str>>>>>;

/// Wraps an async handler's call: a panic becomes rpcx's internal-error text, the caller's
/// `__ServerTimeout` ends the wait with [`DEADLINE_EXCEEDED`], and the call is counted (and
/// timed, if sampled) when it ends. The handler's future runs on this core, as a part of the
/// task that awaits this one.
fn finish_later<R: Registry>(
    core: &Core<R>,
    id: MethodId,
    deadline: Option<Duration>,
    started: Option<Instant>,
    pending: Pending,
) -> Deferred {
    let metrics = Arc::clone(&core.metrics);
    Box::pin(async move {
        let run = async { Some(AssertUnwindSafe(pending).catch_unwind().await) };
        let ended = match deadline {
            None => run.await,
            Some(deadline) => {
                let expire = async {
                    glommio::timer::sleep(deadline).await;
                    None
                };
                futures_lite::future::or(run, expire).await
            }
        };
        let result = match ended {
            None => Err(Cow::Borrowed(DEADLINE_EXCEEDED)),
            Some(Ok(Ok(payload))) => Ok(payload),
            Some(Ok(Err(e))) => Err(e.0),
            Some(Err(panic)) => Err(Cow::Owned(panic_text(panic))),
        };
        let counts = metrics.method(id.index as usize);
        counts.handled(result.is_ok());
        if let Some(started) = started {
            counts.timed(started.elapsed());
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_bare_or_as_bearer_and_nothing_else() {
        let accepted: Vec<Box<[u8]>> = vec![Box::from(&b"s3cret"[..]), Box::from(&b"other"[..])];
        assert!(authorized(&accepted, Some("s3cret")));
        assert!(authorized(&accepted, Some("Bearer other")));
        assert!(authorized(&accepted, Some("bearer s3cret")));
        assert!(!authorized(&accepted, None));
        assert!(!authorized(&accepted, Some("")));
        assert!(!authorized(&accepted, Some("s3cre")));
        assert!(!authorized(&accepted, Some("s3crett")));
        assert!(!authorized(&accepted, Some("Basic s3cret")));
    }
}
