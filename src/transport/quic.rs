//! QUIC (`quic@host:port`) with quinn, on reactor threads of its own.
//!
//! rpcx's QUIC (quic-go, PROTOCOL.md §9): TLS 1.3 with ALPN `rpcx`; the client opens one
//! bidirectional stream per connection and writes first, and that stream carries ordinary rpcx
//! frames. percore serves every bidirectional stream a client opens (rpcx opens one).
//!
//! # Threads
//!
//! quinn needs tokio and glommio cannot host it, so each [`QuicListener`] runs one thread,
//! `percore-quic`, with a tokio current_thread runtime and the quinn endpoint. That thread does
//! QUIC only: handshakes, streams, flow control, timers. Every accepted stream goes, as one
//! [`QuicStream`], to the listener's [`StreamSink`], which hands it to a core; the core polls it
//! directly (quinn's streams are `Send`; futures-io gives them `AsyncRead`/`AsyncWrite`), so the
//! wakers cross threads once per I/O event, not per call. The client side ([`dial`]) works the
//! same way with one lazily started process-wide thread, `percore-quic-client`.
//!
//! # Closing
//!
//! Dropping a [`QuicStream`] finishes its send side and gives it back to its reactor, which
//! waits until the peer has acknowledged every byte (or the connection is gone) before it counts
//! the stream closed; on the client it then closes the connection (code 0). So a reply written
//! just before the stream is dropped is not lost to a connection close racing it.
//!
//! [`QuicListener::shutdown`] stops accepting connections and streams, waits (up to its grace
//! period) until every stream it handed out is closed that way, then closes the remaining
//! connections with an application close, code 0, reason `server shutting down`, and joins the
//! thread. The stop signal given to [`listen_on`] (the server's drain) starts the same without a
//! deadline of its own: the cores' drain closes the streams, and `shutdown` bounds the rest.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    ConnectionError, Endpoint, EndpointConfig, IdleTimeout, TokioRuntime, TransportConfig,
    TransportErrorCode, VarInt,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

/// The ALPN protocol rpcx speaks over QUIC.
pub const ALPN: &[u8] = b"rpcx";

/// The application close a shutting-down server sends.
pub const SHUTDOWN_REASON: &str = "server shutting down";

/// TLS alert 120, `no_application_protocol`, as a QUIC crypto error (RFC 9001 §4.8).
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// The client keeps its connections alive with a PING this often, so that an idle pooled
/// connection (rpcx keeps one per server) is not reclaimed by the server's idle timeout (quic-go
/// and percore default to 30 s).
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The client's own idle timeout; the smaller of the two peers' applies.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// After the application close, how long the reactor keeps the socket to resend it to peers
/// that did not get it, before the thread exits.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// `[quic]`: what one QUIC peer can make the server hold. Every value bounds memory or time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicLimits {
    /// QUIC connections open at once, handshakes included; a connection attempt past it is
    /// refused (CONNECTION_REFUSED) and counted.
    pub max_connections: u32,
    /// A connection that carries no packet for this long is closed (the QUIC max idle timeout;
    /// the smaller of the two peers' applies: quic-go's default is 30 s). Also bounds a stalled
    /// handshake. Must not be zero.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Bidirectional streams a client may have open at once on one connection (rpcx opens one).
    pub max_streams_per_connection: u32,
    /// Bytes a client may send on one stream ahead of what the core has read (the stream's
    /// flow-control window).
    pub stream_window: u32,
    /// Bytes a client may send on one connection, all streams together, ahead of what the
    /// cores have read; also the most reply bytes kept per connection until the client
    /// acknowledges them.
    pub connection_window: u32,
}

impl Default for QuicLimits {
    fn default() -> Self {
        QuicLimits {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(30),
            max_streams_per_connection: 16,
            stream_window: 1 << 20,
            connection_window: 4 << 20,
        }
    }
}

