//! runnerd's accept loop: connection caps, a descriptor reserve, and a drain on shutdown.
//!
//! A session can open thousands of idle TCP connections to its own runnerd (or another's, on a
//! shared network). Each costs a descriptor, and a runnerd out of descriptors cannot spawn. So:
//! - at most `max_connections` connections at once, and never so many that fewer than
//!   [`FD_RESERVE`](super::limits::FD_RESERVE) descriptors stay free for execs and files;
//! - at most `max_per_source` connections from one source address that have not yet sent an
//!   authenticated request are read at once. Once a connection's request carries the right token
//!   it no longer counts against its source (the spawner's few replicas carry many streams). More
//!   fresh connections from that source are parked unread until a slot frees, for a while at most
//!   ([`super::parking`]): a spawner's burst waits instead of being reset, an idle flood does not
//!   get read;
//! - a connection over the total cap (and not taking a parked connection's place) is closed right
//!   after `accept`, before anything is read.
//!
//! Shutdown: one signal (a `watch` channel of [`Stage`]) reaches the accept loop and every
//! connection task. At `StopAccepting` the listener closes; at `Drain` (after the execs ended, so
//! their readers got the last events) each connection asks hyper to finish the request in flight
//! and close. The connection tasks live in one `JoinSet`, awaited with a deadline and aborted
//! after it.
use super::limits::{CONNECTION_DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, PRE_AUTH_PARK_TIMEOUT};
use super::parking::ParkingLot;
use super::server;
use super::source_allowlist::SourceAllowlist;
use super::state::Daemon;
use crate::shared::http::{error, HttpResponse};
use crate::shared::tls::{MaybeTls, TlsAcceptor};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

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
    /// Connections open at once, in total (parked ones included).
    pub max_connections: usize,
    /// Connections from one source address that have not yet authenticated and are being read;
    /// more wait, parked, for one of these slots (see [`super::parking`]).
    pub max_per_source: usize,
}

struct Counts<S> {
    /// Every connection held: served, parked, or handed over and not yet started.
    total: usize,
    /// Per source: connections being read (or handed over) that have not yet authenticated.
    unauthenticated: HashMap<IpAddr, usize>,
    parked: ParkingLot<S>,
    /// Parked connections given a pre-auth slot, for the accept loop to start.
    unparked: VecDeque<(S, IpAddr)>,
    /// The accept loop has stopped: nothing parks or is handed over any more.
    closed: bool,
}

/// Open connections, in total and unauthenticated per source, and the parked ones. `S` is the
/// connection (a `TcpStream`; tests use plain values).
pub struct ConnectionTable<S = TcpStream> {
    caps: ConnectionCaps,
    counts: Mutex<Counts<S>>,
    /// Woken when a parked connection was handed a slot.
    unparked: Notify,
}

/// One admitted connection; gives its slots back when dropped.
pub struct Admission<S = TcpStream> {
    table: Arc<ConnectionTable<S>>,
    source: IpAddr,
    authenticated: AtomicBool,
}

/// What became of a connection offered to the table.
pub enum Offer<S> {
    /// Serve it now.
    Admitted(S, Admission<S>),
    /// Held until a pre-auth slot of its source frees ([`ConnectionTable::unparked`]).
    Parked,
    /// Over the caps: close it unread.
    Refused(S),
}

