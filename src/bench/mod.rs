//! The load generator behind `percore bench`. It loads any rpcx server (percore or another)
//! through the public [`client`](crate::client) only.
//!
//! ```text
//!  --cores 1,2 ─► one glommio executor per CPU, pinned; connections dealt round-robin to them
//!  executor: its connections (one Client each) ─► workers (the -c calls in flight, dealt over
//!            the connections) ─► one HdrHistogram + counters per executor, merged at the end
//!  constant rate: + one pacer per executor ─► due slots ─► idle workers ─► any connection
//! ```
//!
//! - **Closed loop** (`--rate 0`): each worker sends its next call when the last one returns;
//!   latency is send to reply.
//! - **Constant rate** (`--rate R`): each executor keeps a schedule of call slots, its share of
//!   `R` (in proportion to its workers), evenly spaced, and one pacer task that wakes when the
//!   next slot is due but at most once per 100 µs (`pacer::TICK`) and hands every slot due by
//!   then to an idle worker. Timer wakes are bounded by the tick whatever the rate, and the
//!   calls of one wake start in one executor tick, so those on one connection go out in one
//!   write. Slots are dealt round-robin over the executor's connections, a tick's worth of
//!   consecutive slots to each (`pacer::batch`), so one wake's calls mostly share one
//!   connection and one write (on a VM each write that wakes the server costs the generator
//!   ~10 µs) and every connection gets the same number of slots. At most `-c` calls are in
//!   flight: a slot that finds every worker busy waits for the first to finish its call, which
//!   takes it at once. Latency is measured from each call's **scheduled** time, so a stalled
//!   server is charged for the calls it held back, and the pacer's own delay (up to a tick) is
//!   in it too (coordinated omission corrected, as wrk2 does). A rate the workers cannot reach
//!   shows up as growing latency, not as a lower rate. The report's `send lag` is how late the
//!   calls started after their scheduled time: the generator's own share of the latency.
//! - **Warmup**: calls in the first `--warmup` are made but not counted; at constant rate the
//!   schedule starts afresh when the measurement does, so a backlog built up during the warmup
//!   is not charged to the measured calls.
//! - **Stop**: after `-n` calls (counted after the warmup, dealt over the workers; at constant
//!   rate over the executors' schedules) and/or after `-d`; a call in flight at the end is
//!   awaited (bounded by `--timeout`) and counted. At constant rate the pacer's first look at
//!   or after the end is its last: the slots due before the end go out if a worker is idle to
//!   take them (a backlog left when all are busy is not made, as a closed-loop worker stops at
//!   the end), and a run by time lasts its full `-d`.
//! - **A dead server**: calls fail with `connection`, re-dials fail with `connect`. After each
//!   connect failure a closed-loop worker, or at constant rate every call on that connection,
//!   backs off (10 ms, doubling to 320 ms; calls that failed on the same dial count once) and
//!   after [`MAX_CONNECT_FAILURES`] in a row the whole run stops and reports what it saw: the
//!   bench never hangs on a server that is gone.
//!
//! - **Replies**: a call counts as OK only if its reply is the right answer
//!   ([`Workload::check`]); with `--no-verify` ([`BenchConfig::verify`] false) any reply that is
//!   not an rpcx error reply counts, and the report says the replies were not verified. That is
//!   for servers that answer without computing, like the null server, which echoes requests.
//!
//! The hot path allocates nothing: args are encoded once per executor, requests are encoded
//! into the connection's reused buffer, replies are checked in place, latencies go into a
//! pre-sized histogram whose memory is written before the run, slots are handed over through
//! per-worker mailboxes and a pre-sized idle stack (the pacer's one timer per tick is not per
//! call). A per-call `--timeout` costs no timer per call (the client's deadline
//! sweeper is one timer per connection) but a clock read per call and a `__ServerTimeout`
//! metadata entry in every request, which the server must parse (percore's Arith also mirrors
//! it back as `echo-__ServerTimeout`); `--timeout 0` sends none.

