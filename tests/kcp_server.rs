//! rpcx over KCP end to end: `server::start` and the real binary serving `kcp@`, percore's client
//! dialing it, through a relay that drops, duplicates and reorders datagrams; garbage counted in
//! /metrics; SIGTERM with calls in flight.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percore::builtin::{ArithArgs, ArithReply};
use percore::client::{Client, Options};
use percore::server::ServerHandle;
use percore::transport::addr::Network;
use percore::transport::kcp::KcpConfig;
use relay::{Loss, Relay};

/// KCP settings that recover from loss quickly (the defaults' 100ms interval and RTO would make
/// these tests slow, not different).
fn quick() -> KcpConfig {
    KcpConfig {
        interval: Duration::from_millis(10),
        nodelay: true,
        resend: 2,
        ..KcpConfig::default()
    }
}

fn kcp_addr(server: &ServerHandle) -> SocketAddr {
    server
        .listen_addrs()
        .iter()
        .find(|a| a.network == Network::Kcp)
        .expect("a kcp listener")
        .socket_addr()
        .unwrap()
}

fn client_options() -> Options {
    Options {
        kcp: quick(),
        timeout: Some(Duration::from_secs(20)),
        connect_timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

/// `calls` Arith.Mul calls on each of `conns` connections to `target`, `in_flight` at a time
/// per connection; returns (calls answered correctly, calls made).
fn mul_calls(target: String, conns: i64, calls: i64, in_flight: i64) -> (usize, usize) {
    percore::client::block_on(move || async move {
        let mut tasks = Vec::new();
        for conn in 0..conns {
            let client = Client::new(&target, client_options()).unwrap();
            for lane in 0..in_flight {
                let client = client.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut ok = 0;
                    for i in (lane..calls).step_by(in_flight as usize) {
                        let b = conn * 1000 + 7;
                        let r: Result<ArithReply, _> =
                            client.call("Arith", "Mul", &ArithArgs { a: i, b }).await;
                        if matches!(r, Ok(ArithReply { c }) if c == i * b) {
                            ok += 1;
                        }
                    }
                    ok
                }));
            }
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await;
        }
        (ok, (conns * calls) as usize)
    })
    .unwrap()
}