impl QuicLimits {
    /// Checks every value; the error names the key (`quic.idle_timeout: ...`).
    pub fn validate(&self) -> Result<(), QuicError> {
        let bad = |key: &'static str, message: &str| {
            Err(QuicError::Limits {
                key,
                message: message.to_owned(),
            })
        };
        if self.max_connections == 0 {
            return bad("quic.max_connections", "must be at least 1");
        }
        if self.idle_timeout.is_zero() {
            return bad(
                "quic.idle_timeout",
                "must not be zero (a vanished client would be kept forever)",
            );
        }
        if IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad("quic.idle_timeout", "is too long for QUIC");
        }
        if self.max_streams_per_connection == 0 {
            return bad("quic.max_streams_per_connection", "must be at least 1");
        }
        if self.stream_window < 1024 {
            return bad("quic.stream_window", "must be at least 1024 bytes");
        }
        if self.connection_window < self.stream_window {
            return bad(
                "quic.connection_window",
                "must be at least quic.stream_window",
            );
        }
        Ok(())
    }

    fn transport(&self) -> Result<TransportConfig, QuicError> {
        self.validate()?;
        let idle = IdleTimeout::try_from(self.idle_timeout).map_err(|_| QuicError::Limits {
            key: "quic.idle_timeout",
            message: "is too long for QUIC".into(),
        })?;
        let mut t = TransportConfig::default();
        t.max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(self.max_streams_per_connection.into())
            // rpcx uses no unidirectional streams and no datagrams: refuse both.
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None)
            .stream_receive_window(self.stream_window.into())
            .receive_window(self.connection_window.into())
            .send_window(self.connection_window.into());
        Ok(t)
    }
}

/// Why a QUIC listener or dial failed; every variant says which.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A `[quic]` value cannot be used.
    #[error("{key}: {message}")]
    Limits { key: &'static str, message: String },
    /// The rustls config cannot carry QUIC (it must allow TLS 1.3 with AES-128-GCM).
    #[error("the TLS config cannot be used for QUIC: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind quic@{addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// The reactor thread could not be started.
    #[error("cannot start the QUIC thread: {0}")]
    Thread(io::Error),
    /// The address did not resolve.
    #[error("cannot resolve quic@{addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    /// The server does not speak ALPN `rpcx`.
    #[error(
        "QUIC handshake with quic@{addr} failed: no application protocol (the server does not speak ALPN \"rpcx\")"
    )]
    NoApplicationProtocol { addr: String },
    /// The connection or its stream failed (handshake, refused, closed, unreachable).
    #[error("cannot connect to quic@{addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The whole dial took longer than its timeout.
    #[error("dialing quic@{addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
}

/// Where the listener puts each accepted stream, with the client's address. Called on the
/// QUIC thread: it must hand the stream off (to a core) and return at once.
pub type StreamSink = Box<dyn Fn(QuicStream, SocketAddr) + Send + Sync>;

/// A listener's counters, written by its thread and the streams it handed out, readable from
/// any thread.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// Handshakes completed.
    pub connections_accepted: AtomicU64,
    /// Accepted connections that have ended (closed by either side, idle, or shutdown).
    pub connections_closed: AtomicU64,
    /// Connection attempts refused at `max_connections` or during shutdown.
    pub connections_refused: AtomicU64,
    /// Handshakes that failed: wrong ALPN, bad or missing client certificate, timeout.
    pub handshake_failures: AtomicU64,
    /// Streams handed to the sink.
    pub streams_accepted: AtomicU64,
    /// Streams handed out that have been closed and fully acknowledged (or whose connection
    /// ended).
    pub streams_closed: AtomicU64,
    /// Streams a client opened during shutdown, reset without being served.
    pub streams_refused: AtomicU64,
    /// UDP payload bytes received on connections that have ended (QUIC headers, handshakes and
    /// acknowledgements included). Counted on the QUIC thread when a connection ends, so the
    /// cores' reads and writes pay nothing for it; the streams' own bytes are counted live by
    /// their owners (the server's per-transport metrics).
    pub bytes_in: AtomicU64,
    /// UDP payload bytes sent on connections that have ended, likewise.
    pub bytes_out: AtomicU64,
}

