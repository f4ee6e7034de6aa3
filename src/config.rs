//! Typed configuration: TOML with unknown keys rejected, then environment variables, then flags.
//!
//! Every key is documented here and, with its default, in `configs/server.toml`; a test checks
//! that file parses to exactly [`Config::default`], so the documented defaults cannot drift.
//!
//! # Layers
//!
//! [`load`] builds the effective configuration as defaults < file < environment < flags. The
//! file is `--config`, else `$PERCORE_CONFIG`, else none (the embedded defaults). Each later
//! layer sets single keys ([`ENV_VARS`] names the variables; `--set KEY=VALUE` reaches any key),
//! and an error names the key and where its value came from: the file path, the variable or the
//! flag.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::transport::addr::{Addr, Network};

/// The whole server configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub gateway: Gateway,
    pub runtime: Runtime,
    /// `[services.NAME]`: one section per hosted service, in that service's own config type
    /// (checked by the server's registry: an unknown service or key is an error naming it).
    pub services: toml::Table,
    pub tls: TlsConfig,
    pub log: Log,
    pub admin: Admin,
    pub auth: Auth,
    /// `[kcp]`: the settings of every `kcp@` listener (and, in `percore call`/`bench`, of
    /// dialed KCP sessions); see [`crate::transport::kcp::KcpConfig`].
    pub kcp: crate::transport::kcp::KcpConfig,
    pub registry: RegistryConfig,
    /// `[quic]`: limits of `quic@` listeners (their certificate is `[tls]`'s).
    pub quic: crate::transport::quic::QuicLimits,
}

/// `[server]`: what to listen on and with how many cores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses as `network@address`; `tcp` and `reuseport` both mean a TCP listener per core
    /// with SO_REUSEPORT, `http` the same for rpcx's HTTP CONNECT network, and `unix@/path` a
    /// Unix domain socket accepted by every core. A bare `host:port` is `tcp`.
    #[serde(deserialize_with = "listen_addrs")]
    pub listen: Vec<Addr>,
    /// Executors to run, one per CPU, taken in order from the CPUs the process may run on
    /// (online CPUs ∩ affinity mask, so `taskset` and systemd `CPUAffinity=` choose which).
    /// 0 means all of them.
    pub cores: usize,
    /// listen(2) backlog of each per-core listener.
    pub backlog: u32,
    /// On shutdown, how long connections get to finish the calls they have in flight before
    /// they are closed anyway, e.g. "10s".
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Bind `tcp`/`reuseport`/`http` addresses even when another process already listens there
    /// (SO_REUSEPORT: the kernel then splits new connections between the two). Off: such an
    /// address is refused at start, naming the process. On only for a deliberate hand-over
    /// restart (start the new server, then stop the old one).
    pub share_port: bool,
}

/// `[limits]`: finite bounds on what one peer can make the server hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame body (L, the bytes after the 16-byte header) accepted; a larger L closes
    /// the connection before any of the body is buffered.
    pub max_frame_bytes: u32,
    /// Largest payload a gzip request may inflate to; past it the connection is closed.
    pub max_decompressed_bytes: usize,
    /// Reply bytes a connection may have waiting to be written before it stops taking requests
    /// (a peer that sends but does not read is slowed, not buffered for). Checked before each
    /// request, so a batch already read can overshoot it by at most one reply.
    pub max_pending_write_bytes: usize,
    /// Calls of one connection that may be in flight at once: decoded, reply not yet queued.
    /// Synchronous handlers finish inside the read that brought them, so these are the calls
    /// that wait (async handlers, a `Hello.Say` with a configured delay). At the limit the connection stops
    /// taking requests, including ones already read into its buffer, until a reply is queued;
    /// further requests wait in the socket, and TCP flow control slows the peer.
    pub max_calls_in_flight: usize,
    /// A new connection that sends nothing for this long is closed, e.g. "10s".
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection that sends no request for this long, with no reply still owed to it, is
    /// closed, e.g. "5m". "0s" turns the check off (rpcx's default: no read timeout). Checked
    /// a few times per timeout (not per read), so the close comes within 1.25 times it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this long of its first byte, or the connection is
    /// closed (reason `timeout`), so a peer trickling bytes cannot hold a connection forever,
    /// e.g. "30s"; "0s" turns it off. The close comes within 1.5 times it. Partial bytes do not
    /// count as a request for `idle_timeout`. HTTP requests have `gateway.request_timeout`.
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Connections one core keeps open at once. A connection past it is accepted and closed at
    /// once (counted as closed with reason `max_connections`), so the backlog does not fill with
    /// peers that would wait forever. 0 means this core's share of the open-files limit
    /// (RLIMIT_NOFILE less 256, divided by the cores), so a flood is refused before the process
    /// runs out of descriptors.
    pub max_connections_per_core: usize,
    /// Connections one peer address may keep open on one core; past it a new one from that
    /// address is accepted and closed at once (reason `max_connections_per_ip`), so one peer
    /// cannot take every slot. 0 means no limit (a load generator opens many from one address).
    pub max_connections_per_ip: usize,
    /// Metadata entries one rpcx frame may carry; a frame with more is refused and its
    /// connection closed (reason `too_many_metadata`), so a frame of a million tiny entries
    /// costs no more than this many. rpcx's clients send a handful.
    pub max_metadata_entries: usize,
}

