//! The connection loop over real TCP: pipelining, heartbeat, oneway, errors, bad input, cores.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{connect, msgpack_args, msgpack_reply, read_frame, request, send};
use percore::protocol::{self, META_ERROR, flags};

#[test]
fn thousand_pipelined_requests_in_one_write_are_all_answered() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let mut batch = Vec::new();
    for seq in 1..=1000u64 {
        request(3, seq, "Arith", "Mul", &msgpack_args(seq as i64, 3)).encode(&mut batch);
    }
    s.write_all(&batch).unwrap();
    let mut seen = vec![false; 1001];
    for _ in 0..1000 {
        let reply = read_frame(&mut s);
        let seq = reply.header.seq as usize;
        assert!(!seen[seq], "seq {seq} answered twice");
        seen[seq] = true;
        assert!(reply.header.is_response() && !reply.header.is_error());
        assert_eq!(msgpack_reply(&reply.payload), seq as i64 * 3);
    }
    assert!(seen[1..].iter().all(|&s| s));
    common::stop(server);
}

#[test]
fn heartbeat_is_echoed_exactly_but_for_the_response_bit() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    // As the Go client sends it: empty path and method, MsgPack int64 payload, some metadata.
    let mut hb = request(3, 42, "", "", &[0xd3, 0, 0, 0, 0, 0x65, 0x43, 0x21, 0x00]);
    hb.header.flags |= flags::HEARTBEAT;
    hb.metadata.push(("k".into(), "v".into()));
    send(&mut s, &hb);
    let reply = read_frame(&mut s);
    let mut want = hb.to_bytes();
    want[2] |= flags::RESPONSE;
    assert_eq!(reply.to_bytes(), want);
    common::stop(server);
}

#[test]
fn oneway_gets_no_reply_not_even_an_error() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let mut oneway = request(3, 1, "Arith", "Mul", &msgpack_args(2, 3));
    oneway.header.flags |= flags::ONEWAY;
    send(&mut s, &oneway);
    let mut bad_oneway = request(3, 2, "Nope", "Mul", &[]);
    bad_oneway.header.flags |= flags::ONEWAY;
    send(&mut s, &bad_oneway);
    send(&mut s, &request(3, 3, "Arith", "Mul", &msgpack_args(4, 5)));
    let reply = read_frame(&mut s);
    assert_eq!(reply.header.seq, 3, "the first reply is the normal call's");
    assert_eq!(msgpack_reply(&reply.payload), 20);
    let metrics = &server.metrics()[0];
    assert_eq!(metrics.requests.get(), 3, "the oneway calls were run");
    common::stop(server);
}

#[test]
fn unknown_service_and_method_use_rpcx_texts() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    send(&mut s, &request(3, 1, "Nope", "Mul", &msgpack_args(1, 2)));
    let reply = read_frame(&mut s);
    assert!(reply.header.is_error());
    assert_eq!(
        reply.meta(META_ERROR),
        Some("rpcx: can't find service Nope")
    );
    send(&mut s, &request(3, 2, "Arith", "Div", &msgpack_args(1, 2)));
    let reply = read_frame(&mut s);
    assert!(reply.header.is_error());
    assert_eq!(reply.meta(META_ERROR), Some("rpcx: can't find method Div"));
    send(&mut s, &request(4, 3, "Arith", "Mul", &[]));
    let reply = read_frame(&mut s);
    assert_eq!(reply.meta(META_ERROR), Some("can not find codec for 4"));
    // The connection survives service errors.
    send(&mut s, &request(3, 4, "Arith", "Add", &msgpack_args(1, 2)));
    assert_eq!(msgpack_reply(&read_frame(&mut s).payload), 3);
    common::stop(server);
}

#[test]
fn handler_errors_are_error_replies() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    send(&mut s, &request(3, 1, "Arith", "Mul", b"\xc1"));
    let reply = read_frame(&mut s);
    assert!(reply.header.is_error());
    assert!(
        reply
            .meta(META_ERROR)
            .unwrap()
            .starts_with("bad msgpack payload"),
        "{:?}",
        reply.metadata
    );
    common::stop(server);
}

