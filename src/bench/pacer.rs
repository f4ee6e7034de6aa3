//! Constant rate: one pacer per executor hands call slots to idle workers.
//!
//! ```text
//!  Schedule:   slot i of this executor is due at base + i * period; slots are dealt round-robin
//!              over the executor's connections, `batch` consecutive slots to each
//!  pacer task: wakes when the next slot is due, but at most once per TICK; hands every slot due
//!              by then to an idle worker (into the worker's mailbox, then wakes it)
//!  worker:     makes its call on the slot's connection, then parks in the idle stack; takes a
//!              slot itself only if it was left over from the pacer's last look
//! ```
//!
//! One timer wake dispatches every slot that fell due since the last one, so timers per second
//! are bounded by `1 / TICK` whatever the rate. The workers woken by one look all run before the
//! connections' writer tasks, so the calls of one look on one connection share one write. A slot
//! that falls due between two looks waits for the next look (that is what batches the calls),
//! except when every worker was busy at the last look: such a slot is taken by the first worker
//! to finish its call, at once, so an overloaded generator is limited by its workers, not by the
//! tick, and no timer fires for the backlog. A slot is charged from its scheduled time, whenever
//! it goes out.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The pacer sleeps at least this long between two looks at the schedule: slots falling due in
/// between go out together on its next look, so a slot waits up to a tick (plus the executor's
/// own delays) before its call starts. 100 µs: on the 2-CPU VM this was tuned on, 50 µs cost the
/// generator ~25% more CPU (every look is a timer and an executor wake-up) for no lower tail,
/// and 200 µs added ~70 µs to every call's latency.
pub(super) const TICK: Duration = Duration::from_micros(100);

/// Slots dealt to one connection before the next: a tick's worth at this executor's rate, so
/// the calls of one look mostly go out on one connection, in one write.
pub(super) fn batch(rate: f64) -> usize {
    (rate * TICK.as_secs_f64()).round().max(1.0) as usize
}

/// One call to make: when it was due, whether it is counted (made after the warmup), and the
/// index of the executor's connection that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub at: Instant,
    pub counted: bool,
    pub conn: usize,
}

/// What the schedule has next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// A slot is due (at this time, not after now).
    Due(Instant),
    /// Nothing is due before this time.
    Wait(Instant),
    /// No slot will ever be due: the run's end, its `-n`, or the schedule ran out.
    Done,
}

/// One executor's slots: `rate` per second from the start, afresh from the end of the warmup.
#[derive(Debug)]
pub(super) struct Schedule {
    period_ns: f64,
    /// This executor's phase (so executors' slots interleave rather than coincide).
    offset: Duration,
    measure_from: Instant,
    end: Option<Instant>,
    /// Counted slots left (None: no `-n`).
    quota: Option<u64>,
    base: Instant,
    /// Slots issued since `base`.
    index: u64,
    counted: bool,
    conns: u64,
    batch: u64,
    /// Slots issued in all (warmup and measured), for the round-robin over connections.
    dealt: u64,
}

