//! rpcx-benchmark's `BenchmarkMessage` (proto2) and the `Hello.Say` rewrite.
//!
//! The message is what rpcx-benchmark's clients send to `Hello.Say` (PROTOCOL.md §11): every int
//! field 100000, every bool true, every string the same 18-character sentence. The server side
//! does not build the struct: [`rewrite_say`] walks the top-level fields on the wire, writes
//! field 1 = "OK" and field 2 = 100 first, and copies every other field as it came.

use crate::codec::CodecError;

/// The sentence rpcx-benchmark puts in every string field.
pub const SENTENCE: &str = "许多往事在眼前一幕一幕，变的那麼模糊";

/// rpcx-benchmark's `BenchmarkMessage`, field for field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BenchmarkMessage {
    #[prost(string, required, tag = "1")]
    pub field1: String,
    #[prost(int32, required, tag = "2")]
    pub field2: i32,
    #[prost(int32, required, tag = "3")]
    pub field3: i32,
    #[prost(string, optional, tag = "4")]
    pub field4: Option<String>,
    #[prost(fixed64, repeated, packed = "false", tag = "5")]
    pub field5: Vec<u64>,
    #[prost(int32, optional, tag = "6")]
    pub field6: Option<i32>,
    #[prost(string, optional, tag = "7")]
    pub field7: Option<String>,
    #[prost(string, optional, tag = "9")]
    pub field9: Option<String>,
    #[prost(bool, optional, tag = "12")]
    pub field12: Option<bool>,
    #[prost(bool, optional, tag = "13")]
    pub field13: Option<bool>,
    #[prost(bool, optional, tag = "14")]
    pub field14: Option<bool>,
    #[prost(int32, optional, tag = "16")]
    pub field16: Option<i32>,
    #[prost(bool, optional, tag = "17")]
    pub field17: Option<bool>,
    #[prost(string, optional, tag = "18")]
    pub field18: Option<String>,
    #[prost(int64, optional, tag = "22")]
    pub field22: Option<i64>,
    #[prost(int32, optional, tag = "23")]
    pub field23: Option<i32>,
    #[prost(bool, optional, tag = "24")]
    pub field24: Option<bool>,
    #[prost(int32, optional, tag = "25")]
    pub field25: Option<i32>,
    #[prost(int32, optional, tag = "29")]
    pub field29: Option<i32>,
    #[prost(bool, optional, tag = "30")]
    pub field30: Option<bool>,
    #[prost(bool, optional, tag = "59")]
    pub field59: Option<bool>,
    #[prost(int32, optional, tag = "60")]
    pub field60: Option<i32>,
    #[prost(int32, optional, tag = "67")]
    pub field67: Option<i32>,
    #[prost(int32, optional, tag = "68")]
    pub field68: Option<i32>,
    #[prost(bool, optional, tag = "78")]
    pub field78: Option<bool>,
    #[prost(bool, optional, tag = "80")]
    pub field80: Option<bool>,
    #[prost(bool, optional, tag = "81")]
    pub field81: Option<bool>,
    #[prost(int32, optional, tag = "100")]
    pub field100: Option<i32>,
    #[prost(int32, optional, tag = "101")]
    pub field101: Option<i32>,
    #[prost(string, optional, tag = "102")]
    pub field102: Option<String>,
    #[prost(string, optional, tag = "103")]
    pub field103: Option<String>,
    #[prost(int32, optional, tag = "104")]
    pub field104: Option<i32>,
    #[prost(int32, optional, tag = "128")]
    pub field128: Option<i32>,
    #[prost(string, optional, tag = "129")]
    pub field129: Option<String>,
    #[prost(int32, optional, tag = "130")]
    pub field130: Option<i32>,
    #[prost(int32, optional, tag = "131")]
    pub field131: Option<i32>,
    #[prost(int32, optional, tag = "150")]
    pub field150: Option<i32>,
    #[prost(int32, optional, tag = "271")]
    pub field271: Option<i32>,
    #[prost(int32, optional, tag = "272")]
    pub field272: Option<i32>,
    #[prost(int32, optional, tag = "280")]
    pub field280: Option<i32>,
}

