//! Operating limits, auth and the admin endpoint, over real loopback sockets.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{
    closed_without_reply, connect, eventually, msgpack_args, msgpack_reply, read_frame, request,
    send,
};
use percore::metrics::Close;
use percore::protocol::{META_AUTH, META_ERROR, Message, flags};

fn hello() -> Vec<u8> {
    prost::Message::encode_to_vec(&percore::bench_message::BenchmarkMessage::prepared())
}

fn with_token(mut msg: Message, token: &str) -> Message {
    msg.metadata.push((META_AUTH.into(), token.into()));
    msg
}

#[test]
fn connections_past_the_per_core_limit_are_accepted_and_closed() {
    let server = common::start_with(1, |c| c.limits.max_connections_per_core = 2);
    let addr = server.local_addrs()[0];
    let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for (i, s) in kept.iter_mut().enumerate() {
        // A reply proves the core has registered the connection.
        send(
            s,
            &request(3, i as u64, "Arith", "Mul", &msgpack_args(2, 3)),
        );
        assert_eq!(msgpack_reply(&read_frame(s).payload), 6);
    }
    let mut third = connect(addr);
    assert!(closed_without_reply(&mut third), "the third is closed");
    eventually("the refusal is counted", || {
        server.metrics()[0].closed(Close::MaxConnections) == 1
    });
    // The two within the limit are untouched, and a slot freed is a slot usable again.
    send(
        &mut kept[0],
        &request(3, 9, "Arith", "Mul", &msgpack_args(4, 5)),
    );
    assert_eq!(msgpack_reply(&read_frame(&mut kept[0]).payload), 20);
    drop(kept.pop());
    eventually("the closed connection frees its slot", || {
        server.metrics()[0].connections_open() == 1
    });
    let mut again = connect(addr);
    send(
        &mut again,
        &request(3, 1, "Arith", "Mul", &msgpack_args(1, 7)),
    );
    assert_eq!(msgpack_reply(&read_frame(&mut again).payload), 7);
    common::stop(server);
}

#[test]
fn an_idle_connection_is_closed_but_not_while_a_reply_is_owed() {
    let server = common::start_with(1, |c| {
        c.limits.idle_timeout = Duration::from_millis(200);
        common::hello_delay(c, Duration::from_millis(700));
    });
    let addr = server.local_addrs()[0];
    let mut idle = connect(addr);
    send(
        &mut idle,
        &request(3, 1, "Arith", "Mul", &msgpack_args(2, 2)),
    );
    assert_eq!(msgpack_reply(&read_frame(&mut idle).payload), 4);
    // The delayed call outlives the idle timeout; its connection must wait for the reply.
    let mut waiting = connect(addr);
    send(&mut waiting, &request(2, 7, "Hello", "Say", &hello()));
    assert!(closed_without_reply(&mut idle), "silent after its reply");
    let reply = read_frame(&mut waiting);
    assert_eq!(reply.header.seq, 7);
    assert!(!reply.header.is_error());
    assert!(closed_without_reply(&mut waiting), "idle once answered");
    eventually("both closes are counted as idle", || {
        server.metrics()[0].closed(Close::IdleTimeout) == 2
    });
    common::stop(server);
}

#[test]
fn at_the_in_flight_limit_buffered_requests_wait_for_replies() {
    let server = common::start_with(1, |c| {
        c.limits.max_calls_in_flight = 2;
        common::hello_delay(c, Duration::from_millis(300));
    });
    let mut s = connect(server.local_addrs()[0]);
    // One write: three delayed calls, then a quick one. Without the limit the quick call's reply
    // overtakes all three; with it, the third delayed call and the quick one wait until the
    // first two are answered, and then the quick one overtakes only the third.
    let mut batch = Vec::new();
    for seq in 1..=3 {
        request(2, seq, "Hello", "Say", &hello()).encode(&mut batch);
    }
    request(3, 4, "Arith", "Mul", &msgpack_args(3, 3)).encode(&mut batch);
    s.write_all(&batch).unwrap();
    let order: Vec<u64> = (0..4).map(|_| read_frame(&mut s).header.seq).collect();
    let mut first_two = order[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, [1, 2], "reply order {order:?}");
    assert_eq!(&order[2..], [4, 3], "reply order {order:?}");
    common::stop(server);
}

