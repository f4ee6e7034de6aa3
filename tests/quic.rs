//! QUIC at the transport level (`percore::transport::quic`), on loopback: a listener whose sink
//! hands every stream to an echo task on a glommio executor (as the cores will), dialed by
//! percore's QUIC dialer from another glommio executor, or by a bare quinn client where a test
//! needs what the dialer does not do (two streams on one connection, a client that vanishes).
//! Certificates are made at test time with rcgen.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::certs::{Certs, certs};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use percore::config::TlsConfig;
use percore::transport::quic::{
    self, DialConfig, QuicError, QuicLimits, QuicListener, QuicStream, SHUTDOWN_REASON,
};
use percore::transport::tls::{self, ClientTls};

const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers

fn server_tls(certs: &Certs) -> Arc<rustls::ServerConfig> {
    tls::quic_server_config(&TlsConfig {
        cert: Some(certs.cert.clone()),
        key: Some(certs.key.clone()),
        ..TlsConfig::default()
    })
    .unwrap()
    .expect("TLS is configured")
}

fn client_tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    tls::quic_client_config(&ClientTls {
        ca: Some(ca.to_owned()),
        ..ClientTls::default()
    })
    .unwrap()
}

/// A QUIC listener on 127.0.0.1 whose sink sends every stream to a glommio executor thread,
/// which serves each with an echo task (read, write back, finish at end of input).
fn echo_server(certs: &Certs, limits: &QuicLimits) -> QuicListener {
    echo_server_with(server_tls(certs), limits)
}

fn echo_server_with(tls: Arc<rustls::ServerConfig>, limits: &QuicLimits) -> QuicListener {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(QuicStream, SocketAddr)>();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .ring_depth(64)
            .make()
            .expect("an echo executor");
        ex.run(async move {
            while let Some((stream, _peer)) = rx.recv().await {
                glommio::spawn_local(echo(stream)).detach();
            }
        });
    });
    let sink: quic::StreamSink = Box::new(move |stream, peer| {
        let _ = tx.send((stream, peer));
    });
    quic::listen("127.0.0.1:0".parse().unwrap(), tls, limits, sink).unwrap()
}

async fn echo(mut stream: QuicStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.close().await;
}

/// Runs `f` on a glommio executor on this thread, failing the test if it takes too long.
fn on_glommio<T: 'static>(f: impl std::future::Future<Output = T> + 'static) -> T {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .ring_depth(64)
        .make()
        .expect("a client executor");
    ex.run(async move {
        futures_lite::future::or(async { Some(f.await) }, async {
            glommio::timer::sleep(TIMEOUT).await;
            None
        })
        .await
        .expect("the client finished within the timeout")
    })
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < TIMEOUT, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn round_trip(stream: &mut QuicStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await.unwrap();
    back
}

/// A quinn client endpoint on its own tokio runtime, for what the dialer does not do.
fn raw_client(ca: &Path) -> (tokio::runtime::Runtime, quinn::Endpoint) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls(ca)).unwrap();
    let endpoint = rt.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        endpoint
    });
    (rt, endpoint)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn a_glommio_client_exchanges_bytes_with_a_stream_served_on_glommio() {
    let certs = certs("echo");
    let server = echo_server(&certs, &QuicLimits::default());
    let addr = server.local_addr().to_string();
    let config = DialConfig::new(client_tls(&certs.ca)).unwrap();
    on_glommio(async move {
        let mut stream = quic::dial(&addr, "localhost", &config, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
        // Past the 1 MiB stream window both ways: flow control moves it, nothing is lost.
        let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip_big(&mut stream, &big).await, big);
        stream.close().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    });
    let counters = Arc::clone(server.counters());
    assert_eq!(counters.connections_accepted.load(Ordering::Relaxed), 1);
    assert_eq!(counters.streams_accepted.load(Ordering::Relaxed), 1);
    eventually("the stream is closed and acknowledged", || {
        counters.streams_closed.load(Ordering::Relaxed) == 1
    });
    eventually("the client closed its connection", || {
        counters.connections_closed.load(Ordering::Relaxed) == 1
    });
    // Wire bytes, counted when the connection ended: the payload and QUIC's own.
    let payload = 5 + (3 << 20) as u64;
    assert!(counters.bytes_in.load(Ordering::Relaxed) > payload);
    assert!(counters.bytes_out.load(Ordering::Relaxed) > payload);
    server.shutdown(TIMEOUT);
}

/// Writes `data` in pieces while reading the echo back, so neither side's window stalls the
/// other.
async fn round_trip_big(stream: &mut QuicStream, data: &[u8]) -> Vec<u8> {
    let mut back = vec![0u8; data.len()];
    let mut sent = 0;
    let mut got = 0;
    while got < data.len() {
        if sent < data.len() {
            let end = (sent + (64 << 10)).min(data.len());
            stream.write_all(&data[sent..end]).await.unwrap();
            sent = end;
        }
        while got < sent {
            let n = stream.read(&mut back[got..sent]).await.unwrap();
            assert!(n > 0, "the echo ended early");
            got += n;
        }
    }
    back
}

