//! Every transport end to end on loopback and Unix sockets: unix listeners, TLS on tcp,
//! reuseport and unix, HTTP CONNECT plain and inside TLS, each driven by percore's own dialers
//! (`percore::transport::connector`) or, for bad input, by raw bytes. Certificates are made at
//! test time with rcgen.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{IO_TIMEOUT, msgpack_args, msgpack_reply, request};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use percore::config::Config;
use percore::protocol::{self, Message};
use percore::server::ServerHandle;
use percore::transport::connector::{Connector, DialError, DialOptions, Stream};
use percore::transport::http_connect::{CONNECT_REQUEST, CONNECTED};
use percore::transport::tls::ClientTls;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh directory for one test's files.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("percore-t-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Test certificates: a CA, a server certificate for `localhost` and 127.0.0.1 signed by it, a
/// client certificate signed by it, and an unrelated CA.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

fn make_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn pki(dir: &Path) -> Pki {
    let ca = make_ca("percore test CA");
    let other = make_ca("some other CA");
    let leaf = |names: Vec<String>, purpose: rcgen::ExtendedKeyUsagePurpose| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["client.test".into()],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        other_ca: write("other-ca.pem", &other.pem()),
    }
}

/// A server with TLS on every listener (plaintext refused unless `tweak` allows it).
fn start_tls(pki: &Pki, listen: &[String], tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    common::start_with(1, |c| {
        c.server.listen = listen.iter().map(|l| l.parse().unwrap()).collect();
        c.tls.cert = Some(pki.server_cert.clone());
        c.tls.key = Some(pki.server_key.clone());
        tweak(c);
    })
}

fn tls_to(pki: &Pki) -> ClientTls {
    ClientTls {
        ca: Some(pki.ca.clone()),
        server_name: Some("localhost".into()),
        ..ClientTls::default()
    }
}

fn dial_options(tls: Option<ClientTls>) -> DialOptions {
    DialOptions {
        timeout: IO_TIMEOUT,
        tls,
        ..DialOptions::default()
    }
}

/// Runs `f` on a glommio executor on this thread (the dialers' streams live on one), failing
/// the test if it takes longer than the I/O timeout.
fn on_glommio<T: 'static>(f: impl std::future::Future<Output = T> + 'static) -> T {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .ring_depth(64)
        .make()
        .expect("a client executor");
    ex.run(async move {
        futures_lite::future::or(async { Some(f.await) }, async {
            glommio::timer::sleep(IO_TIMEOUT * 2).await;
            None
        })
        .await
        .expect("the client finished within the timeout")
    })
}

async fn read_message(conn: &mut Stream) -> Option<Message> {
    let mut header = [0u8; protocol::HEADER_LEN];
    conn.read_exact(&mut header).await.ok()?;
    let total = protocol::frame_len(&header, u32::MAX).unwrap().unwrap();
    let mut buf = header.to_vec();
    buf.resize(total, 0);
    conn.read_exact(&mut buf[protocol::HEADER_LEN..])
        .await
        .expect("frame body");
    let (frame, _) = protocol::decode(&buf, u32::MAX).unwrap().unwrap();
    Some(frame.to_message())
}

/// `Arith.Mul {a, b}` on `conn`; the product, or `None` if the connection closed.
async fn try_mul(conn: &mut Stream, seq: u64, a: i64, b: i64) -> Option<i64> {
    let msg = request(3, seq, "Arith", "Mul", &msgpack_args(a, b));
    conn.write_all(&msg.to_bytes()).await.ok()?;
    conn.flush().await.ok()?;
    let reply = read_message(conn).await?;
    assert_eq!(reply.header.seq, seq);
    assert!(!reply.header.is_error(), "{:?}", reply.metadata);
    Some(msgpack_reply(&reply.payload))
}

