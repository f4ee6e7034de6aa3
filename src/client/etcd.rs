//! Discovery through etcd (rpcx-etcd's `NewEtcdV3Discovery`): the servers of one service are
//! the keys under `BASE/ServiceName/`, each `network@host:port` with URL-query metadata as its
//! value (PROTOCOL.md §8, [`crate::etcd`]).
//!
//! The client runs on glommio executors and the etcd client on tokio, so the list and the watch
//! run on a thread of their own (`percore-etcd-watch`, a tokio current-thread runtime). It
//! publishes each new list with a version number; an [`XClient`](super::XClient) compares the
//! version (one atomic load) before each selection and takes the new list only when it changed.
//! As rpcx-etcd does, a watch event triggers a fresh listing of the prefix. When etcd cannot be
//! reached the last list stays in use, and the thread reconnects with a backoff of up to 2 s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tracing::{debug, warn};

use super::discovery::ServerEntry;
use crate::etcd::{EtcdConnect, Throttle};

/// The servers of one service as etcd lists them, kept up to date by a watch. Cloning shares
/// the watch; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct EtcdDiscovery {
    handle: Arc<Handle>,
}

struct Handle {
    published: Arc<Published>,
    prefix: String,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Default)]
struct Published {
    servers: Mutex<Vec<ServerEntry>>,
    /// Bumped after each change of `servers`.
    version: AtomicU64,
}

impl Published {
    fn set(&self, servers: Vec<ServerEntry>) {
        let mut current = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        if *current != servers {
            *current = servers;
            self.version.fetch_add(1, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("prefix", &self.handle.prefix)
            .field("version", &self.version())
            .finish()
    }
}

/// Two handles are equal when they share one watch.
impl PartialEq for EtcdDiscovery {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }
}

impl Eq for EtcdDiscovery {}

/// Why the discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("etcd discovery of {prefix}: {message}")]
pub struct EtcdError {
    /// The key prefix listed.
    pub prefix: String,
    /// What failed.
    pub message: String,
}

impl EtcdDiscovery {
    /// Lists `base_path/service/` once (an error if etcd cannot answer within the connection's
    /// timeout, as rpcx's `NewEtcdV3Discovery`), then watches it on a thread of its own.
    pub fn start(
        connect: EtcdConnect,
        base_path: &str,
        service: &str,
    ) -> Result<EtcdDiscovery, EtcdError> {
        let prefix = format!("{}/{service}/", base_path.trim_end_matches('/'));
        let published = Arc::new(Published::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (first_tx, first_rx) = mpsc::channel();
        let err = |message: String| EtcdError {
            prefix: prefix.clone(),
            message,
        };
        let (thread_prefix, thread_published) = (prefix.clone(), Arc::clone(&published));
        let timeout = connect.timeout;
        std::thread::Builder::new()
            .name("percore-etcd-watch".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = first_tx.send(Err(format!("cannot start its runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(watch(
                    connect,
                    thread_prefix,
                    thread_published,
                    first_tx,
                    stop_rx,
                ));
            })
            .map_err(|e| err(format!("cannot start the watch thread: {e}")))?;
        match first_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(err(message)),
            Err(_) => return Err(err("etcd did not answer in time".into())),
        }
        Ok(EtcdDiscovery {
            handle: Arc::new(Handle {
                published,
                prefix,
                stop: Mutex::new(Some(stop_tx)),
            }),
        })
    }