/// `[gateway]`: the HTTP gateway and JSON-RPC 2.0, served on the rpcx port to connections whose
/// first byte is an HTTP method's (PROTOCOL.md §4–6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// Serve HTTP on the rpcx port. When false, an HTTP request gets a 404 and the connection
    /// is closed.
    pub enabled: bool,
    /// Largest request line plus headers; a request whose head is longer gets 431 and the
    /// connection is closed.
    pub max_header_bytes: usize,
    /// Most header lines in one request; more gets 431 and the connection is closed.
    pub max_headers: usize,
    /// Largest request body (after de-chunking, before gunzip); a larger `Content-Length`
    /// gets 413 before any of the body is read, and the connection is closed.
    pub max_body_bytes: usize,
    /// A keep-alive connection with no request in progress is closed after this long, e.g. "60s".
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Calls in one JSON-RPC batch; a larger batch is answered with one -32600 error and no call
    /// runs, so one request cannot hold its core for long.
    pub max_batch: usize,
    /// A request must arrive whole (head and body) within this long of its first byte, or the
    /// connection is closed (so a client trickling bytes cannot hold it forever), e.g. "30s".
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// `[runtime]`: glommio executor settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Bytes of registered io_uring buffer memory per executor. Network I/O does not use it, so
    /// it is small. Each executor registers it with its three rings, charged to the memlock
    /// limit (in whole huge pages where THP is on); `percore check-host` shows the total.
    pub io_memory_bytes: usize,
    /// io_uring submission queue depth per executor. 256: network reads and writes go through
    /// readiness polls and direct syscalls (a reactor loop submits a few entries, ~0.05 loops
    /// per request when pipelined, benches/instructions.sh), so a deeper ring buys nothing and
    /// costs locked memory per executor.
    pub ring_depth: usize,
    /// How long an executor that ran out of work keeps polling its rings before it sleeps
    /// (0: sleep at once). Default 0: at 64 connections x 1 call in flight (the workload where
    /// sleeping and waking happen per call) 0, 50 µs and 500 µs gave 44.3k, 46.3k and 44.8k
    /// calls per 2 s (medians of 4 interleaved rounds, spread ±10%): nothing measurable, and a
    /// spinning executor burns its core whenever traffic pauses.
    #[serde(with = "humantime_serde")]
    pub spin_before_park: Duration,
    /// How long a task queue runs before the executor checks for I/O and other queues.
    /// Default glommio's 100 ms: percore has one task queue per executor and every connection
    /// task yields at each read, so the timer never decides anything; it is re-armed on every
    /// reactor loop whatever its value (one timeout and one cancel submission, counted in
    /// benches/instructions.sh's reactor share).
    #[serde(with = "humantime_serde")]
    pub preempt_timer: Duration,
}

/// `[tls]`: TLS (rustls, TLS 1.2 and 1.3) on every listener, recognised by its first byte.
///
/// TLS is on when `cert` and `key` are set. A connection whose first byte is a TLS record (0x16)
/// is then handshaken and sniffed again inside TLS (rpcx frames, CONNECT or HTTP); one that
/// starts in plaintext is served only if `allow_plaintext` is true.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, leaf first. Unset: TLS is off.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM file of CA certificates. When set, every TLS client must present a certificate
    /// signed by one of them (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With TLS on, whether a connection that starts in plaintext is still served (false: it is
    /// closed with one log line and a metric).
    pub allow_plaintext: bool,
}

