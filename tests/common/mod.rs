//! Helpers shared by the integration tests: an in-process server on a free loopback port and a
//! blocking raw-bytes rpcx peer with timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use percore::config::Config;
use percore::protocol::{self, Header, Message};
use percore::server::ServerHandle;

pub mod certs;

/// Reads and writes give up after this long, so a broken server fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1 with an OS-chosen port and `cores` executors.
pub fn start(cores: usize) -> ServerHandle {
    start_with(cores, |_| {})
}

pub fn start_with(cores: usize, tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::default();
    config.server.listen = vec!["tcp@127.0.0.1:0".parse().unwrap()];
    config.server.cores = cores;
    tweak(&mut config);
    percore::server::start::<percore::builtin::Builtin>(config).expect("server starts")
}

/// Sets the built-in Hello service's simulated work (`[services.Hello] delay`).
#[allow(dead_code)] // not every test file uses it
pub fn hello_delay(config: &mut percore::config::Config, delay: std::time::Duration) {
    let mut section = toml::Table::new();
    section.insert(
        "delay".into(),
        toml::Value::String(humantime::format_duration(delay).to_string()),
    );
    config
        .services
        .insert("Hello".into(), toml::Value::Table(section));
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one whole frame; panics on timeout or close.
pub fn read_frame(s: &mut TcpStream) -> Message {
    try_read_frame(s).expect("a frame")
}

/// Reads one whole frame; `None` if the peer closed the connection first.
pub fn try_read_frame(s: &mut TcpStream) -> Option<Message> {
    let mut header = [0u8; protocol::HEADER_LEN];
    if let Err(e) = s.read_exact(&mut header) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "read failed: {e}"
        );
        return None;
    }
    let total = protocol::frame_len(&header, u32::MAX).unwrap().unwrap();
    let mut buf = header.to_vec();
    buf.resize(total, 0);
    s.read_exact(&mut buf[protocol::HEADER_LEN..])
        .expect("frame body");
    let (frame, used) = protocol::decode(&buf, u32::MAX).unwrap().unwrap();
    assert_eq!(used, total);
    Some(frame.to_message())
}

/// True if the server closes the connection (EOF or reset) without sending anything more.
pub fn closed_without_reply(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

pub fn request(serialize: u8, seq: u64, path: &str, method: &str, payload: &[u8]) -> Message {
    Message {
        header: Header::request(serialize, seq),
        path: path.into(),
        method: method.into(),
        metadata: Vec::new(),
        payload: payload.to_vec(),
    }
}

/// MsgPack `{A: a, B: b}` as the Go client sends it.
pub fn msgpack_args(a: i64, b: i64) -> Vec<u8> {
    let mut out = Vec::new();
    percore::codec::encode_serde(
        &percore::builtin::ArithArgs { a, b },
        percore::codec::SerializeType::MsgPack,
        &mut out,
        "args",
    )
    .unwrap();
    out
}

pub fn msgpack_reply(payload: &[u8]) -> i64 {
    let r: percore::builtin::ArithReply =
        percore::codec::decode_serde(percore::codec::SerializeType::MsgPack, payload, "reply")
            .unwrap();
    r.c
}

pub fn send(s: &mut TcpStream, msg: &Message) {
    s.write_all(&msg.to_bytes()).unwrap();
}

/// Stops a server and waits for it.
pub fn stop(server: ServerHandle) {
    server.shutdown();
    server.join().unwrap();
}

/// Waits (bounded by [`IO_TIMEOUT`]) until `cond` holds; for counts the server records just
/// after it closes a connection. Panics with `what` if it never does.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < IO_TIMEOUT, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A running `percore serve` on a free loopback port; killed (SIGKILL) when dropped.
pub struct ServeProcess {
    child: Child,
    /// `tcp@127.0.0.1:PORT`.
    pub addr: String,
}

impl ServeProcess {
    /// Starts the binary with `config_toml` (the listen address is set here: port 0) and waits,
    /// at most 30 s, for its "listening" log line to learn the port.
    pub fn start(config_toml: &str) -> ServeProcess {
        ServeProcess::start_binary(env!("CARGO_BIN_EXE_percore").as_ref(), config_toml)
    }

    /// As [`ServeProcess::start`], with another binary built on `percore::cli` (an example).
    pub fn start_binary(binary: &std::path::Path, config_toml: &str) -> ServeProcess {
        let dir = std::env::temp_dir().join(format!("percore-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("serve-{}.toml", unique()));
        let toml = format!(
            "[server]\nlisten = [\"tcp@127.0.0.1:0\"]\ncores = 1\ndrain_timeout = \"100ms\"\n{config_toml}"
        );
        std::fs::write(&path, toml).unwrap();
        let mut child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let line = strip_ansi(&line);
                if let Some(at) = line.find("addr=") {
                    let addr = line[at + 5..]
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
            .expect("percore serve did not log its address");
        // The log names the listener as clients dial it (`tcp@host:port`).
        let addr = if addr.contains('@') {
            addr
        } else {
            format!("tcp@{addr}")
        };
        ServeProcess { child, addr }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Kills the server at once (no drain), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The binary of example `name`, which `cargo test` builds beside the test binaries.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built (cargo test builds examples)",
        path.display()
    );
    path
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Removes terminal colour sequences (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
