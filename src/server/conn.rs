//! The one connection loop: every transport ends here as a byte stream.
//!
//! A connection is two futures joined in one task: the reader reads as much as is available,
//! decodes every complete frame, runs the handlers and appends each reply to the connection's
//! outbox; the writer swaps the outbox for its own buffer and writes it out in one call. So
//! pipelined load costs one read and one write per batch, not per request, and reply bytes are
//! encoded straight into a buffer that is reused, not allocated per call.
//!
//! Replies whose handler asked for a delay (`Outcome::After`) are written by a small task of their
//! own into the same outbox when their time comes, so they never hold up other calls.
//!
//! Bounds: a frame's header is checked before its body is buffered; a connection stops taking
//! requests, even ones already read into its buffer, while its unwritten replies exceed
//! `limits.max_pending_write_bytes` or its calls in flight reach `limits.max_calls_in_flight`
//! (a call is in flight from its decode until its reply is queued; synchronous handlers finish
//! inside the batch that read them, so in practice those are delayed calls), and resumes as
//! replies drain; a connection that sends no request for `limits.idle_timeout` while owed no
//! reply is closed; input that is not rpcx, or a call that fails the auth check, closes the
//! connection after the replies to the frames before it (and the auth error reply) are
//! flushed, with one log line and a metric.

use crate::buf::{ReadBuf, SCRATCH_KEEP, SHRINK_ABOVE, release};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Core;
use super::dispatch::{self, DEADLINE_EXCEEDED, Invoked, Panics, UNAUTHENTICATED};
use super::end::End;
use crate::codec::{self, CodecError};
use crate::config::Limits;
use crate::metrics::{BadFrame, Transport};
use crate::protocol::{self, COMPRESS_GZIP, Frame, Header, META_ERROR, STATUS_ERROR};
use crate::service::{LookupError, MethodId, Registry};
use crate::stream::Half;

/// First size of a connection's read buffer; it grows to hold the largest frame in flight and
/// shrinks back when that frame is done. 8 KiB holds a whole pipelined batch of small calls
/// (32 Arith.Mul calls are 1.5 KiB, one read each in benches/instructions.sh's x32 run) and
/// keeps an idle connection at 10.2 KiB of RSS (benches/idle_memory.py, 5,000 connections;
/// the target is < 16 KiB).
const INITIAL_READ_BUFFER: usize = 8 << 10;
/// Once this many reply bytes are waiting, the reader lets the writer run before reading more,
/// so a client that pipelines without pause gets replies while it sends (replies are written
/// once per read batch otherwise, which is what makes pipelined load one read and one write
/// per batch).
const WRITE_NUDGE: usize = 64 << 10;

/// Serves rpcx frames on `stream` until the peer closes it, it breaks, it idles past the idle
/// timeout, or it sends bad input or a bad token. Bytes and refusals are counted under
/// `transport`.
pub(crate) async fn serve_on<S, R: Registry>(
    core: &Rc<Core<R>>,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = RefCell::new(stream);
    let outbox = Rc::new(Outbox::default());
    // The core's sweeper looks at the connection's clocks once per tick of the server's clock
    // (no timer of its own: see `super::clock`).
    let watch = super::clock::needed(&core.config.limits).then(|| {
        let watch = Rc::new(Watch::new(Rc::clone(&outbox)));
        core.watches.add(&watch);
        watch
    });
    let reader = async {
        // A failed write needs no wake-up of the reader: a peer that makes writes fail (reset,
        // closed) makes the pending read end too, and the reader checks `failed` after each
        // read. Not racing the read against a failure signal saves a self-wake per batch
        // (one reactor loop: ~3,000 instructions per request at one call in flight, measured
        // with benches/instructions.sh).
        let end = read_loop(core, Half(&stream), &outbox, watch.as_deref(), transport).await;
        // Counted and logged before the writer closes the socket, so whoever sees the close
        // also sees the count.
        end.report(core, peer, transport);
        outbox.close();
        end
    };
    let writer = write_loop(Half(&stream), &outbox, core, transport);
    futures_lite::future::zip(reader, writer).await.0
}

/// Reply bytes waiting for the writer, shared by the reader, the writer and delayed replies.
#[derive(Default)]
struct Outbox {
    buf: RefCell<Vec<u8>>,
    /// Bytes the writer has taken and not finished writing.
    writing: Cell<usize>,
    /// Delayed replies not yet pushed.
    delayed: Cell<usize>,
    /// The reader is done: the writer flushes what is left (and what delayed replies still
    /// bring) and closes.
    closed: Cell<bool>,
    /// A write failed: the reader stops.
    failed: Cell<bool>,
    /// The writer, waiting for work (woken by delayed replies and by the reader closing).
    writer: Cell<Option<Waker>>,
    /// The reader, only while it waits for room (`poll_room`): the writer wakes it after a write.
    reader: Cell<Option<Waker>>,
    /// The sweeper found the connection quiet: the writer gives its buffers back.
    trim: Cell<bool>,
    /// The writer's buffers are over [`IDLE_KEEP`] (set after each write).
    bloated: Cell<bool>,
}

