//! The client against real in-process percore servers on loopback: fail modes, select modes,
//! service errors, broken connections, and the call kinds. Every wait is bounded.

use std::cell::RefCell;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use percore::bench_message::BenchmarkMessage;
use percore::builtin::{ArithArgs, ArithReply};
use percore::client::{
    self, Client, Discovery, Error, ErrorKind, FailMode, Options, Request, SelectMode, ServerEntry,
    XClient,
};
use percore::codec::SerializeType;
use percore::config::Config;
use percore::metrics::CoreMetrics;
use percore::protocol::{self, Header, flags};
use percore::server::ServerHandle;
use prost::Message as _;

mod common;

/// Generous bound on every test body: a hang fails the test instead of the suite.
const TEST_BOUND: Duration = Duration::from_secs(60);

struct Server {
    handle: Option<ServerHandle>,
    addr: String,
    metrics: Vec<Arc<CoreMetrics>>,
}

impl Server {
    fn start(hello_delay: Duration) -> Server {
        let mut config = Config::default();
        config.server.listen = vec!["tcp@127.0.0.1:0".parse().unwrap()];
        config.server.cores = 1;
        config.server.drain_timeout = Duration::from_millis(100);
        common::hello_delay(&mut config, hello_delay);
        let handle = percore::server::start::<percore::builtin::Builtin>(config).unwrap();
        let addr = format!("tcp@{}", handle.local_addrs()[0]);
        let metrics = handle.metrics().to_vec();
        Server {
            handle: Some(handle),
            addr,
            metrics,
        }
    }

    fn requests(&self) -> u64 {
        self.metrics.iter().map(|m| m.requests.get()).sum()
    }

    fn heartbeats(&self) -> u64 {
        self.metrics.iter().map(|m| m.heartbeats.get()).sum()
    }

    /// Stops the server and waits until it is gone (listener closed, connections closed).
    fn kill(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
            handle.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn entries(servers: &[&Server]) -> Discovery {
    Discovery::MultipleServers(
        servers
            .iter()
            .map(|s| ServerEntry::new(s.addr.clone(), ""))
            .collect(),
    )
}

/// Runs a test body on a client executor, failing the test if it takes longer than TEST_BOUND.
fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let finished = client::block_on(move || async move {
        futures_lite::future::or(
            async {
                body().await;
                true
            },
            async {
                glommio::timer::sleep(TEST_BOUND).await;
                false
            },
        )
        .await
    })
    .unwrap();
    assert!(finished, "test body did not finish within {TEST_BOUND:?}");
}

/// Polls `cond` every few milliseconds, at most TEST_BOUND.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TEST_BOUND, "never happened: {what}");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

async fn mul(x: &XClient, a: i64, b: i64) -> Result<i64, Error> {
    x.call::<ArithArgs, ArithReply>("Mul", &ArithArgs { a, b })
        .await
        .map(|r| r.c)
}

/// Which server took the next call: the one whose request count went up.
async fn who_serves(x: &XClient, servers: &[Arc<Server>]) -> usize {
    let before: Vec<u64> = servers.iter().map(|s| s.requests()).collect();
    assert_eq!(mul(x, 6, 7).await.unwrap(), 42);
    let moved: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i].requests() != before[i])
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one server took the call: {moved:?}"
    );
    moved[0]
}

#[test]
fn failover_moves_to_a_live_server_when_one_is_shut_down() {
    let a = Arc::new(std::sync::Mutex::new(Server::start(Duration::ZERO)));
    let b = Server::start(Duration::ZERO);
    let discovery = entries(&[&a.lock().unwrap(), &b]);
    let b_metrics = b.metrics.clone();
    let a2 = Arc::clone(&a);
    run(move || async move {
        let x = XClient::new(
            "Arith",
            FailMode::Failover,
            SelectMode::RoundRobin,
            &discovery,
            Options::default(),
        )
        .unwrap();
        for i in 0..4 {
            assert_eq!(mul(&x, i, 3).await.unwrap(), i * 3);
        }
        a2.lock().unwrap().kill();
        let b_before: u64 = b_metrics.iter().map(|m| m.requests.get()).sum();
        for i in 0..6 {
            assert_eq!(
                mul(&x, i, 5).await.unwrap(),
                i * 5,
                "call {i} after the shutdown"
            );
        }
        let b_after: u64 = b_metrics.iter().map(|m| m.requests.get()).sum();
        assert_eq!(
            b_after - b_before,
            6,
            "every call after the shutdown was answered by b"
        );
    });
    drop(b);
}

