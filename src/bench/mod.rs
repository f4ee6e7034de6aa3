//! The load generator behind `percore bench`. It loads any rpcx server (percore or another)
//! through the public [`client`](crate::client) only.
//!
//! ```text
//!  --cores 1,2 ─► one glommio executor per CPU, pinned; connections dealt round-robin to them
//!  executor: its connections (one Client each) ─► workers (the -c calls in flight, dealt over
//!            the connections) ─► one HdrHistogram + counters per executor, merged at the end
//! ```
//!
//! - **Closed loop** (`--rate 0`): each worker sends its next call when the last one returns;
//!   latency is send to reply.
//! - **Constant rate** (`--rate R`): the rate is spread over the workers, each keeping a fixed
//!   schedule (`R / workers` calls per second) with at most one call in flight. Latency is
//!   measured from each call's **scheduled** send time, so a stalled server is charged for the
//!   calls it held back (coordinated omission corrected, as wrk2 does). A rate the workers cannot
//!   reach shows up as growing latency, not as a lower rate.
//! - **Warmup**: calls in the first `--warmup` are made but not counted; at constant rate the
//!   schedule starts afresh when the measurement does, so a backlog built up during the warmup
//!   is not charged to the measured calls.
//! - **Stop**: after `-n` calls (counted after the warmup, dealt over the workers) and/or after
//!   `-d`; a call in flight at the end is awaited (bounded by `--timeout`) and counted.
//! - **A dead server**: calls fail with `connection`, re-dials fail with `connect`. A worker
//!   backs off after each connect failure (10 ms, doubling to 320 ms) and after
//!   [`MAX_CONNECT_FAILURES`] in a row the whole run stops and reports what it saw: the bench
//!   never hangs on a server that is gone.
//!
//! - **Replies**: a call counts as OK only if its reply is the right answer
//!   ([`Workload::check`]); with `--no-verify` ([`BenchConfig::verify`] false) any reply that is
//!   not an rpcx error reply counts, and the report says the replies were not verified. That is
//!   for servers that answer without computing, like the null server, which echoes requests.
//!
//! The hot path allocates nothing: args are encoded once per worker, requests are encoded into
//! the connection's reused buffer, replies are checked in place, latencies go into a
//! pre-sized histogram. A per-call `--timeout` costs no timer per call (the client's deadline
//! sweeper is one timer per connection) but a clock read per call and a `__ServerTimeout`
//! metadata entry in every request, which the server must parse (percore's Arith also mirrors
//! it back as `echo-__ServerTimeout`); `--timeout 0` sends none.

mod report;
mod workload;