impl QuicCounters {
    /// Streams handed out and not yet closed.
    pub fn streams_open(&self) -> u64 {
        let accepted = self.streams_accepted.load(Ordering::Acquire);
        accepted.saturating_sub(self.streams_closed.load(Ordering::Acquire))
    }

    /// Accepted connections not yet ended.
    pub fn connections_open(&self) -> u64 {
        let accepted = self.connections_accepted.load(Ordering::Acquire);
        accepted.saturating_sub(self.connections_closed.load(Ordering::Acquire))
    }
}

/// State the listener's thread, its connection tasks and its streams share.
struct Shared {
    counters: Arc<QuicCounters>,
    sink: StreamSink,
    /// Set when shutdown begins: new streams are refused.
    closing: AtomicBool,
    /// Notified when a stream handed out has been closed.
    stream_closed: Notify,
    /// Connections being handshaken or open, for `max_connections`.
    live_connections: AtomicU64,
    max_connections: u64,
}

/// A running QUIC listener. [`shutdown`](QuicListener::shutdown) it, or drop it to close
/// everything at once.
pub struct QuicListener {
    local_addr: SocketAddr,
    counters: Arc<QuicCounters>,
    shutdown: Option<oneshot::Sender<Duration>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for QuicListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicListener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Binds the UDP socket for a listener at `addr`, on the caller's thread, so a bind error is
/// reported before anything starts and port 0 is resolved for [`listen_on`].
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, QuicError> {
    UdpSocket::bind(addr).map_err(|source| QuicError::Bind { addr, source })
}

/// Binds `addr` (UDP) and starts the `percore-quic` thread serving it: [`bind`], then
/// [`listen_on`] with no stop signal but [`QuicListener::shutdown`].
pub fn listen(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: &QuicLimits,
    sink: StreamSink,
) -> Result<QuicListener, QuicError> {
    listen_on(bind(addr)?, tls, limits, sink, std::future::pending())
}

/// Starts the `percore-quic` thread serving `socket`. `tls` must offer TLS 1.3 (use
/// [`super::tls::quic_server_config`], which also sets ALPN `rpcx`). When `stop` completes (the
/// server's shutdown signal; it is polled on the QUIC thread), the listener stops accepting
/// connections and streams and closes the connections once every stream it handed out is
/// closed, as [`QuicListener::shutdown`] does without a deadline. Returns once the endpoint is
/// up, or the reason it cannot be.
pub fn listen_on(
    socket: UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    limits: &QuicLimits,
    sink: StreamSink,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<QuicListener, QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(limits.transport()?));
    let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let local_addr = socket.local_addr().map_err(|source| QuicError::Bind {
        addr: unbound,
        source,
    })?;
    let counters = Arc::new(QuicCounters::default());
    let shared = Arc::new(Shared {
        counters: Arc::clone(&counters),
        sink,
        closing: AtomicBool::new(false),
        stream_closed: Notify::new(),
        live_connections: AtomicU64::new(0),
        max_connections: limits.max_connections.into(),
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("percore-quic".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(serve(socket, server, shared, stop, shutdown_rx, ready_tx));
        })
        .map_err(QuicError::Thread)?;
    let started = ready_rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the QUIC thread ended before its endpoint was up",
        ))
    });
    if let Err(source) = started {
        let _ = thread.join();
        return Err(QuicError::Bind {
            addr: local_addr,
            source,
        });
    }
    tracing::info!(addr = %local_addr, "listening on quic");
    Ok(QuicListener {
        local_addr,
        counters,
        shutdown: Some(shutdown_tx),
        thread: Some(thread),
    })
}

impl QuicListener {
    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's counters; they stay readable after shutdown.
    pub fn counters(&self) -> &Arc<QuicCounters> {
        &self.counters
    }

