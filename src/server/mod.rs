//! Executors per core, listeners, accept loops and shutdown.
//!
//! [`start`] binds every listener socket on the calling thread first (so a port-0 address gets
//! one port that every core then shares, and a bind error is reported before any thread starts),
//! loads the TLS certificates, then starts one glommio executor per allowed CPU, pinned to it.
//! Each executor gets its own SO_REUSEPORT socket per TCP-family listen address (`tcp`,
//! `reuseport`, `http`), so the kernel spreads new connections over the cores and nothing is
//! shared between them but the read-only config. A `unix` listener is one socket that every core
//! accepts from (see [`crate::transport::unix`] for why); its file is removed once every core
//! has stopped accepting.
//!
//! Every accepted connection goes through `accept::serve`, the one accept path (limit,
//! registration, span, close reason); sockets the cores accept go on to `sniff`, the one router,
//! whose first bytes pick rpcx frames, TLS, HTTP CONNECT or HTTP. Transports run by a reactor
//! thread of their own hand their streams to the cores through a [`Handoff`].

mod accept;
mod clock;
mod conn;
#[cfg(feature = "alloc-audit")]
pub use conn::audit::in_request_path;
mod dispatch;
mod end;
mod gateway;
mod http;
#[doc(hidden)]
pub use http::fuzz_reader;
mod jsonrpc;
#[doc(hidden)]
pub use jsonrpc::fuzz_body as fuzz_jsonrpc;
mod logs;
mod quic;
mod sniff;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Poll, Waker};

use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::metrics::{Close, CoreMetrics, Transport};
use crate::service::{CoreInfo, Registry};
use crate::transport;
use crate::transport::addr::{Addr, Network};
pub use accept::Handoff;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    // The cause is in the text; not a `source` too, so a printed chain does not repeat it.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: String,
        error: transport::tcp::ListenError,
    },
    #[error("cannot listen on {addr}: {error}")]
    ListenUnix {
        addr: String,
        error: transport::unix::UnixListenError,
    },
    #[error("{0}")]
    Tls(#[from] transport::tls::TlsError),
    #[error("{0}")]
    Services(#[from] crate::service::SectionError),
    #[error("cannot read the CPUs this process may run on: {0}")]
    Affinity(std::io::Error),
    #[error("server.cores = {wanted}, but this process may run on only {allowed} CPUs ({cpus:?})")]
    TooManyCores {
        wanted: usize,
        allowed: usize,
        cpus: Vec<usize>,
    },
    #[error("cannot start the executor for CPU {cpu}: {message}")]
    Executor { cpu: usize, message: String },
    #[error("the executor for CPU {cpu} panicked")]
    Panicked { cpu: usize },
    #[error(
        "cannot start the {name} thread: {error} (is the process at its thread limit? ulimit -u, TasksMax= in the unit)"
    )]
    Thread {
        name: &'static str,
        error: std::io::Error,
    },
    #[error("{0}")]
    Quic(#[from] transport::quic::QuicError),
}

/// A running server. Dropping it does not stop the cores (call [`ServerHandle::shutdown`]), but
/// it does close its `quic@` listeners at once.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    listen: Vec<Addr>,
    cpus: Vec<usize>,
    stop: Arc<Stop>,
    threads: Vec<(usize, glommio::ExecutorJoinHandle<()>)>,
    metrics: Vec<Arc<CoreMetrics>>,
    /// (service, method) of every registered method, indexed like the per-method counters.
    method_names: Arc<[(&'static str, &'static str)]>,
    health: Arc<Health>,
    /// The `kcp@` listeners' reactors, stopped by `join` once the cores are done.
    kcp: Vec<transport::kcp::KcpListener>,
    /// `[registry.etcd]`: this server's keys in etcd.
    registration: Option<Arc<crate::etcd::Registration>>,
    /// The `quic@` listeners' threads, closed after the cores have drained.
    quic: Vec<transport::quic::QuicListener>,
    /// How long `join` lets the reactors (QUIC, KCP) deliver the cores' last replies.
    drain_timeout: std::time::Duration,
}

impl ServerHandle {
    /// Each `kcp@` listener's counters (sessions, datagrams, drops by reason, FEC, resends).
    pub fn kcp_stats(&self) -> Vec<Arc<transport::kcp::KcpStats>> {
        self.kcp.iter().map(|l| Arc::clone(l.stats())).collect()
    }