/// Dials `addr` and makes `calls` calls on the connection; returns whether it was TLS.
fn dial_and_call(addr: &str, options: DialOptions, calls: u64) -> Result<bool, DialError> {
    let addr = addr.to_owned();
    on_glommio(async move {
        let mut conn = Connector::new(&addr, &options)?.connect().await?;
        for seq in 1..=calls {
            let product = try_mul(&mut conn, seq, seq as i64, 7)
                .await
                .unwrap_or_else(|| panic!("{addr}: connection closed before reply {seq}"));
            assert_eq!(product, seq as i64 * 7);
        }
        let tls = conn.is_tls();
        let _ = conn.close().await;
        Ok(tls)
    })
}

fn tcp_addr(server: &ServerHandle, i: usize) -> String {
    server.local_addrs()[i].to_string()
}

// ---------------------------------------------------------------------------------------------
// Unix domain sockets

#[test]
fn unix_socket_is_served_by_every_core_and_removed_on_shutdown() {
    let dir = test_dir("unix-serve");
    let path = dir.join("percore.sock");
    let listen = format!("unix@{}", path.display());
    let cores = percore::server::allowed_cpus().unwrap().len().min(2);
    let server = common::start_with(cores, |c| {
        c.server.listen = vec![listen.parse().unwrap()];
    });
    assert!(server.local_addrs().is_empty());
    assert_eq!(server.listen_addrs()[0].to_string(), listen);
    for _ in 0..8 {
        assert!(!dial_and_call(&listen, dial_options(None), 3).unwrap());
    }
    let accepted: u64 = server
        .metrics()
        .iter()
        .map(|m| m.transports.iter().map(|t| t.accepted.get()).sum::<u64>())
        .sum();
    assert_eq!(accepted, 8);
    assert!(path.exists());
    common::stop(server);
    assert!(!path.exists(), "the socket file is removed on shutdown");
}

#[test]
fn a_stale_unix_socket_file_is_replaced() {
    let dir = test_dir("unix-stale");
    let path = dir.join("stale.sock");
    // What a crashed run leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listen = format!("unix@{}", path.display());
    let server = common::start_with(1, |c| c.server.listen = vec![listen.parse().unwrap()]);
    assert!(!dial_and_call(&listen, dial_options(None), 1).unwrap());
    common::stop(server);
    assert!(!path.exists());
}

#[test]
fn a_unix_path_in_use_by_a_live_server_is_an_error_naming_it() {
    let dir = test_dir("unix-live");
    let path = dir.join("live.sock");
    let listen = format!("unix@{}", path.display());
    let first = common::start_with(1, |c| c.server.listen = vec![listen.parse().unwrap()]);
    let mut config = Config::default();
    config.server.cores = 1;
    config.server.listen = vec![listen.parse().unwrap()];
    let err = percore::server::start::<percore::builtin::Builtin>(config)
        .err()
        .expect("a second server on the same path fails")
        .to_string();
    assert!(err.contains(&*path.to_string_lossy()), "{err}");
    assert!(err.contains("in use by a live server"), "{err}");
    // The failed start left the live server's file alone.
    assert!(dial_and_call(&listen, dial_options(None), 1).is_ok());
    common::stop(first);
    assert!(!path.exists());
}

#[test]
fn a_path_that_is_not_a_socket_is_refused_and_kept() {
    let dir = test_dir("unix-file");
    let path = dir.join("data.txt");
    std::fs::write(&path, b"precious").unwrap();
    let mut config = Config::default();
    config.server.cores = 1;
    config.server.listen = vec![format!("unix@{}", path.display()).parse().unwrap()];
    let err = percore::server::start::<percore::builtin::Builtin>(config)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a unix socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn bad_input_on_a_unix_socket_closes_only_that_connection() {
    let dir = test_dir("unix-bad");
    let path = dir.join("bad.sock");
    let listen = format!("unix@{}", path.display());
    let server = common::start_with(1, |c| c.server.listen = vec![listen.parse().unwrap()]);
    let mut bad = std::os::unix::net::UnixStream::connect(&path).unwrap();
    bad.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    bad.write_all(b"\x09 not rpcx").unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(bad.read(&mut byte), Ok(0) | Err(_)), "closed");
    wait_for(|| server.metrics()[0].bad_frames_total() == 1);
    assert!(dial_and_call(&listen, dial_options(None), 1).is_ok());
    common::stop(server);
}