#[test]
fn wrong_magic_closes_the_connection_without_a_reply() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let mut bytes = request(3, 1, "Arith", "Mul", &msgpack_args(1, 2)).to_bytes();
    bytes[0] = 0x09;
    s.write_all(&bytes).unwrap();
    assert!(common::closed_without_reply(&mut s));
    assert_eq!(server.metrics()[0].bad_frames_total(), 1);
    common::stop(server);
}

#[test]
fn over_long_frame_is_refused_from_the_header_alone() {
    let server = common::start_with(1, |c| c.limits.max_frame_bytes = 1 << 20);
    let mut s = connect(server.local_addrs()[0]);
    // A header announcing 4 GiB - 1: the server must close without waiting for (or allocating)
    // the body, which never comes.
    let mut header = request(3, 1, "Arith", "Mul", &[]).to_bytes();
    header.truncate(protocol::HEADER_LEN);
    header[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&header).unwrap();
    assert!(common::closed_without_reply(&mut s));
    // Just over the configured limit is refused too.
    let mut s = connect(server.local_addrs()[0]);
    header[12..16].copy_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    s.write_all(&header).unwrap();
    assert!(common::closed_without_reply(&mut s));
    common::stop(server);
}

#[test]
fn replies_before_bad_input_are_still_sent() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let mut bytes = request(3, 1, "Arith", "Mul", &msgpack_args(6, 7)).to_bytes();
    bytes.extend_from_slice(b"GARBAGE GARBAGE");
    s.write_all(&bytes).unwrap();
    assert_eq!(msgpack_reply(&read_frame(&mut s).payload), 42);
    assert!(common::closed_without_reply(&mut s));
    common::stop(server);
}

#[test]
fn bad_input_on_one_connection_does_not_affect_another() {
    let server = common::start(1);
    let addr = server.local_addrs()[0];
    let mut good = connect(addr);
    let mut bad = connect(addr);
    // An inner length that runs past the frame.
    let mut bytes = request(3, 1, "Arith", "Mul", &msgpack_args(1, 2)).to_bytes();
    bytes[16..20].copy_from_slice(&1000u32.to_be_bytes());
    bad.write_all(&bytes).unwrap();
    assert!(common::closed_without_reply(&mut bad));
    send(
        &mut good,
        &request(3, 1, "Arith", "Mul", &msgpack_args(8, 8)),
    );
    assert_eq!(msgpack_reply(&read_frame(&mut good).payload), 64);
    common::stop(server);
}

#[test]
fn gzip_bomb_is_refused() {
    let server = common::start_with(1, |c| c.limits.max_decompressed_bytes = 64 << 10);
    let mut s = connect(server.local_addrs()[0]);
    let mut payload = Vec::new();
    percore::codec::gzip(&vec![b' '; 1 << 20], &mut payload);
    let mut req = request(1, 1, "Echo", "Echo", &payload);
    req.header.set_compress(1);
    send(&mut s, &req);
    assert!(common::closed_without_reply(&mut s));
    common::stop(server);
}

#[test]
fn large_gzip_reply_is_compressed_and_small_one_is_not() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    for (seq, size) in [(1u64, 4096usize), (2, 100)] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut packed = Vec::new();
        percore::codec::gzip(&body, &mut packed);
        let mut req = request(0, seq, "Echo", "Echo", &packed);
        req.header.set_compress(1);
        send(&mut s, &req);
        let reply = read_frame(&mut s);
        let got = if size > 1024 {
            assert_eq!(reply.header.compress(), 1);
            let mut out = Vec::new();
            percore::codec::gunzip(&reply.payload, 1 << 20, &mut out).unwrap();
            out
        } else {
            assert_eq!(reply.header.compress(), 0);
            reply.payload
        };
        assert_eq!(got, body);
    }
    common::stop(server);
}

#[test]
fn a_frame_split_into_one_byte_writes_is_served() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let bytes = request(3, 9, "Arith", "Mul", &msgpack_args(11, 12)).to_bytes();
    for b in &bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
        s.flush().unwrap();
    }
    let reply = read_frame(&mut s);
    assert_eq!(reply.header.seq, 9);
    assert_eq!(msgpack_reply(&reply.payload), 132);
    common::stop(server);
}