    /// The etcd registration, when `[registry.etcd]` is configured.
    pub fn registration(&self) -> Option<Arc<crate::etcd::Registration>> {
        self.registration.clone()
    }

    /// (service, method) of every registered method, in per-method counter order.
    pub fn method_names(&self) -> Arc<[(&'static str, &'static str)]> {
        Arc::clone(&self.method_names)
    }

    /// The bound socket address of each TCP-family listen address (`tcp`, `reuseport`, `http`),
    /// in config order, port 0 resolved, then those of reactor listeners (`kcp`); `unix`
    /// listeners have none and are left out.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Every listen address in config order, as clients dial it (port 0 resolved).
    pub fn listen_addrs(&self) -> &[Addr] {
        &self.listen
    }

    /// The CPUs the executors are pinned to, one per core.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Each core's counters.
    pub fn metrics(&self) -> &[Arc<CoreMetrics>] {
        &self.metrics
    }

    /// Each `quic@` listener's own counters (handshakes, streams, refusals), in config order;
    /// its calls and connections are in the cores' metrics under transport `quic`.
    pub fn quic_counters(&self) -> Vec<(Addr, Arc<transport::quic::QuicCounters>)> {
        self.listen
            .iter()
            .filter(|a| a.network == transport::addr::Network::Quic)
            .cloned()
            .zip(self.quic.iter().map(|q| Arc::clone(q.counters())))
            .collect()
    }

    /// Whether every core listens, and whether the server is draining; for `/readyz`.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Blocks until every core has its listeners and runs its accept loops (the moment to tell
    /// systemd READY=1): true. False if a core failed to start (its executor could not be
    /// built; [`ServerHandle::join`] says why) or the server was stopped first.
    pub fn wait_ready(&self) -> bool {
        self.health.wait_ready()
    }

    /// Starts a graceful stop: every core stops accepting, stops reading new requests, finishes
    /// and flushes what is in flight, and closes within `server.drain_timeout`. With
    /// `[registry.etcd]`, the server's keys are deleted first (this blocks for at most
    /// `registry.etcd.timeout` plus `deregister_grace`), while the cores still serve.
    pub fn shutdown(&self) {
        self.stopper().shutdown();
    }

    /// A handle that can start the shutdown from another thread (a signal handler thread).
    pub fn stopper(&self) -> Stopper {
        Stopper(
            Arc::clone(&self.stop),
            Arc::clone(&self.health),
            self.registration.clone(),
        )
    }

    /// Waits for every core to finish, then for the `quic@` listeners to close their
    /// connections (with an application close, once the streams the cores closed are
    /// acknowledged, within `server.drain_timeout`) and for the KCP reactors to deliver what the
    /// cores last wrote (within `server.drain_timeout` more), and stops them.
    pub fn join(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        let (quic, drain_timeout) = (self.quic, self.drain_timeout);
        for (cpu, thread) in self.threads {
            let error = match thread.join() {
                Ok(()) => continue,
                Err(glommio::GlommioError::BuilderError(
                    glommio::BuilderErrorKind::ThreadPanic(_),
                )) => ServerError::Panicked { cpu },
                Err(e) => ServerError::Executor {
                    cpu,
                    message: e.to_string(),
                },
            };
            if result.is_ok() {
                result = Err(error);
            }
        }
        for listener in quic {
            listener.shutdown(drain_timeout);
        }
        for kcp in self.kcp {
            kcp.shutdown(drain_timeout);
        }
        result
    }
}

/// Starts a graceful shutdown of a server from any thread.
#[derive(Clone)]
pub struct Stopper(
    Arc<Stop>,
    Arc<Health>,
    Option<Arc<crate::etcd::Registration>>,
);

impl Stopper {
    /// Marks the server draining (`/readyz` 503), deletes its etcd keys if it registered any
    /// (blocking, bounded: clients leave it while it still serves), then stops the cores.
    pub fn shutdown(&self) {
        self.1.draining.store(true, Ordering::SeqCst);
        self.1.wake();
        if let Some(registration) = &self.2 {
            registration.deregister();
        }
        self.0.trigger();
    }
}

