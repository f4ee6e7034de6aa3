//! The real binary's life: systemd readiness, calls in flight across cores, SIGTERM, drain, exit.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{IO_TIMEOUT, connect, read_frame, request, send, try_read_frame};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child if the test fails half-way, so no server outlives it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

#[test]
fn sigterm_drains_calls_in_flight_on_every_core_then_exits_zero() {
    let dir = std::env::temp_dir().join(format!("percore-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("server.toml");
    // The delay keeps calls in flight when SIGTERM comes; the drain timeout is far above it, so
    // every call must finish without being cut off.
    std::fs::write(
        &config,
        "[server]\ndrain_timeout = \"60s\"\n[services.Hello]\ndelay = \"3s\"\n",
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--cores", "2", "--config"])
            .arg(&config)
            .args(["--listen", &format!("tcp@{addr}")])
            .args(["--admin-listen", &admin.to_string()])
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];

    // READY=1 comes only once every core accepts: a connection made right after it is served.
    let n = systemd.recv(&mut buf).expect("READY=1 from the server");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=serving tcp@{addr} on 2 cores")),
        "{ready}"
    );
    assert_eq!(http_get(admin, "/readyz").0, 200);

    // Connections until both cores hold at least two (SO_REUSEPORT hashes them; bounded).
    let mut conns: Vec<TcpStream> = Vec::new();
    loop {
        conns.push(connect(addr));
        let open = |m: &HashMap<String, f64>, core: u32| {
            m.get(&format!(
                "rpcx_server_core_connections_open{{core=\"{core}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        let mut m = scrape(admin);
        let started = Instant::now();
        while open(&m, 0) + open(&m, 1) < conns.len() as f64 {
            assert!(started.elapsed() < IO_TIMEOUT, "connections not registered");
            m = scrape(admin);
        }
        if conns.len() >= 4 && open(&m, 0) >= 2.0 && open(&m, 1) >= 2.0 {
            break;
        }
        assert!(conns.len() < 64, "64 connections all went to one core");
    }

    // Two slow calls in flight on every connection.
    let msg = prost::Message::encode_to_vec(&percore::bench_message::BenchmarkMessage::prepared());
    for (i, s) in conns.iter_mut().enumerate() {
        for k in 0..2u64 {
            send(s, &request(2, i as u64 * 10 + k, "Hello", "Say", &msg));
        }
    }
    let calls = (2 * conns.len()) as f64;
    let started_key = "rpcx_server_started_total{service=\"Hello\",method=\"Say\"}";
    common::eventually("every call reached a core", || {
        scrape(admin).get(started_key) == Some(&calls)
    });
    // Still in flight: no reply has been written yet (the delay dwarfs the set-up above).
    for s in &conns {
        s.set_nonblocking(true).unwrap();
        let pending = s.peek(&mut buf);
        assert!(
            matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a reply came before SIGTERM: {pending:?}"
        );
        s.set_nonblocking(false).unwrap();
    }

    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let n = systemd.recv(&mut buf).expect("STOPPING=1 from the server");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    common::eventually("/readyz says not ready while draining", || {
        http_get(admin, "/readyz").0 == 503
    });
    // New connections are refused while the old ones drain.
    common::eventually("new connections are refused", || {
        TcpStream::connect(addr).is_err()
    });
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "refused while still draining, not because the process is gone"
    );

    // Every call in flight is answered, then its connection closes.
    for (i, s) in conns.iter_mut().enumerate() {
        let mut seqs: Vec<u64> = (0..2)
            .map(|_| {
                let reply = read_frame(s);
                assert!(
                    !reply.header.is_error(),
                    "{:?}",
                    reply.meta("__rpcx_error__")
                );
                let got: percore::bench_message::BenchmarkMessage =
                    prost::Message::decode(reply.payload.as_slice()).unwrap();
                assert_eq!(got.field1, "OK");
                reply.header.seq
            })
            .collect();
        seqs.sort();
        assert_eq!(seqs, [i as u64 * 10, i as u64 * 10 + 1]);
        assert!(try_read_frame(s).is_none(), "closed after its replies");
    }

    // And the process exits 0 on its own, well inside the drain timeout.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
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

#[test]
fn sighup_applies_the_log_level_from_the_config_file() {
    let dir = std::env::temp_dir().join(format!("percore-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("server.toml");
    std::fs::write(&config, "[log]\nlevel = \"info\"\n").unwrap();
    let log = dir.join("stderr.log");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--cores", "1", "--config"])
            .arg(&config)
            .args(["--listen", &format!("tcp@{addr}")])
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    common::eventually("the server listens", || text().contains("listening"));
    // At info, a connection is not logged.
    let mut s = connect(addr);
    send(
        &mut s,
        &request(3, 1, "Arith", "Mul", &common::msgpack_args(2, 3)),
    );
    read_frame(&mut s);
    drop(s);
    std::fs::write(&config, "[log]\nlevel = \"debug\"\n").unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGHUP) };
    common::eventually("the reload is logged", || {
        text().contains("SIGHUP: log level reloaded")
    });
    assert!(!text().contains("connection accepted"), "{}", text());
    // At debug, it is.
    let mut s = connect(addr);
    send(
        &mut s,
        &request(3, 2, "Arith", "Mul", &common::msgpack_args(2, 3)),
    );
    read_frame(&mut s);
    common::eventually("a connection is logged at debug", || {
        text().contains("connection accepted")
    });
    // SAFETY: as above.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    while server.0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < IO_TIMEOUT, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `percore serve` on `port`, one core, waited for until it answers.
fn serve_on(port: u16) -> Server {
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--cores", "1", "--admin-listen", ""])
            .args(["--listen", &format!("tcp@127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

#[test]
fn kill_9_under_load_fails_calls_promptly_and_the_client_reconnects_when_it_is_back() {
    use percore::builtin::{ArithArgs, ArithReply};
    use percore::client::{Client, Options};
    let port = free_port();
    let mut server = Some(serve_on(port));
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let load = std::thread::spawn(move || {
        percore::client::block_on(move || async move {
            let options = Options {
                timeout: Some(Duration::from_secs(5)),
                ..Options::default()
            };
            let client = Client::new(&format!("tcp@127.0.0.1:{port}"), options).unwrap();
            let call = |n: i64| {
                let client = client.clone();
                async move {
                    let started = Instant::now();
                    let reply: Result<ArithReply, _> =
                        client.call("Arith", "Mul", &ArithArgs { a: n, b: 2 }).await;
                    (reply.map(|r| r.c), started.elapsed())
                }
            };
            // Under load: calls succeed until the kill.
            for n in 0..200 {
                assert_eq!(call(n).await.0.unwrap(), n * 2);
            }
            killed_rx.recv().unwrap();
            // Every call now fails, and promptly (not after its 5 s timeout).
            for n in 0..20 {
                let (reply, took) = call(n).await;
                assert!(reply.is_err(), "a call succeeded with the server dead");
                assert!(took < Duration::from_secs(2), "a failure took {took:?}");
            }
            back_rx.recv().unwrap();
            // The same client re-dials and is served again.
            let mut ok = 0;
            for n in 0..200 {
                if let (Ok(c), _) = call(n).await {
                    assert_eq!(c, n * 2);
                    ok += 1;
                }
            }
            ok
        })
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    if let Some(mut s) = server.take() {
        s.0.kill().unwrap(); // SIGKILL
        s.0.wait().unwrap();
    }
    killed_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _back = serve_on(port);
    back_tx.send(()).unwrap();
    let ok = load.join().unwrap();
    assert!(
        ok >= 199,
        "only {ok} of 200 calls succeeded after the restart"
    );
}
