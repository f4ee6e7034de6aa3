//! etcd, the registry rpcx users share between hosts: servers announce themselves there, and
//! clients find them there (PROTOCOL.md §8), in the layout of rpcx-etcd's `EtcdV3RegisterPlugin`.
//!
//! ```text
//! BASE/ServiceName/network@host:port  =  URL-query metadata (`weight=7&group=g`), under a lease
//! ```
//!
//! One key per (registered service, advertised address), all under one lease of `ttl` seconds
//! that the server keeps alive. A Go rpcx client with `NewEtcdV3Discovery(BASE, ServiceName,
//! endpoints, ...)` lists and watches `BASE/ServiceName` and dials the part after the last
//! prefix; percore's [`EtcdDiscovery`](crate::client::EtcdDiscovery) does the same.
//!
//! [`Registration`] runs on a thread of its own (`percore-etcd`, a tokio current-thread runtime:
//! the etcd client is tokio-based), never on the cores. It waits until every core accepts,
//! then: connect, grant a lease, put every key, keep the lease alive (a renewal every `ttl / 3`).
//! Any failure (etcd down or restarted, the lease gone) is logged at most every 10 s, counted,
//! and followed by a new connection, a new lease and the keys put again, with a backoff of up to
//! 2 s. Serving never depends on it. [`Registration::deregister`] (called by the server's
//! shutdown before the cores stop accepting) deletes the keys and revokes the lease, waiting at
//! most `timeout`, then keeps serving for `deregister_grace` so watching clients drop this
//! server before it stops taking calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::EtcdRegistry;
use crate::server::Health;

/// How to reach etcd: endpoints, credentials, TLS, timeouts. Shared by the server's registration
/// and the client's discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConnect {
    /// `host:port`, `http://host:port` or `https://host:port` (https needs `ca`).
    pub endpoints: Vec<String>,
    /// etcd user name and password (etcd's auth), both or neither.
    pub user: Option<(String, String)>,
    /// PEM CA certificates to verify etcd's certificate (TLS to etcd when set).
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key for etcd's client-cert auth.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Bound on connecting and on each request.
    pub timeout: Duration,
}

impl EtcdConnect {
    /// Plain connection to `endpoints` with a 3 s timeout.
    pub fn new(endpoints: Vec<String>) -> EtcdConnect {
        EtcdConnect {
            endpoints,
            timeout: Duration::from_secs(3),
            ..EtcdConnect::default()
        }
    }

    /// Connects (lazily: a down etcd is found by the first request).
    pub(crate) async fn connect(&self) -> Result<etcd_client::Client, String> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(2), self.timeout);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user, password);
        }
        let mut endpoints = self.endpoints.clone();
        if self.ca.is_some() || self.identity.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read etcd CA {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &self.identity {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
                };
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
            for e in &mut endpoints {
                if !e.contains("://") {
                    *e = format!("https://{e}");
                }
            }
        }
        etcd_client::Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| e.to_string())
    }
}

/// The registration's counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct EtcdMetrics {
    /// Times every key was put under a fresh lease.
    pub registrations: AtomicU64,
    /// Connections, grants, puts and keep-alives that failed.
    pub failures: AtomicU64,
    /// Lease renewals etcd acknowledged.
    pub renewals: AtomicU64,
    /// 1 while the keys are known to be in etcd, else 0.
    pub registered: AtomicU64,
}

