//! The rpcx frame decoder never panics, never claims more bytes than it was given, and what it
//! decodes re-encodes to exactly the bytes it consumed (byte 3's unused low nibble aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::protocol;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(total)) = protocol::frame_len(data, 1 << 20) {
        assert!(total >= protocol::HEADER_LEN);
    }
    if let Ok(Some((frame, used))) = protocol::decode(data, 1 << 20) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        frame.encode(&mut again);
        // Byte 3's low nibble is not part of any field (rpcx ignores it) and is written as 0.
        let mut want = data[..used].to_vec();
        want[3] &= 0xF0;
        assert_eq!(again, want);
        for _ in frame.metadata.iter() {}
    }
});
