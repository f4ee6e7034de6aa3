//! How a connection ended, for every protocol a core serves: the one type the rpcx frame loop
//! and the HTTP loop return, counted once (the metrics' [`Close`] reason, the refusal's own
//! counter) and logged once, with the peer.

use std::io;
use std::net::SocketAddr;

use tracing::debug;

use super::Core;
use super::http::Refusal;
use super::logs::limited_warn;
use crate::metrics::{BadFrame, Close, Transport};
use crate::protocol::DecodeError;
use crate::service::Registry;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed its side (between requests, for HTTP).
    Eof,
    /// The HTTP request asked for it (`Connection: close`, or HTTP/1.0 without keep-alive).
    Requested,
    /// Reading failed (reset, or the peer closed in the middle of an HTTP request).
    ReadError(io::Error),
    /// Writing failed; the reader stopped too.
    WriteFailed,
    /// No request within the idle timeout (and, for rpcx, no reply owed).
    IdleTimeout,
    /// A frame not complete this long after its first byte (`limits.frame_timeout`).
    FrameTimeout(std::time::Duration),
    /// The peer sent something that is not an rpcx frame (reason, description).
    BadFrame(BadFrame, String),
    /// HTTP input refused with an error status (answered before closing).
    BadHttp(Refusal),
    /// A call failed the auth check.
    Unauthenticated,
}

impl From<DecodeError> for End {
    /// Input that is not an rpcx frame: the connection closes, counted by the decoder's reason.
    fn from(e: DecodeError) -> End {
        End::BadFrame(BadFrame::from(&e), e.to_string())
    }
}

impl End {
    /// The `reason` label of the close (the accept path turns `Eof` during a drain into
    /// `Shutdown`).
    pub(crate) fn close(&self) -> Close {
        match self {
            // Asked for by the peer (`Connection: close`), as good as the peer closing.
            End::Eof | End::Requested => Close::Eof,
            End::ReadError(_) => Close::ReadError,
            End::WriteFailed => Close::WriteError,
            End::BadHttp(r) if r.reason == crate::metrics::BadHttp::Timeout => Close::Timeout,
            End::BadFrame(..) | End::BadHttp(_) => Close::BadFrame,
            End::IdleTimeout => Close::IdleTimeout,
            End::FrameTimeout(_) => Close::Timeout,
            End::Unauthenticated => Close::Unauthenticated,
        }
    }

    /// Counts a refusal under its reason and logs the end: a warning for what the peer did
    /// wrong, debug for the ordinary ends.
    pub(crate) fn report<R: Registry>(
        &self,
        core: &Core<R>,
        peer: SocketAddr,
        transport: Transport,
    ) {
        let core_index = core.index;
        match self {
            End::BadFrame(reason, what) => {
                core.metrics.transport(transport).bad_frame(*reason);
                limited_warn!(core.logs, reason.name(), core = core_index, %peer, reason = reason.name(), "closing connection: {what}");
            }
            End::BadHttp(r) => {
                core.metrics.bad_http(r.reason);
                limited_warn!(core.logs, r.reason.name(), core = core_index, %peer, reason = r.reason.name(), status = r.status, "closing HTTP connection: {}", r.what);
            }
            End::Unauthenticated => {
                limited_warn!(core.logs, "unauthenticated", core = core_index, %peer, "closing connection: a call failed the auth check")
            }
            End::IdleTimeout => debug!(core = core_index, %peer, "closing connection: idle"),
            End::FrameTimeout(after) => {
                limited_warn!(core.logs, "timeout", core = core_index, %peer, "closing connection: a frame was not complete {after:?} after its first byte (limits.frame_timeout)")
            }
            End::Requested => {
                debug!(core = core_index, %peer, "closing connection as the request asked")
            }
            End::ReadError(e) => {
                debug!(core = core_index, %peer, error = %e, "connection read failed")
            }
            End::WriteFailed => debug!(core = core_index, %peer, "connection write failed"),
            End::Eof => debug!(core = core_index, %peer, "connection closed by peer"),
        }
    }
}
