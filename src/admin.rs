//! The operator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz` on `admin.listen`.
//!
//! One plain thread with blocking std I/O serves it, one request per connection, so a scrape
//! never runs on (or waits for) a core: it reads the cores' counters with relaxed loads and sums
//! them. Requests are handled one after another; a client gets [`IO_TIMEOUT`] to send its
//! request and read the answer, so a stuck one delays the next scrape by at most that.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text format 0.0.4 ([`crate::metrics::prometheus`]) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once every core accepts connections; 503 before that and while draining |

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use crate::metrics::{self, CoreMetrics, Status};
use crate::server::{Health, ServerHandle};
use crate::transport::quic::QuicCounters;

/// How long one admin client may take to send its request and to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 << 10;

/// Binds `addr` and serves the admin endpoint for `server` from a thread of its own. Returns
/// the bound address (port 0 resolved). The thread lives as long as the process.
pub fn start(addr: SocketAddr, server: &ServerHandle) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let cores = server.metrics().to_vec();
    let quic: Vec<_> = server
        .quic_counters()
        .into_iter()
        .map(|(addr, counters)| (addr.to_string(), counters))
        .collect();
    let health = server.health();
    std::thread::Builder::new()
        .name("percore-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &cores, &quic, &health) {
                            debug!(error = %e, "admin request failed");
                        }
                    }
                    // Out of file descriptors: back off rather than spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    info!(addr = %bound, "admin endpoint listening");
    Ok(bound)
}

fn answer(
    mut stream: TcpStream,
    cores: &[Arc<CoreMetrics>],
    quic: &[(String, Arc<QuicCounters>)],
    health: &Health,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request\n",
                true,
            );
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
            true,
        );
    }
    let path = target.split('?').next().unwrap_or("");
    let status = Status {
        ready: health.ready(),
        draining: health.draining(),
    };
    match path {
        "/metrics" => {
            let mut body = metrics::prometheus(cores, status);
            body.push_str(&metrics::prometheus_quic(quic));
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                with_body,
            )
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n", with_body),
        "/readyz" if status.ready => {
            respond(&mut stream, "200 OK", "text/plain", "ready\n", with_body)
        }
        "/readyz" => {
            let body = if status.draining {
                "draining\n"
            } else {
                "starting\n"
            };
            respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                body,
                with_body,
            )
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n",
            with_body,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}
