//! Hostile clients against the real binary and in-process servers: each test checks the attack
//! is refused and that a well-behaved client is still served. Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{connect, msgpack_args, msgpack_reply, read_frame, request, send};
use percore::metrics::Close;

/// A served call on `s`, or why not: Some(true) answered, Some(false) closed, None hung.
fn try_call(s: &mut TcpStream, seq: u64) -> Option<bool> {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if s.write_all(&request(3, seq, "Arith", "Mul", &msgpack_args(3, 4)).to_bytes())
        .is_err()
    {
        return Some(false);
    }
    let mut head = [0u8; 16];
    match s.read_exact(&mut head) {
        Ok(()) => Some(true),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            None
        }
        Err(_) => Some(false),
    }
}

#[test]
fn one_peer_cannot_take_every_connection_slot() {
    let server = common::start_with(1, |c| c.limits.max_connections_per_ip = 3);
    let addr = server.local_addrs()[0];
    let mut kept: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    for (i, s) in kept.iter_mut().enumerate() {
        assert_eq!(try_call(s, i as u64), Some(true));
    }
    // The fourth from 127.0.0.1 is closed at once, without a reply.
    let mut extra = connect(addr);
    assert_eq!(try_call(&mut extra, 9), Some(false));
    // Another peer address (127.0.0.2 is loopback too) is served.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    other.connect(&addr.into()).unwrap();
    let mut other: TcpStream = other.into();
    send(
        &mut other,
        &request(3, 1, "Arith", "Mul", &msgpack_args(5, 5)),
    );
    assert_eq!(msgpack_reply(&read_frame(&mut other).payload), 25);
    // Once one of the three closes, 127.0.0.1 gets a slot back.
    drop(kept.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect(addr);
    assert_eq!(try_call(&mut again, 10), Some(true));
    assert_eq!(server.metrics()[0].closed(Close::MaxConnectionsPerIp), 1);
    common::stop(server);
}

/// `percore serve` on a free port with the open-files limit set to `nofile`; returns the child
/// and its address.
fn serve_with_nofile(nofile: u64, extra: &[&str]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_percore"));
    cmd.args([
        "serve",
        "--cores",
        "1",
        "--listen",
        "tcp@127.0.0.1:0",
        "--admin-listen",
        "",
    ])
    .args(extra)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("addr=tcp@") {
                let addr = line[at + 9..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("percore serve logs its address");
    (child, addr.parse().unwrap())
}

#[test]
fn past_the_open_files_limit_clients_are_refused_at_once_not_left_hanging() {
    // With max_connections_per_core set past what 320 descriptors allow, accept runs out of
    // descriptors: every extra client must still hear something (a reply or a close).
    let (mut child, addr) =
        serve_with_nofile(320, &["--set", "limits.max_connections_per_core=100000"]);
    let mut conns: Vec<TcpStream> = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for i in 0..400u64 {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
            break;
        };
        match try_call(&mut s, i) {
            Some(true) => served += 1,
            Some(false) => refused += 1,
            None => panic!("connection {i} was left hanging ({served} served, {refused} refused)"),
        }
        conns.push(s);
    }
    assert!(refused > 0, "no connection was refused ({served} served)");
    drop(conns);
    // Once the descriptors are back, a new client is served.
    std::thread::sleep(Duration::from_millis(300));
    let mut s = TcpStream::connect(addr).unwrap();
    assert_eq!(try_call(&mut s, 1), Some(true));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn by_default_the_connection_cap_follows_the_open_files_limit() {
    // 300 descriptors, less the 256 kept back: a cap of 44 connections on the one core.
    let (mut child, addr) = serve_with_nofile(300, &[]);
    let mut conns: Vec<TcpStream> = Vec::new();
    for i in 0..44u64 {
        let mut s = TcpStream::connect(addr).unwrap();
        assert_eq!(try_call(&mut s, i), Some(true), "connection {i}");
        conns.push(s);
    }
    let mut extra = TcpStream::connect(addr).unwrap();
    assert_eq!(try_call(&mut extra, 99), Some(false));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn work_per_request_is_bounded_metadata_entries_and_batch_size() {
    let server = common::start(1);
    let addr = server.local_addrs()[0];
    let mut good = connect(addr);
    // A frame with 5,000 metadata entries is refused; its connection closes.
    let mut bad = connect(addr);
    let mut many = request(3, 1, "Arith", "Mul", &msgpack_args(1, 1));
    many.metadata = (0..5000)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    send(&mut bad, &many);
    assert!(common::closed_without_reply(&mut bad));
    let counts = server.metrics()[0].transport(percore::metrics::Transport::Tcp);
    assert_eq!(
        counts.bad_frames[percore::metrics::BadFrame::TooManyMetadata as usize].get(),
        1
    );
    // 1,000 entries are within the default limit.
    let mut ok = request(3, 2, "Arith", "Mul", &msgpack_args(2, 2));
    ok.metadata = (0..1000)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    send(&mut good, &ok);
    assert_eq!(msgpack_reply(&read_frame(&mut good).payload), 4);

    // A JSON-RPC batch over gateway.max_batch gets one error and runs nothing.
    let batch = |n: usize| {
        let calls: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"jsonrpc":"2.0","method":"Arith.Mul","params":{{"A":{i},"B":2}},"id":{i}}}"#))
            .collect();
        format!("[{}]", calls.join(","))
    };
    let post = |body: String| {
        let mut s = connect(addr);
        write!(
            s,
            "POST / HTTP/1.1\r\nX-JSONRPC-2.0: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let json = text.split_once("\r\n\r\n").unwrap().1.to_owned();
        serde_json::from_str::<serde_json::Value>(&json).unwrap()
    };
    let started = server.metrics()[0].methods[0].started.get();
    let refused = post(batch(300));
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_batch")
    );
    assert_eq!(
        server.metrics()[0].methods[0].started.get(),
        started,
        "no call ran"
    );
    let answered = post(batch(256));
    assert_eq!(answered.as_array().unwrap().len(), 256);
    assert_eq!(answered[255]["result"]["C"], 510);
    common::stop(server);
}

#[test]
fn a_second_server_on_the_same_port_is_refused_naming_the_first() {
    let first = common::ServeProcess::start("");
    let addr = first.addr.clone();
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "serve",
                "--cores",
                "1",
                "--admin-listen",
                "",
                "--listen",
                &addr,
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Refused at once; a server that starts is stopped after 2 s.
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let exited = child.try_wait().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (exited, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (exited, stderr) = run(&[]);
    let status = exited.expect("the second server refuses to start");
    assert!(!status.success());
    assert!(stderr.contains("already in use by pid"), "{stderr}");
    assert!(stderr.contains("server.share_port = true"), "{stderr}");
    // One clean text: the cause is not repeated.
    assert_eq!(stderr.matches("already in use").count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Shared on purpose, it starts.
    let (exited, stderr) = run(&["--set", "server.share_port=true"]);
    assert!(exited.is_none(), "share_port = true starts: {stderr}");
    drop(first);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    percore::codec::gzip(bytes, &mut out);
    out
}

#[test]
fn big_legal_calls_leave_idle_connections_small() {
    let server = common::ServeProcess::start("");
    let addr: SocketAddr = server.addr.trim_start_matches("tcp@").parse().unwrap();
    let mut good = connect(addr);
    send(
        &mut good,
        &request(3, 0, "Arith", "Mul", &msgpack_args(2, 2)),
    );
    assert_eq!(msgpack_reply(&read_frame(&mut good).payload), 4);
    let before = server.rss_kib();
    // 20 connections, each one Echo of a gzip payload that inflates to 8 MiB; then they idle.
    let body = gzip(&vec![7u8; 8 << 20]);
    let mut idle = Vec::new();
    for i in 0..20u64 {
        let mut s = connect(addr);
        let mut call = request(0, i, "Echo", "Echo", &body);
        call.header.set_compress(percore::protocol::COMPRESS_GZIP);
        send(&mut s, &call);
        let reply = read_frame(&mut s);
        assert!(!reply.header.is_error());
        idle.push(s);
        // A well-behaved client on the same core is served meanwhile.
        send(
            &mut good,
            &request(3, i + 1, "Arith", "Mul", &msgpack_args(3, 3)),
        );
        assert_eq!(msgpack_reply(&read_frame(&mut good).payload), 9);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = server.rss_kib();
    // Each call held ~16 MiB while it ran; kept, 20 idle connections would hold ~320 MiB.
    assert!(
        after < before + 48 * 1024,
        "RSS grew from {before} KiB to {after} KiB with 20 idle connections"
    );
    drop(idle);
}

#[test]
fn a_gateway_body_over_the_inflate_limit_is_refused_and_its_connection_closed() {
    let server = common::ServeProcess::start("[limits]\nmax_decompressed_bytes = 1048576\n");
    let addr: SocketAddr = server.addr.trim_start_matches("tcp@").parse().unwrap();
    let body = gzip(&vec![0u8; 4 << 20]);
    let mut s = connect(addr);
    write!(
        s,
        "POST /Echo HTTP/1.1\r\nX-RPCX-ServiceMethod: Echo\r\nX-RPCX-SerializeType: 0\r\n\
         X-RPCX-CompressType: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut text = Vec::new();
    // The connection closes after the reply (read_to_end returns).
    s.read_to_end(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(text.contains("X-RPCX-ErrorMessage"), "{text}");
}

#[test]
fn quiet_connections_give_back_what_mid_size_calls_grew() {
    let server = common::ServeProcess::start("");
    let addr: SocketAddr = server.addr.trim_start_matches("tcp@").parse().unwrap();
    let before = server.rss_kib();
    // 100 connections, each one Echo of 200 KiB (under every per-call release threshold), then
    // quiet: each would keep ~400 KiB of read and write buffer.
    let payload = vec![5u8; 200 << 10];
    let mut idle = Vec::new();
    for i in 0..100u64 {
        let mut s = connect(addr);
        send(&mut s, &request(0, i, "Echo", "Echo", &payload));
        assert_eq!(read_frame(&mut s).payload.len(), payload.len());
        idle.push(s);
    }
    let busy = server.rss_kib();
    // Quiet for over a second: the core's sweeper has every connection give its buffers back.
    std::thread::sleep(Duration::from_millis(2500));
    let after = server.rss_kib();
    eprintln!("RSS KiB: before {before}, after the calls {busy}, after 2.5 s quiet {after}");
    assert!(
        after < before + 16 * 1024,
        "100 quiet connections hold {} KiB more than before",
        after.saturating_sub(before)
    );
    drop(idle);
}
