//! rpcx frames, sans-IO: bytes in, frames out; frames in, bytes out.
//!
//! Nothing here does I/O, awaits, logs or allocates per frame (the encoder appends to a buffer the
//! caller owns). The layout is ../shared/PROTOCOL.md §1:
//!
//! ```text
//! offset size field
//! 0      1    magic 0x08
//! 1      1    version
//! 2      1    flags: 0x80 response · 0x40 heartbeat · 0x20 oneway · 0x1C compress · 0x03 status
//! 3      1    serialize type << 4
//! 4      8    seq (u64, big-endian)
//! 12     4    L = bytes that follow
//! 16     4+n  service path        (u32 length + UTF-8)
//! ..     4+n  service method      (u32 length + UTF-8)
//! ..     4+M  metadata block      (u32 length + [u32 klen][key][u32 vlen][val]...)
//! ..     4+P  payload             (u32 length + bytes)
//! ```
//!
//! Decoding is two steps, like mini-redis's `check` then `parse`: [`frame_len`] looks only at the
//! 16-byte header (magic, L against the limit) so a reader knows how much to buffer before it
//! buffers anything, and [`decode`] parses a complete frame into borrowed views.

use std::fmt;

use crate::buf::append;

/// First byte of every rpcx frame.
pub const MAGIC: u8 = 0x08;
/// Bytes before the body: magic, version, flags, serialize, seq, L.
pub const HEADER_LEN: usize = 16;

/// Flag bits of header byte 2.
pub mod flags {
    /// Set on responses (and on server pushes it is clear).
    pub const RESPONSE: u8 = 0x80;
    /// Heartbeat: the server echoes the frame back.
    pub const HEARTBEAT: u8 = 0x40;
    /// Oneway: the server sends no reply.
    pub const ONEWAY: u8 = 0x20;
    /// Compress type, `(flags >> 2) & 7`.
    pub const COMPRESS_MASK: u8 = 0x1C;
    /// Status, `flags & 3`: 0 normal, 1 error.
    pub const STATUS_MASK: u8 = 0x03;
}

/// Compress type 1: gzip (RFC 1952) over the payload only.
pub const COMPRESS_GZIP: u8 = 1;
/// Status 1: the reply carries `__rpcx_error__`.
pub const STATUS_ERROR: u8 = 1;

/// Metadata key of the error text in an error reply.
pub const META_ERROR: &str = "__rpcx_error__";
/// Metadata key of the auth token in a request.
pub const META_AUTH: &str = "__AUTH";
/// Metadata key of the client's deadline, decimal milliseconds left.
pub const META_SERVER_TIMEOUT: &str = "__ServerTimeout";

/// The fixed 16-byte part of a frame, minus magic and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// Version byte; rpcx never checks it, replies copy it.
    pub version: u8,
    /// Flag byte (see [`flags`]).
    pub flags: u8,
    /// Serialize type, 0..=15 (the high nibble of byte 3).
    pub serialize: u8,
    /// Sequence number chosen by the sender and echoed in the reply.
    pub seq: u64,
}

impl Header {
    /// A request header with the given serialize type and seq.
    pub fn request(serialize: u8, seq: u64) -> Header {
        Header {
            version: 0,
            flags: 0,
            serialize: serialize & 0x0F,
            seq,
        }
    }

    #[inline]
    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    #[inline]
    pub fn is_heartbeat(&self) -> bool {
        self.flags & flags::HEARTBEAT != 0
    }

    #[inline]
    pub fn is_oneway(&self) -> bool {
        self.flags & flags::ONEWAY != 0
    }

    /// Compress type: 0 none, 1 gzip.
    #[inline]
    pub fn compress(&self) -> u8 {
        (self.flags & flags::COMPRESS_MASK) >> 2
    }

    /// Status: 0 normal, 1 error.
    #[inline]
    pub fn status(&self) -> u8 {
        self.flags & flags::STATUS_MASK
    }

    #[inline]
    pub fn is_error(&self) -> bool {
        self.status() == STATUS_ERROR
    }

    #[inline]
    pub fn set_compress(&mut self, compress: u8) {
        self.flags = (self.flags & !flags::COMPRESS_MASK) | ((compress & 7) << 2);
    }

