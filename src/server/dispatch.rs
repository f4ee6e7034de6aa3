//! From a decoded call to a reply, whatever carried it: rpcx frames, the HTTP gateway, JSON-RPC.
//!
//! [`invoke`] checks the caller's token (when `[auth]` has any), looks the method up, checks the
//! serialize type has a codec, runs the handler with panics caught, and holds a delayed reply
//! against the caller's deadline (`__ServerTimeout`), counting the call per method; every
//! transport-specific loop turns the [`Invoked`] into its own reply.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use super::Core;
use crate::codec::SerializeType;
use crate::protocol::{META_AUTH, META_SERVER_TIMEOUT, Metadata};
use crate::service::{Method, Outcome, Reply, Request};

/// What became of a call.
#[derive(Debug, PartialEq, Eq)]
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

/// Runs `path.method` on an already decompressed payload. On `Ready`/`After` the reply's
/// metadata block (wire form) is in `meta_out` and its payload in `payload_out`; both are
/// cleared first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn invoke(
    core: &Core,
    path: &str,
    method: &str,
    serialize: u8,
    metadata: Metadata<'_>,
    payload: &[u8],
    meta_out: &mut Vec<u8>,
    payload_out: &mut Vec<u8>,
) -> Invoked {
    if !core.auth.is_empty() && !authorized(&core.auth, metadata.get(META_AUTH)) {
        core.metrics.auth_failures.inc();
        return Invoked::Unauthenticated;
    }
    let metrics = &core.metrics;
    let found = match Method::lookup(path, method) {
        Ok(method) => method,
        Err(e) => {
            let unknown = metrics.unknown_method();
            unknown.started.inc();
            unknown.handled(false);
            unknown.timed(Duration::ZERO);
            return Invoked::Failed(Cow::Owned(e.text(path, method)));
        }
    };
    let counts = metrics.method(found);
    // One call in TIME_ONE_CALL_IN per method and core is timed (the first one included):
    // two clock reads and a bucket search cost ~150 instructions, 8% of a pipelined
    // Arith.Mul call (benches/instructions.sh), for a histogram a sample describes as well.
    let timed = counts.started.get().is_multiple_of(TIME_ONE_CALL_IN);
    counts.started.inc();
    let started = timed.then(Instant::now);
    let invoked = run(
        core,
        found,
        serialize,
        metadata,
        payload,
        meta_out,
        payload_out,
    );
    let invoked = match invoked {
        Invoked::After(delay) => match server_timeout(metadata) {
            Some(deadline) if deadline < delay => Invoked::Expired(deadline),
            _ => Invoked::After(delay),
        },
        other => other,
    };
    let ok = matches!(invoked, Invoked::Ready | Invoked::After(_));
    counts.handled(ok);
    if let Some(started) = started {
        let delay = match invoked {
            Invoked::After(delay) | Invoked::Expired(delay) => delay,
            _ => Duration::ZERO,
        };
        counts.timed(started.elapsed() + delay);
    }
    invoked
}

/// The caller's deadline: `__ServerTimeout`, decimal milliseconds (PROTOCOL.md §2).
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

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The call itself, once it is known to be allowed and registered.
fn run(
    core: &Core,
    method: Method,
    serialize: u8,
    metadata: Metadata<'_>,
    payload: &[u8],
    meta_out: &mut Vec<u8>,
    payload_out: &mut Vec<u8>,
) -> Invoked {
    let codec = match SerializeType::from_wire(serialize) {
        Ok(codec) => codec,
        Err(e) => return Invoked::Failed(Cow::Owned(e.to_string())),
    };
    let req = Request {
        codec,
        metadata,
        payload,
    };
    let mut reply = Reply::new(meta_out, payload_out);
    // A panicking handler answers rpcx's internal-error text instead of taking the core down.
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        method.call(&core.services, &req, &mut reply)
    })) {
        Ok(Ok(Outcome::Ready)) => Invoked::Ready,
        Ok(Ok(Outcome::After(delay))) => Invoked::After(delay),
        Ok(Err(e)) => Invoked::Failed(e.0),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Invoked::Failed(Cow::Owned(format!("[service internal error]: {what}")))
        }
    }
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
