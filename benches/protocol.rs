//! Criterion benches of the hot path's pure parts: frame decode, frame encode, and dispatch
//! (`Registry::lookup` + `call` of an Arith.Mul MsgPack request). Run with `cargo bench`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use percore::builtin::Builtin;
use percore::codec::SerializeType;
use percore::protocol::{self, Header, Metadata};
use percore::service::{CoreInfo, Registry, Reply, Request};

/// `Arith.Mul` args `{A: 10, B: 20}` as the Go client encodes them.
const ARGS: [u8; 7] = [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14];

fn request_frame() -> Vec<u8> {
    let mut meta = Vec::new();
    protocol::push_meta(&mut meta, b"__ServerTimeout", b"5000");
    let mut out = Vec::new();
    protocol::encode(
        &mut out,
        &Header::request(SerializeType::MsgPack as u8, 42),
        "Arith",
        "Mul",
        &meta,
        &ARGS,
    );
    out
}

fn decode(c: &mut Criterion) {
    let frame = request_frame();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("arith_mul_request", |b| {
        b.iter(|| {
            let (f, used) = protocol::decode(black_box(&frame), 1 << 24)
                .unwrap()
                .unwrap();
            black_box((
                f.header.seq,
                f.payload.len(),
                f.metadata.get("__ServerTimeout"),
                used,
            ))
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let frame = request_frame();
    let mut meta = Vec::new();
    protocol::push_meta(&mut meta, b"__ServerTimeout", b"5000");
    let mut out = Vec::with_capacity(256);
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("arith_mul_request", |b| {
        b.iter(|| {
            out.clear();
            let header = Header::request(SerializeType::MsgPack as u8, black_box(42));
            protocol::encode(&mut out, &header, "Arith", "Mul", &meta, black_box(&ARGS));
            black_box(out.len())
        })
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    let core = CoreInfo {
        index: 0,
        cpu: 0,
        cores: 1,
    };
    let registry = Builtin::build(&core, &Default::default()).unwrap();
    let (mut meta, mut payload) = (Vec::with_capacity(64), Vec::with_capacity(64));
    c.bench_function("dispatch/arith_mul_msgpack", |b| {
        b.iter(|| {
            let method = Builtin::lookup(black_box("Arith"), black_box("Mul")).unwrap();
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
}

criterion_group!(benches, decode, encode, dispatch);
criterion_main!(benches);
