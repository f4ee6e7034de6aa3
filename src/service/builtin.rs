//! The built-in services, and [`Builtin`], the registry of the default `percore` binary.
//!
//! | service.method | args → reply |
//! |---|---|
//! | `Arith.Mul` | `{A, B}` → `{C: A*B}` |
//! | `Arith.Add` | `{A, B}` → `{C: A+B}` |
//! | `Arith.Say` | string `s` → `"hello " + s` |
//! | `Echo.Echo` | any payload, returned unchanged |
//! | `Hello.Say` | rpcx-benchmark's protobuf `BenchmarkMessage` with field1 = "OK", field2 = 100 |
//!
//! Arith arithmetic **wraps** on overflow (two's complement, 64-bit for JSON and MsgPack, 32-bit
//! for protobuf's int32 fields), which is what Go's `int` and `int32` do in rpcx's own example
//! server; it never panics. Arith also mirrors each request metadata entry `k=v` back as
//! `echo-k=v`, as the reference server that recorded `tests/data/rpcx-go-frames.json` does, so
//! clients can check metadata round trips.
//!
//! They are written as `raw` handlers by hand (not with [`service!`](crate::service!)) to keep
//! their codec fast paths (MsgPack Arith args without serde, protobuf `Hello.Say` rewritten in
//! place); they compose into a user's registry like any other service.

use std::rc::Rc;
use std::time::Duration;

use super::{CoreInfo, Outcome, Reply, Request, Service, ServiceError};
use crate::codec::{self, CodecError, Payload, SerializeType};

crate::registry! {
    /// The default binary's services: Arith, Echo and Hello.
    pub struct Builtin {
        arith: "Arith" => Arith,
        echo: "Echo" => Echo,
        hello: "Hello" => Hello,
    }
}

/// `Arith`: `Mul`, `Add` and `Say`, as in rpcx's examples. No state, no config.
#[derive(Debug, Default)]
pub struct Arith;

impl Service for Arith {
    type Config = NoConfig;
    const METHODS: &'static [&'static str] = &["Mul", "Add", "Say"];

    fn new(_: &CoreInfo, _: &NoConfig) -> Arith {
        Arith
    }

    #[inline]
    fn lookup(method: &str) -> Option<usize> {
        match method {
            "Mul" => Some(0),
            "Add" => Some(1),
            "Say" => Some(2),
            _ => None,
        }
    }

    // Inlined into the connection loop with the registry's dispatch (a few dozen instructions
    // of call frame and argument passing per call otherwise).
    #[inline(always)]
    fn call(
        self: &Rc<Self>,
        method: usize,
        req: &Request<'_>,
        reply: &mut Reply<'_>,
    ) -> Result<Outcome, ServiceError> {
        match method {
            0 => arith(req, reply, |a| a.a.wrapping_mul(a.b)),
            1 => arith(req, reply, |a| a.a.wrapping_add(a.b)),
            _ => typed(req, reply, |s: Text| Ok(Text(format!("hello {}", s.0)))),
        }
    }
}

/// `Echo.Echo`: the payload back, whatever its codec.
#[derive(Debug, Default)]
pub struct Echo;

impl Service for Echo {
    type Config = NoConfig;
    const METHODS: &'static [&'static str] = &["Echo"];

    fn new(_: &CoreInfo, _: &NoConfig) -> Echo {
        Echo
    }

    fn call(
        self: &Rc<Self>,
        _: usize,
        req: &Request<'_>,
        reply: &mut Reply<'_>,
    ) -> Result<Outcome, ServiceError> {
        reply.payload().extend_from_slice(req.payload);
        Ok(Outcome::Ready)
    }
}

/// `Hello.Say`, rpcx-benchmark's service; `[services.Hello] delay` adds simulated work.
#[derive(Debug, Default)]
pub struct Hello {
    delay: Duration,
}

/// `[services.Hello]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HelloConfig {
    /// Simulated work added to each `Hello.Say` call (rpcx-benchmark's `delay`), e.g. "10ms";
    /// the reply is sent after it without holding up other calls.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

