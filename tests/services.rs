//! A user's own services, registered with the public API (`service!`, `registry!`) as another
//! crate would: sync and async handlers, per-core state, config sections, over real loopback
//! sockets. Every wait is bounded.

mod common;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{connect, read_frame, request, send};
use percore::codec::SerializeType;
use percore::config::Config;
use percore::protocol::{META_ERROR, Message};
use percore::server::ServerHandle;
use percore::service::{CoreInfo, ServiceError};

const MSGPACK: u8 = SerializeType::MsgPack as u8;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ProbeConfig {
    /// Where the call counter starts.
    start: u64,
}

/// One core's probe: what it has seen on this core only.
struct Probe {
    core: usize,
    calls: Cell<u64>,
    /// Async `Hold` calls running now, and the most seen at once.
    running: Cell<u64>,
    peak: Cell<u64>,
}

impl Probe {
    fn new(core: &CoreInfo, config: &ProbeConfig) -> Probe {
        Probe {
            core: core.index,
            calls: Cell::new(config.start),
            running: Cell::new(0),
            peak: Cell::new(0),
        }
    }

    /// (this core, calls counted on this core so far).
    fn count(&self, _: ()) -> Result<(usize, u64), ServiceError> {
        self.calls.set(self.calls.get() + 1);
        Ok((self.core, self.calls.get()))
    }

    fn fast(&self, n: i64) -> Result<i64, ServiceError> {
        Ok(n)
    }

    /// `n` back, or a panic if it is negative.
    fn check(&self, n: i64) -> Result<i64, ServiceError> {
        assert!(n >= 0, "negative");
        Ok(n)
    }

    async fn slow(&self, ms: u64) -> Result<u64, ServiceError> {
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }

    /// Sleeps `ms` and answers the most `Hold` calls that ran at once so far.
    async fn hold(&self, ms: u64) -> Result<u64, ServiceError> {
        self.running.set(self.running.get() + 1);
        self.peak.set(self.peak.get().max(self.running.get()));
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        self.running.set(self.running.get() - 1);
        Ok(self.peak.get())
    }

    fn boom(&self, _: ()) -> Result<(), ServiceError> {
        panic!("boom")
    }

    async fn boom_later(&self, _: ()) -> Result<(), ServiceError> {
        glommio::timer::sleep(Duration::from_millis(1)).await;
        panic!("later")
    }

    async fn refuse(&self, _: ()) -> Result<(), ServiceError> {
        Err(ServiceError::new("not today"))
    }
}

percore::service! {
    Probe(config: ProbeConfig) {
        "Count" => sync count,
        "Fast" => sync fast,
        "Check" => sync check,
        "Slow" => async slow,
        "Hold" => async hold,
        "Boom" => sync boom,
        "BoomLater" => async boom_later,
        "Refuse" => async refuse,
    }
}

percore::registry! {
    /// The test's services: its own Probe beside the built-in Arith.
    pub struct TestServices {
        probe: "Probe" => Probe,
        arith: "Arith" => percore::builtin::Arith,
    }
}

fn start(cores: usize, tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::default();
    config.server.listen = vec!["tcp@127.0.0.1:0".parse().unwrap()];
    config.server.cores = cores;
    tweak(&mut config);
    percore::server::start::<TestServices>(config).expect("server starts")
}

fn msgpack<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).unwrap()
}

fn value<T: serde::de::DeserializeOwned>(reply: &Message) -> T {
    assert!(
        !reply.header.is_error(),
        "error reply: {:?}",
        reply.meta(META_ERROR)
    );
    rmp_serde::from_slice(&reply.payload).unwrap()
}

fn call(s: &mut TcpStream, seq: u64, method: &str, args: &[u8]) -> Message {
    send(s, &request(MSGPACK, seq, "Probe", method, args));
    let reply = read_frame(s);
    assert_eq!(reply.header.seq, seq);
    reply
}

#[test]
fn a_slow_async_call_does_not_hold_up_the_next_one() {
    let server = start(1, |_| {});
    let mut s = connect(server.local_addrs()[0]);
    let mut batch = request(MSGPACK, 1, "Probe", "Slow", &msgpack(&50u64)).to_bytes();
    batch.extend(request(MSGPACK, 2, "Probe", "Fast", &msgpack(&7i64)).to_bytes());
    batch.extend(request(MSGPACK, 3, "Arith", "Mul", &common::msgpack_args(6, 7)).to_bytes());
    s.write_all(&batch).unwrap();
    // The fast calls' replies come first; the slow one's after its sleep, matched by seq.
    let first = read_frame(&mut s);
    assert_eq!((first.header.seq, value::<i64>(&first)), (2, 7));
    let second = read_frame(&mut s);
    assert_eq!(second.header.seq, 3);
    assert_eq!(common::msgpack_reply(&second.payload), 42);
    let third = read_frame(&mut s);
    assert_eq!((third.header.seq, value::<u64>(&third)), (1, 50));
    common::stop(server);
}