impl TlsConfig {
    /// True when a certificate is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[log]`: what is logged and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter (`info`, `percore=debug`, ...); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// `[admin]`: the operator's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin endpoint, e.g. "127.0.0.1:9090". Unset (the default) means off. It
    /// is served by one plain thread, never by the cores; keep it off public interfaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `[auth]`: optional static bearer tokens, checked against each call's `__AUTH` metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Accepted tokens. A call's `__AUTH` must equal one of them, or be `Bearer ` followed by
    /// one (the HTTP gateway copies the `Authorization` header there). Heartbeats skip the check.
    /// A call that fails it gets an error reply (none if oneway) and its connection is closed.
    /// No tokens (here or in `token_file`) means no check.
    pub tokens: Vec<String>,
    /// A file with more tokens, one per line; blank lines and lines starting with `#` are
    /// skipped. Read at start (and by `--check-config`); keeps secrets out of the config file,
    /// e.g. a systemd credential: "/run/credentials/percore.service/tokens".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `[registry]`: where the server announces itself to clients on other hosts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `[registry.etcd]`: register in etcd as rpcx-etcd does (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdRegistry>,
}

/// `[registry.etcd]`: one key `base_path/Service/network@host:port` per registered service and
/// advertised address, the service's metadata as its value, under a lease of `ttl` kept alive
/// (see [`crate::etcd`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdRegistry {
    /// etcd endpoints, `host:port` or `http(s)://host:port`.
    pub endpoints: Vec<String>,
    /// The rpcx base path every key starts with (rpcx examples use "/rpcx_test").
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// Lease time to live: a server that stops renewing (killed, cut off) leaves etcd this long
    /// after its last renewal. Whole seconds, at least 1 (etcd may round it up to its minimum).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// The addresses to register, `network@host:port`, as clients on other hosts dial them.
    /// Empty: every `server.listen` address as bound (`reuseport` registered as `tcp`, `unix`
    /// left out); a listener on 0.0.0.0 or [::] then is an error, as no client can dial it.
    #[serde(default, deserialize_with = "advertise_addrs")]
    pub advertise: Vec<Addr>,
    /// Metadata of services `metadata` does not name, a URL query such as "weight=2&group=g".
    #[serde(default)]
    pub default_metadata: String,
    /// Metadata per service name, e.g. { Arith = "weight=7&group=g" }; `state=inactive` hides
    /// the server from rpcx clients.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// etcd user (etcd auth); needs `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM CA certificates to verify etcd's certificate: TLS to etcd when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Bound on connecting to etcd and on each request, and on the delete at shutdown.
    #[serde(default = "default_etcd_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// At shutdown, how long the server keeps serving after its keys are deleted, so clients
    /// watching etcd drop it before it stops taking calls.
    #[serde(default = "default_deregister_grace", with = "humantime_serde")]
    pub deregister_grace: Duration,
}

fn default_base_path() -> String {
    "/rpcx_test".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_etcd_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_deregister_grace() -> Duration {
    Duration::from_millis(500)
}

fn advertise_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Addr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<Addr>()
                .map_err(|e| serde::de::Error::custom(e.to_string()))
        })
        .collect()
}

impl EtcdRegistry {
    /// How to reach etcd.
    pub fn connect(&self) -> crate::etcd::EtcdConnect {
        crate::etcd::EtcdConnect {
            endpoints: self.endpoints.clone(),
            user: self.user.clone().zip(self.password.clone()),
            ca: self.ca.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
            timeout: self.timeout,
        }
    }

    /// The addresses to register, given the listeners as bound; an unspecified IP without
    /// `advertise` is an error naming the listener.
    pub fn addresses(&self, listening: &[Addr]) -> Result<Vec<String>, ConfigError> {
        if !self.advertise.is_empty() {
            return Ok(self.advertise.iter().map(ToString::to_string).collect());
        }
        let mut out = Vec::new();
        for addr in listening {
            let network = match addr.network {
                Network::Unix => continue,
                Network::Reuseport => Network::Tcp,
                n => n,
            };
            if let Ok(ip) = addr.socket_addr()
                && ip.ip().is_unspecified()
            {
                return Err(ConfigError::Invalid {
                    key: "registry.etcd.advertise",
                    message: format!(
                        "listener {addr} is on all interfaces; set the address clients dial \
                         (e.g. advertise = [\"{network}@10.0.0.5:{}\"])",
                        ip.port()
                    ),
                });
            }
            out.push(Addr::new(network, addr.address.clone()).to_string());
        }
        if out.is_empty() {
            return Err(ConfigError::Invalid {
                key: "registry.etcd.advertise",
                message: "no listener clients on other hosts can dial; set advertise".into(),
            });
        }
        Ok(out)
    }