/// Readiness as the admin endpoint and systemd see it. Written only at start-up and shutdown,
/// never on the request path.
#[derive(Debug)]
pub struct Health {
    cores: usize,
    ready_cores: AtomicUsize,
    /// Cores whose executor could not start (their future was dropped unrun).
    failed_cores: AtomicUsize,
    draining: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Health {
    fn new(cores: usize) -> Health {
        Health {
            cores,
            ready_cores: AtomicUsize::new(0),
            failed_cores: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }
    }

    /// Every core accepts connections and the server is not draining.
    pub fn ready(&self) -> bool {
        self.ready_cores.load(Ordering::SeqCst) == self.cores && !self.draining()
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn core_ready(&self) {
        self.ready_cores.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        // The lock orders this notify after a waiter's check, so no wake-up is lost.
        drop(self.lock.lock());
        self.changed.notify_all();
    }

    pub(crate) fn wait_ready(&self) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.failed_cores.load(Ordering::SeqCst) > 0 || self.draining() {
                return false;
            }
            if self.ready_cores.load(Ordering::SeqCst) == self.cores {
                return true;
            }
            guard = self.changed.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Travels into a core's executor: reports the core ready, or, if the executor fails to start
/// and drops it unused, reports the failure so [`ServerHandle::wait_ready`] does not wait for it.
struct StartReport {
    health: Arc<Health>,
    reported: bool,
}

impl StartReport {
    fn ready(mut self) {
        self.reported = true;
        self.health.core_ready();
    }
}

impl Drop for StartReport {
    fn drop(&mut self) {
        if !self.reported {
            self.health.failed_cores.fetch_add(1, Ordering::SeqCst);
            self.health.wake();
        }
    }
}

/// Binds the listeners and starts one executor per core, serving the services of `R` (each
/// core builds its own state of them from `[services.NAME]`), and a reactor thread per `kcp@`
/// listener.
pub fn start<R: Registry>(config: Config) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let cores = choose_cpus(config.server.cores)?.len();
    let mut handed = Vec::new();
    let mut kcp = Vec::new();
    for listen in config
        .server
        .listen
        .iter()
        .filter(|l| l.network == Network::Kcp)
    {
        let (h, listener) = kcp_listener::<R>(listen, &config, cores)?;
        handed.push(h);
        kcp.push(listener);
    }
    let mut server = start_with::<R>(config, handed)?;
    server.kcp = kcp;
    Ok(server)
}

/// Binds a `kcp@` listener and starts its reactor thread, which hands each new session to the
/// cores, round robin.
fn kcp_listener<R: Registry>(
    listen: &Addr,
    config: &Config,
    cores: usize,
) -> Result<(accept::Handed<R>, transport::kcp::KcpListener), ServerError> {
    let invalid = |message: String| {
        ServerError::Config(crate::config::ConfigError::Invalid {
            key: "server.listen",
            message,
        })
    };
    let addr = listen.socket_addr().map_err(|e| invalid(e.to_string()))?;
    let setup = config.kcp.prepare().map_err(|e| {
        ServerError::Config(crate::config::ConfigError::Invalid {
            key: e.key,
            message: e.why,
        })
    })?;
    // The reactor binds first, so that a port-0 address is known before the cores start; it
    // gets its hand-off right after (a session in between is dropped, and its peer retries).
    let handoff: Arc<OnceLock<accept::Handoff<transport::kcp::KcpStream>>> = Arc::default();
    let sink_handoff = Arc::clone(&handoff);
    let sink: transport::kcp::Sink = Box::new(move |stream, peer| {
        let Some(handoff) = sink_handoff.get() else {
            return true; // dropped: not serving yet (the peer's next datagram tries again)
        };
        // Given back when every core has stopped taking streams (shutdown): no more sessions.
        handoff.send(stream, peer).is_ok()
    });
    let listener = transport::kcp::listen(addr, &setup, sink).map_err(|e| ServerError::Listen {
        addr: listen.to_string(),
        error: transport::tcp::ListenError::Io(e),
    })?;
    let listening = Listening::reactor(Network::Kcp, listener.local_addr());
    let (h, hoff) = accept::Handed::new(listening, Transport::Kcp, cores);
    let _ = handoff.set(hoff);
    Ok((h, listener))
}

/// `start`, plus listeners whose streams a reactor thread hands to the cores (QUIC, KCP: each
/// such transport makes its [`accept::Handed`] with the listener's address and starts its
/// thread with the [`Handoff`]).
pub(crate) fn start_with<R: Registry>(
    config: Config,
    handed: Vec<accept::Handed<R>>,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    R::check(&config.services)?;
    let cpus = choose_cpus(config.server.cores)?;
    let tls = transport::tls::server_config(&config.tls)?;
    let mut addrs = Vec::new();
    let mut resolved = Vec::new();
    // sockets[core][listener]
    let mut sockets: Vec<Vec<(OwnedFd, Arc<Listening>)>> =
        (0..cpus.len()).map(|_| Vec::new()).collect();
    let stop = Arc::new(Stop::default());
    let mut quic_handed = Vec::new();
    let mut quic_listeners = Vec::new();
    for listen in &config.server.listen {
        if listen.network == Network::Kcp {
            continue; // bound by its reactor (`start`), served through `handed`
        }
        if listen.network == transport::addr::Network::Quic {
            // Started here, in config order; its streams reach the cores like any handed-over
            // listener's.
            let (h, listener) = quic::start(&config, listen, cpus.len(), &stop)?;
            resolved.push(h.listening.addr.clone());
            addrs.extend(h.listening.socket_addr);
            quic_listeners.push(listener);
            quic_handed.push(h);
            continue;
        }
        let (fds, listening) = bind(
            listen,
            cpus.len(),
            config.server.backlog,
            config.server.share_port,
        )?;
        if let Some(addr) = listening.socket_addr {
            addrs.push(addr);
        }
        resolved.push(listening.addr.clone());
        let listening = Arc::new(listening);
        for (core, fd) in fds.into_iter().enumerate() {
            sockets[core].push((fd, Arc::clone(&listening)));
        }
    }

    // receive loops[core]
    let mut receivers: Vec<Vec<accept::ReceiveLoop<R>>> =
        (0..cpus.len()).map(|_| Vec::new()).collect();
    let quic_count = quic_handed.len();
    for (i, h) in quic_handed.into_iter().chain(handed).enumerate() {
        // The quic@ listeners are in `resolved` already, in config order.
        if i >= quic_count {
            resolved.push(h.listening.addr.clone());
            addrs.extend(h.listening.socket_addr);
        }
        for (core, receive) in h.per_core.into_iter().enumerate() {
            receivers[core].push(receive);
        }
    }

    // Checked before any core starts: a bad registry setting stops nothing half-started.
    let etcd_keys = match &config.registry.etcd {
        Some(etcd) => Some(registry_keys::<R>(etcd, &resolved)?),
        None => None,
    };
    let auth: Arc<[Box<[u8]>]> = config
        .auth_tokens()?
        .into_iter()
        .map(|t| t.into_bytes().into_boxed_slice())
        .collect();
    let drain_timeout = config.server.drain_timeout;
    let config = Arc::new(config);
    let health = Arc::new(Health::new(cpus.len()));
    let mut threads = Vec::new();
    let mut metrics = Vec::new();
    let method_names: Arc<[(&'static str, &'static str)]> = R::method_names().into();
    let cores = cpus.len();
    // The connections' timeouts are looked at once per tick of one clock thread.
    let mut ticks = if clock::needed(&config.limits) {
        clock::start(cores, clock::period(&config.limits)).map_err(|error| ServerError::Thread {
            name: "clock",
            error,
        })?
    } else {
        Vec::new()
    }
    .into_iter();
    for (index, ((&cpu, fds), receive)) in cpus.iter().zip(sockets).zip(receivers).enumerate() {
        let tick = ticks.next();
        let core_metrics = Arc::new(CoreMetrics::new(index, method_names.len()));
        metrics.push(Arc::clone(&core_metrics));
        let (config, stop, tls) = (Arc::clone(&config), Arc::clone(&stop), tls.clone());
        let auth = Arc::clone(&auth);
        let report = StartReport {
            health: Arc::clone(&health),
            reported: false,
        };
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("percore-core-{index}"))
            .io_memory(config.runtime.io_memory_bytes)
            .ring_depth(config.runtime.ring_depth)
            .preempt_timer(config.runtime.preempt_timer);
        let builder = if config.runtime.spin_before_park.is_zero() {
            builder
        } else {
            builder.spin_before_park(config.runtime.spin_before_park)
        };
        let thread = builder
            .spawn(move || {
                let listeners = Listeners { fds, receive };
                let info = CoreInfo { index, cpu, cores };
                run_core::<R>(
                    info,
                    config,
                    tls,
                    auth,
                    core_metrics,
                    listeners,
                    stop,
                    report,
                    tick,
                )
            })
            .map_err(|e| ServerError::Executor {
                cpu,
                message: e.to_string(),
            })?;
        threads.push((cpu, thread));
    }
    let registration = match (&config.registry.etcd, etcd_keys) {
        (Some(etcd), Some(keys)) => Some(Arc::new(
            crate::etcd::Registration::start(etcd, keys, Arc::clone(&health)).map_err(|e| {
                ServerError::Executor {
                    cpu: 0,
                    message: format!("cannot start the etcd registration thread: {e}"),
                }
            })?,
        )),
        _ => None,
    };
    let shown: Vec<String> = resolved.iter().map(ToString::to_string).collect();
    info!(cores = cpus.len(), ?cpus, listen = ?shown, tls = config.tls.enabled(), "percore serving");
    Ok(ServerHandle {
        addrs,
        listen: resolved,
        cpus,
        stop,
        threads,
        metrics,
        method_names,
        health,
        kcp: Vec::new(),
        registration,
        quic: quic_listeners,
        drain_timeout,
    })
}

/// The etcd keys of every service of `R` at every advertised address, with their metadata.
fn registry_keys<R: Registry>(
    etcd: &crate::config::EtcdRegistry,
    listening: &[Addr],
) -> Result<Vec<(String, String)>, ServerError> {
    let services: Vec<&str> = R::SERVICES.iter().map(|(name, _)| *name).collect();
    etcd.check_services(&services)?;
    let addresses = etcd.addresses(listening)?;
    let metadata = |s: &str| {
        etcd.metadata
            .get(s)
            .cloned()
            .unwrap_or_else(|| etcd.default_metadata.clone())
    };
    Ok(crate::etcd::keys(
        &etcd.base_path,
        &services,
        &addresses,
        &metadata,
    ))
}

/// One listen address as the cores serve it.
pub(crate) struct Listening {
    /// As clients dial it (port 0 resolved).
    pub(crate) addr: Addr,
    socket_addr: Option<SocketAddr>,
    /// For `unix`: removes the socket file once the last core stops accepting.
    _file: Option<transport::unix::SocketFile>,
}

impl Listening {
    /// A listener bound by a reactor thread (QUIC, KCP) at `bound`.
    pub(crate) fn reactor(network: transport::addr::Network, bound: SocketAddr) -> Listening {
        Listening {
            addr: Addr::new(network, bound.to_string()),
            socket_addr: Some(bound),
            _file: None,
        }
    }
}

/// Binds one listen address: `count` descriptors, one per core.
fn bind(
    listen: &Addr,
    count: usize,
    backlog: u32,
    share: bool,
) -> Result<(Vec<OwnedFd>, Listening), ServerError> {
    if let Some(path) = listen.unix_path() {
        let (fds, file) = transport::unix::listen(path, count, backlog).map_err(|error| {
            ServerError::ListenUnix {
                addr: listen.to_string(),
                error,
            }
        })?;
        let listening = Listening {
            addr: listen.clone(),
            socket_addr: None,
            _file: Some(file),
        };
        return Ok((fds, listening));
    }
    let addr = listen.socket_addr().map_err(|e| {
        ServerError::Config(crate::config::ConfigError::Invalid {
            key: "server.listen",
            message: e.to_string(),
        })
    })?;
    let (bound, fds) =
        transport::tcp::listen_reuseport(addr, count, backlog, share).map_err(|error| {
            ServerError::Listen {
                addr: listen.to_string(),
                error,
            }
        })?;
    let listening = Listening {
        addr: Addr::new(listen.network, bound.to_string()),
        socket_addr: Some(bound),
        _file: None,
    };
    Ok((fds, listening))
}

/// The CPUs to run on: the first `wanted` of those this process may run on (all if 0).
fn choose_cpus(wanted: usize) -> Result<Vec<usize>, ServerError> {
    let allowed = allowed_cpus().map_err(ServerError::Affinity)?;
    if wanted == 0 {
        return Ok(allowed);
    }
    if wanted > allowed.len() {
        return Err(ServerError::TooManyCores {
            wanted,
            allowed: allowed.len(),
            cpus: allowed,
        });
    }
    Ok(allowed[..wanted].to_vec())
}

/// CPUs in this process's affinity mask (which the kernel keeps within the online CPUs), so
/// `taskset`, systemd `CPUAffinity=` and container cpusets are honoured.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; zeroed is a valid empty set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET only reads the bit array for indices below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// What one executor shares with its connections.
pub(crate) struct Core<R> {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    /// This core's state of every service.
    pub(crate) services: R,
    pub(crate) metrics: Arc<CoreMetrics>,
    /// Set when `[tls]` is configured.
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
    /// Accepted auth tokens; empty means no auth check.
    pub(crate) auth: Arc<[Box<[u8]>]>,
    /// Set when shutdown starts: a connection that then sees end of input was drained.
    pub(crate) draining: Cell<bool>,
    /// Rate limits of this core's warnings about connections.
    pub(crate) logs: logs::LogLimit,
    /// Connections this core keeps open at once: `limits.max_connections_per_core`, or when
    /// that is 0, this core's share of the open-files limit.
    pub(crate) max_connections: usize,
    conns: RefCell<Conns>,
    /// The connections whose timeouts this core's sweeper watches.
    pub(crate) watches: Rc<conn::Watches>,
}

/// Open connections of one core, so shutdown can stop their reads and wait for them.
#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, accept::Drain>,
    /// Open connections per peer address (only with `limits.max_connections_per_ip`).
    per_ip: HashMap<std::net::IpAddr, u32>,
    idle_waker: Option<Waker>,
}