impl Service for Hello {
    type Config = HelloConfig;
    const METHODS: &'static [&'static str] = &["Say"];

    fn new(_: &CoreInfo, config: &HelloConfig) -> Hello {
        Hello {
            delay: config.delay,
        }
    }

    fn call(
        self: &Rc<Self>,
        _: usize,
        req: &Request<'_>,
        reply: &mut Reply<'_>,
    ) -> Result<Outcome, ServiceError> {
        hello_say(self.delay, req, reply)
    }
}

/// The config of a service that has none: an empty section, or none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Decodes `A` with the request's codec, runs `f`, encodes its `R` with the same codec.
pub fn typed<A: Payload, R: Payload>(
    req: &Request<'_>,
    reply: &mut Reply<'_>,
    f: impl FnOnce(A) -> Result<R, ServiceError>,
) -> Result<Outcome, ServiceError> {
    let args = A::decode(req.codec, req.payload)?;
    let value = f(args)?;
    value.encode(req.codec, reply.payload())?;
    Ok(Outcome::Ready)
}

/// Arguments of `Arith.Mul` and `Arith.Add`: Go's `Args{A, B int}`. Missing fields are zero,
/// as in Go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ArithArgs {
    #[serde(rename = "A")]
    pub a: i64,
    #[serde(rename = "B")]
    pub b: i64,
}

/// Reply of `Arith.Mul` and `Arith.Add`: Go's `Reply{C int}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ArithReply {
    #[serde(rename = "C")]
    pub c: i64,
}

/// Protobuf form of [`ArithArgs`]: `int32 A = 1; int32 B = 2;`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArithArgsPb {
    #[prost(int32, tag = "1")]
    pub a: i32,
    #[prost(int32, tag = "2")]
    pub b: i32,
}

/// Protobuf form of [`ArithReply`]: `int32 C = 1;`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArithReplyPb {
    #[prost(int32, tag = "1")]
    pub c: i32,
}

impl Payload for ArithArgs {
    fn decode(codec: SerializeType, bytes: &[u8]) -> Result<Self, CodecError> {
        match codec {
            SerializeType::Protobuf => {
                let pb: ArithArgsPb = codec::decode_proto(bytes)?;
                Ok(ArithArgs {
                    a: pb.a.into(),
                    b: pb.b.into(),
                })
            }
            SerializeType::MsgPack => match msgpack_args(bytes) {
                Some(args) => Ok(args),
                None => codec::decode_serde_or_default(SerializeType::MsgPack, bytes, "Arith args"),
            },
            other => codec::decode_serde_or_default(other, bytes, "Arith args"),
        }
    }

    fn encode(&self, codec: SerializeType, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match codec {
            SerializeType::Protobuf => {
                // int32 on the wire: keep the low 32 bits, as Go's int32 does.
                codec::encode_proto(
                    &ArithArgsPb {
                        a: self.a as i32,
                        b: self.b as i32,
                    },
                    out,
                );
                Ok(())
            }
            other => codec::encode_serde(self, other, out, "Arith args"),
        }
    }
}

impl Payload for ArithReply {
    fn decode(codec: SerializeType, bytes: &[u8]) -> Result<Self, CodecError> {
        match codec {
            SerializeType::Protobuf => {
                let pb: ArithReplyPb = codec::decode_proto(bytes)?;
                Ok(ArithReply { c: pb.c.into() })
            }
            other => codec::decode_serde(other, bytes, "Arith reply"),
        }
    }

    #[inline]
    fn encode(&self, codec: SerializeType, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match codec {
            SerializeType::Protobuf => {
                // Wrapping to 32 bits gives the same low bits as Go's int32 arithmetic.
                codec::encode_proto(&ArithReplyPb { c: self.c as i32 }, out);
                Ok(())
            }
            SerializeType::MsgPack => {
                // What rmp-serde writes for `{C: c}` (a one-entry map, the integer in its
                // smallest form), without serde: ~100 fewer instructions per call.
                msgpack_reply(self.c, out);
                Ok(())
            }
            other => codec::encode_serde(self, other, out, "Arith reply"),
        }
    }
}

