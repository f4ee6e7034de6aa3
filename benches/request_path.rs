//! Criterion benches of the request path, one per stage, in the order a pipelined call goes
//! through them (`cargo bench --bench request_path`):
//!
//! | stage | what it measures |
//! |---|---|
//! | `1_frame_len` | the 16-byte header: magic, length against the limit |
//! | `2_decode_frame` | a whole frame decoded (names, metadata, payload), the first call on a connection |
//! | `2_names_plain` | the fast lane's decode: a frame with the connection's last names, no metadata |
//! | `3_lookup` | `Registry::lookup` of `Arith`/`Mul` (skipped by the fast lane after the first call) |
//! | `4_call_arith_mul` | `Registry::call`: the MsgPack args read, multiplied, the reply payload written |
//! | `5_encode_reply` | the reply frame: head from the request's, names, metadata, payload |
//! | `5_encode_plain_reply` | the fast lane's reply: the request's head and names in one copy |
//!
//! Plus `decode_with_metadata` and `encode_request` (a client's side). These say where a change
//! moves the cost; benches/instructions.sh counts the whole path, I/O and executor included.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use percore::builtin::Builtin;
use percore::codec::SerializeType;
use percore::protocol::{self, Header, Metadata, Names};
use percore::service::{CoreInfo, Registry, Reply, Request};

/// `Arith.Mul` args `{A: 10, B: 20}` as the Go client encodes them.
const ARGS: [u8; 7] = [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14];
/// Its reply payload `{C: 200}`.
const REPLY: [u8; 5] = [0x81, 0xa1, 0x43, 0xcc, 0xc8];

fn frame(meta: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = Header::request(SerializeType::MsgPack as u8, 42);
    protocol::encode(&mut out, &header, "Arith", "Mul", meta, &ARGS);
    out
}

fn deadline_meta() -> Vec<u8> {
    let mut meta = Vec::new();
    protocol::push_meta(&mut meta, b"__ServerTimeout", b"5000");
    meta
}

fn stages(c: &mut Criterion) {
    let raw = frame(&[]);
    let mut g = c.benchmark_group("stage");

    g.bench_function("1_frame_len", |b| {
        b.iter(|| protocol::frame_len(black_box(&raw), 1 << 24))
    });

    g.bench_function("2_decode_frame", |b| {
        b.iter(|| {
            let f = protocol::decode_frame(black_box(&raw), 64).unwrap();
            black_box((f.header.seq, f.path.len(), f.payload.len()))
        })
    });

    let mut names = Names::default();
    let first = protocol::decode_frame(&raw, 64).unwrap();
    assert!(names.keep(&raw, &first));
    g.bench_function("2_names_plain", |b| {
        b.iter(|| black_box(names.plain(black_box(&raw)).unwrap().1.len()))
    });

    g.bench_function("3_lookup", |b| {
        b.iter(|| Builtin::lookup(black_box("Arith"), black_box("Mul")).unwrap())
    });

    let core = CoreInfo {
        index: 0,
        cpu: 0,
        cores: 1,
    };
    let registry = Builtin::build(&core, &Default::default()).unwrap();
    let method = Builtin::lookup("Arith", "Mul").unwrap();
    let (mut meta, mut payload) = (Vec::with_capacity(64), Vec::with_capacity(64));
    g.bench_function("4_call_arith_mul", |b| {
        b.iter(|| {
            let req = Request {
                codec: SerializeType::MsgPack,
                metadata: Metadata::default(),
                payload: black_box(&ARGS),
            };
            let mut reply = Reply::new(&mut meta, &mut payload);
            black_box(registry.call(method, &req, &mut reply).unwrap());
            black_box(payload.len())
        })
    });

    let names_end = protocol::HEADER_LEN + 8 + "Arith".len() + "Mul".len();
    let mut out = Vec::with_capacity(1 << 16);
    g.bench_function("5_encode_reply", |b| {
        b.iter(|| {
            out.clear();
            protocol::encode_reply(
                &mut out,
                black_box(&raw),
                protocol::flags::RESPONSE,
                &raw[protocol::HEADER_LEN..names_end],
                &[],
                black_box(&REPLY),
            );
            black_box(out.len())
        })
    });
    g.bench_function("5_encode_plain_reply", |b| {
        b.iter(|| {
            out.clear();
            protocol::encode_plain_reply(&mut out, black_box(&raw), names_end, &[], &REPLY);
            black_box(out.len())
        })
    });
    g.finish();
}

fn others(c: &mut Criterion) {
    let with_meta = frame(&deadline_meta());
    c.bench_function("decode_with_metadata", |b| {
        b.iter(|| {
            let (f, used) = protocol::decode(black_box(&with_meta), 1 << 24)
                .unwrap()
                .unwrap();
            black_box((f.metadata.get("__ServerTimeout"), used))
        })
    });
    let meta = deadline_meta();
    let mut out = Vec::with_capacity(256);
    c.bench_function("encode_request", |b| {
        b.iter(|| {
            out.clear();
            let header = Header::request(SerializeType::MsgPack as u8, black_box(42));
            protocol::encode(&mut out, &header, "Arith", "Mul", &meta, black_box(&ARGS));
            black_box(out.len())
        })
    });
}

criterion_group!(benches, stages, others);
criterion_main!(benches);