    /// Every `metadata` key names one of `services` (the server's registry).
    pub fn check_services(&self, services: &[&str]) -> Result<(), ConfigError> {
        match self
            .metadata
            .keys()
            .find(|k| !services.contains(&k.as_str()))
        {
            Some(unknown) => Err(ConfigError::Invalid {
                key: "registry.etcd.metadata",
                message: format!(
                    "{unknown:?} is not a registered service (these are: {services:?})"
                ),
            }),
            None => Ok(()),
        }
    }

    fn validate(&self, listen: &[Addr]) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad(
                "registry.etcd.endpoints",
                "needs at least one etcd endpoint",
            );
        }
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return bad("registry.etcd.ttl", "must be whole seconds, at least 1s");
        }
        if self.timeout.is_zero() {
            return bad("registry.etcd.timeout", "must be more than 0s");
        }
        if self.user.is_some() != self.password.is_some() {
            return bad(
                "registry.etcd.user",
                "registry.etcd.user and password must be set together",
            );
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad(
                "registry.etcd.cert",
                "registry.etcd.cert and key must be set together",
            );
        }
        let base = self.base_path.trim_end_matches('/');
        if base.is_empty() {
            return bad("registry.etcd.base_path", "must not be empty or \"/\"");
        }
        if self.advertise.is_empty() {
            // Port 0 is resolved at bind time; the rest is known now.
            self.addresses(listen)?;
        }
        Ok(())
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![Addr::new(Network::Tcp, "127.0.0.1:8972")],
            cores: 0,
            backlog: 1024,
            drain_timeout: Duration::from_secs(10),
            share_port: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_pending_write_bytes: 4 << 20,
            max_calls_in_flight: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            frame_timeout: Duration::from_secs(30),
            max_connections_per_core: 0,
            max_connections_per_ip: 0,
            max_metadata_entries: 1024,
        }
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            enabled: true,
            max_header_bytes: 64 << 10,
            max_headers: 64,
            max_body_bytes: 16 << 20,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_batch: 256,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            io_memory_bytes: 512 << 10,
            ring_depth: 256,
            spin_before_park: Duration::ZERO,
            preempt_timer: Duration::from_millis(100),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Checks what a listen address needs beyond its shape: an IP literal with a port (not a name),
/// and a network percore serves.
pub fn check_listen(addr: &Addr) -> Result<(), String> {
    match addr.network {
        Network::Unix => Ok(()),
        _ => addr.socket_addr().map(drop).map_err(|e| e.to_string()),
    }
}

/// A listen address from text: [`Addr`]'s parse, then [`check_listen`] (for `--listen`).
pub fn parse_listen(s: &str) -> Result<Addr, String> {
    let addr: Addr = s
        .parse()
        .map_err(|e: crate::transport::addr::AddrError| e.to_string())?;
    check_listen(&addr)?;
    Ok(addr)
}

/// `server.listen` as serde reads it: each entry checked by [`parse_listen`].
fn listen_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Addr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_listen(s).map_err(serde::de::Error::custom))
        .collect()
}

/// A configuration that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `[services.NAME]` section the server's registry cannot use.
    #[error("{0}")]
    Section(#[from] crate::service::SectionError),
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// A key set by an environment variable or a flag has a bad value or does not exist.
    #[error("{key} (set {origin}): {message}")]
    Override {
        key: String,
        origin: Origin,
        message: String,
    },
    /// A value that failed [`Config::validate`], with the layer that set it.
    #[error("{error} (set {origin})")]
    From {
        origin: Origin,
        error: Box<ConfigError>,
    },
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    /// An environment variable, by name.
    Env(&'static str),
    /// A command-line flag, as typed (`--cores`, `--set limits.idle_timeout`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("by default"),
            Origin::File(path) => write!(f, "in config file {}", path.display()),
            Origin::Env(name) => write!(f, "by environment variable {name}"),
            Origin::Flag(flag) => write!(f, "by flag {flag}"),
        }
    }
}

