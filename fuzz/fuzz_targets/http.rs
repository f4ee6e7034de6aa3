//! The HTTP/1.1 request reader (heads, Content-Length and chunked bodies) takes any bytes, cut
//! anywhere, without panicking or growing past its limits; the sniffer and the CONNECT head
//! reader take any first bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::transport::http_connect;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    percore::server::fuzz_reader(rest, usize::from(cut));
    if let Some(end) = http_connect::head_end(rest) {
        assert!(end <= rest.len());
        let _ = http_connect::request_line(&rest[..end]);
    }
});
