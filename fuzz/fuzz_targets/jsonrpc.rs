//! JSON-RPC 2.0 bodies: any bytes, and any JSON, get the request checks without a panic, and
//! every answer the server would write for them is well-formed JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    percore::server::fuzz_jsonrpc(data);
});