#[test]
fn shutdown_closes_open_tls_and_unix_connections() {
    let dir = test_dir("shutdown");
    let pki = pki(&dir);
    let sock = dir.join("drain.sock");
    let server = start_tls(
        &pki,
        &["tcp@127.0.0.1:0".into(), format!("unix@{}", sock.display())],
        |_| {},
    );
    let mut tls = blocking_tls(&pki, server.local_addrs()[0], &rustls::version::TLS13);
    tls.write_all(&request(3, 1, "Arith", "Mul", &msgpack_args(2, 2)).to_bytes())
        .unwrap();
    assert_eq!(msgpack_reply(&read_frame_blocking(&mut tls).payload), 4);
    let mut unix = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    unix.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Inside the handshake window: nothing sent yet.
    common::stop(server);
    let mut rest = Vec::new();
    assert!(matches!(tls.read_to_end(&mut rest), Ok(0) | Err(_)));
    let mut byte = [0u8; 1];
    assert!(matches!(unix.read(&mut byte), Ok(0) | Err(_)));
    assert!(!sock.exists());
}

// ---------------------------------------------------------------------------------------------
// TLS

#[test]
fn tls_on_tcp_reuseport_and_unix_listeners() {
    let dir = test_dir("tls-all");
    let pki = pki(&dir);
    let sock = dir.join("tls.sock");
    let server = start_tls(
        &pki,
        &[
            "tcp@127.0.0.1:0".into(),
            "reuseport@127.0.0.1:0".into(),
            format!("unix@{}", sock.display()),
        ],
        |_| {},
    );
    let targets = [
        format!("tcp@{}", tcp_addr(&server, 0)),
        // A client dials a reuseport server as tcp; the dialer accepts both spellings.
        format!("reuseport@{}", tcp_addr(&server, 1)),
        format!("unix@{}", sock.display()),
    ];
    for target in &targets {
        let tls = dial_and_call(target, dial_options(Some(tls_to(&pki))), 3)
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(tls, "{target} ran over TLS");
    }
    assert_eq!(server.metrics()[0].tls_handshakes.get(), 3);
    let scrape = percore::metrics::prometheus(
        server.metrics(),
        &server.method_names(),
        percore::metrics::Status {
            ready: true,
            draining: false,
        },
    );
    assert!(
        scrape.contains("\nrpcx_server_tls_handshakes_total 3\n"),
        "{scrape}"
    );
    common::stop(server);
}

#[test]
fn tls_server_name_defaults_to_the_dialed_host() {
    let dir = test_dir("tls-name");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |_| {});
    let tls = ClientTls {
        ca: Some(pki.ca.clone()),
        ..ClientTls::default()
    };
    // The certificate names 127.0.0.1 as an IP address.
    let target = format!("tcp@{}", tcp_addr(&server, 0));
    assert!(dial_and_call(&target, dial_options(Some(tls)), 1).unwrap());
    common::stop(server);
}

#[test]
fn insecure_skip_verify_accepts_an_unknown_certificate() {
    let dir = test_dir("tls-insecure");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |_| {});
    let tls = ClientTls {
        insecure_skip_verify: true,
        ..ClientTls::default()
    };
    let target = format!("tcp@{}", tcp_addr(&server, 0));
    assert!(dial_and_call(&target, dial_options(Some(tls)), 2).unwrap());
    common::stop(server);
}

#[test]
fn wrong_ca_is_a_handshake_error_with_a_clear_message() {
    let dir = test_dir("tls-wrong-ca");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |_| {});
    let target = format!("tcp@{}", tcp_addr(&server, 0));
    let tls = ClientTls {
        ca: Some(pki.other_ca.clone()),
        server_name: Some("localhost".into()),
        ..ClientTls::default()
    };
    let err = dial_and_call(&target, dial_options(Some(tls)), 1).unwrap_err();
    assert!(matches!(err, DialError::Handshake { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("TLS handshake with {target} failed")),
        "{text}"
    );
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    // The server saw the client give up on the handshake.
    wait_for(|| server.metrics()[0].tls_handshake_failures.get() == 1);
    common::stop(server);
}

