//! QUIC end to end on loopback: `quic@` listeners served by the cores (`percore::server`),
//! called by percore's client over `quic@`, by a bare quinn client where a test needs what the
//! client does not do (two streams on one connection, a client that vanishes), and the real
//! binary drained by SIGTERM. Certificates are made at test time with rcgen.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::certs::{Certs, certs};
use common::{IO_TIMEOUT, msgpack_args, msgpack_reply, request};
use percore::bench_message::BenchmarkMessage;
use percore::builtin::{ArithArgs, ArithReply};
use percore::client::{Client, Options, Request};
use percore::codec::SerializeType;
use percore::config::Config;
use percore::metrics::{Close, Transport};
use percore::server::ServerHandle;
use percore::transport::tls::ClientTls;
use prost::Message as _;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A server with one `quic@127.0.0.1:0` listener on `cores` cores.
fn start_quic(certs: &Certs, cores: usize, tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    common::start_with(cores, |c| {
        c.server.listen = vec!["quic@127.0.0.1:0".parse().unwrap()];
        c.tls.cert = Some(certs.cert.clone());
        c.tls.key = Some(certs.key.clone());
        tweak(c);
    })
}

fn quic_addr(server: &ServerHandle) -> String {
    let addr = &server.listen_addrs()[0];
    assert_eq!(addr.network.name(), "quic");
    addr.to_string()
}

fn client_options(certs: &Certs, serialize: SerializeType) -> Options {
    Options {
        serialize,
        connect_timeout: IO_TIMEOUT,
        tls: Some(ClientTls {
            ca: Some(certs.ca.clone()),
            ..ClientTls::default()
        }),
        ..Options::default()
    }
}

/// Runs `make()`'s future on a glommio executor, failing the test if it takes too long.
fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    percore::client::block_on(move || async move {
        futures_lite::future::or(async { Some(make().await) }, async {
            glommio::timer::sleep(IO_TIMEOUT * 3).await;
            None
        })
        .await
        .expect("finished within the timeout")
    })
    .unwrap()
}

/// `quic` counts of every core.
fn quic_accepted(server: &ServerHandle) -> Vec<u64> {
    server
        .metrics()
        .iter()
        .map(|m| m.transport(Transport::Quic).accepted.get())
        .collect()
}

fn quic_open(server: &ServerHandle) -> u64 {
    server
        .metrics()
        .iter()
        .map(|m| {
            let t = m.transport(Transport::Quic);
            t.accepted.get() - t.closed_total()
        })
        .sum()
}

/// A quinn client endpoint on its own tokio runtime, for what percore's client does not do.
fn raw_client(certs: &Certs) -> (tokio::runtime::Runtime, quinn::Endpoint) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = percore::transport::tls::quic_client_config(&ClientTls {
        ca: Some(certs.ca.clone()),
        ..ClientTls::default()
    })
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = rt.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        endpoint
    });
    (rt, endpoint)
}

/// Reads one whole rpcx frame from a quinn stream.
async fn read_reply(recv: &mut quinn::RecvStream) -> percore::protocol::Message {
    let mut header = [0u8; percore::protocol::HEADER_LEN];
    recv.read_exact(&mut header).await.unwrap();
    let total = percore::protocol::frame_len(&header, u32::MAX)
        .unwrap()
        .unwrap();
    let mut buf = header.to_vec();
    buf.resize(total, 0);
    recv.read_exact(&mut buf[percore::protocol::HEADER_LEN..])
        .await
        .unwrap();
    let (frame, _) = percore::protocol::decode(&buf, u32::MAX).unwrap().unwrap();
    frame.to_message()
}

fn encode(msg: &percore::protocol::Message) -> Vec<u8> {
    msg.to_bytes()
}

