//! KCP at the module level: listener, dialer and streams on loopback, through a lossy relay that
//! drops, duplicates and reorders datagrams; vanished peers, garbage and caps.

#[path = "common/relay.rs"]
mod relay;

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use percore::transport::kcp::{self, KcpConfig, KcpListener, KcpStream};
use relay::{Loss, Relay};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// A listener whose sessions are echoed back, each by a thread of its own.
fn echo_server(cfg: &KcpConfig) -> KcpListener {
    let setup = cfg.prepare().unwrap();
    kcp::listen(
        "127.0.0.1:0".parse().unwrap(),
        &setup,
        Box::new(|stream, _| {
            std::thread::spawn(move || block_on(echo(stream)));
            true
        }),
    )
    .unwrap()
}

async fn echo(mut s: KcpStream) {
    let mut buf = vec![0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Settings that make a lossy test quick: short interval and RTO, fast resend.
/// A listener on 127.0.0.1 whose new streams come out of the returned channel.
fn listen_to_channel(cfg: &KcpConfig) -> (KcpListener, mpsc::Receiver<KcpStream>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = kcp::listen(
        "127.0.0.1:0".parse().unwrap(),
        &cfg.prepare().unwrap(),
        Box::new(move |s, _| tx.lock().unwrap().send(s).is_ok()),
    )
    .unwrap();
    (server, rx)
}

fn quick() -> KcpConfig {
    KcpConfig {
        interval: Duration::from_millis(10),
        nodelay: true,
        resend: 2,
        ..KcpConfig::default()
    }
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Writes `data` and reads the same number of bytes back, concurrently.
async fn round_trip(s: KcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = futures_lite::io::split(s);
    let send = async {
        for chunk in data.chunks(3000) {
            w.write_all(chunk).await.unwrap();
        }
        w
    };
    let recv = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let (_, back) = futures_lite::future::zip(send, recv).await;
    back
}

fn with_timeout<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WAIT).expect("finished in time")
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn streams_carry_bytes_both_ways_through_a_lossy_relay() {
    let cfg = quick();
    let server = echo_server(&cfg);
    let relay = Relay::start(
        server.local_addr(),
        Loss {
            drop: 10,
            dup: 5,
            reorder: 10,
        },
        0x9e3779b97f4a7c15,
    );
    let setup = cfg.prepare().unwrap();
    let target = relay.addr;
    let results = with_timeout(move || {
        let handles: Vec<_> = (0..3u8)
            .map(|i| {
                let setup = setup.clone();
                std::thread::spawn(move || {
                    let data = pattern(40_000 + 1000 * usize::from(i), i);
                    let s = kcp::dial(target, &setup).unwrap();
                    let back = block_on(round_trip(s, &data));
                    back == data
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(results, vec![true; 3]);
    let c = server.stats().counts();
    // One session per client at least: a duplicate the relay delivers after a client's session
    // has ended starts another one, as in kcp-go (any datagram from an unknown address does).
    assert!(c.sessions_total >= 3, "{c:?}");
    assert!(c.retransmissions > 0 || c.fec_recovered > 0, "{c:?}");
    assert!(kcp::dial_stats().counts().datagrams_out > 0);
    drop(relay);
}

#[test]
fn rpcx_example_settings_work_through_loss() {
    // The defaults (kcp-go's 100ms interval, normal RTO) are slower to recover, so less data.
    let cfg = KcpConfig::default();
    let server = echo_server(&cfg);
    let relay = Relay::start(
        server.local_addr(),
        Loss {
            drop: 10,
            dup: 5,
            reorder: 5,
        },
        7,
    );
    let setup = cfg.prepare().unwrap();
    let target = relay.addr;
    let ok = with_timeout(move || {
        let data = pattern(3_000, 3);
        let s = kcp::dial(target, &setup).unwrap();
        block_on(async {
            let mut s = s;
            // Request/response turns, like rpcx calls.
            for chunk in data.chunks(100) {
                s.write_all(chunk).await.unwrap();
                let mut back = vec![0u8; chunk.len()];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, chunk);
            }
            true
        })
    });
    assert!(ok);
    drop(relay);
}

#[test]
fn a_vanished_peer_is_reclaimed_after_the_idle_timeout() {
    let cfg = KcpConfig {
        idle_timeout: Duration::from_millis(300),
        ..quick()
    };
    let (server, rx) = listen_to_channel(&cfg);
    let relay = Relay::start(
        server.local_addr(),
        Loss {
            drop: 0,
            dup: 0,
            reorder: 0,
        },
        1,
    );
    // The client keeps a long idle timeout: only the server should give up.
    let client_cfg = KcpConfig {
        idle_timeout: Duration::from_secs(60),
        ..quick()
    };
    let mut client = kcp::dial(relay.addr, &client_cfg.prepare().unwrap()).unwrap();
    block_on(client.write_all(b"hello")).unwrap();
    let mut at_server = rx.recv_timeout(WAIT).unwrap();
    let mut buf = [0u8; 5];
    block_on(at_server.read_exact(&mut buf)).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(server.stats().counts().sessions, 1);

    relay.mute.store(true, Ordering::SeqCst);
    assert!(wait_until(|| server.stats().counts().sessions == 0));
    let c = server.stats().counts();
    assert_eq!((c.idle_timeouts, c.sessions_total), (1, 1));
    // The core holding the stream learns why it ended.
    let err = with_timeout(move || block_on(at_server.read(&mut [0u8; 8])).unwrap_err());
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    drop(client);
}

#[test]
fn garbage_is_dropped_and_counted_and_the_listener_keeps_serving() {
    let cfg = quick();
    let server = echo_server(&cfg);
    let addr = server.local_addr();
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 12345u64;
    let mut sent = 0;
    for len in [0usize, 1, 10, 19, 20, 27, 28, 52, 100, 1400, 1500] {
        for _ in 0..5 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            junk.send_to(&bytes, addr).unwrap();
            sent += 1;
        }
    }
    assert!(wait_until(|| server.stats().counts().datagrams_in == sent));
    let c = server.stats().counts();
    assert_eq!(c.sessions_total, 0, "garbage starts no session");
    assert_eq!(
        c.dropped_short,
        5 * 5,
        "0, 1, 10, 19, 20 bytes: below crypt + FEC headers"
    );
    assert_eq!(c.dropped_crc + c.dropped_short, sent, "{c:?}");

    // A real peer is still served, and its stream survives garbage from its own address.
    let setup = cfg.prepare().unwrap();
    let ok = with_timeout(move || {
        let s = kcp::dial(addr, &setup).unwrap();
        let data = pattern(10_000, 9);
        block_on(round_trip(s, &data)) == data
    });
    assert!(ok);
    assert_eq!(server.stats().counts().sessions_total, 1);
}

#[test]
fn sessions_past_the_cap_are_refused_and_counted() {
    let cfg = KcpConfig {
        max_sessions: 1,
        ..quick()
    };
    let server = echo_server(&cfg);
    let setup = cfg.prepare().unwrap();
    let addr = server.local_addr();
    let mut first = kcp::dial(addr, &setup).unwrap();
    let mut second = kcp::dial(addr, &setup).unwrap();
    block_on(first.write_all(b"one")).unwrap();
    let mut b = [0u8; 3];
    let got = with_timeout(move || {
        block_on(first.read_exact(&mut b)).unwrap();
        b
    });
    assert_eq!(&got, b"one");
    block_on(second.write_all(b"two")).unwrap();
    assert!(wait_until(
        || server.stats().counts().dropped_session_cap > 0
    ));
    assert_eq!(server.stats().counts().sessions_total, 1);
}

#[test]
fn wrong_key_is_a_crc_drop() {
    let server = echo_server(&quick());
    let other = KcpConfig {
        password: Some("not-the-key".into()),
        ..quick()
    };
    let mut s = kcp::dial(server.local_addr(), &other.prepare().unwrap()).unwrap();
    block_on(s.write_all(b"x")).unwrap();
    assert!(wait_until(|| server.stats().counts().dropped_crc > 0));
    assert_eq!(server.stats().counts().sessions_total, 0);
}

#[test]
fn shutdown_waits_for_open_streams_to_be_closed_by_their_owners() {
    let cfg = quick();
    let (server, rx) = listen_to_channel(&cfg);
    let addr = server.local_addr();
    let stats = server.stats().clone();
    let mut client = kcp::dial(addr, &cfg.prepare().unwrap()).unwrap();
    block_on(client.write_all(b"ping")).unwrap();
    let mut at_server = rx.recv_timeout(WAIT).unwrap();
    // The owner answers, then closes: the reply must still reach the client after shutdown
    // began.
    let owner = std::thread::spawn(move || {
        block_on(async {
            let mut b = [0u8; 4];
            at_server.read_exact(&mut b).await.unwrap();
            std::thread::sleep(Duration::from_millis(100));
            at_server.write_all(b"pong").await.unwrap();
            at_server.close().await.unwrap();
        })
    });
    let stopper = std::thread::spawn(move || server.shutdown(WAIT));
    let got = with_timeout(move || {
        let mut b = [0u8; 4];
        block_on(client.read_exact(&mut b)).unwrap();
        b
    });
    assert_eq!(&got, b"pong");
    owner.join().unwrap();
    stopper.join().unwrap();
    assert_eq!(stats.counts().sessions, 0);
}

#[test]
fn dialing_a_port_nobody_listens_on_fails_the_stream() {
    // A UDP port just released: the kernel answers with ICMP port unreachable.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = quick().prepare().unwrap();
    let mut s = kcp::dial(([127, 0, 0, 1], port).into(), &setup).unwrap();
    let err = with_timeout(move || {
        block_on(async {
            s.write_all(b"anyone?").await.unwrap();
            s.read(&mut [0u8; 8]).await.unwrap_err()
        })
    });
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// A datagram for a `crypt = "none"` listener: nonce, CRC32 over bytes 20.., then `body`.
fn clear_datagram(body: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 20];
    d.extend_from_slice(body);
    let crc = crc32fast::hash(&d[20..]);
    d[16..20].copy_from_slice(&crc.to_le_bytes());
    d
}

#[test]
fn well_formed_garbage_inside_a_valid_crc_never_stops_the_reactor() {
    // With crypt = "none" anyone can make datagrams that pass the CRC, so the FEC and KCP
    // parsers behind it see arbitrary input: random shard types, sizes and KCP headers.
    let cfg = KcpConfig {
        crypt: kcp::CryptKind::None,
        ..quick()
    };
    let server = echo_server(&cfg);
    let addr = server.local_addr();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let socks: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut sent = 0u64;
    for i in 0..3000u64 {
        let mut body = Vec::new();
        body.extend_from_slice(&(rand() as u32).to_le_bytes()); // seqid
        body.extend_from_slice(match rand() % 8 {
            0..=5 => &[0xf1, 0],
            6 => &[0xf2, 0],
            _ => &[0xf3, 0],
        });
        body.extend_from_slice(&(rand() as u16).to_le_bytes()); // size
        // KCP segments with a few plausible commands and random everything else.
        for _ in 0..(rand() % 3) {
            let conv = if rand() % 4 != 0 { 7 } else { rand() as u32 };
            body.extend_from_slice(&conv.to_le_bytes());
            body.push(81 + (rand() % 5) as u8);
            body.push(rand() as u8);
            body.extend_from_slice(&(rand() as u16).to_le_bytes());
            for _ in 0..3 {
                body.extend_from_slice(&(rand() as u32).to_le_bytes()); // ts, sn, una
            }
            let len = (rand() % 64) as u32;
            let claimed = if rand() % 4 == 0 { rand() as u32 } else { len };
            body.extend_from_slice(&claimed.to_le_bytes());
            body.extend((0..len).map(|_| rand() as u8));
        }
        let sock = &socks[(i % 4) as usize];
        sock.send_to(&clear_datagram(&body), addr).unwrap();
        sent += 1;
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // stay within the socket buffer
        }
    }
    let stats = server.stats().clone();
    wait_until(|| stats.counts().datagrams_in >= sent * 9 / 10);
    let c = stats.counts();
    assert!(c.dropped_decode > 0, "{c:?}");
    assert!(
        c.sessions <= 4,
        "one session per source address at most: {c:?}"
    );
    assert!(c.sessions_total >= 1, "{c:?}");

    // The reactor still serves a real peer.
    let setup = cfg.prepare().unwrap();
    let ok = with_timeout(move || {
        let s = kcp::dial(addr, &setup).unwrap();
        let data = pattern(20_000, 5);
        block_on(round_trip(s, &data)) == data
    });
    assert!(ok);
}

#[test]
fn a_reader_that_stops_reading_stops_the_sender_instead_of_growing_a_buffer() {
    let cfg = KcpConfig {
        max_buffered: 32 << 10,
        ..quick()
    };
    let (server, rx) = listen_to_channel(&cfg);
    let setup = cfg.prepare().unwrap();
    let client = kcp::dial(server.local_addr(), &setup).unwrap();
    // The writer pushes until writes stay pending: what it got rid of is bounded by the two
    // buffers and KCP's windows (send 32 + receive 128 segments of at most 1348 bytes).
    let bound = 2 * (32 << 10) + (32 + 128) * 1348 * 2;
    let (accepted, client) = with_timeout(move || {
        let mut client = client;
        let chunk = vec![7u8; 16 << 10];
        let mut accepted = 0usize;
        let mut stalled_since = Instant::now();
        while stalled_since.elapsed() < Duration::from_millis(500) && accepted < 10 * bound {
            match block_on(futures_lite::future::poll_once(client.write(&chunk))) {
                Some(Ok(n)) => {
                    accepted += n;
                    stalled_since = Instant::now();
                }
                Some(Err(e)) => panic!("{e}"),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        (accepted, client)
    });
    assert!(
        accepted <= bound,
        "{accepted} bytes accepted with nobody reading"
    );
    // Once the reader reads, everything arrives and the writer goes on.
    let mut at_server = rx.recv_timeout(WAIT).unwrap();
    let got = with_timeout(move || {
        let mut buf = vec![0u8; accepted];
        block_on(at_server.read_exact(&mut buf)).unwrap();
        let _keep = client;
        buf.iter().all(|&b| b == 7)
    });
    assert!(got);
}

/// Server datagrams sent per request/response turn over `turns` echoed 100-byte requests.
fn datagrams_per_turn(cfg: &KcpConfig, turns: usize) -> f64 {
    let server = echo_server(cfg);
    let setup = cfg.prepare().unwrap();
    let addr = server.local_addr();
    with_timeout(move || {
        let mut s = kcp::dial(addr, &setup).unwrap();
        block_on(async {
            for i in 0..turns {
                let req = pattern(100, i as u8);
                s.write_all(&req).await.unwrap();
                let mut back = vec![0u8; 100];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, req);
            }
        })
    });
    server.stats().counts().datagrams_out as f64 / turns as f64
}

#[test]
fn a_held_ack_rides_on_the_reply() {
    // At once (kcp-go's ack_nodelay): an ACK datagram, then the reply, per turn (plus FEC
    // parity, 3 per 10). Held for the reply: the reply carries the ACK.
    let at_once = datagrams_per_turn(
        &KcpConfig {
            ack_delay: Duration::ZERO,
            ..quick()
        },
        50,
    );
    let held = datagrams_per_turn(
        &KcpConfig {
            ack_delay: Duration::from_millis(20),
            ..quick()
        },
        50,
    );
    assert!(at_once >= 2.0, "{at_once} datagrams per turn");
    assert!(held < 1.6, "{held} datagrams per turn");
}