impl EtcdMetrics {
    /// Prometheus text of these counters.
    pub fn prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, kind, help, v) in [
            (
                "percore_registry_registrations_total",
                "counter",
                "Times every key was put in etcd under a fresh lease.",
                &self.registrations,
            ),
            (
                "percore_registry_failures_total",
                "counter",
                "etcd connections, lease grants, puts and keep-alives that failed.",
                &self.failures,
            ),
            (
                "percore_registry_lease_renewals_total",
                "counter",
                "Lease keep-alives etcd acknowledged.",
                &self.renewals,
            ),
            (
                "percore_registry_registered",
                "gauge",
                "1 while this server's keys are in etcd.",
                &self.registered,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Logs a repeated failure at most once per interval, saying how many were left out.
pub(crate) struct Throttle {
    last: Option<Instant>,
    skipped: u64,
    every: Duration,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            last: None,
            skipped: 0,
            every,
        }
    }

    /// Some(number of failures not logged since the last line) when this one should be logged.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The server's keys in etcd, kept alive by a thread of their own.
pub struct Registration {
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    done: Mutex<Option<mpsc::Receiver<bool>>>,
    metrics: Arc<EtcdMetrics>,
    keys: Vec<(String, String)>,
    timeout: Duration,
    grace: Duration,
}

impl Registration {
    /// Starts the registration thread. It registers `keys` (key, value) once `health` says every
    /// core accepts, and gives up without registering if the server stops first.
    pub fn start(
        config: &EtcdRegistry,
        keys: Vec<(String, String)>,
        health: Arc<Health>,
    ) -> std::io::Result<Registration> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let metrics = Arc::new(EtcdMetrics::default());
        let connect = config.connect();
        let ttl = config.ttl;
        let (thread_keys, thread_metrics) = (keys.clone(), Arc::clone(&metrics));
        std::thread::Builder::new()
            .name("percore-etcd".into())
            .spawn(move || {
                let deleted = if health.wait_ready() {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(keep_registered(
                            connect,
                            ttl,
                            thread_keys,
                            thread_metrics,
                            stop_rx,
                        )),
                        Err(e) => {
                            warn!(error = %e, "etcd registration: cannot start its runtime");
                            false
                        }
                    }
                } else {
                    false
                };
                let _ = done_tx.send(deleted);
            })?;
        Ok(Registration {
            stop: Mutex::new(Some(stop_tx)),
            done: Mutex::new(Some(done_rx)),
            metrics,
            keys,
            timeout: config.timeout,
            grace: config.deregister_grace,
        })
    }

    /// The keys this server registers: (key, metadata value).
    pub fn keys(&self) -> &[(String, String)] {
        &self.keys
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<EtcdMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Deletes the keys (waiting at most `timeout` for etcd, plus a moment to start the delete)
    /// and, if they were deleted, waits `deregister_grace` so watching clients drop this server
    /// while it still serves. Blocks; the second and later calls return at once.
    pub fn deregister(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(stop), Some(done)) = (stop, done) else {
            return;
        };
        let _ = stop.send(());
        match done.recv_timeout(self.timeout + Duration::from_millis(500)) {
            Ok(true) => {
                info!(keys = self.keys.len(), "etcd: keys deleted");
                std::thread::sleep(self.grace);
            }
            Ok(false) => {}
            Err(_) => warn!("etcd: keys not deleted in time; they expire with their lease"),
        }
    }
}

enum Ended {
    /// Stop was asked for; the client to delete the keys with, if one is connected.
    Stopped(Option<Box<etcd_client::Client>>),
    /// The lease or connection failed.
    Lost(String),
}

