//! The HTTP gateway and JSON-RPC 2.0 on the rpcx port, driven by curl (a client nobody here
//! wrote) and, where bytes or connection counts matter, by a raw TcpStream.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::connect;
use percore::server::ServerHandle;

/// An HTTP reply as curl saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    /// The first header of that name (case-insensitive), if any.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a successful gateway reply without rpcx error headers.
    fn assert_ok(&self) {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.header("X-RPCX-MessageStatusType"), None, "{self:?}");
        assert_eq!(self.header("X-RPCX-ErrorMessage"), None, "{self:?}");
    }

    /// Asserts an rpcx gateway error reply with this status and text, and an empty body.
    fn assert_error(&self, status: u16, text: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("X-RPCX-MessageStatusType"),
            Some("Error"),
            "{self:?}"
        );
        assert_eq!(self.header("X-RPCX-ErrorMessage"), Some(text), "{self:?}");
        assert!(self.body.is_empty(), "{self:?}");
    }
}

/// Runs curl against `addr` + `path`; `body` goes as `--data-binary` (POST unless `args` say
/// otherwise).
fn curl(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    args: &[&str],
) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-i", "--max-time", "10"]);
    cmd.args(args);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("curl is installed (.ci/run installs it)");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(body) = body {
        stdin.write_all(body).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_reply(&out.stdout)
}

/// Parses `curl -i` output: interim 1xx heads are skipped.
fn parse_reply(mut raw: &[u8]) -> Reply {
    loop {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = std::str::from_utf8(&raw[..end]).unwrap();
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_owned(), v.trim().to_owned())
            })
            .collect();
        return Reply {
            status,
            headers,
            body: rest.to_vec(),
        };
    }
}

/// Reads one reply with a Content-Length body from a raw connection.
fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-reply");
        raw.push(byte[0]);
    }
    let mut reply = parse_reply(&raw);
    let len: usize = reply.header("Content-Length").unwrap().parse().unwrap();
    reply.body = vec![0; len];
    s.read_exact(&mut reply.body).unwrap();
    reply
}

fn server() -> (ServerHandle, SocketAddr) {
    let server = common::start(1);
    let addr = server.local_addrs()[0];
    (server, addr)
}

/// `Arith.Mul {A:10, B:20}` in MsgPack as Go's codec writes it, and the reply `{C: 200}`.
const MUL_ARGS: &[u8] = &[0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14];
const MUL_REPLY: &[u8] = &[0x81, 0xa1, 0x43, 0xcc, 0xc8];

#[test]
fn rpcx_http_invoke_example_is_answered() {
    let (server, addr) = server();
    // rpcx-examples http_invoke/client: headers as it sets them, misspelled MessageType included.
    let reply = curl(
        addr,
        "/",
        &[
            ("X-RPCX-MessageID", "10000"),
            ("X-RPCX-MesssageType", "0"),
            ("X-RPCX-SerializeType", "3"),
            ("X-RPCX-ServicePath", "Arith"),
            ("X-RPCX-ServiceMethod", "Mul"),
        ],
        Some(MUL_ARGS),
        &[],
    );
    reply.assert_ok();
    assert_eq!(reply.body, MUL_REPLY);
    assert_eq!(reply.header("X-RPCX-MessageID"), Some("10000"));
    assert_eq!(reply.header("X-RPCX-ServicePath"), Some("Arith"));
    assert_eq!(reply.header("X-RPCX-ServiceMethod"), Some("Mul"));
    assert_eq!(reply.header("X-RPCX-SerializeType"), Some("3"));
    assert_eq!(reply.header("X-RPCX-Meta"), Some(""));
    assert_eq!(reply.header("X-RPCX-Version"), Some(""));

    // The same request byte for byte as Go's net/http writes it (canonical header names).
    let mut s = connect(addr);
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8972\r\nUser-Agent: Go-http-client/1.1\r\n\
          Content-Length: 7\r\nX-Rpcx-Messageid: 10000\r\nX-Rpcx-Messsagetype: 0\r\n\
          X-Rpcx-Serializetype: 3\r\nX-Rpcx-Servicemethod: Mul\r\nX-Rpcx-Servicepath: Arith\r\n\
          Accept-Encoding: gzip\r\n\r\n",
    )
    .unwrap();
    s.write_all(MUL_ARGS).unwrap();
    let reply = read_reply(&mut s);
    reply.assert_ok();
    assert_eq!(reply.body, MUL_REPLY);
    assert_eq!(reply.header("X-RPCX-MessageID"), Some("10000"));
    assert_eq!(server.metrics()[0].gateway_requests.get(), 2);
    common::stop(server);
}