/// Removes a connection from its core's set when its task ends, however it ends, and counts
/// the close with its reason ([`Close::DrainTimeout`] if the task was dropped unfinished).
pub(crate) struct ConnGuard<R: Registry> {
    core: Rc<Core<R>>,
    id: u64,
    /// Counted against `limits.max_connections_per_ip`.
    ip: Option<std::net::IpAddr>,
    transport: Transport,
    reason: Cell<Option<Close>>,
}

impl<R: Registry> ConnGuard<R> {
    pub(crate) fn closed(&self, reason: Close) {
        self.reason.set(Some(reason));
    }
}

impl<R: Registry> Drop for ConnGuard<R> {
    fn drop(&mut self) {
        let mut conns = self.core.conns.borrow_mut();
        conns.open.remove(&self.id);
        if let Some(ip) = self.ip
            && let Some(n) = conns.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                conns.per_ip.remove(&ip);
            }
        }
        let reason = self.reason.get().unwrap_or(Close::DrainTimeout);
        self.core.metrics.transport(self.transport).close(reason);
        if conns.open.is_empty()
            && let Some(w) = conns.idle_waker.take()
        {
            w.wake();
        }
    }
}

impl<R: Registry> Core<R> {
    /// Tracks a new connection until its guard drops. Any transport whose connections the core
    /// serves registers them here, so limits, drain and metrics see them.
    pub(crate) fn register(
        self: &Rc<Core<R>>,
        drain: accept::Drain,
        transport: Transport,
        ip: Option<std::net::IpAddr>,
    ) -> ConnGuard<R> {
        let mut conns = self.conns.borrow_mut();
        let id = conns.next;
        conns.next += 1;
        conns.open.insert(id, drain);
        let ip = ip.filter(|_| self.config.limits.max_connections_per_ip != 0);
        if let Some(ip) = ip {
            *conns.per_ip.entry(ip).or_insert(0) += 1;
        }
        self.metrics.transport(transport).accepted.inc();
        ConnGuard {
            core: Rc::clone(self),
            id,
            ip,
            transport,
            reason: Cell::new(None),
        }
    }

