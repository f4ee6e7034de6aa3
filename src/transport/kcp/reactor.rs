//! The KCP reactor: one thread owning UDP sockets, their sessions, FEC, crypt and timers.
//!
//! A wake-up (epoll: a datagram, or the eventfd a stream rings; or the earliest timer) is one
//! pass: read every datagram waiting on every ready socket and feed it to its session, then visit
//! once each session that has work, and only those: input arrived, its stream named it on the
//! ready queue (bytes to send, room freed, closed), or its timer fired (KCP's next `update`, ACKs
//! held for a reply, the idle deadline). A visit moves bytes between KCP and the stream's
//! buffers, updates/flushes KCP, FEC-encodes, seals and sends. So a pass costs what happened,
//! not how many sessions or sockets there are.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use concurrent_queue::ConcurrentQueue;
use kcp::Kcp;

use super::crypt::{self, NonceGen};
use super::fec::{FecDecoder, FecEncoder};
use super::stream::{Ended, KcpStream, Shared};
use super::{KcpSetup, KcpStats, MTU_LIMIT, Sink, bump};

/// Room left in front of each KCP output packet for the crypt and FEC headers.
const RESERVE: usize = crypt::HEADER + super::fec::HEADER + super::fec::SIZE;
/// How long a stream its owner closed keeps retransmitting what is unacknowledged while the peer
/// sends nothing (counted from the close or the peer's last datagram, whichever is later); then
/// it is dropped. KCP has no FIN, so a peer that went away never acknowledges: without this a
/// drain would wait out its whole timeout for it.
const CLOSE_LINGER_MS: u64 = 5000;

/// Datagrams read from one socket per pass, so one busy socket cannot starve the sessions.
const READS_PER_PASS: usize = 1024;
const KCP_OVERHEAD: usize = kcp::KCP_OVERHEAD;
const CMD_PUSH: u8 = 81;

/// The reactor's doorbell: an eventfd, rung at most once per pass however many streams poke,
/// and the ready queue of the sessions whose streams have work, so that a pass visits only the
/// sessions that need it.
pub(crate) struct Notify {
    fd: OwnedFd,
    pending: AtomicBool,
    ready: ConcurrentQueue<usize>,
}

impl Notify {
    fn new() -> io::Result<Arc<Notify>> {
        // SAFETY: eventfd has no memory arguments; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Notify {
            // SAFETY: fd was just created and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
            ready: ConcurrentQueue::unbounded(),
        }))
    }

    /// Queues session `slot` for the next pass and rings the doorbell.
    pub fn ready(&self, slot: usize) {
        // An unbounded queue refuses a push only once closed, which this one never is.
        let _ = self.ready.push(slot);
        self.wake();
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter (EAGAIN)
            // still leaves the fd readable, which is all a wake needs.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called before the reactor looks at the streams' dirty flags, so that a poke after the
    /// look rings again.
    fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        self.pending.store(false, Ordering::SeqCst);
    }
}

/// The reactor's epoll set: the eventfd and every UDP socket, each with its endpoint's index as
/// the token. A socket leaves the set when it is closed. O(ready) per wake, however many
/// sockets (the client reactor has one per dialed session).
struct Epoll {
    fd: OwnedFd,
}