    /// Stops accepting connections and streams, waits up to `grace` until every stream handed
    /// out has been closed by its owner and acknowledged by its client, then closes the
    /// connections left with an application close (code 0, `server shutting down`) and joins
    /// the thread. Blocks the caller; call it off the cores.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            // Err: the thread already closed everything (its stop signal came first).
            let _ = tx.send(grace);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the QUIC thread panicked");
        }
    }
}

impl Drop for QuicListener {
    /// Closes everything at once (no grace) and joins the thread.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// The listener thread's body: accept until told to stop, then drain and close.
async fn serve(
    socket: UdpSocket,
    server: quinn::ServerConfig,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()>,
    mut shutdown: oneshot::Receiver<Duration>,
    ready: std_mpsc::Sender<io::Result<()>>,
) {
    let endpoint = match Endpoint::new(
        EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(TokioRuntime),
    ) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let (reap_tx, reap_rx) = mpsc::unbounded_channel();
    tokio::spawn(reap_server_streams(reap_rx, Arc::clone(&shared)));
    let _ = ready.send(Ok(()));
    drop(ready);

    // The deadline for streams still open: none when the stop signal came first (the owner's
    // drain bounds them; `shutdown` may set one later).
    let mut stop = std::pin::pin!(stop);
    let mut deadline = loop {
        tokio::select! {
            grace = &mut shutdown => break Some(deadline_after(grace.unwrap_or(Duration::ZERO))),
            () = &mut stop => break None,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break Some(deadline_after(Duration::ZERO)) };
                if shared.live_connections.load(Ordering::Relaxed) >= shared.max_connections {
                    shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %incoming.remote_address(), "quic: max_connections reached, refused");
                    incoming.refuse();
                    continue;
                }
                shared.live_connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(incoming, Arc::clone(&shared), reap_tx.clone()));
            }
        }
    };

    // No new connections (quinn refuses them from now on), no new streams.
    endpoint.set_server_config(None);
    shared.closing.store(true, Ordering::Release);
    let mut shutdown = deadline.is_none().then_some(shutdown);
    loop {
        let closed = shared.stream_closed.notified();
        if shared.counters.streams_open() == 0 {
            break;
        }
        let timed_out = tokio::select! {
            () = closed => false,
            grace = async {
                match shutdown.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            } => {
                shutdown = None;
                deadline = Some(deadline_after(grace.unwrap_or(Duration::ZERO)));
                false
            }
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if timed_out {
            tracing::warn!(
                streams = shared.counters.streams_open(),
                "quic: streams still open after the grace period, closing their connections"
            );
            break;
        }
    }
    endpoint.close(VarInt::from_u32(0), SHUTDOWN_REASON.as_bytes());
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
}

fn deadline_after(grace: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(grace)
        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
}

