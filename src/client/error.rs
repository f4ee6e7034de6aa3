//! The client's one error type. Whether an error is the server's answer, a deadline or a
//! broken transport is data ([`Error::kind`], [`Error::is_retryable`]), not prose.

use std::time::Duration;

use crate::codec::CodecError;
use crate::transport::addr::AddrError;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server answered with an error (`__rpcx_error__`, e.g. `rpcx: can't find method Div`).
    /// The call reached the server, so it is never retried.
    #[error("{0}")]
    Service(String),
    /// No reply within the call's timeout. A deadline is never retried (rpcx does the same).
    #[error("call to {addr} timed out after {after:?}")]
    Timeout {
        /// The server called.
        addr: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The server could not be reached (refused, unreachable, connect timeout, bad name).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server dialed.
        addr: String,
        /// The OS's or resolver's reason.
        reason: String,
    },
    /// The connection broke (closed by the server, reset, heartbeat lost) with the call pending.
    #[error("connection to {addr} lost: {reason}")]
    Connection {
        /// The server of the connection.
        addr: String,
        /// What ended it.
        reason: String,
    },
    /// The server sent bytes that are not a valid rpcx reply; the connection is closed.
    #[error("bad reply from {addr}: {reason}")]
    Protocol {
        /// The server that sent it.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The args could not be encoded or the reply could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A server address that cannot be parsed.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// Discovery left no server to call (all inactive, filtered by group, or none given), or a
    /// user selector chose none.
    #[error("no server available for {0}")]
    NoServer(String),
    /// The client was closed.
    #[error("client is closed")]
    Closed,
}

/// The kind of an [`Error`], small and `Copy`, for counting (the load generator's "errors by
/// kind") and for retry decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// [`Error::Service`].
    Service,
    /// [`Error::Timeout`].
    Timeout,
    /// [`Error::Connect`].
    Connect,
    /// [`Error::Connection`].
    Connection,
    /// [`Error::Protocol`].
    Protocol,
    /// [`Error::Codec`].
    Codec,
    /// [`Error::Address`].
    Address,
    /// [`Error::NoServer`].
    NoServer,
    /// [`Error::Closed`].
    Closed,
}

impl ErrorKind {
    /// Every kind, in declaration order (its index is `kind as usize`).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Service,
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Connection,
        ErrorKind::Protocol,
        ErrorKind::Codec,
        ErrorKind::Address,
        ErrorKind::NoServer,
        ErrorKind::Closed,
    ];

    /// A short stable name (`service`, `timeout`, `connect`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Service => "service",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Connection => "connection",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Codec => "codec",
            ErrorKind::Address => "address",
            ErrorKind::NoServer => "no_server",
            ErrorKind::Closed => "closed",
        }
    }
}

impl Error {
    /// This error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Service(_) => ErrorKind::Service,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Connect { .. } => ErrorKind::Connect,
            Error::Connection { .. } => ErrorKind::Connection,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Codec(_) => ErrorKind::Codec,
            Error::Address(_) => ErrorKind::Address,
            Error::NoServer(_) => ErrorKind::NoServer,
            Error::Closed => ErrorKind::Closed,
        }
    }

    /// True for an error the server sent (`__rpcx_error__`).
    pub fn is_service(&self) -> bool {
        matches!(self, Error::Service(_))
    }

    /// Whether Failover / Failtry may try again: only transport failures are. Service errors,
    /// deadlines, codec errors and a closed client are final (PROTOCOL.md §10).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Connect | ErrorKind::Connection | ErrorKind::Protocol
        )
    }
}
