//! KCP as rpcx speaks it (kcp-go v5): reliable streams over UDP, one reactor thread per
//! listener (and one for all dialed sessions of the process), byte streams handed to the cores.
//!
//! # Layers, outermost first (all little-endian; see `crypt`, `fec`)
//!
//! ```text
//! UDP payload = crypt header (nonce 16, CRC32 4) ─ encrypted with AES-CFB128 (or `none`) ─┐
//!               FEC header (seqid 4, type 2) + size 2  (Reed-Solomon 10+3 parity groups)  │
//!               KCP segments (conv, cmd, frg, wnd, ts, sn, una, len, data)                 ┘
//! stream      = the PUSH data of the KCP conversation in order = the rpcx byte stream
//! ```
//!
//! `crypt` and `fec` are sans-IO and tested against a captured Go rpcx session
//! (tests/data/kcp-go-datagrams.json). The protocol state machine is the `kcp` crate in stream
//! mode. `reactor` owns the sockets, the session table, FEC, crypt and every session's timers;
//! `stream` is what a core holds: [`KcpStream`], an `AsyncRead + AsyncWrite` that is `Send`.
//!
//! # Threads
//!
//! ```text
//! percore-kcp (one per listener) ── epoll(UDP socket, eventfd), timer heap ─► per wake: read
//!     every datagram, open, FEC-decode, kcp.input ─► then for each session with work (input, a
//!     stream's poke on the ready queue, a due timer): KCP → rx buffer, tx buffer → KCP,
//!     update/flush, FEC-encode, seal, send ─► its next timer = min(kcp.check, held ACKs, idle)
//! new peer ─► sink(KcpStream, peer) ─► a core serves it like any other connection
//! core ─► KcpStream::poll_write ─► tx buffer, its slot on the ready queue + eventfd (once per
//!     pass) ─► reactor
//! ```
//!
//! Dialed sessions share one lazily started process-wide reactor (`percore-kcp-client`): a
//! load generator with hundreds of connections then costs one thread, not hundreds, and a
//! glommio executor never blocks on a dial (KCP has no handshake: `dial` only makes a socket).

mod crypt;
mod fec;
mod reactor;
mod stream;
#[cfg(test)]
mod vectors;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crypt::{CryptError, DERIVED_KEY_LEN, derive_key};
pub use fec::FecError;
pub use reactor::{KcpListener, dial, dial_stats, listen};
pub use stream::{Ended, KcpStream};

/// What a listener does with each new session: hand it to a core. Called on the reactor
/// thread, so it must only queue the stream, never wait. Returns false when nobody takes
/// sessions any more (the server is shutting down): the listener then starts no more of them.
pub type Sink = Box<dyn Fn(KcpStream, SocketAddr) -> bool + Send + Sync>;

/// The KCP packet format kcp-go's UDP datagrams hold: the largest UDP payload kcp-go reads.
pub const MTU_LIMIT: usize = 1500;

