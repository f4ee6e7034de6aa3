//! Typed configuration: TOML with unknown keys rejected, overridden by command-line flags.
//!
//! Every key is documented here and, with its default, in `configs/server.toml`; a test checks
//! that file parses to exactly [`Config::default`], so the documented defaults cannot drift.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole server configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub gateway: Gateway,
    pub runtime: Runtime,
    pub services: Services,
    pub tls: TlsConfig,
    pub log: Log,
}

/// `[server]`: what to listen on and with how many cores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses as `network@address`; `tcp` and `reuseport` both mean a TCP listener per core
    /// with SO_REUSEPORT, `http` the same for rpcx's HTTP CONNECT network, and `unix@/path` a
    /// Unix domain socket accepted by every core. A bare `host:port` is `tcp`.
    pub listen: Vec<ListenAddr>,
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
    /// Reply bytes a connection may have waiting to be written before it stops reading
    /// requests (a peer that sends but does not read is slowed, not buffered for).
    pub max_pending_write_bytes: usize,
    /// Calls of one connection whose replies are delayed (a `Hello.Say` with a configured delay)
    /// that may be outstanding at once; at the limit the connection stops reading until one is
    /// answered.
    pub max_calls_in_flight: usize,
    /// A new connection that sends nothing for this long is closed, e.g. "10s".
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
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
    /// it is small: every executor's share must fit the memlock limit (8 MiB by default).
    pub io_memory_bytes: usize,
    /// io_uring submission queue depth per executor.
    pub ring_depth: usize,
}

/// `[services]`: settings of the built-in services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    pub hello: HelloConfig,
}

/// `[services.hello]`: the rpcx-benchmark service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HelloConfig {
    /// Simulated work per `Hello.Say` call, e.g. "10ms" (rpcx-benchmark's `delay`). Other calls
    /// on the connection are not held up by it.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
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
            listen: vec![ListenAddr {
                network: Network::Tcp,
                address: "127.0.0.1:8972".into(),
            }],
            cores: 0,
            backlog: 1024,
            drain_timeout: Duration::from_secs(10),
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
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            io_memory_bytes: 512 << 10,
            ring_depth: 256,
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

/// The transport of a listen or dial address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// `tcp`: a TCP listener per core with SO_REUSEPORT.
    Tcp,
    /// `reuseport`: rpcx's name for the same thing; clients dial it as `tcp`.
    Reuseport,
    /// `http`: rpcx's HTTP CONNECT network, a TCP listener per core whose plain HTTP requests
    /// other than `CONNECT /_rpcx_` get `405 must CONNECT`.
    Http,
    /// `unix`: a Unix domain stream socket at a path, accepted by every core.
    Unix,
}

impl Network {
    /// The name used in `network@address`.
    pub fn name(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Reuseport => "reuseport",
            Network::Http => "http",
            Network::Unix => "unix",
        }
    }

    /// Whether the address is `host:port` (every network but `unix`).
    pub fn is_ip(self) -> bool {
        !matches!(self, Network::Unix)
    }
}

/// `network@address`, e.g. `tcp@127.0.0.1:8972`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    pub network: Network,
    pub address: String,
}

impl ListenAddr {
    /// The path of a `unix` listener.
    pub fn unix_path(&self) -> Option<&Path> {
        (self.network == Network::Unix).then(|| Path::new(&self.address))
    }

    /// The socket address of a TCP-family listener.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.address.parse().map_err(|_| {
            format!(
                "{self}: {:?} is not an IP address with a port",
                self.address
            )
        })
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, address) = s.split_once('@').unwrap_or(("tcp", s));
        let network = match network {
            "tcp" | "tcp4" | "tcp6" => Network::Tcp,
            "reuseport" => Network::Reuseport,
            "http" => Network::Http,
            "unix" => Network::Unix,
            "quic" | "kcp" => {
                return Err(format!(
                    "network {network:?} in {s:?} is not served yet (tcp, reuseport, http and unix are)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown network {other:?} in {s:?} (expected tcp, reuseport, http or unix)"
                ));
            }
        };
        let addr = ListenAddr {
            network,
            address: address.to_owned(),
        };
        if network.is_ip() {
            addr.socket_addr()?;
        } else {
            check_unix_path(s, address)?;
        }
        Ok(addr)
    }
}