#[test]
fn json_body_path_from_url_meta_version_and_auth() {
    let (server, addr) = server();
    let reply = curl(
        addr,
        "/Arith",
        &[
            ("X-RPCX-SerializeType", "1"),
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-Version", "0"),
            ("X-RPCX-MessageID", "7"),
            ("X-RPCX-Meta", "b=x+y&a=1&a=2"),
            ("Authorization", "Bearer s3cret"),
        ],
        Some(br#"{"A":6,"B":7}"#),
        &[],
    );
    reply.assert_ok();
    assert_eq!(reply.json(), serde_json::json!({"C": 42}));
    assert_eq!(reply.header("X-RPCX-ServicePath"), Some("Arith"));
    assert_eq!(reply.header("X-RPCX-Version"), Some("0"));
    assert_eq!(reply.header("X-RPCX-MessageID"), Some("7"));
    // Arith mirrors request metadata as echo-k: X-RPCX-Meta went in (first value of a key) and
    // Authorization arrived as __AUTH; the reply metadata comes back URL-encoded, keys sorted.
    assert_eq!(
        reply.header("X-RPCX-Meta"),
        Some("echo-__AUTH=Bearer+s3cret&echo-a=1&echo-b=x+y")
    );
    common::stop(server);
}

#[test]
fn get_and_put_are_served_other_methods_get_405() {
    let (server, addr) = server();
    let headers = [
        ("X-RPCX-SerializeType", "1"),
        ("X-RPCX-ServicePath", "Arith"),
        ("X-RPCX-ServiceMethod", "Add"),
    ];
    for method in ["GET", "PUT"] {
        let reply = curl(
            addr,
            "/",
            &headers,
            Some(br#"{"A":1,"B":2}"#),
            &["-X", method],
        );
        reply.assert_ok();
        assert_eq!(reply.json(), serde_json::json!({"C": 3}), "{method}");
    }
    let reply = curl(addr, "/", &headers, None, &["-X", "DELETE"]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("GET, POST, PUT"));
    common::stop(server);
}

#[test]
fn missing_or_bad_headers_are_200_with_rpcx_texts() {
    let (server, addr) = server();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            "/",
            &[
                ("X-RPCX-ServiceMethod", "Mul"),
                ("X-RPCX-SerializeType", "3"),
            ],
            "empty servicepath",
        ),
        (
            "/Arith",
            &[("X-RPCX-SerializeType", "3")],
            "empty servicemethod",
        ),
        (
            "/Arith",
            &[("X-RPCX-ServiceMethod", "Mul")],
            "empty serialized type",
        ),
        (
            "/Arith",
            &[
                ("X-RPCX-ServiceMethod", "Mul"),
                ("X-RPCX-SerializeType", "3"),
                ("X-RPCX-MessageID", "x1"),
            ],
            "strconv.ParseUint: parsing \"x1\": invalid syntax",
        ),
        (
            "/Arith",
            &[
                ("X-RPCX-ServiceMethod", "Mul"),
                ("X-RPCX-SerializeType", "json"),
            ],
            "strconv.Atoi: parsing \"json\": invalid syntax",
        ),
    ];
    for (path, headers, text) in cases {
        let reply = curl(addr, path, headers, Some(MUL_ARGS), &[]);
        reply.assert_error(200, text);
        // rpcx copies the request's X-RPCX-* headers into this reply.
        for (k, v) in headers.iter() {
            assert_eq!(reply.header(k), Some(*v), "{text}: {reply:?}");
        }
    }
    // The service path taken from the URL is echoed too.
    let reply = curl(
        addr,
        "/Arith",
        &[("X-RPCX-ServiceMethod", "Mul")],
        None,
        &[],
    );
    assert_eq!(reply.header("X-RPCX-ServicePath"), Some("Arith"));
    common::stop(server);
}

