//! Real frames recorded from the Go rpcx implementation (tests/data/rpcx-go-frames.json):
//! decoded field by field, re-encoded byte for byte, and replayed against a running server.

mod common;

use percore::protocol::{self, META_ERROR};

struct Vector {
    name: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/rpcx-go-frames.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().unwrap().to_owned(),
            request: hex::decode(v["request_hex"].as_str().unwrap()).unwrap(),
            response: hex::decode(v["response_hex"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

fn vector(name: &str) -> Vector {
    vectors().into_iter().find(|v| v.name == name).unwrap()
}

#[test]
fn every_frame_re_encodes_byte_for_byte() {
    for v in vectors() {
        for bytes in [&v.request, &v.response] {
            let (frame, used) = protocol::decode(bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "{}", v.name);
            let mut again = Vec::new();
            frame.encode(&mut again);
            assert_eq!(&again, bytes, "{}", v.name);
            assert_eq!(frame.encoded_len(), bytes.len(), "{}", v.name);
            assert_eq!(frame.to_message().to_bytes(), *bytes, "{}", v.name);
        }
    }
}

#[test]
fn mul_msgpack_fields() {
    let v = vector("mul_msgpack");
    let (req, _) = protocol::decode(&v.request, 1 << 20).unwrap().unwrap();
    assert_eq!(req.header.version, 0);
    assert!(!req.header.is_response() && !req.header.is_heartbeat() && !req.header.is_oneway());
    assert_eq!(req.header.compress(), 0);
    assert_eq!(req.header.status(), 0);
    assert_eq!(req.header.serialize, 3);
    assert_eq!(req.header.seq, 1);
    assert_eq!((req.path, req.method), ("Arith", "Mul"));
    assert!(req.metadata.is_empty());
    assert_eq!(req.payload, [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14]);

    let (resp, _) = protocol::decode(&v.response, 1 << 20).unwrap().unwrap();
    assert!(resp.header.is_response());
    assert_eq!(resp.header.seq, 1);
    assert_eq!(resp.header.serialize, 3);
    assert_eq!(resp.payload, [0x81, 0xa1, 0x43, 0xcc, 0xc8]);
}

#[test]
fn json_protobuf_metadata_and_gzip_fields() {
    let v = vector("mul_json");
    let (req, _) = protocol::decode(&v.request, 1 << 20).unwrap().unwrap();
    assert_eq!(req.header.serialize, 1);
    assert_eq!(req.payload, br#"{"A":10,"B":20}"#);

    let v = vector("mul_protobuf");
    let (req, _) = protocol::decode(&v.request, 1 << 20).unwrap().unwrap();
    assert_eq!(req.header.serialize, 2);
    assert_eq!(req.payload, [0x08, 0x0a, 0x10, 0x14]);

    let v = vector("mul_metadata");
    let (req, _) = protocol::decode(&v.request, 1 << 20).unwrap().unwrap();
    assert_eq!(req.metadata.iter().collect::<Vec<_>>(), [("k1", "v1")]);
    let (resp, _) = protocol::decode(&v.response, 1 << 20).unwrap().unwrap();
    assert_eq!(
        resp.metadata.iter().collect::<Vec<_>>(),
        [("echo-k1", "v1")]
    );

    let v = vector("gzip_request");
    let (req, _) = protocol::decode(&v.request, 1 << 20).unwrap().unwrap();
    assert_eq!(req.header.compress(), 1);
    let mut inflated = Vec::new();
    percore::codec::gunzip(req.payload, 1 << 20, &mut inflated).unwrap();
    assert_eq!(inflated, br#"{"A":10,"B":20}"#);
}

#[test]
fn error_fields() {
    for (name, text) in [
        ("service_error", "arith: intentional error"),
        ("unknown_method", "rpcx: can't find method Div"),
        ("unknown_service", "rpcx: can't find service Nope"),
    ] {
        let v = vector(name);
        let (resp, _) = protocol::decode(&v.response, 1 << 20).unwrap().unwrap();
        assert!(resp.header.is_error(), "{name}");
        assert_eq!(resp.metadata.get(META_ERROR), Some(text), "{name}");
    }
}

/// Each recorded request, sent to percore over TCP, gets the recorded reply. `Arith.Error` is a
/// method of the reference server only.
#[test]
fn server_answers_like_the_go_server() {
    let server = common::start(1);
    let addr = server.local_addrs()[0];
    for v in vectors().into_iter().filter(|v| v.name != "service_error") {
        let mut s = common::connect(addr);
        std::io::Write::write_all(&mut s, &v.request).unwrap();
        let got = common::read_frame(&mut s);
        let (want, _) = protocol::decode(&v.response, 1 << 20).unwrap().unwrap();
        let mut got_meta = got.metadata.clone();
        let mut want_meta: Vec<(String, String)> = want
            .metadata
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        got_meta.sort();
        want_meta.sort();
        assert_eq!(got.header, want.header, "{}", v.name);
        assert_eq!(
            (got.path.as_str(), got.method.as_str()),
            (want.path, want.method),
            "{}",
            v.name
        );
        assert_eq!(got_meta, want_meta, "{}", v.name);
        assert_eq!(got.payload, want.payload, "{}", v.name);
        // With one metadata entry at most, the order cannot differ: the bytes match exactly.
        assert_eq!(got.to_bytes(), v.response, "{}", v.name);
    }
    common::stop(server);
}