impl Outbox {
    #[inline]
    fn pending(&self) -> usize {
        self.buf.borrow().len() + self.writing.get()
    }

    /// Appends a finished reply from outside the connection task.
    #[inline]
    fn push(&self, bytes: &[u8]) {
        if self.failed.get() {
            return;
        }
        self.buf.borrow_mut().extend_from_slice(bytes);
        wake(&self.writer);
    }

    #[inline]
    fn close(&self) {
        self.closed.set(true);
        wake(&self.writer);
    }

    #[inline]
    fn fail(&self) {
        self.failed.set(true);
        wake(&self.reader);
    }

    /// What the writer does next: write, give its buffers back, or close.
    #[inline]
    fn poll_work(&self, cx: &mut TaskContext<'_>) -> Poll<Work> {
        if !self.buf.borrow().is_empty() {
            return Poll::Ready(Work::Write);
        }
        if self.closed.get() && self.delayed.get() == 0 {
            return Poll::Ready(Work::Close);
        }
        if self.trim.take() {
            return Poll::Ready(Work::Trim);
        }
        park(&self.writer, cx);
        Poll::Pending
    }

    /// Ready once the reader may read again.
    #[inline]
    fn poll_room(&self, cx: &mut TaskContext<'_>, max_bytes: usize, max_calls: usize) -> Poll<()> {
        if self.failed.get() || (self.pending() < max_bytes && self.delayed.get() < max_calls) {
            return Poll::Ready(());
        }
        park(&self.reader, cx);
        Poll::Pending
    }
}

/// What the writer does next.
enum Work {
    Write,
    /// The connection is quiet: give the buffers back.
    Trim,
    Close,
}

/// A connection quiet this long gives back what its buffers grew to past [`IDLE_KEEP`], so an
/// idle connection holds its 8 KiB read buffer and little else, whatever it did before.
pub(crate) const TRIM_AFTER: Duration = Duration::from_secs(1);

/// What a connection's buffers may keep once it is quiet (each).
const IDLE_KEEP: usize = 4 << 10;

/// What the sweeper found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// No request for `limits.idle_timeout`, and no reply owed.
    Idle,
    /// A frame not complete `limits.frame_timeout` after it started.
    Frame,
    /// Quiet for [`TRIM_AFTER`] with buffers over [`IDLE_KEEP`]: give them back, read on.
    Trim,
}

/// The connection's clocks, shared by the reader and its core's sweeper.
struct Watch {
    /// When the reader last took a request (a whole frame).
    last_request: Cell<Instant>,
    /// When the frame now partly in the read buffer started arriving (None: no partial frame).
    frame_started: Cell<Option<Instant>>,
    /// The sweeper's verdict: the reader stops (or trims).
    expired: Cell<Option<Expiry>>,
    /// The reader's buffers are over [`IDLE_KEEP`] (set after each batch).
    bloated: Cell<bool>,
    /// The reader, while a read is pending.
    reader: Cell<Option<Waker>>,
    /// Whether a reply is owed (not idle), and where the writer's buffers are.
    outbox: Rc<Outbox>,
}

impl Watch {
    fn new(outbox: Rc<Outbox>) -> Watch {
        Watch {
            last_request: Cell::new(Instant::now()),
            frame_started: Cell::new(None),
            expired: Cell::new(None),
            bloated: Cell::new(false),
            reader: Cell::new(None),
            outbox,
        }
    }

    /// After a read batch was taken: one clock read per batch, not per request.
    #[inline]
    fn taken(&self, took_requests: bool, partial: bool) {
        let now = Instant::now();
        if took_requests {
            self.last_request.set(now);
        }
        if !partial {
            self.frame_started.set(None);
        } else if took_requests || self.frame_started.get().is_none() {
            // The partial frame's first bytes came in the read just taken.
            self.frame_started.set(Some(now));
        }
    }

    fn expire(&self, why: Expiry) {
        self.expired.set(Some(why));
        wake(&self.reader);
    }

    /// Ready once the sweeper has given its verdict. Polled next to every pending read, so it
    /// only stores the waker (a pointer compare when it is already there): no timer here.
    #[inline]
    fn poll_expired(&self, cx: &mut TaskContext<'_>) -> Poll<Expiry> {
        if let Some(why) = self.expired.get() {
            return Poll::Ready(why);
        }
        park(&self.reader, cx);
        Poll::Pending
    }