#[test]
fn service_and_codec_errors_are_500() {
    let (server, addr) = server();
    let call = |path: &str, method: &str, st: &str, body: &[u8]| {
        curl(
            addr,
            "/",
            &[
                ("X-RPCX-ServicePath", path),
                ("X-RPCX-ServiceMethod", method),
                ("X-RPCX-SerializeType", st),
                ("X-RPCX-MessageID", "5"),
            ],
            Some(body),
            &[],
        )
    };
    let reply = call("Nope", "Mul", "3", MUL_ARGS);
    reply.assert_error(500, "rpcx: can't find service Nope");
    assert_eq!(reply.header("X-RPCX-MessageID"), Some("5"));
    assert_eq!(reply.header("X-RPCX-ServicePath"), Some("Nope"));
    assert_eq!(reply.header("X-RPCX-ServiceMethod"), Some("Mul"));
    assert_eq!(reply.header("X-RPCX-SerializeType"), Some("3"));
    call("Arith", "Div", "3", MUL_ARGS).assert_error(500, "rpcx: can't find method Div");
    call("Arith", "Mul", "9", MUL_ARGS).assert_error(500, "can not find codec for 9");
    let bad = call("Arith", "Mul", "1", b"{not json");
    assert_eq!(bad.status, 500);
    assert!(
        bad.header("X-RPCX-ErrorMessage").unwrap().contains("json"),
        "{bad:?}"
    );
    // A bad gzip body is a codec error as well.
    let gz = curl(
        addr,
        "/Arith",
        &[
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-SerializeType", "3"),
            ("X-RPCX-CompressType", "1"),
        ],
        Some(b"not gzip"),
        &[],
    );
    assert_eq!(gz.status, 500, "{gz:?}");
    assert!(server.metrics()[0].gateway_errors.get() >= 5);
    common::stop(server);
}

#[test]
fn non_ascii_error_text_is_percent_encoded() {
    let (server, addr) = server();
    let reply = curl(
        addr,
        "/%C3%84rith",
        &[
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-SerializeType", "3"),
        ],
        Some(MUL_ARGS),
        &[],
    );
    reply.assert_error(500, "rpcx: can't find service %C3%84rith");
    common::stop(server);
}

#[test]
fn oneway_heartbeat_and_gzip() {
    let (server, addr) = server();
    let base = [
        ("X-RPCX-ServicePath", "Arith"),
        ("X-RPCX-ServiceMethod", "Mul"),
        ("X-RPCX-SerializeType", "3"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut h = base.to_vec();
        h.push(extra);
        h
    };
    let oneway = curl(
        addr,
        "/",
        &with(("X-RPCX-Oneway", "true")),
        Some(MUL_ARGS),
        &[],
    );
    oneway.assert_ok();
    assert!(oneway.body.is_empty());
    let hb = curl(
        addr,
        "/",
        &with(("X-RPCX-Heartbeat", "1")),
        Some(b"ping"),
        &[],
    );
    hb.assert_ok();
    assert_eq!(hb.body, b"ping");
    let mut gz = Vec::new();
    percore::codec::gzip(MUL_ARGS, &mut gz);
    let reply = curl(
        addr,
        "/",
        &with(("X-RPCX-CompressType", "1")),
        Some(&gz),
        &[],
    );
    reply.assert_ok();
    assert_eq!(reply.body, MUL_REPLY);
    common::stop(server);
}

#[test]
fn chunked_bodies_are_read() {
    let (server, addr) = server();
    let reply = curl(
        addr,
        "/Arith",
        &[
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-SerializeType", "3"),
            ("Transfer-Encoding", "chunked"),
        ],
        Some(MUL_ARGS),
        &[],
    );
    reply.assert_ok();
    assert_eq!(reply.body, MUL_REPLY);
    // Several chunks, a chunk extension and a trailer, on one connection with a second request.
    let mut s = connect(addr);
    let head = "POST /Arith HTTP/1.1\r\nHost: x\r\nX-RPCX-ServiceMethod: Mul\r\n\
                X-RPCX-SerializeType: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(
        b"3;ext=1\r\n\x82\xa1\x41\r\n4\r\n\x0a\xa1\x42\x14\r\n0\r\nX-T: 1\r\n\r\n",
    );
    req.extend_from_slice(&req.clone());
    s.write_all(&req).unwrap();
    for _ in 0..2 {
        let reply = read_reply(&mut s);
        reply.assert_ok();
        assert_eq!(reply.body, MUL_REPLY);
    }
    common::stop(server);
}