    #[inline]
    pub fn set_status(&mut self, status: u8) {
        self.flags = (self.flags & !flags::STATUS_MASK) | (status & flags::STATUS_MASK);
    }

    /// The header of the reply to this request: response bit set, heartbeat and oneway bits
    /// kept, compress and status cleared (PROTOCOL.md §3).
    #[inline]
    pub fn reply(&self) -> Header {
        Header {
            version: self.version,
            flags: (self.flags & (flags::HEARTBEAT | flags::ONEWAY)) | flags::RESPONSE,
            serialize: self.serialize,
            seq: self.seq,
        }
    }
}

/// Which part of a frame an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    ServicePath,
    ServiceMethod,
    Metadata,
    Payload,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::ServicePath => "service path",
            Field::ServiceMethod => "service method",
            Field::Metadata => "metadata",
            Field::Payload => "payload",
        })
    }
}

/// Why bytes are not an rpcx frame. Every variant closes the connection: after it the stream
/// cannot be re-synchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first byte is not 0x08 (rpcx says `wrong magic number: N`).
    #[error("wrong magic number: {0}")]
    BadMagic(u8),
    /// L is over the configured maximum; nothing of the body was buffered.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    /// A length prefix inside the frame runs past the end of the frame.
    #[error("{0} length runs past the end of the frame")]
    Truncated(Field),
    /// The fields end before L does.
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(u32),
    /// Path, method or a metadata entry is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(Field),
    /// A metadata entry runs past the metadata block.
    #[error("metadata entry runs past the metadata block")]
    BadMetadata,
    /// Compress type other than none (0) and gzip (1).
    #[error("unknown compress type {0}")]
    UnknownCompress(u8),
    /// More metadata entries than the receiver's limit (percore: `limits.max_metadata_entries`).
    #[error("more than {0} metadata entries")]
    TooManyMetadata(usize),
}

impl DecodeError {
    /// A short stable name, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Truncated(_) => "truncated",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::InvalidUtf8(_) => "invalid_utf8",
            DecodeError::BadMetadata => "bad_metadata",
            DecodeError::UnknownCompress(_) => "unknown_compress",
            DecodeError::TooManyMetadata(_) => "too_many_metadata",
        }
    }
}

/// A decoded frame borrowing from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub path: &'a str,
    pub method: &'a str,
    pub metadata: Metadata<'a>,
    pub payload: &'a [u8],
}

/// Looks at a frame's header. `Ok(None)`: fewer than 16 bytes so far. `Ok(Some(n))`: the whole
/// frame is `n` bytes. Checks the magic byte and L against `max_body` before anything is buffered.
pub fn frame_len(buf: &[u8], max_body: u32) -> Result<Option<usize>, DecodeError> {
    if let Some(&first) = buf.first()
        && first != MAGIC
    {
        return Err(DecodeError::BadMagic(first));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let body = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if body > max_body {
        return Err(DecodeError::TooLarge {
            len: u64::from(body),
            max: max_body,
        });
    }
    Ok(Some(HEADER_LEN + body as usize))
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: more bytes are needed.
/// `Ok(Some((frame, n)))`: the frame used the first `n` bytes. Never reads past `buf`, never
/// panics, and rejects a body over `max_body` from the header alone.
pub fn decode(buf: &[u8], max_body: u32) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    decode_limited(buf, max_body, usize::MAX)
}

/// [`decode`], refusing a frame with more than `max_metadata` metadata entries (counted while
/// the block is checked, so a frame of a million entries costs no more than `max_metadata`).
#[inline]
pub fn decode_limited(
    buf: &[u8],
    max_body: u32,
    max_metadata: usize,
) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(total) = frame_len(buf, max_body)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    decode_frame(&buf[..total], max_metadata).map(|frame| Some((frame, total)))
}

