//! Per-core counters, summed when read, and their Prometheus text form.
//!
//! Each core owns one [`CoreMetrics`] and is its only writer, so a count is a relaxed load and
//! store (plain `mov`s on x86), never a locked read-modify-write shared across cores, and never
//! a lock. Readers on other threads (the admin endpoint's scrape, tests) load the values and add
//! the cores up; a scrape may see one core's counters a few increments apart from each other,
//! which Prometheus counters tolerate.
//!
//! Labels are bounded: services and methods come from the server's registry (an unknown one is
//! `unknown`, never the client's string); transports and reasons are enums ([`Transport`],
//! [`Close`], [`BadFrame`], [`BadHttp`]) whose `ALL` sizes the counter arrays and lists the
//! label values, so every reason the code can count is exported.
//!
//! Handling time is sampled: one call in 16 per method and core (the first included) costs an `Instant::now()` pair and a bucket search;
//! a delayed call (`Hello.Say` with `services.Hello.delay`) is observed as its handler's time
//! plus the delay, when its outcome is decided.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::DecodeError;
use crate::transport::kcp::{KcpCounts, KcpStats};
use crate::transport::quic::QuicCounters;

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

/// A label enum: its variants, `ALL` in label order, and `name()` (the label value).
macro_rules! labels {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant,)* }

        impl $name {
            /// Every value, in label order (the index of a value is `self as usize`).
            pub const ALL: [$name; [$($label),*].len()] = [$($name::$variant),*];

            /// The label value.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

labels! {
    /// Which transport a connection came in on (the `transport` label).
    pub enum Transport {
        /// TCP listeners (`tcp`, `reuseport`, `http`), with or without TLS.
        Tcp = "tcp",
        /// Unix domain socket listeners (`unix`), with or without TLS.
        Unix = "unix",
        /// QUIC streams (`quic`).
        Quic = "quic",
        /// KCP sessions (`kcp`).
        Kcp = "kcp",
    }
}

labels! {
    /// Why a connection was closed (the `reason` label of closed-connection counts).
    pub enum Close {
        /// The peer closed its side (or asked to, with HTTP `Connection: close`).
        Eof = "eof",
        /// Reading failed (reset by the peer, ...).
        ReadError = "read_error",
        /// Writing failed.
        WriteError = "write_error",
        /// The peer sent something that is not rpcx (also counted in bad frames by reason), or
        /// HTTP that was refused (also counted in bad HTTP by reason).
        BadFrame = "bad_frame",
        /// No request within `limits.idle_timeout` (`gateway.idle_timeout` for HTTP).
        IdleTimeout = "idle_timeout",
        /// Nothing sent within `limits.handshake_timeout`.
        HandshakeTimeout = "handshake_timeout",
        /// Over `limits.max_connections_per_core` (or the core's share of the open-files
        /// limit), or out of descriptors: accepted and closed at once.
        MaxConnections = "max_connections",
        /// Over `limits.max_connections_per_ip` for its peer: accepted and closed at once.
        MaxConnectionsPerIp = "max_connections_per_ip",
        /// A call failed the auth check.
        Unauthenticated = "unauthenticated",
        /// Drained on shutdown, every reply sent.
        Shutdown = "shutdown",
        /// Still open when the drain timeout ran out.
        DrainTimeout = "drain_timeout",
        /// A frame (rpcx) or request (HTTP) not complete in time after its first byte
        /// (`limits.frame_timeout`, `gateway.request_timeout`).
        Timeout = "timeout",
        /// The TLS handshake failed (bad certificate, not TLS, ...).
        TlsHandshake = "tls_handshake",
    }
}

labels! {
    /// Why a connection's rpcx input was refused (the `reason` label of bad-frame counts).
    pub enum BadFrame {
        /// The first byte is not rpcx's magic (or not any protocol this port serves).
        BadMagic = "bad_magic",
        /// A frame longer than `limits.max_frame_bytes`.
        TooLarge = "too_large",
        /// A frame shorter than its own lengths say.
        Truncated = "truncated",
        /// Bytes after a frame's last field, inside its length.
        TrailingBytes = "trailing_bytes",
        /// A service path or method that is not UTF-8.
        InvalidUtf8 = "invalid_utf8",
        /// A metadata block whose entries run past it.
        BadMetadata = "bad_metadata",
        /// A compress type other than none and gzip.
        UnknownCompress = "unknown_compress",
        /// A gzip payload that does not inflate.
        BadGzip = "bad_gzip",
        /// A gzip payload that inflates past `limits.max_decompressed_bytes`.
        DecompressedTooLarge = "decompressed_too_large",
        /// More metadata entries than `limits.max_metadata_entries`.
        TooManyMetadata = "too_many_metadata",
    }
}

impl From<&DecodeError> for BadFrame {
    fn from(e: &DecodeError) -> BadFrame {
        match e {
            DecodeError::BadMagic(_) => BadFrame::BadMagic,
            DecodeError::TooLarge { .. } => BadFrame::TooLarge,
            DecodeError::Truncated(_) => BadFrame::Truncated,
            DecodeError::TrailingBytes(_) => BadFrame::TrailingBytes,
            DecodeError::InvalidUtf8(_) => BadFrame::InvalidUtf8,
            DecodeError::BadMetadata => BadFrame::BadMetadata,
            DecodeError::UnknownCompress(_) => BadFrame::UnknownCompress,
            DecodeError::TooManyMetadata(_) => BadFrame::TooManyMetadata,
        }
    }
}

labels! {
    /// Why an HTTP connection's input was refused (the `reason` label of bad-HTTP counts).
    pub enum BadHttp {
        /// Not parsable as HTTP/1.x (400).
        Malformed = "malformed",
        /// A request head over `gateway.max_header_bytes` or `gateway.max_headers` (431).
        HeadersTooLarge = "headers_too_large",
        /// A body over `gateway.max_body_bytes` (413).
        BodyTooLarge = "body_too_large",
        /// A transfer coding other than chunked (501).
        Unsupported = "unsupported",
        /// A request not complete within `gateway.request_timeout` (408).
        Timeout = "timeout",
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
    /// Indexed by [`Close`].
    pub closed: [Counter; Close::ALL.len()],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Indexed by [`BadFrame`].
    pub bad_frames: [Counter; BadFrame::ALL.len()],
}

impl TransportMetrics {
    pub fn close(&self, reason: Close) {
        self.closed[reason as usize].inc();
    }

    /// Counts a refused input.
    pub fn bad_frame(&self, reason: BadFrame) {
        self.bad_frames[reason as usize].inc();
    }

    pub fn closed_total(&self) -> u64 {
        self.closed.iter().map(Counter::get).sum()
    }

    fn open(&self) -> u64 {
        self.accepted.get().saturating_sub(self.closed_total())
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
    /// HTTP input refused with a 4xx/5xx and a closed connection, indexed by [`BadHttp`].
    pub bad_http: [Counter; BadHttp::ALL.len()],
    /// Indexed by [`Transport`].
    pub transports: [TransportMetrics; Transport::ALL.len()],
    /// Indexed by [`MethodId::index`](crate::service::MethodId), then one more for an unknown
    /// service or method.
    pub methods: Box<[MethodMetrics]>,
}

/// The counters that are one number per core: (name, help, the counter).
type Scalar = (&'static str, &'static str, fn(&CoreMetrics) -> &Counter);

/// Every scalar counter as the scrape exports it, in order.
const SCALARS: &[Scalar] = &[
    (
        "rpcx_server_requests_total",
        "Request frames read (heartbeats not included).",
        |c| &c.requests,
    ),
    (
        "rpcx_server_heartbeats_total",
        "Heartbeat frames echoed.",
        |c| &c.heartbeats,
    ),
    (
        "rpcx_server_error_replies_total",
        "Error replies sent.",
        |c| &c.error_replies,
    ),
    (
        "rpcx_server_auth_failures_total",
        "Calls refused by the auth check.",
        |c| &c.auth_failures,
    ),
    (
        "rpcx_server_tls_handshakes_total",
        "TLS handshakes completed.",
        |c| &c.tls_handshakes,
    ),
    (
        "rpcx_server_tls_handshake_failures_total",
        "Connections closed because their TLS handshake failed.",
        |c| &c.tls_handshake_failures,
    ),
    (
        "rpcx_server_plaintext_refused_total",
        "Plaintext connections closed because TLS is required (tls.allow_plaintext = false).",
        |c| &c.plaintext_refused,
    ),
    (
        "rpcx_server_http_connects_total",
        "HTTP CONNECT /_rpcx_ handshakes accepted.",
        |c| &c.http_connects,
    ),
    (
        "rpcx_server_http_connect_refused_total",
        "Requests refused with 405 must CONNECT, or CONNECT heads malformed or too long.",
        |c| &c.http_connect_refused,
    ),
    (
        "rpcx_server_gateway_requests_total",
        "HTTP gateway requests answered, errors included.",
        |c| &c.gateway_requests,
    ),
    (
        "rpcx_server_jsonrpc_calls_total",
        "JSON-RPC 2.0 calls and notifications (each element of a batch).",
        |c| &c.jsonrpc_calls,
    ),
    (
        "rpcx_server_gateway_errors_total",
        "Gateway and JSON-RPC replies that carry an error.",
        |c| &c.gateway_errors,
    ),
];

/// The per-transport counters: (name, type, help, the value).
type PerTransport = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TransportMetrics) -> u64,
);

const PER_TRANSPORT: &[PerTransport] = &[
    (
        "rpcx_server_connections_open",
        "gauge",
        "Connections open now.",
        TransportMetrics::open,
    ),
    (
        "rpcx_server_connections_accepted_total",
        "counter",
        "Connections accepted.",
        |t| t.accepted.get(),
    ),
    (
        "rpcx_server_received_bytes_total",
        "counter",
        "Bytes read from connections.",
        |t| t.bytes_in.get(),
    ),
    (
        "rpcx_server_sent_bytes_total",
        "counter",
        "Bytes written to connections.",
        |t| t.bytes_out.get(),
    ),
];

impl CoreMetrics {
    /// The counters of core `core` of a server whose registry has `methods` methods.
    pub fn new(core: usize, methods: usize) -> CoreMetrics {
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
            transports: Default::default(),
            methods: (0..=methods).map(|_| Default::default()).collect(),
        }
    }

    #[inline]
    pub fn transport(&self, t: Transport) -> &TransportMetrics {
        &self.transports[t as usize]
    }

    /// A registered method's counts, by its [`MethodId::index`](crate::service::MethodId).
    #[inline]
    pub fn method(&self, index: usize) -> &MethodMetrics {
        &self.methods[index]
    }

    /// Counts of calls to a service or method that is not registered.
    #[inline]
    pub fn unknown_method(&self) -> &MethodMetrics {
        &self.methods[self.methods.len() - 1]
    }

    /// Counts a refused HTTP input.
    pub fn bad_http(&self, reason: BadHttp) {
        self.bad_http[reason as usize].inc();
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
        self.transports.iter().map(TransportMetrics::open).sum()
    }
}