impl<S> ConnectionTable<S> {
    pub fn new(caps: ConnectionCaps) -> Arc<ConnectionTable<S>> {
        Arc::new(ConnectionTable {
            caps,
            counts: Mutex::new(Counts {
                total: 0,
                unauthenticated: HashMap::new(),
                parked: ParkingLot::default(),
                unparked: VecDeque::new(),
                closed: false,
            }),
            unparked: Notify::new(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts<S>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits, parks or refuses a connection just accepted from `source`. Over the per-source
    /// pre-auth cap it parks (for [`PRE_AUTH_PARK_TIMEOUT`] at most). At the total cap it may take
    /// the place of a parked connection of an address parking more (dropped, unread).
    pub fn offer(self: &Arc<Self>, source: IpAddr, connection: S, now: Instant) -> Offer<S> {
        let source = source.to_canonical();
        let mut counts = self.counts();
        if counts.closed {
            return Offer::Refused(connection);
        }
        let pre_auth = counts.unauthenticated.get(&source).copied().unwrap_or(0);
        let parks = pre_auth >= self.caps.max_per_source;
        let mut evicted = None;
        if counts.total >= self.caps.max_connections {
            let parked_after = counts.parked.len_of(source) + usize::from(parks);
            match counts.parked.evict_for(parked_after) {
                Some(victim) => evicted = Some(victim),
                None => return Offer::Refused(connection),
            }
            counts.total -= 1;
        }
        counts.total += 1;
        let offer = if parks {
            counts
                .parked
                .push(source, connection, now + PRE_AUTH_PARK_TIMEOUT);
            Offer::Parked
        } else {
            counts.unauthenticated.insert(source, pre_auth + 1);
            Offer::Admitted(connection, self.admission(source))
        };
        drop(counts);
        drop(evicted);
        offer
    }

    fn admission(self: &Arc<Self>, source: IpAddr) -> Admission<S> {
        Admission {
            table: self.clone(),
            source,
            authenticated: AtomicBool::new(false),
        }
    }

    /// The next parked connection handed a pre-auth slot, with its admission. Meanwhile drops
    /// parked connections whose wait ran out. Cancel-safe: a connection is taken only in the
    /// poll that returns it.
    pub async fn unparked(self: &Arc<Self>) -> (S, Admission<S>) {
        loop {
            let handed = self.unparked.notified();
            let next_expiry = {
                let mut counts = self.counts();
                if let Some((connection, source)) = counts.unparked.pop_front() {
                    return (connection, self.admission(source));
                }
                let (expired, next) = counts.parked.expire(Instant::now());
                counts.total -= expired.len();
                next
            };
            match next_expiry {
                Some(at) => {
                    tokio::select! {
                        _ = handed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => handed.await,
            }
        }
    }

    /// Stops parking and handing over; closes what is parked or handed over and not started.
    pub fn close(&self) {
        let mut counts = self.counts();
        counts.closed = true;
        let parked = counts.parked.drain();
        let unparked: Vec<_> = counts.unparked.drain(..).collect();
        counts.total -= parked.len() + unparked.len();
        for (_, source) in &unparked {
            release_pre_auth(&mut counts.unauthenticated, *source);
        }
        drop(counts);
        drop((parked, unparked));
    }

    /// Connections held now (served and parked).
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// A pre-auth slot of `source` frees: it passes to the oldest parked connection of that
    /// source still within its wait, if any.
    fn release_source(&self, source: IpAddr) {
        let mut counts = self.counts();
        let mut expired = Vec::new();
        let heir = if counts.closed {
            None
        } else {
            counts
                .parked
                .pop_oldest(source, Instant::now(), &mut expired)
        };
        counts.total -= expired.len();
        match heir {
            Some(connection) => {
                counts.unparked.push_back((connection, source));
                self.unparked.notify_one();
            }
            None => release_pre_auth(&mut counts.unauthenticated, source),
        }
        drop(counts);
        drop(expired);
    }
}

fn release_pre_auth(unauthenticated: &mut HashMap<IpAddr, usize>, source: IpAddr) {
    if let Some(count) = unauthenticated.get_mut(&source) {
        *count -= 1;
        if *count == 0 {
            unauthenticated.remove(&source);
        }
    }
}

impl<S> Admission<S> {
    /// The connection sent an authenticated request: it stops counting against its source.
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::Relaxed) {
            self.table.release_source(self.source);
        }
    }
}

impl<S> Drop for Admission<S> {
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
    let tasks_stage = stage.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stage.wait_for(|s| *s >= Stage::StopAccepting) => break,
            // Reap finished connection tasks as we go so the set does not grow with history.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            (stream, admission) = table.unparked() => {
                connections.spawn(connection(stream, daemon.clone(), Arc::new(admission), tasks_stage.clone(), tls.clone()));
                continue;
            }
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
        let _ = stream.set_nodelay(true);
        match table.offer(peer.ip(), stream, Instant::now()) {
            Offer::Admitted(stream, admission) => {
                connections.spawn(connection(
                    stream,
                    daemon.clone(),
                    Arc::new(admission),
                    tasks_stage.clone(),
                    tls.clone(),
                ));
            }
            Offer::Parked => {}
            Offer::Refused(stream) => {
                // Closed before any read: costs the descriptor for an instant only.
                tracing::debug!(%peer, "connection refused: connection cap reached");
                drop(stream);
            }
        }
    }
    drop(listener);
    table.close();
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admitted(offer: Offer<u32>) -> Admission<u32> {
        match offer {
            Offer::Admitted(_, admission) => admission,
            _ => panic!("not admitted"),
        }
    }

    fn table(max_connections: usize, max_per_source: usize) -> Arc<ConnectionTable<u32>> {
        ConnectionTable::new(ConnectionCaps {
            max_connections,
            max_per_source,
        })
    }

    /// The per-source cap counts unauthenticated connections only; the total cap counts all;
    /// dropping an admission gives its slots back.
    #[test]
    fn caps_count_and_release() {
        let table = table(4, 2);
        let now = Instant::now();
        let first = admitted(table.offer(ip(1), 1, now));
        let second = admitted(table.offer(ip(1), 2, now));
        first.authenticated();
        let third = admitted(table.offer(ip(1), 3, now));
        let fourth = admitted(table.offer(ip(2), 4, now));
        assert_eq!(table.open(), 4);
        assert!(matches!(table.offer(ip(2), 5, now), Offer::Refused(5)));
        drop((first, second, third, fourth));
        assert_eq!(table.open(), 0);
        assert!(table.counts().unauthenticated.is_empty());
    }

    /// Over the per-source cap a connection is parked, not refused; it gets the first pre-auth
    /// slot its source frees (by authenticating or by closing), oldest first.
    #[tokio::test]
    async fn over_the_source_cap_waits_for_a_slot() {
        let table = table(10, 1);
        let now = Instant::now();
        let first = admitted(table.offer(ip(1), 1, now));
        assert!(matches!(table.offer(ip(1), 2, now), Offer::Parked));
        assert!(matches!(table.offer(ip(1), 3, now), Offer::Parked));
        assert_eq!(table.open(), 3);
        first.authenticated();
        let (connection, second) = table.unparked().await;
        assert_eq!(connection, 2);
        drop(second);
        let (connection, third) = table.unparked().await;
        assert_eq!(connection, 3);
        assert_eq!(table.counts().unauthenticated[&ip(1)], 1);
        drop((first, third));
        assert_eq!(table.open(), 0);
        assert!(table.counts().unauthenticated.is_empty());
    }

    /// A parked connection whose wait ran out is closed, never handed a slot.
    #[tokio::test(start_paused = true)]
    async fn parked_connections_expire() {
        let table = table(10, 1);
        let first = admitted(table.offer(ip(1), 1, Instant::now()));
        assert!(matches!(
            table.offer(ip(1), 2, Instant::now()),
            Offer::Parked
        ));
        let waiting = tokio::time::timeout(PRE_AUTH_PARK_TIMEOUT * 2, table.unparked()).await;
        assert!(waiting.is_err(), "nothing is handed over");
        assert_eq!(table.open(), 1, "the parked connection was closed");
        drop(first);
        assert_eq!(table.open(), 0);
    }

    /// At the total cap, a newcomer from another address takes the place of a parked connection
    /// of the address parking the most; the flooding address itself cannot.
    #[test]
    fn parked_places_are_shared_fairly() {
        let table = table(4, 1);
        let now = Instant::now();
        let held = admitted(table.offer(ip(1), 1, now));
        for n in 2..=4 {
            assert!(matches!(table.offer(ip(1), n, now), Offer::Parked));
        }
        assert!(matches!(table.offer(ip(1), 5, now), Offer::Refused(5)));
        let other = admitted(table.offer(ip(2), 6, now));
        assert!(matches!(table.offer(ip(2), 7, now), Offer::Parked));
        assert!(
            matches!(table.offer(ip(2), 8, now), Offer::Refused(8)),
            "one each parked"
        );
        assert_eq!(table.open(), 4);
        table.close();
        assert_eq!(table.open(), 2);
        drop((held, other));
        assert_eq!(table.open(), 0);
        assert!(table.counts().unauthenticated.is_empty());
    }
}