/// A `percore` command with a deadline: killed and failed if it runs past it.
fn percore_cli(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > IO_TIMEOUT * 3 {
            let _ = child.kill();
            panic!("percore {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn calls_with_every_codec_and_a_heartbeat() {
    let certs = certs("codecs");
    let server = start_quic(&certs, 1, |_| {});
    let addr = quic_addr(&server);
    let typed: Vec<Options> = [
        SerializeType::Json,
        SerializeType::MsgPack,
        SerializeType::Protobuf,
    ]
    .into_iter()
    .map(|s| client_options(&certs, s))
    .collect();
    let raw = client_options(&certs, SerializeType::Raw);
    let gzip = Options {
        gzip: true,
        ..client_options(&certs, SerializeType::Raw)
    };
    run(move || async move {
        for options in typed {
            let serialize = options.serialize;
            let c = Client::new(&addr, options).unwrap();
            let r: ArithReply = c
                .call("Arith", "Mul", &ArithArgs { a: 7, b: -6 })
                .await
                .unwrap_or_else(|e| panic!("{serialize:?}: {e}"));
            assert_eq!(r.c, -42, "{serialize:?}");
            c.heartbeat(Some(IO_TIMEOUT)).await.unwrap();
        }
        // Raw (Echo), plain and gzip, many QUIC packets long.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for options in [raw, gzip] {
            let c = Client::new(&addr, options).unwrap();
            let echoed = c
                .call_raw(&Request::new("Echo", "Echo", SerializeType::Raw, &big))
                .await
                .unwrap();
            assert_eq!(echoed.payload, big);
        }
    });
    let m = &server.metrics()[0];
    assert_eq!(m.heartbeats.get(), 3);
    assert_eq!(m.requests.get(), 5);
    assert_eq!(m.error_replies.get(), 0);
    let quic = m.transport(Transport::Quic);
    assert_eq!(quic.accepted.get(), 5);
    assert!(quic.bytes_in.get() > 100_000);
    common::stop(server);
}

#[test]
fn a_thousand_pipelined_calls_on_one_stream() {
    let certs = certs("pipelined");
    let server = start_quic(&certs, 1, |_| {});
    let addr = quic_addr(&server);
    let options = client_options(&certs, SerializeType::MsgPack);
    run(move || async move {
        let c = Client::new(&addr, options).unwrap();
        c.heartbeat(Some(IO_TIMEOUT)).await.unwrap(); // one connection before the calls
        let calls: Vec<_> = (0..1000i64)
            .map(|i| {
                let c = c.clone();
                glommio::spawn_local(async move {
                    let r: ArithReply = c
                        .call("Arith", "Mul", &ArithArgs { a: i, b: 3 })
                        .await
                        .unwrap();
                    assert_eq!(r.c, i * 3);
                })
            })
            .collect();
        for call in calls {
            call.await;
        }
    });
    let m = &server.metrics()[0];
    assert_eq!(m.requests.get(), 1000);
    assert_eq!(
        m.transport(Transport::Quic).accepted.get(),
        1,
        "every call on one stream"
    );
    let (_, quic) = &server.quic_counters()[0];
    assert_eq!(quic.connections_accepted.load(Ordering::Relaxed), 1);
    assert_eq!(quic.streams_accepted.load(Ordering::Relaxed), 1);
    common::stop(server);
}

#[test]
fn two_streams_on_one_connection_are_both_served() {
    let certs = certs("streams");
    let server = start_quic(&certs, 2, |_| {});
    let addr = server.local_addrs()[0];
    let (rt, endpoint) = raw_client(&certs);
    rt.block_on(async {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut s1, mut r1) = conn.open_bi().await.unwrap();
        let (mut s2, mut r2) = conn.open_bi().await.unwrap();
        s1.write_all(&encode(&request(3, 1, "Arith", "Mul", &msgpack_args(6, 7))))
            .await
            .unwrap();
        s2.write_all(&encode(&request(3, 2, "Arith", "Mul", &msgpack_args(5, 5))))
            .await
            .unwrap();
        let one = tokio::time::timeout(IO_TIMEOUT, read_reply(&mut r1))
            .await
            .unwrap();
        let two = tokio::time::timeout(IO_TIMEOUT, read_reply(&mut r2))
            .await
            .unwrap();
        assert_eq!((one.header.seq, msgpack_reply(&one.payload)), (1, 42));
        assert_eq!((two.header.seq, msgpack_reply(&two.payload)), (2, 25));
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });
    // Each stream is a connection of its own to the cores: one each, round robin.
    assert_eq!(quic_accepted(&server), [1, 1]);
    let (_, quic) = &server.quic_counters()[0];
    assert_eq!(quic.connections_accepted.load(Ordering::Relaxed), 1);
    assert_eq!(quic.streams_accepted.load(Ordering::Relaxed), 2);
    common::stop(server);
}

