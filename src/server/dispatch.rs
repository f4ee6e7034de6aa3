//! From a decoded call to a reply, whatever carried it: rpcx frames, the HTTP gateway, JSON-RPC.
//!
//! [`invoke`] looks the method up, checks the serialize type has a codec, and runs the handler
//! with panics caught; every transport-specific loop turns the [`Invoked`] into its own reply.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use super::Core;
use crate::codec::SerializeType;
use crate::protocol::Metadata;
use crate::service::{Method, Outcome, Reply, Request};

/// What became of a call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invoked {
    /// The reply's metadata block and payload are in the output buffers: send them now.
    Ready,
    /// As `Ready`, but send after this delay (simulated work).
    After(Duration),
    /// Send an error reply with this text (rpcx's exact texts for lookup and codec errors).
    Failed(Cow<'static, str>),
}

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
    let method = match Method::lookup(path, method) {
        Ok(method) => method,
        Err(e) => return Invoked::Failed(Cow::Owned(e.text(path, method))),
    };
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