mod pacer;
mod report;
mod workload;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use self::report::{LatencySummary, OutputOptions, PercentilePoint, Report, ReportConfig};
pub use self::workload::{CallKind, Workload};
use crate::client::{Client, ErrorKind, Options, Request};
use crate::codec::SerializeType;
use crate::metrics::Counter;

/// Consecutive failed dials after which a worker gives the run up.
pub const MAX_CONNECT_FAILURES: u32 = 6;

/// Everything `percore bench` was asked for.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Servers, `network@host:port`; connections are dealt over them in turn.
    pub servers: Vec<String>,
    /// Calls in flight in all (workers).
    pub concurrency: usize,
    /// Connections in all (at most `concurrency`).
    pub connections: usize,
    /// Stop after this many counted calls.
    pub requests: Option<u64>,
    /// Stop after this long (after the warmup).
    pub duration: Option<Duration>,
    /// Calls per second in all; 0 = closed loop.
    pub rate: f64,
    /// Calls made but not counted before the measurement starts.
    pub warmup: Duration,
    /// CPUs for the generator's executors (empty: one unpinned executor).
    pub cores: Vec<usize>,
    /// The call.
    pub call: CallKind,
    /// Echo's payload size in bytes.
    pub payload_size: usize,
    /// Codec on the wire.
    pub codec: SerializeType,
    /// Per-call timeout (`None`: none).
    pub timeout: Option<Duration>,
    /// Check each reply's payload against the expected answer. When false (`--no-verify`),
    /// any reply that is not an rpcx error reply counts as OK: for servers that answer without
    /// computing, such as the null server, which echoes each request back.
    pub verify: bool,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    /// Dial over TLS with these settings.
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// Settings of `kcp@` servers.
    pub kcp: crate::transport::kcp::KcpConfig,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            servers: vec!["tcp@127.0.0.1:8972".into()],
            concurrency: 1,
            connections: 1,
            requests: None,
            duration: Some(Duration::from_secs(10)),
            rate: 0.0,
            warmup: Duration::ZERO,
            cores: Vec::new(),
            call: CallKind::ArithMul,
            payload_size: 4096,
            codec: SerializeType::MsgPack,
            timeout: Some(Duration::from_secs(10)),
            verify: true,
            progress: false,
            tls: None,
            kcp: crate::transport::kcp::KcpConfig::default(),
        }
    }
}

/// Why a run could not start (a run that starts always ends with a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The configuration is inconsistent; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// A server could not be reached before the run.
    #[error("{0}")]
    Connect(String),
    /// An executor could not be started.
    #[error("cannot start the generator's executor on CPU {cpu:?}: {message}")]
    Executor {
        /// The CPU (None: unpinned).
        cpu: Option<usize>,
        /// Why.
        message: String,
    },
}

impl BenchConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if self.servers.is_empty() {
            return bad("no server (-s network@host:port)".into());
        }
        for s in &self.servers {
            s.parse::<crate::transport::addr::Addr>()
                .map_err(|e| BenchError::Config(e.to_string()))?;
        }
        if let Some(tls) = &self.tls {
            crate::transport::tls::client_config(tls)
                .map_err(|e| BenchError::Config(e.to_string()))?;
        }
        self.kcp
            .check()
            .map_err(|e| BenchError::Config(format!("--kcp {e}")))?;
        if self.concurrency == 0 || self.connections == 0 {
            return bad("--concurrency and --connections must be at least 1".into());
        }
        if self.connections > self.concurrency {
            return bad(format!(
                "--connections {} is more than --concurrency {}: every connection needs a call in flight",
                self.connections, self.concurrency
            ));
        }
        if self.requests.is_none() && self.duration.is_none() {
            return bad("give -n/--requests or -d/--duration".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return bad(format!(
                "--rate {} must be 0 (closed loop) or a positive number",
                self.rate
            ));
        }
        Workload::new(self.call, self.codec, self.payload_size).map_err(BenchError::Config)?;
        Ok(())
    }
}

/// One executor's results.
struct CoreResult {
    hist: Histogram<u64>,
    /// Constant rate: each counted call's start after its slot.
    lag: Option<Histogram<u64>>,
    sent: u64,
    ok: u64,
    errors: [u64; ERROR_KINDS],
    samples: Vec<(usize, String)>,
    /// From the end of the warmup to this executor's last call's end.
    measured: Duration,
}

