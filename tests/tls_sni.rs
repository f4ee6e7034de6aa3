//! Go's crypto/tls sends the socket path as SNI when an rpcx client dials TLS over `unix`; rustls
//! refuses such a name unless patched (vendor/rustls, see Cargo.toml). Python's ssl module, a
//! TLS client nobody here wrote, does the same as Go, so it stands in for the Go client.

mod common;

use std::process::Command;

#[test]
fn tls_over_unix_accepts_a_path_as_sni() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping");
        return;
    }
    let dir = std::env::temp_dir().join(format!("percore-sni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let sock = dir.join("s.sock");
    let server = common::start_with(1, |c| {
        c.server.listen = vec![format!("unix@{}", sock.display()).parse().unwrap()];
        c.tls.cert = Some(cert_path.clone());
        c.tls.key = Some(key_path.clone());
    });
    let script = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.socket(socket.AF_UNIX)
raw.settimeout(10)
raw.connect(sys.argv[1])
s = ctx.wrap_socket(raw, server_hostname=sys.argv[1])
s.sendall(bytes.fromhex("0800003000000000000000010000001f000000054172697468000000034d756c000000000000000782a1410aa14214"))
print(s.recv(100).hex())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&sock)
        .output()
        .unwrap();
    common::stop(server);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Arith.Mul {A:10, B:20} answered {C:200}, as tests/data/rpcx-go-frames.json records.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0800803000000000000000010000001d000000054172697468000000034d756c000000000000000581a143ccc8"
    );
}