#[test]
fn ten_thousand_async_calls_on_one_connection_keep_to_the_in_flight_cap() {
    const CAP: usize = 64;
    const CALLS: u64 = 10_000;
    let server = start(1, |c| c.limits.max_calls_in_flight = CAP);
    let mut s = connect(server.local_addrs()[0]);
    let mut reader = s.try_clone().unwrap();
    let answers = std::thread::spawn(move || {
        let mut seen = vec![false; CALLS as usize];
        let mut peak = 0;
        for _ in 0..CALLS {
            let reply = read_frame(&mut reader);
            let at = reply.header.seq as usize;
            assert!(
                !std::mem::replace(&mut seen[at], true),
                "seq {at} answered twice"
            );
            peak = peak.max(value::<u64>(&reply));
        }
        (seen.iter().all(|&s| s), peak)
    });
    let mut batch = Vec::new();
    for seq in 0..CALLS {
        batch.extend(request(MSGPACK, seq, "Probe", "Hold", &msgpack(&1u64)).to_bytes());
    }
    s.write_all(&batch).unwrap();
    let (all, peak) = answers.join().unwrap();
    assert!(all, "every call answered");
    assert!(peak as usize <= CAP, "{peak} calls ran at once, cap {CAP}");
    assert!(peak > 1, "the calls ran side by side ({peak} at most)");
    common::stop(server);
}

#[test]
fn a_panicking_or_failing_handler_gets_an_error_reply_and_the_core_goes_on() {
    let server = start(1, |_| {});
    let mut s = connect(server.local_addrs()[0]);
    for (seq, method, text) in [
        (1, "Boom", "[service internal error]: boom"),
        (2, "BoomLater", "[service internal error]: later"),
        (3, "Refuse", "not today"),
    ] {
        let reply = call(&mut s, seq, method, &[]);
        assert!(reply.header.is_error(), "{method}");
        assert_eq!(reply.meta(META_ERROR), Some(text), "{method}");
    }
    // Pipelined in one write, the same method again (the connection loop's fast lane, whose
    // panics are caught once per batch): each call answered in order, the ones after a panic
    // too.
    let mut batch = Vec::new();
    for (seq, method) in [
        (10, "Boom"),
        (11, "Boom"),
        (12, "Fast"),
        (13, "Boom"),
        (14, "Fast"),
    ] {
        let args = if method == "Fast" {
            msgpack(&seq)
        } else {
            Vec::new()
        };
        request(MSGPACK, seq, "Probe", method, &args).encode(&mut batch);
    }
    s.write_all(&batch).unwrap();
    for seq in [10, 11, 12, 13, 14] {
        let reply = read_frame(&mut s);
        assert_eq!(reply.header.seq, seq);
        if seq == 12 || seq == 14 {
            assert_eq!(value::<i64>(&reply), seq as i64);
        } else {
            assert_eq!(
                reply.meta(META_ERROR),
                Some("[service internal error]: boom")
            );
        }
    }
    // Panics in the middle of a run of calls to one method: every call answered once, in
    // order, those before and after each panic too.
    let mut batch = Vec::new();
    let args = [1i64, 2, -3, 4, 5, -6, -7, 8];
    for (seq, n) in (20u64..).zip(args) {
        request(MSGPACK, seq, "Probe", "Check", &msgpack(&n)).encode(&mut batch);
    }
    s.write_all(&batch).unwrap();
    for (seq, n) in (20u64..).zip(args) {
        let reply = read_frame(&mut s);
        assert_eq!(reply.header.seq, seq);
        if n >= 0 {
            assert_eq!(value::<i64>(&reply), n);
        } else {
            let text = reply.meta(META_ERROR).unwrap_or_default();
            assert!(
                text.starts_with("[service internal error]: negative"),
                "{text}"
            );
        }
    }
    // The same connection, and a new one, are still served.
    assert_eq!(value::<i64>(&call(&mut s, 4, "Fast", &msgpack(&5i64))), 5);
    let mut other = connect(server.local_addrs()[0]);
    assert_eq!(
        value::<i64>(&call(&mut other, 1, "Fast", &msgpack(&6i64))),
        6
    );
    let handled = |name: &str| {
        let m = &server.metrics()[0];
        let names = server.method_names();
        let i = names.iter().position(|&(_, n)| n == name).unwrap();
        (
            m.method(i).handled_ok.get(),
            m.method(i).handled_error.get(),
        )
    };
    assert_eq!(handled("BoomLater"), (0, 1));
    assert_eq!(handled("Boom"), (0, 4));
    assert_eq!(handled("Check"), (5, 3));
    assert_eq!(handled("Fast"), (4, 0));
    common::stop(server);
}