/// `[kcp]`: KCP's settings and kcp-go's layers, the same on both ends of a session. The
/// defaults are what rpcx's examples use (stream mode, ACK no-delay, FEC 10+3, AES with the
/// examples' public password), so an rpcx example client works unchanged; its key is public,
/// so set `key` or `password` + `salt` for anything that matters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KcpConfig {
    /// Largest UDP payload sent, counting kcp-go's 28 header bytes (crypt 20, FEC 8) as kcp-go
    /// does; KCP itself gets the rest. 100..=1500. kcp-go's default: 1400.
    pub mtu: usize,
    /// Send window in segments (kcp-go's default 32).
    pub snd_wnd: u16,
    /// Receive window in segments. At least 128: the `kcp` crate (like C ikcp) raises smaller
    /// values to 128, so a smaller one is refused rather than silently changed. kcp-go's
    /// default is 32; the window only bounds what the peer may send ahead, and a kcp-go peer
    /// sends at most its own send window (32) anyway.
    pub rcv_wnd: u16,
    /// KCP's internal update interval (timers, delayed ACKs when `ack_nodelay` is off),
    /// 10ms..=5s. kcp-go's default: 100ms.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// KCP "nodelay" mode: minimum RTO 30ms instead of 100ms, slower RTO backoff.
    pub nodelay: bool,
    /// Fast retransmit after this many duplicate ACKs; 0 = off.
    pub resend: u32,
    /// Turn KCP's congestion window off (kcp-go `nc`).
    pub no_congestion_window: bool,
    /// ACK every received segment as soon as the datagram is read (rpcx's examples turn this
    /// on) instead of on the next `interval` tick.
    pub ack_nodelay: bool,
    /// With `ack_nodelay`: ACKs for stream bytes just handed to the core wait this long for
    /// the core's reply, which then carries them in the same datagram (for rpcx's
    /// request/response traffic, half the datagrams); without a reply they go alone after it.
    /// The peer sees its round-trip time grow by at most this much. 0 = acknowledge at once,
    /// exactly as kcp-go does; at most 50ms.
    #[serde(with = "humantime_serde")]
    pub ack_delay: Duration,
    /// Reed-Solomon data shards per FEC group (rpcx hard-codes 10). 0 turns FEC off, which
    /// only talks to a kcp-go peer that also has it off (rpcx never does).
    pub data_shards: usize,
    /// Parity shards per FEC group (rpcx hard-codes 3). 0 turns FEC off, as `data_shards = 0`.
    pub parity_shards: usize,
    /// `aes` (AES-CFB, kcp-go `NewAESBlockCrypt`) or `none` (nonce + CRC header, payload in
    /// clear: kcp-go `NewNoneBlockCrypt`).
    pub crypt: CryptKind,
    /// The AES key as hex: 16, 24 or 32 bytes for AES-128, -192 or -256. When set, `password`
    /// and `salt` must not be.
    pub key: Option<String>,
    /// Without `key`: the key is PBKDF2-HMAC-SHA1(password, salt, 4096 rounds, 32 bytes), as
    /// rpcx's examples make it. Default "rpcx-key" (public!).
    pub password: Option<String>,
    /// Salt of the key derivation. Default "rpcx-salt" (public!).
    pub salt: Option<String>,
    /// A session that receives nothing for this long is dropped (KCP has no FIN, so this is
    /// how a vanished peer is noticed), e.g. "5m".
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most sessions a listener keeps; datagrams that would start one more are dropped.
    pub max_sessions: usize,
    /// Most bytes buffered per session and direction between KCP and the core; a full
    /// receive buffer closes KCP's window (the peer waits), a full send buffer makes writes
    /// wait.
    pub max_buffered: usize,
}

/// The crypt layer's cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CryptKind {
    Aes,
    None,
}

/// rpcx-examples' password and salt (public).
pub const DEFAULT_PASSWORD: &str = "rpcx-key";
pub const DEFAULT_SALT: &str = "rpcx-salt";

impl Default for KcpConfig {
    fn default() -> KcpConfig {
        KcpConfig {
            mtu: 1400,
            snd_wnd: 32,
            rcv_wnd: 128,
            interval: Duration::from_millis(100),
            nodelay: false,
            resend: 0,
            no_congestion_window: false,
            ack_nodelay: true,
            ack_delay: Duration::from_millis(1),
            data_shards: 10,
            parity_shards: 3,
            crypt: CryptKind::Aes,
            key: None,
            password: None,
            salt: None,
            idle_timeout: Duration::from_secs(300),
            max_sessions: 10_000,
            max_buffered: 256 << 10,
        }
    }
}

/// A [`KcpConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct KcpConfigError {
    pub key: &'static str,
    pub why: String,
}

fn bad(key: &'static str, why: impl Into<String>) -> KcpConfigError {
    KcpConfigError {
        key,
        why: why.into(),
    }
}

impl KcpConfig {
    /// This config with `key = value` pairs applied, as `--kcp KEY=VALUE` flags give them (the
    /// value read as TOML when it parses as TOML, else as a string); an unknown key is an error.
    pub fn with(&self, pairs: &[(String, String)]) -> Result<KcpConfig, String> {
        if pairs.is_empty() {
            return Ok(self.clone());
        }
        let mut table = toml::Table::try_from(self).map_err(|e| e.to_string())?;
        for (k, v) in pairs {
            table.insert(k.clone(), crate::config::text_value(v));
        }
        let text = toml::to_string(&table).map_err(|e| e.to_string())?;
        toml::from_str(&text).map_err(|e| e.message().to_owned())
    }

    /// Checks every key without deriving the key (for config validation).
    pub fn check(&self) -> Result<(), KcpConfigError> {
        self.build(false).map(drop)
    }