/// One connection: the handshake, then every bidirectional stream the client opens, to the
/// sink.
async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    reap: mpsc::UnboundedSender<Reap>,
) {
    let peer = incoming.remote_address();
    let handshake = match incoming.accept() {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let conn = match handshake {
        Ok(conn) => conn,
        Err(e) => {
            shared
                .counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "quic: handshake failed");
            shared.live_connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    shared
        .counters
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    loop {
        match conn.accept_bi().await {
            Ok((mut send, mut recv)) => {
                if shared.closing.load(Ordering::Acquire) {
                    let _ = send.reset(VarInt::from_u32(0));
                    let _ = recv.stop(VarInt::from_u32(0));
                    shared
                        .counters
                        .streams_refused
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                shared
                    .counters
                    .streams_accepted
                    .fetch_add(1, Ordering::Relaxed);
                let stream = QuicStream {
                    send: Some(send),
                    recv,
                    conn: conn.clone(),
                    counters: Some(Arc::clone(&shared.counters)),
                    reap: reap.clone(),
                };
                (shared.sink)(stream, peer);
            }
            Err(e) => {
                tracing::debug!(%peer, reason = %e, "quic: connection ended");
                break;
            }
        }
    }
    let stats = conn.stats();
    let counters = &shared.counters;
    counters
        .bytes_in
        .fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
    counters
        .bytes_out
        .fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
    counters.connections_closed.fetch_add(1, Ordering::Release);
    shared.live_connections.fetch_sub(1, Ordering::Relaxed);
}

/// A stream given back by its owner: its send side, to be seen acknowledged before it counts as
/// closed.
struct Reap {
    send: quinn::SendStream,
    conn: quinn::Connection,
}

async fn reap_server_streams(mut rx: mpsc::UnboundedReceiver<Reap>, shared: Arc<Shared>) {
    while let Some(Reap { send, conn }) = rx.recv().await {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Bounded by the idle timeout: a peer that stops acknowledging loses its connection.
            let _ = send.stopped().await;
            drop((send, conn));
            shared
                .counters
                .streams_closed
                .fetch_add(1, Ordering::Release);
            shared.stream_closed.notify_waiters();
        });
    }
}

async fn reap_client_streams(mut rx: mpsc::UnboundedReceiver<Reap>) {
    while let Some(Reap { send, conn }) = rx.recv().await {
        tokio::spawn(async move {
            let _ = send.stopped().await;
            // One stream per connection on the client: the stream's end is the connection's.
            conn.close(VarInt::from_u32(0), b"");
        });
    }
}

/// One QUIC bidirectional stream (its send and receive halves) as a byte stream. `Send`, so a
/// core polls it while the QUIC thread drives the connection. Reading returns 0 once the peer
/// has finished the stream; [`poll_close`](AsyncWrite::poll_close) finishes ours. Dropping it
/// finishes the send side too (see the module docs, "Closing").
pub struct QuicStream {
    send: Option<quinn::SendStream>,
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    /// The listener's counters, for a stream the server accepted.
    counters: Option<Arc<QuicCounters>>,
    reap: mpsc::UnboundedSender<Reap>,
}

impl fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicStream")
            .field("peer", &self.conn.remote_address())
            .field("stream", &self.recv.id())
            .finish_non_exhaustive()
    }
}

impl QuicStream {
    /// The peer's address (it can change if the peer migrates).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "QUIC stream already closed")
}

/// A read error in words that keep the cause (quinn's own say only "connection lost").
fn read_error(e: quinn::ReadError) -> io::Error {
    match e {
        quinn::ReadError::ConnectionLost(cause) => lost(&cause),
        quinn::ReadError::Reset(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("QUIC stream reset by the peer (code {code})"),
        ),
        other => io::Error::from(other),
    }
}

fn write_error(e: quinn::WriteError) -> io::Error {
    match e {
        quinn::WriteError::ConnectionLost(cause) => lost(&cause),
        quinn::WriteError::Stopped(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("QUIC stream stopped by the peer (code {code})"),
        ),
        other => io::Error::from(other),
    }
}

fn lost(cause: &ConnectionError) -> io::Error {
    let kind = match cause {
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("QUIC connection lost: {cause}"))
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().recv.poll_read(cx, buf).map_err(read_error)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(send) = self.get_mut().send.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        Pin::new(send).poll_write(cx, buf).map_err(write_error)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends what it was given without being asked.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(send) = this.send.as_mut() {
            // Already finished or reset: nothing left to do either way.
            let _ = send.finish();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        let Some(mut send) = self.send.take() else {
            return;
        };
        let _ = send.finish();
        let reap = Reap {
            send,
            conn: self.conn.clone(),
        };
        // The reactor is gone (process exit, listener dropped): nothing is left to wait for.
        if let Err(mpsc::error::SendError(reap)) = self.reap.send(reap)
            && let Some(counters) = &self.counters
        {
            drop(reap);
            counters.streams_closed.fetch_add(1, Ordering::Release);
        }
    }
}

/// What the client thread is asked to do: one connection with one stream.
struct DialRequest {
    addr: String,
    server_name: String,
    config: quinn::ClientConfig,
    timeout: Duration,
    reply: oneshot::Sender<Result<QuicStream, QuicError>>,
}