/// An address nothing listens on for as long as the returned socket lives: bound, so no other
/// test can be given its port (a stopped server's freed port can be, and a connection to it
/// then meets another test's listener), and not listening, so a connect is refused.
fn refusing_address() -> (socket2::Socket, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, format!("tcp@{addr}"))
}

/// Binds (without listening) the port of a stopped server's `tcp@host:port`, so connects to it
/// stay refused and no other test is given it; None if someone took it already.
fn hold_port(addr: &str) -> Option<socket2::Socket> {
    let addr: std::net::SocketAddr = addr.trim_start_matches("tcp@").parse().ok()?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.set_reuse_address(true).ok()?;
    socket.bind(&addr.into()).ok()?;
    Some(socket)
}

#[test]
fn failfast_returns_the_transport_error() {
    let (_held, dead) = refusing_address();
    let b = Server::start(Duration::ZERO);
    let discovery = Discovery::MultipleServers(vec![
        ServerEntry::new(dead, ""),
        ServerEntry::new(b.addr.clone(), ""),
    ]);
    run(move || async move {
        let x = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::RoundRobin,
            &discovery,
            Options::default(),
        )
        .unwrap();
        let err = mul(&x, 2, 3).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
        assert!(
            err.to_string().contains(&discovery.entries()[0].address),
            "{err}"
        );
        assert_eq!(mul(&x, 2, 3).await.unwrap(), 6);
    });
}

/// A listener that accepts connections, counts them and closes them at once: a server that
/// breaks every connection.
fn breaking_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = format!("tcp@{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < TEST_BOUND {
            match listener.accept() {
                Ok((conn, _)) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(conn);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (addr, accepted)
}

#[test]
fn failtry_retries_the_same_server() {
    let mut a = Server::start(Duration::ZERO);
    let b = Server::start(Duration::ZERO);
    let (broken, accepted) = breaking_listener();
    let discovery = Discovery::MultipleServers(vec![
        ServerEntry::new(a.addr.clone(), ""),
        ServerEntry::new(b.addr.clone(), ""),
        ServerEntry::new(broken, ""),
    ]);
    let a_addr = a.addr.clone();
    let (a_metrics, b_metrics) = (a.metrics.clone(), b.metrics.clone());
    let requests = |m: &[Arc<CoreMetrics>]| m.iter().map(|c| c.requests.get()).sum::<u64>();
    // Round robin: a, b, broken, a, ...
    run(move || async move {
        let options = Options {
            retries: 2,
            ..Options::default()
        };
        let x = XClient::new(
            "Arith",
            FailMode::Failtry,
            SelectMode::RoundRobin,
            &discovery,
            options,
        )
        .unwrap();
        assert_eq!(mul(&x, 1, 1).await.unwrap(), 1); // a
        assert_eq!(mul(&x, 2, 2).await.unwrap(), 4); // b
        let err = mul(&x, 3, 3).await.unwrap_err(); // broken: 1 try + 2 retries, all there
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "the same server was tried 3 times"
        );
        assert_eq!(
            requests(&a_metrics) + requests(&b_metrics),
            2,
            "no retry went elsewhere"
        );
        a.kill();
        // Keep a's freed port from being handed to another test's listener meanwhile.
        let _held = hold_port(&a_addr);
        let b_before = requests(&b_metrics);
        let err = mul(&x, 4, 4).await.unwrap_err(); // a again: dead, retried on a only
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
        assert!(err.to_string().contains(&a_addr), "{err}");
        assert_eq!(requests(&b_metrics), b_before);
        assert_eq!(mul(&x, 5, 5).await.unwrap(), 25); // b
    });
}