    /// Checks every key and derives the key material once (PBKDF2 is deliberately slow).
    pub fn prepare(&self) -> Result<Arc<KcpSetup>, KcpConfigError> {
        self.build(true)?
            .ok_or_else(|| bad("kcp.key", "no key material"))
    }

    fn build(&self, derive: bool) -> Result<Option<Arc<KcpSetup>>, KcpConfigError> {
        if !(100..=MTU_LIMIT).contains(&self.mtu) {
            return Err(bad("kcp.mtu", format!("{} is not in 100..=1500", self.mtu)));
        }
        if self.snd_wnd == 0 {
            return Err(bad("kcp.snd_wnd", "must be at least 1"));
        }
        if self.rcv_wnd < 128 {
            return Err(bad(
                "kcp.rcv_wnd",
                format!("{} is below 128, the kcp crate's minimum", self.rcv_wnd),
            ));
        }
        let ms = self.interval.as_millis();
        if !(10..=5000).contains(&ms) {
            return Err(bad("kcp.interval", "must be between 10ms and 5s"));
        }
        if self.ack_delay > Duration::from_millis(50) {
            return Err(bad("kcp.ack_delay", "at most 50ms"));
        }
        if self.resend > i32::MAX as u32 {
            return Err(bad("kcp.resend", "too large"));
        }
        let rs = match (self.data_shards, self.parity_shards) {
            (0, 0) => None,
            (0, _) | (_, 0) => {
                return Err(bad(
                    "kcp.data_shards",
                    "data_shards and parity_shards are both 0 (FEC off) or both positive",
                ));
            }
            (d, p) if d + p > 255 => {
                return Err(bad(
                    "kcp.data_shards",
                    "data + parity shards is at most 255",
                ));
            }
            (d, p) => Some(
                fec::codec(d, p).ok_or_else(|| bad("kcp.data_shards", "no Reed-Solomon code"))?,
            ),
        };
        let crypt = match self.crypt {
            CryptKind::None => {
                if self.key.is_some() || self.password.is_some() || self.salt.is_some() {
                    return Err(bad("kcp.crypt", "\"none\" takes no key, password or salt"));
                }
                crypt::Crypt::None
            }
            CryptKind::Aes => {
                let key = match &self.key {
                    Some(hex) => {
                        if self.password.is_some() || self.salt.is_some() {
                            return Err(bad(
                                "kcp.key",
                                "set either key or password + salt, not both",
                            ));
                        }
                        parse_hex(hex).ok_or_else(|| bad("kcp.key", "not hex"))?
                    }
                    None => derive_key(
                        self.password
                            .as_deref()
                            .unwrap_or(DEFAULT_PASSWORD)
                            .as_bytes(),
                        self.salt.as_deref().unwrap_or(DEFAULT_SALT).as_bytes(),
                    )
                    .to_vec(),
                };
                crypt::Crypt::aes(&key).ok_or_else(|| {
                    bad("kcp.key", "must be 16, 24 or 32 bytes (32 or 48 or 64 hex)")
                })?
            }
        };
        if self.idle_timeout < Duration::from_millis(100) {
            return Err(bad("kcp.idle_timeout", "must be at least 100ms"));
        }
        if self.max_sessions == 0 {
            return Err(bad("kcp.max_sessions", "must be at least 1"));
        }
        if self.max_buffered < MTU_LIMIT {
            return Err(bad("kcp.max_buffered", "must be at least 1500 bytes"));
        }
        let fec_header = if rs.is_some() {
            fec::HEADER + fec::SIZE
        } else {
            0
        };
        if !derive {
            return Ok(None);
        }
        Ok(Some(Arc::new(KcpSetup {
            kcp_mtu: self.mtu - crypt::HEADER - fec_header,
            fec_header,
            rs,
            crypt,
            cfg: self.clone(),
        })))
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A checked [`KcpConfig`] with its key material: what listeners and dialers take.
pub struct KcpSetup {
    cfg: KcpConfig,
    crypt: crypt::Crypt,
    rs: Option<Arc<reed_solomon_erasure::galois_8::ReedSolomon>>,
    /// Bytes of FEC header (8) or 0 without FEC.
    fec_header: usize,
    /// KCP's own MTU: the datagram MTU less the crypt and FEC headers.
    kcp_mtu: usize,
}

impl std::fmt::Debug for KcpSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpSetup")
            .field("crypt", &self.crypt)
            .field("fec", &self.rs.is_some())
            .field("kcp_mtu", &self.kcp_mtu)
            .finish()
    }
}

