//! Payload serialization (rpcx serialize types) and gzip with a size cap.
//!
//! | type | name     | here                                                     |
//! |------|----------|----------------------------------------------------------|
//! | 0    | raw      | bytes as they are                                        |
//! | 1    | JSON     | serde_json                                               |
//! | 2    | protobuf | prost                                                    |
//! | 3    | MsgPack  | rmp-serde: structs encoded as maps keyed by field name, decoded from maps or arrays |
//! | 4    | Thrift   | not yet: `can not find codec for 4`, as rpcx says        |
//!
//! Encoders append to a caller-owned buffer and decoders borrow from the input, so a request
//! of plain numbers costs no allocation.

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// rpcx serialize types that percore has a codec for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SerializeType {
    Raw = 0,
    Json = 1,
    Protobuf = 2,
    MsgPack = 3,
}

impl SerializeType {
    /// The codec for a wire value, or `CodecError::NoCodec`.
    pub fn from_wire(value: u8) -> Result<SerializeType, CodecError> {
        match value {
            0 => Ok(SerializeType::Raw),
            1 => Ok(SerializeType::Json),
            2 => Ok(SerializeType::Protobuf),
            3 => Ok(SerializeType::MsgPack),
            other => Err(CodecError::NoCodec(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SerializeType::Raw => "raw",
            SerializeType::Json => "json",
            SerializeType::Protobuf => "protobuf",
            SerializeType::MsgPack => "msgpack",
        }
    }
}

impl std::str::FromStr for SerializeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "none" | "0" => Ok(SerializeType::Raw),
            "json" | "1" => Ok(SerializeType::Json),
            "protobuf" | "pb" | "2" => Ok(SerializeType::Protobuf),
            "msgpack" | "3" => Ok(SerializeType::MsgPack),
            _ => Err(format!(
                "unknown codec {s:?} (expected raw, json, protobuf or msgpack)"
            )),
        }
    }
}

/// Why a payload could not be encoded or decoded. The text goes to the client in
/// `__rpcx_error__`, so it names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// rpcx's exact text for a serialize type without a codec.
    #[error("can not find codec for {0}")]
    NoCodec(u8),
    /// The type has no form in this serialize type (for example a struct as raw bytes).
    #[error("{what} cannot be carried as {codec}")]
    Unsupported {
        what: &'static str,
        codec: &'static str,
    },
    #[error("bad {codec} payload: {reason}")]
    Decode { codec: &'static str, reason: String },
    #[error("cannot encode as {codec}: {reason}")]
    Encode { codec: &'static str, reason: String },
    /// A gzip payload inflates past the configured cap.
    #[error("decompressed payload is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad gzip payload: {0}")]
    Gzip(String),
}

/// A value that travels as an rpcx payload.
pub trait Payload: Sized {
    /// Reads a value from a payload of the given serialize type.
    fn decode(codec: SerializeType, bytes: &[u8]) -> Result<Self, CodecError>;
    /// Appends the value's encoding to `out`.
    fn encode(&self, codec: SerializeType, out: &mut Vec<u8>) -> Result<(), CodecError>;
}

/// Like [`decode_serde`], but a nil payload (MsgPack `c0`, JSON `null`, what Go sends for `nil`
/// args) or an empty one decodes to the zero value, as Go's server does.
pub fn decode_serde_or_default<T: DeserializeOwned + Default>(
    codec: SerializeType,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    let nil = match codec {
        SerializeType::MsgPack => bytes.is_empty() || bytes == [0xc0],
        SerializeType::Json => bytes.is_empty() || bytes.trim_ascii() == b"null",
        _ => false,
    };
    if nil {
        return Ok(T::default());
    }
    decode_serde(codec, bytes, what)
}

/// Decodes JSON or MsgPack with serde; other codecs are `Unsupported`.
pub fn decode_serde<T: DeserializeOwned>(
    codec: SerializeType,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    match codec {
        SerializeType::Json => serde_json::from_slice(bytes).map_err(|e| CodecError::Decode {
            codec: "json",
            reason: e.to_string(),
        }),
        SerializeType::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| CodecError::Decode {
            codec: "msgpack",
            reason: e.to_string(),
        }),
        other => Err(CodecError::Unsupported {
            what,
            codec: other.name(),
        }),
    }
}

