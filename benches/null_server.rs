//! The null server: percore's executors and listeners, but each rpcx frame is answered by
//! flipping its response bit, without decoding or dispatching. It is the practical limit of this
//! machine for the transport, and the denominator of the ratios `benches/load.sh` reports.
//!
//! ```sh
//! cargo build --release --example null_server
//! taskset -c 0 target/release/examples/null_server 127.0.0.1:8973 1
//! ```
//! Arguments: listen address (default 127.0.0.1:8973) and cores (default: all allowed).

use std::os::fd::{FromRawFd, IntoRawFd};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};
use percore::config::Config;
use percore::protocol;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:8973")
        .parse()
        .expect("listen address");
    let cores: usize = args.next().map(|c| c.parse().expect("cores")).unwrap_or(0);
    let config = Config::default();
    let mut cpus = percore::server::allowed_cpus().expect("affinity");
    if cores > 0 {
        cpus.truncate(cores);
    }
    let (bound, fds) =
        percore::transport::tcp::listen_reuseport(addr, cpus.len(), config.server.backlog, false)
            .expect("listen");
    println!("null server on {bound}, cpus {cpus:?}");
    let threads: Vec<_> = cpus
        .iter()
        .zip(fds)
        .map(|(&cpu, fd)| {
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .io_memory(config.runtime.io_memory_bytes)
                .ring_depth(config.runtime.ring_depth)
                .spawn(move || async move {
                    // SAFETY: a listening socket we own, handed over once.
                    let listener =
                        unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
                    while let Ok(stream) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        glommio::spawn_local(serve(stream)).detach();
                    }
                })
                .expect("executor")
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Reads what is there, flips the response bit of every complete frame in place, writes the
/// complete frames back in one write, keeps any partial frame for the next read.
async fn serve(mut stream: glommio::net::TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let mut done = 0;
        while let Ok(Some(len)) = protocol::frame_len(&buf[done..filled], u32::MAX) {
            if filled - done < len {
                break;
            }
            buf[done + 2] |= protocol::flags::RESPONSE;
            done += len;
        }
        if done > 0 {
            if stream.write_all(&buf[..done]).await.is_err() {
                return;
            }
            buf.copy_within(done..filled, 0);
            filled -= done;
        }
    }
}
