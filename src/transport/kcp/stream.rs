//! The byte stream of one KCP session as a core sees it: futures-io `AsyncRead + AsyncWrite`,
//! `Send`, with wakers that cross threads.
//!
//! The reactor thread and the one core that owns the stream share a buffer pair under a mutex
//! (only those two threads ever take it, once per poll or per reactor pass). The reactor moves
//! bytes between KCP and the buffers; both buffers are capped, which is the backpressure: a full
//! receive buffer stops the reactor from taking data out of KCP, so KCP's receive window closes
//! and the peer stops sending; a full send buffer makes `poll_write` wait.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_lite::io::{AsyncRead, AsyncWrite};

use super::reactor::Notify;

/// Why a session ended, as the stream reports it to its reader and writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Nothing came from the peer for `idle_timeout` (KCP has no FIN: this is how a vanished
    /// peer is noticed).
    Idle,
    /// A segment was sent `dead_link` times without an ACK.
    DeadLink,
    /// The peer started a new conversation from the same address.
    Replaced,
    /// The peer's host said nobody listens on that port (ICMP port unreachable).
    Refused,
    /// The reactor stopped (the listener shut down past its grace period, or the process exits).
    Stopped,
}

impl Ended {
    fn error(self) -> io::Error {
        match self {
            Ended::Idle => io::Error::new(io::ErrorKind::TimedOut, "kcp session idle"),
            Ended::DeadLink => io::Error::new(io::ErrorKind::ConnectionAborted, "kcp dead link"),
            Ended::Replaced => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "kcp peer started a new session",
            ),
            Ended::Refused => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "kcp peer port unreachable",
            ),
            Ended::Stopped => {
                io::Error::new(io::ErrorKind::ConnectionAborted, "kcp reactor stopped")
            }
        }
    }
}

/// Capacity a drained buffer keeps (more is given back).
pub(crate) const KEEP: usize = 64 << 10;

/// The state both sides touch.
pub(crate) struct Buffers {
    /// Received stream bytes not yet read; `rx_pos` is where reading resumes.
    pub rx: Vec<u8>,
    pub rx_pos: usize,
    /// Bytes written by the core, not yet handed to KCP.
    pub tx: Vec<u8>,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    /// Set by the reactor when the session is gone.
    pub ended: Option<Ended>,
    /// Set by the stream's owner (close or drop): no more writes; the reactor flushes what is
    /// queued and forgets the session.
    pub closed: bool,
}

impl Buffers {
    pub fn rx_len(&self) -> usize {
        self.rx.len() - self.rx_pos
    }
}

pub(crate) struct Shared {
    pub buf: Mutex<Buffers>,
    /// The stream has something for the reactor (bytes to send, room freed, closed) and has
    /// put its slot on the reactor's ready queue; cleared by the reactor before it looks.
    pub dirty: AtomicBool,
    /// The session's slot in the reactor's table (`usize::MAX` until it has one).
    pub slot: AtomicUsize,
    /// Per-direction cap on buffered bytes.
    pub cap: usize,
    pub notify: Arc<Notify>,
}

impl Shared {
    pub fn new(cap: usize, notify: Arc<Notify>) -> Arc<Shared> {
        Arc::new(Shared {
            buf: Mutex::new(Buffers {
                rx: Vec::new(),
                rx_pos: 0,
                tx: Vec::new(),
                read_waker: None,
                write_waker: None,
                ended: None,
                closed: false,
            }),
            dirty: AtomicBool::new(false),
            slot: AtomicUsize::new(usize::MAX),
            cap,
            notify,
        })
    }

    /// A poisoned lock means a panic while holding it; the buffers are plain bytes, still usable.
    pub fn lock(&self) -> MutexGuard<'_, Buffers> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the reactor this session has work: its slot on the ready queue (once until the
    /// reactor looks) and the doorbell.
    fn poke(&self) {
        if !self.dirty.swap(true, Ordering::SeqCst) {
            self.notify.ready(self.slot.load(Ordering::SeqCst));
        }
    }
}

/// One KCP session's byte stream (an rpcx connection). Dropping it closes the session: what was
/// written is still delivered, then the reactor forgets it.
pub struct KcpStream {
    shared: Arc<Shared>,
    peer: SocketAddr,
    conv: u32,
}

impl std::fmt::Debug for KcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpStream")
            .field("peer", &self.peer)
            .field("conv", &self.conv)
            .finish()
    }
}

impl KcpStream {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr, conv: u32) -> KcpStream {
        KcpStream { shared, peer, conv }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The KCP conversation id.
    pub fn conv(&self) -> u32 {
        self.conv
    }
}

impl AsyncRead for KcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.shared.lock();
        let have = b.rx_len();
        if have > 0 {
            let n = have.min(out.len());
            let was_full = have >= self.shared.cap;
            out[..n].copy_from_slice(&b.rx[b.rx_pos..b.rx_pos + n]);
            b.rx_pos += n;
            if b.rx_pos == b.rx.len() {
                b.rx.clear();
                b.rx_pos = 0;
                // A burst's buffer is not kept by an idle session.
                b.rx.shrink_to(KEEP);
            }
            drop(b);
            if was_full {
                // The reactor stopped taking data out of KCP for us; room again.
                self.shared.poke();
            }
            return Poll::Ready(Ok(n));
        }
        if let Some(e) = b.ended {
            return Poll::Ready(Err(e.error()));
        }
        if b.closed {
            return Poll::Ready(Ok(0));
        }
        match &b.read_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => b.read_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl AsyncWrite for KcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.shared.lock();
        if let Some(e) = b.ended {
            return Poll::Ready(Err(e.error()));
        }
        if b.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = self.shared.cap.saturating_sub(b.tx.len());
        if room == 0 {
            match &b.write_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => b.write_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let n = room.min(data.len());
        b.tx.extend_from_slice(&data[..n]);
        drop(b);
        self.shared.poke();
        Poll::Ready(Ok(n))
    }

    /// Written bytes are the reactor's from `poll_write` on, as a socket's are the kernel's.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().closed = true;
        self.shared.poke();
        Poll::Ready(Ok(()))
    }
}

impl Drop for KcpStream {
    fn drop(&mut self) {
        let mut b = self.shared.lock();
        if !b.closed {
            b.closed = true;
            drop(b);
            self.shared.poke();
        }
    }
}