/// The registration loop: register, keep alive, register again after a failure. Returns
/// whether the keys were deleted at the stop.
async fn keep_registered(
    connect: EtcdConnect,
    ttl: Duration,
    keys: Vec<(String, String)>,
    metrics: Arc<EtcdMetrics>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> bool {
    let mut throttle = Throttle::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(100);
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let mut fail = |what: &str, error: &str, metrics: &EtcdMetrics| {
        metrics.failures.fetch_add(1, Ordering::Relaxed);
        metrics.registered.store(0, Ordering::Relaxed);
        if let Some(skipped) = throttle.allow() {
            warn!(
                error,
                skipped, "etcd registration {what}; serving goes on, retrying"
            );
        }
    };
    loop {
        let attempt = tokio::select! {
            r = register(&connect, ttl_secs, &keys) => r,
            _ = &mut stop => return delete(None, &connect, &keys).await,
        };
        let ended = match attempt {
            Ok((client, lease, keeper, stream)) => {
                metrics.registrations.fetch_add(1, Ordering::Relaxed);
                metrics.registered.store(1, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                info!(lease, keys = keys.len(), ttl_secs, "etcd: registered");
                keep_alive(client, keeper, stream, ttl, &metrics, &mut stop).await
            }
            Err(e) => Ended::Lost(e),
        };
        match ended {
            Ended::Stopped(client) => {
                metrics.registered.store(0, Ordering::Relaxed);
                return delete(client, &connect, &keys).await;
            }
            Ended::Lost(e) => fail("failed", &e, &metrics),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return delete(None, &connect, &keys).await,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

type Registered = (
    etcd_client::Client,
    i64,
    etcd_client::LeaseKeeper,
    etcd_client::LeaseKeepAliveStream,
);

/// Connects, grants a lease and puts every key under it.
async fn register(
    connect: &EtcdConnect,
    ttl_secs: i64,
    keys: &[(String, String)],
) -> Result<Registered, String> {
    let mut client = connect.connect().await?;
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| format!("lease grant: {e}"))?
        .id();
    for (key, value) in keys {
        let options = etcd_client::PutOptions::new().with_lease(lease);
        client
            .put(key.as_str(), value.as_str(), Some(options))
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
    }
    let (keeper, stream) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| format!("lease keep-alive: {e}"))?;
    Ok((client, lease, keeper, stream))
}

/// Renews the lease every `ttl / 3` until stop, a failure, or `ttl` without an answer.
async fn keep_alive(
    client: etcd_client::Client,
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    ttl: Duration,
    metrics: &EtcdMetrics,
    stop: &mut tokio::sync::oneshot::Receiver<()>,
) -> Ended {
    let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answered = Instant::now();
    loop {
        tokio::select! {
            _ = &mut *stop => return Ended::Stopped(Some(Box::new(client))),
            _ = tick.tick() => {
                if answered.elapsed() >= ttl {
                    return Ended::Lost("no lease renewal answered within the ttl".into());
                }
                if let Err(e) = keeper.keep_alive().await {
                    return Ended::Lost(format!("lease keep-alive: {e}"));
                }
            }
            message = stream.message() => match message {
                Ok(Some(r)) if r.ttl() > 0 => {
                    answered = Instant::now();
                    metrics.renewals.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => return Ended::Lost("the lease expired in etcd".into()),
                Ok(None) => return Ended::Lost("etcd closed the keep-alive stream".into()),
                Err(e) => return Ended::Lost(format!("lease keep-alive: {e}")),
            },
        }
    }
}

/// Deletes every key, on `client` or a new connection; true if all were deleted.
async fn delete(
    client: Option<Box<etcd_client::Client>>,
    connect: &EtcdConnect,
    keys: &[(String, String)],
) -> bool {
    let run = async {
        let mut client = match client {
            Some(c) => *c,
            None => connect.connect().await?,
        };
        for (key, _) in keys {
            client
                .delete(key.as_str(), None)
                .await
                .map_err(|e| format!("delete {key}: {e}"))?;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(connect.timeout, run).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            warn!(error = %e, "etcd: cannot delete this server's keys; they expire with their lease");
            false
        }
        Err(_) => false,
    }
}

/// The keys of a server: `base/service/address` for every service and address, with the
/// service's metadata (`metadata[service]`, else `default`).
pub fn keys(
    base_path: &str,
    services: &[&str],
    addresses: &[String],
    metadata: &dyn Fn(&str) -> String,
) -> Vec<(String, String)> {
    let base = base_path.trim_end_matches('/');
    services
        .iter()
        .flat_map(|s| {
            addresses
                .iter()
                .map(move |a| (format!("{base}/{s}/{a}"), metadata(s)))
        })
        .collect()
}

/// `etcd://HOST:PORT[,HOST:PORT...]/BASE` as (endpoints, base path `/BASE`); None if `s` is not
/// an etcd URL.
pub fn parse_url(s: &str) -> Option<Result<(Vec<String>, String), String>> {
    let rest = s.strip_prefix("etcd://")?;
    let (hosts, base) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoints: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Some(Err(format!("{s:?}: no etcd host (etcd://HOST:PORT/BASE)")));
    }
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        return Some(Err(format!(
            "{s:?}: no base path (etcd://HOST:PORT/BASE, e.g. /rpcx_test)"
        )));
    }
    Some(Ok((endpoints, format!("/{base}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_rpcx_layout() {
        let k = keys(
            "/rpcx_test/",
            &["Arith", "Echo"],
            &["tcp@10.0.0.1:8972".into()],
            &|s| {
                if s == "Arith" {
                    "weight=7".into()
                } else {
                    String::new()
                }
            },
        );
        assert_eq!(
            k,
            [
                (
                    "/rpcx_test/Arith/tcp@10.0.0.1:8972".into(),
                    "weight=7".into()
                ),
                ("/rpcx_test/Echo/tcp@10.0.0.1:8972".into(), String::new()),
            ]
        );
    }

    #[test]
    fn etcd_urls() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379/rpcx_test")
                .unwrap()
                .unwrap(),
            (vec!["127.0.0.1:2379".into()], "/rpcx_test".into())
        );
        assert_eq!(
            parse_url("etcd://a:1,b:2/x/y/").unwrap().unwrap(),
            (vec!["a:1".into(), "b:2".into()], "/x/y".into())
        );
        assert!(parse_url("etcd://a:1").unwrap().is_err());
        assert!(parse_url("etcd:///x").unwrap().is_err());
        assert!(parse_url("tcp@a:1").is_none());
    }

    #[test]
    fn throttle_logs_once_per_interval() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.allow(), Some(2));
    }
}
