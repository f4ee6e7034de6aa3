//! The one accept path: every transport's accepted stream is served by [`serve`].
//!
//! A listener of any kind ends in [`serve`], which checks `limits.max_connections_per_core`,
//! registers the connection with its core (so drain, limits and metrics see it), opens its
//! tracing span (`conn`, with the listener and the peer) and spawns its task, which maps how the
//! connection ended to the close reason counted under its transport.
//!
//! Two kinds of listener feed it:
//! - sockets the cores accept themselves ([`accept_loop`]): `tcp`, `reuseport` and `http` (one
//!   SO_REUSEPORT socket per core) and `unix` (one socket every core accepts from); their
//!   streams are sniffed (`sniff::route`) and drained with `shutdown(SHUT_RD)`;
//! - streams another thread hands over ([`Handoff`]), for transports whose protocol runs on a
//!   reactor thread of its own (QUIC, KCP): the stream is rpcx from its first byte and is
//!   drained by a flag its reads see ([`StopReading`]).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, debug};

use super::logs::limited_warn;
use super::{Core, Listening, Stop, conn, sniff};
use crate::metrics::{Close, Transport};
use crate::service::Registry;
use crate::transport::addr::Network;

/// What logs show as the peer of a Unix connection (its peers are unnamed); the listener is in
/// the connection's span.
pub(crate) const UNNAMED_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// How a drain makes a connection's reader see end of input.
pub(crate) enum Drain {
    /// `shutdown(fd, SHUT_RD)` on the connection's socket.
    Fd(RawFd),
    /// Set the flag its [`StopReading`] reads check.
    Flag(Rc<ReadStop>),
}

impl Drain {
    pub(crate) fn stop_reading(&self) {
        match self {
            // SAFETY: the fd belongs to a connection that is still registered, so it is open.
            Drain::Fd(fd) => unsafe {
                libc::shutdown(*fd, libc::SHUT_RD);
            },
            Drain::Flag(stop) => stop.stop(),
        }
    }
}

/// Serves one accepted connection on `core`: the connection limit, registration, the span, and
/// the task that runs `serve_conn` and counts how it ended under `transport`.
pub(crate) fn serve<S, F, Fut, R: Registry>(
    core: &Rc<Core<R>>,
    stream: S,
    peer: SocketAddr,
    listening: &Listening,
    transport: Transport,
    drain: Drain,
    serve_conn: F,
) where
    S: 'static,
    F: FnOnce(Rc<Core<R>>, S) -> Fut + 'static,
    Fut: Future<Output = Close> + 'static,
{
    let ip = (peer != UNNAMED_PEER).then(|| peer.ip());
    let refused = core.refuses(ip);
    let guard = core.register(drain, transport, ip);
    let span = tracing::debug_span!("conn", listener = %listening.addr, %peer);
    if let Some(reason) = refused {
        // Accepted and closed at once, so the peer hears no rather than waiting in the backlog.
        guard.closed(reason);
        debug!(parent: &span, core = core.index, reason = reason.name(), "closing connection: at the connection limit");
        return;
    }
    debug!(parent: &span, core = core.index, "connection accepted");
    let core = Rc::clone(core);
    glommio::spawn_local(
        async move {
            let close = match serve_conn(Rc::clone(&core), stream).await {
                // End of input after shutdown started is the drain's own doing.
                Close::Eof if core.draining.get() => Close::Shutdown,
                close => close,
            };
            guard.closed(close);
        }
        .instrument(span),
    )
    .detach();
}

/// Accepts connections on one listening socket of this core until shutdown.
pub(crate) async fn accept_loop<R: Registry>(
    core: Rc<Core<R>>,
    listener: glommio::net::TcpListener,
    listening: Arc<Listening>,
    stop: Arc<Stop>,
) {
    // A descriptor kept back for the moment the process runs out: closed, it lets one waiting
    // peer be accepted and closed at once (it hears no instead of hanging in the backlog).
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                let e = io::Error::from(e);
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && reserve.take().is_some() {
                    let waiting =
                        futures_lite::future::or(async { listener.accept().await.ok() }, async {
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                            None
                        })
                        .await;
                    if let Some(stream) = waiting {
                        drop(stream);
                        let counts = core.metrics.transport(Transport::Tcp);
                        counts.accepted.inc();
                        counts.close(Close::MaxConnections);
                    }
                    reserve = std::fs::File::open("/dev/null").ok();
                    limited_warn!(core.logs, "out_of_fds", core = core.index, listener = %listening.addr,
                        "out of file descriptors: refusing connections (raise LimitNOFILE= or lower limits.max_connections_per_core)");
                    continue;
                }
                // Out of memory, or no reserve: back off instead of spinning on accept.
                limited_warn!(core.logs, "accept", core = core.index, listener = %listening.addr, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let network = listening.addr.network;
        if network == Network::Unix {
            match into_unix(stream) {
                Ok((stream, fd)) => {
                    let drain = Drain::Fd(fd);
                    serve(
                        &core,
                        stream,
                        UNNAMED_PEER,
                        &listening,
                        Transport::Unix,
                        drain,
                        move |core, s| async move {
                            sniff::route(&core, s, UNNAMED_PEER, network, Transport::Unix).await
                        },
                    );
                }
                Err(e) => {
                    limited_warn!(core.logs, "accept", core = core.index, listener = %listening.addr, error = %e, "cannot take an accepted unix connection")
                }
            }
            continue;
        }
        let peer = stream.peer_addr().unwrap_or(UNNAMED_PEER);
        // TCP_NODELAY: replies are already batched per read, so Nagle only adds latency (it
        // would hold a reply while an earlier one is unacknowledged). Socket buffer sizes are
        // left to the kernel's autotuning: setting SO_SNDBUF/SO_RCVBUF turns it off, and the
        // largest write here (a pipelined batch's replies) is far below the default window.
        let _ = stream.set_nodelay(true);
        let drain = Drain::Fd(stream.as_raw_fd());
        serve(
            &core,
            stream,
            peer,
            &listening,
            Transport::Tcp,
            drain,
            move |core, s| async move { sniff::route(&core, s, peer, network, Transport::Tcp).await },
        );
    }
}

