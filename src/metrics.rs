//! Per-core counters, summed when read, and their Prometheus text form.
//!
//! Each core owns one [`CoreMetrics`] and is its only writer, so a count is a relaxed load and
//! store (plain `mov`s on x86), never a locked read-modify-write shared across cores, and never
//! a lock. Readers on other threads (the admin endpoint's scrape, tests) load the values and add
//! the cores up; a scrape may see one core's counters a few increments apart from each other,
//! which Prometheus counters tolerate.
//!
//! Labels are bounded: services and methods come from the static registry (an unknown one is
//! `unknown`, never the client's string), transports from [`TRANSPORTS`], reasons from fixed
//! lists.
//!
//! Handling time costs one `Instant::now()` pair per call (two vDSO `clock_gettime` reads, tens
//! of nanoseconds); a delayed call (`Hello.Say` with `services.hello.delay`) is observed as its
//! handler's time plus the delay, when its outcome is decided.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::service::Method;

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

/// Why an HTTP connection's input was refused (the `reason` label of bad-HTTP counts).
pub const BAD_HTTP_REASONS: &[&str] = &[
    "malformed",
    "headers_too_large",
    "body_too_large",
    "unsupported",
    "timeout",
];

/// The `transport` label values, indexed by [`Transport`]. A new transport adds its name here
/// and a constant on [`Transport`], and passes it to the connection loop.
pub const TRANSPORTS: &[&str] = &["tcp", "unix"];

/// Which transport a connection came in on (an index into [`TRANSPORTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport(usize);

impl Transport {
    /// TCP listeners (`tcp`, `reuseport`, `http`), with or without TLS.
    pub const TCP: Transport = Transport(0);
    /// Unix domain socket listeners (`unix`), with or without TLS.
    pub const UNIX: Transport = Transport(1);

    pub fn name(self) -> &'static str {
        TRANSPORTS[self.0]
    }
}

/// Why a connection was closed (the `reason` label of closed-connection counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The peer closed its side.
    Eof,
    /// Reading failed (reset by the peer, ...).
    ReadError,
    /// Writing failed.
    WriteError,
    /// The peer sent something that is not rpcx (also counted in bad frames by reason).
    BadFrame,
    /// No request within `limits.idle_timeout`.
    IdleTimeout,
    /// Nothing sent within `limits.handshake_timeout`.
    HandshakeTimeout,
    /// Over `limits.max_connections_per_core`: accepted and closed at once.
    MaxConnections,
    /// A call failed the auth check.
    Unauthenticated,
    /// Drained on shutdown, every reply sent.
    Shutdown,
    /// Still open when the drain timeout ran out.
    DrainTimeout,
}

impl Close {
    pub const ALL: [Close; 10] = [
        Close::Eof,
        Close::ReadError,
        Close::WriteError,
        Close::BadFrame,
        Close::IdleTimeout,
        Close::HandshakeTimeout,
        Close::MaxConnections,
        Close::Unauthenticated,
        Close::Shutdown,
        Close::DrainTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Close::Eof => "eof",
            Close::ReadError => "read_error",
            Close::WriteError => "write_error",
            Close::BadFrame => "bad_frame",
            Close::IdleTimeout => "idle_timeout",
            Close::HandshakeTimeout => "handshake_timeout",
            Close::MaxConnections => "max_connections",
            Close::Unauthenticated => "unauthenticated",
            Close::Shutdown => "shutdown",
            Close::DrainTimeout => "drain_timeout",
        }
    }
}

/// Upper bounds of the handling-time buckets, in seconds (an implicit `+Inf` follows).
pub const HANDLING_BUCKETS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, for the per-call comparison.
const BUCKET_NANOS: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        out[i] = (HANDLING_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// One transport's connection and byte counts on one core.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    pub accepted: Counter,
    /// Indexed like [`Close::ALL`].
    pub closed: [Counter; 10],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Indexed like [`BAD_FRAME_REASONS`].
    pub bad_frames: [Counter; 9],
}

impl TransportMetrics {
    pub fn close(&self, reason: Close) {
        self.closed[reason as usize].inc();
    }

