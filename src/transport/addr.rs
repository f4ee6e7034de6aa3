//! `network@address`: the one address type, for listening and for dialing.
//!
//! rpcx writes every address as `network@address` (PROTOCOL.md §8): `tcp@127.0.0.1:8972`,
//! `unix@/run/x.sock`, `quic@host:port`. [`Addr`] parses and prints that form; config listeners,
//! the client, `percore call` and `percore bench` all use it. A bare `host:port` is `tcp`.
//!
//! Parsing checks the shape only: a network percore knows, `host:port` with a port that fits in
//! 16 bits (the host may be a name), or a Unix path that fits in `sun_path`. What a particular
//! use needs beyond that is checked where it is used: a listener needs an IP literal
//! ([`Addr::socket_addr`]); a network that is not served or dialed yet is refused there by name.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The transport of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// `tcp` (also `tcp4`, `tcp6`): TCP; a listener is one SO_REUSEPORT socket per core.
    Tcp,
    /// `reuseport`: rpcx's name for the same listener; clients dial it as `tcp`.
    Reuseport,
    /// `http`: rpcx's HTTP CONNECT network. A listener is TCP per core whose plain HTTP requests
    /// other than `CONNECT /_rpcx_` get `405 must CONNECT`; a client sends the CONNECT first.
    Http,
    /// `unix`: a Unix domain stream socket at a path, accepted by every core.
    Unix,
    /// `quic`: rpcx over one QUIC stream (TLS 1.3, ALPN `rpcx`).
    Quic,
    /// `kcp`: rpcx over KCP in UDP, as kcp-go frames it.
    Kcp,
}

impl Network {
    /// Every network, in the order error messages list them.
    pub const ALL: [Network; 6] = [
        Network::Tcp,
        Network::Reuseport,
        Network::Http,
        Network::Unix,
        Network::Quic,
        Network::Kcp,
    ];

    /// The name used in `network@address`.
    pub fn name(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Reuseport => "reuseport",
            Network::Http => "http",
            Network::Unix => "unix",
            Network::Quic => "quic",
            Network::Kcp => "kcp",
        }
    }

    /// The network called `name` (`tcp4` and `tcp6` are `tcp`, as in Go).
    pub fn from_name(name: &str) -> Option<Network> {
        match name {
            "tcp4" | "tcp6" => Some(Network::Tcp),
            _ => Network::ALL.into_iter().find(|n| n.name() == name),
        }
    }

    /// Whether the address is `host:port` (every network but `unix`).
    pub fn is_ip(self) -> bool {
        self != Network::Unix
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `network@address`, e.g. `tcp@127.0.0.1:8972` or `unix@/run/percore.sock`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    /// The transport.
    pub network: Network,
    /// The network-specific part: `host:port`, or the path for `unix`.
    pub address: String,
}

/// An address that cannot be used as written; the message names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad address {addr:?}: {reason}")]
pub struct AddrError {
    /// The address as written.
    pub addr: String,
    /// What is wrong with it.
    pub reason: String,
}

impl AddrError {
    pub(crate) fn new(addr: impl fmt::Display, reason: impl Into<String>) -> AddrError {
        AddrError {
            addr: addr.to_string(),
            reason: reason.into(),
        }
    }
}

/// Longest path a Unix socket address can hold (`sun_path` is 108 bytes with the final NUL).
pub const MAX_UNIX_PATH: usize = 107;

impl Addr {
    /// `network@address` from its parts, unchecked (for addresses the program made itself).
    pub fn new(network: Network, address: impl Into<String>) -> Addr {
        Addr {
            network,
            address: address.into(),
        }
    }

    /// The path of a `unix` address.
    pub fn unix_path(&self) -> Option<&Path> {
        (self.network == Network::Unix).then(|| Path::new(&self.address))
    }