/// The whole server's state as a scrape sees it, beyond the counters.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Every core listens and the server is not draining.
    pub ready: bool,
    pub draining: bool,
}

/// Prometheus text exposition (format 0.0.4) of every core's counters, summed. `names` are the
/// registry's (service, method) pairs, in per-method counter order.
pub fn prometheus(cores: &[Arc<CoreMetrics>], names: &[(&str, &str)], status: Status) -> String {
    let mut out = String::with_capacity(16 << 10);
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
    let method_names = |i: usize| names.get(i).copied().unwrap_or(("unknown", "unknown"));
    let methods = names.len() + 1;

    let name = "rpcx_server_started_total";
    header(
        &mut out,
        name,
        "counter",
        "Calls started, by service and method.",
    );
    for i in 0..methods {
        let (s, m) = method_names(i);
        let n = sum(&|c| c.methods[i].started.get());
        let _ = writeln!(out, "{name}{{service=\"{s}\",method=\"{m}\"}} {n}");
    }
    let name = "rpcx_server_handled_total";
    header(
        &mut out,
        name,
        "counter",
        "Calls finished, by service, method and outcome (OK or error).",
    );
    for i in 0..methods {
        let (s, m) = method_names(i);
        for (code, n) in [
            ("OK", sum(&|c| c.methods[i].handled_ok.get())),
            ("error", sum(&|c| c.methods[i].handled_error.get())),
        ] {
            let _ = writeln!(
                out,
                "{name}{{service=\"{s}\",method=\"{m}\",code=\"{code}\"}} {n}"
            );
        }
    }
    let name = "rpcx_server_handling_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from a call's decode to its outcome, by service and method; one call in 16 per method and core is timed, the first included.",
    );
    for i in 0..names.len() {
        let (s, m) = method_names(i);
        let labels = format!("service=\"{s}\",method=\"{m}\"");
        let mut cumulative = 0;
        for (b, bound) in HANDLING_BUCKETS.iter().enumerate() {
            cumulative += sum(&|c| c.methods[i].buckets[b].get());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += sum(&|c| c.methods[i].buckets[HANDLING_BUCKETS.len()].get());
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let secs = sum(&|c| c.methods[i].sum_nanos.get()) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {secs}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }

    for &(name, help, counter) in SCALARS {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", sum(&|c| counter(c).get()));
    }

    let name = "rpcx_server_bad_http_total";
    header(
        &mut out,
        name,
        "counter",
        "HTTP inputs refused (4xx/5xx, connection closed), by reason.",
    );
    for reason in BadHttp::ALL {
        let n = sum(&|c| c.bad_http[reason as usize].get());
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", reason.name());
    }

    for &(name, kind, help, value) in PER_TRANSPORT {
        header(&mut out, name, kind, help);
        for t in Transport::ALL {
            let n = sum(&|c| value(c.transport(t)));
            let _ = writeln!(out, "{name}{{transport=\"{}\"}} {n}", t.name());
        }
    }
    let name = "rpcx_server_connections_closed_total";
    header(&mut out, name, "counter", "Connections closed, by reason.");
    for t in Transport::ALL {
        for reason in Close::ALL {
            let n = sum(&|c| c.transport(t).closed[reason as usize].get());
            let (t, r) = (t.name(), reason.name());
            let _ = writeln!(out, "{name}{{transport=\"{t}\",reason=\"{r}\"}} {n}");
        }
    }
    let name = "rpcx_server_bad_frames_total";
    header(
        &mut out,
        name,
        "counter",
        "Inputs refused as not rpcx (the connection is closed), by reason.",
    );
    for t in Transport::ALL {
        for reason in BadFrame::ALL {
            let n = sum(&|c| c.transport(t).bad_frames[reason as usize].get());
            let (t, r) = (t.name(), reason.name());
            let _ = writeln!(out, "{name}{{transport=\"{t}\",reason=\"{r}\"}} {n}");
        }
    }
    let name = "rpcx_server_core_connections_open";
    header(
        &mut out,
        name,
        "gauge",
        "Connections open now, per core (every transport).",
    );
    for c in cores {
        let _ = writeln!(
            out,
            "{name}{{core=\"{}\"}} {}",
            c.core,
            c.connections_open()
        );
    }
    for (name, help, value) in [
        (
            "rpcx_server_cores",
            "Executors (cores) serving.",
            cores.len() as u64,
        ),
        (
            "rpcx_server_ready",
            "1 when every core listens and the server is not draining.",
            u64::from(status.ready),
        ),
        (
            "rpcx_server_draining",
            "1 while shutting down.",
            u64::from(status.draining),
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// The per-listener counters of `quic@` listeners: (name, type, help, the value).
type PerQuicListener = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QuicCounters) -> u64,
);

const PER_QUIC_LISTENER: &[PerQuicListener] = &[
    (
        "rpcx_server_quic_connections_open",
        "gauge",
        "QUIC connections open now (handshake done).",
        QuicCounters::connections_open,
    ),
    (
        "rpcx_server_quic_connections_accepted_total",
        "counter",
        "QUIC handshakes completed.",
        |q| q.connections_accepted.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_connections_closed_total",
        "counter",
        "QUIC connections ended (closed by either side, idle timeout, shutdown).",
        |q| q.connections_closed.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_connections_refused_total",
        "counter",
        "QUIC connection attempts refused at quic.max_connections.",
        |q| q.connections_refused.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_handshake_failures_total",
        "counter",
        "QUIC handshakes that failed (wrong ALPN, bad client certificate, timeout).",
        |q| q.handshake_failures.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_streams_accepted_total",
        "counter",
        "QUIC streams handed to the cores.",
        |q| q.streams_accepted.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_streams_closed_total",
        "counter",
        "QUIC streams closed and acknowledged by the client.",
        |q| q.streams_closed.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_streams_refused_total",
        "counter",
        "QUIC streams opened during shutdown and reset unserved.",
        |q| q.streams_refused.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_received_bytes_total",
        "counter",
        "UDP payload bytes received on QUIC connections that have ended.",
        |q| q.bytes_in.load(Ordering::Relaxed),
    ),
    (
        "rpcx_server_quic_sent_bytes_total",
        "counter",
        "UDP payload bytes sent on QUIC connections that have ended.",
        |q| q.bytes_out.load(Ordering::Relaxed),
    ),
];

/// Prometheus text of the `quic@` listeners' own counters, one series per listener (labelled
/// with its address from the config); appended to [`prometheus`]'s. Empty without listeners.
pub fn prometheus_quic(listeners: &[(String, Arc<QuicCounters>)]) -> String {
    let mut out = String::new();
    if listeners.is_empty() {
        return out;
    }
    for &(name, kind, help, value) in PER_QUIC_LISTENER {
        header(&mut out, name, kind, help);
        for (listener, counters) in listeners {
            let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {}", value(counters));
        }
    }
    out
}

/// One KCP counter as the scrape exports it: (name, type, help, label, value).
type KcpRow = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    fn(&KcpCounts) -> u64,
);