#[test]
fn a_hundred_connections_spread_over_both_cores() {
    let certs = certs("hundred");
    let server = start_quic(&certs, 2, |_| {});
    let addr = quic_addr(&server);
    let options = client_options(&certs, SerializeType::MsgPack);
    run(move || async move {
        let options = Rc::new(options);
        let calls: Vec<_> = (0..100i64)
            .map(|i| {
                let (addr, options) = (addr.clone(), Rc::clone(&options));
                glommio::spawn_local(async move {
                    let c = Client::new(&addr, (*options).clone()).unwrap();
                    let r: ArithReply = c
                        .call("Arith", "Add", &ArithArgs { a: i, b: 1 })
                        .await
                        .unwrap();
                    assert_eq!(r.c, i + 1);
                    c
                })
            })
            .collect();
        // All 100 open at once, then closed together.
        let mut clients = Vec::new();
        for call in calls {
            clients.push(call.await);
        }
        assert!(clients.iter().all(Client::is_connected));
    });
    let accepted = quic_accepted(&server);
    assert_eq!(accepted.iter().sum::<u64>(), 100);
    assert!(accepted.iter().all(|&n| n >= 40), "{accepted:?}");
    let (_, quic) = &server.quic_counters()[0];
    assert_eq!(quic.connections_accepted.load(Ordering::Relaxed), 100);
    common::eventually("every connection is closed", || quic_open(&server) == 0);
    common::stop(server);
}

#[test]
fn a_client_that_vanishes_is_reclaimed_by_the_idle_timeout() {
    let certs = certs("vanish");
    let server = start_quic(&certs, 1, |c| {
        c.quic.idle_timeout = Duration::from_millis(300);
    });
    let addr = server.local_addrs()[0];
    let (rt, endpoint) = raw_client(&certs);
    let kept = rt.block_on(async {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode(&request(3, 9, "Arith", "Mul", &msgpack_args(2, 3))))
            .await
            .unwrap();
        let reply = tokio::time::timeout(IO_TIMEOUT, read_reply(&mut recv))
            .await
            .unwrap();
        assert_eq!(msgpack_reply(&reply.payload), 6);
        (conn, send, recv)
    });
    assert_eq!(quic_open(&server), 1);
    // Gone without a word: the runtime that would send anything stops.
    rt.shutdown_background();
    common::eventually("the core's connection is released", || {
        quic_open(&server) == 0
    });
    let m = &server.metrics()[0];
    assert_eq!(
        m.transport(Transport::Quic).closed[Close::ReadError as usize].get(),
        1
    );
    let (_, quic) = &server.quic_counters()[0];
    assert_eq!(quic.connections_closed.load(Ordering::Relaxed), 1);
    drop((kept, endpoint));
    common::stop(server);
}