use std::cell::RefCell;
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
            s.parse::<crate::transport::dial::DialAddr>()
                .map_err(|e| BenchError::Config(e.to_string()))?;
        }
        if let Some(tls) = &self.tls {
            crate::transport::tls::client_config(tls)
                .map_err(|e| BenchError::Config(e.to_string()))?;
        }
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
    // Worker w (of all) uses connection w % connections.
    let workers_total = config.concurrency;
    let stats = Rc::new(RefCell::new(CoreResult {
        hist: histogram(),
        sent: 0,
        ok: 0,
        errors: [0; ERROR_KINDS],
        samples: Vec::new(),
        measured: Duration::ZERO,
    }));
    let mut tasks = Vec::new();
    for (c, client) in clients {
        for w in (c..workers_total).step_by(config.connections) {
            let quota = config.requests.map(|n| {
                n / workers_total as u64 + u64::from((w as u64) < n % workers_total as u64)
            });
            let worker = Worker {
                client: client.clone(),
                shared: Arc::clone(&shared),
                stats: Rc::clone(&stats),
                progress: Arc::clone(&progress),
                measure_from,
                end,
                quota,
                interval: (config.rate > 0.0)
                    .then(|| Duration::from_secs_f64(workers_total as f64 / config.rate)),
                offset: (config.rate > 0.0)
                    .then(|| Duration::from_secs_f64(w as f64 / config.rate)),
                start,
            };
            tasks.push(glommio::spawn_local(worker.run()));
        }
    }
    for task in tasks {
        task.await;
    }
    let mut stats = stats.borrow_mut();
    Some(CoreResult {
        hist: std::mem::replace(&mut stats.hist, histogram()),
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

struct Worker {
    client: Client,
    shared: Arc<Shared>,
    stats: Rc<RefCell<CoreResult>>,
    progress: Arc<Progress>,
    start: Instant,
    measure_from: Instant,
    end: Option<Instant>,
    /// Counted calls left (None: until `end`).
    quota: Option<u64>,
    /// Constant rate: time between this worker's sends, and its first send's offset.
    interval: Option<Duration>,
    offset: Option<Duration>,
}

impl Worker {
    async fn run(mut self) {
        let config = &self.shared.config;
        let Ok(work) = Workload::new(config.call, config.codec, config.payload_size) else {
            return;
        };
        let (service, method) = config.call.names();
        let verify = config.verify;
        let req = Request {
            timeout: config.timeout,
            ..Request::new(service, method, work.codec, &work.payload)
        };
        let mut connect_failures = 0u32;
        let mut backoff = Duration::from_millis(10);
        let mut next = self.offset.map(|o| self.start + o);
        let mut rebased = self.measure_from <= self.start;
        loop {
            if self.shared.abort.load(Ordering::Relaxed) || self.quota == Some(0) {
                return;
            }
            let now = Instant::now();
            if self.end.is_some_and(|end| now >= end) {
                return;
            }
            // Constant rate: the warmup's backlog is forgiven, the schedule restarts with the
            // measurement.
            if let (Some(at), Some(offset)) = (next, self.offset)
                && !rebased
                && now >= self.measure_from
            {
                rebased = true;
                next = Some(at.max(self.measure_from + offset));
            }
            // Constant rate: wait for this call's slot; latency counts from the slot.
            let scheduled = match (next, self.interval) {
                (Some(at), Some(interval)) => {
                    if at > now {
                        glommio::timer::sleep(at - now).await;
                    }
                    next = Some(at + interval);
                    at
                }
                _ => now,
            };
            let sent_at = if self.interval.is_some() {
                scheduled
            } else {
                Instant::now()
            };
            let result = self
                .client
                .call_with(&req, |reply| {
                    Ok(if verify {
                        work.check(reply)
                    } else {
                        !reply.header.is_error()
                    })
                })
                .await;
            let done = Instant::now();
            let counted = sent_at >= self.measure_from;
            if counted && let Some(q) = self.quota.as_mut() {
                *q -= 1;
            }
            let failure = match &result {
                Ok(true) => None,
                Ok(false) => Some(BAD_REPLY),
                Err(e) => Some(e.kind() as usize),
            };
            let connect_error = matches!(&result, Err(e) if e.kind() == ErrorKind::Connect);
            if counted {
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
                            let text = match &result {
                                Err(e) => e.to_string(),
                                Ok(_) if verify => {
                                    "the reply was not the expected answer".to_owned()
                                }
                                Ok(_) => "an error reply without an error text".to_owned(),
                            };
                            stats.samples.push((kind, text));
                        }
                    }
                }
            }
            match &result {
                Err(text) if connect_error => {
                    connect_failures += 1;
                    if connect_failures >= MAX_CONNECT_FAILURES {
                        if let Ok(mut reason) = self.shared.abort_reason.lock() {
                            reason.get_or_insert_with(|| {
                                format!(
                                    "stopped after {connect_failures} failed dials in a row: {text}"
                                )
                            });
                        }
                        self.shared.abort.store(true, Ordering::Relaxed);
                        return;
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(320));
                }
                _ => {
                    connect_failures = 0;
                    backoff = Duration::from_millis(10);
                }
            }
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