#[test]
fn auth_accepts_good_tokens_and_skips_heartbeats() {
    let server = common::start_with(1, |c| c.auth.tokens = vec!["s3cret".into()]);
    let mut s = connect(server.local_addrs()[0]);
    let mut hb = request(3, 1, "", "", &[0xd3, 0, 0, 0, 0, 0, 0, 0, 1]);
    hb.header.flags |= flags::HEARTBEAT;
    send(&mut s, &hb);
    assert_eq!(
        read_frame(&mut s).header.seq,
        1,
        "heartbeat echoed without a token"
    );
    let call = request(3, 2, "Arith", "Mul", &msgpack_args(6, 7));
    send(&mut s, &with_token(call, "s3cret"));
    assert_eq!(msgpack_reply(&read_frame(&mut s).payload), 42);
    let call = request(3, 3, "Arith", "Mul", &msgpack_args(2, 7));
    send(&mut s, &with_token(call, "Bearer s3cret"));
    assert_eq!(msgpack_reply(&read_frame(&mut s).payload), 14);
    assert_eq!(server.metrics()[0].auth_failures.get(), 0);
    common::stop(server);
}

#[test]
fn a_bad_token_gets_an_error_reply_then_the_connection_closes() {
    let server = common::start_with(1, |c| c.auth.tokens = vec!["s3cret".into()]);
    let addr = server.local_addrs()[0];
    for token in [Some("wrong"), None] {
        let mut s = connect(addr);
        let call = request(3, 5, "Arith", "Mul", &msgpack_args(6, 7));
        let call = match token {
            Some(t) => with_token(call, t),
            None => call,
        };
        send(&mut s, &call);
        let reply = read_frame(&mut s);
        assert_eq!(reply.header.seq, 5);
        assert!(reply.header.is_error());
        assert_eq!(reply.meta(META_ERROR), Some("invalid token"));
        assert!(closed_without_reply(&mut s), "closed after the error reply");
    }
    assert_eq!(server.metrics()[0].auth_failures.get(), 2);
    eventually("both closes are counted as unauthenticated", || {
        server.metrics()[0].closed(Close::Unauthenticated) == 2
    });
    common::stop(server);
}

#[test]
fn a_oneway_call_with_a_bad_token_just_closes_the_connection() {
    let server = common::start_with(1, |c| c.auth.tokens = vec!["s3cret".into()]);
    let mut s = connect(server.local_addrs()[0]);
    let mut call = with_token(request(3, 1, "Arith", "Mul", &msgpack_args(1, 1)), "nope");
    call.header.flags |= flags::ONEWAY;
    send(&mut s, &call);
    assert!(closed_without_reply(&mut s));
    assert_eq!(server.metrics()[0].auth_failures.get(), 1);
    common::stop(server);
}