#[test]
fn hundred_keep_alive_requests_on_one_connection() {
    let (server, addr) = server();
    let request = |i: u64| {
        let body = format!("{{\"A\":{i},\"B\":2}}");
        format!(
            "POST /Arith HTTP/1.1\r\nHost: x\r\nX-RPCX-ServiceMethod: Mul\r\n\
             X-RPCX-SerializeType: 1\r\nX-RPCX-MessageID: {i}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut s = connect(addr);
    // One at a time...
    for i in 0..100u64 {
        s.write_all(request(i).as_bytes()).unwrap();
        let reply = read_reply(&mut s);
        reply.assert_ok();
        assert_eq!(
            reply.header("X-RPCX-MessageID"),
            Some(i.to_string().as_str())
        );
        assert_eq!(reply.json(), serde_json::json!({"C": i * 2}));
    }
    // ...and 100 pipelined in one write, answered in order.
    let all: String = (100..200u64).map(request).collect();
    s.write_all(all.as_bytes()).unwrap();
    for i in 100..200u64 {
        let reply = read_reply(&mut s);
        assert_eq!(
            reply.header("X-RPCX-MessageID"),
            Some(i.to_string().as_str())
        );
        assert_eq!(reply.json(), serde_json::json!({"C": i * 2}));
    }
    let m = &server.metrics()[0];
    assert_eq!(
        m.transport(percore::metrics::Transport::Tcp).accepted.get(),
        1
    );
    assert_eq!(m.gateway_requests.get(), 200);
    // Connection: close is honoured after the reply.
    s.write_all(
        request(1)
            .replace("Host: x", "Host: x\r\nConnection: close")
            .as_bytes(),
    )
    .unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(common::closed_without_reply(&mut s));
    common::stop(server);
}

fn jsonrpc(addr: SocketAddr, body: &[u8]) -> Reply {
    curl(addr, "/", &[("X-JSONRPC-2.0", "true")], Some(body), &[])
}

#[test]
fn jsonrpc_single_batch_and_notification() {
    let (server, addr) = server();
    let reply = jsonrpc(
        addr,
        br#"{"jsonrpc":"2.0","method":"Arith.Mul","params":{"A":10,"B":20},"id":1}"#,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body_text(),
        r#"{"jsonrpc":"2.0","result":{"C":200},"id":1}"#
    );
    let reply = jsonrpc(
        addr,
        br#"{"jsonrpc":"2.0","method":"Arith.Say","params":"bob","id":"s"}"#,
    );
    assert_eq!(
        reply.json(),
        serde_json::json!({"jsonrpc":"2.0","result":"hello bob","id":"s"})
    );

    let batch = br#"[
        {"jsonrpc":"2.0","method":"Arith.Mul","params":{"A":2,"B":3},"id":1},
        {"jsonrpc":"2.0","method":"Arith.Add","params":{"A":2,"B":3}},
        {"jsonrpc":"2.0","method":"Arith.Add","params":{"A":2,"B":3},"id":"two"},
        {"jsonrpc":"2.0","method":"Nope.Mul","params":{},"id":3}
    ]"#;
    let reply = jsonrpc(addr, batch);
    assert_eq!(
        reply.json(),
        serde_json::json!([
            {"jsonrpc":"2.0","result":{"C":6},"id":1},
            {"jsonrpc":"2.0","result":{"C":5},"id":"two"},
            {"jsonrpc":"2.0","error":{"code":-32603,"message":"rpcx: can't find service Nope"},"id":3},
        ])
    );

    let calls_before = server.metrics()[0].jsonrpc_calls.get();
    let reply = jsonrpc(
        addr,
        br#"{"jsonrpc":"2.0","method":"Arith.Mul","params":{"A":1,"B":1}}"#,
    );
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty(), "{reply:?}");
    let reply = jsonrpc(
        addr,
        br#"[{"jsonrpc":"2.0","method":"Arith.Mul","params":{}},{"jsonrpc":"2.0","method":"Nope.X","params":{}}]"#,
    );
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.is_empty(),
        "a batch of notifications has no reply: {reply:?}"
    );
    assert_eq!(server.metrics()[0].jsonrpc_calls.get(), calls_before + 3);
    common::stop(server);
}