impl Schedule {
    /// `rate` calls per second (this executor's share), over `conns` connections.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        rate: f64,
        start: Instant,
        offset: Duration,
        measure_from: Instant,
        end: Option<Instant>,
        quota: Option<u64>,
        conns: usize,
        batch: usize,
    ) -> Schedule {
        let counted = measure_from <= start;
        Schedule {
            period_ns: 1e9 / rate,
            offset,
            measure_from,
            end,
            quota,
            base: if counted { measure_from } else { start } + offset,
            index: 0,
            counted,
            conns: conns.max(1) as u64,
            batch: batch.max(1) as u64,
            dealt: 0,
        }
    }

    fn slot_time(&self) -> Instant {
        self.base + Duration::from_nanos((self.index as f64 * self.period_ns) as u64)
    }

    /// What is next at `now`. Passing the end of the warmup restarts the schedule there: slots
    /// of the warmup not yet made are forgiven, not charged to the measurement.
    pub(super) fn next(&mut self, now: Instant) -> Next {
        if !self.counted && now >= self.measure_from {
            self.counted = true;
            self.base = self.measure_from + self.offset;
            self.index = 0;
        }
        if self.quota == Some(0) && self.counted {
            return Next::Done;
        }
        let at = self.slot_time();
        if self.counted {
            // The schedule ends with the last slot due before the end; which of those still
            // go out once the end has passed is the pacer's business (`Pace::dispatch`).
            if self.end.is_some_and(|end| at >= end) {
                return Next::Done;
            }
        } else if at >= self.measure_from {
            return Next::Wait(self.measure_from);
        }
        if at > now {
            Next::Wait(at)
        } else {
            Next::Due(at)
        }
    }

    /// Takes the slot due at `at` (as just returned by [`Schedule::next`]).
    fn issue(&mut self, at: Instant) -> Slot {
        self.index += 1;
        if self.counted
            && let Some(q) = self.quota.as_mut()
        {
            *q -= 1;
        }
        let conn = ((self.dealt / self.batch) % self.conns) as usize;
        self.dealt += 1;
        Slot {
            at,
            counted: self.counted,
            conn,
        }
    }

    /// The slot due at `now`, if one is.
    #[cfg(test)]
    fn take(&mut self, now: Instant) -> Result<Slot, Next> {
        match self.next(now) {
            Next::Due(at) => Ok(self.issue(at)),
            other => Err(other),
        }
    }
}

#[derive(Default)]
struct Mailbox {
    slot: Cell<Option<Slot>>,
    waker: RefCell<Option<Waker>>,
    /// In the idle list.
    parked: Cell<bool>,
}

/// The schedule and the idle workers of one executor, shared by its pacer and its workers.
pub(super) struct Pace {
    schedule: RefCell<Schedule>,
    /// Idle workers (indices into `mail`); a stack, so the most recently idle worker (whose
    /// memory is warm) goes first. Its capacity is the number of workers: it never grows.
    idle: RefCell<Vec<usize>>,
    mail: Vec<Mailbox>,
    /// When the pacer last handed out the due slots.
    last_look: Cell<Option<Instant>>,
    done: Cell<bool>,
}

impl Pace {
    pub(super) fn new(schedule: Schedule, workers: usize) -> Pace {
        Pace {
            schedule: RefCell::new(schedule),
            idle: RefCell::new(Vec::with_capacity(workers)),
            mail: (0..workers).map(|_| Mailbox::default()).collect(),
            last_look: Cell::new(None),
            done: Cell::new(false),
        }
    }

    /// Worker `worker`'s next slot (it has just finished a call, at `now`). A slot left over
    /// from the pacer's last look (every worker was busy then) it takes at once; otherwise it
    /// waits for the pacer to hand it one, so slots falling due between two looks go out
    /// together. None: the schedule is over.
    pub(super) async fn next(&self, worker: usize, now: Instant) -> Option<Slot> {
        if self.done.get() {
            return None;
        }
        if let Some(look) = self.last_look.get() {
            let mut schedule = self.schedule.borrow_mut();
            // `now` may be a little older than the pacer's last look. After the end a leftover
            // is a backlog of an overloaded run, not made (as a closed-loop worker stops).
            let now = now.max(look);
            if let Next::Due(at) = schedule.next(now)
                && at <= look
                && schedule.end.is_none_or(|end| now < end)
            {
                return Some(schedule.issue(at));
            }
        }
        poll_fn(|cx| self.poll_mailbox(worker, cx)).await
    }

    fn poll_mailbox(&self, worker: usize, cx: &Context<'_>) -> Poll<Option<Slot>> {
        let mail = &self.mail[worker];
        if let Some(slot) = mail.slot.take() {
            return Poll::Ready(Some(slot));
        }
        if self.done.get() {
            return Poll::Ready(None);
        }
        let mut waker = mail.waker.borrow_mut();
        match &*waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        if !mail.parked.replace(true) {
            self.idle.borrow_mut().push(worker);
        }
        Poll::Pending
    }

