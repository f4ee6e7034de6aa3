//! `percore call` and `percore bench` end to end: the real binary against `percore serve` on a
//! free loopback port. Every wait is bounded.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ServeProcess;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);

fn percore(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > BOUND {
            let _ = child.kill();
            panic!("percore {args:?} did not exit within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("percore-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn call_prints_the_reply_and_its_metadata_as_json() {
    let server = ServeProcess::start("");
    for codec in ["msgpack", "json"] {
        let out = percore(&[
            "call",
            &server.addr,
            "Arith.Mul",
            r#"{"A":10,"B":20}"#,
            "--codec",
            codec,
            "--meta",
            "trace=xyz",
            "--timeout",
            "5s",
        ]);
        assert!(out.status.success(), "{codec}: {}", text(&out.stderr));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["reply"]["C"], 200, "{codec}: {json}");
        assert_eq!(json["metadata"]["echo-trace"], "xyz", "{codec}: {json}");
        assert_eq!(
            json["metadata"]["echo-__ServerTimeout"], "5000",
            "{codec}: {json}"
        );
    }
    let out = percore(&[
        "call",
        &server.addr,
        "Echo.Echo",
        r#""raw bytes""#,
        "--codec",
        "raw",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reply"], "raw bytes");
}

#[test]
fn call_exits_non_zero_with_the_servers_error_text() {
    let server = ServeProcess::start("");
    let out = percore(&["call", &server.addr, "Arith.Div", r#"{"A":1,"B":1}"#]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("rpcx: can't find method Div"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    let out = percore(&["call", "tcp@127.0.0.1", "Arith.Mul", "{}"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("tcp@127.0.0.1"),
        "the bad address is named: {}",
        text(&out.stderr)
    );
    let out = percore(&["call", &server.addr, "ArithMul", "{}"]);
    assert!(
        text(&out.stderr).contains("Service.Method"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_reports_counts_latency_json_and_plot() {
    let server = ServeProcess::start("");
    let (json_path, svg_path) = (temp_file("bench.json"), temp_file("bench.svg"));
    let out = percore(&[
        "bench",
        "-s",
        &server.addr,
        "-c",
        "8",
        "--connections",
        "2",
        "-n",
        "3000",
        "--latency",
        "-o",
        json_path.to_str().unwrap(),
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for needle in [
        "sent 3000  ok 3000  errors 0",
        "throughput (TPS): ",
        "p99.99",
        "Detailed Percentile spectrum",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        (report["sent"].as_u64(), report["ok"].as_u64()),
        (Some(3000), Some(3000))
    );
    assert_eq!(report["config"]["connections"], 2);
    assert_eq!(report["config"]["verified"], true);
    assert!(report["send_lag_us"].is_null(), "closed loop: {report}");
    assert!(!stdout.contains("send lag"), "{stdout}");
    assert!(
        report["latency_us"]["max"].as_f64().unwrap()
            >= report["latency_us"]["p50"].as_f64().unwrap()
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );

    // The other calls, and a constant-rate run.
    for extra in [
        &["--call", "Hello.Say", "-n", "200"][..],
        &["--call", "Echo.Echo", "--payload-size", "4096", "-n", "200"],
        &["--call", "Arith.Mul", "--codec", "json", "-n", "200"],
        &["-r", "400", "-d", "1s"],
    ] {
        let mut args = vec!["bench", "-s", &server.addr, "-c", "4"];
        args.extend_from_slice(extra);
        let out = percore(&args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{extra:?}: {stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("errors 0"), "{extra:?}: {stdout}");
    }
}

#[test]
fn bench_whose_server_dies_reports_the_errors_and_exits() {
    // Closed loop, and at a constant rate (where workers share the connections).
    for mode in [&[][..], &["-r", "2000"]] {
        let mut server = ServeProcess::start("");
        let json_path = temp_file("dies.json");
        let mut bench = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "bench",
                "-s",
                &server.addr,
                "-c",
                "8",
                "--connections",
                "4",
                "-d",
                "120s",
                "-o",
            ])
            .arg(&json_path)
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500)); // let it load the server a little
        server.kill();
        let start = Instant::now();
        while bench.try_wait().unwrap().is_none() {
            if start.elapsed() > BOUND {
                let _ = bench.kill();
                panic!("{mode:?}: the bench did not exit after its server died");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = bench.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(
            !out.status.success(),
            "{mode:?}: an aborted run exits non-zero:\n{stdout}"
        );
        assert!(
            stdout.contains("aborted: stopped after 6 failed dials in a row"),
            "{mode:?}: {stdout}\n{}",
            text(&out.stderr)
        );
        let report = json_report(&json_path);
        let errors = report["errors"].as_object().unwrap();
        assert!(
            errors.get("connect").and_then(Value::as_u64).unwrap_or(0) > 0,
            "{mode:?}: {report}"
        );
        assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{mode:?}: {report}");
        assert!(report["aborted"].is_string(), "{mode:?}: {report}");
    }
}

/// Calls (not heartbeats) an echo server received, by connection in the order accepted.
type FrameCounts = std::sync::Arc<std::sync::Mutex<Vec<u64>>>;

/// A tiny null server on 127.0.0.1: answers each rpcx frame by flipping its response bit (the
/// request comes back as the reply), as benches/null_server.rs does. Its threads end when the
/// test process does.
fn echo_server() -> String {
    counting_echo_server().0
}

/// [`echo_server`], counting the calls it answers on each connection.
fn counting_echo_server() -> (String, FrameCounts) {
    use percore::protocol;
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = FrameCounts::default();
    let all = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counts = all.clone();
            let conn = {
                let mut counts = counts.lock().unwrap();
                counts.push(0);
                counts.len() - 1
            };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(BOUND));
                let mut buf = vec![0u8; 64 << 10];
                let mut filled = 0;
                loop {
                    if filled == buf.len() {
                        buf.resize(buf.len() * 2, 0);
                    }
                    match stream.read(&mut buf[filled..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    let mut done = 0;
                    let mut calls = 0;
                    while let Ok(Some(len)) = protocol::frame_len(&buf[done..filled], u32::MAX) {
                        if filled - done < len {
                            break;
                        }
                        if buf[done + 2] & protocol::flags::HEARTBEAT == 0 {
                            calls += 1;
                        }
                        buf[done + 2] |= protocol::flags::RESPONSE;
                        done += len;
                    }
                    counts.lock().unwrap()[conn] += calls;
                    if done > 0 {
                        if stream.write_all(&buf[..done]).is_err() {
                            return;
                        }
                        buf.copy_within(done..filled, 0);
                        filled -= done;
                    }
                }
            });
        }
    });
    (format!("tcp@{addr}"), counts)
}

fn json_report(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn bench_at_constant_rate_makes_exactly_the_scheduled_calls_spread_over_the_connections() {
    // -n at a constant rate: exactly n calls, dealt evenly over the connections.
    let (addr, counts) = counting_echo_server();
    let json_path = temp_file("rate-n.json");
    let out = percore(&[
        "bench",
        "-s",
        &addr,
        "--call",
        "Echo.Echo",
        "--payload-size",
        "16",
        "-c",
        "8",
        "--connections",
        "4",
        "-r",
        "2000",
        "-n",
        "1000",
        "-o",
        json_path.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("sent 1000  ok 1000  errors 0"), "{stdout}");
    assert!(stdout.contains("constant rate 2000 calls/s"), "{stdout}");
    let report = json_report(&json_path);
    assert_eq!(
        (report["sent"].as_u64(), report["ok"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(report["config"]["rate"], 2000.0);
    // The generator's own delay is reported apart from the latency.
    assert!(stdout.contains("send lag (us): p50 "), "{stdout}");
    let lag = &report["send_lag_us"];
    assert!(
        lag["p50"].as_f64().unwrap() <= lag["max"].as_f64().unwrap(),
        "{report}"
    );
    assert_eq!(*counts.lock().unwrap(), [250; 4], "calls per connection");

    // -d at a constant rate: the slots due in the run, no call after it (the calls a worker
    // had scheduled at the end used to go out too), and the warmup's calls are made but not
    // counted.
    let (addr, counts) = counting_echo_server();
    let json_path = temp_file("rate-d.json");
    let out = percore(&[
        "bench",
        "-s",
        &addr,
        "--call",
        "Echo.Echo",
        "--payload-size",
        "16",
        "-c",
        "4",
        "--connections",
        "2",
        "-r",
        "1000",
        "-d",
        "1s",
        "--warmup",
        "300ms",
        "-o",
        json_path.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let report = json_report(&json_path);
    let (sent, ok) = (
        report["sent"].as_u64().unwrap(),
        report["ok"].as_u64().unwrap(),
    );
    assert_eq!(sent, ok, "{stdout}");
    // 1000 slots fall due in the second; a few may be dropped if the machine stalls at the end,
    // none may be added.
    assert!((900..=1000).contains(&sent), "{stdout}");
    let answered: u64 = counts.lock().unwrap().iter().sum();
    assert!(
        answered >= sent + 200,
        "the warmup's ~300 calls were made: the server answered {answered}, {sent} counted"
    );
}

#[test]
fn bench_no_verify_counts_an_echoed_request_as_ok_and_says_so() {
    let addr = echo_server();
    for call in ["Arith.Mul", "Hello.Say"] {
        let base = [
            "bench",
            "-s",
            &addr,
            "--call",
            call,
            "-c",
            "4",
            "--connections",
            "2",
            "-n",
            "200",
        ];
        // Verified (the default): the echoed args are not the answer.
        let out = percore(&base);
        let stdout = text(&out.stdout);
        assert!(!out.status.success(), "{call}: no call was OK:\n{stdout}");
        assert!(
            stdout.contains("sent 200  ok 0  errors 200") && stdout.contains("bad_reply"),
            "{call}:\n{stdout}\n{}",
            text(&out.stderr)
        );
        assert!(!stdout.contains("NOT verified"), "{call}:\n{stdout}");

        let json_path = temp_file(&format!("no-verify-{call}.json"));
        let mut args = base.to_vec();
        args.extend(["--no-verify", "-o", json_path.to_str().unwrap()]);
        let out = percore(&args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{call}:\n{stdout}\n{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("sent 200  ok 200  errors 0"),
            "{call}:\n{stdout}"
        );
        assert!(
            stdout.contains("replies NOT verified (--no-verify)"),
            "{call}:\n{stdout}"
        );
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        assert_eq!(report["config"]["verified"], false, "{call}: {report}");
        assert_eq!(report["ok"], 200, "{call}: {report}");
    }
}

#[test]
fn call_bench_serve_and_the_client_read_addresses_alike() {
    // One parser: each command refuses a bad address with the same text, naming it.
    for addr in ["udp@127.0.0.1:1", "tcp@127.0.0.1:99999", "unix@", "tcp@:1"] {
        let expected = percore::client::Client::new(addr, Default::default())
            .err()
            .expect("the client refuses it")
            .to_string();
        assert!(expected.contains(&format!("{addr:?}")), "{expected}");
        let call = percore(&["call", addr, "Arith.Mul", "{}"]);
        let bench = percore(&["bench", "-s", addr, "-n", "1"]);
        let serve = percore(&["serve", "--listen", addr, "--check-config"]);
        for (what, out) in [("call", call), ("bench", bench), ("serve", serve)] {
            assert!(!out.status.success(), "{what} {addr}");
            let err = text(&out.stderr);
            assert!(
                err.contains(&expected),
                "{what} {addr}: {err}\nexpected {expected}"
            );
        }
    }
    // kcp is served and dialed: nothing listens on that port, and the call says so.
    let call = percore(&["call", "kcp@127.0.0.1:1", "Arith.Mul", "{}"]);
    assert!(!call.status.success());
    assert!(
        text(&call.stderr).contains("unreachable"),
        "{}",
        text(&call.stderr)
    );
    let serve = percore(&["serve", "--listen", "kcp@127.0.0.1:1", "--check-config"]);
    assert!(serve.status.success(), "{}", text(&serve.stderr));
    // quic parses everywhere; without TLS each command says what it needs.
    let addr = "quic@127.0.0.1:1";
    let call = percore(&["call", addr, "Arith.Mul", "{}"]);
    let serve = percore(&["serve", "--listen", addr, "--check-config"]);
    assert!(
        text(&call.stderr).contains("--tls-insecure"),
        "{}",
        text(&call.stderr)
    );
    assert!(
        text(&serve.stderr).contains("[tls]"),
        "{}",
        text(&serve.stderr)
    );
}