#[test]
fn echo_returns_any_payload_and_codec_unchanged() {
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    for (seq, codec) in [(1u64, 0u8), (2, 1), (3, 2), (4, 3)] {
        send(&mut s, &request(codec, seq, "Echo", "Echo", &big));
        let reply = read_frame(&mut s);
        assert_eq!(reply.header.serialize, codec);
        assert_eq!(reply.payload, big);
    }
    common::stop(server);
}

#[test]
fn hello_say_answers_the_benchmark_message() {
    use prost::Message;
    let server = common::start(1);
    let mut s = connect(server.local_addrs()[0]);
    let msg = percore::bench_message::BenchmarkMessage::prepared();
    send(&mut s, &request(2, 1, "Hello", "Say", &msg.encode_to_vec()));
    let reply = read_frame(&mut s);
    let got = percore::bench_message::BenchmarkMessage::decode(reply.payload.as_slice()).unwrap();
    assert_eq!(got.field1, "OK");
    assert_eq!(got.field2, 100);
    assert_eq!(got.field3, msg.field3);
    common::stop(server);
}

#[test]
fn delayed_replies_do_not_hold_up_other_calls() {
    let server = common::start_with(1, |c| common::hello_delay(c, Duration::from_millis(300)));
    let mut s = connect(server.local_addrs()[0]);
    let msg = prost::Message::encode_to_vec(&percore::bench_message::BenchmarkMessage::prepared());
    send(&mut s, &request(2, 1, "Hello", "Say", &msg));
    send(&mut s, &request(3, 2, "Arith", "Mul", &msgpack_args(2, 2)));
    // The Arith reply overtakes the delayed Hello reply: replies are matched by seq.
    assert_eq!(read_frame(&mut s).header.seq, 2);
    assert_eq!(read_frame(&mut s).header.seq, 1);
    common::stop(server);
}

#[test]
fn two_cores_both_serve_connections() {
    let server = common::start(2);
    assert_eq!(server.metrics().len(), 2);
    let addr = server.local_addrs()[0];
    // SO_REUSEPORT hashes each connection to one of the two listeners; keep connecting (a bounded
    // number of times) until both cores have answered one.
    for i in 0..500 {
        let mut s = connect(addr);
        send(&mut s, &request(3, i, "Arith", "Mul", &msgpack_args(1, 1)));
        assert_eq!(msgpack_reply(&read_frame(&mut s).payload), 1);
        let served: Vec<u64> = server.metrics().iter().map(|m| m.requests.get()).collect();
        if served.iter().all(|&n| n > 0) {
            common::stop(server);
            return;
        }
    }
    panic!("500 connections all went to one core");
}

#[test]
fn shutdown_finishes_calls_in_flight_and_refuses_new_connections() {
    let server = common::start_with(1, |c| common::hello_delay(c, Duration::from_millis(300)));
    let addr = server.local_addrs()[0];
    let mut s = connect(addr);
    let msg = prost::Message::encode_to_vec(&percore::bench_message::BenchmarkMessage::prepared());
    send(&mut s, &request(2, 1, "Hello", "Say", &msg));
    // Wait (bounded) until the server has the call, then stop it.
    let started = Instant::now();
    while server.metrics()[0].requests.get() == 0 {
        assert!(
            started.elapsed() < common::IO_TIMEOUT,
            "request never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.shutdown();
    let reply = read_frame(&mut s);
    assert_eq!(reply.header.seq, 1);
    assert!(!reply.header.is_error());
    assert!(common::closed_without_reply(&mut s));
    server.join().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "new connections are refused"
    );
}

#[test]
fn http_on_the_rpcx_port_gets_an_http_error_not_a_hang() {
    // With the gateway on, HTTP is served (tests/gateway.rs); off, it gets a 404 and a close.
    let server = common::start_with(1, |c| c.gateway.enabled = false);
    let mut s = connect(server.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
    common::stop(server);
}

#[test]
fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let server = common::start_with(1, |c| {
        c.limits.handshake_timeout = Duration::from_millis(200)
    });
    let mut s = connect(server.local_addrs()[0]);
    assert!(common::closed_without_reply(&mut s));
    common::eventually("the close is counted as a handshake timeout", || {
        server.metrics()[0].closed(percore::metrics::Close::HandshakeTimeout) == 1
    });
    common::stop(server);
}

/// Reads one whole frame's bytes as they came.
fn read_raw(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; protocol::HEADER_LEN];
    s.read_exact(&mut buf).unwrap();
    let total = protocol::frame_len(&buf, u32::MAX).unwrap().unwrap();
    buf.resize(total, 0);
    s.read_exact(&mut buf[protocol::HEADER_LEN..]).unwrap();
    buf
}