/// The MsgPack args as Go's encoder writes them (a fixmap of the fixstr keys `A` and `B`, each at
/// most once, with integer values) decoded without serde, which costs ~300 instructions per call
/// here (benches/instructions.sh). Anything else is `None` and left to serde, so the two agree
/// on every input (a property test checks it).
#[inline]
fn msgpack_args(bytes: &[u8]) -> Option<ArithArgs> {
    msgpack_args_small(bytes).or_else(|| msgpack_args_any(bytes))
}

/// What Go's encoder writes for small numbers: `{"A": fixint, "B": fixint}`, 7 bytes, compared
/// as two overlapping words. The common case of [`msgpack_args`], inlined apart from the rest so
/// its answer stays in registers.
#[inline(always)]
fn msgpack_args_small(bytes: &[u8]) -> Option<ArithArgs> {
    if let Ok(seven) = <[u8; 7]>::try_from(bytes) {
        let front = u32::from_le_bytes([seven[0], seven[1], seven[2], seven[3]]);
        let back = u32::from_le_bytes([seven[3], seven[4], seven[5], seven[6]]);
        let (a, b) = (seven[3], seven[6]);
        if front & 0x00ff_ffff == u32::from_le_bytes([0x82, 0xa1, b'A', 0])
            && back & 0x00ff_ff00 == u32::from_le_bytes([0, 0xa1, b'B', 0])
            && fixint(a)
            && fixint(b)
        {
            return Some(ArithArgs {
                a: i64::from(a as i8),
                b: i64::from(b as i8),
            });
        }
    }
    None
}

/// A MsgPack positive (0x00..=0x7f) or negative (0xe0..=0xff) fixint: its value is the byte
/// as an `i8`.
#[inline]
fn fixint(b: u8) -> bool {
    !(0x80..0xe0).contains(&b)
}

fn msgpack_args_any(bytes: &[u8]) -> Option<ArithArgs> {
    let (&first, mut rest) = bytes.split_first()?;
    if first & 0xf0 != 0x80 {
        return None;
    }
    let mut args = ArithArgs::default();
    let mut seen = [false; 2];
    for _ in 0..first & 0x0f {
        let (key, after) = rest.split_first_chunk::<2>()?;
        let slot = match key {
            [0xa1, b'A'] => 0,
            [0xa1, b'B'] => 1,
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            // A repeated field: serde's error, not a silent last-wins.
            return None;
        }
        let (value, after) = msgpack_int(after)?;
        if slot == 0 {
            args.a = value;
        } else {
            args.b = value;
        }
        rest = after;
    }
    rest.is_empty().then_some(args)
}

/// What rmp-serde writes for `ArithReply { c }` (a one-entry map, the integer in its smallest
/// form), without serde.
#[inline(always)]
fn msgpack_reply(c: i64, out: &mut Vec<u8>) {
    let mut bytes = [0u8; 16];
    bytes[..3].copy_from_slice(&[0x81, 0xa1, b'C']);
    let mut int = [0u8; 9];
    let n = msgpack_int_into(c, &mut int);
    bytes[3..12].copy_from_slice(&int);
    crate::buf::append_small(out, bytes, 3 + n);
}

/// Writes `v` as MsgPack in its smallest form into the front of `out` (9 bytes at most) and
/// says how many bytes it took, as `rmp::encode::write_sint` writes it (a property test checks
/// they agree), without its generic writer.
#[inline]
fn msgpack_int_into(v: i64, out: &mut [u8; 9]) -> usize {
    // Each arm writes a constant number of bytes: no call to memcpy.
    fn put<const N: usize>(out: &mut [u8; 9], marker: u8, bytes: [u8; N]) -> usize {
        out[0] = marker;
        out[1..=N].copy_from_slice(&bytes);
        1 + N
    }
    match v {
        -32..=0x7f => {
            out[0] = v as u8;
            1
        }
        0x80..=0xff => put(out, 0xcc, [v as u8]),
        0x100..=0xffff => put(out, 0xcd, (v as u16).to_be_bytes()),
        0x1_0000..=0xffff_ffff => put(out, 0xce, (v as u32).to_be_bytes()),
        0x1_0000_0000.. => put(out, 0xcf, (v as u64).to_be_bytes()),
        -128..=-33 => put(out, 0xd0, [v as u8]),
        -32768..=-129 => put(out, 0xd1, (v as i16).to_be_bytes()),
        -2_147_483_648..=-32769 => put(out, 0xd2, (v as i32).to_be_bytes()),
        _ => put(out, 0xd3, v.to_be_bytes()),
    }
}

