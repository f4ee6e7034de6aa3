//! JSON in, payload out (and back), for `percore call`: the command line speaks JSON whatever
//! the codec on the wire.
//!
//! | codec | JSON → payload | payload → JSON |
//! |---|---|---|
//! | msgpack | the JSON value as MsgPack (objects as maps, compact integers) | any MsgPack value; binary becomes an array of bytes, non-string map keys their JSON text |
//! | json | the JSON text as given | parsed |
//! | raw | a JSON string's UTF-8 bytes, or an array of byte values | a string if UTF-8, else an array of bytes |
//! | protobuf | not possible without the message schema: an error that says so | same |

use serde::Serialize;
use serde_json::Value;

use crate::codec::{CodecError, SerializeType};

/// Encodes a JSON value as a payload of `codec`.
pub fn to_payload(value: &Value, codec: SerializeType) -> Result<Vec<u8>, CodecError> {
    match codec {
        SerializeType::Json => serde_json::to_vec(value).map_err(|e| CodecError::Encode {
            codec: "json",
            reason: e.to_string(),
        }),
        SerializeType::MsgPack => {
            let mut out = Vec::new();
            value
                .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
                .map_err(|e| CodecError::Encode {
                    codec: "msgpack",
                    reason: e.to_string(),
                })?;
            Ok(out)
        }
        SerializeType::Raw => match value {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or(CodecError::Encode {
                    codec: "raw",
                    reason: "an array must hold byte values 0..=255".into(),
                }),
            _ => Err(CodecError::Encode {
                codec: "raw",
                reason: "raw args must be a JSON string or an array of bytes".into(),
            }),
        },
        SerializeType::Protobuf => Err(CodecError::Unsupported {
            what: "JSON args (protobuf needs the message schema)",
            codec: "protobuf",
        }),
    }
}

/// Decodes a payload of `codec` into JSON.
pub fn from_payload(bytes: &[u8], codec: SerializeType) -> Result<Value, CodecError> {
    match codec {
        SerializeType::Json => serde_json::from_slice(bytes).map_err(|e| CodecError::Decode {
            codec: "json",
            reason: e.to_string(),
        }),
        SerializeType::MsgPack => {
            let mut rest = bytes;
            let value = rmpv::decode::read_value(&mut rest).map_err(|e| CodecError::Decode {
                codec: "msgpack",
                reason: e.to_string(),
            })?;
            Ok(msgpack_to_json(&value))
        }
        SerializeType::Raw => Ok(match std::str::from_utf8(bytes) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => bytes_json(bytes),
        }),
        SerializeType::Protobuf => Err(CodecError::Unsupported {
            what: "a JSON view (protobuf needs the message schema)",
            codec: "protobuf",
        }),
    }
}

fn bytes_json(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|&b| Value::from(b)).collect())
}

fn msgpack_to_json(value: &rmpv::Value) -> Value {
    use rmpv::Value as M;
    match value {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(*b),
        M::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(v), _) => Value::from(v),
            (None, Some(v)) => Value::from(v),
            (None, None) => Value::Null,
        },
        M::F32(f) => Value::from(f64::from(*f)),
        M::F64(f) => Value::from(*f),
        M::String(s) => match s.as_str() {
            Some(s) => Value::String(s.to_owned()),
            None => bytes_json(s.as_bytes()),
        },
        M::Binary(b) => bytes_json(b),
        M::Array(items) => Value::Array(items.iter().map(msgpack_to_json).collect()),
        M::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) if s.as_str().is_some() => {
                            s.as_str().unwrap_or_default().to_owned()
                        }
                        other => msgpack_to_json(other).to_string(),
                    };
                    (key, msgpack_to_json(v))
                })
                .collect(),
        ),
        M::Ext(kind, data) => serde_json::json!({ "ext": kind, "data": bytes_json(data) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_args_are_go_shaped_maps() {
        let args: Value = serde_json::from_str(r#"{"A":10,"B":20}"#).unwrap();
        assert_eq!(
            to_payload(&args, SerializeType::MsgPack).unwrap(),
            [0x82, 0xa1, 0x41, 0x0a, 0xa1, 0x42, 0x14]
        );
        let reply = from_payload(&[0x81, 0xa1, 0x43, 0xcc, 0xc8], SerializeType::MsgPack).unwrap();
        assert_eq!(reply, serde_json::json!({"C": 200}));
        let odd = from_payload(
            &[0x81, 0x01, 0xc4, 0x02, 0xff, 0x00],
            SerializeType::MsgPack,
        )
        .unwrap();
        assert_eq!(odd, serde_json::json!({"1": [255, 0]}));
    }

    #[test]
    fn raw_and_protobuf() {
        assert_eq!(
            to_payload(&Value::from("hi"), SerializeType::Raw).unwrap(),
            b"hi"
        );
        assert_eq!(
            from_payload(&[0xff], SerializeType::Raw).unwrap(),
            serde_json::json!([255])
        );
        assert!(
            to_payload(&Value::Null, SerializeType::Protobuf)
                .unwrap_err()
                .to_string()
                .contains("schema")
        );
    }
}
