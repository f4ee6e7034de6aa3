//! Properties of the decoder: it never panics, never reads past its input, and round-trips.

use percore::protocol::{self, Header, Message};
use proptest::prelude::*;

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u8>(),
        any::<u8>(),
        0u8..16,
        any::<u64>(),
        "[a-zA-Z_.]{0,20}",
        "[a-zA-Z_]{0,20}",
        proptest::collection::vec(("[a-z_]{0,8}", "\\PC{0,8}"), 0..4),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(
            |(version, flags, serialize, seq, path, method, metadata, payload)| Message {
                // Compress types above gzip are refused by the decoder; keep them valid here.
                header: Header {
                    version,
                    flags: flags & !0x18,
                    serialize,
                    seq,
                },
                path,
                method,
                metadata,
                payload,
            },
        )
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((frame, used))) = protocol::decode(&bytes, 1 << 16) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(frame.encoded_len(), used);
        }
    }

    #[test]
    fn random_bodies_after_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        seq in any::<u64>(),
    ) {
        let mut bytes = vec![protocol::MAGIC, 0, 0, 0x30];
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        let _ = protocol::decode(&bytes, 1 << 16);
    }

    #[test]
    fn round_trip_and_every_prefix(msg in message()) {
        let bytes = msg.to_bytes();
        let (frame, used) = protocol::decode(&bytes, 1 << 16).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(frame.to_message(), msg);
        for n in 0..bytes.len() {
            prop_assert_eq!(protocol::decode(&bytes[..n], 1 << 16), Ok(None));
        }
    }
}