#[test]
fn wrong_server_name_is_a_handshake_error() {
    let dir = test_dir("tls-wrong-name");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |_| {});
    let tls = ClientTls {
        ca: Some(pki.ca.clone()),
        server_name: Some("not-this-server.example".into()),
        ..ClientTls::default()
    };
    let err = dial_and_call(&tcp_addr(&server, 0), dial_options(Some(tls)), 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"not-this-server.example\""),
        "{err}"
    );
    common::stop(server);
}

#[test]
fn plaintext_to_a_tls_only_port_is_closed() {
    let dir = test_dir("tls-only");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |_| {});
    let mut s = common::connect(server.local_addrs()[0]);
    common::send(&mut s, &request(3, 1, "Arith", "Mul", &msgpack_args(2, 3)));
    assert!(common::closed_without_reply(&mut s));
    // CONNECT in plaintext is refused too.
    let mut s = common::connect(server.local_addrs()[0]);
    s.write_all(CONNECT_REQUEST).unwrap();
    assert!(common::closed_without_reply(&mut s));
    // Through the dialer: the connection opens, and closes without a reply.
    let target = tcp_addr(&server, 0);
    let answered = on_glommio(async move {
        let mut conn = Connector::new(&target, &dial_options(None))
            .unwrap()
            .connect()
            .await
            .unwrap();
        try_mul(&mut conn, 1, 2, 3).await
    });
    assert_eq!(answered, None);
    assert_eq!(server.metrics()[0].plaintext_refused.get(), 3);
    common::stop(server);
}

#[test]
fn plaintext_and_tls_share_a_port_when_allowed() {
    let dir = test_dir("tls-mixed");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |c| {
        c.tls.allow_plaintext = true;
    });
    let target = tcp_addr(&server, 0);
    assert!(!dial_and_call(&target, dial_options(None), 2).unwrap());
    assert!(dial_and_call(&target, dial_options(Some(tls_to(&pki))), 2).unwrap());
    common::stop(server);
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = test_dir("tls-mutual");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |c| {
        c.tls.client_ca = Some(pki.ca.clone());
    });
    let target = format!("tcp@{}", tcp_addr(&server, 0));
    let with_cert = ClientTls {
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..tls_to(&pki)
    };
    assert!(dial_and_call(&target, dial_options(Some(with_cert)), 2).unwrap());

    // Without a certificate: with TLS 1.3 the client learns it only when it reads.
    let options = dial_options(Some(tls_to(&pki)));
    let refused = on_glommio(async move {
        match Connector::new(&target, &options).unwrap().connect().await {
            Err(DialError::Handshake { .. }) => true,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(mut conn) => try_mul(&mut conn, 1, 2, 3).await.is_none(),
        }
    });
    assert!(refused, "a client without a certificate is not served");
    wait_for(|| server.metrics()[0].tls_handshake_failures.get() == 1);
    common::stop(server);
}

#[test]
fn tls_1_2_and_1_3_both_work_and_http_inside_tls_reaches_the_gateway() {
    let dir = test_dir("tls-versions");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |_| {});
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut s = blocking_tls(&pki, server.local_addrs()[0], version);
        s.write_all(&request(3, 9, "Arith", "Mul", &msgpack_args(6, 7)).to_bytes())
            .unwrap();
        let reply = read_frame_blocking(&mut s);
        assert_eq!(msgpack_reply(&reply.payload), 42);
        assert_eq!(s.conn.protocol_version(), Some(version.version));
    }
    // HTTP inside TLS reaches the gateway.
    let mut s = blocking_tls(&pki, server.local_addrs()[0], &rustls::version::TLS13);
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\
          X-RPCX-SerializeType: 3\r\nX-RPCX-ServicePath: Arith\r\nX-RPCX-ServiceMethod: Mul\r\n\r\n",
    )
    .unwrap();
    s.write_all(&msgpack_args(10, 20)).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
    assert!(
        reply.ends_with(&[0x81, 0xa1, 0x43, 0xcc, 0xc8]),
        "{reply:?}"
    );
    assert_eq!(server.metrics()[0].gateway_requests.get(), 1);
    common::stop(server);

    // With the gateway off, HTTP inside TLS gets the short 404.
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |c| {
        c.gateway.enabled = false;
    });
    let mut s = blocking_tls(&pki, server.local_addrs()[0], &rustls::version::TLS13);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 404"), "{text:?}");
    common::stop(server);
}