    /// The pacer's look at the schedule: hands every slot due at `now` to an idle worker.
    /// Returns when to look again (None: the schedule is over).
    ///
    /// Its first look at or after the run's end is its last: the slots due before the end go to
    /// the idle workers then, however late the look (the lateness is charged to them), and what
    /// no idle worker can take is the backlog of an overloaded run, not made.
    pub(super) fn dispatch(&self, now: Instant) -> Option<Instant> {
        self.last_look.set(Some(now));
        let last = self.schedule.borrow().end.is_some_and(|end| now >= end);
        match self.hand_out(now) {
            Next::Wait(at) if !last => Some(at),
            // Every worker is busy: the due slots wait for the first to finish its call, which
            // takes one itself. Look again a tick later.
            Next::Due(_) if !last => Some(now),
            _ => {
                self.finish();
                None
            }
        }
    }

    /// Hands the slots due at `now` to idle workers while there are any; returns what is next.
    fn hand_out(&self, now: Instant) -> Next {
        let mut schedule = self.schedule.borrow_mut();
        let mut idle = self.idle.borrow_mut();
        loop {
            let next = schedule.next(now);
            let Next::Due(at) = next else {
                return next;
            };
            let Some(worker) = idle.pop() else {
                return next;
            };
            let slot = schedule.issue(at);
            let mail = &self.mail[worker];
            mail.parked.set(false);
            mail.slot.set(Some(slot));
            // Waking only queues the worker: it runs after the pacer yields, with the others
            // woken in this look, before the connections' writers run.
            if let Some(w) = mail.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Ends the schedule: idle workers wake up to find it over.
    pub(super) fn finish(&self) {
        self.done.set(true);
        let mut idle = self.idle.borrow_mut();
        while let Some(worker) = idle.pop() {
            let mail = &self.mail[worker];
            mail.parked.set(false);
            if let Some(w) = mail.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Whether the `-n` quota was used up (rather than the run's time).
    pub(super) fn quota_spent(&self) -> bool {
        self.schedule.borrow().quota == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Takes every slot the schedule gives by `until`, looking every `step`.
    fn drain(s: &mut Schedule, from: Instant, until: Instant, step: Duration) -> Vec<Slot> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= until {
            while let Ok(slot) = s.take(now) {
                assert!(slot.at <= now, "a slot is never given before it is due");
                out.push(slot);
            }
            now += step;
        }
        out
    }

    #[test]
    fn rate_is_exact_and_slots_are_evenly_spaced() {
        let t0 = Instant::now();
        // 1000/s for 1 s, looked at every 10 ms: 1000 slots, 1 ms apart, in batches.
        let mut s = Schedule::new(1000.0, t0, ms(0), t0, Some(t0 + ms(1000)), None, 4, 1);
        let slots = drain(&mut s, t0, t0 + ms(1100), ms(10));
        assert_eq!(slots.len(), 1000);
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(slot.at, t0 + ms(i as u64));
            assert!(slot.counted);
            assert_eq!(slot.conn, i % 4, "round-robin over the connections");
        }
        assert_eq!(s.next(t0 + ms(1100)), Next::Done);
    }

    #[test]
    fn batch_deals_runs_of_slots_to_each_connection() {
        let t0 = Instant::now();
        let mut s = Schedule::new(1000.0, t0, ms(0), t0, None, Some(12), 3, 2);
        let conns: Vec<usize> = drain(&mut s, t0, t0 + ms(20), ms(1))
            .iter()
            .map(|s| s.conn)
            .collect();
        assert_eq!(conns, [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn the_warmup_backlog_is_forgiven_and_the_measurement_starts_afresh() {
        let t0 = Instant::now();
        let from = t0 + ms(100);
        let mut s = Schedule::new(100.0, t0, ms(3), from, Some(from + ms(100)), None, 1, 1);
        // Warmup slots at 3, 13, ... ms; take the first two only.
        assert_eq!(
            s.take(t0 + ms(20)).map(|s| (s.at, s.counted)),
            Ok((t0 + ms(3), false))
        );
        assert!(s.take(t0 + ms(20)).is_ok());
        assert!(s.take(t0 + ms(20)).is_err());
        // Late: at 150 ms the warmup's 8 unmade slots are dropped, the measured ones from
        // 103 ms are due.
        let slots = drain(&mut s, from + ms(50), from + ms(200), ms(1));
        assert_eq!(slots.len(), 10);
        assert!(slots.iter().all(|s| s.counted));
        assert_eq!(slots[0].at, from + ms(3));
        assert_eq!(slots[9].at, from + ms(93));
    }

    #[test]
    fn warmup_waits_for_the_measurement_when_its_slots_are_done() {
        let t0 = Instant::now();
        let from = t0 + ms(10);
        let mut s = Schedule::new(100.0, t0, ms(0), from, None, Some(1), 1, 1);
        assert!(s.take(t0).is_ok_and(|s| !s.counted));
        assert_eq!(s.next(t0 + ms(5)), Next::Wait(from));
        assert!(s.take(from).is_ok_and(|s| s.counted && s.at == from));
        assert_eq!(s.next(from + ms(100)), Next::Done, "-n 1 is spent");
    }

    #[test]
    fn the_last_look_after_the_end_hands_out_what_idle_workers_can_take() {
        let t0 = Instant::now();
        let s = Schedule::new(1000.0, t0, ms(0), t0, Some(t0 + ms(10)), None, 1, 1);
        let pace = Pace::new(s, 2);
        let cx = Context::from_waker(Waker::noop());
        assert_eq!(
            pace.dispatch(t0),
            Some(t0),
            "no idle worker yet: look again"
        );
        for w in 0..2 {
            assert!(pace.poll_mailbox(w, &cx).is_pending());
        }
        // A look at 2 ms late, after the end: the two idle workers take the oldest two slots,
        // the other 8 due before the end are the backlog of an overloaded run, and that was
        // the last look.
        assert_eq!(pace.dispatch(t0 + ms(12)), None);
        for w in 0..2 {
            assert!(matches!(pace.poll_mailbox(w, &cx), Poll::Ready(Some(s)) if s.at < t0 + ms(2)));
        }
        assert!(pace.done.get() && !pace.quota_spent());
    }

    #[test]
    fn idle_workers_get_the_due_slots_and_a_leftover_goes_to_the_first_free_worker() {
        let t0 = Instant::now();
        let s = Schedule::new(1000.0, t0, ms(0), t0, None, Some(4), 1, 1);
        let pace = Pace::new(s, 2);
        let cx = Context::from_waker(Waker::noop());
        let next = |w, now| {
            let fut = std::pin::pin!(pace.next(w, now));
            fut.poll(&mut Context::from_waker(Waker::noop()))
        };
        let at = |p: Poll<Option<Slot>>| match p {
            Poll::Ready(Some(slot)) => slot.at,
            other => panic!("{other:?}"),
        };
        // Both workers park: nothing was handed out yet.
        assert!(next(0, t0).is_pending());
        assert!(next(1, t0).is_pending());
        assert!(pace.poll_mailbox(1, &cx).is_pending(), "parks once");
        assert_eq!(pace.idle.borrow().len(), 2);
        // The look at 2 ms finds three slots due: the two idle workers get one each (the most
        // recently parked first), the third is left over.
        assert_eq!(pace.dispatch(t0 + ms(2)), Some(t0 + ms(2)));
        assert_eq!(at(pace.poll_mailbox(1, &cx)), t0);
        assert_eq!(at(pace.poll_mailbox(0, &cx)), t0 + ms(1));
        // Worker 1 finishes first and takes the leftover at once...
        assert_eq!(at(next(1, t0 + ms(2) + ms(1) / 2)), t0 + ms(2));
        // ...but a slot that fell due after the look waits for the next one.
        assert!(next(0, t0 + ms(3) + ms(1) / 2).is_pending());
        assert_eq!(pace.dispatch(t0 + ms(4)), None, "-n 4 is spent");
        assert_eq!(at(pace.poll_mailbox(0, &cx)), t0 + ms(3));
        assert!(pace.done.get() && pace.quota_spent());
        assert_eq!(next(1, t0 + ms(5)), Poll::Ready(None));
    }
}