/// The deploy-time knobs read from the environment: (variable, key it sets). `PERCORE_CONFIG`
/// names the file instead. `PERCORE_LISTEN` is comma-separated.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PERCORE_LISTEN", "server.listen"),
    ("PERCORE_CORES", "server.cores"),
    ("PERCORE_DRAIN_TIMEOUT", "server.drain_timeout"),
    ("PERCORE_LOG", "log.level"),
    ("PERCORE_LOG_FORMAT", "log.format"),
    ("PERCORE_ADMIN_LISTEN", "admin.listen"),
    ("PERCORE_AUTH_TOKEN_FILE", "auth.token_file"),
];

/// The config file variable (`--config` wins over it).
pub const ENV_CONFIG: &str = "PERCORE_CONFIG";

/// What the flags set: the config file, then keys in the order given (later wins) as
/// (key, value, the flag that set it).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub sets: Vec<(String, toml::Value, String)>,
}

/// The effective configuration from every layer: defaults < file < environment < flags.
/// `env` looks a variable up (`|name| std::env::var(name).ok()` in the binary). The result is
/// validated, and the token file (if any) is readable and not empty.
pub fn load(
    flags: &Overrides,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file = flags
        .config
        .clone()
        .or_else(|| env(ENV_CONFIG).filter(|v| !v.is_empty()).map(PathBuf::from));
    let (mut config, file_keys) = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.to_owned(),
                error,
            })?;
            let parse = |message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            };
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e: toml::de::Error| parse(e.to_string().trim_end().to_owned()))?;
            (Config::from_toml(&text).map_err(parse)?, table)
        }
        None => (Config::default(), toml::Table::new()),
    };
    let mut origins: Vec<(String, Origin)> = Vec::new();
    for &(var, key) in ENV_VARS {
        let Some(text) = env(var) else { continue };
        let origin = Origin::Env(var);
        let value = match key {
            "server.listen" => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            "server.cores" => text_value(&text),
            _ => toml::Value::String(text),
        };
        config = config.with(key, value, &origin)?;
        origins.push((key.to_owned(), origin));
    }
    for (key, value, flag) in &flags.sets {
        let origin = Origin::Flag(flag.clone());
        config = config.with(key, value.clone(), &origin)?;
        origins.push((key.clone(), origin));
    }
    let origin_of = |key: &str| {
        if let Some((_, origin)) = origins.iter().rev().find(|(k, _)| k == key) {
            return origin.clone();
        }
        match &file {
            Some(path) if lookup(&file_keys, key).is_some() => Origin::File(path.clone()),
            _ => Origin::Default,
        }
    };
    let checked = config
        .validate()
        .and_then(|()| config.auth_tokens().map(drop));
    match checked {
        Ok(()) => Ok(config),
        Err(ConfigError::Invalid { key, message }) => match origin_of(key) {
            Origin::Default => Err(ConfigError::Invalid { key, message }),
            origin => Err(ConfigError::From {
                origin,
                error: Box::new(ConfigError::Invalid { key, message }),
            }),
        },
        Err(e) => Err(e),
    }
}

/// A value given as text (an environment variable, `--set`): TOML if it parses as a TOML
/// value (`2`, `true`, `["a", "b"]`, `"quoted"`), else the text as a string (`10s`, `info`).
pub fn text_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    let value = table.get(head)?;
    match (rest, value) {
        (None, v) => Some(v),
        (Some(rest), toml::Value::Table(t)) => lookup(t, rest),
        _ => None,
    }
}

/// The exit status for a bad configuration (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