#[test]
fn failbackup_answers_from_the_second_server_when_the_first_is_slow() {
    let slow = Server::start(Duration::from_secs(120));
    let fast = Server::start(Duration::ZERO);
    let discovery = entries(&[&slow, &fast]);
    let (slow_m, fast_m) = (slow.metrics.clone(), fast.metrics.clone());
    run(move || async move {
        let options = Options {
            serialize: SerializeType::Protobuf,
            backup_latency: Duration::from_millis(10),
            // Far below the slow server's delay: without the backup copy the call fails.
            timeout: Some(Duration::from_secs(30)),
            ..Options::default()
        };
        let x = XClient::new(
            "Hello",
            FailMode::Failbackup,
            SelectMode::RoundRobin,
            &discovery,
            options,
        )
        .unwrap();
        let args = BenchmarkMessage::prepared().encode_to_vec();
        let reply = x
            .call_raw("Say", SerializeType::Protobuf, &args, &[])
            .await
            .unwrap();
        let msg = BenchmarkMessage::decode(reply.payload.as_slice()).unwrap();
        assert_eq!((msg.field1.as_str(), msg.field2), ("OK", 100));
        let count = |m: &[Arc<CoreMetrics>]| m.iter().map(|c| c.requests.get()).sum::<u64>();
        assert_eq!(
            (count(&slow_m), count(&fast_m)),
            (1, 1),
            "one copy to each server"
        );
    });
}

#[test]
fn weighted_round_robin_picks_a_a_b_a_c_a_a() {
    let servers: Vec<Arc<Server>> = (0..3)
        .map(|_| Arc::new(Server::start(Duration::ZERO)))
        .collect();
    let discovery = Discovery::MultipleServers(
        servers
            .iter()
            .zip([5, 1, 1])
            .map(|(s, w)| ServerEntry::new(s.addr.clone(), format!("weight={w}")))
            .collect(),
    );
    run(move || async move {
        let x = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::WeightedRoundRobin,
            &discovery,
            Options::default(),
        )
        .unwrap();
        let mut picks = Vec::new();
        for _ in 0..7 {
            picks.push(who_serves(&x, &servers).await);
        }
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    });
}

#[test]
fn round_robin_random_and_consistent_hash() {
    let servers: Vec<Arc<Server>> = (0..3)
        .map(|_| Arc::new(Server::start(Duration::ZERO)))
        .collect();
    let refs: Vec<&Server> = servers.iter().map(|s| &**s).collect();
    let discovery = entries(&refs);
    run(move || async move {
        let rr = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::RoundRobin,
            &discovery,
            Options::default(),
        )
        .unwrap();
        let mut picks = Vec::new();
        for _ in 0..6 {
            picks.push(who_serves(&rr, &servers).await);
        }
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        let random = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::RandomSelect,
            &discovery,
            Options::default(),
        )
        .unwrap();
        let mut seen = [0; 3];
        for _ in 0..90 {
            seen[who_serves(&random, &servers).await] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 0),
            "random selection reached every server: {seen:?}"
        );

        // The server rpcx's key and hash pick for Arith.Mul(&{6 7}), over the sorted addresses.
        let hash = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::ConsistentHash,
            &discovery,
            Options::default(),
        )
        .unwrap();
        let key = client::consistent_hash_key("Arith", "Mul", "&{6 7}");
        let mut sorted: Vec<usize> = (0..3).collect();
        sorted.sort_by_key(|&i| servers[i].addr.clone());
        let want = sorted[client::jump_hash(key, 3)];
        for _ in 0..5 {
            assert_eq!(who_serves(&hash, &servers).await, want);
        }
    });
}