/// Error kinds the bench counts: the client's, then a reply that failed its check.
const ERROR_KINDS: usize = ErrorKind::ALL.len() + 1;
const BAD_REPLY: usize = ErrorKind::ALL.len();

fn kind_name(i: usize) -> &'static str {
    ErrorKind::ALL.get(i).map_or("bad_reply", |k| k.name())
}

/// Counters the progress line reads from another thread (one writer each).
#[derive(Default)]
struct Progress {
    ok: Counter,
    errors: Counter,
}

/// What the executors share (read-only but for the abort flag).
struct Shared {
    config: BenchConfig,
    abort: AtomicBool,
    abort_reason: Mutex<Option<String>>,
    connect_failed: Mutex<Option<String>>,
    barrier: Barrier,
}

/// Runs the benchmark and returns its report.
pub fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    config.validate()?;
    let executors = config.cores.len().max(1).min(config.connections);
    let shared = Arc::new(Shared {
        config: config.clone(),
        abort: AtomicBool::new(false),
        abort_reason: Mutex::new(None),
        connect_failed: Mutex::new(None),
        barrier: Barrier::new(executors),
    });
    let progress: Vec<Arc<Progress>> = (0..executors)
        .map(|_| Arc::new(Progress::default()))
        .collect();
    let mut handles = Vec::new();
    for e in 0..executors {
        let cpu = config.cores.get(e).copied();
        let placement = match cpu {
            Some(cpu) => glommio::Placement::Fixed(cpu),
            None => glommio::Placement::Unbound,
        };
        let (shared, progress) = (Arc::clone(&shared), Arc::clone(&progress[e]));
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("percore-bench-{e}"))
            .io_memory(256 << 10)
            .spawn(move || run_executor(e, executors, shared, progress))
            .map_err(|err| BenchError::Executor {
                cpu,
                message: err.to_string(),
            })?;
        handles.push((cpu, handle));
    }
    let done = Arc::new(AtomicBool::new(false));
    let ticker = config.progress.then(|| {
        let (done, progress) = (Arc::clone(&done), progress.clone());
        std::thread::spawn(move || progress_loop(&done, &progress))
    });
    let mut results = Vec::new();
    let mut failure = None;
    for (cpu, handle) in handles {
        match handle.join() {
            Ok(Some(result)) => results.push(result),
            Ok(None) => {}
            Err(e) => {
                failure = Some(BenchError::Executor {
                    cpu,
                    message: e.to_string(),
                })
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(reason) = shared.connect_failed.lock().ok().and_then(|mut r| r.take()) {
        return Err(BenchError::Connect(reason));
    }
    let aborted = shared.abort_reason.lock().ok().and_then(|mut r| r.take());
    Ok(report::build(config, executors, results, aborted))
}

/// One executor: dial its connections, wait for the others, run its workers.
async fn run_executor(
    index: usize,
    executors: usize,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
) -> Option<CoreResult> {
    let config = &shared.config;
    let options = Options {
        serialize: config.codec,
        timeout: config.timeout,
        tls: config.tls.clone(),
        kcp: config.kcp.clone(),
        ..Options::default()
    };
    // Connection c lives on executor c % executors and talks to server c % servers.
    let mut clients = Vec::new();
    for c in (index..config.connections).step_by(executors) {
        let addr = &config.servers[c % config.servers.len()];
        match Client::new(addr, options.clone()) {
            Ok(client) => clients.push((c, client)),
            Err(e) => record_connect_failure(&shared, e.to_string()),
        }
    }
    for (_, client) in &clients {
        if let Err(e) = client.heartbeat(config.timeout).await {
            record_connect_failure(&shared, e.to_string());
            break;
        }
    }
    shared.barrier.wait();
    if shared
        .connect_failed
        .lock()
        .map(|r| r.is_some())
        .unwrap_or(true)
    {
        return None;
    }
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = config.duration.map(|d| measure_from + d);
    let stats = Rc::new(RefCell::new(CoreResult {
        hist: histogram(),
        lag: (config.rate > 0.0).then(histogram),
        sent: 0,
        ok: 0,
        errors: [0; ERROR_KINDS],
        samples: Vec::new(),
        measured: Duration::ZERO,
    }));
    let Ok(work) = Workload::new(config.call, config.codec, config.payload_size) else {
        return None; // validate() checked it
    };
    let calls = Rc::new(Calls {
        work,
        shared: Arc::clone(&shared),
        stats: Rc::clone(&stats),
        progress,
        measure_from,
    });
    // Worker w (of all) is dealt to connection w % connections, and with it to an executor;
    // -n is dealt over the workers.
    let workers_total = config.concurrency;
    let quota = |w: usize| {
        config
            .requests
            .map(|n| n / workers_total as u64 + u64::from((w as u64) < n % workers_total as u64))
    };
    let mut tasks = Vec::new();
    if config.rate > 0.0 {
        // Constant rate: this executor's workers, free to take a slot on any of its
        // connections, paced by one pacer (see `pacer`).
        let mine: Vec<usize> = clients
            .iter()
            .flat_map(|(c, _)| (*c..workers_total).step_by(config.connections))
            .collect();
        let share = mine.len() as f64 / workers_total as f64;
        let quota = config
            .requests
            .map(|_| mine.iter().filter_map(|&w| quota(w)).sum::<u64>());
        let schedule = pacer::Schedule::new(
            config.rate * share,
            start,
            Duration::from_secs_f64(index as f64 / config.rate),
            measure_from,
            end,
            quota,
            clients.len(),
            pacer::batch(config.rate * share),
        );
        let pace = Rc::new(pacer::Pace::new(schedule, mine.len()));
        let conns: Rc<[Paced]> = clients
            .into_iter()
            .map(|(_, client)| Paced {
                client,
                health: ConnHealth::default(),
            })
            .collect();
        for worker in 0..mine.len() {
            let run = paced_worker(
                Rc::clone(&calls),
                Rc::clone(&pace),
                Rc::clone(&conns),
                worker,
            );
            tasks.push(glommio::spawn_local(run));
        }
        tasks.push(glommio::spawn_local(run_pacer(
            Rc::clone(&pace),
            Arc::clone(&shared),
            end,
        )));
    } else {
        for (c, client) in clients {
            for w in (c..workers_total).step_by(config.connections) {
                let worker = Worker {
                    client: client.clone(),
                    calls: Rc::clone(&calls),
                    end,
                    quota: quota(w),
                };
                tasks.push(glommio::spawn_local(worker.run()));
            }
        }
    }
    for task in tasks {
        task.await;
    }
    let mut stats = stats.borrow_mut();
    Some(CoreResult {
        hist: std::mem::replace(&mut stats.hist, histogram()),
        lag: stats.lag.take(),
        sent: stats.sent,
        ok: stats.ok,
        errors: stats.errors,
        samples: std::mem::take(&mut stats.samples),
        measured: Instant::now().saturating_duration_since(measure_from),
    })
}

fn record_connect_failure(shared: &Shared, reason: String) {
    if let Ok(mut slot) = shared.connect_failed.lock() {
        slot.get_or_insert(reason);
    }
}

/// Latencies in nanoseconds, 3 significant digits, 1 ns to an hour: recording never allocates
/// nor faults a page in (longer latencies saturate at an hour).
fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), which are the only way construction can fail.
    let mut hist = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("valid constant histogram bounds");
    // Its counts are freshly mapped memory: write them all now, or the first calls of each
    // latency range fault their pages in during the run (on a VM a fresh huge page is
    // milliseconds, a stall that shows up as latency).
    hist.reset();
    hist
}

