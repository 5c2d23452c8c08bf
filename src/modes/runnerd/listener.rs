//! runnerd's accept loop: connection caps, a descriptor reserve, and a drain on shutdown.
//!
//! A session can open thousands of idle TCP connections to its own runnerd (or another's, on a
//! shared network). Each costs a descriptor, and a runnerd out of descriptors cannot spawn. So:
//! - at most `max_connections` connections at once, and never so many that fewer than
//!   [`FD_RESERVE`](super::limits::FD_RESERVE) descriptors stay free for execs and files;
//! - at most `max_per_source` connections from one source address that have not yet sent an
//!   authenticated request. Once a connection's request carries the right token it no longer counts
//!   against its source (the spawner's few replicas carry many streams);
//! - a connection over either cap is closed right after `accept`, before anything is read.
//!
//! Shutdown: one signal (a `watch` channel of [`Stage`]) reaches the accept loop and every
//! connection task. At `StopAccepting` the listener closes; at `Drain` (after the execs ended, so
//! their readers got the last events) each connection asks hyper to finish the request in flight
//! and close. The connection tasks live in one `JoinSet`, awaited with a deadline and aborted
//! after it.
use super::limits::{CONNECTION_DRAIN_TIMEOUT, HEADER_READ_TIMEOUT};
use super::server;
use super::source_allowlist::SourceAllowlist;
use super::state::Daemon;
use crate::shared::http::{error, HttpResponse};
use crate::shared::tls::{MaybeTls, TlsAcceptor};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where shutdown stands; sent over one `watch` channel to every task runnerd starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Normal operation.
    Serving,
    /// No new connections; open ones go on (streams deliver the execs' last events).
    StopAccepting,
    /// Finish what is in flight and close.
    Drain,
}

/// The caps the accept loop enforces.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionCaps {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections from one source address that have not yet authenticated.
    pub max_per_source: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    unauthenticated: HashMap<IpAddr, usize>,
}

/// Open connections, in total and unauthenticated per source.
pub struct ConnectionTable {
    caps: ConnectionCaps,
    counts: Mutex<Counts>,
}

/// One admitted connection; gives its slots back when dropped.
pub struct Admission {
    table: Arc<ConnectionTable>,
    source: IpAddr,
    authenticated: AtomicBool,
}

impl ConnectionTable {
    pub fn new(caps: ConnectionCaps) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable {
            caps,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Admission> {
        let mut counts = self.counts();
        let from_source = counts.unauthenticated.get(&source).copied().unwrap_or(0);
        if counts.total >= self.caps.max_connections || from_source >= self.caps.max_per_source {
            return None;
        }
        counts.total += 1;
        counts.unauthenticated.insert(source, from_source + 1);
        Some(Admission {
            table: self.clone(),
            source,
            authenticated: AtomicBool::new(false),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    fn release_source(&self, source: IpAddr) {
        let mut counts = self.counts();
        if let Some(count) = counts.unauthenticated.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                counts.unauthenticated.remove(&source);
            }
        }
    }
}

impl Admission {
    /// The connection sent an authenticated request: it stops counting against its source.
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::Relaxed) {
            self.table.release_source(self.source);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.authenticated.load(Ordering::Relaxed) {
            self.table.release_source(self.source);
        }
        self.table.counts().total -= 1;
    }
}

/// Accepts connections until the stage reaches `StopAccepting`; at `Drain`, drains the open ones
/// (finish what is in flight, close) for up to [`CONNECTION_DRAIN_TIMEOUT`] and aborts what is left.
/// With `tls`, every connection is TLS (the handshake within [`HEADER_READ_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    sources: Arc<SourceAllowlist>,
    table: Arc<ConnectionTable>,
    mut stage: watch::Receiver<Stage>,
    tls: Option<TlsAcceptor>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stage.wait_for(|s| *s >= Stage::StopAccepting) => break,
            // Reap finished connection tasks as we go so the set does not grow with history.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends (should not happen below the caps): back off, don't spin.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !sources.admits(peer.ip()) {
            // Not from the control plane's networks: closed before any read (source_allowlist).
            tracing::debug!(%peer, "connection refused: source not in the allowlist");
            drop(stream);
            continue;
        }
        let Some(admission) = table.admit(peer.ip()) else {
            // Closed before any read: costs the descriptor for an instant only.
            tracing::debug!(%peer, "connection refused: connection cap reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            daemon.clone(),
            Arc::new(admission),
            stage.clone(),
            tls.clone(),
        ));
    }
    drop(listener);
    loop {
        tokio::select! {
            _ = stage.wait_for(|s| *s >= Stage::Drain) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "draining connections");
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(CONNECTION_DRAIN_TIMEOUT, drained)
        .await
        .is_err()
    {
        tracing::info!(left = connections.len(), "closing connections still open");
        connections.shutdown().await;
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    daemon: Arc<Daemon>,
    admission: Arc<Admission>,
    mut stage: watch::Receiver<Stage>,
    tls: Option<TlsAcceptor>,
) {
    let stream = match MaybeTls::accept(stream, tls.as_ref(), HEADER_READ_TIMEOUT).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%err, "TLS handshake failed");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let daemon = daemon.clone();
        if server::authorized(&daemon, &request) {
            admission.authenticated();
        }
        // Each request runs as its own task so a bug that panics costs that request a 500,
        // never the connection or the process.
        let response = tokio::spawn(server::handle(daemon, request));
        async move {
            Ok::<HttpResponse, Infallible>(
                response
                    .await
                    .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)),
            )
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Streams are the bulk of runnerd's connections: skipping hyper's read for end-of-file
        // while a response streams saves an 8 KiB buffer each. A client that went away is noticed
        // at the next write; its exec goes on either way.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, "connection ended with an error");
                }
                return;
            }
            _ = stage.wait_for(|s| *s >= Stage::Drain), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-source cap counts unauthenticated connections only; the total cap counts all;
    /// dropping an admission gives its slots back.
    #[test]
    fn caps_count_and_release() {
        let table = ConnectionTable::new(ConnectionCaps {
            max_connections: 4,
            max_per_source: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = table.admit(a).unwrap();
        let second = table.admit(a).unwrap();
        assert!(table.admit(a).is_none(), "per-source cap");
        first.authenticated();
        let third = table.admit(a).unwrap();
        let fourth = table.admit(b).unwrap();
        assert_eq!(table.open(), 4);
        assert!(table.admit(b).is_none(), "total cap");
        drop((first, second, third, fourth));
        assert_eq!(table.open(), 0);
        assert!(table.counts().unauthenticated.is_empty());
    }
}