/// A connection accepted on a `unix` listener, re-typed as the Unix stream it is: glommio's
/// accept returned it typed as TCP (a dup of the fd, then the TCP wrapper is dropped).
fn into_unix(stream: glommio::net::TcpStream) -> io::Result<(glommio::net::UnixStream, RawFd)> {
    // SAFETY: the fd is open for as long as `stream` lives, which covers this call.
    let dup =
        unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    drop(stream);
    let fd = dup?.into_raw_fd();
    // SAFETY: `fd` is a connected Unix stream socket we own; ownership moves into the stream,
    // which keeps it open for as long as the connection is registered.
    Ok((unsafe { glommio::net::UnixStream::from_raw_fd(fd) }, fd))
}

/// Streams a reactor thread hands to the cores, one [`async_channel`] per core. The reactor
/// keeps the `Handoff` (it is `Send + Sync`); each core runs [`receive_loop`] on its receiver.
pub struct Handoff<S> {
    cores: Vec<async_channel::Sender<(S, SocketAddr)>>,
    next: AtomicUsize,
}

impl<S: Send> Handoff<S> {
    /// A hand-off to `cores` cores, and the receiver each core takes.
    fn new(cores: usize) -> (Handoff<S>, Vec<async_channel::Receiver<(S, SocketAddr)>>) {
        let (senders, receivers) = (0..cores).map(|_| async_channel::unbounded()).unzip();
        let handoff = Handoff {
            cores: senders,
            next: AtomicUsize::new(0),
        };
        (handoff, receivers)
    }

    /// Gives `stream` to the next core, round robin. Gives it back if every core has stopped
    /// taking streams (shutdown), for the caller to close.
    pub fn send(&self, stream: S, peer: SocketAddr) -> Result<(), S> {
        let mut item = (stream, peer);
        for _ in 0..self.cores.len() {
            let core = self.next.fetch_add(1, Ordering::Relaxed) % self.cores.len();
            match self.cores[core].try_send(item) {
                Ok(()) => return Ok(()),
                Err(e) => item = e.into_inner(),
            }
        }
        Err(item.0)
    }
}

