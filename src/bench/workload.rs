//! The calls the load generator can make, each with its args prepared once and a check of the
//! reply that allocates nothing.

use std::fmt;
use std::str::FromStr;

use prost::Message as _;

use crate::bench_message::BenchmarkMessage;
use crate::builtin::{ArithArgs, ArithReply};
use crate::client::ReplyView;
use crate::codec::{Payload, SerializeType};

/// Which call to load a server with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum CallKind {
    /// `Arith.Mul` with `{A: 6, B: 7}`; OK when `C == 42`.
    ArithMul,
    /// `Echo.Echo` with `--payload-size` bytes; OK when the same bytes come back.
    EchoEcho,
    /// `Hello.Say` with rpcx-benchmark's `BenchmarkMessage`; OK when `field1 == "OK"`.
    HelloSay,
}

impl CallKind {
    /// `Service.Method`.
    pub fn name(self) -> &'static str {
        match self {
            CallKind::ArithMul => "Arith.Mul",
            CallKind::EchoEcho => "Echo.Echo",
            CallKind::HelloSay => "Hello.Say",
        }
    }

    /// (service, method).
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            CallKind::ArithMul => ("Arith", "Mul"),
            CallKind::EchoEcho => ("Echo", "Echo"),
            CallKind::HelloSay => ("Hello", "Say"),
        }
    }

    /// The codec used when none is given: MsgPack for Arith (the Go client's default),
    /// protobuf for Hello (rpcx-benchmark's), raw bytes for Echo.
    pub fn default_codec(self) -> SerializeType {
        match self {
            CallKind::ArithMul => SerializeType::MsgPack,
            CallKind::EchoEcho => SerializeType::Raw,
            CallKind::HelloSay => SerializeType::Protobuf,
        }
    }
}

impl fmt::Display for CallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CallKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Arith.Mul" => Ok(CallKind::ArithMul),
            "Echo.Echo" => Ok(CallKind::EchoEcho),
            "Hello.Say" => Ok(CallKind::HelloSay),
            other => Err(format!(
                "unknown call {other:?} (expected Arith.Mul, Echo.Echo or Hello.Say)"
            )),
        }
    }
}

const ARITH: ArithArgs = ArithArgs { a: 6, b: 7 };

/// A call's encoded args and how to check its reply.
pub struct Workload {
    /// The call.
    pub kind: CallKind,
    /// Codec on the wire.
    pub codec: SerializeType,
    /// The encoded args, sent unchanged by every call.
    pub payload: Vec<u8>,
}

impl Workload {
    /// Prepares the args of `kind` in `codec` (`payload_size` is Echo's payload length).
    pub fn new(
        kind: CallKind,
        codec: SerializeType,
        payload_size: usize,
    ) -> Result<Workload, String> {
        let mut payload = Vec::new();
        match kind {
            CallKind::ArithMul => ARITH
                .encode(codec, &mut payload)
                .map_err(|e| format!("Arith.Mul args: {e}"))?,
            CallKind::EchoEcho => {
                // Any bytes: the server returns them untouched whatever the codec says.
                payload.extend((0..payload_size).map(|i| b'a' + (i % 26) as u8));
            }
            CallKind::HelloSay => {
                if codec != SerializeType::Protobuf {
                    return Err(format!(
                        "Hello.Say needs --codec protobuf, not {}",
                        codec.name()
                    ));
                }
                BenchmarkMessage::prepared()
                    .encode(&mut payload)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(Workload {
            kind,
            codec,
            payload,
        })
    }

    /// Whether a reply is the right answer.
    pub fn check(&self, reply: &ReplyView<'_>) -> bool {
        match self.kind {
            CallKind::ArithMul => ArithReply::decode(self.codec, reply.payload)
                .is_ok_and(|r| r.c == ARITH.a * ARITH.b),
            CallKind::EchoEcho => reply.payload == self.payload.as_slice(),
            CallKind::HelloSay => field1_is_ok(reply.payload),
        }
    }
}

/// Whether top-level protobuf field 1 (a string) is "OK", read in place.
fn field1_is_ok(mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        let Some((key, n)) = varint(buf) else {
            return false;
        };
        buf = &buf[n..];
        let len = match key & 7 {
            0 => match varint(buf) {
                Some((_, n)) => n,
                None => return false,
            },
            1 => 8,
            2 => {
                let Some((len, n)) = varint(buf) else {
                    return false;
                };
                if key >> 3 == 1 {
                    return buf.get(n..n + len as usize) == Some(b"OK");
                }
                n + len as usize
            }
            5 => 4,
            _ => return false,
        };
        let Some(rest) = buf.get(len..) else {
            return false;
        };
        buf = rest;
    }
    false
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_reply_check_reads_field_1() {
        let mut msg = BenchmarkMessage::prepared();
        assert!(!field1_is_ok(&msg.encode_to_vec()));
        msg.field1 = "OK".into();
        assert!(field1_is_ok(&msg.encode_to_vec()));
        assert!(!field1_is_ok(&[0x0a, 0x05, b'O']));
    }
}