#[test]
fn every_stream_a_client_opens_on_one_connection_is_served() {
    let certs = certs("streams");
    let server = echo_server(&certs, &QuicLimits::default());
    let addr = server.local_addr();
    let (rt, endpoint) = raw_client(&certs.ca);
    rt.block_on(async {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut s1, mut r1) = conn.open_bi().await.unwrap();
        let (mut s2, mut r2) = conn.open_bi().await.unwrap();
        // Both written before either is read: the two are served at once.
        s1.write_all(b"first").await.unwrap();
        s2.write_all(b"second").await.unwrap();
        s1.finish().unwrap();
        s2.finish().unwrap();
        let one = tokio::time::timeout(TIMEOUT, r1.read_to_end(1024)).await;
        let two = tokio::time::timeout(TIMEOUT, r2.read_to_end(1024)).await;
        assert_eq!(one.unwrap().unwrap(), b"first");
        assert_eq!(two.unwrap().unwrap(), b"second");
        conn.close(0u32.into(), b"done");
        // Only while this runtime runs does the close (and the last ACKs) go out.
        endpoint.wait_idle().await;
    });
    let counters = Arc::clone(server.counters());
    assert_eq!(counters.connections_accepted.load(Ordering::Relaxed), 1);
    assert_eq!(counters.streams_accepted.load(Ordering::Relaxed), 2);
    server.shutdown(TIMEOUT);
}

