//! Admission of connections: a total cap, and a per-source-address cap on connections that have
//! not yet carried an authenticated request. A refused connection is closed before a byte of it
//! is read.
use super::EdgeLimits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Why a connection was closed at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    TooManyConnections,
    /// This address already holds its share of unauthenticated connections.
    TooManyFromAddress,
}

#[derive(Default)]
struct Counts {
    open: usize,
    unauthenticated: HashMap<IpAddr, usize>,
}

/// Counts open connections.
pub struct ConnectionGate {
    max_connections: usize,
    max_preauth_per_address: usize,
    counts: Mutex<Counts>,
}

impl ConnectionGate {
    pub fn new(limits: &EdgeLimits) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            max_connections: limits.max_connections,
            max_preauth_per_address: limits.max_preauth_connections_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`, or says why not. The ticket frees its place when dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionTicket, Refusal> {
        // An IPv4 client on a dual-stack socket is the same address as over IPv4.
        let peer = peer.to_canonical();
        let mut counts = self.counts();
        if counts.open >= self.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let unauthenticated = counts.unauthenticated.entry(peer).or_default();
        if *unauthenticated >= self.max_preauth_per_address {
            return Err(Refusal::TooManyFromAddress);
        }
        *unauthenticated += 1;
        counts.open += 1;
        Ok(ConnectionTicket {
            gate: self.clone(),
            peer,
            unauthenticated: AtomicBool::new(true),
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.counts().open
    }

    fn release_unauthenticated(&self, counts: &mut Counts, peer: IpAddr) {
        if let Some(n) = counts.unauthenticated.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                counts.unauthenticated.remove(&peer);
            }
        }
    }
}

/// One admitted connection's place.
pub struct ConnectionTicket {
    gate: Arc<ConnectionGate>,
    peer: IpAddr,
    unauthenticated: AtomicBool,
}

impl ConnectionTicket {
    /// A request on this connection authenticated: it no longer counts against its address.
    pub fn authenticated(&self) {
        if self.unauthenticated.swap(false, Ordering::AcqRel) {
            let mut counts = self.gate.counts();
            self.gate.release_unauthenticated(&mut counts, self.peer);
        }
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        counts.open -= 1;
        if *self.unauthenticated.get_mut() {
            self.gate.release_unauthenticated(&mut counts, self.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_address: usize) -> Arc<ConnectionGate> {
        ConnectionGate::new(&EdgeLimits {
            max_connections: total,
            max_preauth_connections_per_address: per_address,
            ..EdgeLimits::default()
        })
    }

    /// The per-address cap counts only unauthenticated connections; the total counts all; both
    /// free their places when connections close.
    #[test]
    fn caps_count_what_they_should() {
        let gate = gate(6, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::TooManyFromAddress));
        // The same address over IPv6-mapped IPv4 is the same address.
        assert_eq!(
            gate.admit("::ffff:10.0.0.1".parse().unwrap()).err(),
            Some(Refusal::TooManyFromAddress)
        );
        first.authenticated();
        first.authenticated();
        let third = gate.admit(a).unwrap();
        let _b1 = gate.admit(b).unwrap();
        let _b2 = gate.admit(b).unwrap();
        let c = gate.admit("10.0.0.3".parse().unwrap()).unwrap();
        assert_eq!(gate.open(), 6);
        assert_eq!(
            gate.admit("10.0.0.4".parse().unwrap()).err(),
            Some(Refusal::TooManyConnections)
        );
        drop((second, third, c));
        assert_eq!(gate.open(), 3);
        let _again = gate.admit(a).unwrap();
        let _again2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::TooManyFromAddress));
        drop(first);
        assert_eq!(gate.open(), 4);
    }
}