impl Config {
    /// Parses TOML text; unknown keys are errors that name the key, line and column.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        Ok(config)
    }

    /// This configuration with one dotted key (`limits.idle_timeout`) set to `value`; an unknown
    /// key or a value of the wrong type is an error naming the key and `origin`.
    pub fn with(
        &self,
        key: &str,
        value: toml::Value,
        origin: &Origin,
    ) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError::Override {
            key: key.to_owned(),
            origin: origin.clone(),
            message,
        };
        let mut table = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => t,
            Ok(_) => toml::Table::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut parts = key.split('.').peekable();
        let mut at = &mut table;
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                at.insert(part.to_owned(), value);
                break;
            }
            let next = at
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = match next {
                toml::Value::Table(t) => t,
                _ => return Err(err("is not a table of settings".into())),
            };
        }
        // Unset optional keys (admin.listen) may be given as "" to mean unset.
        if let Some(toml::Value::String(s)) = lookup(&table, key)
            && s.is_empty()
            && matches!(key, "admin.listen" | "auth.token_file")
        {
            remove(&mut table, key);
        }
        toml::Value::Table(table).try_into::<Config>().map_err(|e| {
            let text = e.to_string();
            err(text.trim_end().replace('\n', " "))
        })
    }

    /// Every accepted auth token: `auth.tokens` and the lines of `auth.token_file`.
    pub fn auth_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = self.auth.tokens.clone();
        if let Some(path) = &self.auth.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key: "auth.token_file",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let before = tokens.len();
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
            if tokens.len() == before {
                // An empty file would silently turn auth off.
                return Err(ConfigError::Invalid {
                    key: "auth.token_file",
                    message: format!("{} holds no token", path.display()),
                });
            }
        }
        Ok(tokens)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (limits, gateway, tls) = (&self.limits, &self.gateway, &self.tls);
        // Each rule: the key it is about, whether it is broken, and what to say.
        let rules: [(&'static str, bool, &dyn Fn() -> String); 10] = [
            ("server.listen", self.server.listen.is_empty(), &|| {
                "no listen address".into()
            }),
            ("server.backlog", self.server.backlog == 0, &|| {
                "must be at least 1".into()
            }),
            (
                "limits.max_frame_bytes",
                limits.max_frame_bytes < 64,
                &|| {
                    format!(
                        "{} is too small for any rpcx frame (at least 64)",
                        limits.max_frame_bytes
                    )
                },
            ),
            (
                "limits.max_calls_in_flight",
                limits.max_calls_in_flight == 0,
                &|| "must be at least 1".into(),
            ),
            (
                "limits.max_pending_write_bytes",
                limits.max_pending_write_bytes == 0,
                &|| "must be at least 1".into(),
            ),
            ("gateway.max_headers", gateway.max_headers == 0, &|| {
                "must be at least 1".into()
            }),
            (
                "gateway.max_header_bytes",
                gateway.max_header_bytes < 64,
                &|| {
                    format!(
                        "{} is too small for any HTTP request head (at least 64)",
                        gateway.max_header_bytes
                    )
                },
            ),
            (
                "runtime.ring_depth",
                !self.runtime.ring_depth.is_power_of_two(),
                &|| format!("{} must be a power of two", self.runtime.ring_depth),
            ),
            (
                if tls.cert.is_some() {
                    "tls.key"
                } else {
                    "tls.cert"
                },
                tls.cert.is_some() != tls.key.is_some(),
                &|| "tls.cert and tls.key must be set together".into(),
            ),
            (
                "tls.client_ca",
                tls.client_ca.is_some() && !tls.enabled(),
                &|| "mutual TLS needs tls.cert and tls.key too".into(),
            ),
        ];
        if let Some((key, _, message)) = rules.iter().find(|(_, broken, _)| *broken) {
            return Err(ConfigError::Invalid {
                key,
                message: message(),
            });
        }
        for addr in &self.server.listen {
            check_listen(addr).map_err(|message| ConfigError::Invalid {
                key: "server.listen",
                message,
            })?;
        }
        if let Some(quic) = self
            .server
            .listen
            .iter()
            .find(|a| a.network == Network::Quic)
            && !tls.enabled()
        {
            return Err(ConfigError::Invalid {
                key: "tls.cert",
                message: format!(
                    "{quic}: QUIC always runs TLS 1.3: set tls.cert and tls.key in [tls] (the quic@ listener uses that certificate)"
                ),
            });
        }
        if let Err(crate::transport::quic::QuicError::Limits { key, message }) =
            self.quic.validate()
        {
            return Err(ConfigError::Invalid { key, message });
        }
        if self
            .auth
            .tokens
            .iter()
            .any(|t| t.trim().is_empty() || t.trim() != t)
        {
            return Err(ConfigError::Invalid {
                key: "auth.tokens",
                message: "a token is empty or has surrounding spaces".into(),
            });
        }
        self.kcp.check().map_err(|e| ConfigError::Invalid {
            key: e.key,
            message: e.why,
        })?;
        if let Some(etcd) = &self.registry.etcd {
            etcd.validate(&self.server.listen)?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: format!("{:?}: {e}", self.log.level),
            });
        }
        Ok(())
    }

    /// This configuration with every auth token replaced by `<redacted>`, for printing.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for t in &mut c.auth.tokens {
            *t = "<redacted>".into();
        }
        for secret in [&mut c.kcp.key, &mut c.kcp.password].into_iter().flatten() {
            *secret = "<redacted>".into();
        }
        if let Some(etcd) = &mut c.registry.etcd
            && etcd.password.is_some()
        {
            etcd.password = Some("<redacted>".into());
        }
        c
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        // Every field is a plain value, string, list or table: serialization cannot fail.
        toml::to_string(self).unwrap_or_default()
    }
}