#[test]
fn a_wrong_alpn_is_refused_with_a_clear_error() {
    let certs = certs("alpn");
    let server = echo_server(&certs, &QuicLimits::default());
    let addr = server.local_addr().to_string();
    let mut h3 = (*client_tls(&certs.ca)).clone();
    h3.alpn_protocols = vec![b"h3".to_vec()];
    let wrong = DialConfig::new(Arc::new(h3)).unwrap();
    let right = DialConfig::new(client_tls(&certs.ca)).unwrap();
    on_glommio(async move {
        let err = quic::dial(&addr, "localhost", &wrong, TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, QuicError::NoApplicationProtocol { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("no application protocol"), "{text}");
        assert!(text.contains(&addr), "{text}");
        // The listener is unharmed.
        let mut stream = quic::dial(&addr, "localhost", &right, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(round_trip(&mut stream, b"still here").await, b"still here");
    });
    let counters = Arc::clone(server.counters());
    eventually("the failed handshake is counted", || {
        counters.handshake_failures.load(Ordering::Relaxed) == 1
    });
    assert_eq!(counters.connections_accepted.load(Ordering::Relaxed), 1);
    server.shutdown(TIMEOUT);
}

#[test]
fn random_datagrams_neither_crash_nor_stall_the_listener() {
    let certs = certs("garbage");
    let server = echo_server(&certs, &QuicLimits::default());
    let addr = server.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..3000 {
        let len = match i % 3 {
            0 => (next() % 64) as usize + 1,
            1 => 1200 + (next() % 300) as usize,
            _ => (next() % 1500) as usize + 1,
        };
        let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && len >= 7 {
            // A long header with QUIC version 1: the datagram reaches the Initial parser.
            datagram[0] = 0xC0 | (datagram[0] & 0x0F);
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            datagram[5] = 8;
        }
        let _ = socket.send_to(&datagram, addr);
    }
    let addr = addr.to_string();
    let config = DialConfig::new(client_tls(&certs.ca)).unwrap();
    on_glommio(async move {
        let mut stream = quic::dial(&addr, "localhost", &config, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            round_trip(&mut stream, b"after the noise").await,
            b"after the noise"
        );
    });
    assert_eq!(
        server.counters().streams_accepted.load(Ordering::Relaxed),
        1
    );
    server.shutdown(TIMEOUT);
}

#[test]
fn a_client_that_vanishes_is_reclaimed_after_the_idle_timeout() {
    let certs = certs("idle");
    let limits = QuicLimits {
        idle_timeout: Duration::from_millis(300),
        ..QuicLimits::default()
    };
    let server = echo_server(&certs, &limits);
    let addr = server.local_addr();
    let (rt, endpoint) = raw_client(&certs.ca);
    let (conn, send, recv) = rt.block_on(async {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        recv.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        (conn, send, recv)
    });
    let counters = Arc::clone(server.counters());
    assert_eq!(counters.connections_open(), 1);
    // The client disappears: its runtime stops, so nothing (not even a close) is ever sent again.
    rt.shutdown_background();
    eventually("the server closes the silent connection", || {
        counters.connections_closed.load(Ordering::Relaxed) == 1
    });
    eventually("the served stream is released", || {
        counters.streams_open() == 0
    });
    drop((conn, send, recv, endpoint));
    server.shutdown(TIMEOUT);
}

#[test]
fn shutdown_lets_streams_finish_then_closes_connections_with_the_reason() {
    let certs = certs("shutdown");
    let server = echo_server(&certs, &QuicLimits::default());
    let addr = server.local_addr().to_string();
    let counters = Arc::clone(server.counters());
    let config = DialConfig::new(client_tls(&certs.ca)).unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let stopper = std::thread::spawn(move || {
        started_rx.recv().unwrap();
        // The grace period is long: shutdown returns when the streams are done, not before.
        server.shutdown(Duration::from_secs(3600));
    });
    let client = {
        let addr = addr.clone();
        let config = config.clone();
        std::thread::spawn(move || {
            on_glommio(async move {
                let mut stream = quic::dial(&addr, "localhost", &config, TIMEOUT)
                    .await
                    .unwrap();
                assert_eq!(round_trip(&mut stream, b"before").await, b"before");
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                // Shutdown has begun: the stream in flight is still served...
                assert_eq!(round_trip(&mut stream, b"during").await, b"during");
                stream.close().await.unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            })
        })
    };
    // Once the stopper has signalled the reactor, new connections are no longer accepted.
    on_glommio(async move {
        let mut refused = false;
        for _ in 0..50 {
            match quic::dial(&addr, "localhost", &config, Duration::from_millis(500)).await {
                Err(_) => {
                    refused = true;
                    break;
                }
                Ok(stream) => drop(stream),
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "new connections are refused during shutdown");
    });
    go_tx.send(()).unwrap();
    client.join().unwrap();
    let started = Instant::now();
    while !stopper.is_finished() {
        assert!(
            started.elapsed() < TIMEOUT,
            "shutdown returns once its streams are closed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stopper.join().unwrap();
    assert_eq!(counters.streams_open(), 0);
}

#[test]
fn shutdown_closes_streams_left_open_with_an_application_close() {
    let certs = certs("close");
    let server = echo_server(&certs, &QuicLimits::default());
    let addr = server.local_addr().to_string();
    let config = DialConfig::new(client_tls(&certs.ca)).unwrap();
    let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        on_glommio(async move {
            let mut stream = quic::dial(&addr, "localhost", &config, TIMEOUT)
                .await
                .unwrap();
            assert_eq!(round_trip(&mut stream, b"hi").await, b"hi");
            open_tx.send(()).unwrap();
            // The echo task waits for more: only the grace period ends it.
            let mut buf = [0u8; 16];
            stream.read(&mut buf).await.unwrap_err().to_string()
        })
    });
    open_rx.recv().unwrap();
    server.shutdown(Duration::from_millis(100));
    let err = client.join().unwrap();
    assert!(err.contains(SHUTDOWN_REASON), "{err}");
}

#[test]
fn connections_past_max_connections_are_refused() {
    let certs = certs("max");
    let limits = QuicLimits {
        max_connections: 1,
        ..QuicLimits::default()
    };
    let server = echo_server(&certs, &limits);
    let addr = server.local_addr().to_string();
    let config = DialConfig::new(client_tls(&certs.ca)).unwrap();
    on_glommio(async move {
        let mut first = quic::dial(&addr, "localhost", &config, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(round_trip(&mut first, b"one").await, b"one");
        let err = quic::dial(&addr, "localhost", &config, TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, QuicError::Connect { .. }), "{err:?}");
        // The first is still served.
        assert_eq!(round_trip(&mut first, b"two").await, b"two");
    });
    let counters = server.counters();
    assert_eq!(counters.connections_refused.load(Ordering::Relaxed), 1);
    assert_eq!(counters.connections_accepted.load(Ordering::Relaxed), 1);
    server.shutdown(TIMEOUT);
}

#[test]
fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let certs = certs("mtls");
    let tls = tls::quic_server_config(&TlsConfig {
        cert: Some(certs.cert.clone()),
        key: Some(certs.key.clone()),
        client_ca: Some(certs.ca.clone()),
        ..TlsConfig::default()
    })
    .unwrap()
    .unwrap();
    let server = echo_server_with(tls, &QuicLimits::default());
    let addr = server.local_addr().to_string();
    let anonymous = DialConfig::new(client_tls(&certs.ca)).unwrap();
    let known = DialConfig::new(
        tls::quic_client_config(&ClientTls {
            ca: Some(certs.ca.clone()),
            cert: Some(certs.client_cert.clone()),
            key: Some(certs.client_key.clone()),
            ..ClientTls::default()
        })
        .unwrap(),
    )
    .unwrap();
    on_glommio(async move {
        // TLS 1.3: the client learns of the refusal once it uses the connection.
        let refused = match quic::dial(&addr, "localhost", &anonymous, TIMEOUT).await {
            Err(_) => true,
            Ok(mut stream) => {
                let _ = stream.write_all(b"x").await;
                let mut buf = [0u8; 1];
                stream.read(&mut buf).await.is_err()
            }
        };
        assert!(refused, "a client without a certificate is refused");
        let mut stream = quic::dial(&addr, "localhost", &known, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(round_trip(&mut stream, b"mtls").await, b"mtls");
    });
    let counters = Arc::clone(server.counters());
    eventually("the refused handshake is counted", || {
        counters.handshake_failures.load(Ordering::Relaxed) == 1
    });
    assert_eq!(counters.streams_accepted.load(Ordering::Relaxed), 1);
    server.shutdown(TIMEOUT);
}