/// What every worker of an executor shares: the call, and where its outcome goes.
struct Calls {
    work: Workload,
    shared: Arc<Shared>,
    stats: Rc<RefCell<CoreResult>>,
    progress: Arc<Progress>,
    measure_from: Instant,
}

impl Calls {
    fn request(&self) -> Request<'_> {
        let config = &self.shared.config;
        let (service, method) = config.call.names();
        Request {
            timeout: config.timeout,
            ..Request::new(service, method, self.work.codec, &self.work.payload)
        }
    }

    /// Makes one call on `client`; returns its outcome and when it ended.
    async fn call(
        &self,
        client: &Client,
        req: &Request<'_>,
    ) -> (Result<bool, crate::client::Error>, Instant) {
        let verify = self.shared.config.verify;
        let result = client
            .call_with(req, |reply| {
                Ok(if verify {
                    self.work.check(reply)
                } else {
                    !reply.header.is_error()
                })
            })
            .await;
        (result, Instant::now())
    }

    /// Counts a call sent at `sent_at` (its slot, at constant rate) that ended at `done`.
    fn record(
        &self,
        result: &Result<bool, crate::client::Error>,
        sent_at: Instant,
        done: Instant,
        counted: bool,
    ) {
        if !counted {
            return;
        }
        let failure = match result {
            Ok(true) => None,
            Ok(false) => Some(BAD_REPLY),
            Err(e) => Some(e.kind() as usize),
        };
        let mut stats = self.stats.borrow_mut();
        stats.sent += 1;
        match failure {
            None => {
                stats.ok += 1;
                let ns = done.saturating_duration_since(sent_at).as_nanos() as u64;
                stats.hist.saturating_record(ns.max(1));
                self.progress.ok.inc();
            }
            Some(kind) => {
                stats.errors[kind] += 1;
                self.progress.errors.inc();
                // The message of the first error of each kind, for the report.
                if !stats.samples.iter().any(|(k, _)| *k == kind) {
                    let text = match result {
                        Err(e) => e.to_string(),
                        Ok(_) if self.shared.config.verify => {
                            "the reply was not the expected answer".to_owned()
                        }
                        Ok(_) => "an error reply without an error text".to_owned(),
                    };
                    stats.samples.push((kind, text));
                }
            }
        }
    }

    /// Constant rate: notes how late a counted call due at `slot` starts.
    fn record_lag(&self, slot: Instant) {
        let ns = Instant::now().saturating_duration_since(slot).as_nanos() as u64;
        if let Some(lag) = self.stats.borrow_mut().lag.as_mut() {
            lag.saturating_record(ns.max(1));
        }
    }

    fn aborted(&self) -> bool {
        self.shared.abort.load(Ordering::Relaxed)
    }

    /// Stops the run after `failures` failed dials in a row.
    fn abort(&self, failures: u32, error: &crate::client::Error) {
        if let Ok(mut reason) = self.shared.abort_reason.lock() {
            reason.get_or_insert_with(|| {
                format!("stopped after {failures} failed dials in a row: {error}")
            });
        }
        self.shared.abort.store(true, Ordering::Relaxed);
    }
}