#[test]
fn select_by_user_and_metadata_filters() {
    let servers: Vec<Arc<Server>> = (0..3)
        .map(|_| Arc::new(Server::start(Duration::ZERO)))
        .collect();
    let discovery = Discovery::MultipleServers(vec![
        ServerEntry::new(servers[0].addr.clone(), "group=blue"),
        ServerEntry::new(servers[1].addr.clone(), "group=blue&state=inactive"),
        ServerEntry::new(servers[2].addr.clone(), "group=green"),
    ]);
    run(move || async move {
        let user = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::SelectByUser,
            &discovery,
            Options::default(),
        )
        .unwrap();
        assert_eq!(user.servers().len(), 2, "the inactive server is hidden");
        let err = mul(&user, 1, 1).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::NoServer,
            "no selector set yet: {err}"
        );
        let calls = Rc::new(RefCell::new(0));
        let seen = Rc::clone(&calls);
        user.set_selector(move |call: &client::SelectCall<'_>| {
            *seen.borrow_mut() += 1;
            assert_eq!((call.service, call.method), ("Arith", "Mul"));
            call.servers.iter().position(|s| s.in_group("green"))
        });
        for _ in 0..3 {
            assert_eq!(who_serves(&user, &servers).await, 2);
        }
        assert_eq!(*calls.borrow(), 3);

        let blue = Options {
            group: Some("blue".into()),
            ..Options::default()
        };
        let rr = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::RoundRobin,
            &discovery,
            blue,
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(
                who_serves(&rr, &servers).await,
                0,
                "only the active blue server"
            );
        }
    });
}

#[test]
fn a_service_error_is_returned_and_never_retried() {
    let a = Server::start(Duration::ZERO);
    let b = Server::start(Duration::ZERO);
    let discovery = entries(&[&a, &b]);
    let metrics: Vec<Arc<CoreMetrics>> = a.metrics.iter().chain(&b.metrics).cloned().collect();
    run(move || async move {
        for mode in [FailMode::Failover, FailMode::Failtry, FailMode::Failbackup] {
            let before: u64 = metrics.iter().map(|m| m.requests.get()).sum();
            let x = XClient::new(
                "Arith",
                mode,
                SelectMode::RoundRobin,
                &discovery,
                Options::default(),
            )
            .unwrap();
            let err = x
                .call::<ArithArgs, ArithReply>("Div", &ArithArgs { a: 1, b: 1 })
                .await
                .unwrap_err();
            assert_eq!(
                err,
                Error::Service("rpcx: can't find method Div".into()),
                "{mode:?}"
            );
            assert!(!err.is_retryable());
            let after: u64 = metrics.iter().map(|m| m.requests.get()).sum();
            assert_eq!(
                after - before,
                1,
                "{mode:?}: the failed call was sent exactly once"
            );
        }
    });
}

/// Starts 8 slow calls on one connection and returns them once the server has them all.
async fn eight_pending_calls(
    c: &Client,
    args: &Rc<Vec<u8>>,
    received: impl Fn() -> bool,
) -> Vec<glommio::Task<Result<percore::protocol::Message, Error>>> {
    c.heartbeat(Some(Duration::from_secs(30))).await.unwrap(); // connected before the calls
    let calls = (0..8)
        .map(|_| {
            let (c, args) = (c.clone(), Rc::clone(args));
            glommio::spawn_local(async move {
                let req = Request::new("Hello", "Say", SerializeType::Protobuf, &args);
                c.call_raw(&req).await
            })
        })
        .collect();
    glommio::timer::sleep(Duration::from_millis(10)).await; // let the calls be written
    eventually("the server has all 8 calls", received).await;
    calls
}