/// GET `path` from the admin endpoint: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// The samples of a scrape, by name with labels as written.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_endpoint_counts_known_traffic() {
    let server = common::start_with(2, |c| c.auth.tokens = Vec::new());
    let admin = percore::admin::start("127.0.0.1:0".parse().unwrap(), &server).unwrap();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    server.wait_ready();
    assert_eq!(http_get(admin, "/readyz").0, 200);

    let addr = server.local_addrs()[0];
    let mut s = connect(addr);
    let (mut sent, mut received) = (0usize, 0usize);
    let mut call = |s: &mut TcpStream, msg: Message| {
        let bytes = msg.to_bytes();
        s.write_all(&bytes).unwrap();
        sent += bytes.len();
        let reply = read_frame(s);
        received += reply.to_bytes().len();
        reply
    };
    for seq in 1..=3 {
        call(&mut s, request(3, seq, "Arith", "Mul", &msgpack_args(2, 2)));
    }
    for seq in 4..=5 {
        call(&mut s, request(0, seq, "Echo", "Echo", b"abc"));
    }
    assert!(
        call(&mut s, request(3, 6, "Arith", "Div", &[]))
            .header
            .is_error()
    );
    assert!(
        call(&mut s, request(3, 7, "Nope", "X", &[]))
            .header
            .is_error()
    );
    let mut hb = request(3, 8, "", "", &[]);
    hb.header.flags |= flags::HEARTBEAT;
    call(&mut s, hb);
    drop(s);
    let mut bad = connect(addr);
    bad.write_all(b"\x07not rpcx").unwrap();
    assert!(closed_without_reply(&mut bad));

    let want = [
        (
            "rpcx_server_started_total{service=\"Arith\",method=\"Mul\"}",
            3.0,
        ),
        (
            "rpcx_server_handled_total{service=\"Arith\",method=\"Mul\",code=\"OK\"}",
            3.0,
        ),
        (
            "rpcx_server_handled_total{service=\"Arith\",method=\"Mul\",code=\"error\"}",
            0.0,
        ),
        (
            "rpcx_server_handled_total{service=\"Echo\",method=\"Echo\",code=\"OK\"}",
            2.0,
        ),
        (
            "rpcx_server_started_total{service=\"unknown\",method=\"unknown\"}",
            2.0,
        ),
        (
            "rpcx_server_handled_total{service=\"unknown\",method=\"unknown\",code=\"error\"}",
            2.0,
        ),
        (
            "rpcx_server_handling_seconds_count{service=\"Arith\",method=\"Mul\"}",
            // One call in 16 is timed, the first included.
            1.0,
        ),
        (
            "rpcx_server_handling_seconds_bucket{service=\"Arith\",method=\"Mul\",le=\"+Inf\"}",
            // One call in 16 is timed, the first included.
            1.0,
        ),
        ("rpcx_server_requests_total", 7.0),
        ("rpcx_server_heartbeats_total", 1.0),
        ("rpcx_server_error_replies_total", 2.0),
        (
            "rpcx_server_connections_accepted_total{transport=\"tcp\"}",
            2.0,
        ),
        ("rpcx_server_connections_open{transport=\"tcp\"}", 0.0),
        (
            "rpcx_server_connections_closed_total{transport=\"tcp\",reason=\"eof\"}",
            1.0,
        ),
        (
            "rpcx_server_connections_closed_total{transport=\"tcp\",reason=\"bad_frame\"}",
            1.0,
        ),
        (
            "rpcx_server_bad_frames_total{transport=\"tcp\",reason=\"bad_magic\"}",
            1.0,
        ),
        (
            "rpcx_server_received_bytes_total{transport=\"tcp\"}",
            sent as f64,
        ),
        (
            "rpcx_server_sent_bytes_total{transport=\"tcp\"}",
            received as f64,
        ),
        ("rpcx_server_cores", 2.0),
        ("rpcx_server_ready", 1.0),
    ];
    // Closes are counted just after the socket closes: scrape until they are in (bounded).
    let mut samples = HashMap::new();
    eventually("the scrape shows the traffic", || {
        samples = scrape(admin);
        want.iter().all(|(k, v)| samples.get(*k) == Some(v))
    });
    // Every sample of a histogram's buckets is cumulative.
    let buckets: Vec<f64> = percore::metrics::HANDLING_BUCKETS
        .iter()
        .map(|b| {
            samples[&format!(
                "rpcx_server_handling_seconds_bucket{{service=\"Arith\",method=\"Mul\",le=\"{b}\"}}"
            )]
        })
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // No client string becomes a label.
    assert!(
        !samples
            .keys()
            .any(|k| k.contains("Nope") || k.contains("Div"))
    );

    server.shutdown();
    assert_eq!(
        http_get(admin, "/readyz").0,
        503,
        "not ready while draining"
    );
    server.join().unwrap();
}

/// One HTTP gateway call to `Arith.Mul {A:2, B:3}` with `auth` as the Authorization header:
/// (status code, the whole response).
fn gateway_call(addr: SocketAddr, auth: Option<&str>) -> (u16, String) {
    let body = r#"{"A":2,"B":3}"#;
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let mut s = connect(addr);
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-RPCX-SerializeType: 1\r\n\
         X-RPCX-ServicePath: Arith\r\nX-RPCX-ServiceMethod: Mul\r\n{auth}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    (code, text)
}

#[test]
fn the_http_gateway_checks_the_authorization_header() {
    let server = common::start_with(1, |c| c.auth.tokens = vec!["s3cret".into()]);
    let addr = server.local_addrs()[0];
    let (code, text) = gateway_call(addr, Some("Bearer s3cret"));
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with(r#"{"C":6}"#), "{text}");
    for auth in [Some("Bearer wrong"), None] {
        let (code, text) = gateway_call(addr, auth);
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("invalid token"), "{text}");
    }
    assert_eq!(server.metrics()[0].auth_failures.get(), 2);
    common::stop(server);
}