    /// Counts a refused input by its reason name (one of [`BAD_FRAME_REASONS`]).
    pub fn bad_frame(&self, reason: &str) {
        if let Some(i) = BAD_FRAME_REASONS.iter().position(|r| *r == reason) {
            self.bad_frames[i].inc();
        }
    }

    pub fn closed_total(&self) -> u64 {
        self.closed.iter().map(Counter::get).sum()
    }
}

/// One method's call counts and handling times on one core.
#[derive(Debug, Default)]
pub struct MethodMetrics {
    pub started: Counter,
    pub handled_ok: Counter,
    pub handled_error: Counter,
    /// Not cumulative: bucket `i` counts times in (bound `i-1`, bound `i`]; the last is `+Inf`.
    pub buckets: [Counter; 20],
    pub sum_nanos: Counter,
}

impl MethodMetrics {
    #[inline]
    pub fn handled(&self, ok: bool) {
        if ok {
            self.handled_ok.inc();
        } else {
            self.handled_error.inc();
        }
    }

    /// Adds one call's handling time to the histogram (the server times a sample of calls).
    #[inline]
    pub fn timed(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[bucket].inc();
        self.sum_nanos.add(nanos);
    }
}

/// One core's counters.
#[derive(Debug)]
pub struct CoreMetrics {
    /// Which core (executor index) these belong to.
    pub core: usize,
    /// rpcx request frames (not heartbeats) read.
    pub requests: Counter,
    pub heartbeats: Counter,
    pub error_replies: Counter,
    /// Calls refused by the auth check (their connections are closed).
    pub auth_failures: Counter,
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
    /// HTTP gateway requests (X-RPCX-* headers) answered, errors included.
    pub gateway_requests: Counter,
    /// JSON-RPC 2.0 calls and notifications (each element of a batch counts).
    pub jsonrpc_calls: Counter,
    /// Gateway and JSON-RPC replies that carry an error (rpcx error headers or a JSON-RPC error).
    pub gateway_errors: Counter,
    /// HTTP input refused with a 4xx/5xx and a closed connection (unparsable request, header or
    /// body limits, bad chunking), indexed like [`BAD_HTTP_REASONS`].
    pub bad_http: [Counter; 5],
    /// Indexed by [`Transport`].
    pub transports: Box<[TransportMetrics]>,
    /// Indexed by [`Method::index`], then one more for unknown service or method.
    pub methods: Box<[MethodMetrics]>,
}

impl CoreMetrics {
    pub fn new(core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            requests: Counter::default(),
            heartbeats: Counter::default(),
            error_replies: Counter::default(),
            auth_failures: Counter::default(),
            tls_handshakes: Counter::default(),
            tls_handshake_failures: Counter::default(),
            plaintext_refused: Counter::default(),
            http_connects: Counter::default(),
            http_connect_refused: Counter::default(),
            gateway_requests: Counter::default(),
            jsonrpc_calls: Counter::default(),
            gateway_errors: Counter::default(),
            bad_http: Default::default(),
            transports: TRANSPORTS.iter().map(|_| Default::default()).collect(),
            methods: (0..=Method::ALL.len())
                .map(|_| Default::default())
                .collect(),
        }
    }

    #[inline]
    pub fn transport(&self, t: Transport) -> &TransportMetrics {
        &self.transports[t.0]
    }

    /// A registered method's counts.
    #[inline]
    pub fn method(&self, m: Method) -> &MethodMetrics {
        &self.methods[m.index()]
    }

    /// Counts of calls to a service or method that is not registered.
    #[inline]
    pub fn unknown_method(&self) -> &MethodMetrics {
        &self.methods[Method::ALL.len()]
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

    /// Refused inputs, every transport and reason.
    pub fn bad_frames_total(&self) -> u64 {
        self.transports
            .iter()
            .flat_map(|t| t.bad_frames.iter())
            .map(Counter::get)
            .sum()
    }

    /// Connections closed for `reason`, every transport.
    pub fn closed(&self, reason: Close) -> u64 {
        self.transports
            .iter()
            .map(|t| t.closed[reason as usize].get())
            .sum()
    }

    /// Connections currently open on this core.
    pub fn connections_open(&self) -> u64 {
        self.transports
            .iter()
            .map(|t| t.accepted.get().saturating_sub(t.closed_total()))
            .sum()
    }
}