    /// Every server now listed, inactive ones included, sorted by address.
    pub fn servers(&self) -> Vec<ServerEntry> {
        self.handle
            .published
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes each time the list does.
    pub fn version(&self) -> u64 {
        self.handle.published.version.load(Ordering::Acquire)
    }

    /// The key prefix watched, `BASE/ServiceName/`.
    pub fn prefix(&self) -> &str {
        &self.handle.prefix
    }
}

/// Lists the servers under `prefix` once (for `percore call` and `bench`).
pub fn list_once(
    connect: &EtcdConnect,
    base_path: &str,
    service: &str,
) -> Result<Vec<ServerEntry>, EtcdError> {
    let prefix = format!("{}/{service}/", base_path.trim_end_matches('/'));
    let err = |message: String| EtcdError {
        prefix: prefix.clone(),
        message,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let result = rt.block_on(async {
        tokio::time::timeout(connect.timeout, async {
            let mut client = connect.connect().await?;
            list(&mut client, &prefix).await.map(|(s, _)| s)
        })
        .await
        .unwrap_or_else(|_| Err("etcd did not answer in time".into()))
    });
    result.map_err(err)
}

/// The servers under `prefix` and the store's revision.
async fn list(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> Result<(Vec<ServerEntry>, i64), String> {
    let response = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut servers = BTreeMap::new();
    for kv in response.kvs() {
        let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
            continue;
        };
        if let Some(entry) = entry(prefix, key, value) {
            servers.insert(entry.address.clone(), entry);
        }
    }
    Ok((servers.into_values().collect(), revision))
}

/// The server a key names: the part after `prefix`, if it is an address percore can dial.
fn entry(prefix: &str, key: &str, value: &str) -> Option<ServerEntry> {
    let address = key.strip_prefix(prefix)?;
    if address.is_empty() || address.parse::<crate::transport::addr::Addr>().is_err() {
        debug!(
            key,
            "etcd: a key under the service is not network@address; left out"
        );
        return None;
    }
    Some(ServerEntry::new(address, value))
}

/// List, watch, list again on every event; on failure keep the last list and start over.
async fn watch(
    connect: EtcdConnect,
    prefix: String,
    published: Arc<Published>,
    first: mpsc::Sender<Result<(), String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut first = Some(first);
    let mut throttle = Throttle::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(100);
    let listed = std::cell::Cell::new(false);
    loop {
        let session = async {
            let mut client = connect.connect().await?;
            let (servers, revision) = list(&mut client, &prefix).await?;
            published.set(servers);
            listed.set(true);
            if let Some(first) = first.take() {
                let _ = first.send(Ok(()));
            }
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = client
                .watch(prefix.as_str(), Some(options))
                .await
                .map_err(|e| format!("watch: {e}"))?;
            loop {
                match stream.message().await {
                    Ok(Some(r)) if r.canceled() => {
                        return Err(format!("watch canceled: {}", r.cancel_reason()));
                    }
                    Ok(Some(r)) if r.events().is_empty() => {}
                    Ok(Some(_)) => {
                        let (servers, _) = list(&mut client, &prefix).await?;
                        published.set(servers);
                    }
                    Ok(None) => return Err::<(), String>("etcd ended the watch".into()),
                    Err(e) => return Err(format!("watch: {e}")),
                }
            }
        };
        let ended = tokio::select! {
            r = session => r,
            _ = &mut stop => return,
        };
        if let Err(e) = ended {
            if let Some(first) = first.take() {
                let _ = first.send(Err(e));
                return;
            }
            if let Some(skipped) = throttle.allow() {
                warn!(prefix, error = %e, skipped, "etcd discovery: keeping the last server list, retrying");
            }
        }
        // A session that got as far as a listing starts the backoff over.
        if listed.replace(false) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_entries() {
        let p = "/rpcx_test/Arith/";
        let e = entry(p, "/rpcx_test/Arith/tcp@10.0.0.1:8972", "weight=7").unwrap();
        assert_eq!(e, ServerEntry::new("tcp@10.0.0.1:8972", "weight=7"));
        let u = entry(p, "/rpcx_test/Arith/unix@/run/x.sock", "").unwrap();
        assert_eq!(u.address, "unix@/run/x.sock");
        assert!(entry(p, "/rpcx_test/Arith/", "").is_none());
        assert!(entry(p, "/rpcx_test/Arith/garbage", "").is_none());
        assert!(entry(p, "/rpcx_test/Other/tcp@h:1", "").is_none());
    }
}