fn remove(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(t)) = table.get_mut(head) {
                remove(t, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_file_is_the_default() {
        let text = include_str!("../configs/server.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn example_configs_are_valid() {
        for text in [
            include_str!("../configs/tls.toml"),
            include_str!("../configs/unix.toml"),
            include_str!("../configs/kcp.toml"),
            include_str!("../configs/etcd.toml"),
            include_str!("../configs/quic.toml"),
        ] {
            Config::from_toml(text).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[server]\ncorez = 2\n").unwrap_err();
        assert!(err.contains("corez"), "{err}");
    }

    #[test]
    fn listen_addresses() {
        let a = parse_listen("reuseport@127.0.0.1:0").unwrap();
        assert_eq!(a.network, Network::Reuseport);
        assert_eq!(
            parse_listen("127.0.0.1:9").unwrap().to_string(),
            "tcp@127.0.0.1:9"
        );
        assert!(parse_listen("udp@1.2.3.4:5").unwrap_err().contains("udp"));
        assert!(
            parse_listen("tcp@localhost:1")
                .unwrap_err()
                .contains("IP address")
        );
        assert!(parse_listen("tcp@localhost").is_err());
        let u = parse_listen("unix@/tmp/x.sock").unwrap();
        assert_eq!(u.unix_path(), Some(std::path::Path::new("/tmp/x.sock")));
        assert!(parse_listen("unix@").is_err());
        let long = format!("unix@/{}", "x".repeat(200));
        assert!(parse_listen(&long).unwrap_err().contains("107"));
        assert_eq!(
            parse_listen("kcp@127.0.0.1:1").unwrap().network,
            Network::Kcp
        );
        assert!(
            parse_listen("kcp@localhost:1")
                .unwrap_err()
                .contains("IP address")
        );
        assert_eq!(parse_listen("quic@[::1]:0").unwrap().network, Network::Quic);
        assert!(
            parse_listen("quic@localhost:1")
                .unwrap_err()
                .contains("IP address")
        );
        let err = Config::from_toml("[server]\nlisten = [\"tcp@nohost:1\"]").unwrap_err();
        assert!(err.to_string().contains("nohost"), "{err}");
    }

    #[test]
    fn a_quic_listener_needs_tls_and_sound_limits() {
        let mut c = Config::default();
        c.server.listen = vec![parse_listen("quic@127.0.0.1:0").unwrap()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("tls.cert: quic@127.0.0.1:0"), "{err}");
        assert!(err.contains("[tls]"), "{err}");
        c.tls.cert = Some("cert.pem".into());
        c.tls.key = Some("key.pem".into());
        c.validate().unwrap();
        c.quic.idle_timeout = Duration::ZERO;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("quic.idle_timeout"), "{err}");
        let err = Config::from_toml(
            "[quic]
max_streams = 2
",
        )
        .unwrap_err();
        assert!(err.contains("max_streams"), "{err}");
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let mut c = Config::default();
        c.tls.cert = Some("cert.pem".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("tls.key"), "{err}");
        let mut c = Config::default();
        c.tls.client_ca = Some("ca.pem".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("tls.client_ca")
        );
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn flag(key: &str, value: &str) -> Overrides {
        Overrides {
            config: None,
            sets: vec![(key.into(), text_value(value), format!("--set {key}"))],
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("percore-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let file = temp_file("layers.toml", "[server]\ncores = 1\nbacklog = 7\n");
        let vars = [
            ("PERCORE_CONFIG", file.to_str().unwrap()),
            ("PERCORE_CORES", "2"),
            ("PERCORE_LISTEN", "tcp@127.0.0.1:1, 127.0.0.1:2"),
            ("PERCORE_ADMIN_LISTEN", "127.0.0.1:9"),
        ];
        let c = load(&flag("server.cores", "3"), env(&vars)).unwrap();
        assert_eq!(c.server.backlog, 7, "file over default");
        assert_eq!(c.server.cores, 3, "flag over env over file");
        assert_eq!(c.server.listen.len(), 2, "env list is comma-separated");
        assert_eq!(c.admin.listen, Some("127.0.0.1:9".parse().unwrap()));
        let c = load(&Overrides::default(), env(&vars)).unwrap();
        assert_eq!(c.server.cores, 2, "env over file");
        // `--config` wins over PERCORE_CONFIG; "" turns an optional key off again.
        let other = temp_file("other.toml", "[server]\nbacklog = 9\n");
        let flags = Overrides {
            config: Some(other),
            sets: vec![(
                "admin.listen".into(),
                text_value(""),
                "--admin-listen".into(),
            )],
        };
        let c = load(&flags, env(&vars)).unwrap();
        assert_eq!(c.server.backlog, 9);
        assert_eq!(c.admin.listen, None);
        assert_eq!(
            load(&Overrides::default(), env(&[])).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn errors_name_the_key_and_its_source() {
        let err = load(&Overrides::default(), env(&[("PERCORE_CORES", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.cores") && err.contains("PERCORE_CORES"),
            "{err}"
        );
        let err = load(&flag("limits.nope", "1"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("--set limits.nope"),
            "{err}"
        );
        let err = load(&flag("runtime.ring_depth", "3"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runtime.ring_depth") && err.contains("--set runtime.ring_depth"),
            "{err}"
        );
        let file = temp_file("bad-level.toml", "[log]\nlevel = \"=[\"\n");
        let flags = Overrides {
            config: Some(file.clone()),
            sets: Vec::new(),
        };
        let err = load(&flags, env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("log.level") && err.contains(file.to_str().unwrap()),
            "{err}"
        );
    }

    #[test]
    fn token_file_adds_tokens_and_an_empty_one_is_an_error() {
        let file = temp_file("tokens", "# ops\n\nsecret-1\n  secret-2  \n");
        let mut c = Config::default();
        c.auth.tokens = vec!["inline".into()];
        c.auth.token_file = Some(file);
        assert_eq!(c.auth_tokens().unwrap(), ["inline", "secret-1", "secret-2"]);
        c.auth.token_file = Some(temp_file("empty-tokens", "# none\n"));
        let err = load(
            &flag(
                "auth.token_file",
                c.auth.token_file.as_ref().unwrap().to_str().unwrap(),
            ),
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("auth.token_file") && err.contains("no token"),
            "{err}"
        );
    }

    #[test]
    fn etcd_registry_is_checked() {
        let etcd = "[registry.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n";
        let c =
            Config::from_toml(&format!("[server]\nlisten = [\"tcp@0.0.0.0:1\"]\n{etcd}")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.etcd.advertise") && err.contains("tcp@0.0.0.0:1"),
            "{err}"
        );
        let c = Config::from_toml(&format!(
            "[server]\nlisten = [\"reuseport@127.0.0.1:7\", \"unix@/tmp/x.sock\"]\n{etcd}"
        ))
        .unwrap();
        c.validate().unwrap();
        let e = c.registry.etcd.as_ref().unwrap();
        assert_eq!(e.base_path, "/rpcx_test");
        assert_eq!(
            e.addresses(&c.server.listen).unwrap(),
            ["tcp@127.0.0.1:7"],
            "reuseport is dialed as tcp, unix is left out"
        );
        for (bad, key) in [
            ("ttl = \"1500ms\"", "registry.etcd.ttl"),
            ("user = \"u\"", "registry.etcd.user"),
            ("base_path = \"/\"", "registry.etcd.base_path"),
        ] {
            let c = Config::from_toml(&format!("{etcd}{bad}\n")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{bad}: {err}");
        }
        let err = Config::from_toml(&format!("{etcd}endpoint = 1\n")).unwrap_err();
        assert!(err.contains("endpoint"), "{err}");
        let mut c = Config::from_toml(&format!("{etcd}user = \"u\"\npassword = \"p\"\n")).unwrap();
        c = c.redacted();
        assert_eq!(
            c.registry.etcd.unwrap().password.as_deref(),
            Some("<redacted>")
        );
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