fn is_connect_error(result: &Result<bool, crate::client::Error>) -> bool {
    matches!(result, Err(e) if e.kind() == ErrorKind::Connect)
}

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(320);

/// Closed loop: one call in flight on its connection, the next sent when it returns.
struct Worker {
    client: Client,
    calls: Rc<Calls>,
    end: Option<Instant>,
    /// Counted calls left (None: until `end`).
    quota: Option<u64>,
}

impl Worker {
    async fn run(mut self) {
        let calls = &*self.calls;
        let req = calls.request();
        let mut connect_failures = 0u32;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if calls.aborted() || self.quota == Some(0) {
                return;
            }
            let sent_at = Instant::now();
            if self.end.is_some_and(|end| sent_at >= end) {
                return;
            }
            let (result, done) = calls.call(&self.client, &req).await;
            let counted = sent_at >= calls.measure_from;
            if counted && let Some(q) = self.quota.as_mut() {
                *q -= 1;
            }
            calls.record(&result, sent_at, done, counted);
            match &result {
                Err(error) if is_connect_error(&result) => {
                    connect_failures += 1;
                    if connect_failures >= MAX_CONNECT_FAILURES {
                        calls.abort(connect_failures, error);
                        return;
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                _ => {
                    connect_failures = 0;
                    backoff = FIRST_BACKOFF;
                }
            }
        }
    }
}

/// A connection at constant rate, shared by the executor's workers.
struct Paced {
    client: Client,
    health: ConnHealth,
}

/// Failed dials of one connection at constant rate. Calls that failed on the same dial (the
/// client dials once for all callers waiting) count as one failure; after each, calls on the
/// connection wait out a backoff (10 ms, doubling to 320 ms) before dialing again.
#[derive(Default)]
struct ConnHealth {
    failures: Cell<u32>,
    backoff: Cell<Duration>,
    retry_at: Cell<Option<Instant>>,
}

impl ConnHealth {
    /// Notes a call's outcome; returns the failures in a row when the run must stop.
    fn note(&self, result: &Result<bool, crate::client::Error>, done: Instant) -> Option<u32> {
        if !is_connect_error(result) {
            self.failures.set(0);
            self.retry_at.set(None);
            return None;
        }
        if self.retry_at.get().is_some_and(|at| done < at) {
            return None; // the dial that already counted
        }
        let failures = self.failures.get() + 1;
        self.failures.set(failures);
        if failures >= MAX_CONNECT_FAILURES {
            return Some(failures);
        }
        let backoff = match failures {
            1 => FIRST_BACKOFF,
            _ => (self.backoff.get() * 2).min(MAX_BACKOFF),
        };
        self.backoff.set(backoff);
        self.retry_at.set(Some(done + backoff));
        None
    }
}

/// Constant rate: makes the calls of the slots it is given, on the slot's connection.
async fn paced_worker(calls: Rc<Calls>, pace: Rc<pacer::Pace>, conns: Rc<[Paced]>, id: usize) {
    let req = calls.request();
    let mut now = Instant::now();
    loop {
        if calls.aborted() {
            return;
        }
        let Some(slot) = pace.next(id, now).await else {
            return;
        };
        let conn = &conns[slot.conn];
        if let Some(at) = conn.health.retry_at.get() {
            let now = Instant::now();
            if at > now {
                glommio::timer::sleep(at - now).await;
            }
        }
        if slot.counted {
            calls.record_lag(slot.at);
        }
        let (result, done) = calls.call(&conn.client, &req).await;
        calls.record(&result, slot.at, done, slot.counted);
        if let Some(failures) = conn.health.note(&result, done) {
            if let Err(error) = &result {
                calls.abort(failures, error);
            }
            pace.finish();
            return;
        }
        now = done;
    }
}

/// The pacer of one executor: hands due slots to idle workers, at most once per tick. Ends
/// with the schedule (at the run's end, once `-n` is spent, or on abort).
async fn run_pacer(pace: Rc<pacer::Pace>, shared: Arc<Shared>, end: Option<Instant>) {
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            pace.finish();
            return;
        }
        let now = Instant::now();
        let Some(at) = pace.dispatch(now) else {
            break;
        };
        // At most one look per tick, and one at the end (slots due just before it go out).
        let mut wake = at.max(now + pacer::TICK);
        if let Some(end) = end
            && now < end
        {
            wake = wake.min(end);
        }
        glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
    }
    // A run by time lasts its full time, even when its last slot came a little earlier.
    if let Some(end) = end
        && !pace.quota_spent()
        && !shared.abort.load(Ordering::Relaxed)
    {
        let now = Instant::now();
        if end > now {
            glommio::timer::sleep(end - now).await;
        }
    }
}

/// Prints `[  3s] ok N  errors N  N calls/s` on stderr every second until `done`.
fn progress_loop(done: &AtomicBool, cores: &[Arc<Progress>]) {
    use std::io::Write as _;
    let start = Instant::now();
    let mut last_ok = 0;
    let mut tick = 1;
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() < Duration::from_secs(tick) {
            continue;
        }
        tick += 1;
        let ok: u64 = cores.iter().map(|p| p.ok.get()).sum();
        let errors: u64 = cores.iter().map(|p| p.errors.get()).sum();
        eprint!(
            "\r[{:>4}s] ok {ok:>10}  errors {errors:>8}  {:>10} calls/s ",
            tick - 1,
            ok - last_ok
        );
        let _ = std::io::stderr().flush();
        last_ok = ok;
    }
    if tick > 1 {
        eprintln!();
    }
}