/// A core's receive loop for one handed-over listener, made on the starting thread and run on
/// the core.
pub(crate) type ReceiveLoop<R> =
    Box<dyn FnOnce(Rc<Core<R>>, Arc<Stop>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A listener whose streams a reactor thread hands over: its address as clients dial it, and
/// each core's receive loop (for `server::start_with`).
pub(crate) struct Handed<R> {
    pub(crate) listening: Arc<Listening>,
    pub(crate) per_core: Vec<ReceiveLoop<R>>,
}

impl<R: Registry> Handed<R> {
    /// A listener at `listening` whose streams come over `transport`, served by `cores` cores;
    /// the reactor thread keeps the [`Handoff`].
    pub(crate) fn new<S>(
        listening: Listening,
        transport: Transport,
        cores: usize,
    ) -> (Handed<R>, Handoff<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (handoff, receivers) = Handoff::new(cores);
        let listening = Arc::new(listening);
        let per_core = receivers
            .into_iter()
            .map(|rx| {
                let listening = Arc::clone(&listening);
                Box::new(move |core: Rc<Core<R>>, stop: Arc<Stop>| {
                    Box::pin(receive_loop(core, rx, listening, transport, stop))
                        as Pin<Box<dyn Future<Output = ()>>>
                }) as ReceiveLoop<R>
            })
            .collect();
        (
            Handed {
                listening,
                per_core,
            },
            handoff,
        )
    }
}

/// Serves the streams handed to this core until shutdown: each is rpcx from its first byte,
/// read through a [`StopReading`] so the drain can end its reads.
pub(crate) async fn receive_loop<S, R: Registry>(
    core: Rc<Core<R>>,
    streams: async_channel::Receiver<(S, SocketAddr)>,
    listening: Arc<Listening>,
    transport: Transport,
    stop: Arc<Stop>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    loop {
        let received = futures_lite::future::or(async { streams.recv().await.ok() }, async {
            stop.wait().await;
            None
        })
        .await;
        let Some((stream, peer)) = received else {
            // Streams handed over after this are given back to the reactor.
            streams.close();
            return;
        };
        let flag = Rc::new(ReadStop::default());
        let stream = StopReading {
            inner: stream,
            stop: Rc::clone(&flag),
        };
        serve(
            &core,
            stream,
            peer,
            &listening,
            transport,
            Drain::Flag(flag),
            move |core, s| async move { conn::serve_on(&core, s, peer, transport).await.close() },
        );
    }
}

/// The drain's flag for a stream without a socket of its own.
#[derive(Default)]
pub(crate) struct ReadStop {
    stopped: Cell<bool>,
    reader: Cell<Option<Waker>>,
}

impl ReadStop {
    fn stop(&self) {
        self.stopped.set(true);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// A stream whose reads end (`Ok(0)`) once its [`ReadStop`] is set, as a socket's do after
/// `shutdown(SHUT_RD)`; writes go on, so replies to calls in flight still go out.
pub(crate) struct StopReading<S> {
    inner: S,
    stop: Rc<ReadStop>,
}

impl<S: AsyncRead + Unpin> AsyncRead for StopReading<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.stop.stopped.get() {
            return Poll::Ready(Ok(0));
        }
        let waker = match self.stop.reader.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.stop.reader.set(Some(waker));
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::stream::forward_write!(StopReading, inner);

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::Config;
    use crate::server::{Listening, start_with};
    use crate::transport::addr::Network;

    /// One direction of an in-memory pipe whose ends are `Send`, as a reactor's streams are.
    #[derive(Default)]
    struct Pipe {
        buf: VecDeque<u8>,
        closed: bool,
        reader: Option<Waker>,
    }

    /// One end of a duplex in-memory stream.
    struct End {
        rx: Arc<Mutex<Pipe>>,
        tx: Arc<Mutex<Pipe>>,
    }

    fn duplex() -> (End, End) {
        let (a, b) = (Arc::default(), Arc::default());
        (
            End {
                rx: Arc::clone(&a),
                tx: Arc::clone(&b),
            },
            End { rx: b, tx: a },
        )
    }

    impl AsyncRead for End {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut p = self.rx.lock().unwrap();
            if p.buf.is_empty() {
                if p.closed {
                    return Poll::Ready(Ok(0));
                }
                p.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(p.buf.len());
            for (i, b) in p.buf.drain(..n).enumerate() {
                buf[i] = b;
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for End {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut p = self.tx.lock().unwrap();
            p.buf.extend(buf);
            if let Some(w) = p.reader.take() {
                w.wake();
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut p = self.tx.lock().unwrap();
            p.closed = true;
            if let Some(w) = p.reader.take() {
                w.wake();
            }
            Poll::Ready(Ok(()))
        }
    }

    /// `Arith.Mul {A: 7, B: 6}` in MsgPack, seq 5, as Go's client frames it.
    const MUL: &[u8] = b"\x08\x00\x00\x30\0\0\0\0\0\0\0\x05\0\0\0\x1f\0\0\0\x05Arith\0\0\0\x03Mul\0\0\0\0\0\0\0\x07\x82\xa1A\x07\xa1B\x06";

    #[test]
    fn a_stream_from_another_thread_is_served_on_a_core_and_drained() {
        let mut config = Config::default();
        config.server.listen = vec!["tcp@127.0.0.1:0".parse().unwrap()];
        config.server.cores = 1;
        config.admin.listen = None;
        let bound: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let listening = Listening::reactor(Network::Quic, bound);
        let (handed, handoff) =
            Handed::<crate::builtin::Builtin>::new::<End>(listening, Transport::Quic, 1);
        let server = start_with(config, vec![handed]).unwrap();
        assert!(server.wait_ready());
        assert!(
            server
                .listen_addrs()
                .iter()
                .any(|a| a.to_string() == "quic@127.0.0.1:4433")
        );

        let (mut client, served) = duplex();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // Handed over from this (non-core) thread, as a reactor thread does.
        assert!(handoff.send(served, peer).is_ok());
        futures_lite::future::block_on(async {
            client.write_all(MUL).await.unwrap();
            let mut reply = [0u8; 44];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply[..12], b"\x08\x00\x80\x30\0\0\0\0\0\0\0\x05");
            assert_eq!(&reply[40..], b"\x81\xa1C\x2a");
        });
        let metrics = Arc::clone(&server.metrics()[0]);
        let quic = metrics.transport(Transport::Quic);
        assert_eq!(quic.accepted.get(), 1);
        assert_eq!(quic.bytes_in.get(), MUL.len() as u64);

        // The drain ends the stream's reads; the core closes it and stops.
        server.shutdown();
        futures_lite::future::block_on(async {
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
        server.join().unwrap();
        assert_eq!(quic.closed[Close::Shutdown as usize].get(), 1);
        // After shutdown the hand-off gives streams back.
        assert!(handoff.send(duplex().0, peer).is_err());
    }
}