    /// Why one more connection from `ip` may not be served, if it may not: the core is at its
    /// connection cap (`limits.max_connections_per_core`, or what the open-files limit allows),
    /// or the peer at `limits.max_connections_per_ip`.
    pub(crate) fn refuses(&self, ip: Option<std::net::IpAddr>) -> Option<Close> {
        let conns = self.conns.borrow();
        if conns.open.len() >= self.max_connections {
            return Some(Close::MaxConnections);
        }
        let per_ip = self.config.limits.max_connections_per_ip;
        match ip {
            Some(ip)
                if per_ip != 0 && conns.per_ip.get(&ip).is_some_and(|&n| n as usize >= per_ip) =>
            {
                Some(Close::MaxConnectionsPerIp)
            }
            _ => None,
        }
    }
}

/// Descriptors kept back from connections: listeners, the rings, logs, the admin endpoint,
/// clients of async handlers.
const RESERVED_FDS: u64 = 256;

/// One core's share of the open-files limit (RLIMIT_NOFILE), less [`RESERVED_FDS`]: the
/// connection cap when `limits.max_connections_per_core` is 0, so a flood of connections is
/// refused at once instead of running the process out of descriptors.
fn nofile_share(cores: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `limit` is.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    let share = soft.saturating_sub(RESERVED_FDS) / cores.max(1) as u64;
    usize::try_from(share).unwrap_or(usize::MAX).max(1)
}