#[test]
fn jsonrpc_malformed_bodies_get_errors() {
    let (server, addr) = server();
    let cases: &[(&[u8], i64, serde_json::Value)] = &[
        (b"{not json", -32700, serde_json::Value::Null),
        (b"", -32700, serde_json::Value::Null),
        (b"[]", -32600, serde_json::Value::Null),
        (b"42", -32600, serde_json::Value::Null),
        (
            br#"{"method":"Arith.Mul","params":{},"id":1}"#,
            -32600,
            1.into(),
        ),
        (
            br#"{"jsonrpc":"1.0","method":"Arith.Mul","params":{},"id":1}"#,
            -32600,
            1.into(),
        ),
        (
            br#"{"jsonrpc":"2.0","method":5,"params":{},"id":1}"#,
            -32600,
            1.into(),
        ),
        (br#"{"jsonrpc":"2.0","params":{},"id":1}"#, -32600, 1.into()),
        (
            br#"{"jsonrpc":"2.0","method":"Arith.Mul","params":{},"id":[1]}"#,
            -32600,
            serde_json::Value::Null,
        ),
        (
            br#"{"jsonrpc":"2.0","method":"Mul","params":{},"id":2}"#,
            -32601,
            2.into(),
        ),
        (
            br#"{"jsonrpc":"2.0","method":".Mul","params":{},"id":2}"#,
            -32601,
            2.into(),
        ),
        (
            br#"{"jsonrpc":"2.0","method":"Arith.","params":{},"id":2}"#,
            -32601,
            2.into(),
        ),
        (
            br#"{"jsonrpc":"2.0","method":"Arith.Mul","id":3}"#,
            -32602,
            3.into(),
        ),
        // A notification without params: rpcx crashes; percore answers.
        (
            br#"{"jsonrpc":"2.0","method":"Arith.Mul"}"#,
            -32602,
            serde_json::Value::Null,
        ),
        (
            br#"{"jsonrpc":"2.0","method":"Arith.Mul","params":"x","id":4}"#,
            -32603,
            4.into(),
        ),
    ];
    for (body, code, id) in cases {
        let what = String::from_utf8_lossy(body);
        let reply = jsonrpc(addr, body);
        assert_eq!(reply.status, 200, "{what}");
        let v = reply.json();
        assert_eq!(v["jsonrpc"], "2.0", "{what}: {v}");
        assert_eq!(v["error"]["code"], *code, "{what}: {v}");
        assert!(v["error"]["message"].is_string(), "{what}: {v}");
        assert_eq!(v["id"], *id, "{what}: {v}");
    }
    // A malformed element of a batch spoils only itself.
    let reply = jsonrpc(
        addr,
        br#"[1,{"jsonrpc":"2.0","method":"Arith.Mul","params":{"A":3,"B":3},"id":9}]"#,
    );
    let v = reply.json();
    assert_eq!(v[0]["error"]["code"], -32600);
    assert_eq!(v[1]["result"]["C"], 9);
    common::stop(server);
}

#[test]
fn jsonrpc_is_chosen_per_connection_by_its_first_request() {
    let (server, addr) = server();
    let mut s = connect(addr);
    let body = r#"{"jsonrpc":"2.0","method":"Arith.Mul","params":{"A":4,"B":5},"id":1}"#;
    let with = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-JSONRPC-2.0: true\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let without = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(with.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut s).json()["result"]["C"], 20);
    s.write_all(without.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut s).json()["result"]["C"], 20);
    common::stop(server);
}

