//! The spawner's accept loop: each connection is admitted by the [`ConnectionGate`] (refused ones
//! are closed before a byte is read), served as a task of one `JoinSet`, and told to finish its
//! in-flight request and close when the drain signal fires.
use super::api;
use super::edge::connections::{ConnectionGate, ConnectionTicket, Refusal};
use super::edge::sources::SourceFence;
use super::state::Spawner;
use crate::shared::http::{accept_failed, serve_connection, ServeOptions};
use crate::shared::tls::{MaybeTls, TlsAcceptor};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Time a client has to send the request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const OPTIONS: ServeOptions = ServeOptions {
    header_read_timeout: HEADER_READ_TIMEOUT,
    // A platform that went away must release its SSE proxy (and the session's keep-alive) at
    // once, not at the next keepalive.
    allow_half_close: false,
};

/// The one signal that tells every task of the spawner to finish: `true` once shutdown began.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    /// A drain signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Drain) {
        let (tx, rx) = watch::channel(false);
        (tx, Drain(rx))
    }

    /// Resolves once shutdown began (or the sender is gone, which means the same).
    pub async fn fired(mut self) {
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

/// Accepts connections until `drain` fires, then waits for the open ones to finish their
/// in-flight requests. Dropping this future ends every connection at once. With `tls`, every
/// connection is TLS (the handshake within [`HEADER_READ_TIMEOUT`]); the fence closes connections
/// from sessions' networks before any handshake or read.
pub async fn accept_loop(
    listener: TcpListener,
    spawner: Arc<Spawner>,
    fence: Arc<SourceFence>,
    drain: Drain,
    tls: Option<TlsAcceptor>,
) {
    let gate = ConnectionGate::new(&spawner.config.edge);
    let mut connections = JoinSet::new();
    let stop = drain.clone().fired();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        accept_failed(err).await;
                        continue;
                    }
                };
                if fence.refuses(peer.ip(), stream.local_addr().ok().map(|a| a.ip())) {
                    // A session's network: closed unread (edge::sources).
                    spawner.metrics.edge_refused("session_network");
                    drop(stream);
                    continue;
                }
                match gate.admit(peer.ip()) {
                    Ok(ticket) => {
                        connections.spawn(connection(
                            stream,
                            spawner.clone(),
                            ticket,
                            drain.clone(),
                            tls.clone(),
                        ));
                    }
                    Err(refusal) => {
                        // Closed unread; counted, not logged line by line (a flood would flood the log).
                        spawner.metrics.edge_refused(match refusal {
                            Refusal::TooManyConnections => "connections_total",
                            Refusal::TooManyFromAddress => "connections_per_address",
                        });
                        drop(stream);
                    }
                }
            }
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: tokio::net::TcpStream,
    spawner: Arc<Spawner>,
    ticket: ConnectionTicket,
    drain: Drain,
    tls: Option<TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    let stream = match MaybeTls::accept(stream, tls.as_ref(), HEADER_READ_TIMEOUT).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%err, "TLS handshake failed");
            return;
        }
    };
    let ticket = Arc::new(ticket);
    serve_connection(
        stream,
        OPTIONS,
        move |mut request| {
            request.extensions_mut().insert(ticket.clone());
            api::handle(spawner.clone(), request)
        },
        drain.fired(),
    )
    .await;
}