/// Decodes one whole frame: `raw` is exactly the `n` bytes [`frame_len`] measured (magic and L
/// already checked). The server's frame loop calls this directly, so the header is looked at
/// once per frame.
#[inline]
pub fn decode_frame(raw: &[u8], max_metadata: usize) -> Result<Frame<'_>, DecodeError> {
    let (header, body) = decode_head(raw)?;
    let mut cursor = Cursor { buf: body };
    let path = cursor.field(Field::ServicePath)?;
    let method = cursor.field(Field::ServiceMethod)?;
    // Path and method are nearly always short ASCII, and so are their length prefixes when
    // both are under 128 bytes: one check over `[len][path][len][method]` instead of two.
    let names = &body[..8 + path.len() + method.len()];
    let (path, method) = if is_ascii(names) {
        // SAFETY: ASCII bytes are valid UTF-8.
        unsafe {
            (
                std::str::from_utf8_unchecked(path),
                std::str::from_utf8_unchecked(method),
            )
        }
    } else {
        (
            utf8(path, Field::ServicePath)?,
            utf8(method, Field::ServiceMethod)?,
        )
    };
    decode_rest(header, path, method, cursor, max_metadata)
}

/// The path and method of a frame that decoded, in wire form (`[len][path][len][method]`), kept
/// to recognise the next frame's: a connection's pipelined calls nearly always name one method,
/// and a frame whose names are the same bytes needs neither their parse nor their UTF-8 check
/// again (nor, in the server, the method lookup).
#[derive(Clone, Copy, Debug, Default)]
pub struct Names {
    wire: [u8; Names::MAX],
    /// 0: none kept.
    len: u8,
    path_len: u8,
}

impl Names {
    /// Longer names are not kept (and are decoded as usual).
    pub const MAX: usize = 32;

    /// Keeps `frame`'s names, `raw` being the bytes it was decoded from; false if they are too
    /// long to keep.
    pub fn keep(&mut self, raw: &[u8], frame: &Frame<'_>) -> bool {
        let wire = names_wire(raw, frame);
        if wire.len() > Names::MAX {
            self.len = 0;
            return false;
        }
        self.wire[..wire.len()].copy_from_slice(wire);
        self.len = wire.len() as u8;
        self.path_len = frame.path.len() as u8;
        true
    }

    /// Decodes `raw` (a whole frame, as [`decode_frame`] takes it) if its body starts with the
    /// names kept; `None` if it does not (or none are kept).
    #[inline]
    pub fn decode<'a>(
        &self,
        raw: &'a [u8],
        max_metadata: usize,
    ) -> Option<Result<Frame<'a>, DecodeError>> {
        let (len, path_len) = (self.len as usize, self.path_len as usize);
        let body = raw.get(HEADER_LEN..)?;
        if !self.start(body) {
            return None;
        }
        let result = decode_head(raw).and_then(|(header, body)| {
            // SAFETY: these are the bytes of a path and method that passed `decode_frame`'s
            // UTF-8 check when they were kept, compared equal just above.
            let (path, method) = unsafe {
                (
                    std::str::from_utf8_unchecked(&body[4..4 + path_len]),
                    std::str::from_utf8_unchecked(&body[8 + path_len..len]),
                )
            };
            decode_rest(
                header,
                path,
                method,
                Cursor { buf: &body[len..] },
                max_metadata,
            )
        });
        Some(result)
    }

    /// Where the names end in `raw` (a whole frame, as [`decode_frame`] takes it: the header's
    /// 16 bytes and the names kept) and its payload, if its body is the names kept, an empty
    /// metadata block and the payload, and nothing else; `None` otherwise (it may still be a
    /// good frame: decode it in full).
    #[inline(always)]
    pub fn plain<'a>(&self, raw: &'a [u8]) -> Option<(usize, &'a [u8])> {
        let len = self.len as usize;
        let body = raw.get(HEADER_LEN..)?;
        // names, then u32 0 (no metadata) and u32 payload length: one big-endian word.
        let after: [u8; 8] = body.get(len..len + 8)?.try_into().ok()?;
        let after = u64::from_be_bytes(after);
        let payload = &body[len + 8..];
        if !self.start(body) || after != payload.len() as u64 {
            return None;
        }
        Some((HEADER_LEN + len, payload))
    }

    /// Whether names are kept and `body` starts with them.
    #[inline(always)]
    fn start(&self, body: &[u8]) -> bool {
        let len = self.len as usize;
        len != 0 && body.len() >= len && same_words(&body[..len], &self.wire[..len])
    }
}