#[test]
fn oversized_body_is_refused_with_413() {
    let server = common::start_with(1, |c| c.gateway.max_body_bytes = 1024);
    let addr = server.local_addrs()[0];
    let headers = [
        ("X-RPCX-ServicePath", "Echo"),
        ("X-RPCX-ServiceMethod", "Echo"),
        ("X-RPCX-SerializeType", "0"),
    ];
    let big = vec![b'x'; 4096];
    let reply = curl(addr, "/", &headers, Some(&big), &[]);
    assert_eq!(reply.status, 413, "{reply:?}");
    // The same size chunked is refused while de-chunking.
    let mut chunked = headers.to_vec();
    chunked.push(("Transfer-Encoding", "chunked"));
    let reply = curl(addr, "/", &chunked, Some(&big), &[]);
    assert_eq!(reply.status, 413, "{reply:?}");
    // At the limit it is served.
    let reply = curl(addr, "/", &headers, Some(&big[..1024]), &[]);
    reply.assert_ok();
    assert_eq!(reply.body.len(), 1024);
    // A declared length over the limit is refused before any body is sent, and closes.
    let mut s = connect(addr);
    s.write_all(b"POST /Echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(common::closed_without_reply(&mut s));
    assert_eq!(
        server.metrics()[0].bad_http[percore::metrics::BadHttp::BodyTooLarge as usize].get(),
        3,
        "body_too_large counted"
    );
    common::stop(server);
}

#[test]
fn header_limits_and_garbage_get_4xx_and_close() {
    let server = common::start_with(1, |c| {
        c.gateway.max_headers = 16;
        c.gateway.max_header_bytes = 2048;
    });
    let addr = server.local_addrs()[0];
    let many: Vec<(String, String)> = (0..20).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(curl(addr, "/Arith", &many, None, &[]).status, 431);
    let long = "v".repeat(4096);
    assert_eq!(
        curl(addr, "/Arith", &[("X-Long", &long)], None, &[]).status,
        431
    );

    let refused = |raw: &[u8]| {
        let mut s = connect(addr);
        s.write_all(raw).unwrap();
        let reply = read_reply(&mut s);
        assert!(
            common::closed_without_reply(&mut s),
            "closed after {}",
            reply.status
        );
        reply.status
    };
    assert_eq!(refused(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"), 400);
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        400
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        400
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
        501
    );
    // A head that never ends is refused once it passes the limit, not buffered.
    let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 4096));
    assert_eq!(refused(&endless), 431);
    assert!(server.metrics()[0].bad_http_total() >= 7);
    common::stop(server);
}

#[test]
fn gateway_can_be_disabled() {
    let server = common::start_with(1, |c| c.gateway.enabled = false);
    let addr = server.local_addrs()[0];
    let reply = curl(
        addr,
        "/Arith",
        &[("X-RPCX-ServiceMethod", "Mul")],
        None,
        &[],
    );
    assert_eq!(reply.status, 404);
    common::stop(server);
}

#[test]
fn rpcx_frames_still_work_next_to_http() {
    let (server, addr) = server();
    let mut s = connect(addr);
    common::send(&mut s, &common::request(3, 1, "Arith", "Mul", MUL_ARGS));
    let reply = common::read_frame(&mut s);
    assert_eq!(reply.payload, MUL_REPLY);
    let http = curl(
        addr,
        "/Arith",
        &[
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-SerializeType", "3"),
        ],
        Some(MUL_ARGS),
        &[],
    );
    assert_eq!(http.body, MUL_REPLY);
    common::stop(server);
}

