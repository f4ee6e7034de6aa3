//! The operator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz` on `admin.listen`.
//!
//! One plain thread serves it, off the cores: a scrape never runs on (or waits for) a core; it
//! reads the cores' counters with relaxed loads and sums them. The thread is a `poll(2)` loop
//! over non-blocking sockets, so connections are served side by side: a client that trickles
//! its request, or hundreds that connect and send nothing, cost a slot each and delay nobody.
//! Each connection gets [`IO_TIMEOUT`] from its accept to send its request and read the whole
//! answer (one deadline per request, not per read), and at most [`MAX_CONNECTIONS`] are open at
//! once (past that the oldest is closed to make room). The request head is parsed with
//! `httparse`; every answer closes its connection.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text format 0.0.4 ([`crate::metrics::prometheus`]) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once every core accepts connections; 503 before that and while draining |

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::metrics::{self, CoreMetrics, Status};
use crate::server::{Health, ServerHandle};
use crate::transport::quic::QuicCounters;

/// How long one admin client may take to send its request and read the whole answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Most admin connections open at once; a new one past this closes the oldest.
pub const MAX_CONNECTIONS: usize = 256;

/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 << 10;

/// Binds `addr` and serves the admin endpoint for `server` from a thread of its own. Returns
/// the bound address (port 0 resolved). The thread lives as long as the process.
pub fn start(addr: SocketAddr, server: &ServerHandle) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let state = State {
        cores: server.metrics().to_vec(),
        names: server.method_names(),
        health: server.health(),
        kcp: server.kcp_stats(),
        registry: server.registration().map(|r| r.metrics()),
        quic: server
            .quic_counters()
            .into_iter()
            .map(|(addr, counters)| (addr.to_string(), counters))
            .collect(),
    };
    std::thread::Builder::new()
        .name("percore-admin".into())
        .spawn(move || serve(&listener, &state))?;
    info!(addr = %bound, "admin endpoint listening");
    Ok(bound)
}

/// What the answers are made from.
struct State {
    cores: Vec<Arc<CoreMetrics>>,
    names: Arc<[(&'static str, &'static str)]>,
    health: Arc<Health>,
    /// The `kcp@` listeners' reactor counters.
    kcp: Vec<Arc<crate::transport::kcp::KcpStats>>,
    /// `[registry.etcd]`'s counters, when it is configured.
    registry: Option<Arc<crate::etcd::EtcdMetrics>>,
    /// Each `quic@` listener's own counters, by its address.
    quic: Vec<(String, Arc<QuicCounters>)>,
}

/// One admin connection: reading its request, then writing its answer.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    head: Vec<u8>,
    /// The answer, once the request is read; `written` of it are sent.
    answer: Option<Vec<u8>>,
    written: usize,
}

fn serve(listener: &TcpListener, state: &State) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(pollfd(listener.as_raw_fd(), libc::POLLIN));
        for c in &conns {
            let events = if c.answer.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let now = Instant::now();
        let wait = conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                debug!(error = %e, "admin poll failed");
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        // Connections first (their indices match `fds[1..]`), then new ones.
        let now = Instant::now();
        let mut i = 0;
        conns.retain_mut(|c| {
            let revents = fds[1 + i].revents;
            i += 1;
            if now >= c.deadline {
                debug!("admin client timed out");
                return false;
            }
            revents == 0 || step(c, revents, state)
        });
        if fds[0].revents != 0 {
            accept_all(listener, &mut conns);
        }
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Takes every pending connection.
fn accept_all(listener: &TcpListener, conns: &mut Vec<Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    // The oldest has had the longest to finish.
                    conns.remove(0);
                }
                conns.push(Conn {
                    stream,
                    deadline: Instant::now() + IO_TIMEOUT,
                    head: Vec::new(),
                    answer: None,
                    written: 0,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of file descriptors: the pending ones wait for the next round.
                debug!(error = %e, "admin accept failed");
                return;
            }
        }
    }
}

/// Moves one connection on; false when it is done (answered, closed or broken).
fn step(c: &mut Conn, revents: i16, state: &State) -> bool {
    if c.answer.is_none() {
        let mut chunk = [0u8; 2048];
        match c.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => c.head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        }
        match request(&c.head) {
            Parsed::Partial if c.head.len() <= MAX_REQUEST => return true,
            Parsed::Partial | Parsed::Bad => {
                c.answer = Some(respond(
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                    true,
                ));
            }
            Parsed::Request { method, path } => c.answer = Some(answer(method, path, state)),
        }
    } else if revents & (libc::POLLERR | libc::POLLHUP) != 0 && revents & libc::POLLOUT == 0 {
        return false;
    }
    let Some(answer) = &c.answer else { return true };
    while c.written < answer.len() {
        match c.stream.write(&answer[c.written..]) {
            Ok(0) => return false,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

/// A request head as far as it has come.
enum Parsed<'a> {
    Partial,
    Bad,
    Request { method: &'a str, path: &'a str },
}

fn request(head: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => Parsed::Request {
            method: req.method.unwrap_or_default(),
            path: req.path.unwrap_or_default(),
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

fn answer(method: &str, target: &str, state: &State) -> Vec<u8> {
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return respond("405 Method Not Allowed", "text/plain", "GET only\n", true);
    }
    let path = target.split('?').next().unwrap_or("");
    let status = Status {
        ready: state.health.ready(),
        draining: state.health.draining(),
    };
    match path {
        "/metrics" => respond(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &{
                let mut text = metrics::prometheus(&state.cores, &state.names, status)
                    + &metrics::kcp_prometheus(&state.kcp)
                    + &metrics::prometheus_quic(&state.quic);
                if let Some(registry) = &state.registry {
                    registry.prometheus(&mut text);
                }
                text
            },
            with_body,
        ),
        "/healthz" => respond("200 OK", "text/plain", "ok\n", with_body),
        "/readyz" if status.ready => respond("200 OK", "text/plain", "ready\n", with_body),
        "/readyz" => {
            let body = if status.draining {
                "draining\n"
            } else {
                "starting\n"
            };
            respond("503 Service Unavailable", "text/plain", body, with_body)
        }
        _ => respond(
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n",
            with_body,
        ),
    }
}

fn respond(status: &str, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        out.push_str(body);
    }
    out.into_bytes()
}
