//! Where a service's servers are: peer-to-peer (one address), a static list with metadata, or
//! etcd (a list kept up to date by a watch, [`EtcdDiscovery`]).
//!
//! Metadata is rpcx's URL query string (`weight=5&group=blue&state=inactive`), as a registry
//! would store it. `state=inactive` hides a server; `group=` is matched against
//! [`Options::group`](super::Options::group); `weight=` feeds WeightedRoundRobin (default 1).

use std::str::FromStr;

use super::etcd::EtcdDiscovery;
use crate::transport::addr::{Addr, AddrError};

/// One server and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    /// `network@host:port`.
    pub address: String,
    /// URL-query metadata, e.g. `weight=5&group=blue` (may be empty).
    pub metadata: String,
}

impl ServerEntry {
    /// A server with metadata.
    pub fn new(address: impl Into<String>, metadata: impl Into<String>) -> ServerEntry {
        ServerEntry {
            address: address.into(),
            metadata: metadata.into(),
        }
    }

    /// Every value of metadata key `key`, percent-decoded, in order.
    pub fn meta_values(&self, key: &str) -> Vec<String> {
        parse_query(&self.metadata)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// The first value of metadata key `key`.
    pub fn meta(&self, key: &str) -> Option<String> {
        parse_query(&self.metadata)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// `weight=N` (default 1; an unparsable weight is 1, as in rpcx).
    pub fn weight(&self) -> i64 {
        self.meta("weight")
            .and_then(|w| w.parse().ok())
            .unwrap_or(1)
    }

    /// Whether `state=inactive` hides this server.
    pub fn is_inactive(&self) -> bool {
        self.meta("state").as_deref() == Some("inactive")
    }

    /// Whether this server belongs to `group` (it has a `group=` value equal to it).
    pub fn in_group(&self, group: &str) -> bool {
        self.meta_values("group").iter().any(|g| g == group)
    }

    /// The parsed address.
    pub fn dial_addr(&self) -> Result<Addr, AddrError> {
        self.address.parse()
    }
}

/// `tcp@host:port` or `tcp@host:port?weight=5&group=blue`.
impl FromStr for ServerEntry {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, metadata) = s.split_once('?').unwrap_or((s, ""));
        address.parse::<Addr>()?;
        Ok(ServerEntry::new(address, metadata))
    }
}

/// How an [`XClient`](super::XClient) finds its servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// One server, no metadata (rpcx's `NewPeer2PeerDiscovery`).
    PeerToPeer(String),
    /// A fixed list of servers with metadata (rpcx's `NewMultipleServersDiscovery`).
    MultipleServers(Vec<ServerEntry>),
    /// The servers registered in etcd under `BASE/ServiceName/`, watched (rpcx-etcd's
    /// `NewEtcdV3Discovery`); an XClient takes each change before its next selection.
    Etcd(EtcdDiscovery),
}

impl Discovery {
    /// Every server, inactive ones included.
    pub fn entries(&self) -> Vec<ServerEntry> {
        match self {
            Discovery::PeerToPeer(address) => vec![ServerEntry::new(address.clone(), "")],
            Discovery::MultipleServers(entries) => entries.clone(),
            Discovery::Etcd(etcd) => etcd.servers(),
        }
    }

    /// The servers a client may call: `state=inactive` removed and, when `group` is given, only
    /// servers of that group (rpcx's `filterByStateAndGroup`).
    pub fn servers(&self, group: Option<&str>) -> Vec<ServerEntry> {
        filter(self.entries(), group)
    }
}

/// `state=inactive` removed and, when `group` is given, only servers of that group.
pub(crate) fn filter(entries: Vec<ServerEntry>, group: Option<&str>) -> Vec<ServerEntry> {
    entries
        .into_iter()
        .filter(|e| !e.is_inactive())
        .filter(|e| group.is_none_or(|g| e.in_group(g)))
        .collect()
}

/// `k=v&k2=v2` pairs, percent-decoded (`+` is a space), like Go's `url.ParseQuery`.
fn parse_query(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (unescape(k), unescape(v))
    })
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_a_url_query() {
        let e: ServerEntry = "tcp@127.0.0.1:1?weight=5&group=a&group=b%20c&state=active"
            .parse()
            .unwrap();
        assert_eq!(e.address, "tcp@127.0.0.1:1");
        assert_eq!(e.weight(), 5);
        assert!(e.in_group("a") && e.in_group("b c") && !e.in_group("d"));
        assert!(!e.is_inactive());
        assert_eq!(ServerEntry::new("x", "weight=zz").weight(), 1);
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("a%2"), "a%2");
    }

    #[test]
    fn inactive_and_other_groups_are_hidden() {
        let d = Discovery::MultipleServers(vec![
            ServerEntry::new("tcp@h:1", "group=g"),
            ServerEntry::new("tcp@h:2", "state=inactive&group=g"),
            ServerEntry::new("tcp@h:3", ""),
        ]);
        let all: Vec<_> = d.servers(None).into_iter().map(|e| e.address).collect();
        assert_eq!(all, ["tcp@h:1", "tcp@h:3"]);
        let g: Vec<_> = d
            .servers(Some("g"))
            .into_iter()
            .map(|e| e.address)
            .collect();
        assert_eq!(g, ["tcp@h:1"]);
    }
}