    /// The sweeper's look at this connection at `now`: closes it (through the reader) once a
    /// frame has taken longer than `frame_timeout` from its first byte (a peer trickling
    /// bytes), or once it has sent no request for `idle_timeout` and is owed nothing (partial
    /// bytes are not a request); has it give back its buffers once it has been quiet for
    /// [`TRIM_AFTER`].
    fn check(&self, now: Instant, idle_timeout: Duration, frame_timeout: Duration) {
        if self.expired.get().is_some() {
            // The reader has not acted on the last verdict yet.
            return;
        }
        if let Some(started) = self.frame_started.get()
            && !frame_timeout.is_zero()
        {
            if now.saturating_duration_since(started) >= frame_timeout {
                self.expire(Expiry::Frame);
            }
            return;
        }
        let quiet = now.saturating_duration_since(self.last_request.get());
        let outbox = &self.outbox;
        if !idle_timeout.is_zero()
            && quiet >= idle_timeout
            && outbox.delayed.get() == 0
            && outbox.pending() == 0
        {
            return self.expire(Expiry::Idle);
        }
        let bloated = self.bloated.get() || outbox.bloated.get();
        if bloated && quiet >= TRIM_AFTER && self.frame_started.get().is_none() {
            self.bloated.set(false);
            outbox.bloated.set(false);
            outbox.trim.set(true);
            wake(&outbox.writer);
            self.expire(Expiry::Trim);
        }
    }
}

/// The connections of one core that have a clock to watch (see [`Watch`]).
#[derive(Default)]
pub(crate) struct Watches {
    list: RefCell<Vec<std::rc::Weak<Watch>>>,
    /// The sweeper, while it waits for a first connection.
    sweeper: Cell<Option<Waker>>,
}

impl Watches {
    fn add(&self, watch: &Rc<Watch>) {
        self.list.borrow_mut().push(Rc::downgrade(watch));
        wake(&self.sweeper);
    }
}

