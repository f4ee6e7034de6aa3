//! `quic@` listeners: a QUIC thread per listener (see [`crate::transport::quic`]) whose streams
//! go to the cores round robin through the [`Handoff`](super::Handoff), each then served by the
//! one accept path like any connection (limit, registration, metrics under transport `quic`,
//! drain).

use std::sync::Arc;

use super::accept::Handed;
use super::{Listening, ServerError, Stop};
use crate::config::{Config, ConfigError};
use crate::metrics::Transport;
use crate::service::Registry;
use crate::transport::addr::{Addr, Network};
use crate::transport::quic::{self, QuicListener, QuicStream};
use crate::transport::tls;

/// Binds `listen` and starts its QUIC thread, handing streams to `cores` cores. The thread stops
/// accepting when `stop` triggers; [`QuicListener::shutdown`] then closes it.
pub(super) fn start<R: Registry>(
    config: &Config,
    listen: &Addr,
    cores: usize,
    stop: &Arc<Stop>,
) -> Result<(Handed<R>, QuicListener), ServerError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "server.listen",
        message,
    };
    let addr = listen.socket_addr().map_err(|e| invalid(e.to_string()))?;
    // `Config::validate` has refused a quic@ listener without [tls] already.
    let tls = tls::quic_server_config(&config.tls)?
        .ok_or_else(|| invalid(format!("{listen}: QUIC needs [tls] (tls.cert and tls.key)")))?;
    let socket = quic::bind(addr)?;
    let bound = socket.local_addr().map_err(|e| ServerError::Listen {
        addr: listen.to_string(),
        error: e.into(),
    })?;
    let (handed, handoff) = Handed::<R>::new::<QuicStream>(
        Listening::reactor(Network::Quic, bound),
        Transport::Quic,
        cores,
    );
    let sink: quic::StreamSink = Box::new(move |stream, peer| {
        // Every core has stopped taking streams (shutdown): dropping it finishes it.
        if let Err(stream) = handoff.send(stream, peer) {
            drop(stream);
        }
    });
    let stop = Arc::clone(stop);
    let listener = quic::listen_on(socket, tls, &config.quic, sink, async move {
        stop.wait().await;
    })?;
    Ok((handed, listener))
}