/// Encodes JSON or MsgPack (map form, Go field names) with serde.
pub fn encode_serde<T: Serialize>(
    value: &T,
    codec: SerializeType,
    out: &mut Vec<u8>,
    what: &'static str,
) -> Result<(), CodecError> {
    match codec {
        SerializeType::Json => serde_json::to_writer(out, value).map_err(|e| CodecError::Encode {
            codec: "json",
            reason: e.to_string(),
        }),
        SerializeType::MsgPack => value
            .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
            .map_err(|e| CodecError::Encode {
                codec: "msgpack",
                reason: e.to_string(),
            }),
        other => Err(CodecError::Unsupported {
            what,
            codec: other.name(),
        }),
    }
}

/// Decodes a protobuf message with prost.
pub fn decode_proto<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, CodecError> {
    T::decode(bytes).map_err(|e| CodecError::Decode {
        codec: "protobuf",
        reason: e.to_string(),
    })
}

/// Appends a protobuf message encoded with prost.
pub fn encode_proto<T: prost::Message>(value: &T, out: &mut Vec<u8>) {
    // Encoding into a Vec cannot run out of space: it grows.
    out.reserve(value.encoded_len());
    let _ = value.encode(out);
}

/// Inflates a gzip payload into `out`, failing once it would exceed `limit` bytes. Reads at most
/// `limit + 1` bytes of output, so a gzip bomb costs at most the cap.
pub fn gunzip(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.clear();
    let decoder = flate2::read::MultiGzDecoder::new(input);
    decoder
        .take(limit as u64 + 1)
        .read_to_end(out)
        .map_err(|e| CodecError::Gzip(e.to_string()))?;
    if out.len() > limit {
        out.clear();
        return Err(CodecError::TooLarge { limit });
    }
    Ok(())
}

/// Appends the gzip (RFC 1952) form of `input` to `out`.
pub fn gzip(input: &[u8], out: &mut Vec<u8>) {
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    // Writing into a Vec does not fail.
    let _ = encoder.write_all(input);
    let _ = encoder.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Default)]
    struct Args {
        #[serde(rename = "A")]
        a: i64,
        #[serde(rename = "B")]
        b: i64,
    }

    #[test]
    fn msgpack_is_a_map_keyed_by_go_field_names() {
        let mut out = Vec::new();
        encode_serde(
            &Args { a: 10, b: 20 },
            SerializeType::MsgPack,
            &mut out,
            "args",
        )
        .unwrap();
        assert_eq!(out, [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14]);
    }

    #[test]
    fn msgpack_decodes_map_and_array_forms() {
        let map = [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14];
        let array = [0x92, 0x0a, 0x14];
        let want = Args { a: 10, b: 20 };
        assert_eq!(
            decode_serde::<Args>(SerializeType::MsgPack, &map, "args").unwrap(),
            want
        );
        assert_eq!(
            decode_serde::<Args>(SerializeType::MsgPack, &array, "args").unwrap(),
            want
        );
    }

    #[test]
    fn nil_args_are_the_zero_value() {
        for (codec, bytes) in [
            (SerializeType::MsgPack, &b"\xc0"[..]),
            (SerializeType::Json, b" null"),
            (SerializeType::Json, b""),
        ] {
            let args: Args =
                decode_serde_or_default(codec, bytes, "args").unwrap_or(Args { a: 1, b: 1 });
            assert_eq!(args, Args { a: 0, b: 0 });
        }
    }

    #[test]
    fn gzip_round_trip_and_cap() {
        let data = vec![b'a'; 10_000];
        let mut packed = Vec::new();
        gzip(&data, &mut packed);
        let mut out = Vec::new();
        gunzip(&packed, 10_000, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            gunzip(&packed, 9_999, &mut out),
            Err(CodecError::TooLarge { limit: 9_999 })
        );
        assert!(matches!(
            gunzip(b"not gzip", 100, &mut out),
            Err(CodecError::Gzip(_))
        ));
    }

    #[test]
    fn unknown_types_use_rpcx_text() {
        assert_eq!(
            SerializeType::from_wire(4).unwrap_err().to_string(),
            "can not find codec for 4"
        );
    }
}
