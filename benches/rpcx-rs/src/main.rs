//! rpcx_server 0.3.0 serving Arith.Mul and Arith.Add (Go's Args{A,B} / Reply{C}), as in the
//! rpcx-rs examples. Usage: rpcx-rs-arith [ADDR] [THREADS] (defaults 127.0.0.1:8974, 0 = 2 × CPUs).

use rpcx_derive::*;
use rpcx_protocol::*;
use rpcx_server::*;
use serde::{Deserialize, Serialize};
// The RpcxParam derive calls the deprecated `Error::description`; it needs the trait in scope.
#[allow(unused_imports)]
use std::error::Error as _;

#[derive(RpcxParam, Default, Debug, Copy, Clone, Serialize, Deserialize)]
pub struct ArithAddArgs {
    #[serde(rename = "A")]
    pub a: i64,
    #[serde(rename = "B")]
    pub b: i64,
}

#[derive(RpcxParam, Default, Debug, Copy, Clone, Serialize, Deserialize)]
pub struct ArithAddReply {
    #[serde(rename = "C")]
    pub c: i64,
}

fn add(args: ArithAddArgs) -> ArithAddReply {
    ArithAddReply { c: args.a.wrapping_add(args.b) }
}

fn mul(args: ArithAddArgs) -> ArithAddReply {
    ArithAddReply { c: args.a.wrapping_mul(args.b) }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8974".to_owned());
    let threads: u32 = args.next().map(|t| t.parse().expect("threads")).unwrap_or(0);
    let mut rpc_server = Server::new(addr, threads);
    register_func!(rpc_server, "Arith", "Add", add, "".to_owned(), ArithAddArgs, ArithAddReply);
    register_func!(rpc_server, "Arith", "Mul", mul, "".to_owned(), ArithAddArgs, ArithAddReply);
    rpc_server.start().unwrap();
}