#[test]
fn pending_calls_fail_promptly_when_the_server_dies() {
    // The server is a real process killed outright: a crash, not a graceful drain.
    let server = std::sync::Mutex::new(common::ServeProcess::start(
        "[services.Hello]\ndelay = \"120s\"\n",
    ));
    let addr = server.lock().unwrap().addr.clone();
    let server = Arc::new(server);
    run(move || async move {
        let c = Client::new(&addr, Options::default()).unwrap();
        let args = Rc::new(BenchmarkMessage::prepared().encode_to_vec());
        // The server's counters are in another process: a heartbeat sent after the calls on the
        // same connection is echoed only once the server has read everything before it.
        let calls = eight_pending_calls(&c, &args, || true).await;
        c.heartbeat(Some(Duration::from_secs(30))).await.unwrap();
        server.lock().unwrap().kill();
        for call in calls {
            let err = call.await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        }
        // Later calls dial again and find nobody. (The first one may still see the old
        // connection's reset if it races the reader noticing it; a bounded few calls settle it.)
        let req = Request::new("Hello", "Say", SerializeType::Protobuf, &args);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let err = c.call_raw(&req).await.unwrap_err();
            kinds.push(err.kind());
            if err.kind() == ErrorKind::Connect {
                assert!(err.to_string().contains(&addr), "{err}");
                break;
            }
            assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        }
        assert_eq!(kinds.last(), Some(&ErrorKind::Connect), "{kinds:?}");
    });
}

/// The same with an in-process server shut down: its drain timeout should close connections
/// whose calls are still in flight, but today the connection tasks outlive the executor and
/// keep the sockets open, so the calls are never failed. Run it by name once the server closes
/// them.
#[test]
#[ignore = "server: connections with delayed calls stay open after the drain timeout"]
fn pending_calls_fail_promptly_when_an_in_process_server_shuts_down() {
    let server = Arc::new(std::sync::Mutex::new(Server::start(Duration::from_secs(
        120,
    ))));
    let addr = server.lock().unwrap().addr.clone();
    let metrics = server.lock().unwrap().metrics.clone();
    run(move || async move {
        let c = Client::new(&addr, Options::default()).unwrap();
        let args = Rc::new(BenchmarkMessage::prepared().encode_to_vec());
        let all_in = || metrics.iter().map(|m| m.requests.get()).sum::<u64>() == 8;
        let calls = eight_pending_calls(&c, &args, all_in).await;
        std::thread::spawn(move || server.lock().unwrap().kill());
        for call in calls {
            let err = call.await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        }
    });
}

