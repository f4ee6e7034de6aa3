//! One multiplexed connection: many calls in flight, matched to their replies by seq.
//!
//! ```text
//!  callers ──► encode into `out` (one buffer, reused) ──► writer task: swap, one write per batch
//!  reader task: read ─► protocol::decode ─► seq ─► slot ─► wake the caller
//! ```
//!
//! Every call in flight owns a slot. A slot's seq is `generation << 32 | index`, so a reply finds
//! its slot without a map and a late reply to an abandoned call (timed out, dropped) finds a
//! newer generation and is ignored. Slots and their buffers are reused, so a call allocates
//! nothing once the connection is warm. When the connection breaks, every waiting slot fails
//! with the same error at once, and the owner ([`super::Client`]) dials a new connection for
//! the next call.

use crate::buf::{ReadBuf, SHRINK_ABOVE};
use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::{Error, Options, PushHandler, ReplyView, Request};
use crate::codec::{self, SerializeType};
use crate::protocol::{
    self, COMPRESS_GZIP, Frame, Header, META_AUTH, META_SERVER_TIMEOUT, Metadata,
};
use crate::stream::Half;
use crate::transport::connector::Stream;

/// rpcx compresses only payloads larger than this (the Go client's and server's rule).
const GZIP_ABOVE: usize = 1024;
const INITIAL_READ_BUFFER: usize = 16 << 10;

/// A live (or broken) connection to one server.
pub(crate) struct Conn {
    addr: String,
    options: Rc<Options>,
    push: Option<PushHandler>,
    st: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Encoded requests waiting for the writer.
    out: Vec<u8>,
    /// Bytes ever queued and ever written, so a oneway call can wait for its bytes to leave.
    queued: u64,
    written: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Seq of the next oneway request (oneway requests get no reply and no slot).
    oneway_seq: u64,
    /// Set once: why the connection ended.
    broken: Option<Error>,
    writer: Option<Waker>,
    task: Option<Waker>,
    flush_waiters: Vec<Waker>,
    /// Scratch for encoding a request's metadata and compressed payload.
    meta: Vec<u8>,
    deflated: Vec<u8>,
    /// Server pushes received (PROTOCOL.md §3).
    pushes: u64,
    /// The deadline sweeper: whether it runs, and how often it looks (a twentieth of the
    /// shortest timeout seen, at least 1 ms).
    sweeping: bool,
    sweep_every: Option<Duration>,
}

#[derive(Default)]
struct Slot {
    seq: u64,
    generation: u32,
    phase: Phase,
    waker: Option<Waker>,
    header: Header,
    meta: Vec<u8>,
    payload: Vec<u8>,
    error: Option<Error>,
    /// When a call with a timeout gives up, and the timeout (for the error).
    deadline: Option<(Instant, Duration)>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Free,
    Waiting,
    Done,
}

/// Frees a call's slot however the call ends (reply, error, timeout, or the future dropped).
struct SlotGuard<'a> {
    conn: &'a Conn,
    index: u32,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.conn.st.borrow_mut();
        let slot = &mut st.slots[self.index as usize];
        slot.phase = Phase::Free;
        slot.waker = None;
        slot.error = None;
        slot.deadline = None;
        if slot.payload.capacity() > SHRINK_ABOVE {
            slot.payload = Vec::new();
        }
        st.free.push(self.index);
    }
}

impl Conn {
    /// Takes over a connected stream: spawns its reader/writer task (and heartbeat task).
    pub(crate) fn start(
        addr: String,
        stream: Stream,
        options: Rc<Options>,
        push: Option<PushHandler>,
    ) -> Rc<Conn> {
        let heartbeat = options.heartbeat_interval;
        let conn = Rc::new(Conn {
            addr,
            options,
            push,
            st: RefCell::new(State::default()),
        });
        glommio::spawn_local(run(Rc::clone(&conn), stream)).detach();
        if let Some(interval) = heartbeat.filter(|d| !d.is_zero()) {
            glommio::spawn_local(heartbeat_loop(Rc::downgrade(&conn), interval)).detach();
        }
        conn
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.st.borrow().broken.is_some()
    }

    pub(crate) fn pushes(&self) -> u64 {
        self.st.borrow().pushes
    }