#[test]
fn tls_certificate_errors_name_the_key_and_file() {
    let dir = test_dir("tls-bad-files");
    let pki = pki(&dir);
    let mut config = Config::default();
    config.server.listen = vec!["tcp@127.0.0.1:0".parse().unwrap()];
    config.tls.cert = Some(dir.join("missing.pem"));
    config.tls.key = Some(pki.server_key.clone());
    let err = percore::server::start::<percore::builtin::Builtin>(config.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("tls.cert: "), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    // A key that is not the certificate's.
    config.tls.cert = Some(pki.server_cert.clone());
    config.tls.key = Some(pki.client_key.clone());
    let err = percore::server::start::<percore::builtin::Builtin>(config.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("tls.key: "), "{err}");
    assert!(err.contains("client.key"), "{err}");
    // A key file where the certificate should be.
    config.tls.cert = Some(pki.server_key.clone());
    config.tls.key = Some(pki.server_key.clone());
    let err = percore::server::start::<percore::builtin::Builtin>(config)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no CERTIFICATE block"), "{err}");
}

#[test]
fn check_config_reads_the_tls_files_and_exits_78() {
    let dir = test_dir("tls-check");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{0}/nope.pem\"\nkey = \"{0}/nope.key\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.cert: ") && stderr.contains("nope.pem"),
        "{stderr}"
    );
}

#[test]
fn an_unfinished_tls_handshake_is_closed_after_the_timeout() {
    let dir = test_dir("tls-slow");
    let pki = pki(&dir);
    let server = start_tls(&pki, &["tcp@127.0.0.1:0".into()], |c| {
        c.limits.handshake_timeout = Duration::from_millis(200);
    });
    let mut s = common::connect(server.local_addrs()[0]);
    // The start of a TLS record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert!(common::closed_without_reply(&mut s));
    common::eventually("the close is counted as a handshake timeout", || {
        server.metrics()[0].closed(percore::metrics::Close::HandshakeTimeout) == 1
    });
    common::stop(server);
}

// ---------------------------------------------------------------------------------------------
// HTTP CONNECT

#[test]
fn connect_on_the_rpcx_port_and_on_http_listeners() {
    let server = common::start_with(1, |c| {
        c.server.listen = vec![
            "tcp@127.0.0.1:0".parse().unwrap(),
            "http@127.0.0.1:0".parse().unwrap(),
        ];
    });
    assert_eq!(
        server.listen_addrs()[1].to_string(),
        format!("http@{}", server.local_addrs()[1])
    );
    for i in 0..2 {
        let target = format!("http@{}", tcp_addr(&server, i));
        assert!(!dial_and_call(&target, dial_options(None), 3).unwrap());
    }
    assert_eq!(server.metrics()[0].http_connects.get(), 2);
    common::stop(server);
}

#[test]
fn connect_bytes_are_exactly_rpcx_s_and_crlf_is_tolerated() {
    let server = common::start(1);
    for head in [
        CONNECT_REQUEST,
        b"CONNECT /_rpcx_ HTTP/1.0\r\n\r\n".as_slice(),
    ] {
        let mut s = common::connect(server.local_addrs()[0]);
        // The first frame may follow the head at once.
        let mut bytes = head.to_vec();
        bytes.extend(request(3, 5, "Arith", "Mul", &msgpack_args(4, 5)).to_bytes());
        s.write_all(&bytes).unwrap();
        let mut answer = vec![0u8; CONNECTED.len()];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(answer, CONNECTED);
        let reply = common::read_frame(&mut s);
        assert_eq!(msgpack_reply(&reply.payload), 20);
    }
    common::stop(server);
}

