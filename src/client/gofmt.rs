//! Go's `fmt.Sprintf("%v", args)` for serde values, which rpcx's ConsistentHash key needs.
//!
//! rpcx hashes `"/" + servicePath + "/" + serviceMethod + "/" + fmt.Sprintf("%v", args)`, where
//! `args` is whatever the Go program passed to `Call`: almost always a pointer to a struct. So a
//! Rust value is written the way Go prints the matching Go value:
//!
//! | serde | Go value | `%v` |
//! |---|---|---|
//! | struct at the top level | `&Args{A: 10, B: 20}` | `&{10 20}` (fields in declaration order) |
//! | struct inside a value, tuple struct | `Inner{...}` (not a pointer) | `{...}` |
//! | bool, integers | same | `true`, `-5` |
//! | floats | `float64`, `float32` | Go's shortest `%g`: exponent form from 1e6 and below 1e-4: `1e+06`, `0.5` |
//! | string | `string` | the text itself |
//! | bytes | `[]byte` | `[1 2 3]` |
//! | sequence, tuple | slice | `[a b c]` |
//! | map | `map[K]V` | `map[k:v ...]`, keys sorted (numerically if all are integers) |
//! | `None` / unit | `nil` / empty struct | `<nil>` / `{}` |
//! | `Some(x)`, newtype | the value | `x` |
//! | enum unit variant | a named constant | the variant name |
//! | char | `rune` (an int32) | its code point number |
//!
//! What cannot match: a pointer nested inside a Go struct prints as an address (`0xc000...`),
//! which differs per process, so the Go client's own keys are not stable for such args either.

use std::fmt::Write as _;

use serde::ser::{self, Serialize};

/// `%v` of `value` as the top-level argument of a Go call (a top-level struct prints as `&{..}`).
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail and every serde shape has a form, so the only errors are
    // custom ones a Serialize impl raises itself; the text written so far is still the key.
    let _ = value.serialize(&mut GoFmt {
        out: &mut out,
        depth: 0,
    });
    out
}

/// Appends `%v` of `value` at nesting `depth` to `out`.
fn write_value<T: Serialize + ?Sized>(
    out: &mut String,
    depth: usize,
    value: &T,
) -> Result<(), Error> {
    value.serialize(&mut GoFmt { out, depth })
}

/// A serializer's error; only a `Serialize` impl's own `custom` error produces one.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

struct GoFmt<'a> {
    out: &'a mut String,
    depth: usize,
}

/// Go's `%v` of a float, `strconv.FormatFloat(v, 'g', -1, bits)`: shortest round-trip digits,
/// in `%e` form when the decimal exponent is below -4 or at least 6 (strconv's rule for the
/// shortest precision).
fn write_float(out: &mut String, sci: &str) {
    // `sci` is Rust's shortest round-trip `{:e}`: "-1.2345e6", "5e-1", "inf", "NaN".
    match sci {
        "inf" => return out.push_str("+Inf"),
        "-inf" => return out.push_str("-Inf"),
        "NaN" => return out.push_str("NaN"),
        _ => {}
    }
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if negative {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        out.push_str(&digits);
    } else {
        let point = exp as usize + 1;
        if digits.len() <= point {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
}

/// A struct, tuple or sequence being written: `open` was written, items are space-separated.
struct Items<'a> {
    out: &'a mut String,
    depth: usize,
    first: bool,
    close: char,
}

impl Items<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        write_value(self.out, self.depth + 1, value)
    }

    fn end(self) -> Result<(), Error> {
        self.out.push(self.close);
        Ok(())
    }
}

/// A map being written: entries are collected, then sorted the way Go's fmt sorts map keys.
struct Entries<'a> {
    out: &'a mut String,
    depth: usize,
    entries: Vec<(String, String)>,
}

impl GoFmt<'_> {
    fn items(&mut self, open: &str, close: char) -> Items<'_> {
        self.out.push_str(open);
        Items {
            out: &mut *self.out,
            depth: self.depth,
            first: true,
            close,
        }
    }

    fn open_struct(&mut self) -> Items<'_> {
        let open = if self.depth == 0 { "&{" } else { "{" };
        self.items(open, '}')
    }
}