/// Longest path a Unix socket address can hold (`sun_path` is 108 bytes with the final NUL).
pub const MAX_UNIX_PATH: usize = 107;

fn check_unix_path(s: &str, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!(
            "{s:?}: a unix address needs a path (unix@/run/x.sock)"
        ));
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(format!(
            "{s:?}: a unix socket path is at most {MAX_UNIX_PATH} bytes, this one is {}",
            path.len()
        ));
    }
    if path.contains('\0') {
        return Err(format!("{s:?}: a unix socket path cannot contain NUL"));
    }
    Ok(())
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.network.name(), self.address)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The exit status for a bad configuration (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

impl Config {
    /// Reads a TOML file; unknown keys are errors that name the key, line and column.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_empty() {
            return Err(ConfigError::Invalid {
                key: "server.listen",
                message: "no listen address".into(),
            });
        }
        if self.server.backlog == 0 {
            return Err(ConfigError::Invalid {
                key: "server.backlog",
                message: "must be at least 1".into(),
            });
        }
        if self.limits.max_frame_bytes < 64 {
            return Err(ConfigError::Invalid {
                key: "limits.max_frame_bytes",
                message: format!(
                    "{} is too small for any rpcx frame (at least 64)",
                    self.limits.max_frame_bytes
                ),
            });
        }
        if self.limits.max_calls_in_flight == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_calls_in_flight",
                message: "must be at least 1".into(),
            });
        }
        if self.limits.max_pending_write_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_pending_write_bytes",
                message: "must be at least 1".into(),
            });
        }
        if self.gateway.max_headers == 0 {
            return Err(ConfigError::Invalid {
                key: "gateway.max_headers",
                message: "must be at least 1".into(),
            });
        }
        if self.gateway.max_header_bytes < 64 {
            return Err(ConfigError::Invalid {
                key: "gateway.max_header_bytes",
                message: format!(
                    "{} is too small for any HTTP request head (at least 64)",
                    self.gateway.max_header_bytes
                ),
            });
        }
        if self.runtime.ring_depth == 0 || !self.runtime.ring_depth.is_power_of_two() {
            return Err(ConfigError::Invalid {
                key: "runtime.ring_depth",
                message: format!("{} must be a power of two", self.runtime.ring_depth),
            });
        }
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::Invalid {
                key: if tls.cert.is_some() {
                    "tls.key"
                } else {
                    "tls.cert"
                },
                message: "tls.cert and tls.key must be set together".into(),
            });
        }
        if tls.client_ca.is_some() && !tls.enabled() {
            return Err(ConfigError::Invalid {
                key: "tls.client_ca",
                message: "mutual TLS needs tls.cert and tls.key too".into(),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: format!("{:?}: {e}", self.log.level),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        // Every field is a plain value, string, list or table: serialization cannot fail.
        toml::to_string(self).unwrap_or_default()
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
        let a: ListenAddr = "reuseport@127.0.0.1:0".parse().unwrap();
        assert_eq!(a.network, Network::Reuseport);
        let b: ListenAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(b.to_string(), "tcp@127.0.0.1:9");
        assert!(
            "udp@1.2.3.4:5"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("udp")
        );
        assert!("tcp@localhost".parse::<ListenAddr>().is_err());
        let u: ListenAddr = "unix@/tmp/x.sock".parse().unwrap();
        assert_eq!(u.unix_path(), Some(Path::new("/tmp/x.sock")));
        assert_eq!(u.to_string(), "unix@/tmp/x.sock");
        assert!("unix@".parse::<ListenAddr>().is_err());
        let long = format!("unix@/{}", "x".repeat(200));
        assert!(long.parse::<ListenAddr>().unwrap_err().contains("107"));
        let h: ListenAddr = "http@127.0.0.1:0".parse().unwrap();
        assert_eq!(h.network, Network::Http);
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

    #[test]
    fn print_config_round_trips() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