/// One MsgPack integer that fits an `i64`, and the bytes after it.
fn msgpack_int(bytes: &[u8]) -> Option<(i64, &[u8])> {
    fn be<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
        bytes.split_first_chunk::<N>().map(|(v, rest)| (*v, rest))
    }
    let (&marker, rest) = bytes.split_first()?;
    Some(match marker {
        0x00..=0x7f => (i64::from(marker), rest),
        0xe0..=0xff => (i64::from(marker as i8), rest),
        0xcc => be::<1>(rest).map(|(v, r)| (i64::from(v[0]), r))?,
        0xcd => be::<2>(rest).map(|(v, r)| (i64::from(u16::from_be_bytes(v)), r))?,
        0xce => be::<4>(rest).map(|(v, r)| (i64::from(u32::from_be_bytes(v)), r))?,
        0xcf => be::<8>(rest)
            .and_then(|(v, r)| Some((i64::try_from(u64::from_be_bytes(v)).ok()?, r)))?,
        0xd0 => be::<1>(rest).map(|(v, r)| (i64::from(v[0] as i8), r))?,
        0xd1 => be::<2>(rest).map(|(v, r)| (i64::from(i16::from_be_bytes(v)), r))?,
        0xd2 => be::<4>(rest).map(|(v, r)| (i64::from(i32::from_be_bytes(v)), r))?,
        0xd3 => be::<8>(rest).map(|(v, r)| (i64::from_be_bytes(v), r))?,
        _ => return None,
    })
}

#[inline(always)]
fn arith(
    req: &Request<'_>,
    reply: &mut Reply<'_>,
    op: impl FnOnce(ArithArgs) -> i64,
) -> Result<Outcome, ServiceError> {
    // Every key is mirrored, reserved ones (`__ServerTimeout`, ...) too, so a client can see
    // exactly what it sent.
    if !req.metadata.is_empty() {
        for (k, v) in req.metadata.iter() {
            push_meta_echo(reply.meta_block(), k, v);
        }
    }
    let small = match req.codec {
        SerializeType::MsgPack => msgpack_args_small(req.payload),
        _ => None,
    };
    let args = match small {
        Some(args) => args,
        None => ArithArgs::decode(req.codec, req.payload)?,
    };
    let c = op(args);
    match req.codec {
        SerializeType::MsgPack => msgpack_reply(c, reply.payload()),
        codec => ArithReply { c }.encode(codec, reply.payload())?,
    }
    Ok(Outcome::Ready)
}

fn push_meta_echo(block: &mut Vec<u8>, key: &str, value: &str) {
    const PREFIX: &[u8] = b"echo-";
    block.extend_from_slice(&((PREFIX.len() + key.len()) as u32).to_be_bytes());
    block.extend_from_slice(PREFIX);
    block.extend_from_slice(key.as_bytes());
    block.extend_from_slice(&(value.len() as u32).to_be_bytes());
    block.extend_from_slice(value.as_bytes());
}

/// A string payload (`Arith.Say`): a JSON or MsgPack string, raw UTF-8 bytes, or in protobuf
/// a message whose field 1 is the string (like `google.protobuf.StringValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

#[derive(Clone, PartialEq, prost::Message)]
struct TextPb {
    #[prost(string, tag = "1")]
    value: String,
}

impl Payload for Text {
    fn decode(codec: SerializeType, bytes: &[u8]) -> Result<Self, CodecError> {
        match codec {
            SerializeType::Raw => std::str::from_utf8(bytes)
                .map(|s| Text(s.to_owned()))
                .map_err(|_| CodecError::Decode {
                    codec: "raw",
                    reason: "not UTF-8".into(),
                }),
            SerializeType::Protobuf => Ok(Text(codec::decode_proto::<TextPb>(bytes)?.value)),
            other => Ok(Text(codec::decode_serde_or_default(
                other, bytes, "a string",
            )?)),
        }
    }