/// `a == b` for slices of one length from 8 to [`Names::MAX`] bytes, eight bytes at a time (the
/// last word overlapping), without a call to `memcmp`.
#[inline(always)]
fn same_words(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() || n < 8 {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        let chunk: [u8; 8] = s[at..at + 8].try_into().unwrap_or_default();
        u64::from_ne_bytes(chunk)
    };
    let differ = |at: usize| word(a, at) ^ word(b, at);
    if n <= 16 {
        differ(0) | differ(n - 8) == 0
    } else if n <= Names::MAX {
        differ(0) | differ(8) | differ(n - 16) | differ(n - 8) == 0
    } else {
        a == b
    }
}

/// The header of a whole frame, and its body.
#[inline(always)]
fn decode_head(raw: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let Some((head, body)) = raw.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated(Field::ServicePath));
    };
    let header = Header {
        version: head[1],
        flags: head[2],
        serialize: head[3] >> 4,
        seq: u64::from_be_bytes([
            head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11],
        ]),
    };
    if header.compress() > COMPRESS_GZIP {
        return Err(DecodeError::UnknownCompress(header.compress()));
    }
    Ok((header, body))
}

/// Metadata and payload, after the names.
#[inline(always)]
fn decode_rest<'a>(
    header: Header,
    path: &'a str,
    method: &'a str,
    mut cursor: Cursor<'a>,
    max_metadata: usize,
) -> Result<Frame<'a>, DecodeError> {
    let metadata = cursor.field(Field::Metadata)?;
    let payload = cursor.field(Field::Payload)?;
    if !cursor.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(cursor.buf.len() as u32));
    }
    Ok(Frame {
        header,
        path,
        method,
        metadata: Metadata::parse_limited(metadata, max_metadata)?,
        payload,
    })
}

/// Whether `bytes` are all ASCII: eight bytes at a time, the last (partial) word read
/// overlapping the one before. For the short names of a call this is a handful of instructions;
/// `<[u8]>::is_ascii` walks short slices a byte at a time (~6 instructions per byte).
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |at: usize| {
        let chunk: [u8; 8] = bytes[at..at + 8].try_into().unwrap_or_default();
        u64::from_ne_bytes(chunk)
    };
    let half = |at: usize| {
        let chunk: [u8; 4] = bytes[at..at + 4].try_into().unwrap_or_default();
        u64::from(u32::from_ne_bytes(chunk))
    };
    let n = bytes.len();
    let mut seen = 0u64;
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            seen |= word(at);
            at += 8;
        }
        seen |= word(n - 8);
    } else if n >= 4 {
        seen = half(0) | half(n - 4);
    } else {
        for &b in bytes {
            seen |= u64::from(b);
        }
    }
    seen & HIGH == 0
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Takes a `u32` length prefix and that many bytes.
    #[inline]
    fn field(&mut self, field: Field) -> Result<&'a [u8], DecodeError> {
        let (len, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(DecodeError::Truncated(field))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(DecodeError::Truncated(field));
        }
        let (value, rest) = rest.split_at(len);
        self.buf = rest;
        Ok(value)
    }
}

#[inline]
fn utf8(bytes: &[u8], field: Field) -> Result<&str, DecodeError> {
    // Paths, methods and metadata keys are nearly always short ASCII: the inlined ASCII check
    // costs a few instructions where `from_utf8`'s general path cost ~100 per field
    // (benches/instructions.sh).
    if is_ascii(bytes) {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8(field))
}

/// A validated metadata block: `[u32 klen][key][u32 vlen][val]` repeated, no count.
/// Keys and values are UTF-8 (percore is strict where Go is not).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Metadata<'a> {
    raw: &'a [u8],
}