    /// The IP address and port, for a listener: the host must be an IP literal, not a name.
    pub fn socket_addr(&self) -> Result<SocketAddr, AddrError> {
        self.address.parse().map_err(|_| {
            AddrError::new(
                self,
                format!(
                    "{:?} is not an IP address with a port (a listener needs one, e.g. 0.0.0.0:8972 or [::1]:8972)",
                    self.address
                ),
            )
        })
    }

    /// The host part of a `host:port` address (brackets of an IPv6 literal removed);
    /// `localhost` for unix (what a TLS client verifies when dialing a socket path).
    pub fn host(&self) -> &str {
        if !self.network.is_ip() {
            return "localhost";
        }
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl FromStr for Addr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Addr, AddrError> {
        let bad = |reason: String| AddrError::new(format_args!("{s}"), reason);
        let (name, address) = s.split_once('@').unwrap_or(("tcp", s));
        let network = Network::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Network::ALL.iter().map(|n| n.name()).collect();
            bad(format!(
                "unknown network {name:?} (expected one of {})",
                known.join(", ")
            ))
        })?;
        if network == Network::Unix {
            if address.is_empty() {
                return Err(bad("no socket path after unix@ (unix@/run/x.sock)".into()));
            }
            if address.len() > MAX_UNIX_PATH {
                return Err(bad(format!(
                    "a unix socket path is at most {MAX_UNIX_PATH} bytes, this one is {}",
                    address.len()
                )));
            }
            if address.contains('\0') {
                return Err(bad("a unix socket path cannot contain NUL".into()));
            }
        } else {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| bad(format!("{address:?} has no port (expected host:port)")))?;
            if host.is_empty() {
                return Err(bad(format!("{address:?} has no host")));
            }
            if port.parse::<u16>().is_err() {
                return Err(bad(format!(
                    "port {port:?} is not a number from 0 to 65535"
                )));
            }
        }
        Ok(Addr::new(network, address))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.network.name(), self.address)
    }
}

impl Serialize for Addr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_network_parses_and_prints_back() {
        for n in Network::ALL {
            let text = if n == Network::Unix {
                "unix@/tmp/x.sock".to_string()
            } else {
                format!("{}@127.0.0.1:8972", n.name())
            };
            let a: Addr = text.parse().unwrap();
            assert_eq!(a.network, n);
            assert_eq!(a.to_string(), text);
        }
        assert_eq!(
            "localhost:1".parse::<Addr>().unwrap().to_string(),
            "tcp@localhost:1"
        );
        assert_eq!(
            "tcp6@[::1]:9".parse::<Addr>().unwrap(),
            Addr::new(Network::Tcp, "[::1]:9")
        );
    }

    #[test]
    fn hosts_and_socket_addresses() {
        let a: Addr = "reuseport@example.com:8972".parse().unwrap();
        assert_eq!((a.network, a.host()), (Network::Reuseport, "example.com"));
        assert!(
            a.socket_addr()
                .unwrap_err()
                .to_string()
                .contains("IP address")
        );
        let v6: Addr = "http@[::1]:80".parse().unwrap();
        assert_eq!(v6.host(), "::1");
        assert_eq!(v6.socket_addr().unwrap().port(), 80);
        let u: Addr = "unix@/run/x.sock".parse().unwrap();
        assert_eq!(u.host(), "localhost");
        assert_eq!(u.unix_path(), Some(Path::new("/run/x.sock")));
    }

    #[test]
    fn errors_name_the_address_and_the_reason() {
        let long = format!("unix@/{}", "x".repeat(120));
        for (bad, why) in [
            ("udp@1.2.3.4:5", "unknown network"),
            ("tcp@1.2.3.4", "no port"),
            ("tcp@:5", "no host"),
            ("tcp@h:99999", "65535"),
            ("unix@", "no socket path"),
            ("unix@/a\0b", "NUL"),
            (long.as_str(), "107"),
        ] {
            let err = bad.parse::<Addr>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