    /// Ends the connection: every waiting call fails with `error`, the task closes the socket.
    pub(crate) fn fail(&self, error: Error) {
        let mut wake = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            if st.broken.is_some() {
                return;
            }
            for slot in st.slots.iter_mut().filter(|s| s.phase == Phase::Waiting) {
                slot.error = Some(error.clone());
                slot.phase = Phase::Done;
                wake.extend(slot.waker.take());
            }
            st.broken = Some(error);
            wake.extend(st.writer.take());
            wake.extend(st.task.take());
            wake.append(&mut st.flush_waiters);
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Sends a request and waits for its reply; `read` sees the reply (already checked for a
    /// service error and decompressed) and returns the caller's value.
    pub(crate) async fn call<T>(
        self: &Rc<Self>,
        req: &Request<'_>,
        heartbeat: bool,
        read: impl FnOnce(&ReplyView<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let index = self.enqueue(req, false, heartbeat)?;
        let guard = SlotGuard { conn: self, index };
        // A timeout is enforced by the connection's sweeper (one timer per connection, not one
        // per call), which fails the slot like a broken connection would.
        poll_fn(|cx| self.poll_slot(index, cx)).await?;
        let deadline = self.st.borrow().slots[index as usize].deadline;
        if let Some((deadline, after)) = deadline
            && Instant::now() >= deadline
        {
            // Past the deadline the call has timed out, whatever came back in the meantime:
            // the server's own deadline error (percore and rpcx send one once __ServerTimeout
            // passes) races the sweeper, and the caller should see one answer, not either.
            return Err(Error::Timeout {
                addr: self.addr.clone(),
                after,
            });
        }
        let st = self.st.borrow();
        let slot = &st.slots[index as usize];
        let metadata =
            Metadata::parse(&slot.meta).map_err(|e| self.protocol_error(e.to_string()))?;
        if slot.header.is_error()
            && let Some(text) = metadata.get(protocol::META_ERROR)
        {
            return Err(Error::Service(text.to_owned()));
        }
        let codec = SerializeType::from_wire(slot.header.serialize).ok();
        let view = ReplyView {
            header: slot.header,
            codec,
            metadata,
            payload: &slot.payload,
        };
        let value = read(&view);
        drop(st);
        drop(guard);
        value
    }

    /// Sends a oneway request and waits until its bytes are written.
    pub(crate) async fn oneway(self: &Rc<Self>, req: &Request<'_>) -> Result<(), Error> {
        self.enqueue(req, true, false)?;
        let target = self.st.borrow().queued;
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if st.written >= target {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &st.broken {
                return Poll::Ready(Err(e.clone()));
            }
            st.flush_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Encodes the request into the outgoing buffer; returns its slot (unless oneway).
    fn enqueue(
        self: &Rc<Self>,
        req: &Request<'_>,
        oneway: bool,
        heartbeat: bool,
    ) -> Result<u32, Error> {
        let (index, start_sweeper) = self.encode(req, oneway, heartbeat)?;
        if start_sweeper {
            // Spawned with no borrow held: glommio may run the new task at once.
            glommio::spawn_local(sweep_deadlines(Rc::downgrade(self))).detach();
        }
        Ok(index)
    }

    /// Encodes the request; returns its slot and whether the deadline sweeper must start.
    fn encode(
        &self,
        req: &Request<'_>,
        oneway: bool,
        heartbeat: bool,
    ) -> Result<(u32, bool), Error> {
        let mut st = self.st.borrow_mut();
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        let (index, seq) = if oneway {
            st.oneway_seq = st.oneway_seq.wrapping_add(1);
            (u32::MAX, st.oneway_seq | (1 << 63))
        } else {
            let index = match st.free.pop() {
                Some(i) => i,
                None => {
                    st.slots.push(Slot::default());
                    (st.slots.len() - 1) as u32
                }
            };
            let slot = &mut st.slots[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.seq = (u64::from(slot.generation) << 32) | u64::from(index);
            slot.phase = Phase::Waiting;
            slot.deadline = req
                .timeout
                .filter(|t| !t.is_zero())
                .map(|t| (Instant::now() + t, t));
            (index, slot.seq)
        };
        let st = &mut *st;
        let mut header = Header::request(req.serialize as u8, seq);
        if oneway {
            header.flags |= protocol::flags::ONEWAY;
        }
        if heartbeat {
            header.flags |= protocol::flags::HEARTBEAT;
        }
        st.meta.clear();
        for (k, v) in req.metadata {
            protocol::push_meta(&mut st.meta, k.as_bytes(), v.as_bytes());
        }
        if let Some(t) = req.timeout.filter(|t| !t.is_zero()) {
            let mut digits = itoa::Buffer::new();
            let ms = digits.format(t.as_millis().max(1));
            protocol::push_meta(&mut st.meta, META_SERVER_TIMEOUT.as_bytes(), ms.as_bytes());
        }
        if let Some(token) = &self.options.auth_token {
            protocol::push_meta(&mut st.meta, META_AUTH.as_bytes(), token.as_bytes());
        }
        let mut payload = req.payload;
        if self.options.gzip && payload.len() > GZIP_ABOVE {
            st.deflated.clear();
            codec::gzip(payload, &mut st.deflated);
            header.set_compress(COMPRESS_GZIP);
            payload = &st.deflated;
        }
        let before = st.out.len();
        protocol::encode(
            &mut st.out,
            &header,
            req.path,
            req.method,
            &st.meta,
            payload,
        );
        st.queued += (st.out.len() - before) as u64;
        if let Some(w) = st.writer.take() {
            w.wake();
        }
        let mut start_sweeper = false;
        if let Some(t) = req.timeout.filter(|t| !t.is_zero() && !oneway) {
            let every = (t / 20).max(Duration::from_millis(1));
            st.sweep_every = Some(st.sweep_every.map_or(every, |e| e.min(every)));
            start_sweeper = !st.sweeping;
            st.sweeping = true;
        }
        Ok((index, start_sweeper))
    }

    /// Fails every waiting call past its deadline; false once no waiting call has one.
    fn expire(&self, now: Instant) -> bool {
        let mut wake = Vec::new();
        let mut any = false;
        {
            let mut st = self.st.borrow_mut();
            if st.broken.is_some() {
                st.sweeping = false;
                return false;
            }
            for slot in st.slots.iter_mut().filter(|s| s.phase == Phase::Waiting) {
                let Some((deadline, after)) = slot.deadline else {
                    continue;
                };
                if deadline <= now {
                    slot.error = Some(Error::Timeout {
                        addr: self.addr.clone(),
                        after,
                    });
                    slot.phase = Phase::Done;
                    wake.extend(slot.waker.take());
                } else {
                    any = true;
                }
            }
            if !any {
                st.sweeping = false;
                st.sweep_every = None;
            }
        }
        wake.into_iter().for_each(Waker::wake);
        any
    }

    fn poll_slot(&self, index: u32, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut st = self.st.borrow_mut();
        let slot = &mut st.slots[index as usize];
        if slot.phase == Phase::Done {
            return Poll::Ready(match slot.error.take() {
                Some(e) => Err(e),
                None => Ok(()),
            });
        }
        park(&mut slot.waker, cx);
        Poll::Pending
    }

    /// Routes one decoded frame from the server.
    fn deliver(&self, frame: &Frame<'_>) {
        if !frame.header.is_response() {
            // A server push (type request, oneway; PROTOCOL.md §3) or something like it: counted
            // and handed to the push handler if there is one, never an error.
            self.st.borrow_mut().pushes += 1;
            if let Some(handler) = &self.push {
                handler(&frame.to_message());
            }
            return;
        }
        let seq = frame.header.seq;
        let mut st = self.st.borrow_mut();
        let Some(slot) = st.slots.get_mut((seq & 0xFFFF_FFFF) as usize) else {
            return;
        };
        if slot.seq != seq || slot.phase != Phase::Waiting {
            return; // a late reply to a call that gave up
        }
        slot.header = frame.header;
        slot.meta.clear();
        slot.meta.extend_from_slice(frame.metadata.raw());
        slot.payload.clear();
        if frame.header.compress() == COMPRESS_GZIP {
            if let Err(e) = codec::gunzip(
                frame.payload,
                self.options.max_decompressed_bytes,
                &mut slot.payload,
            ) {
                slot.error = Some(Error::Protocol {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                });
            }
        } else {
            slot.payload.extend_from_slice(frame.payload);
        }
        slot.phase = Phase::Done;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    fn protocol_error(&self, reason: String) -> Error {
        Error::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn connection_error(&self, reason: impl ToString) -> Error {
        Error::Connection {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    fn poll_broken(&self, cx: &mut Context<'_>) -> Poll<Error> {
        let mut st = self.st.borrow_mut();
        if let Some(e) = &st.broken {
            return Poll::Ready(e.clone());
        }
        park(&mut st.task, cx);
        Poll::Pending
    }
}

fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Runs while calls with deadlines are waiting: every `sweep_every` it fails the overdue ones.
async fn sweep_deadlines(conn: Weak<Conn>) {
    loop {
        let Some(every) = conn.upgrade().and_then(|c| c.st.borrow().sweep_every) else {
            return;
        };
        glommio::timer::sleep(every).await;
        let Some(conn) = conn.upgrade() else { return };
        if !conn.expire(Instant::now()) {
            return;
        }
    }
}

/// The connection task: reader and writer until one fails or the connection is closed.
async fn run(conn: Rc<Conn>, stream: Stream) {
    let stream = RefCell::new(stream);
    let io = futures_lite::future::or(
        read_loop(&conn, Half(&stream)),
        write_loop(&conn, Half(&stream)),
    );
    let error = futures_lite::future::or(io, poll_fn(|cx| conn.poll_broken(cx))).await;
    conn.fail(error);
    let _ = stream.into_inner().close().await;
}

async fn read_loop(conn: &Conn, mut rd: Half<'_, Stream>) -> Error {
    let max_frame = conn.options.max_frame_bytes;
    let mut buf = ReadBuf::new(INITIAL_READ_BUFFER);
    loop {
        let n = match rd.read(buf.spare()).await {
            Ok(0) => return conn.connection_error("closed by the server"),
            Ok(n) => n,
            Err(e) => return conn.connection_error(e),
        };
        buf.filled(n);
        loop {
            let data = buf.data();
            let total = match protocol::frame_len(data, max_frame) {
                Ok(Some(total)) => total,
                Ok(None) => break,
                Err(e) => return conn.protocol_error(e.to_string()),
            };
            if data.len() < total {
                buf.reserve_frame(total);
                break;
            }
            match protocol::decode(&data[..total], max_frame) {
                Ok(Some((frame, _))) => conn.deliver(&frame),
                Ok(None) => {
                    return conn.protocol_error("frame shorter than its header says".into());
                }
                Err(e) => return conn.protocol_error(e.to_string()),
            }
            buf.consume(total);
        }
    }
}

async fn write_loop(conn: &Conn, mut wr: Half<'_, Stream>) -> Error {
    let mut batch = Vec::new();
    loop {
        poll_fn(|cx| {
            let mut st = conn.st.borrow_mut();
            if st.out.is_empty() {
                park(&mut st.writer, cx);
                Poll::Pending
            } else {
                std::mem::swap(&mut batch, &mut st.out);
                Poll::Ready(())
            }
        })
        .await;
        if let Err(e) = wr.write_all(&batch).await {
            return conn.connection_error(e);
        }
        let waiters = {
            let mut st = conn.st.borrow_mut();
            st.written += batch.len() as u64;
            std::mem::take(&mut st.flush_waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
        batch.clear();
        if batch.capacity() > SHRINK_ABOVE {
            batch = Vec::new();
        }
    }
}

/// Sends a heartbeat every `interval` and ends the connection when one is not echoed within
/// the interval (the Go client's heartbeat: empty path and method, a MsgPack int64 payload).
async fn heartbeat_loop(conn: Weak<Conn>, interval: Duration) {
    loop {
        glommio::timer::sleep(interval).await;
        let Some(conn) = conn.upgrade() else { return };
        if conn.is_broken() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut payload = Vec::with_capacity(9);
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_sint(&mut payload, now);
        let req = Request {
            path: "",
            method: "",
            serialize: SerializeType::MsgPack,
            metadata: &[],
            payload: &payload,
            timeout: Some(interval),
        };
        let result = conn
            .call(&req, true, |reply| {
                if reply.payload == payload.as_slice() {
                    Ok(())
                } else {
                    Err(conn.protocol_error("heartbeat echo does not match".into()))
                }
            })
            .await;
        if let Err(e) = result {
            conn.fail(conn.connection_error(format!("heartbeat failed: {e}")));
            return;
        }
    }
}