impl KcpSetup {
    pub fn config(&self) -> &KcpConfig {
        &self.cfg
    }
}

/// Counters of one listener (or of all dialed sessions), written by its reactor thread only.
#[derive(Debug, Default)]
pub struct KcpStats {
    /// Sessions open now.
    pub sessions: AtomicU64,
    /// Sessions ever opened.
    pub sessions_total: AtomicU64,
    /// Sessions dropped because nothing came for `idle_timeout`.
    pub idle_timeouts: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// Datagrams the kernel refused to send (the socket buffer was full); KCP resends.
    pub send_errors: AtomicU64,
    /// Dropped: CRC mismatch (corrupt, or another key).
    pub dropped_crc: AtomicU64,
    /// Dropped: FEC or KCP could not parse it.
    pub dropped_decode: AtomicU64,
    /// Dropped: shorter than the headers.
    pub dropped_short: AtomicU64,
    /// Dropped: from an unknown peer and not a way to start a session (a parity shard, the
    /// listener draining, a stale conversation).
    pub dropped_unknown: AtomicU64,
    /// Dropped: would have started a session past `max_sessions`.
    pub dropped_session_cap: AtomicU64,
    /// Data shards rebuilt from parity.
    pub fec_recovered: AtomicU64,
    /// KCP segments sent again (timeout or fast retransmit).
    pub retransmissions: AtomicU64,
}

/// A plain copy of [`KcpStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KcpCounts {
    pub sessions: u64,
    pub sessions_total: u64,
    pub idle_timeouts: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub send_errors: u64,
    pub dropped_crc: u64,
    pub dropped_decode: u64,
    pub dropped_short: u64,
    pub dropped_unknown: u64,
    pub dropped_session_cap: u64,
    pub fec_recovered: u64,
    pub retransmissions: u64,
}