/// What one core takes connections from.
struct Listeners<R> {
    /// Its listening sockets (one per TCP-family address, the shared one per unix address).
    fds: Vec<(OwnedFd, Arc<Listening>)>,
    /// Its receive loops of streams handed over by reactor threads.
    receive: Vec<accept::ReceiveLoop<R>>,
}

#[allow(clippy::too_many_arguments)] // each is one thing the core owns; a struct would only rename them
async fn run_core<R: Registry>(
    info: CoreInfo,
    config: Arc<Config>,
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Arc<[Box<[u8]>]>,
    metrics: Arc<CoreMetrics>,
    listeners: Listeners<R>,
    stop: Arc<Stop>,
    report: StartReport,
    tick: Option<Arc<clock::Tick>>,
) {
    let index = info.index;
    let max_connections = match config.limits.max_connections_per_core {
        0 => nofile_share(info.cores),
        max => max,
    };
    // Checked by `start` already, so only a service's own `new` could fail here (it cannot).
    let services = match R::build(&info, &config.services) {
        Ok(services) => services,
        Err(e) => {
            tracing::error!(core = index, "cannot build the services: {e}");
            return;
        }
    };
    let core = Rc::new(Core {
        index,
        services,
        config,
        metrics,
        tls: tls.map(futures_rustls::TlsAcceptor::from),
        auth,
        draining: Cell::new(false),
        logs: logs::LogLimit::default(),
        max_connections,
        conns: RefCell::new(Conns::default()),
        watches: Rc::default(),
    });
    // Cancelled when the core ends (dropped with this task).
    let _sweeper = tick.map(|tick| {
        let limits = &core.config.limits;
        glommio::spawn_local(conn::sweep(
            Rc::clone(&core.watches),
            tick,
            limits.idle_timeout,
            limits.frame_timeout,
        ))
    });
    let mut accepts: Vec<_> = listeners
        .fds
        .into_iter()
        .map(|(fd, listening)| {
            // SAFETY: the fd is a bound, listening socket we own (made by transport::tcp or
            // transport::unix); ownership moves into the listener. glommio's TcpListener is only
            // an fd and an io_uring accept(2), which works on any stream socket: for `unix` it is
            // how each core waits on the shared socket (glommio's UnixListener cannot adopt one).
            let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
            glommio::spawn_local(accept::accept_loop(
                Rc::clone(&core),
                listener,
                listening,
                Arc::clone(&stop),
            ))
        })
        .collect();
    for receive in listeners.receive {
        accepts.push(glommio::spawn_local(receive(
            Rc::clone(&core),
            Arc::clone(&stop),
        )));
    }
    // The sockets listen since `start`; from here on this core also takes connections off them.
    report.ready();
    for accept in accepts {
        accept.await;
    }
    drain(&core).await;
    debug!(core = index, "core stopped");
}