    fn encode(&self, codec: SerializeType, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match codec {
            SerializeType::Raw => {
                out.extend_from_slice(self.0.as_bytes());
                Ok(())
            }
            SerializeType::Protobuf => {
                codec::encode_proto(
                    &TextPb {
                        value: self.0.clone(),
                    },
                    out,
                );
                Ok(())
            }
            other => codec::encode_serde(&self.0, other, out, "a string"),
        }
    }
}

/// `Hello.Say`: rewrites field 1 to "OK" and field 2 to 100 and keeps every other field as it
/// came, without building the 39-field message (PROTOCOL.md §11).
fn hello_say(
    delay: Duration,
    req: &Request<'_>,
    reply: &mut Reply<'_>,
) -> Result<Outcome, ServiceError> {
    if req.codec != SerializeType::Protobuf {
        return Err(CodecError::Unsupported {
            what: "Hello.Say's BenchmarkMessage",
            codec: req.codec.name(),
        }
        .into());
    }
    crate::bench_message::rewrite_say(req.payload, reply.payload())?;
    if delay.is_zero() {
        Ok(Outcome::Ready)
    } else {
        Ok(Outcome::After(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Metadata;
    use crate::service::{LookupError, Registry};
    use proptest::prelude::*;

    /// One integer in a MsgPack form chosen by `form` (not always the smallest), as Go's and
    /// other encoders may write it.
    fn msgpack_int_as(value: i64, form: u8, out: &mut Vec<u8>) {
        match form % 5 {
            0 => {
                rmp::encode::write_sint(out, value).unwrap();
            }
            1 => {
                rmp::encode::write_i64(out, value).unwrap();
            }
            2 if value >= 0 => {
                rmp::encode::write_u64(out, value as u64).unwrap();
            }
            3 if i32::try_from(value).is_ok() => {
                rmp::encode::write_i32(out, value as i32).unwrap();
            }
            _ => {
                rmp::encode::write_f64(out, value as f64).unwrap();
            }
        }
    }

    proptest! {
        /// The serde-free MsgPack decoder of Arith args agrees with serde wherever it answers,
        /// and answers for every map of `A`/`B` integers.
        #[test]
        fn arith_args_fast_path_agrees_with_serde(
            entries in proptest::collection::vec((0u8..4, any::<i64>(), any::<u8>()), 0..4),
            noise in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut bytes = Vec::new();
            rmp::encode::write_map_len(&mut bytes, entries.len() as u32).unwrap();
            for &(key, value, form) in &entries {
                let key = ["A", "B", "C", "a"][key as usize];
                rmp::encode::write_str(&mut bytes, key).unwrap();
                msgpack_int_as(value, form, &mut bytes);
            }
            bytes.extend_from_slice(&noise);
            let serde: Result<ArithArgs, _> =
                codec::decode_serde_or_default(SerializeType::MsgPack, &bytes, "Arith args");
            match msgpack_args(&bytes) {
                Some(fast) => prop_assert_eq!(Ok(fast), serde.map_err(|e| e.to_string())),
                None => {
                    let simple = noise.is_empty()
                        && entries.iter().all(|&(k, _, f)| k < 2 && f % 5 < 2)
                        && entries.iter().filter(|e| e.0 == 0).count() < 2
                        && entries.iter().filter(|e| e.0 == 1).count() < 2;
                    prop_assert!(!simple, "the fast path gave up on {bytes:02x?}");
                }
            }
        }

        /// Arith replies in MsgPack are byte for byte what rmp-serde writes.
        #[test]
        fn arith_reply_fast_encode_matches_serde(
            c in prop_oneof![any::<i64>(), -70_000i64..70_000, any::<i32>().prop_map(i64::from)]
        ) {
            let mut fast = Vec::new();
            ArithReply { c }.encode(SerializeType::MsgPack, &mut fast).unwrap();
            let mut serde = Vec::new();
            codec::encode_serde(&ArithReply { c }, SerializeType::MsgPack, &mut serde, "r").unwrap();
            prop_assert_eq!(fast, serde);
        }
    }

    fn call(
        service: &str,
        method: &str,
        codec: SerializeType,
        payload: &[u8],
    ) -> (Result<Outcome, ServiceError>, Vec<u8>, Vec<u8>) {
        let core = CoreInfo {
            index: 0,
            cpu: 0,
            cores: 1,
        };
        let registry = Builtin::build(&core, &toml::Table::new()).unwrap();
        let (mut meta, mut out) = (Vec::new(), Vec::new());
        let req = Request {
            codec,
            metadata: Metadata::default(),
            payload,
        };
        let id = Builtin::lookup(service, method).unwrap();
        let result = registry.call(id, &req, &mut Reply::new(&mut meta, &mut out));
        (result, meta, out)
    }

    #[test]
    fn lookup_tells_service_from_method() {
        let mul = Builtin::lookup("Arith", "Mul").unwrap();
        assert_eq!((mul.service, mul.method, mul.index), (0, 0, 0));
        assert_eq!(Builtin::lookup("Arith", "Div"), Err(LookupError::NoMethod));
        assert_eq!(Builtin::lookup("Nope", "Mul"), Err(LookupError::NoService));
        assert_eq!(
            LookupError::NoMethod.text("Arith", "Div"),
            "rpcx: can't find method Div"
        );
        for (i, (s, m)) in Builtin::method_names().into_iter().enumerate() {
            assert_eq!(Builtin::lookup(s, m).unwrap().index as usize, i);
        }
        assert_eq!(Builtin::method_names().len(), 5);
    }

    #[test]
    fn sections_name_registered_services_and_their_keys() {
        let mut sections = toml::Table::new();
        sections.insert(
            "Hello".into(),
            toml::Value::Table(toml::from_str("delay = \"5ms\"").unwrap()),
        );
        assert!(Builtin::check(&sections).is_ok());
        let mut typo = toml::Table::new();
        typo.insert(
            "Hello".into(),
            toml::Value::Table(toml::from_str("dealy = \"5ms\"").unwrap()),
        );
        let err = Builtin::check(&typo).unwrap_err();
        assert_eq!(err.key, "services.Hello");
        assert!(err.message.contains("dealy"), "{err}");
        let mut unknown = toml::Table::new();
        unknown.insert("Cart".into(), toml::Value::Table(toml::Table::new()));
        assert!(
            Builtin::check(&unknown)
                .unwrap_err()
                .to_string()
                .contains("Cart")
        );
    }

    #[test]
    fn arith_wraps_instead_of_panicking() {
        let (r, _, out) = call(
            "Arith",
            "Mul",
            SerializeType::Json,
            br#"{"A":9223372036854775807,"B":2}"#,
        );
        assert!(matches!(r, Ok(Outcome::Ready)));
        assert_eq!(out, br#"{"C":-2}"#);
        let (_, _, out) = call(
            "Arith",
            "Add",
            SerializeType::Json,
            br#"{"A":9223372036854775807,"B":1}"#,
        );
        assert_eq!(out, br#"{"C":-9223372036854775808}"#);
    }

    #[test]
    fn arith_say_and_echo() {
        let (_, _, out) = call("Arith", "Say", SerializeType::Json, br#""world""#);
        assert_eq!(out, br#""hello world""#);
        let (_, _, out) = call("Echo", "Echo", SerializeType::Raw, b"\x00\x01anything");
        assert_eq!(out, b"\x00\x01anything");
    }

    #[test]
    fn bad_args_are_an_error_not_a_panic() {
        let (r, _, _) = call("Arith", "Mul", SerializeType::MsgPack, b"\xc1");
        assert!(r.unwrap_err().0.contains("msgpack"));
        let (r, _, _) = call("Arith", "Mul", SerializeType::Raw, b"x");
        assert_eq!(r.unwrap_err().0, "Arith args cannot be carried as raw");
    }
}