impl<'a> Metadata<'a> {
    /// Validates a raw block.
    #[inline]
    pub fn parse(raw: &'a [u8]) -> Result<Metadata<'a>, DecodeError> {
        Metadata::parse_limited(raw, usize::MAX)
    }

    /// [`Metadata::parse`], refusing more than `max` entries.
    #[inline]
    pub fn parse_limited(raw: &'a [u8], max: usize) -> Result<Metadata<'a>, DecodeError> {
        // Most calls carry none: no call for them.
        if raw.is_empty() {
            return Ok(Metadata { raw });
        }
        Metadata::check(raw, max)
    }

    fn check(raw: &'a [u8], max: usize) -> Result<Metadata<'a>, DecodeError> {
        let mut cursor = Cursor { buf: raw };
        let mut entries = 0usize;
        while !cursor.buf.is_empty() {
            if entries == max {
                return Err(DecodeError::TooManyMetadata(max));
            }
            entries += 1;
            let key = cursor
                .field(Field::Metadata)
                .map_err(|_| DecodeError::BadMetadata)?;
            let value = cursor
                .field(Field::Metadata)
                .map_err(|_| DecodeError::BadMetadata)?;
            utf8(key, Field::Metadata)?;
            utf8(value, Field::Metadata)?;
        }
        Ok(Metadata { raw })
    }

    /// The block as it is on the wire (without its length prefix).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Entries in wire order.
    pub fn iter(&self) -> MetadataIter<'a> {
        MetadataIter {
            cursor: Cursor { buf: self.raw },
        }
    }

    /// The value of the first entry named `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl fmt::Debug for Metadata<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterator over a validated [`Metadata`] block.
pub struct MetadataIter<'a> {
    cursor: Cursor<'a>,
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.cursor.buf.is_empty() {
            return None;
        }
        // The block was validated in `Metadata::parse`; a failure here would be a bug, and
        // ending the iteration is the harmless answer.
        let key = self.cursor.field(Field::Metadata).ok()?;
        let value = self.cursor.field(Field::Metadata).ok()?;
        Some((
            std::str::from_utf8(key).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    }
}

/// Appends one metadata entry in wire form to a metadata block being built.
#[inline]
pub fn push_meta(block: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    push_bytes(block, key);
    push_bytes(block, value);
}

#[inline]
fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Bytes a frame with these parts takes on the wire.
pub fn encoded_len(path: &str, method: &str, metadata: &[u8], payload: &[u8]) -> usize {
    HEADER_LEN + 16 + path.len() + method.len() + metadata.len() + payload.len()
}

/// Appends a whole frame to `out`. `metadata` is a block in wire form (see [`push_meta`]).
pub fn encode(
    out: &mut Vec<u8>,
    header: &Header,
    path: &str,
    method: &str,
    metadata: &[u8],
    payload: &[u8],
) {
    let total = encoded_len(path, method, metadata, payload);
    let len = |part: &[u8]| (part.len() as u32).to_be_bytes();
    let (path, method) = (path.as_bytes(), method.as_bytes());
    append(
        out,
        [
            &head(header, total),
            &len(path),
            path,
            &len(method),
            method,
            &len(metadata),
            metadata,
            &len(payload),
            payload,
        ],
    );
}

/// A frame's first 16 bytes: the header and the length of the rest.
#[inline]
fn head(header: &Header, total: usize) -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[..4].copy_from_slice(&[MAGIC, header.version, header.flags, header.serialize << 4]);
    head[4..12].copy_from_slice(&header.seq.to_be_bytes());
    head[12..].copy_from_slice(&((total - HEADER_LEN) as u32).to_be_bytes());
    head
}

/// The wire form of `frame`'s path and method (`[u32 len][path][u32 len][method]`), cut from
/// `raw`, the bytes `frame` was decoded from.
#[inline]
pub fn names_wire<'a>(raw: &'a [u8], frame: &Frame<'_>) -> &'a [u8] {
    &raw[HEADER_LEN..HEADER_LEN + 8 + frame.path.len() + frame.method.len()]
}

/// As [`encode_with_names`] for a reply: the first 16 bytes are the request's (`raw`), with the
/// flags and the length put right, which is what `header.reply()` would give with `flags` for
/// flags, byte for byte, in fewer steps than building the header from its fields.
#[inline(always)]
pub fn encode_reply(
    out: &mut Vec<u8>,
    raw: &[u8],
    flags: u8,
    names: &[u8],
    metadata: &[u8],
    payload: &[u8],
) {
    let total = HEADER_LEN + names.len() + 8 + metadata.len() + payload.len();
    let mut head: [u8; HEADER_LEN] = raw[..HEADER_LEN].try_into().unwrap_or_default();
    reply_head(&mut head, flags, total);
    append(
        out,
        [
            &head,
            names,
            &(metadata.len() as u32).to_be_bytes(),
            metadata,
            &(payload.len() as u32).to_be_bytes(),
            payload,
        ],
    );
}

/// [`encode_reply`] for a plain request (no heartbeat, oneway or gzip bits, no metadata) whose
/// header and names are `raw[..names]`: with no metadata of its own either, the reply starts
/// with the request's own `head, names, empty metadata` bytes, copied in one piece and then
/// put right (flags: the response bit alone, as `Header::reply` gives; the length).
#[inline(always)]
pub fn encode_plain_reply(
    out: &mut Vec<u8>,
    raw: &[u8],
    names: usize,
    metadata: &[u8],
    payload: &[u8],
) {
    if !metadata.is_empty() {
        let flags = flags::RESPONSE;
        return encode_reply(out, raw, flags, &raw[HEADER_LEN..names], metadata, payload);
    }
    let at = out.len();
    let total = names + 8 + payload.len();
    append(
        out,
        [
            &raw[..names + 4],
            &(payload.len() as u32).to_be_bytes(),
            payload,
        ],
    );
    reply_head(&mut out[at..at + HEADER_LEN], flags::RESPONSE, total);
}

/// Turns a request's 16 header bytes into its reply's: `flags`, byte 3's serialize type kept
/// (its low nibble cleared, as `Header::reply` encodes it), and the length of a `total`-byte
/// frame.
#[inline(always)]
fn reply_head(head: &mut [u8], flags: u8, total: usize) {
    head[2] = flags;
    head[3] &= 0xF0;
    head[12..HEADER_LEN].copy_from_slice(&((total - HEADER_LEN) as u32).to_be_bytes());
}

/// As [`encode`], with the path and method given in wire form ([`names_wire`]): a reply copies
/// them from its request in one piece (one copy instead of four pieces; ~60 instructions per
/// reply, benches/instructions.sh).
#[inline]
pub fn encode_with_names(
    out: &mut Vec<u8>,
    header: &Header,
    names: &[u8],
    metadata: &[u8],
    payload: &[u8],
) {
    let total = HEADER_LEN + names.len() + 8 + metadata.len() + payload.len();
    append(
        out,
        [
            &head(header, total),
            names,
            &(metadata.len() as u32).to_be_bytes(),
            metadata,
            &(payload.len() as u32).to_be_bytes(),
            payload,
        ],
    );
}

impl Frame<'_> {
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.path, self.method, self.metadata.raw, self.payload)
    }

    /// Appends this frame to `out`, byte for byte as it was decoded.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode(
            out,
            &self.header,
            self.path,
            self.method,
            self.metadata.raw,
            self.payload,
        );
    }

    pub fn to_message(&self) -> Message {
        Message::from_parts(
            self.header,
            self.path,
            self.method,
            self.metadata,
            self.payload,
        )
    }
}