impl KcpStats {
    pub fn counts(&self) -> KcpCounts {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        KcpCounts {
            sessions: r(&self.sessions),
            sessions_total: r(&self.sessions_total),
            idle_timeouts: r(&self.idle_timeouts),
            datagrams_in: r(&self.datagrams_in),
            datagrams_out: r(&self.datagrams_out),
            send_errors: r(&self.send_errors),
            dropped_crc: r(&self.dropped_crc),
            dropped_decode: r(&self.dropped_decode),
            dropped_short: r(&self.dropped_short),
            dropped_unknown: r(&self.dropped_unknown),
            dropped_session_cap: r(&self.dropped_session_cap),
            fec_recovered: r(&self.fec_recovered),
            retransmissions: r(&self.retransmissions),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Runs kcp-go's packet layers on arbitrary bytes, as a datagram stream would bring them: each
/// piece (cut by the first byte) is opened with the rpcx example key and with `none`, and what
/// opens goes through the FEC decoder (groups of 10 + 3). Nothing may panic or grow without
/// bound. For the fuzz target (`fuzz/`).
#[doc(hidden)]
pub fn fuzz_packets(data: &[u8]) {
    use std::sync::OnceLock;
    static KEY: OnceLock<[u8; DERIVED_KEY_LEN]> = OnceLock::new();
    let key = KEY.get_or_init(|| derive_key(b"rpcx-key", b"rpcx-salt"));
    let Some((&cut, mut rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(crypt::HEADER);
    let (Some(aes), Some(rs)) = (crypt::Crypt::aes(key), fec::codec(10, 3)) else {
        return;
    };
    let mut decoder = fec::FecDecoder::new(rs);
    let mut recovered = Vec::new();
    while !rest.is_empty() {
        let (piece, after) = rest.split_at(cut.min(rest.len()));
        rest = after;
        for crypt in [&aes, &crypt::Crypt::None] {
            let mut dgram = piece.to_vec();
            if crypt.open(&mut dgram).is_ok() {
                recovered.clear();
                if let Ok(decoded) = decoder.decode(&dgram[crypt::HEADER..], &mut recovered) {
                    assert!(decoded.kcp.len() <= dgram.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vectors::Capture;

    #[test]
    fn defaults_are_rpcx_examples() {
        let setup = KcpConfig::default().prepare().unwrap();
        assert_eq!(
            setup.kcp_mtu, 1372,
            "kcp-go's 1400 counts the 28 header bytes"
        );
        assert!(matches!(setup.crypt, crypt::Crypt::Aes256(_)));
        let cap = Capture::load();
        let mut d = cap.datagrams[0].ciphertext.clone();
        setup.crypt.open(&mut d).unwrap();
    }

    #[test]
    fn bad_configs_name_their_key() {
        let check = |f: fn(&mut KcpConfig), key: &str| {
            let mut c = KcpConfig::default();
            f(&mut c);
            assert_eq!(c.prepare().unwrap_err().key, key);
            assert_eq!(c.check().unwrap_err().key, key);
        };
        check(|c| c.mtu = 2000, "kcp.mtu");
        check(|c| c.rcv_wnd = 32, "kcp.rcv_wnd");
        check(|c| c.parity_shards = 0, "kcp.data_shards");
        check(|c| c.key = Some("zz".into()), "kcp.key");
        check(|c| c.key = Some("00".repeat(20)), "kcp.key");
        check(
            |c| {
                c.key = Some("00".repeat(16));
                c.password = Some("x".into());
            },
            "kcp.key",
        );
        check(
            |c| {
                c.crypt = CryptKind::None;
                c.salt = Some("x".into());
            },
            "kcp.crypt",
        );
        check(|c| c.interval = Duration::from_millis(1), "kcp.interval");
        let c = KcpConfig {
            key: Some("00".repeat(16)),
            ..KcpConfig::default()
        };
        assert!(matches!(
            c.prepare().unwrap().crypt,
            crypt::Crypt::Aes128(_)
        ));
    }

    #[test]
    fn flags_set_any_key_and_unknown_ones_are_named() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = KcpConfig::default()
            .with(&pairs(&[
                ("password", "s3cret"),
                ("interval", "20ms"),
                ("nodelay", "true"),
            ]))
            .unwrap();
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.interval, Duration::from_millis(20));
        assert!(c.nodelay);
        let e = KcpConfig::default()
            .with(&pairs(&[("pasword", "x")]))
            .unwrap_err();
        assert!(e.contains("pasword"), "{e}");
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let e = toml::from_str::<KcpConfig>("mtu = 1400\nmtuu = 3\n").unwrap_err();
        assert!(e.to_string().contains("mtuu"), "{e}");
        let c: KcpConfig = toml::from_str("interval = \"20ms\"\ncrypt = \"none\"").unwrap();
        assert_eq!(c.interval, Duration::from_millis(20));
        assert_eq!(c.crypt, CryptKind::None);
    }

    /// The captured client→server KCP bytes, fed to the `kcp` crate in stream mode, give back
    /// the rpcx frames the Go client sent, in order.
    #[test]
    fn rpcx_frames_reassemble_from_the_captured_kcp_stream() {
        let cap = Capture::load();
        let setup = KcpConfig::default().prepare().unwrap();
        for c2s in [true, false] {
            let mut dec = fec::FecDecoder::new(setup.rs.clone().unwrap());
            let mut k: Option<kcp::Kcp<Vec<u8>>> = None;
            let mut recovered = Vec::new();
            let mut stream = Vec::new();
            for d in cap.datagrams.iter().filter(|d| d.c2s == c2s) {
                let mut buf = d.ciphertext.clone();
                setup.crypt.open(&mut buf).unwrap();
                let got = dec.decode(&buf[crypt::HEADER..], &mut recovered).unwrap();
                if got.kcp.is_empty() {
                    continue;
                }
                let k = k.get_or_insert_with(|| {
                    let conv = u32::from_le_bytes(got.kcp[..4].try_into().unwrap());
                    let mut k = kcp::Kcp::new_stream(conv, Vec::new());
                    k.update(0).unwrap();
                    k
                });
                k.input(got.kcp).unwrap();
                let mut out = [0u8; 2048];
                while let Ok(n) = k.recv(&mut out) {
                    stream.extend_from_slice(&out[..n]);
                }
            }
            let frames = if c2s {
                &cap.frames_c2s
            } else {
                &cap.frames_s2c
            };
            assert_eq!(frames.len(), 12);
            assert_eq!(stream, frames.concat(), "c2s {c2s}");
        }
    }
}