#[test]
fn call_kinds_options_and_metadata() {
    let a = Server::start(Duration::from_secs(120));
    let b = Server::start(Duration::ZERO);
    let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());
    let discovery = entries(&[&a, &b]);
    let metrics: Vec<Arc<CoreMetrics>> = a.metrics.iter().chain(&b.metrics).cloned().collect();
    let b_metrics = b.metrics.clone();
    let total = move || metrics.iter().map(|m| m.requests.get()).sum::<u64>();
    run(move || async move {
        // Typed call, metadata round trip, __AUTH and __ServerTimeout sent.
        let options = Options {
            auth_token: Some("s3cret".into()),
            timeout: Some(Duration::from_secs(20)),
            ..Options::default()
        };
        let c = Client::new(&b_addr, options).unwrap();
        let meta = vec![("trace".to_owned(), "abc".to_owned())];
        let payload = [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14]; // {A: 10, B: 20}
        let req = Request {
            metadata: &meta,
            timeout: Some(Duration::from_secs(20)),
            ..Request::new("Arith", "Mul", SerializeType::MsgPack, &payload)
        };
        let reply = c.call_raw(&req).await.unwrap();
        assert_eq!(reply.payload, [0x81, 0xa1, 0x43, 0xcc, 0xc8]); // {C: 200}
        assert_eq!(reply.meta("echo-trace"), Some("abc"));
        assert_eq!(reply.meta("echo-__AUTH"), Some("s3cret"));
        assert_eq!(reply.meta("echo-__ServerTimeout"), Some("20000"));
        let r: ArithReply = c
            .call("Arith", "Mul", &ArithArgs { a: -3, b: 4 })
            .await
            .unwrap();
        assert_eq!(r.c, -12);

        // Gzip: a 4 KiB echo goes out compressed and comes back compressed, transparently.
        let gz = Client::new(
            &b_addr,
            Options {
                gzip: true,
                ..Options::default()
            },
        )
        .unwrap();
        let big: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let echoed = gz
            .call_raw(&Request::new("Echo", "Echo", SerializeType::Raw, &big))
            .await
            .unwrap();
        assert_eq!(echoed.payload, big);
        assert_eq!(echoed.header.compress(), protocol::COMPRESS_GZIP);

        // Timeout: the slow server does not answer in time.
        let slow = Client::new(&a_addr, Options::default()).unwrap();
        let args = BenchmarkMessage::prepared().encode_to_vec();
        let req = Request {
            timeout: Some(Duration::from_millis(50)),
            ..Request::new("Hello", "Say", SerializeType::Protobuf, &args)
        };
        let err = slow.call_raw(&req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");

        // Heartbeat.
        c.heartbeat(Some(Duration::from_secs(20))).await.unwrap();

        // Oneway: no reply, but the server runs it.
        let before = total();
        c.oneway(&Request::new(
            "Arith",
            "Mul",
            SerializeType::MsgPack,
            &payload,
        ))
        .await
        .unwrap();
        eventually("the oneway call reached the server", || {
            total() == before + 1
        })
        .await;

        // Broadcast reaches every server; fork takes the first success.
        let x = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::RoundRobin,
            &discovery,
            Options::default(),
        )
        .unwrap();
        let before = total();
        let r: ArithReply = x.broadcast("Mul", &ArithArgs { a: 3, b: 3 }).await.unwrap();
        assert_eq!((r.c, total() - before), (9, 2));
        let r: ArithReply = x.fork("Add", &ArithArgs { a: 3, b: 3 }).await.unwrap();
        assert_eq!(r.c, 6);
        let err = x
            .broadcast::<ArithArgs, ArithReply>("Nope", &ArithArgs::default())
            .await
            .unwrap_err();
        assert!(err.is_service(), "{err}");
        assert!(b_metrics.iter().map(|m| m.heartbeats.get()).sum::<u64>() >= 1);

        // A bad address names itself.
        let err = XClient::new(
            "Arith",
            FailMode::Failfast,
            SelectMode::RoundRobin,
            &Discovery::PeerToPeer("tcp@nowhere".into()),
            Options::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("tcp@nowhere"), "{err}");
    });
    assert!(a.heartbeats() == 0);
}

/// A one-connection server in a thread that answers the first request with a server push
/// first and then the reply (echoing the payload), then closes.
fn pushing_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp@{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(TEST_BOUND)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (header, payload) = loop {
            let n = conn.read(&mut chunk).unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some((frame, _)) = protocol::decode(&buf, 1 << 20).unwrap() {
                break (frame.header, frame.payload.to_vec());
            }
        };
        let mut out = Vec::new();
        let push = Header {
            version: 0,
            flags: flags::ONEWAY,
            serialize: 0,
            seq: 1,
        };
        protocol::encode(
            &mut out,
            &push,
            "Notice",
            "Push",
            &[],
            b"hello from the server",
        );
        protocol::encode(&mut out, &header.reply(), "Echo", "Echo", &[], &payload);
        conn.write_all(&out).unwrap();
        let _ = conn.read(&mut chunk);
    });
    addr
}

#[test]
fn server_pushes_are_delivered_not_fatal() {
    let addr = pushing_server();
    run(move || async move {
        let c = Client::new(&addr, Options::default()).unwrap();
        let pushed = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&pushed);
        c.on_push(move |m| sink.borrow_mut().push((m.path.clone(), m.payload.clone())));
        let reply = c
            .call_raw(&Request::new("Echo", "Echo", SerializeType::Raw, b"ping"))
            .await
            .unwrap();
        assert_eq!(reply.payload, b"ping");
        assert_eq!(c.pushes(), 1);
        assert_eq!(
            *pushed.borrow(),
            [("Notice".to_owned(), b"hello from the server".to_vec())]
        );
    });
}