/// Stops reading on every open connection (each reader then sees end of input, lets its calls
/// in flight finish, flushes and closes) and waits for them, at most `server.drain_timeout`.
async fn drain<R: Registry>(core: &Rc<Core<R>>) {
    core.draining.set(true);
    let open = core.conns.borrow().open.len();
    if open == 0 {
        return;
    }
    info!(
        core = core.index,
        connections = open,
        "draining connections"
    );
    for drain in core.conns.borrow().open.values() {
        drain.stop_reading();
    }
    let idle = poll_fn(|cx| {
        let mut conns = core.conns.borrow_mut();
        if conns.open.is_empty() {
            Poll::Ready(())
        } else {
            conns.idle_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    });
    let timeout = core.config.server.drain_timeout;
    let drained = futures_lite::future::or(
        async {
            idle.await;
            true
        },
        async {
            glommio::timer::sleep(timeout).await;
            false
        },
    )
    .await;
    if !drained {
        warn!(
            core = core.index,
            open = core.conns.borrow().open.len(),
            "drain timeout: closing connections"
        );
    }
}

/// A one-shot stop signal that any thread can trigger and every core can await.
#[derive(Default)]
pub(crate) struct Stop {
    flag: AtomicBool,
    event: event_listener::Event,
}

impl Stop {
    fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            if self.flag.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            if self.flag.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}