/// The KCP reactors' own counters (below the rpcx connections, which are counted per core under
/// `transport="kcp"` like every transport's). Rows with the same name share one header.
const KCP_ROWS: &[KcpRow] = &[
    (
        "rpcx_server_kcp_sessions_open",
        "gauge",
        "KCP sessions open now.",
        None,
        |c| c.sessions,
    ),
    (
        "rpcx_server_kcp_sessions_total",
        "counter",
        "KCP sessions started.",
        None,
        |c| c.sessions_total,
    ),
    (
        "rpcx_server_kcp_idle_timeouts_total",
        "counter",
        "KCP sessions dropped after kcp.idle_timeout of silence.",
        None,
        |c| c.idle_timeouts,
    ),
    (
        "rpcx_server_kcp_datagrams_total",
        "counter",
        "UDP datagrams on KCP listeners, by direction.",
        Some(("direction", "in")),
        |c| c.datagrams_in,
    ),
    (
        "rpcx_server_kcp_datagrams_total",
        "counter",
        "",
        Some(("direction", "out")),
        |c| c.datagrams_out,
    ),
    (
        "rpcx_server_kcp_dropped_datagrams_total",
        "counter",
        "Datagrams dropped by KCP listeners, by reason.",
        Some(("reason", "crc")),
        |c| c.dropped_crc,
    ),
    (
        "rpcx_server_kcp_dropped_datagrams_total",
        "counter",
        "",
        Some(("reason", "decode")),
        |c| c.dropped_decode,
    ),
    (
        "rpcx_server_kcp_dropped_datagrams_total",
        "counter",
        "",
        Some(("reason", "too_short")),
        |c| c.dropped_short,
    ),
    (
        "rpcx_server_kcp_dropped_datagrams_total",
        "counter",
        "",
        Some(("reason", "unknown")),
        |c| c.dropped_unknown,
    ),
    (
        "rpcx_server_kcp_dropped_datagrams_total",
        "counter",
        "",
        Some(("reason", "session_cap")),
        |c| c.dropped_session_cap,
    ),
    (
        "rpcx_server_kcp_dropped_datagrams_total",
        "counter",
        "",
        Some(("reason", "send_error")),
        |c| c.send_errors,
    ),
    (
        "rpcx_server_kcp_fec_recovered_total",
        "counter",
        "Data shards rebuilt from FEC parity.",
        None,
        |c| c.fec_recovered,
    ),
    (
        "rpcx_server_kcp_retransmissions_total",
        "counter",
        "KCP segments sent again.",
        None,
        |c| c.retransmissions,
    ),
];