/// One core's sweeper: at each tick of the server's clock, looks at the clocks of the core's
/// connections (see [`Watch::check`]) and forgets those that have ended. Waits without a tick
/// while the core has no connection to watch.
pub(crate) async fn sweep(
    watches: Rc<Watches>,
    tick: std::sync::Arc<super::clock::Tick>,
    idle_timeout: Duration,
    frame_timeout: Duration,
) {
    loop {
        poll_fn(|cx| {
            if watches.list.borrow().is_empty() {
                park(&watches.sweeper, cx);
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await;
        tick.next().await;
        let now = Instant::now();
        watches
            .list
            .borrow_mut()
            .retain(|watch| match watch.upgrade() {
                Some(watch) => {
                    watch.check(now, idle_timeout, frame_timeout);
                    true
                }
                None => false,
            });
    }
}

#[inline]
fn park(slot: &Cell<Option<Waker>>, cx: &TaskContext<'_>) {
    let waker = match slot.take() {
        Some(w) if w.will_wake(cx.waker()) => w,
        _ => cx.waker().clone(),
    };
    slot.set(Some(waker));
}

#[inline]
fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

/// Reusable per-connection buffers, so a call allocates nothing.
struct Scratch {
    meta: Vec<u8>,
    payload: Vec<u8>,
    inflated: Vec<u8>,
    deflated: Vec<u8>,
    /// While a handler runs (set around the call), where its call's frame is: bytes of the read
    /// buffer's data before it (the fast lane takes frames without consuming them one by one);
    /// [`NOT_CALLING`] otherwise. A panic out of a batch with this set is that handler's,
    /// answered as its call's error; one without is a bug and goes on unwinding.
    calling_at: usize,
    /// The method of that handler. Meaningful only while `calling_at` is set, so the fast lane
    /// sets it once per run of calls to one method: one store per call around the handler.
    calling: MethodId,
}

/// [`Scratch::calling_at`] while no handler runs.
const NOT_CALLING: usize = usize::MAX;

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch {
            meta: Vec::new(),
            payload: Vec::new(),
            inflated: Vec::new(),
            deflated: Vec::new(),
            calling_at: NOT_CALLING,
            calling: MethodId::default(),
        }
    }
}

impl Scratch {
    /// Whether any buffer is over `keep` bytes.
    #[inline]
    fn over(&self, keep: usize) -> bool {
        [&self.meta, &self.payload, &self.inflated, &self.deflated]
            .iter()
            .any(|b| b.capacity() > keep)
    }

    /// Gives back every buffer over `keep` bytes: after each batch with [`SCRATCH_KEEP`] (what a
    /// big call grew), once the connection is quiet with [`IDLE_KEEP`].
    #[inline]
    fn release(&mut self, keep: usize) {
        for buf in [
            &mut self.meta,
            &mut self.payload,
            &mut self.inflated,
            &mut self.deflated,
        ] {
            release(buf, keep);
        }
    }
}

async fn read_loop<Rd: AsyncRead + Unpin, R: Registry>(
    core: &Rc<Core<R>>,
    mut rd: Rd,
    outbox: &Rc<Outbox>,
    watch: Option<&Watch>,
    transport: Transport,
) -> End {
    let limits = &core.config.limits;
    let counts = core.metrics.transport(transport);
    let mut rbuf = ReadBuf::new(INITIAL_READ_BUFFER);
    let mut scratch = Scratch::default();
    let mut route = Route::default();
    loop {
        poll_fn(|cx| {
            outbox.poll_room(
                cx,
                limits.max_pending_write_bytes,
                limits.max_calls_in_flight,
            )
        })
        .await;
        if outbox.failed.get() {
            return End::WriteFailed;
        }
        // Frames already buffered are taken first, as far as the limits allow.
        let buffered = rbuf.data().len();
        // Handlers' panics are caught here, once per batch rather than around every call.
        let taken = std::panic::catch_unwind(AssertUnwindSafe(|| {
            take_frames(core, &mut rbuf, outbox, &mut scratch, &mut route)
        }));
        let taken = match taken {
            Ok(taken) => taken,
            Err(panic) => match std::mem::replace(&mut scratch.calling_at, NOT_CALLING) {
                NOT_CALLING => std::panic::resume_unwind(panic),
                at => {
                    // The frames before it were answered.
                    rbuf.consume(at);
                    answer_panic(core, &mut rbuf, outbox, scratch.calling, panic)
                }
            },
        };
        match taken {
            Ok(Taken::Paused) => continue,
            Ok(Taken::NeedMore) => {}
            Err(end) => return end,
        }
        if let Some(watch) = watch {
            watch.taken(rbuf.data().len() < buffered, !rbuf.data().is_empty());
            let bloated = rbuf.capacity() > INITIAL_READ_BUFFER
                || scratch.over(IDLE_KEEP)
                || outbox.bloated.get();
            if bloated {
                watch.bloated.set(true);
            }
        }
        if rbuf.data().len() < buffered {
            scratch.release(SCRATCH_KEEP);
        }
        if outbox.buf.borrow().len() >= WRITE_NUDGE {
            futures_lite::future::yield_now().await;
        }
        let read = match watch {
            None => rd.read(rbuf.spare()).await,
            Some(watch) => {
                let read = futures_lite::future::or(
                    async { Ok(rd.read(rbuf.spare()).await) },
                    poll_fn(|cx| watch.poll_expired(cx).map(Err)),
                )
                .await;
                match read {
                    Ok(read) => read,
                    Err(Expiry::Idle) => return End::IdleTimeout,
                    Err(Expiry::Frame) => return End::FrameTimeout(limits.frame_timeout),
                    Err(Expiry::Trim) => {
                        watch.expired.set(None);
                        rbuf.trim();
                        scratch.release(IDLE_KEEP);
                        // What the connection gave back goes to the OS now, not when this
                        // core next allocates (once per quiet spell).
                        crate::buf::return_to_os();
                        continue;
                    }
                }
            }
        };
        let n = match read {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(e) => return End::ReadError(e),
        };
        if outbox.failed.get() {
            return End::WriteFailed;
        }
        rbuf.filled(n);
        counts.bytes_in.add(n as u64);
    }
}

/// How [`take_frames`] stopped.
enum Taken {
    /// The buffer holds no whole frame: read more.
    NeedMore,
    /// A limit is reached with frames still buffered: wait for room, then take again.
    Paused,
}

/// The method a connection called last, by its names' wire bytes: pipelined calls nearly always
/// name one method, and a frame that starts with the same bytes is decoded without parsing or
/// checking them again and dispatched without a lookup.
#[derive(Default)]
struct Route {
    names: protocol::Names,
    /// What `names` look up to (meaningful once names are kept).
    id: MethodId,
}

/// Answers the call at the front of `rbuf`, whose handler (of `method`) panicked: counted as
/// failed, and an error reply with rpcx's internal-error text unless it is oneway; then the
/// frames after it are taken as usual.
#[cold]
fn answer_panic<R: Registry>(
    core: &Rc<Core<R>>,
    rbuf: &mut ReadBuf,
    outbox: &Rc<Outbox>,
    method: MethodId,
    panic: Box<dyn std::any::Any + Send>,
) -> Result<Taken, End> {
    let text = dispatch::panicked(core, method, panic);
    let (frame, raw) = front_frame(rbuf.data(), &core.config.limits)?;
    if !frame.header.is_oneway() {
        error_reply(core, &mut outbox.buf.borrow_mut(), &frame, &text);
    }
    rbuf.consume(raw.len());
    Ok(Taken::Paused)
}

/// The frame at the front of `data`, one that was whole and decoded before (its call ran), and
/// its bytes.
fn front_frame<'a>(data: &'a [u8], limits: &Limits) -> Result<(Frame<'a>, &'a [u8]), End> {
    let total = match protocol::frame_len(data, limits.max_frame_bytes)? {
        Some(total) if total <= data.len() => total,
        _ => return Err(End::BadFrame(BadFrame::Truncated, "frame gone".into())),
    };
    let raw = &data[..total];
    Ok((
        protocol::decode_frame(raw, limits.max_metadata_entries)?,
        raw,
    ))
}

