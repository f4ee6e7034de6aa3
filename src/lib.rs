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
//! | [`service`] | the static registry (`Arith`, `Echo`, `Hello`) and the typed-handler adapter |
//! | [`bench_message`] | rpcx-benchmark's protobuf `BenchmarkMessage` and the `Hello.Say` rewrite |
//! | [`server`] | executors per core, listeners, accept loops, the connection loop, shutdown |
//! | [`transport`] | per network, how to listen (and, for the client, dial) |
//! | [`client`] | the rpcx client: multiplexed connection, `XClient` (fail and select modes), discovery |
//! | [`bench`] | the load generator behind `percore bench`, built on the public client only |
//! | [`config`] | typed configuration: TOML with unknown keys rejected, flags on top |
//! | [`metrics`] | per-core counters, single writer each, summed when read |
//!
//! `main.rs` only parses the command line and calls into these.
//!
//! # Data flow
//!
//! ```text
//!            one glommio executor per allowed CPU, pinned; shared: read-only config only
//! client ─► SO_REUSEPORT listener (one socket per core) ─► accept ─► connection task
//!
//! connection task = reader ⨝ writer (two futures joined in one task)
//!   reader: read as much as is there ─► protocol::frame_len (header check, before buffering)
//!           ─► protocol::decode (borrowed views) ─► heartbeat? echo
//!           ─► service::Method::lookup (a match) ─► codec decode ─► handler ─► codec encode
//!           ─► reply frame appended to the outbox (buffers reused, nothing allocated per call)
//!   writer: swap the outbox out, one write for the whole batch
//! ```
//!
//! Bad input (wrong magic, an over-long frame, inconsistent lengths, a gzip bomb) closes only its
//! own connection, with one log line and a per-core metric; nothing in the decoder panics or
//! reads past its input.

pub mod bench;
pub mod bench_message;
pub mod client;
pub mod codec;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod service;
pub mod transport;
