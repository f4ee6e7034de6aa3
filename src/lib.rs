//! percore: a thread-per-core, rpcx-compatible RPC server, with its client and load generator.
//!
//! A client written against the Go rpcx library talks to percore unchanged; percore serves it
//! from one glommio executor per core, shared-nothing, with handlers registered statically.
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`protocol`] | rpcx frames, sans-IO: an incremental decoder with limits, and an encoder |
//! | [`codec`] | payload serialization (raw, JSON, protobuf, MsgPack) and gzip with a size cap |
//! | [`service`](mod@service) | the registration API: `Service`, `Registry`, the `service!`/`registry!` macros, sync/async/raw handler adapters, per-core state; [`builtin`] (`Arith`, `Echo`, `Hello`) is one registry |
//! | [`cli`] | the whole `percore` command line, for any registry: a user's `main` is `percore::cli::main::<MyServices>()` |
//! | [`bench_message`] | rpcx-benchmark's protobuf `BenchmarkMessage` and the `Hello.Say` rewrite |
//! | [`server`] | executors per core, listeners, the one accept path, first-byte routing, the connection loop, HTTP/1.1, the gateway and JSON-RPC, shutdown |
//! | [`transport`] | per network, how to listen and dial: the one address type ([`transport::addr`]) and the one dialer ([`transport::connector`]) |
//! | [`client`] | the rpcx client: multiplexed connection, `XClient` (fail and select modes), discovery |
//! | [`bench`] | the load generator behind `percore bench`, built on the public client only |
//! | [`config`] | typed configuration: defaults < TOML file (unknown keys rejected) < env < flags |
//! | [`etcd`] | many hosts: registration in etcd (rpcx-etcd's key layout) on a thread of its own; the client's etcd discovery is [`client::EtcdDiscovery`] |
//! | [`metrics`] | per-core counters, single writer each, summed when read; Prometheus text |
//! | [`admin`] | `/metrics`, `/healthz`, `/readyz` on `admin.listen`, from one thread's poll loop |
//! | [`notify`] | systemd's `sd_notify` protocol: READY, STATUS, STOPPING |
//! | [`host`] | what the host must give percore (io_uring, memlock, open files), checked before any executor starts; `percore check-host` |
//!
//! `main.rs` is `percore::cli::builtin()`: the command line with the built-in services.
//!
//! # Data flow
//!
//! ```text
//!            one glommio executor per allowed CPU, pinned; shared: read-only config only
//! client ─► SO_REUSEPORT listener (one socket per core) ─┐
//! client ─► unix socket (one socket, accepted by every core) ─┴► accept ─► sniff (first bytes)
//! client ─► reactor thread (QUIC, KCP) ─► Handoff ─► the core's receive loop ─► rpcx frame loop
//!   every stream, whatever its listener: server::accept::serve (connection limit, registration
//!   for drain and metrics, a `conn` span with listener and peer, the close reason)
//!   sniff: 0x08 rpcx ─► connection task (the bare socket: the hot path has no wrapper)
//!          0x16 TLS (rustls) ─► sniff again inside TLS
//!          `C`  HTTP CONNECT /_rpcx_ ─► connection task;  HTTP ─► the gateway seam
//!
//! connection task: the first byte routes it (server::sniff)
//!   0x08 ─► the rpcx frame loop below
//!   an HTTP method ─► server::http (httparse, one request after another, replies in order)
//!                     ─► server::gateway: X-RPCX-* headers or JSON-RPC 2.0
//!                     ─► server::dispatch::invoke, the same as rpcx frames (auth, lookup,
//!                        handler, the __ServerTimeout rule for delayed replies)
//!
//! rpcx frame loop = reader ⨝ writer (two futures joined in one task)
//!   reader: read as much as is there, then for each whole frame:
//!     fast lane (server::conn::plain_run): a plain call (no heartbeat/oneway/gzip bits, no
//!       metadata, no tokens configured) to the method the connection called last, its names
//!       the same bytes (protocol::Names) ─► the kept MethodId ─► handler ─► reply from the
//!       request's own head and names (protocol::encode_plain_reply)
//!     general: protocol::frame_len (header check, before buffering) ─► protocol::decode_frame
//!       (borrowed views) ─► heartbeat? echo ─► Registry::lookup (a match) ─► dispatch ─►
//!       codec decode ─► handler ─► codec encode ─► reply frame
//!     replies are appended to the outbox under one borrow per batch (buffers reused, nothing
//!     allocated per call); handler panics are caught once per batch, and answered as the
//!     call's error
//!   writer: swap the outbox out, one write for the whole batch
//!   timeouts (idle, frame) and giving back a quiet connection's buffers: no timer per
//!     connection; each core's sweeper looks at its connections' clocks once per tick of the
//!     `percore-clock` thread (server::clock)
//! ```
//!
//! Other threads stay off that path: `percore-admin` (when `admin.listen` is set) answers
//! `/metrics`, `/healthz` and `/readyz` from one poll(2) loop, reading the cores' single-writer
//! counters; `percore-signals` turns SIGTERM/SIGINT into a drain (and `STOPPING=1` for systemd)
//! and SIGHUP into a log-level reload. `READY=1` goes to systemd once every core accepts.
//! `percore-kcp` (one per `kcp@` listener) owns that listener's UDP socket and KCP sessions and
//! hands each session's byte stream to a core, which runs the same frame loop on it.
//! `percore-quic` (one per `quic@` listener) runs QUIC only: handshakes, flow control, timers;
//! `percore-quic-client` does the same for the client's `quic@` dials. `percore-etcd` (with
//! `[registry.etcd]`) keeps this server's keys in etcd on a tokio runtime of its own, and a
//! drain deletes them before the cores stop. `percore-clock` (when a connection timeout is set)
//! wakes each core that has connections to watch a few times a second, so no core keeps a
//! timer armed for them.
//!
//! Bad input (wrong magic, an over-long frame, inconsistent lengths, a gzip bomb) closes only its
//! own connection, with one log line and a per-core metric; nothing in the decoder panics or
//! reads past its input.

pub mod admin;
pub mod bench;
pub mod bench_message;
mod buf;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod etcd;
pub mod host;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod service;

pub use service::builtin;
#[doc(hidden)]
pub use toml;
mod stream;
pub mod transport;
