//! Per network: how to listen and how to dial. No rpcx semantics live here.

pub mod dial;
pub mod tcp;