/// The whole server's state as a scrape sees it, beyond the counters.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Every core listens and the server is not draining.
    pub ready: bool,
    pub draining: bool,
}

/// Prometheus text exposition (format 0.0.4) of every core's counters, summed.
pub fn prometheus(cores: &[Arc<CoreMetrics>], status: Status) -> String {
    let mut out = String::with_capacity(16 << 10);
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
    let method_names = |i: usize| match Method::ALL.get(i) {
        Some(m) => m.names(),
        None => ("unknown", "unknown"),
    };
    let methods = Method::ALL.len() + 1;

    header(
        &mut out,
        "rpcx_server_started_total",
        "counter",
        "Calls started, by service and method.",
    );
    for i in 0..methods {
        let (s, m) = method_names(i);
        let n = sum(&|c| c.methods[i].started.get());
        let _ = writeln!(
            out,
            "rpcx_server_started_total{{service=\"{s}\",method=\"{m}\"}} {n}"
        );
    }
    header(
        &mut out,
        "rpcx_server_handled_total",
        "counter",
        "Calls finished, by service, method and outcome (OK or error).",
    );
    for i in 0..methods {
        let (s, m) = method_names(i);
        let ok = sum(&|c| c.methods[i].handled_ok.get());
        let err = sum(&|c| c.methods[i].handled_error.get());
        let _ = writeln!(
            out,
            "rpcx_server_handled_total{{service=\"{s}\",method=\"{m}\",code=\"OK\"}} {ok}"
        );
        let _ = writeln!(
            out,
            "rpcx_server_handled_total{{service=\"{s}\",method=\"{m}\",code=\"error\"}} {err}"
        );
    }
    header(
        &mut out,
        "rpcx_server_handling_seconds",
        "histogram",
        "Time from a call's decode to its outcome, by service and method; one call in 16 per method and core is timed, the first included.",
    );
    for i in 0..Method::ALL.len() {
        let (s, m) = method_names(i);
        let mut cumulative = 0;
        for (b, bound) in HANDLING_BUCKETS.iter().enumerate() {
            cumulative += sum(&|c| c.methods[i].buckets[b].get());
            let _ = writeln!(
                out,
                "rpcx_server_handling_seconds_bucket{{service=\"{s}\",method=\"{m}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += sum(&|c| c.methods[i].buckets[HANDLING_BUCKETS.len()].get());
        let _ = writeln!(
            out,
            "rpcx_server_handling_seconds_bucket{{service=\"{s}\",method=\"{m}\",le=\"+Inf\"}} {cumulative}"
        );
        let secs = sum(&|c| c.methods[i].sum_nanos.get()) as f64 / 1e9;
        let _ = writeln!(
            out,
            "rpcx_server_handling_seconds_sum{{service=\"{s}\",method=\"{m}\"}} {secs}"
        );
        let _ = writeln!(
            out,
            "rpcx_server_handling_seconds_count{{service=\"{s}\",method=\"{m}\"}} {cumulative}"
        );
    }

    header(
        &mut out,
        "rpcx_server_requests_total",
        "counter",
        "Request frames read (heartbeats not included).",
    );
    let _ = writeln!(
        out,
        "rpcx_server_requests_total {}",
        sum(&|c| c.requests.get())
    );
    header(
        &mut out,
        "rpcx_server_heartbeats_total",
        "counter",
        "Heartbeat frames echoed.",
    );
    let _ = writeln!(
        out,
        "rpcx_server_heartbeats_total {}",
        sum(&|c| c.heartbeats.get())
    );
    header(
        &mut out,
        "rpcx_server_error_replies_total",
        "counter",
        "Error replies sent.",
    );
    let _ = writeln!(
        out,
        "rpcx_server_error_replies_total {}",
        sum(&|c| c.error_replies.get())
    );
    header(
        &mut out,
        "rpcx_server_auth_failures_total",
        "counter",
        "Calls refused by the auth check.",
    );
    let _ = writeln!(
        out,
        "rpcx_server_auth_failures_total {}",
        sum(&|c| c.auth_failures.get())
    );

    // Handshakes before the first rpcx frame: TLS and rpcx's HTTP CONNECT.
    type Read<'a> = &'a dyn Fn(&CoreMetrics) -> u64;
    let simple: [(&str, &str, Read); 5] = [
        (
            "rpcx_server_tls_handshakes_total",
            "TLS handshakes completed.",
            &|c| c.tls_handshakes.get(),
        ),
        (
            "rpcx_server_tls_handshake_failures_total",
            "Connections closed because their TLS handshake failed.",
            &|c| c.tls_handshake_failures.get(),
        ),
        (
            "rpcx_server_plaintext_refused_total",
            "Plaintext connections closed because TLS is required (tls.allow_plaintext = false).",
            &|c| c.plaintext_refused.get(),
        ),
        (
            "rpcx_server_http_connects_total",
            "HTTP CONNECT /_rpcx_ handshakes accepted.",
            &|c| c.http_connects.get(),
        ),
        (
            "rpcx_server_http_connect_refused_total",
            "Requests refused with 405 must CONNECT, or CONNECT heads malformed or too long.",
            &|c| c.http_connect_refused.get(),
        ),
    ];
    for (name, help, value) in simple {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", sum(value));
    }

    header(
        &mut out,
        "rpcx_server_gateway_requests_total",
        "counter",
        "HTTP gateway requests answered, errors included.",
    );
    let _ = writeln!(
        out,
        "rpcx_server_gateway_requests_total {}",
        sum(&|c| c.gateway_requests.get())
    );
    header(
        &mut out,
        "rpcx_server_jsonrpc_calls_total",
        "counter",
        "JSON-RPC 2.0 calls and notifications (each element of a batch).",
    );
    let _ = writeln!(
        out,
        "rpcx_server_jsonrpc_calls_total {}",
        sum(&|c| c.jsonrpc_calls.get())
    );
    header(
        &mut out,
        "rpcx_server_gateway_errors_total",
        "counter",
        "Gateway and JSON-RPC replies that carry an error.",
    );
    let _ = writeln!(
        out,
        "rpcx_server_gateway_errors_total {}",
        sum(&|c| c.gateway_errors.get())
    );
    header(
        &mut out,
        "rpcx_server_bad_http_total",
        "counter",
        "HTTP inputs refused (4xx/5xx, connection closed), by reason.",
    );
    for (r, reason) in BAD_HTTP_REASONS.iter().enumerate() {
        let n = sum(&|c| c.bad_http[r].get());
        let _ = writeln!(out, "rpcx_server_bad_http_total{{reason=\"{reason}\"}} {n}");
    }

    let per_transport = |out: &mut String,
                         name: &str,
                         kind: &str,
                         help: &str,
                         f: &dyn Fn(&TransportMetrics) -> u64| {
        header(out, name, kind, help);
        for (t, label) in TRANSPORTS.iter().enumerate() {
            let n = sum(&|c| f(&c.transports[t]));
            let _ = writeln!(out, "{name}{{transport=\"{label}\"}} {n}");
        }
    };
    per_transport(
        &mut out,
        "rpcx_server_connections_open",
        "gauge",
        "Connections open now.",
        &|t| t.accepted.get().saturating_sub(t.closed_total()),
    );
    per_transport(
        &mut out,
        "rpcx_server_connections_accepted_total",
        "counter",
        "Connections accepted.",
        &|t| t.accepted.get(),
    );
    per_transport(
        &mut out,
        "rpcx_server_received_bytes_total",
        "counter",
        "Bytes read from connections.",
        &|t| t.bytes_in.get(),
    );
    per_transport(
        &mut out,
        "rpcx_server_sent_bytes_total",
        "counter",
        "Bytes written to connections.",
        &|t| t.bytes_out.get(),
    );
    header(
        &mut out,
        "rpcx_server_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for (t, label) in TRANSPORTS.iter().enumerate() {
        for reason in Close::ALL {
            let n = sum(&|c| c.transports[t].closed[reason as usize].get());
            let _ = writeln!(
                out,
                "rpcx_server_connections_closed_total{{transport=\"{label}\",reason=\"{}\"}} {n}",
                reason.name()
            );
        }
    }
    header(
        &mut out,
        "rpcx_server_bad_frames_total",
        "counter",
        "Inputs refused as not rpcx (the connection is closed), by reason.",
    );
    for (t, label) in TRANSPORTS.iter().enumerate() {
        for (r, reason) in BAD_FRAME_REASONS.iter().enumerate() {
            let n = sum(&|c| c.transports[t].bad_frames[r].get());
            let _ = writeln!(
                out,
                "rpcx_server_bad_frames_total{{transport=\"{label}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "rpcx_server_core_connections_open",
        "gauge",
        "Connections open now, per core (every transport).",
    );
    for c in cores {
        let _ = writeln!(
            out,
            "rpcx_server_core_connections_open{{core=\"{}\"}} {}",
            c.core,
            c.connections_open()
        );
    }
    header(
        &mut out,
        "rpcx_server_cores",
        "gauge",
        "Executors (cores) serving.",
    );
    let _ = writeln!(out, "rpcx_server_cores {}", cores.len());
    header(
        &mut out,
        "rpcx_server_ready",
        "gauge",
        "1 when every core listens and the server is not draining.",
    );
    let _ = writeln!(out, "rpcx_server_ready {}", u8::from(status.ready));
    header(
        &mut out,
        "rpcx_server_draining",
        "gauge",
        "1 while shutting down.",
    );
    let _ = writeln!(out, "rpcx_server_draining {}", u8::from(status.draining));
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_increasing_and_observations_land_in_the_right_one() {
        assert!(BUCKET_NANOS.windows(2).all(|w| w[0] < w[1]));
        let m = MethodMetrics::default();
        for (ok, took) in [
            (true, Duration::from_nanos(300)),
            (false, Duration::from_micros(10)),
            (true, Duration::from_millis(3)),
            (true, Duration::from_secs(60)),
        ] {
            m.handled(ok);
            m.timed(took);
        }
        assert_eq!(m.buckets[0].get(), 2, "≤ 10µs, bound included");
        assert_eq!(m.buckets[8].get(), 1, "3ms is in (2.5ms, 5ms]");
        assert_eq!(m.buckets[19].get(), 1, "+Inf");
        assert_eq!((m.handled_ok.get(), m.handled_error.get()), (3, 1));
    }

    #[test]
    fn scrape_sums_cores_and_uses_registry_labels() {
        let a = Arc::new(CoreMetrics::new(0));
        let b = Arc::new(CoreMetrics::new(1));
        a.method(Method::ArithMul).started.inc();
        b.method(Method::ArithMul).started.inc();
        b.method(Method::ArithMul).handled(true);
        b.method(Method::ArithMul).timed(Duration::from_millis(1));
        a.unknown_method().started.inc();
        a.transport(Transport::TCP).accepted.add(3);
        a.transport(Transport::TCP).close(Close::Eof);
        let text = prometheus(
            &[a, b],
            Status {
                ready: true,
                draining: false,
            },
        );
        for line in [
            "rpcx_server_started_total{service=\"Arith\",method=\"Mul\"} 2",
            "rpcx_server_started_total{service=\"unknown\",method=\"unknown\"} 1",
            "rpcx_server_handled_total{service=\"Arith\",method=\"Mul\",code=\"OK\"} 1",
            "rpcx_server_handling_seconds_bucket{service=\"Arith\",method=\"Mul\",le=\"0.001\"} 1",
            "rpcx_server_handling_seconds_bucket{service=\"Arith\",method=\"Mul\",le=\"0.0005\"} 0",
            "rpcx_server_handling_seconds_count{service=\"Arith\",method=\"Mul\"} 1",
            "rpcx_server_connections_open{transport=\"tcp\"} 2",
            "rpcx_server_connections_closed_total{transport=\"tcp\",reason=\"eof\"} 1",
            "rpcx_server_core_connections_open{core=\"0\"} 2",
            "rpcx_server_ready 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