/// A client's QUIC settings, made once and dialed with many times.
#[derive(Clone)]
pub struct DialConfig {
    config: quinn::ClientConfig,
}

impl fmt::Debug for DialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialConfig").finish_non_exhaustive()
    }
}

impl DialConfig {
    /// From a rustls client config that offers TLS 1.3 (use [`super::tls::quic_client_config`],
    /// which also sets ALPN `rpcx`).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Result<DialConfig, QuicError> {
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = TransportConfig::default();
        let idle = IdleTimeout::try_from(CLIENT_IDLE_TIMEOUT).map_err(|_| QuicError::Limits {
            key: "idle timeout",
            message: "is too long for QUIC".into(),
        })?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(CLIENT_KEEP_ALIVE))
            // The server opens no streams toward an rpcx client.
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        config.transport_config(Arc::new(transport));
        Ok(DialConfig { config })
    }
}

/// Dials `quic@addr` (`host:port`; a name is resolved and each address tried in turn), checks
/// the server's certificate against `server_name`, and opens one bidirectional stream. Nothing
/// is sent until the stream is written to (rpcx clients write first). Gives up after `timeout`
/// (zero: no limit but the handshake's idle timeout). Runs on any executor: the work happens on
/// the process's `percore-quic-client` thread.
pub async fn dial(
    addr: &str,
    server_name: &str,
    config: &DialConfig,
    timeout: Duration,
) -> Result<QuicStream, QuicError> {
    let (reply, rx) = oneshot::channel();
    let request = DialRequest {
        addr: addr.to_owned(),
        server_name: server_name.to_owned(),
        config: config.config.clone(),
        timeout,
        reply,
    };
    let gone = || QuicError::Connect {
        addr: addr.to_owned(),
        reason: "the QUIC client thread is not running".into(),
    };
    client_thread()
        .map_err(|e| QuicError::Connect {
            addr: addr.to_owned(),
            reason: format!("cannot start the QUIC client thread: {e}"),
        })?
        .send(request)
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// The process's QUIC client thread, started on first use.
fn client_thread() -> Result<&'static mpsc::UnboundedSender<DialRequest>, String> {
    static CLIENT: OnceLock<Result<mpsc::UnboundedSender<DialRequest>, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("percore-quic-client".into())
                .spawn(move || rt.block_on(run_client(rx)))
                .map_err(|e| e.to_string())?;
            Ok(tx)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The client thread's body: one endpoint per address family, bound on first use.
async fn run_client(mut rx: mpsc::UnboundedReceiver<DialRequest>) {
    let (reap_tx, reap_rx) = mpsc::unbounded_channel();
    tokio::spawn(reap_client_streams(reap_rx));
    let endpoints = Arc::new(ClientEndpoints::default());
    while let Some(request) = rx.recv().await {
        let endpoints = Arc::clone(&endpoints);
        let reap = reap_tx.clone();
        tokio::spawn(async move {
            let DialRequest {
                addr,
                server_name,
                config,
                timeout,
                reply,
            } = request;
            let dial = dial_on_thread(&addr, &server_name, config, &endpoints, reap);
            let result = if timeout.is_zero() {
                dial.await
            } else {
                match tokio::time::timeout(timeout, dial).await {
                    Ok(result) => result,
                    Err(_) => Err(QuicError::Timeout {
                        addr,
                        after: timeout,
                    }),
                }
            };
            // The caller gave up (its own timeout): the stream, if any, is dropped and closed.
            let _ = reply.send(result);
        });
    }
}

#[derive(Default)]
struct ClientEndpoints {
    v4: tokio::sync::OnceCell<Endpoint>,
    v6: tokio::sync::OnceCell<Endpoint>,
}

impl ClientEndpoints {
    async fn for_target(&self, target: SocketAddr) -> io::Result<&Endpoint> {
        let (cell, bind): (_, SocketAddr) = if target.is_ipv4() {
            (&self.v4, (Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&self.v6, (Ipv6Addr::UNSPECIFIED, 0).into())
        };
        cell.get_or_try_init(|| async move { Endpoint::client(bind) })
            .await
    }
}

async fn dial_on_thread(
    addr: &str,
    server_name: &str,
    config: quinn::ClientConfig,
    endpoints: &ClientEndpoints,
    reap: mpsc::UnboundedSender<Reap>,
) -> Result<QuicStream, QuicError> {
    let targets: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| QuicError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = QuicError::Resolve {
        addr: addr.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address"),
    };
    for target in targets {
        match connect_one(addr, target, server_name, config.clone(), endpoints).await {
            Ok((conn, send, recv)) => {
                return Ok(QuicStream {
                    send: Some(send),
                    recv,
                    conn,
                    counters: None,
                    reap,
                });
            }
            Err(e @ QuicError::NoApplicationProtocol { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(%target, error = %e, "quic: dial failed, trying the next address");
                last = e;
            }
        }
    }
    Err(last)
}

async fn connect_one(
    addr: &str,
    target: SocketAddr,
    server_name: &str,
    config: quinn::ClientConfig,
    endpoints: &ClientEndpoints,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), QuicError> {
    let failed = |reason: String| QuicError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let endpoint = endpoints
        .for_target(target)
        .await
        .map_err(|e| failed(format!("cannot bind a UDP socket: {e}")))?;
    let connecting = endpoint
        .connect_with(config, target, server_name)
        .map_err(|e| failed(e.to_string()))?;
    let conn = connecting.await.map_err(|e| connection_error(addr, &e))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| connection_error(addr, &e))?;
    Ok((conn, send, recv))
}

/// A connection error in words, with `no application protocol` recognized.
fn connection_error(addr: &str, e: &ConnectionError) -> QuicError {
    let alpn = TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL);
    match e {
        ConnectionError::ConnectionClosed(close) if close.error_code == alpn => {
            QuicError::NoApplicationProtocol {
                addr: addr.to_owned(),
            }
        }
        ConnectionError::TransportError(err) if err.code == alpn => {
            QuicError::NoApplicationProtocol {
                addr: addr.to_owned(),
            }
        }
        other => QuicError::Connect {
            addr: addr.to_owned(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid_and_bad_ones_name_the_key() {
        QuicLimits::default().validate().unwrap();
        let cases = [
            (
                QuicLimits {
                    idle_timeout: Duration::ZERO,
                    ..QuicLimits::default()
                },
                "quic.idle_timeout",
            ),
            (
                QuicLimits {
                    max_connections: 0,
                    ..QuicLimits::default()
                },
                "quic.max_connections",
            ),
            (
                QuicLimits {
                    max_streams_per_connection: 0,
                    ..QuicLimits::default()
                },
                "quic.max_streams_per_connection",
            ),
            (
                QuicLimits {
                    connection_window: 1024,
                    stream_window: 4096,
                    ..QuicLimits::default()
                },
                "quic.connection_window",
            ),
        ];
        for (limits, key) in cases {
            let err = limits.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn limits_parse_from_toml_and_reject_unknown_keys() {
        let limits: QuicLimits =
            toml::from_str("idle_timeout = \"5s\"\nmax_streams_per_connection = 2\n").unwrap();
        assert_eq!(limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(limits.max_streams_per_connection, 2);
        assert_eq!(limits.stream_window, QuicLimits::default().stream_window);
        let err = toml::from_str::<QuicLimits>("idle_timout = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("idle_timout"), "{err}");
    }

    #[test]
    fn the_wrong_alpn_alert_is_named() {
        let close = quinn::ConnectionClose {
            error_code: TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL),
            frame_type: None,
            reason: Default::default(),
        };
        let err = connection_error("127.0.0.1:1", &ConnectionError::ConnectionClosed(close));
        assert!(err.to_string().contains("no application protocol"), "{err}");
    }
}