#[test]
fn connect_with_a_wrong_path_or_method_gets_405_must_connect() {
    let server = common::start_with(1, |c| {
        c.server.listen = vec![
            "tcp@127.0.0.1:0".parse().unwrap(),
            "http@127.0.0.1:0".parse().unwrap(),
        ];
    });
    let cases = [
        (0, &b"CONNECT /wrong HTTP/1.0\n\n"[..], "HTTP/1.0 405"),
        (
            1,
            b"CONNECT /wrong HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (1, b"GET /_rpcx_ HTTP/1.0\n\n", "HTTP/1.0 405"),
        (1, b"POST / HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
    ];
    for (listener, head, status) in cases {
        let mut s = common::connect(server.local_addrs()[listener]);
        s.write_all(head).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with(status), "{text:?}");
        assert!(text.ends_with("\r\n\r\n405 must CONNECT\n"), "{text:?}");
    }
    assert_eq!(server.metrics()[0].http_connect_refused.get(), 4);
    common::stop(server);
}

#[test]
fn the_dialer_reports_a_refused_connect() {
    // A server that is not rpcx: it answers CONNECT with Go's 405.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut head = vec![0u8; CONNECT_REQUEST.len()];
        s.read_exact(&mut head).unwrap();
        assert_eq!(head, CONNECT_REQUEST, "the dialer sends rpcx's exact bytes");
        s.write_all(percore::transport::http_connect::must_connect(true))
            .unwrap();
    });
    let err = dial_and_call(&format!("http@{addr}"), dial_options(None), 1).unwrap_err();
    assert!(matches!(err, DialError::HttpConnect { .. }), "{err:?}");
    assert!(err.to_string().contains("405 Method Not Allowed"), "{err}");
    fake.join().unwrap();
}

#[test]
fn a_dial_that_gets_no_answer_times_out_naming_the_target() {
    // Accepts (the kernel does, from the backlog) but never answers the CONNECT.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("http@{}", listener.local_addr().unwrap());
    let options = DialOptions {
        timeout: Duration::from_millis(200),
        tls: None,
        ..DialOptions::default()
    };
    let err = dial_and_call(&target, options, 1).unwrap_err();
    assert!(matches!(err, DialError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&target), "{err}");
    drop(listener);
}

#[test]
fn a_bad_or_endless_connect_head_is_closed() {
    let server = common::start_with(1, |c| {
        c.limits.handshake_timeout = Duration::from_millis(300);
    });
    // Too long: no blank line within the bound.
    let mut s = common::connect(server.local_addrs()[0]);
    let mut head = b"CONNECT /_rpcx_ HTTP/1.0\r\n".to_vec();
    while head.len() < 8192 {
        head.extend_from_slice(b"X-Filler: 0123456789abcdef\r\n");
    }
    let _ = s.write_all(&head);
    assert!(common::closed_without_reply(&mut s));
    // Malformed request line.
    let mut s = common::connect(server.local_addrs()[0]);
    s.write_all(b"CONNECT\n\n").unwrap();
    assert!(common::closed_without_reply(&mut s));
    assert_eq!(server.metrics()[0].http_connect_refused.get(), 2);
    // Unfinished: closed after the handshake timeout.
    let mut s = common::connect(server.local_addrs()[0]);
    s.write_all(b"CONNECT /_rpcx_ HTTP/1.0\n").unwrap();
    assert!(common::closed_without_reply(&mut s));
    common::eventually("the close is counted as a handshake timeout", || {
        server.metrics()[0].closed(percore::metrics::Close::HandshakeTimeout) == 1
    });
    common::stop(server);
}

#[test]
fn connect_inside_tls_on_the_rpcx_port_and_http_listeners() {
    let dir = test_dir("tls-connect");
    let pki = pki(&dir);
    let server = start_tls(
        &pki,
        &["tcp@127.0.0.1:0".into(), "http@127.0.0.1:0".into()],
        |_| {},
    );
    for i in 0..2 {
        let target = format!("http@{}", tcp_addr(&server, i));
        assert!(dial_and_call(&target, dial_options(Some(tls_to(&pki))), 2).unwrap());
    }
    assert_eq!(server.metrics()[0].http_connects.get(), 2);
    assert_eq!(server.metrics()[0].tls_handshakes.get(), 2);
    common::stop(server);
}