impl BenchmarkMessage {
    /// The message as rpcx-benchmark prepares it.
    pub fn prepared() -> BenchmarkMessage {
        BenchmarkMessage {
            field1: SENTENCE.to_owned(),
            field2: 100_000,
            field3: 100_000,
            field4: Some(SENTENCE.to_owned()),
            field6: Some(100_000),
            field7: Some(SENTENCE.to_owned()),
            field9: Some(SENTENCE.to_owned()),
            field12: Some(true),
            field13: Some(true),
            field14: Some(true),
            field16: Some(100_000),
            field17: Some(true),
            field18: Some(SENTENCE.to_owned()),
            field22: Some(100_000),
            field23: Some(100_000),
            field24: Some(true),
            field25: Some(100_000),
            field29: Some(100_000),
            field30: Some(true),
            field59: Some(true),
            field60: Some(100_000),
            field67: Some(100_000),
            field68: Some(100_000),
            field78: Some(true),
            field80: Some(true),
            field81: Some(true),
            field100: Some(100_000),
            field101: Some(100_000),
            field102: Some(SENTENCE.to_owned()),
            field103: Some(SENTENCE.to_owned()),
            field104: Some(100_000),
            field128: Some(100_000),
            field129: Some(SENTENCE.to_owned()),
            field130: Some(100_000),
            field131: Some(100_000),
            field150: Some(100_000),
            field271: Some(100_000),
            field272: Some(100_000),
            field280: Some(100_000),
            field5: Vec::new(),
        }
    }
}

/// Writes the `Hello.Say` reply for a request payload: field 1 = "OK", field 2 = 100, then every
/// other top-level field of `input` unchanged. Fails on malformed protobuf (bad varint, a length
/// past the end, field number 0, groups or unknown wire types).
pub fn rewrite_say(input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    // Field 1 (tag 0x0a, length-delimited) = "OK"; field 2 (tag 0x10, varint) = 100.
    out.extend_from_slice(&[0x0a, 0x02, b'O', b'K', 0x10, 100]);
    let mut rest = input;
    let mut has_field3 = false;
    while !rest.is_empty() {
        let (key, key_len) = varint(rest)?;
        let field = key >> 3;
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        let value_len = match key & 7 {
            0 => varint(&rest[key_len..])?.1,
            1 => 8,
            2 => {
                let (len, n) = varint(&rest[key_len..])?;
                usize::try_from(len)
                    .ok()
                    .and_then(|len| len.checked_add(n))
                    .ok_or_else(|| malformed("length overflow"))?
            }
            5 => 4,
            _ => return Err(malformed("unsupported wire type")),
        };
        let total = key_len
            .checked_add(value_len)
            .filter(|&t| t <= rest.len())
            .ok_or_else(|| malformed("field runs past the end"))?;
        if field != 1 && field != 2 {
            out.extend_from_slice(&rest[..total]);
        }
        has_field3 |= field == 3;
        rest = &rest[total..];
    }
    // field3 is required too (proto2): a Go client's Unmarshal refuses a reply without it, so an
    // absent one is answered as 0.
    if !has_field3 {
        out.extend_from_slice(&[0x18, 0x00]);
    }
    Ok(())
}

fn malformed(reason: &str) -> CodecError {
    CodecError::Decode {
        codec: "protobuf",
        reason: reason.to_owned(),
    }
}

/// Reads a base-128 varint: (value, bytes used).
fn varint(buf: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(malformed("bad varint"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn rewrite_matches_setting_the_fields() {
        let msg = BenchmarkMessage::prepared();
        let bytes = msg.encode_to_vec();
        assert!(
            (560..=600).contains(&bytes.len()),
            "prepared message is {} bytes",
            bytes.len()
        );
        let mut out = Vec::new();
        rewrite_say(&bytes, &mut out).unwrap();
        let got = BenchmarkMessage::decode(out.as_slice()).unwrap();
        let mut want = msg;
        want.field1 = "OK".into();
        want.field2 = 100;
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut out = Vec::new();
        assert!(rewrite_say(&[0x0a, 0x05, b'a'], &mut out).is_err());
        assert!(rewrite_say(&[0x08, 0xff], &mut out).is_err());
        assert!(rewrite_say(&[0x03], &mut out).is_err());
        assert!(rewrite_say(&[0x00, 0x01], &mut out).is_err());
    }

    #[test]
    fn required_fields_are_always_present() {
        let mut out = Vec::new();
        rewrite_say(&[], &mut out).unwrap();
        let got = BenchmarkMessage::decode(out.as_slice()).unwrap();
        assert_eq!(
            (got.field1.as_str(), got.field2, got.field3),
            ("OK", 100, 0)
        );
    }
}
