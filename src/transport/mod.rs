//! Per network: how to listen and how to dial. No rpcx semantics live here.
//!
//! | module | job |
//! |---|---|
//! | [`addr`] | `network@address`: the one address type (parse, print, the network enum) |
//! | [`tcp`] | one SO_REUSEPORT listening socket per core (`tcp`, `reuseport`, `http`) |
//! | [`unix`] | one Unix listening socket shared by the cores; stale-file handling |
//! | [`tls`] | rustls configs (server from `[tls]`, client from dial options) |
//! | [`http_connect`] | rpcx's HTTP CONNECT bytes, the head reader, the client handshake |
//! | [`prefixed`] | a stream that replays bytes already read (sniffing inside TLS, CONNECT) |
//! | [`kcp`] | rpcx's `kcp` network: kcp-go's FEC and crypt layers, the KCP reactor thread, the streams it hands to cores |
//! | [`quic`] | QUIC with quinn on its own reactor thread: the listener, the dialer, the stream |
//! | [`connector`] | the one dialer (client, `percore call`, `percore bench`): every network, over TLS or not, and its one stream type |

pub mod addr;
pub mod connector;
pub mod http_connect;
pub mod kcp;
pub mod prefixed;
pub mod quic;
pub mod tcp;
pub mod tls;
pub mod unix;
