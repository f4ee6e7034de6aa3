//! `percore call`: one call from the command line, JSON in and JSON out.

use std::time::Duration;

use serde_json::Value;

use super::{Client, Error, Options, Request, json};
use crate::codec::SerializeType;

/// What `percore call` was asked to do.
#[derive(Clone, Debug)]
pub struct CallCommand {
    /// `network@host:port`, or `etcd://HOST:PORT/BASE`: the first active server of the
    /// service registered there.
    pub address: String,
    /// `Service.Method` (split at the last dot).
    pub service_method: String,
    /// The args as JSON text.
    pub args: String,
    /// Codec on the wire (MsgPack by default, like the Go client).
    pub codec: SerializeType,
    /// Request metadata.
    pub metadata: Vec<(String, String)>,
    /// Call timeout, also sent as `__ServerTimeout`.
    pub timeout: Duration,
    /// Gzip the args when they are over 1024 bytes.
    pub gzip: bool,
    /// Auth token (`__AUTH`).
    pub auth: Option<String>,
    /// Dial over TLS with these settings.
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// Settings of a `kcp@` server.
    pub kcp: crate::transport::kcp::KcpConfig,
}

/// Why `percore call` failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The command line is wrong (names the bad part).
    #[error("{0}")]
    Usage(String),
    /// The call failed; [`Error::Service`] carries the server's own text.
    #[error(transparent)]
    Call(#[from] Error),
    /// No executor could be started.
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
}

/// For `etcd://HOST:PORT[,HOST:PORT]/BASE`: the addresses of `service`'s active servers
/// registered there (`state=inactive` left out), listed once. None for any other address.
pub fn etcd_servers(address: &str, service: &str) -> Result<Option<Vec<String>>, String> {
    let Some(url) = crate::etcd::parse_url(address) else {
        return Ok(None);
    };
    let (endpoints, base) = url?;
    let connect = crate::etcd::EtcdConnect::new(endpoints);
    let servers = super::etcd::list_once(&connect, &base, service).map_err(|e| e.to_string())?;
    Ok(Some(
        super::discovery::filter(servers, None)
            .into_iter()
            .map(|s| s.address)
            .collect(),
    ))
}

/// Runs the call on a fresh executor and returns `{"reply": ..., "metadata": {...}}`.
pub fn run_call(cmd: CallCommand) -> Result<Value, CallError> {
    let (service, method) = cmd
        .service_method
        .rsplit_once('.')
        .filter(|(s, m)| !s.is_empty() && !m.is_empty())
        .ok_or_else(|| {
            CallError::Usage(format!("{:?} is not Service.Method", cmd.service_method))
        })?;
    let (service, method) = (service.to_owned(), method.to_owned());
    let args: Value = serde_json::from_str(&cmd.args)
        .map_err(|e| CallError::Usage(format!("ARGS {:?} is not JSON: {e}", cmd.args)))?;
    let payload =
        json::to_payload(&args, cmd.codec).map_err(|e| CallError::Usage(format!("ARGS: {e}")))?;
    let options = Options {
        serialize: cmd.codec,
        gzip: cmd.gzip,
        auth_token: cmd.auth.clone(),
        connect_timeout: cmd.timeout,
        tls: cmd.tls.clone(),
        kcp: cmd.kcp.clone(),
        ..Options::default()
    };
    cmd.kcp
        .check()
        .map_err(|e| CallError::Usage(format!("--kcp {e}")))?;
    // Checked here (files read) so bad TLS options fail before an executor starts.
    if let Some(tls) = &cmd.tls {
        crate::transport::tls::client_config(tls).map_err(|e| CallError::Usage(e.to_string()))?;
    }
    let mut cmd = cmd;
    if let Some(servers) = etcd_servers(&cmd.address, &service).map_err(CallError::Usage)? {
        cmd.address = servers.into_iter().next().ok_or_else(|| {
            CallError::Usage(format!(
                "no active server of {service} is registered at {}",
                cmd.address
            ))
        })?;
    }
    // Parsed here so a bad address fails before an executor starts.
    cmd.address
        .parse::<crate::transport::addr::Addr>()
        .map_err(Error::from)?;
    let reply = super::block_on(move || async move {
        let client = Client::new(&cmd.address, options)?;
        let req = Request {
            metadata: &cmd.metadata,
            timeout: Some(cmd.timeout),
            ..Request::new(&service, &method, cmd.codec, &payload)
        };
        client.call_raw(&req).await
    })??;
    let codec = SerializeType::from_wire(reply.header.serialize).unwrap_or(cmd.codec);
    let value = json::from_payload(&reply.payload, codec).map_err(Error::from)?;
    let metadata: serde_json::Map<String, Value> = reply
        .metadata
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(serde_json::json!({ "reply": value, "metadata": metadata }))
}