/// The counters a run of the fast lane adds to: every call is one request of the route's
/// method.
struct Tally<'a> {
    requests: &'a crate::metrics::Counter,
    method: &'a crate::metrics::MethodMetrics,
}

/// What [`plain_call`] did.
enum Plain {
    /// The call ran and its reply is in the outbox.
    Answered,
    /// Not a plain call: nothing was done; decode and handle it in full.
    NotOne,
    /// The call ran and did not answer at once (an error, a delay, an async handler): the
    /// general [`answer`] sends what it became.
    Ran(Invoked),
}

/// The fast lane: a call to the method the connection called last (its names the same bytes,
/// see [`Route`]), plain (no heartbeat, oneway or gzip bits), with no metadata, on a server
/// without tokens. Such a frame is decoded from its lengths alone and answered straight from
/// the request's header and names; it runs exactly what [`handle`] would run, and anything
/// else is left to it. Nearly every pipelined call is one. `at` is where `raw` starts in the
/// read buffer's data (for the answer to a panic).
#[inline(always)]
fn plain_call<R: Registry>(
    core: &Rc<Core<R>>,
    raw: &[u8],
    at: usize,
    route: &Route,
    tally: &Tally<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Plain {
    const NOT_PLAIN: u8 =
        protocol::flags::HEARTBEAT | protocol::flags::ONEWAY | protocol::flags::COMPRESS_MASK;
    let Some((names, payload)) = route.names.plain(raw) else {
        return Plain::NotOne;
    };
    // (The caller has checked that the server has no tokens.)
    if raw[2] & NOT_PLAIN != 0 {
        return Plain::NotOne;
    }
    tally.requests.inc();
    // (`scratch.calling` is the route's method: set by `plain_run`.)
    scratch.calling_at = at;
    let invoked = dispatch::invoke_plain(
        core,
        route.id,
        tally.method,
        raw[3] >> 4,
        payload,
        &mut scratch.meta,
        &mut scratch.payload,
    );
    scratch.calling_at = NOT_CALLING;
    match invoked {
        Invoked::Ready => {
            // Nothing to drop in `Ready`: no call to `Invoked`'s drop glue per request.
            std::mem::forget(invoked);
            protocol::encode_plain_reply(out, raw, names, &scratch.meta, &scratch.payload);
            Plain::Answered
        }
        other => Plain::Ran(other),
    }
}

/// The fast lane over as many frames of `data` as it can take: whole plain calls (see
/// [`plain_call`]) answered at once, while the replies waiting stay under `room` bytes. Says
/// how many bytes it took and, when it stopped at a plain call whose handler ran but did not
/// answer at once (an error, a delay, an async handler), what became of that call: the frame
/// is still at the front of what was not taken. A function of its own, not inlined: its loop
/// keeps its values in registers.
#[inline(never)]
fn plain_run<R: Registry>(
    core: &Rc<Core<R>>,
    data: &[u8],
    route: &Route,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    room: usize,
) -> (usize, Option<Invoked>) {
    let max_body = core.config.limits.max_frame_bytes;
    // Looked up once per run, not per call (through `core`, whose cells keep the compiler from
    // keeping them in registers).
    let tally = Tally {
        requests: &core.metrics.requests,
        method: core.metrics.method(route.id.index as usize),
    };
    scratch.calling = route.id;
    let mut taken = 0;
    loop {
        let rest = &data[taken..];
        let total = match protocol::frame_len(rest, max_body) {
            Ok(Some(total)) if total <= rest.len() && out.len() < room => total,
            _ => return (taken, None),
        };
        let _audit = audit::RequestPath::enter();
        match plain_call(core, &rest[..total], taken, route, &tally, out, scratch) {
            Plain::Answered => taken += total,
            Plain::NotOne => return (taken, None),
            Plain::Ran(invoked) => return (taken, Some(invoked)),
        }
    }
}

/// Decodes and handles every whole frame in `rbuf` while the connection's limits allow.
#[inline]
fn take_frames<R: Registry>(
    core: &Rc<Core<R>>,
    rbuf: &mut ReadBuf,
    outbox: &Rc<Outbox>,
    scratch: &mut Scratch,
    route: &mut Route,
) -> Result<Taken, End> {
    let limits = &core.config.limits;
    // Replies are appended to the outbox for the whole batch under one borrow; nothing else
    // touches it until this returns (delayed and async replies are pushed by tasks of their
    // own, later), and the writer's share does not change meanwhile.
    let mut out = outbox.buf.borrow_mut();
    let writing = outbox.writing.get();
    let plain_lane = core.auth.is_empty();
    loop {
        let mut ran = None;
        if plain_lane && outbox.delayed.get() < limits.max_calls_in_flight {
            let room = limits.max_pending_write_bytes.saturating_sub(writing);
            let taken;
            (taken, ran) = plain_run(core, rbuf.data(), route, &mut out, scratch, room);
            rbuf.consume(taken);
        }
        let (total, later) = if let Some(invoked) = ran {
            // A plain call whose handler did not answer at once: the general answer, from the
            // frame decoded in full (it decoded in part already).
            let (frame, raw) = front_frame(rbuf.data(), limits)?;
            let later = answer(core, &frame, raw, false, invoked, &mut out, scratch)?;
            (raw.len(), later)
        } else {
            let data = rbuf.data();
            let Some(total) = protocol::frame_len(data, limits.max_frame_bytes)? else {
                return Ok(Taken::NeedMore);
            };
            if data.len() < total {
                rbuf.reserve_frame(total);
                return Ok(Taken::NeedMore);
            }
            if outbox.delayed.get() >= limits.max_calls_in_flight
                || out.len() + writing >= limits.max_pending_write_bytes
            {
                return Ok(Taken::Paused);
            }
            let raw = &data[..total];
            let _audit = audit::RequestPath::enter();
            let max_metadata = limits.max_metadata_entries;
            let (frame, found) = match route.names.decode(raw, max_metadata) {
                Some(decoded) => (decoded?, Ok(route.id)),
                None => {
                    let frame = protocol::decode_frame(raw, max_metadata)?;
                    let found = R::lookup(frame.path, frame.method);
                    if let Ok(id) = found
                        && route.names.keep(raw, &frame)
                    {
                        route.id = id;
                    }
                    (frame, found)
                }
            };
            (total, handle(core, &frame, raw, found, &mut out, scratch)?)
        };
        rbuf.consume(total);
        if let Some(later) = later {
            // glommio runs a task's first poll as it is spawned, and a reply that is ready
            // then is pushed to the outbox at once: the batch lets go of it meanwhile.
            drop(out);
            later.start(core, outbox);
            out = outbox.buf.borrow_mut();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin, R: Registry>(
    mut wr: W,
    outbox: &Outbox,
    core: &Core<R>,
    transport: Transport,
) {
    let mut batch = Vec::new();
    loop {
        match poll_fn(|cx| outbox.poll_work(cx)).await {
            Work::Write => {}
            Work::Trim => {
                release(&mut batch, IDLE_KEEP);
                release(&mut outbox.buf.borrow_mut(), IDLE_KEEP);
                continue;
            }
            Work::Close => break,
        }
        std::mem::swap(&mut batch, &mut *outbox.buf.borrow_mut());
        outbox.writing.set(batch.len());
        let result = wr.write_all(&batch).await;
        outbox.writing.set(0);
        wake(&outbox.reader);
        if result.is_err() {
            outbox.fail();
            return;
        }
        core.metrics
            .transport(transport)
            .bytes_out
            .add(batch.len() as u64);
        batch.clear();
        release(&mut batch, SHRINK_ABOVE);
        outbox
            .bloated
            .set(batch.capacity() > IDLE_KEEP || outbox.buf.borrow().capacity() > IDLE_KEEP);
    }
    let _ = wr.close().await;
}

/// Handles one decoded frame: heartbeat echo, dispatch, reply or error reply, or the reply that
/// comes later, for the caller to start. `Err` means the input is refused and the connection
/// closes.
#[inline]
fn handle<R: Registry>(
    core: &Rc<Core<R>>,
    frame: &Frame<'_>,
    raw: &[u8],
    found: Result<MethodId, LookupError>,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<Option<Later>, End> {
    let metrics = &core.metrics;
    if frame.header.is_heartbeat() {
        // Echo the frame unchanged but for the response bit (PROTOCOL.md §3).
        metrics.heartbeats.inc();
        let at = out.len();
        out.extend_from_slice(raw);
        out[at + 2] |= protocol::flags::RESPONSE;
        return Ok(None);
    }
    metrics.requests.inc();
    let compressed = frame.header.compress() == COMPRESS_GZIP;
    let payload: &[u8] = if compressed {
        let limit = core.config.limits.max_decompressed_bytes;
        if let Err(e) = codec::gunzip(frame.payload, limit, &mut scratch.inflated) {
            let reason = match e {
                CodecError::TooLarge { .. } => BadFrame::DecompressedTooLarge,
                _ => BadFrame::BadGzip,
            };
            return Err(End::BadFrame(reason, e.to_string()));
        }
        &scratch.inflated
    } else {
        frame.payload
    };
    let call = dispatch::Call {
        path: frame.path,
        method: frame.method,
        serialize: frame.header.serialize,
        metadata: frame.metadata,
        payload,
    };
    if let Ok(id) = found {
        scratch.calling = id;
        scratch.calling_at = 0;
    }
    let invoked = dispatch::invoke_found(
        core,
        &call,
        found,
        &mut scratch.meta,
        &mut scratch.payload,
        Panics::Propagate,
    );
    scratch.calling_at = NOT_CALLING;
    answer(core, frame, raw, compressed, invoked, out, scratch)
}

/// Sends what became of a call: its reply (now, or later for the caller to start), an error
/// reply, or nothing (oneway). `Err`: the connection closes.
#[inline]
fn answer<R: Registry>(
    core: &Rc<Core<R>>,
    frame: &Frame<'_>,
    raw: &[u8],
    compressed: bool,
    invoked: Invoked,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<Option<Later>, End> {
    let oneway = frame.header.is_oneway();
    match invoked {
        // rpcx: an error reply unless oneway, then the connection closes.
        Invoked::Unauthenticated => {
            if !oneway {
                error_reply(core, out, frame, UNAUTHENTICATED);
            }
            return Err(End::Unauthenticated);
        }
        // Runs whether or not it is oneway (rpcx runs a oneway call's handler too).
        Invoked::Pending(deferred) => {
            return Ok(Some(Later::Pending(PendingReply::new(
                frame, raw, compressed, deferred,
            ))));
        }
        _ if oneway => {}
        Invoked::Ready => write_reply(out, frame, raw, compressed, scratch),
        Invoked::After(delay) => {
            let mut bytes = Vec::new();
            write_reply(&mut bytes, frame, raw, compressed, scratch);
            return Ok(Some(Later::Delayed(delay, bytes)));
        }
        Invoked::Expired(deadline) => {
            let mut bytes = Vec::new();
            error_reply(core, &mut bytes, frame, DEADLINE_EXCEEDED);
            return Ok(Some(Later::Delayed(deadline, bytes)));
        }
        Invoked::Failed(text) => error_reply(core, out, frame, &text),
    }
    Ok(None)
}

/// A reply that comes later, from a task of its own, so other calls go on meanwhile. It counts
/// in `outbox.delayed` (against `limits.max_calls_in_flight`, and the connection does not close
/// before it is written) from when it starts, right after the call that made it.
enum Later {
    /// An async handler's: written when it is done.
    Pending(PendingReply),
    /// These bytes, after this wait.
    Delayed(Duration, Vec<u8>),
}

impl Later {
    fn start<R: Registry>(self, core: &Rc<Core<R>>, outbox: &Rc<Outbox>) {
        // Counted before the task is spawned: glommio polls it at once, and it may be done.
        outbox.delayed.set(outbox.delayed.get() + 1);
        match self {
            Later::Pending(reply) => reply_later(core, outbox, reply),
            Later::Delayed(wait, bytes) => delay_reply(outbox, wait, bytes),
        }
    }
}

/// What an async handler's reply needs of its request.
struct PendingReply {
    oneway: bool,
    header: Header,
    /// The path and method in wire form (empty if oneway: no reply).
    names: Vec<u8>,
    compressed: bool,
    deferred: dispatch::Deferred,
}

impl PendingReply {
    fn new(
        frame: &Frame<'_>,
        raw: &[u8],
        compressed: bool,
        deferred: dispatch::Deferred,
    ) -> PendingReply {
        let oneway = frame.header.is_oneway();
        PendingReply {
            oneway,
            header: frame.header.reply(),
            names: if oneway {
                Vec::new()
            } else {
                protocol::names_wire(raw, frame).to_vec()
            },
            compressed,
            deferred,
        }
    }
}

/// Encodes a successful reply from the handler's scratch buffers. The reply is gzipped only when
/// the request was and the payload is over 1024 bytes (rpcx's rule).
#[inline(always)]
fn write_reply(
    out: &mut Vec<u8>,
    frame: &Frame<'_>,
    raw: &[u8],
    compressed: bool,
    scratch: &mut Scratch,
) {
    let mut header = frame.header.reply();
    let payload = gzip_if_big(
        &mut header,
        &scratch.payload,
        compressed,
        &mut scratch.deflated,
    );
    protocol::encode_reply(
        out,
        raw,
        header.flags,
        protocol::names_wire(raw, frame),
        &scratch.meta,
        payload,
    );
}

/// Encodes a successful reply; its payload is gzipped (into `deflated`) only when the request
/// was and the payload is over 1024 bytes (rpcx's rule).
#[inline]
fn encode_reply(
    out: &mut Vec<u8>,
    mut header: Header,
    names: &[u8],
    meta: &[u8],
    payload: &[u8],
    compressed: bool,
    deflated: &mut Vec<u8>,
) {
    let payload = gzip_if_big(&mut header, payload, compressed, deflated);
    protocol::encode_with_names(out, &header, names, meta, payload);
}

/// A reply's payload is gzipped (into `deflated`, and the header says so) only when the request
/// was and the payload is over 1024 bytes (rpcx's rule).
#[inline]
fn gzip_if_big<'a>(
    header: &mut Header,
    payload: &'a [u8],
    compressed: bool,
    deflated: &'a mut Vec<u8>,
) -> &'a [u8] {
    if compressed && payload.len() > 1024 {
        deflated.clear();
        codec::gzip(payload, deflated);
        header.set_compress(COMPRESS_GZIP);
        return deflated;
    }
    payload
}

/// Writes an async handler's reply when it is done, from a task of its own, so the connection
/// reads and answers other calls meanwhile. The call counts against
/// `limits.max_calls_in_flight` until then, and the connection does not close (even when
/// drained) before it is written. What this costs per call: the reply's path and method copied
/// out of the read buffer, the task, and the reply's encoding (besides the handler's own future).
fn reply_later<R: Registry>(core: &Rc<Core<R>>, outbox: &Rc<Outbox>, reply: PendingReply) {
    let PendingReply {
        oneway,
        header,
        names,
        compressed,
        deferred,
    } = reply;
    let (core, outbox) = (Rc::clone(core), Rc::clone(outbox));
    glommio::spawn_local(async move {
        let result = deferred.await;
        outbox.delayed.set(outbox.delayed.get() - 1);
        if !oneway {
            let mut bytes = Vec::new();
            match result {
                Ok(payload) => {
                    let mut deflated = Vec::new();
                    encode_reply(
                        &mut bytes,
                        header,
                        &names,
                        &[],
                        &payload,
                        compressed,
                        &mut deflated,
                    );
                }
                Err(text) => {
                    core.metrics.error_replies.inc();
                    let mut header = header;
                    header.set_status(STATUS_ERROR);
                    let mut meta = Vec::with_capacity(META_ERROR.len() + text.len() + 8);
                    protocol::push_meta(&mut meta, META_ERROR.as_bytes(), text.as_bytes());
                    protocol::encode_with_names(&mut bytes, &header, &names, &meta, &[]);
                }
            }
            outbox.push(&bytes);
        }
        // The writer may be waiting only for calls in flight to finish.
        wake(&outbox.writer);
    })
    .detach();
}

fn error_reply<R: Registry>(core: &Core<R>, out: &mut Vec<u8>, frame: &Frame<'_>, text: &str) {
    core.metrics.error_replies.inc();
    let mut header: Header = frame.header.reply();
    header.set_status(STATUS_ERROR);
    let mut meta = Vec::with_capacity(META_ERROR.len() + text.len() + 8);
    protocol::push_meta(&mut meta, META_ERROR.as_bytes(), text.as_bytes());
    protocol::encode(out, &header, frame.path, frame.method, &meta, &[]);
}

/// Sends `bytes` after `wait`, from a task of its own, so other calls go on meanwhile.
fn delay_reply(outbox: &Rc<Outbox>, wait: Duration, bytes: Vec<u8>) {
    let outbox = Rc::clone(outbox);
    glommio::spawn_local(async move {
        glommio::timer::sleep(wait).await;
        outbox.delayed.set(outbox.delayed.get() - 1);
        outbox.push(&bytes);
        // The writer may be waiting only for delayed replies to finish.
        wake(&outbox.writer);
    })
    .detach();
}

/// The allocation audit: with the `alloc-audit` feature, a thread-local flag is set while a
/// frame is decoded, dispatched and its reply encoded, so a counting allocator can tell
/// percore's own per-request allocations from the runtime's per-wait ones. Without the feature
/// it compiles to nothing.
pub mod audit {
    #[cfg(feature = "alloc-audit")]
    thread_local! {
        static IN_REQUEST_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// True while this thread is on the request path.
    #[cfg(feature = "alloc-audit")]
    pub fn in_request_path() -> bool {
        IN_REQUEST_PATH.with(|f| f.get())
    }

    /// Marks the request path for as long as it lives.
    pub(crate) struct RequestPath;

    impl RequestPath {
        #[inline]
        pub(crate) fn enter() -> RequestPath {
            #[cfg(feature = "alloc-audit")]
            IN_REQUEST_PATH.with(|f| f.set(true));
            RequestPath
        }
    }

    impl Drop for RequestPath {
        #[inline]
        fn drop(&mut self) {
            #[cfg(feature = "alloc-audit")]
            IN_REQUEST_PATH.with(|f| f.set(false));
        }
    }
}
