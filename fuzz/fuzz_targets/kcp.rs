//! kcp-go's packet layers (AES-CFB + CRC32 crypt header, Reed-Solomon 10+3 FEC groups) take
//! any datagrams, with or without a valid CRC, without panicking or growing without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    percore::transport::kcp::fuzz_packets(data);
});
