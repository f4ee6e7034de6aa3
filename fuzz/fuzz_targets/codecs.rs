//! The payload codecs take any bytes: MsgPack and JSON decoding (serde and Arith's fast path),
//! gzip with its inflate cap, and Hello.Say's in-place protobuf rewrite. No panic, and the
//! inflate cap holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::builtin::ArithArgs;
use percore::codec::{self, Payload, SerializeType};

fuzz_target!(|data: &[u8]| {
    for codec in [SerializeType::MsgPack, SerializeType::Json, SerializeType::Protobuf] {
        let _ = ArithArgs::decode(codec, data);
    }
    let _ = codec::decode_serde::<serde_json::Value>(SerializeType::MsgPack, data, "any");
    let _ = codec::decode_serde::<serde_json::Value>(SerializeType::Json, data, "any");
    let mut out = Vec::new();
    if codec::gunzip(data, 1 << 16, &mut out).is_ok() {
        assert!(out.len() <= 1 << 16);
    }
    let mut rewritten = Vec::new();
    let _ = percore::bench_message::rewrite_say(data, &mut rewritten);
});