/// Prometheus text of the KCP listeners' reactor counters, summed over listeners; empty when
/// there is no KCP listener.
pub fn kcp_prometheus(listeners: &[Arc<KcpStats>]) -> String {
    let mut out = String::new();
    if listeners.is_empty() {
        return out;
    }
    let counts: Vec<KcpCounts> = listeners.iter().map(|l| l.counts()).collect();
    for &(name, kind, help, label, value) in KCP_ROWS {
        if !help.is_empty() {
            header(&mut out, name, kind, help);
        }
        let n: u64 = counts.iter().map(value).sum();
        let _ = match label {
            Some((k, v)) => writeln!(out, "{name}{{{k}=\"{v}\"}} {n}"),
            None => writeln!(out, "{name} {n}"),
        };
    }
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
        let a = Arc::new(CoreMetrics::new(0, 1));
        let b = Arc::new(CoreMetrics::new(1, 1));
        a.method(0).started.inc();
        b.method(0).started.inc();
        b.method(0).handled(true);
        b.method(0).timed(Duration::from_millis(1));
        a.unknown_method().started.inc();
        a.transport(Transport::Tcp).accepted.add(3);
        a.transport(Transport::Tcp).close(Close::Eof);
        let text = prometheus(
            &[a, b],
            &[("Arith", "Mul")],
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

    #[test]
    fn every_label_value_is_exported() {
        let text = prometheus(
            &[Arc::new(CoreMetrics::new(0, 1))],
            &[("Arith", "Mul")],
            Status {
                ready: false,
                draining: false,
            },
        );
        for t in Transport::ALL {
            for r in Close::ALL {
                let line = format!(
                    "rpcx_server_connections_closed_total{{transport=\"{}\",reason=\"{}\"}} 0",
                    t.name(),
                    r.name()
                );
                assert!(text.contains(&line), "missing {line}");
            }
            for r in BadFrame::ALL {
                let line = format!(
                    "rpcx_server_bad_frames_total{{transport=\"{}\",reason=\"{}\"}} 0",
                    t.name(),
                    r.name()
                );
                assert!(text.contains(&line), "missing {line}");
            }
        }
        for r in BadHttp::ALL {
            assert!(text.contains(&format!(
                "rpcx_server_bad_http_total{{reason=\"{}\"}} 0",
                r.name()
            )));
        }
        for (name, _, _) in SCALARS {
            assert!(text.contains(&format!("\n{name} 0\n")), "missing {name}");
        }
        // Every counter a reason names is one the scrape reads.
        let m = CoreMetrics::new(0, 1);
        m.transport(Transport::Kcp)
            .bad_frame(BadFrame::DecompressedTooLarge);
        m.bad_http(BadHttp::Timeout);
        let text = prometheus(
            &[Arc::new(m)],
            &[],
            Status {
                ready: true,
                draining: false,
            },
        );
        assert!(text.contains(
            "rpcx_server_bad_frames_total{transport=\"kcp\",reason=\"decompressed_too_large\"} 1"
        ));
        assert!(text.contains("rpcx_server_bad_http_total{reason=\"timeout\"} 1"));
    }
}
