//! Per-core counters, summed when read.
//!
//! Each core owns one [`CoreMetrics`] and is its only writer, so a count is a relaxed load and
//! store (plain `mov`s on x86), never a locked read-modify-write shared across cores. Readers on
//! other threads (the scrape, tests) load the values and add the cores up.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning core calls this, so load + store cannot lose an update.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a connection's input was refused (the `reason` label of bad-frame counts).
pub const BAD_FRAME_REASONS: &[&str] = &[
    "bad_magic",
    "too_large",
    "truncated",
    "trailing_bytes",
    "invalid_utf8",
    "bad_metadata",
    "unknown_compress",
    "bad_gzip",
    "decompressed_too_large",
];

/// One core's counters.
#[derive(Debug)]
pub struct CoreMetrics {
    /// Which core (executor index) these belong to.
    pub core: usize,
    pub connections_accepted: Counter,
    pub connections_closed: Counter,
    pub requests: Counter,
    pub heartbeats: Counter,
    pub error_replies: Counter,
    /// Connections closed because they did not finish their handshake (first bytes, TLS,
    /// HTTP CONNECT) within the handshake timeout.
    pub handshake_timeouts: Counter,
    /// TLS handshakes completed.
    pub tls_handshakes: Counter,
    /// Connections closed because their TLS handshake failed (bad certificate, not TLS...).
    pub tls_handshake_failures: Counter,
    /// Plaintext connections closed because TLS is required (`tls.allow_plaintext = false`).
    pub plaintext_refused: Counter,
    /// HTTP CONNECT handshakes accepted (`CONNECT /_rpcx_`).
    pub http_connects: Counter,
    /// HTTP requests refused with `405 must CONNECT`, or heads that were malformed or too long.
    pub http_connect_refused: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Indexed like [`BAD_FRAME_REASONS`].
    pub bad_frames: [Counter; 9],
    /// HTTP gateway requests (X-RPCX-* headers) answered, errors included.
    pub gateway_requests: Counter,
    /// JSON-RPC 2.0 calls and notifications (each element of a batch counts).
    pub jsonrpc_calls: Counter,
    /// Gateway and JSON-RPC replies that carry an error (rpcx error headers or a JSON-RPC error).
    pub gateway_errors: Counter,
    /// HTTP input refused with a 4xx/5xx and a closed connection (unparsable request, header or
    /// body limits, bad chunking), indexed like [`BAD_HTTP_REASONS`].
    pub bad_http: [Counter; 5],
}

/// Why an HTTP connection's input was refused (the `reason` label of bad-HTTP counts).
pub const BAD_HTTP_REASONS: &[&str] = &[
    "malformed",
    "headers_too_large",
    "body_too_large",
    "unsupported",
    "timeout",
];

impl CoreMetrics {
    pub fn new(core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            connections_accepted: Counter::default(),
            connections_closed: Counter::default(),
            requests: Counter::default(),
            heartbeats: Counter::default(),
            error_replies: Counter::default(),
            handshake_timeouts: Counter::default(),
            tls_handshakes: Counter::default(),
            tls_handshake_failures: Counter::default(),
            plaintext_refused: Counter::default(),
            http_connects: Counter::default(),
            http_connect_refused: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            bad_frames: Default::default(),
            gateway_requests: Counter::default(),
            jsonrpc_calls: Counter::default(),
            gateway_errors: Counter::default(),
            bad_http: Default::default(),
        }
    }

    /// Counts a refused input by its reason name (one of [`BAD_FRAME_REASONS`]).
    pub fn bad_frame(&self, reason: &str) {
        if let Some(i) = BAD_FRAME_REASONS.iter().position(|r| *r == reason) {
            self.bad_frames[i].inc();
        }
    }

    /// Counts a refused HTTP input by its reason name (one of [`BAD_HTTP_REASONS`]).
    pub fn bad_http(&self, reason: &str) {
        if let Some(i) = BAD_HTTP_REASONS.iter().position(|r| *r == reason) {
            self.bad_http[i].inc();
        }
    }

    pub fn bad_http_total(&self) -> u64 {
        self.bad_http.iter().map(Counter::get).sum()
    }

    pub fn bad_frames_total(&self) -> u64 {
        self.bad_frames.iter().map(Counter::get).sum()
    }

    /// Connections currently open on this core.
    pub fn connections_open(&self) -> u64 {
        self.connections_accepted
            .get()
            .saturating_sub(self.connections_closed.get())
    }
}