#[test]
fn rpcx_calls_over_kcp_through_a_lossy_relay_are_all_answered() {
    let server = common::start_with(2, |c| {
        c.server.listen = vec![
            "tcp@127.0.0.1:0".parse().unwrap(),
            "kcp@127.0.0.1:0".parse().unwrap(),
        ];
        c.kcp = quick();
    });
    assert!(server.wait_ready());
    let relay = Relay::start(
        kcp_addr(&server),
        Loss {
            drop: 10,
            dup: 5,
            reorder: 10,
        },
        0x2545f4914f6cdd1d,
    );
    let (ok, made) = mul_calls(format!("kcp@{}", relay.addr), 3, 40, 4);
    assert_eq!(ok, made, "every call answered correctly");
    let kcp = server.kcp_stats()[0].counts();
    assert_eq!(kcp.sessions_total, 3);
    assert!(kcp.retransmissions + kcp.fec_recovered > 0, "{kcp:?}");
    let metrics = &server.metrics();
    let accepted: u64 = metrics
        .iter()
        .map(|m| m.transport(percore::metrics::Transport::Kcp).accepted.get())
        .sum();
    assert_eq!(
        accepted, 3,
        "each session served by a core as a kcp connection"
    );
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn the_rpcx_example_defaults_serve_calls() {
    // Nothing but the listener: the [kcp] defaults are rpcx's examples, as a Go client uses them.
    let server = common::start_with(1, |c| {
        c.server.listen = vec!["kcp@127.0.0.1:0".parse().unwrap()];
    });
    assert!(server.wait_ready());
    let target = format!("kcp@{}", kcp_addr(&server));
    let (ok, made) = percore::client::block_on(move || async move {
        let client = Client::new(&target, Options::default()).unwrap();
        let mut ok = 0;
        for i in 0..5 {
            let r: ArithReply = client
                .call("Arith", "Mul", &ArithArgs { a: i, b: 3 })
                .await
                .unwrap();
            ok += usize::from(r.c == i * 3);
        }
        (ok, 5)
    })
    .unwrap();
    assert_eq!(ok, made);
    server.shutdown();
    server.join().unwrap();
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child if the test fails half-way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// `percore serve` with a kcp listener, `extra` TOML appended; waits for its admin endpoint.
fn serve(extra: &str) -> (Server, SocketAddr, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("percore-kcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("kcp-{}.toml", free_tcp_port()));
    std::fs::write(
        &config,
        format!("[kcp]\ninterval = \"10ms\"\nnodelay = true\nresend = 2\n{extra}"),
    )
    .unwrap();
    let kcp = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--cores", "2", "--config"])
            .arg(&config)
            .args(["--listen", &format!("kcp@{kcp}")])
            .args(["--admin-listen", &admin.to_string()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::eventually("the admin endpoint answers", || {
        TcpStream::connect(admin).is_ok()
    });
    (server, kcp, admin)
}

#[test]
fn garbage_datagrams_are_counted_by_reason_and_calls_go_on() {
    let (_server, kcp, admin) = serve("");
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [3usize, 60, 200, 1400] {
        junk.send_to(&vec![0xa5; len], kcp).unwrap();
    }
    common::eventually("four datagrams counted", || {
        scrape(admin).get("rpcx_server_kcp_datagrams_total{direction=\"in\"}") == Some(&4.0)
    });
    let m = scrape(admin);
    let dropped =
        |r: &str| m[&format!("rpcx_server_kcp_dropped_datagrams_total{{reason=\"{r}\"}}")];
    assert_eq!((dropped("too_short"), dropped("crc")), (1.0, 3.0));
    assert_eq!(m["rpcx_server_kcp_sessions_total"], 0.0);
    let (ok, made) = mul_calls(format!("kcp@{kcp}"), 1, 10, 2);
    assert_eq!(ok, made);
    assert_eq!(scrape(admin)["rpcx_server_kcp_sessions_total"], 1.0);
}

#[test]
fn sigterm_with_kcp_calls_in_flight_loses_none() {
    // The delay keeps the calls in flight when SIGTERM comes; the drain timeout is far above it.
    let (mut server, kcp, admin) =
        serve("[server]\ndrain_timeout = \"30s\"\n[services.Hello]\ndelay = \"2s\"\n");
    let relay = Relay::start(
        kcp,
        Loss {
            drop: 10,
            dup: 5,
            reorder: 5,
        },
        99,
    );
    let target = format!("kcp@{}", relay.addr);
    let (conns, per_conn) = (2usize, 3usize);
    let calls = std::thread::spawn(move || {
        percore::client::block_on(move || async move {
            let msg = prost::Message::encode_to_vec(
                &percore::bench_message::BenchmarkMessage::prepared(),
            );
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let client = Client::new(
                    &target,
                    Options {
                        serialize: percore::codec::SerializeType::Protobuf,
                        ..client_options()
                    },
                )
                .unwrap();
                for _ in 0..per_conn {
                    let (client, msg) = (client.clone(), msg.clone());
                    tasks.push(glommio::spawn_local(async move {
                        let req = percore::client::Request {
                            timeout: Some(Duration::from_secs(20)),
                            ..percore::client::Request::new(
                                "Hello",
                                "Say",
                                percore::codec::SerializeType::Protobuf,
                                &msg,
                            )
                        };
                        let reply = client.call_raw(&req).await;
                        match reply {
                            Ok(r) if !r.header.is_error() => {
                                let got: percore::bench_message::BenchmarkMessage =
                                    prost::Message::decode(r.payload.as_slice()).unwrap();
                                got.field1 == "OK"
                            }
                            _ => false,
                        }
                    }));
                }
            }
            let mut ok = 0;
            for t in tasks {
                ok += usize::from(t.await);
            }
            ok
        })
        .unwrap()
    });
    let key = "rpcx_server_started_total{service=\"Hello\",method=\"Say\"}";
    let want = (conns * per_conn) as f64;
    common::eventually("every call reached a core", || {
        scrape(admin).get(key) == Some(&want)
    });
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let ok = calls.join().unwrap();
    assert_eq!(ok, conns * per_conn, "every call in flight answered");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
    drop(relay);
}