#[test]
fn gateway_bytes_are_counted_under_the_transport_that_carried_them() {
    use percore::metrics::Transport;
    let dir = std::env::temp_dir().join(format!("percore-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.sock");
    let listen = format!("unix@{}", path.display());
    let server = common::start_with(1, |c| c.server.listen = vec![listen.parse().unwrap()]);
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    let body = r#"{"A":2,"B":3}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-RPCX-SerializeType: 1\r\n\
         X-RPCX-ServicePath: Arith\r\nX-RPCX-ServiceMethod: Mul\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with(r#"{"C":6}"#), "{reply}");
    let m = &server.metrics()[0];
    assert_eq!(
        m.transport(Transport::Unix).bytes_in.get(),
        request.len() as u64
    );
    assert_eq!(
        m.transport(Transport::Unix).bytes_out.get(),
        reply.len() as u64
    );
    assert_eq!(m.transport(Transport::Tcp).bytes_in.get(), 0);
    common::stop(server);
}

#[test]
fn a_peer_that_does_not_read_its_replies_stops_being_read() {
    const CALLS: u64 = 64;
    let server = common::start_with(1, |c| c.limits.max_pending_write_bytes = 1 << 20);
    let mut s = connect(server.local_addrs()[0]);
    let payload = vec![7u8; 1 << 20];
    let mut all = Vec::new();
    for seq in 0..CALLS {
        request(0, seq, "Echo", "Echo", &payload).encode(&mut all);
    }
    // 64 MiB of calls, 64 MiB of replies nobody reads: past the pending-bytes limit (plus what
    // the kernel buffers) the server stops reading, so this write blocks until its timeout.
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut written = 0;
    while written < all.len() {
        match s.write(&all[written..]) {
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(
        written < all.len(),
        "the server read every call without its replies being read"
    );
    let read = server.metrics()[0]
        .transport(percore::metrics::Transport::Tcp)
        .bytes_in
        .get();
    assert!(read < all.len() as u64);
    // Reading the replies lets it go on: every call is answered.
    let mut reader = s.try_clone().unwrap();
    let replies = std::thread::spawn(move || {
        (0..CALLS)
            .map(|_| read_frame(&mut reader).payload.len())
            .all(|n| n == 1 << 20)
    });
    s.set_write_timeout(Some(common::IO_TIMEOUT)).unwrap();
    s.write_all(&all[written..]).unwrap();
    assert!(replies.join().unwrap());
    common::stop(server);
}

#[test]
fn slow_and_idle_admin_clients_do_not_hold_up_probes() {
    let server = common::start_with(1, |_| {});
    let admin = percore::admin::start("127.0.0.1:0".parse().unwrap(), &server).unwrap();
    server.wait_ready();
    // One client trickles its request a byte at a time; 200 more connect and send nothing.
    let mut slow = connect(admin);
    let idle: Vec<TcpStream> = (0..200).map(|_| connect(admin)).collect();
    let request = b"GET /healthz HTTP/1.1\r\n\r\n";
    for (i, path) in ["/healthz", "/metrics", "/readyz"]
        .iter()
        .cycle()
        .take(15)
        .enumerate()
    {
        if i < request.len() {
            slow.write_all(&request[i..i + 1]).unwrap();
        }
        // Each probe must be answered within 2 s (a read past that fails the test).
        let mut probe = TcpStream::connect(admin).unwrap();
        probe
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        write!(probe, "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").unwrap();
        let mut text = String::new();
        probe.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {text}");
    }
    drop(idle);
    drop(slow);
    common::stop(server);
}

#[test]
fn a_frame_trickled_byte_by_byte_is_cut_off_and_partial_bytes_are_not_requests() {
    // frame_timeout: a frame must be whole within 600 ms of its first byte.
    let server = common::start_with(1, |c| {
        c.limits.frame_timeout = Duration::from_millis(600);
    });
    let addr = server.local_addrs()[0];
    let frame = request(3, 1, "Arith", "Mul", &msgpack_args(2, 3)).to_bytes();
    let mut slow = connect(addr);
    let mut good = connect(addr);
    let mut closed = false;
    // One byte every 100 ms: 46 bytes would take 4.6 s; the server must close first.
    for (i, byte) in frame.iter().enumerate() {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        // A well-behaved client on the same core is served meanwhile.
        send(
            &mut good,
            &request(3, i as u64, "Arith", "Mul", &msgpack_args(2, 3)),
        );
        assert_eq!(msgpack_reply(&read_frame(&mut good).payload), 6);
        std::thread::sleep(Duration::from_millis(100));
        let mut probe = [0u8; 1];
        slow.set_nonblocking(true).unwrap();
        let peeked = slow.peek(&mut probe);
        slow.set_nonblocking(false).unwrap();
        if matches!(peeked, Ok(0)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled frame kept its connection");
    let m = &server.metrics()[0];
    assert_eq!(m.closed(Close::Timeout), 1);
    common::stop(server);

    // idle_timeout: partial bytes do not count as a request.
    let server = common::start_with(1, |c| {
        c.limits.idle_timeout = Duration::from_millis(400);
        c.limits.frame_timeout = Duration::ZERO;
    });
    let mut slow = connect(server.local_addrs()[0]);
    let mut cut = false;
    for byte in frame.iter().take(20) {
        if slow.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cut || common::closed_without_reply(&mut slow));
    assert_eq!(server.metrics()[0].closed(Close::IdleTimeout), 1);
    common::stop(server);
}