// ---------------------------------------------------------------------------------------------

/// Polls `cond` until it holds (a metric counted by another thread); fails after the timeout.
fn wait_for(cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < IO_TIMEOUT, "condition not met in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one frame from a blocking stream.
fn read_frame_blocking(s: &mut impl Read) -> Message {
    let mut header = [0u8; protocol::HEADER_LEN];
    s.read_exact(&mut header).unwrap();
    let total = protocol::frame_len(&header, u32::MAX).unwrap().unwrap();
    let mut buf = header.to_vec();
    buf.resize(total, 0);
    s.read_exact(&mut buf[protocol::HEADER_LEN..]).unwrap();
    let (frame, _) = protocol::decode(&buf, u32::MAX).unwrap().unwrap();
    frame.to_message()
}

/// A blocking TLS client limited to one protocol version.
fn blocking_tls(
    pki: &Pki,
    addr: std::net::SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, common::connect(addr))
}

// ---------------------------------------------------------------------------------------------
// `percore call` and `percore bench` on every network

/// Runs the `percore` binary; fails the test if it does not exit within the bound.
fn percore_cli(args: &[&str]) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > IO_TIMEOUT * 6 {
            let _ = child.kill();
            panic!("percore {args:?} did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn percore_call_and_bench_dial_every_network_with_and_without_tls() {
    let dir = test_dir("cli");
    let pki = pki(&dir);
    let sock = dir.join("cli.sock");
    let server = start_tls(
        &pki,
        &[
            "tcp@127.0.0.1:0".into(),
            "http@127.0.0.1:0".into(),
            format!("unix@{}", sock.display()),
        ],
        |c| c.tls.allow_plaintext = true,
    );
    let tcp = server.local_addrs()[0];
    let targets = [
        format!("tcp@{tcp}"),
        format!("reuseport@{tcp}"),
        format!("http@{}", server.local_addrs()[1]),
        format!("http@{tcp}"),
        format!("unix@{}", sock.display()),
    ];
    let ca = pki.ca.to_str().unwrap();
    let tls_flags: [&[&str]; 3] = [
        &[],
        &["--tls-ca", ca, "--tls-server-name", "localhost"],
        &["--tls-insecure"],
    ];
    for target in &targets {
        for flags in tls_flags {
            let mut args = vec!["call", target, "Arith.Mul", r#"{"A":10,"B":20}"#];
            args.extend_from_slice(flags);
            let out = percore_cli(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{args:?}: {stderr}");
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["reply"]["C"], 200, "{args:?}: {json}");
        }
    }
    // 5 targets answered over TLS twice each.
    assert_eq!(server.metrics()[0].tls_handshakes.get(), 10);

    // A CA that did not sign the server's certificate.
    let out = percore_cli(&[
        "call",
        &targets[0],
        "Arith.Mul",
        r#"{"A":1,"B":2}"#,
        "--tls-ca",
        pki.other_ca.to_str().unwrap(),
        "--tls-server-name",
        "localhost",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("TLS handshake") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // A CA file that does not exist is named before anything is dialed.
    let out = percore_cli(&[
        "call",
        &targets[0],
        "Arith.Mul",
        "{}",
        "--tls-ca",
        "/nope.pem",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tls-ca: /nope.pem"), "{stderr}");

    // bench over unix and over TLS on unix and tcp.
    let unix = format!("unix@{}", sock.display());
    for (server_addr, flags) in [
        (unix.as_str(), &[][..]),
        (unix.as_str(), &["--tls-ca", ca][..]),
        (targets[0].as_str(), &["--tls-insecure"][..]),
    ] {
        let mut args = vec![
            "bench",
            "-s",
            server_addr,
            "-c",
            "4",
            "-n",
            "400",
            "--quiet",
        ];
        args.extend_from_slice(flags);
        let out = percore_cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("sent 400  ok 400  errors 0"),
            "{args:?}: {stdout}"
        );
    }
    common::stop(server);
}
