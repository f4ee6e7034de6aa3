//! At steady state the server makes no heap allocation per request for Arith.Mul (MsgPack and
//! JSON) and Echo.Echo. A counting global allocator wraps the system one for this test binary;
//! the client side below is written not to allocate inside the measured loop.
//!
//! Two counts: allocations on the request path (decode, dispatch, handler, encode; marked by
//! the `alloc-audit` feature), which must be zero; and all allocations of the process, which
//! also include glommio's own per-wait cost (it allocates an io_uring `Source` each time a read
//! has to wait), so they are bounded per *batch*, not per request: with 32 calls pipelined they
//! must cost less than a tenth per request of what one call per batch does.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static REQUEST_PATH_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count() {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if percore::server::in_request_path() {
        REQUEST_PATH_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `rounds` batches of `batch` copies of `request` (pipelined) and reads the replies,
/// returning (request-path, all) allocations per request over the measured rounds.
fn allocations_per_request(
    request: &[u8],
    reply_len: usize,
    batch: usize,
    rounds: usize,
) -> (f64, f64) {
    let server = common::start(1);
    let mut s = common::connect(server.local_addrs()[0]);
    let out: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * batch)
        .collect();
    let mut input = vec![0u8; reply_len * batch];
    let mut round = |s: &mut std::net::TcpStream| {
        s.write_all(&out).unwrap();
        s.read_exact(&mut input).unwrap();
    };
    for _ in 0..200 {
        round(&mut s);
    }
    let before = (
        REQUEST_PATH_ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATIONS.load(Ordering::Relaxed),
    );
    for _ in 0..rounds {
        round(&mut s);
    }
    let after = (
        REQUEST_PATH_ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATIONS.load(Ordering::Relaxed),
    );
    common::stop(server);
    let requests = (rounds * batch) as f64;
    (
        (after.0 - before.0) as f64 / requests,
        (after.1 - before.1) as f64 / requests,
    )
}

fn reply_len(request: &[u8]) -> usize {
    let server = common::start(1);
    let mut s = common::connect(server.local_addrs()[0]);
    s.write_all(request).unwrap();
    let len = common::read_frame(&mut s).to_bytes().len();
    common::stop(server);
    len
}

fn check(name: &str, request: Vec<u8>) {
    let len = reply_len(&request);
    let mut all_by_batch = Vec::new();
    for batch in [1, 32] {
        let (path, all) = allocations_per_request(&request, len, batch, 2000);
        eprintln!(
            "{name}, {batch} in flight: {path} on the request path, {all} in all, per request"
        );
        assert_eq!(
            path, 0.0,
            "{name}, {batch} in flight: the request path allocated"
        );
        all_by_batch.push(all);
    }
    // What is left is paid per wait, so 32 calls per batch cost well under a tenth as much each.
    assert!(
        all_by_batch[1] < all_by_batch[0] / 10.0,
        "{name}: {all_by_batch:?} allocations per request"
    );
}

/// One test, so no other test in this binary allocates while it counts.
#[test]
fn steady_state_requests_do_not_allocate() {
    check(
        "Arith.Mul msgpack",
        common::request(3, 1, "Arith", "Mul", &common::msgpack_args(7, 6)).to_bytes(),
    );
    check(
        "Arith.Mul json",
        common::request(1, 1, "Arith", "Mul", br#"{"A":7,"B":6}"#).to_bytes(),
    );
    check(
        "Echo.Echo",
        common::request(0, 1, "Echo", "Echo", &[0x5a; 4096]).to_bytes(),
    );
}