#[test]
fn percore_call_over_quic_and_a_missing_tls_section_is_named() {
    let certs = certs("cli");
    let server = start_quic(&certs, 1, |_| {});
    let addr = quic_addr(&server);
    let ca = certs.ca.to_str().unwrap();
    let out = percore_cli(&[
        "call",
        &addr,
        "Arith.Mul",
        r#"{"A":10,"B":20}"#,
        "--tls-ca",
        ca,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reply"]["C"], 200, "{json}");
    // QUIC is always TLS: no CA and no --tls-insecure is an error that says so.
    let out = percore_cli(&["call", &addr, "Arith.Mul", r#"{"A":1,"B":2}"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--tls-insecure"), "{stderr}");
    // A short bench over QUIC.
    let out = percore_cli(&[
        "bench", "-s", &addr, "--tls-ca", ca, "-n", "200", "-c", "2", "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    common::stop(server);

    // A quic@ listener without [tls]: refused before anything starts, naming [tls].
    let out = percore_cli(&["serve", "--check-config", "--listen", "quic@127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("[tls]") && stderr.contains("quic@127.0.0.1:0"),
        "{stderr}"
    );
}

fn free_port() -> u16 {
    // Both protocols free on the port: QUIC takes UDP, the admin endpoint TCP.
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

#[test]
fn sigterm_finishes_quic_calls_in_flight_then_closes_the_connections() {
    let certs = certs("sigterm");
    let port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = certs.dir.join("server.toml");
    // The delay keeps calls in flight when SIGTERM comes; the drain timeout is far above it.
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"quic@127.0.0.1:{port}\"]\ncores = 2\ndrain_timeout = \"60s\"\n\
             [services.Hello]\ndelay = \"2s\"\n[admin]\nlisten = \"{admin}\"\n\
             [tls]\ncert = {:?}\nkey = {:?}\n",
            certs.cert, certs.key
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::eventually("the admin endpoint answers", || {
        TcpStream::connect(admin).is_ok()
    });
    let addr = format!("quic@127.0.0.1:{port}");
    let options = client_options(&certs, SerializeType::Protobuf);
    // Four connections, two slow calls on each.
    let calls = std::thread::spawn(move || {
        run(move || async move {
            let args = Rc::new(BenchmarkMessage::prepared().encode_to_vec());
            let mut tasks = Vec::new();
            let mut clients = Vec::new();
            for _ in 0..4 {
                let c = Client::new(&addr, options.clone()).unwrap();
                c.heartbeat(Some(IO_TIMEOUT)).await.unwrap();
                clients.push(c.clone());
                for _ in 0..2 {
                    let (c, args) = (c.clone(), Rc::clone(&args));
                    tasks.push(glommio::spawn_local(async move {
                        let req = Request::new("Hello", "Say", SerializeType::Protobuf, &args);
                        c.call_raw(&req).await.map(|m| m.payload)
                    }));
                }
            }
            let mut replies = Vec::new();
            for task in tasks {
                replies.push(task.await.map_err(|e| e.to_string()));
            }
            // Then the server closes the connections (the streams end, then QUIC's application
            // close): every client sees its connection gone.
            let since = Instant::now();
            while clients.iter().any(Client::is_connected) {
                assert!(since.elapsed() < IO_TIMEOUT, "connections left open");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            replies
        })
    });
    let started = "rpcx_server_started_total{service=\"Hello\",method=\"Say\"}";
    common::eventually("all 8 calls reached the cores", || {
        scrape(admin).get(started) == Some(&8.0)
    });
    let on_cores = |m: &HashMap<String, f64>, core: u32| {
        m.get(&format!(
            "rpcx_server_core_connections_open{{core=\"{core}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    let m = scrape(admin);
    assert_eq!(
        (on_cores(&m, 0), on_cores(&m, 1)),
        (2.0, 2.0),
        "round robin"
    );
    let listener = format!("{{listener=\"quic@127.0.0.1:{port}\"}}");
    assert_eq!(
        m.get(&format!(
            "rpcx_server_quic_streams_accepted_total{listener}"
        )),
        Some(&4.0)
    );
    assert_eq!(
        m.get("rpcx_server_connections_open{transport=\"quic\"}"),
        Some(&4.0)
    );
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let replies = calls.join().unwrap();
    assert_eq!(replies.len(), 8);
    for reply in replies {
        let payload = reply.expect("a call in flight is answered during the drain");
        let msg = BenchmarkMessage::decode(payload.as_slice()).unwrap();
        assert_eq!(msg.field1, "OK");
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "no exit within the drain timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}