impl<'a> ser::Serializer for &'a mut GoFmt<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Items<'a>;
    type SerializeTupleStruct = Items<'a>;
    type SerializeTupleVariant = Items<'a>;
    type SerializeMap = Entries<'a>;
    type SerializeStruct = Items<'a>;
    type SerializeStructVariant = Items<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        write_float(self.out, &format!("{v:e}"));
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        write_float(self.out, &format!("{v:e}"));
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_u32(v as u32)
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.out.push_str(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.out.push('[');
        for (i, b) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(' ');
            }
            let _ = write!(self.out, "{b}");
        }
        self.out.push(']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.push_str("<nil>");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.push_str("{}");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.out
            .push_str(if self.depth == 0 { "&{}" } else { "{}" });
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.out.push_str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Items<'a>, Error> {
        Ok(self.items("[", ']'))
    }
    fn serialize_tuple(self, _: usize) -> Result<Items<'a>, Error> {
        Ok(self.items("[", ']'))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Items<'a>, Error> {
        Ok(self.open_struct())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Items<'a>, Error> {
        Ok(self.open_struct())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Entries<'a>, Error> {
        Ok(Entries {
            out: &mut *self.out,
            depth: self.depth,
            entries: Vec::new(),
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Items<'a>, Error> {
        Ok(self.open_struct())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Items<'a>, Error> {
        Ok(self.open_struct())
    }
}

impl ser::SerializeSeq for Items<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

impl ser::SerializeTuple for Items<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

impl ser::SerializeTupleStruct for Items<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

impl ser::SerializeTupleVariant for Items<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

impl ser::SerializeStruct for Items<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

impl ser::SerializeStructVariant for Items<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

impl ser::SerializeMap for Entries<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let mut k = String::new();
        write_value(&mut k, self.depth + 1, key)?;
        self.entries.push((k, String::new()));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let mut v = String::new();
        write_value(&mut v, self.depth + 1, value)?;
        if let Some(last) = self.entries.last_mut() {
            last.1 = v;
        }
        Ok(())
    }
    fn end(mut self) -> Result<(), Error> {
        // Go's fmt prints maps sorted by key: integers by value, strings by bytes.
        let numeric: Option<Vec<i128>> = self.entries.iter().map(|(k, _)| k.parse().ok()).collect();
        match numeric {
            Some(keys) => {
                let mut pairs: Vec<_> = keys.into_iter().zip(self.entries).collect();
                pairs.sort_by_key(|(k, _)| *k);
                self.entries = pairs.into_iter().map(|(_, e)| e).collect();
            }
            None => self.entries.sort(),
        }
        self.out.push_str("map[");
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                self.out.push(' ');
            }
            self.out.push_str(k);
            self.out.push(':');
            self.out.push_str(v);
        }
        self.out.push(']');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(serde::Serialize)]
    struct Args {
        a: i64,
        b: i64,
    }

    #[derive(serde::Serialize)]
    struct Outer {
        name: String,
        inner: Args,
        tags: Vec<u8>,
        ok: bool,
    }

    #[test]
    fn prints_like_go_percent_v() {
        assert_eq!(to_string(&Args { a: 10, b: 20 }), "&{10 20}");
        let outer = Outer {
            name: "x y".into(),
            inner: Args { a: -1, b: 2 },
            tags: vec![1, 2],
            ok: true,
        };
        assert_eq!(to_string(&outer), "&{x y {-1 2} [1 2] true}");
        assert_eq!(to_string("hello"), "hello");
        assert_eq!(to_string(&42u8), "42");
        assert_eq!(to_string(&serde_bytes_like(&[1, 2, 3])), "[1 2 3]");
        let map: HashMap<i32, &str> = [(10, "b"), (2, "a")].into_iter().collect();
        assert_eq!(to_string(&map), "map[2:a 10:b]");
        assert_eq!(to_string(&Option::<i32>::None), "<nil>");
    }

    #[test]
    fn floats_like_go() {
        let cases: [(f64, &str); 9] = [
            (1.0, "1"),
            (0.5, "0.5"),
            (100000.0, "100000"),
            (1e6, "1e+06"),
            (123456789.0, "1.23456789e+08"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (f64::INFINITY, "+Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(to_string(&v), want, "{v}");
        }
    }

    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    fn serde_bytes_like(b: &[u8]) -> Bytes<'_> {
        Bytes(b)
    }
}