#[test]
fn each_core_has_its_own_state_built_from_the_config() {
    if percore::server::allowed_cpus().unwrap().len() < 2 {
        eprintln!("skipped: needs 2 CPUs");
        return;
    }
    let server = start(2, |c| {
        let section = toml::from_str("start = 100").unwrap();
        c.services
            .insert("Probe".into(), toml::Value::Table(section));
    });
    let addr = server.local_addrs()[0];
    // Connections until one lands on each core (the kernel spreads them by hash).
    let mut on_core: [Option<TcpStream>; 2] = [None, None];
    for _ in 0..64 {
        let mut s = connect(addr);
        let (core, _): (usize, u64) = value(&call(&mut s, 0, "Count", &[]));
        on_core[core].get_or_insert(s);
        if on_core.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(mut a), Some(mut b)] = on_core else {
        panic!("64 connections all landed on one core");
    };
    let count = |s: &mut TcpStream| value::<(usize, u64)>(&call(s, 1, "Count", &[]));
    let (core_a, before_a) = count(&mut a);
    let (core_b, before_b) = count(&mut b);
    assert_ne!(core_a, core_b);
    assert!(
        before_a > 100 && before_b > 100,
        "counters start at the configured 100"
    );
    for _ in 0..5 {
        count(&mut a);
    }
    // Core a's counter moved on; core b's did not see those calls.
    assert_eq!(count(&mut a).1, before_a + 6);
    assert_eq!(count(&mut b).1, before_b + 1);
    common::stop(server);
}

#[test]
fn async_handlers_answer_through_the_gateway_and_json_rpc() {
    let server = start(1, |_| {});
    let addr = server.local_addrs()[0];
    let mut s = connect(addr);
    let body = "25";
    write!(
        s,
        "POST /Probe HTTP/1.1\r\nX-RPCX-ServiceMethod: Slow\r\nX-RPCX-SerializeType: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n25"), "{text}");

    // A batch: the async call's result keeps its place among the others.
    let mut s = connect(addr);
    let body = r#"[{"jsonrpc":"2.0","method":"Probe.Slow","params":20,"id":1},
        {"jsonrpc":"2.0","method":"Probe.Fast","params":3,"id":2},
        {"jsonrpc":"2.0","method":"Probe.Refuse","params":null,"id":3}]"#;
    write!(
        s,
        "POST / HTTP/1.1\r\nX-JSONRPC-2.0: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let json = text.split_once("\r\n\r\n").unwrap().1;
    let reply: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(reply[0]["result"], 20, "{json}");
    assert_eq!(reply[0]["id"], 1);
    assert_eq!(reply[1]["result"], 3);
    assert_eq!(reply[2]["error"]["message"], "not today");
    common::stop(server);
}

#[test]
fn async_calls_past_the_callers_deadline_get_deadline_exceeded() {
    let server = start(1, |_| {});
    let mut s = connect(server.local_addrs()[0]);
    let mut slow = request(MSGPACK, 9, "Probe", "Slow", &msgpack(&5_000u64));
    slow.metadata.push(("__ServerTimeout".into(), "30".into()));
    send(&mut s, &slow);
    let reply = read_frame(&mut s);
    assert_eq!(reply.header.seq, 9);
    assert_eq!(reply.meta(META_ERROR), Some("context deadline exceeded"));
    common::stop(server);
}

#[test]
fn sections_are_checked_against_the_registry() {
    use percore::service::Registry;
    let mut sections = toml::Table::new();
    sections.insert(
        "Probe".into(),
        toml::Value::Table(toml::from_str("strat = 1").unwrap()),
    );
    let err = TestServices::check(&sections).unwrap_err();
    assert_eq!(err.key, "services.Probe");
    assert!(err.message.contains("strat"), "{err}");
    let mut config = Config::default();
    config.server.listen = vec!["tcp@127.0.0.1:0".parse().unwrap()];
    config.services = sections;
    let err = percore::server::start::<TestServices>(config)
        .err()
        .unwrap();
    assert!(err.to_string().contains("services.Probe"), "{err}");
}