/// The connection loop answers a method called again on a connection from its names' bytes
/// alone (no re-parse, no lookup; a plain call skips the full decode): every kind of call that
/// follows one to the same method gets, byte for byte, the reply the first call on a new
/// connection gets.
#[test]
fn a_method_called_again_on_a_connection_is_answered_as_a_first_call_is() {
    let server = common::start(1);
    let addr = server.local_addrs()[0];
    let mul = |seq: u64, a: i64, b: i64| request(3, seq, "Arith", "Mul", &msgpack_args(a, b));
    let mut cases: Vec<(Vec<u8>, bool)> = Vec::new(); // (frame, answered)
    cases.push((mul(1, 10, 20).to_bytes(), true));
    cases.push((mul(2, 1 << 40, 3).to_bytes(), true));
    cases.push((mul(3, -7, 5).to_bytes(), true));
    let mut with_meta = mul(4, 2, 3);
    with_meta.metadata.push(("k".into(), "v".into()));
    cases.push((with_meta.to_bytes(), true));
    // Status bits and an odd version in the request, and low bits in the serialize byte.
    let mut odd = mul(5, 6, 7).to_bytes();
    odd[1] = 5;
    odd[2] |= 0x01;
    odd[3] |= 0x05;
    cases.push((odd, true));
    cases.push((
        request(1, 6, "Arith", "Mul", br#"{"A":3,"B":4}"#).to_bytes(),
        true,
    ));
    cases.push((request(9, 7, "Arith", "Mul", &[]).to_bytes(), true));
    cases.push((
        request(3, 8, "Arith", "Mul", &[0xc1, 0xc1]).to_bytes(),
        true,
    ));
    let mut packed = Vec::new();
    percore::codec::gzip(&msgpack_args(8, 9), &mut packed);
    let mut gz = mul(9, 0, 0);
    gz.payload = packed;
    gz.header.set_compress(protocol::COMPRESS_GZIP);
    cases.push((gz.to_bytes(), true));
    let mut deadline = mul(10, 5, 5);
    deadline
        .metadata
        .push((protocol::META_SERVER_TIMEOUT.into(), "1000".into()));
    cases.push((deadline.to_bytes(), true));
    cases.push((
        request(3, 11, "Arith", "Mux", &msgpack_args(1, 1)).to_bytes(),
        true,
    ));
    let mut oneway = mul(12, 1, 2);
    oneway.header.flags |= flags::ONEWAY;
    cases.push((oneway.to_bytes(), false));
    let mut hb = request(3, 13, "Arith", "Mul", &[1, 2, 3]);
    hb.header.flags |= flags::HEARTBEAT;
    cases.push((hb.to_bytes(), true));
    cases.push((mul(14, 11, 11).to_bytes(), true));
    cases.push((
        request(3, 15, "Arith", "Add", &msgpack_args(1, 2)).to_bytes(),
        true,
    ));
    cases.push((mul(16, 12, 12).to_bytes(), true));
    cases.push((
        request(0, 17, "Echo", "Echo", b"raw bytes").to_bytes(),
        true,
    ));

    // Each alone, as the first call on a connection of its own.
    let mut alone = Vec::new();
    for (frame, answered) in &cases {
        if *answered {
            let mut s = connect(addr);
            s.write_all(frame).unwrap();
            alone.push(read_raw(&mut s));
        }
    }
    // All pipelined on one connection, in one write.
    let mut s = connect(addr);
    s.write_all(&cases.iter().flat_map(|c| c.0.clone()).collect::<Vec<u8>>())
        .unwrap();
    for (i, want) in alone.iter().enumerate() {
        assert_eq!(&read_raw(&mut s), want, "reply {i}");
    }
    common::stop(server);
}