/// The eventfd's token.
const NOTIFY_TOKEN: u64 = u64::MAX;

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: no memory arguments; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for input (level-triggered).
    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is a live epoll_event for the call; both fds are open.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` ms (-1: no limit); the tokens of the ready fds go to `ready`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: i32, ready: &mut Vec<u64>) {
        ready.clear();
        // SAFETY: events is a live, writable array of its length for the whole call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "kcp reactor epoll_wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        ready.extend(events[..n as usize].iter().map(|e| e.u64));
    }
}

/// KCP's output sink, shared by every session of the reactor: each `write` is one datagram's
/// KCP bytes, kept with `RESERVE` bytes of header room in front; the reactor sends them right
/// after the KCP call that made them.
#[derive(Clone, Default)]
struct Out(Rc<RefCell<OutQueue>>);

#[derive(Default)]
struct OutQueue {
    packets: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut q = self.0.borrow_mut();
        let mut p = q.pool.pop().unwrap_or_default();
        p.clear();
        p.resize(RESERVE, 0);
        p.extend_from_slice(buf);
        q.packets.push(p);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a listener's owner can change while it runs.
struct Control {
    accepting: AtomicBool,
    stop: AtomicBool,
}

struct Session {
    kcp: Kcp<Out>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    conv: u32,
    endpoint: usize,
    enc: Option<FecEncoder>,
    dec: Option<FecDecoder>,
    last_input: u64,
    /// When KCP next needs `update` (from `kcp.check`).
    next_due: u64,
    /// The time of this session's live entry in the timer heap.
    wake_at: u64,
    /// On this pass's work list already.
    queued: bool,
    /// Input arrived in this pass (ACKs to send when `ack_nodelay`).
    touched: bool,
    /// When ACKs held for the core's reply go out alone (`ack_delay`).
    ack_due: Option<u64>,
    /// The owner closed the stream: flush, then forget.
    closing: bool,
    /// When `closing` began.
    closed_at: u64,
    /// One past the highest `sn` sent, to tell retransmissions from first sends.
    sn_next: u32,
    tx_pos: usize,
}

enum Kind {
    Listener {
        by_addr: HashMap<SocketAddr, usize>,
        sink: Sink,
        ctl: Arc<Control>,
    },
    Dialer {
        session: usize,
    },
}

struct Endpoint {
    socket: UdpSocket,
    setup: Arc<KcpSetup>,
    stats: Arc<KcpStats>,
    kind: Kind,
}

/// A dial handed to the client reactor.
struct NewDial {
    socket: UdpSocket,
    setup: Arc<KcpSetup>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    conv: u32,
}

/// Where a datagram goes.
enum Route {
    To(usize),
    New { replace: Option<usize>, conv: u32 },
}

struct Reactor {
    notify: Arc<Notify>,
    epoll: Epoll,
    free_endpoints: Vec<usize>,
    start: Instant,
    endpoints: Vec<Option<Endpoint>>,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    out: Out,
    nonce: NonceGen,
    recovered: Vec<Vec<u8>>,
    /// Sessions to visit this pass: input arrived, their stream poked, or a timer fired.
    work: Vec<usize>,
    /// (when, slot): each session's next timer; an entry whose time is not the session's
    /// `wake_at` any more is stale and skipped.
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Where parity datagrams are built, reused.
    parity_buf: Vec<u8>,
    dials: Option<Arc<Mutex<Vec<NewDial>>>>,
}

/// The reactor's clock: milliseconds since it started. KCP gets it truncated to u32, as ikcp's
/// wrapping clock is.
fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

impl Reactor {
    /// Built on the reactor's own thread: KCP's outputs are `Rc`s and never leave it.
    fn new(notify: Arc<Notify>, epoll: Epoll, nonce: NonceGen) -> Reactor {
        Reactor {
            notify,
            epoll,
            free_endpoints: Vec::new(),
            start: Instant::now(),
            endpoints: Vec::new(),
            sessions: Vec::new(),
            free: Vec::new(),
            out: Out::default(),
            nonce,
            recovered: Vec::new(),
            work: Vec::new(),
            timers: BinaryHeap::new(),
            parity_buf: Vec::new(),
            dials: None,
        }
    }

    fn now(&self) -> u64 {
        ms_since(self.start)
    }

    /// Puts session `sid` on this pass's work list (once).
    fn queue(&mut self, sid: usize) {
        if let Some(Some(s)) = self.sessions.get_mut(sid)
            && !s.queued
        {
            s.queued = true;
            self.work.push(sid);
        }
    }

    /// Queues the sessions whose timer is due.
    fn fire_timers(&mut self, now: u64) {
        while let Some(&Reverse((at, sid))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.sessions[sid].as_ref().is_some_and(|s| s.wake_at == at) {
                self.queue(sid);
            }
        }
    }

    fn run(&mut self, ctl: Option<&Control>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut tokens: Vec<u64> = Vec::new();
        let mut readable: Vec<usize> = Vec::new();
        loop {
            if ctl.is_some_and(|c| c.stop.load(Ordering::SeqCst)) {
                self.end_all(Ended::Stopped);
                return;
            }
            let timeout = self.timeout();
            self.epoll.wait(&mut events, timeout, &mut tokens);
            self.notify.clear();
            while let Ok(sid) = self.notify.ready.pop() {
                self.queue(sid);
            }
            readable.clear();
            readable.extend(
                tokens
                    .iter()
                    .filter(|&&t| t != NOTIFY_TOKEN)
                    .map(|&t| t as usize),
            );
            self.take_dials();
            self.read_all(&readable);
            self.fire_timers(self.now());
            self.visit_sessions();
        }
    }

    /// Milliseconds to the earliest timer, or -1 (no session: wait for a datagram or a poke).
    fn timeout(&self) -> i32 {
        let now = self.now();
        match self.timers.peek() {
            None => -1,
            Some(Reverse((at, _))) => at.saturating_sub(now).min(60_000) as i32,
        }
    }

    fn take_dials(&mut self) {
        let Some(q) = &self.dials else { return };
        let dials: Vec<NewDial> = std::mem::take(&mut *q.lock().unwrap_or_else(|e| e.into_inner()));
        for d in dials {
            let stats = client_stats().clone();
            let Some(ep) = self.add_endpoint(Endpoint {
                socket: d.socket,
                setup: d.setup,
                stats,
                kind: Kind::Dialer { session: 0 },
            }) else {
                let (rw, ww) = {
                    let mut b = d.shared.lock();
                    b.ended = Some(Ended::Stopped);
                    (b.read_waker.take(), b.write_waker.take())
                };
                wake(rw);
                wake(ww);
                continue;
            };
            let sid = self.add_session(ep, d.peer, d.conv, d.shared);
            if let Some(Some(e)) = self.endpoints.get_mut(ep) {
                e.kind = Kind::Dialer { session: sid };
            }
        }
    }

    /// Adds an endpoint and watches its socket; None if epoll refuses it (out of memory or
    /// descriptors), and then the endpoint is dropped.
    fn add_endpoint(&mut self, ep: Endpoint) -> Option<usize> {
        let i = self.free_endpoints.pop().unwrap_or(self.endpoints.len());
        if let Err(e) = self.epoll.add(ep.socket.as_raw_fd(), i as u64) {
            tracing::warn!(error = %e, "kcp reactor cannot watch a socket");
            self.free_endpoints.push(i);
            return None;
        }
        self.put_endpoint(i, ep);
        Some(i)
    }

    /// Stores an endpoint whose socket is already watched with token `i`.
    fn put_endpoint(&mut self, i: usize, ep: Endpoint) {
        if i == self.endpoints.len() {
            self.endpoints.push(Some(ep));
        } else {
            self.endpoints[i] = Some(ep);
        }
    }

    fn add_session(
        &mut self,
        ep: usize,
        peer: SocketAddr,
        conv: u32,
        shared: Arc<Shared>,
    ) -> usize {
        let now = self.now();
        let Some(e) = self.endpoints[ep].as_ref() else {
            unreachable!("sessions are added to live endpoints")
        };
        let cfg = &e.setup.cfg;
        let mut k = Kcp::new_stream(conv, self.out.clone());
        // kcp_mtu is at least 100 - 28 by KcpConfig::prepare, above the crate's minimum of 50.
        let _ = k.set_mtu(e.setup.kcp_mtu);
        k.set_nodelay(
            cfg.nodelay,
            cfg.interval.as_millis() as i32,
            cfg.resend as i32,
            cfg.no_congestion_window,
        );
        k.set_wndsize(cfg.snd_wnd, cfg.rcv_wnd);
        let _ = k.update(now as u32);
        let s = Session {
            kcp: k,
            shared,
            peer,
            conv,
            endpoint: ep,
            enc: e.setup.rs.clone().map(FecEncoder::new),
            dec: e.setup.rs.clone().map(FecDecoder::new),
            last_input: now,
            next_due: now,
            wake_at: now,
            queued: false,
            touched: false,
            ack_due: None,
            closing: false,
            closed_at: 0,
            sn_next: 0,
            tx_pos: 0,
        };
        e.stats.sessions.fetch_add(1, Ordering::Relaxed);
        bump(&e.stats.sessions_total);
        tracing::debug!(%peer, conv, "kcp session started");
        let sid = self.next_slot();
        s.shared.slot.store(sid, Ordering::SeqCst);
        if sid == self.sessions.len() {
            self.sessions.push(Some(s));
        } else {
            self.free.pop();
            self.sessions[sid] = Some(s);
        }
        // A new session is visited in this pass: its first input, or what its stream wrote
        // before it had a slot to name.
        self.queue(sid);
        sid
    }

    /// The slot the next session will take.
    fn next_slot(&self) -> usize {
        self.free.last().copied().unwrap_or(self.sessions.len())
    }

    /// Forgets a session; `why` is what its stream reports (None: its owner closed it).
    fn remove_session(&mut self, sid: usize, why: Option<Ended>) {
        let Some(s) = self.sessions[sid].take() else {
            return;
        };
        tracing::debug!(peer = %s.peer, conv = s.conv, ?why, "kcp session ended");
        self.free.push(sid);
        let (rw, ww) = {
            let mut b = s.shared.lock();
            if b.ended.is_none() {
                b.ended = why.or(Some(Ended::Stopped));
            }
            (b.read_waker.take(), b.write_waker.take())
        };
        wake(rw);
        wake(ww);
        let mut drop_endpoint = false;
        if let Some(ep) = self.endpoints[s.endpoint].as_mut() {
            ep.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            if why == Some(Ended::Idle) {
                bump(&ep.stats.idle_timeouts);
            }
            match &mut ep.kind {
                Kind::Listener { by_addr, .. } => {
                    if by_addr.get(&s.peer) == Some(&sid) {
                        by_addr.remove(&s.peer);
                    }
                }
                Kind::Dialer { .. } => drop_endpoint = true,
            }
        }
        if drop_endpoint {
            // Closing the socket takes it out of the epoll set.
            self.endpoints[s.endpoint] = None;
            self.free_endpoints.push(s.endpoint);
        }
    }

    fn end_all(&mut self, why: Ended) {
        for sid in 0..self.sessions.len() {
            self.remove_session(sid, Some(why));
        }
    }

    /// Reads what waits on the sockets epoll found readable (or in error).
    fn read_all(&mut self, readable: &[usize]) {
        let mut buf = [0u8; MTU_LIMIT];
        for &ep in readable {
            for _ in 0..READS_PER_PASS {
                let Some(e) = self.endpoints[ep].as_ref() else {
                    break;
                };
                let (n, from) = match e.socket.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        // A connected (dialed) socket reports the peer's ICMP port unreachable
                        // here: nobody listens there.
                        if let Kind::Dialer { session } = e.kind
                            && err.kind() == io::ErrorKind::ConnectionRefused
                        {
                            self.remove_session(session, Some(Ended::Refused));
                        }
                        break;
                    }
                };
                self.datagram(ep, &mut buf[..n], from);
            }
        }
    }

    /// One datagram from `from` on endpoint `ep`.
    fn datagram(&mut self, ep: usize, data: &mut [u8], from: SocketAddr) {
        let now = self.now();
        let Some(e) = self.endpoints[ep].as_ref() else {
            return;
        };
        let stats = e.stats.clone();
        bump(&stats.datagrams_in);
        let fec_header = e.setup.fec_header;
        if data.len() < crypt::HEADER + fec_header.min(super::fec::HEADER) {
            dropped(&stats.dropped_short, "too_short", from);
            return;
        }
        if e.setup.crypt.open(data).is_err() {
            dropped(&stats.dropped_crc, "crc", from);
            return;
        }
        let body = &data[crypt::HEADER..];
        // The first KCP segment of a data shard tells which conversation it belongs to.
        let first_kcp = if fec_header == 0 {
            Some(body)
        } else if body.len() >= fec_header
            && u16::from_le_bytes([body[4], body[5]]) == super::fec::TYPE_DATA
        {
            Some(&body[fec_header..])
        } else {
            None
        };
        let head = first_kcp.filter(|k| k.len() >= KCP_OVERHEAD).map(|k| {
            let conv = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
            let sn = u32::from_le_bytes([k[12], k[13], k[14], k[15]]);
            (conv, sn)
        });
        let conv_of = |sid: usize| self.sessions[sid].as_ref().map(|s| s.conv);
        let route = match &e.kind {
            Kind::Dialer { session } => match head {
                Some((conv, _)) if conv_of(*session).is_some_and(|c| c != conv) => None,
                _ => Some(Route::To(*session)),
            },
            Kind::Listener { by_addr, ctl, .. } => {
                let existing = by_addr.get(&from).copied();
                match (existing, head) {
                    (Some(sid), None) => Some(Route::To(sid)),
                    (Some(sid), Some((conv, _))) if conv_of(sid) == Some(conv) => {
                        Some(Route::To(sid))
                    }
                    // kcp-go: a new conversation (sn 0) from a known address replaces the old
                    // session; another conversation's later segments are stale.
                    (Some(sid), Some((conv, 0))) => Some(Route::New {
                        replace: Some(sid),
                        conv,
                    }),
                    (Some(_), Some(_)) => None,
                    (None, None) => {
                        if first_kcp.is_some() {
                            dropped(&stats.dropped_short, "too_short", from);
                            return;
                        }
                        None
                    }
                    (None, Some((conv, _))) => {
                        if !ctl.accepting.load(Ordering::SeqCst) {
                            None
                        } else if stats.sessions.load(Ordering::Relaxed) as usize
                            >= e.setup.cfg.max_sessions
                        {
                            dropped(&stats.dropped_session_cap, "session_cap", from);
                            return;
                        } else {
                            Some(Route::New {
                                replace: None,
                                conv,
                            })
                        }
                    }
                }
            }
        };
        let sid = match route {
            None => {
                dropped(&stats.dropped_unknown, "unknown", from);
                return;
            }
            Some(Route::To(sid)) => sid,
            Some(Route::New { replace, conv }) => {
                let max_buffered = e.setup.cfg.max_buffered;
                if let Some(old) = replace {
                    self.remove_session(old, Some(Ended::Replaced));
                }
                let shared = Shared::new(max_buffered, self.notify.clone());
                // The stream may poke before the session is in the table: it names its slot.
                shared.slot.store(self.next_slot(), Ordering::SeqCst);
                if let Some(Endpoint {
                    kind: Kind::Listener { sink, ctl, .. },
                    ..
                }) = self.endpoints[ep].as_ref()
                    // The sink only queues the stream for a core.
                    && !sink(KcpStream::new(shared.clone(), from, conv), from)
                {
                    ctl.accepting.store(false, Ordering::SeqCst);
                    dropped(&stats.dropped_unknown, "unknown", from);
                    return;
                }
                let sid = self.add_session(ep, from, conv, shared);
                if let Some(Endpoint {
                    kind: Kind::Listener { by_addr, .. },
                    ..
                }) = self.endpoints[ep].as_mut()
                {
                    by_addr.insert(from, sid);
                }
                sid
            }
        };
        let Some(s) = self.sessions[sid].as_mut() else {
            return;
        };
        let body = &data[crypt::HEADER..];
        let mut recovered = std::mem::take(&mut self.recovered);
        let kcp_bytes = match s.dec.as_mut() {
            None => body,
            Some(dec) => match dec.decode(body, &mut recovered) {
                Ok(d) => {
                    stats
                        .fec_recovered
                        .fetch_add(d.recovered as u64, Ordering::Relaxed);
                    d.kcp
                }
                Err(_) => {
                    dropped(&stats.dropped_decode, "decode", from);
                    recovered.clear();
                    self.recovered = recovered;
                    return;
                }
            },
        };
        s.last_input = now;
        let mut broken = false;
        if !kcp_bytes.is_empty() {
            broken |= kcp_input(s, kcp_bytes, now, &stats);
        }
        for r in recovered.drain(..) {
            broken |= kcp_input(s, &r, now, &stats);
        }
        self.recovered = recovered;
        s.touched = true;
        if broken {
            self.remove_session(sid, Some(Ended::DeadLink));
        } else {
            self.emit(sid);
            self.queue(sid);
        }
    }

    /// Visits each session on the work list once: the flush half of a pass.
    fn visit_sessions(&mut self) {
        let now = self.now();
        let mut work = std::mem::take(&mut self.work);
        for &sid in &work {
            let Some(s) = self.sessions[sid].as_mut() else {
                continue;
            };
            s.queued = false;
            let Some(ep) = self.endpoints[s.endpoint].as_ref() else {
                continue;
            };
            let cfg = &ep.setup.cfg;
            // Cleared before the buffers are looked at: a poke after this queues the session
            // again.
            s.shared.dirty.store(false, Ordering::SeqCst);
            let ack_due = s.ack_due.is_some_and(|at| now >= at);
            let touched = std::mem::take(&mut s.touched);
            let idle = cfg.idle_timeout.as_millis() as u64;
            let snd_wnd = usize::from(cfg.snd_wnd);
            let stats = ep.stats.clone();
            let (sent, [rw, ww], closed, delivered) = pump(s, snd_wnd);
            // ACKs for stream bytes just handed to the core wait up to `ack_delay` for the
            // core's reply, which then carries them; anything else is acknowledged at once.
            let delay = cfg.ack_delay.as_millis() as u64;
            let hold = touched && cfg.ack_nodelay && delivered && !sent && delay > 0;
            if hold && s.ack_due.is_none() {
                s.ack_due = Some(now + delay);
            }
            // A stream being closed gets no reply to wait for: its ACKs go now.
            let ack_now = (touched && cfg.ack_nodelay && !hold) || ack_due || closed;
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _ = s.kcp.update(now as u32);
                if ack_now || sent {
                    let _ = s.kcp.flush();
                }
            }));
            if ack_now || sent {
                s.ack_due = None;
            }
            wake(rw);
            wake(ww);
            if r.is_err() {
                bump(&stats.dropped_decode);
                self.remove_session(sid, Some(Ended::DeadLink));
                continue;
            }
            if closed && !s.closing {
                s.closing = true;
                s.closed_at = now;
            }
            let done = s.closing
                && ((s.kcp.wait_snd() == 0 && {
                    let b = s.shared.lock();
                    b.tx.len() <= s.tx_pos
                }) || now >= s.last_input.max(s.closed_at) + CLOSE_LINGER_MS);
            let dead = s.kcp.is_dead_link();
            let idle_at = s.last_input + idle;
            s.next_due = now + u64::from(s.kcp.check(now as u32));
            // One live timer entry per session: the earliest of KCP's next update, held ACKs
            // and the idle deadline (older entries are skipped as stale).
            s.wake_at = s.next_due.min(s.ack_due.unwrap_or(u64::MAX)).min(idle_at);
            let wake_at = s.wake_at;
            self.emit(sid);
            if dead {
                self.remove_session(sid, Some(Ended::DeadLink));
            } else if now >= idle_at {
                self.remove_session(sid, Some(Ended::Idle));
            } else if done {
                self.remove_session(sid, None);
            } else {
                self.timers.push(Reverse((wake_at, sid)));
            }
        }
        work.clear();
        // Nothing queues during the visit; keep the allocation.
        work.append(&mut self.work);
        self.work = work;
    }

    /// Sends what KCP wrote for session `sid`: FEC-encode (parity after each full group),
    /// seal, send.
    fn emit(&mut self, sid: usize) {
        let packets = std::mem::take(&mut self.out.0.borrow_mut().packets);
        if packets.is_empty() {
            self.out.0.borrow_mut().packets = packets;
            return;
        }
        let mut packets = packets;
        let Some(s) = self.sessions[sid].as_mut() else {
            return;
        };
        let Some(ep) = self.endpoints[s.endpoint].as_ref() else {
            return;
        };
        let setup = &ep.setup;
        let start = RESERVE - crypt::HEADER - setup.fec_header;
        let parity_buf = &mut self.parity_buf;
        for p in packets.iter_mut() {
            count_retransmissions(&p[RESERVE..], &mut s.sn_next, &ep.stats);
            let dgram = &mut p[start..];
            let ready = match s.enc.as_mut() {
                Some(enc) => enc.encode(&mut dgram[crypt::HEADER..]),
                None => 0,
            };
            setup.crypt.seal(dgram, &self.nonce.next());
            send(ep, s.peer, dgram);
            if let Some(enc) = s.enc.as_ref() {
                for i in 0..ready {
                    parity_buf.clear();
                    parity_buf.resize(crypt::HEADER, 0);
                    enc.parity(i, parity_buf);
                    setup.crypt.seal(parity_buf, &self.nonce.next());
                    send(ep, s.peer, parity_buf);
                }
            }
        }
        let mut q = self.out.0.borrow_mut();
        q.pool.append(&mut packets);
        q.pool.truncate(64);
        q.packets = packets;
    }
}

/// Counts a dropped datagram; the debug log names the peer (off by default: a flood of garbage
/// must not become a flood of log lines).
fn dropped(counter: &std::sync::atomic::AtomicU64, reason: &'static str, from: SocketAddr) {
    bump(counter);
    tracing::debug!(%from, reason, "kcp datagram dropped");
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// Feeds KCP bytes to a session; true when the state machine panicked (the session is then
/// unusable and is dropped). A parse error drops the rest of the datagram, as kcp-go does.
fn kcp_input(s: &mut Session, bytes: &[u8], now: u64, stats: &KcpStats) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // update first so that ACKs measure the round trip against the current clock.
        let _ = s.kcp.update(now as u32);
        s.kcp.input(bytes)
    }));
    match r {
        Ok(Ok(_)) => false,
        Ok(Err(_)) => {
            bump(&stats.dropped_decode);
            false
        }
        Err(_) => true,
    }
}

/// Moves bytes between the stream's buffers and KCP. Returns whether new data went into KCP,
/// the reader's and writer's wakers to wake (after the lock is released), whether the owner
/// closed the stream, and whether stream bytes were handed to the reader.
fn pump(s: &mut Session, snd_wnd: usize) -> (bool, [Option<Waker>; 2], bool, bool) {
    let mut wakers = [None, None];
    let cap = s.shared.cap;
    let mut b = s.shared.lock();
    // KCP → rx, while the reader has room; otherwise KCP keeps the data and its window closes.
    let mut got = false;
    while let Ok(size) = s.kcp.peeksize() {
        if b.rx_len() > 0 && b.rx_len() + size > cap {
            break;
        }
        if b.rx_pos > 0 {
            let pos = b.rx_pos;
            b.rx.drain(..pos);
            b.rx_pos = 0;
        }
        let old = b.rx.len();
        b.rx.resize(old + size, 0);
        match s.kcp.recv(&mut b.rx[old..]) {
            Ok(n) => {
                b.rx.truncate(old + n);
                got = true;
            }
            Err(_) => {
                b.rx.truncate(old);
                break;
            }
        }
    }
    if got {
        wakers[0] = b.read_waker.take();
    }
    // tx → KCP, up to twice the send window queued (kcp-go blocks writers at one window).
    let mut sent = false;
    let chunk_max = s.kcp.mss() * 16;
    while b.tx.len() > s.tx_pos && s.kcp.wait_snd() < 2 * snd_wnd {
        let end = b.tx.len().min(s.tx_pos + chunk_max);
        match s.kcp.send(&b.tx[s.tx_pos..end]) {
            Ok(n) => {
                s.tx_pos += n;
                sent = true;
            }
            Err(_) => break,
        }
    }
    if sent {
        if s.tx_pos == b.tx.len() {
            b.tx.clear();
            b.tx.shrink_to(super::stream::KEEP);
            s.tx_pos = 0;
        } else if s.tx_pos > cap / 2 {
            let pos = s.tx_pos;
            b.tx.drain(..pos);
            s.tx_pos = 0;
        }
        if b.tx.len() < cap {
            wakers[1] = b.write_waker.take();
        }
    }
    // tx_pos counts bytes of b.tx already in KCP; the writer only appends, so it stays valid.
    let closed = b.closed;
    (sent, wakers, closed, got)
}

fn send(ep: &Endpoint, peer: SocketAddr, dgram: &[u8]) {
    let r = match ep.kind {
        Kind::Listener { .. } => ep.socket.send_to(dgram, peer),
        Kind::Dialer { .. } => ep.socket.send(dgram),
    };
    match r {
        Ok(_) => bump(&ep.stats.datagrams_out),
        Err(_) => bump(&ep.stats.send_errors),
    }
}

/// Counts PUSH segments in one datagram's KCP bytes whose `sn` was sent before.
fn count_retransmissions(mut kcp: &[u8], sn_next: &mut u32, stats: &KcpStats) {
    while kcp.len() >= KCP_OVERHEAD {
        let cmd = kcp[4];
        let sn = u32::from_le_bytes([kcp[12], kcp[13], kcp[14], kcp[15]]);
        let len = u32::from_le_bytes([kcp[20], kcp[21], kcp[22], kcp[23]]) as usize;
        if cmd == CMD_PUSH {
            if (sn.wrapping_sub(*sn_next) as i32) < 0 {
                bump(&stats.retransmissions);
            } else {
                *sn_next = sn.wrapping_add(1);
            }
        }
        kcp = kcp.get(KCP_OVERHEAD + len..).unwrap_or(&[]);
    }
}

/// A KCP listener: its reactor thread (`percore-kcp`), its counters, and the way to stop it.
pub struct KcpListener {
    local: SocketAddr,
    stats: Arc<KcpStats>,
    ctl: Arc<Control>,
    notify: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `addr` (UDP) and starts its reactor; every new session goes to `sink`.
pub fn listen(addr: SocketAddr, setup: &Arc<KcpSetup>, sink: Sink) -> io::Result<KcpListener> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let notify = Notify::new()?;
    let stats = Arc::new(KcpStats::default());
    let ctl = Arc::new(Control {
        accepting: AtomicBool::new(true),
        stop: AtomicBool::new(false),
    });
    let endpoint = Endpoint {
        socket,
        setup: setup.clone(),
        stats: stats.clone(),
        kind: Kind::Listener {
            by_addr: HashMap::new(),
            sink,
            ctl: ctl.clone(),
        },
    };
    let nonce = NonceGen::new()?;
    let epoll = Epoll::new()?;
    epoll.add(notify.fd.as_raw_fd(), NOTIFY_TOKEN)?;
    epoll.add(endpoint.socket.as_raw_fd(), 0)?;
    let (thread_ctl, thread_notify) = (ctl.clone(), notify.clone());
    let thread = std::thread::Builder::new()
        .name("percore-kcp".into())
        .spawn(move || {
            let mut reactor = Reactor::new(thread_notify, epoll, nonce);
            reactor.put_endpoint(0, endpoint);
            reactor.run(Some(&thread_ctl));
        })?;
    Ok(KcpListener {
        local,
        stats,
        ctl,
        notify,
        thread: Some(thread),
    })
}

impl KcpListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> &Arc<KcpStats> {
        &self.stats
    }

    /// Stops starting sessions; existing ones carry on.
    pub fn close_new(&self) {
        self.ctl.accepting.store(false, Ordering::SeqCst);
        self.notify.wake();
    }

    /// Stops starting sessions, waits up to `grace` for the existing ones to be closed by their
    /// owners and flushed, then ends the rest and joins the thread.
    pub fn shutdown(mut self, grace: Duration) {
        self.close_new();
        let deadline = Instant::now() + grace;
        while self.stats.sessions.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        self.notify.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KcpListener {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Client {
    notify: Arc<Notify>,
    dials: Arc<Mutex<Vec<NewDial>>>,
}

fn client_stats() -> &'static Arc<KcpStats> {
    static STATS: OnceLock<Arc<KcpStats>> = OnceLock::new();
    STATS.get_or_init(|| Arc::new(KcpStats::default()))
}

/// Counters of every dialed session of this process.
pub fn dial_stats() -> &'static Arc<KcpStats> {
    client_stats()
}

fn client() -> io::Result<&'static Client> {
    static CLIENT: OnceLock<Result<Client, String>> = OnceLock::new();
    let c = CLIENT.get_or_init(|| {
        let start = || -> io::Result<Client> {
            let notify = Notify::new()?;
            let dials = Arc::new(Mutex::new(Vec::new()));
            let nonce = NonceGen::new()?;
            let epoll = Epoll::new()?;
            epoll.add(notify.fd.as_raw_fd(), NOTIFY_TOKEN)?;
            let (thread_notify, thread_dials) = (notify.clone(), dials.clone());
            std::thread::Builder::new()
                .name("percore-kcp-client".into())
                .spawn(move || {
                    let mut reactor = Reactor::new(thread_notify, epoll, nonce);
                    reactor.dials = Some(thread_dials);
                    reactor.run(None);
                })?;
            Ok(Client { notify, dials })
        };
        start().map_err(|e| e.to_string())
    });
    c.as_ref().map_err(|e| io::Error::other(e.clone()))
}

/// Opens a KCP session to `addr` with a random conversation id. KCP has no handshake, so this
/// never waits on the network: a peer that is not there shows as an error (refused) or as
/// silence (then the idle timeout) on the stream.
pub fn dial(addr: SocketAddr, setup: &Arc<KcpSetup>) -> io::Result<KcpStream> {
    let c = client()?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    let conv = crypt::random_u32()?;
    let shared = Shared::new(setup.cfg.max_buffered, c.notify.clone());
    let stream = KcpStream::new(shared.clone(), addr, conv);
    c.dials
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(NewDial {
            socket,
            setup: setup.clone(),
            shared,
            peer: addr,
            conv,
        });
    c.notify.wake();
    Ok(stream)
}
