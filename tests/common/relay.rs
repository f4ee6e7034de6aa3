//! A lossy UDP relay for KCP tests: drops, duplicates and reorders datagrams, bounded in time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the relay does to each datagram, in percent.
#[derive(Clone, Copy)]
pub struct Loss {
    pub drop: u32,
    pub dup: u32,
    pub reorder: u32,
}

/// A UDP relay between clients and a server that loses, duplicates and reorders datagrams (a
/// seeded xorshift decides), one upstream socket per client so the server sees distinct peers.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Stops forwarding anything (the peer "vanishes") while still running.
    pub mute: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(server: SocketAddr, loss: Loss, seed: u64) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        front.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let (s, m) = (stop.clone(), mute.clone());
        let thread = std::thread::spawn(move || relay(front, server, loss, seed, &s, &m));
        Relay {
            addr,
            stop,
            mute,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn relay(
    front: UdpSocket,
    server: SocketAddr,
    loss: Loss,
    mut seed: u64,
    stop: &AtomicBool,
    mute: &AtomicBool,
) {
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 100) as u32
    };
    let mut up: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    // Held back datagrams: (release after this many more datagrams, to, via front?, bytes).
    let mut held: Vec<(u32, SocketAddr, Option<SocketAddr>, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let mut got: Vec<(SocketAddr, Option<SocketAddr>, Vec<u8>)> = Vec::new();
        while let Ok((n, from)) = front.recv_from(&mut buf) {
            let sock = up.entry(from).or_insert_with(|| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(server).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            });
            let _ = sock;
            got.push((server, Some(from), buf[..n].to_vec()));
        }
        for (client, sock) in &up {
            while let Ok(n) = sock.recv(&mut buf) {
                got.push((*client, None, buf[..n].to_vec()));
            }
        }
        if got.is_empty() {
            std::thread::sleep(Duration::from_micros(300));
            // Nothing new: let held datagrams go eventually.
            for h in &mut held {
                h.0 = h.0.saturating_sub(1);
            }
        }
        let mut out = Vec::new();
        for (to, via, bytes) in got {
            if mute.load(Ordering::SeqCst) {
                continue;
            }
            let r = rand();
            if r < loss.drop {
                continue;
            }
            if r < loss.drop + loss.reorder {
                held.push((1 + rand() % 3, to, via, bytes));
                continue;
            }
            if r < loss.drop + loss.reorder + loss.dup {
                out.push((to, via, bytes.clone()));
            }
            out.push((to, via, bytes));
            for h in &mut held {
                h.0 = h.0.saturating_sub(1);
            }
        }
        let (ready, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.0 == 0);
        held = keep;
        out.extend(ready.into_iter().map(|(_, to, via, b)| (to, via, b)));
        for (to, via, bytes) in out {
            match via {
                // client -> server through that client's upstream socket
                Some(client) => {
                    let _ = up[&client].send(&bytes);
                }
                // server -> client through the front socket
                None => {
                    let _ = front.send_to(&bytes, to);
                }
            }
        }
    }
}