/// An owned frame, for clients and tests. The server works on borrowed [`Frame`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub path: String,
    pub method: String,
    pub metadata: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// An owned copy of a frame's parts.
    pub fn from_parts(
        header: Header,
        path: &str,
        method: &str,
        metadata: Metadata<'_>,
        payload: &[u8],
    ) -> Message {
        Message {
            header,
            path: path.to_owned(),
            method: method.to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            payload: payload.to_vec(),
        }
    }

    /// The metadata block in wire form.
    pub fn metadata_block(&self) -> Vec<u8> {
        let mut block = Vec::new();
        for (k, v) in &self.metadata {
            push_meta(&mut block, k.as_bytes(), v.as_bytes());
        }
        block
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let block = self.metadata_block();
        encode(
            out,
            &self.header,
            &self.path,
            &self.method,
            &block,
            &self.payload,
        );
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut meta = Vec::new();
        push_meta(&mut meta, b"k1", b"v1");
        let mut out = Vec::new();
        encode(
            &mut out,
            &Header::request(3, 7),
            "Arith",
            "Mul",
            &meta,
            &[0x82, 0xa1, 0x41],
        );
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let (frame, used) = decode(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.path, "Arith");
        assert_eq!(frame.method, "Mul");
        assert_eq!(frame.metadata.get("k1"), Some("v1"));
        assert_eq!(frame.header.seq, 7);
        assert_eq!(frame.header.serialize, 3);
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(again, bytes);
        assert_eq!(frame.encoded_len(), bytes.len());
    }

    #[test]
    fn every_prefix_needs_more() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n], 1 << 20), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn magic_and_limit_are_checked_from_the_header() {
        assert_eq!(decode(b"H", 100), Err(DecodeError::BadMagic(b'H')));
        let mut bytes = sample();
        bytes[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            frame_len(&bytes[..16], 1024),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn inner_lengths_are_validated() {
        let mut bytes = sample();
        // Path length claims more than the body holds.
        bytes[16..20].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(
            decode(&bytes, 1 << 20),
            Err(DecodeError::Truncated(Field::ServicePath))
        );

        let mut bytes = sample();
        bytes.push(0);
        let body = (bytes.len() - HEADER_LEN) as u32;
        bytes[12..16].copy_from_slice(&body.to_be_bytes());
        assert_eq!(decode(&bytes, 1 << 20), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn kept_names_decode_the_next_frame_alike_and_only_when_they_match() {
        let bytes = sample();
        let (frame, _) = decode(&bytes, 1 << 20).unwrap().unwrap();
        let mut names = Names::default();
        assert!(
            names.decode(&bytes, usize::MAX).is_none(),
            "nothing kept yet"
        );
        assert!(names.keep(&bytes, &frame));
        assert_eq!(names.decode(&bytes, usize::MAX), Some(Ok(frame)));
        // Another method of the same length is not taken for the kept one.
        let mut other = Vec::new();
        encode(
            &mut other,
            &Header::request(3, 8),
            "Arith",
            "Add",
            &[],
            &[1],
        );
        assert!(names.decode(&other, usize::MAX).is_none());
        // A bad frame with the kept names is still refused, with the same error.
        let mut bad = bytes.clone();
        bad.push(0);
        let body = (bad.len() - HEADER_LEN) as u32;
        bad[12..16].copy_from_slice(&body.to_be_bytes());
        assert_eq!(
            names.decode(&bad, usize::MAX),
            Some(Err(DecodeError::TrailingBytes(1)))
        );
        assert_eq!(
            decode_frame(&bad, usize::MAX),
            Err(DecodeError::TrailingBytes(1))
        );
        // Names too long to keep are not kept.
        let long = "S".repeat(40);
        let mut out = Vec::new();
        encode(&mut out, &Header::request(3, 9), &long, "M", &[], &[]);
        let (frame, _) = decode(&out, 1 << 20).unwrap().unwrap();
        assert!(!names.keep(&out, &frame));
        assert!(names.decode(&bytes, usize::MAX).is_none());
    }

    #[test]
    fn short_ascii_check_and_word_compare_agree_with_std() {
        let samples: [&[u8]; 7] = [
            b"",
            b"a",
            b"abc",
            b"abcd\xff",
            b"\x80bcdefgh",
            b"abcdefghijklmnopq",
            b"abcdefghijklmno\xc3",
        ];
        for s in samples {
            assert_eq!(is_ascii(s), s.is_ascii(), "{s:?}");
        }
        for n in 8..=Names::MAX {
            let a: Vec<u8> = (0..n as u8).collect();
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!same_words(&a, &b), "{n} {i}");
            }
            assert!(same_words(&a, &a.clone()));
        }
    }

    #[test]
    fn reply_header_keeps_only_heartbeat_and_oneway() {
        let mut h = Header::request(1, 9);
        h.flags = flags::HEARTBEAT | flags::ONEWAY | 0x04 | 0x01;
        let r = h.reply();
        assert!(r.is_response() && r.is_heartbeat() && r.is_oneway());
        assert_eq!(r.compress(), 0);
        assert_eq!(r.status(), 0);
    }
}