#[test]
fn http10_expect_continue_and_timeouts() {
    let server = common::start_with(1, |c| {
        c.gateway.idle_timeout = std::time::Duration::from_millis(200);
        c.gateway.request_timeout = std::time::Duration::from_millis(200);
    });
    let addr = server.local_addrs()[0];
    let call = "X-RPCX-ServiceMethod: Mul\r\nX-RPCX-SerializeType: 3\r\nContent-Length: 7\r\n";

    // HTTP/1.0 keeps the connection only when asked, and then says so.
    let mut s = connect(addr);
    for _ in 0..2 {
        s.write_all(
            format!("POST /Arith HTTP/1.0\r\nConnection: keep-alive\r\n{call}\r\n").as_bytes(),
        )
        .unwrap();
        s.write_all(MUL_ARGS).unwrap();
        let reply = read_reply(&mut s);
        assert_eq!(reply.body, MUL_REPLY);
        assert_eq!(reply.header("Connection"), Some("keep-alive"));
    }
    let mut s = connect(addr);
    s.write_all(format!("POST /Arith HTTP/1.0\r\n{call}\r\n").as_bytes())
        .unwrap();
    s.write_all(MUL_ARGS).unwrap();
    assert_eq!(read_reply(&mut s).body, MUL_REPLY);
    assert!(common::closed_without_reply(&mut s));
    let reply = curl(
        addr,
        "/Arith",
        &[
            ("X-RPCX-ServiceMethod", "Mul"),
            ("X-RPCX-SerializeType", "3"),
        ],
        Some(MUL_ARGS),
        &["--http1.0"],
    );
    assert_eq!(reply.body, MUL_REPLY);

    // Expect: 100-continue gets its interim reply before the body is sent.
    let mut s = connect(addr);
    s.write_all(format!("POST /Arith HTTP/1.1\r\nExpect: 100-continue\r\n{call}\r\n").as_bytes())
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(MUL_ARGS).unwrap();
    assert_eq!(read_reply(&mut s).body, MUL_REPLY);

    // An idle keep-alive connection is closed; a request that stalls half-way gets 408.
    assert!(common::closed_without_reply(&mut s));
    let mut s = connect(addr);
    s.write_all(b"POST /Arith HTTP/1.1\r\nX-RPCX-Ser").unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(reply.status, 408);
    assert!(common::closed_without_reply(&mut s));
    common::stop(server);
}

#[test]
fn delayed_replies_keep_their_order_and_honour_server_timeout() {
    let server = common::start_with(1, |c| {
        common::hello_delay(c, std::time::Duration::from_millis(50));
    });
    let addr = server.local_addrs()[0];
    let hello = |meta: &str| {
        format!(
            "POST /Hello HTTP/1.1\r\nX-RPCX-ServiceMethod: Say\r\nX-RPCX-SerializeType: 2\r\n\
             X-RPCX-Meta: {meta}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mul = "POST /Arith HTTP/1.1\r\nX-RPCX-ServiceMethod: Mul\r\nX-RPCX-SerializeType: 3\r\n\
               Content-Length: 7\r\n\r\n";
    let mut s = connect(addr);
    let mut batch = hello("").into_bytes();
    batch.extend_from_slice(mul.as_bytes());
    batch.extend_from_slice(MUL_ARGS);
    batch.extend_from_slice(hello("__ServerTimeout=1").as_bytes());
    s.write_all(&batch).unwrap();
    let first = read_reply(&mut s);
    first.assert_ok();
    assert_eq!(first.header("X-RPCX-ServicePath"), Some("Hello"));
    assert!(!first.body.is_empty());
    let second = read_reply(&mut s);
    assert_eq!(second.body, MUL_REPLY);
    read_reply(&mut s).assert_error(500, "context deadline exceeded");
    common::stop(server);
}
