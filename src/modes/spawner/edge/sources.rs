//! Networks the spawner API is never served to: connections whose peer or local address lies in
//! one of them are closed right after `accept`, before a byte is read.
//!
//! Sessions live on the sandbox network, and a spawner that reaches their runnerd is on it too (or,
//! run on the host, owns the bridge's gateway address). Without this fence a session could open
//! connections to the spawner's address on that network and make it parse requests or serve the
//! unauthenticated `/metrics`. The platform reaches the spawner another way (its published port,
//! the control network, loopback), so nothing legitimate arrives from those networks.
//! The networks are `SANDBOX_API_DENY_SOURCES` plus, with the Docker backend, every subnet of the
//! sandbox network (read from the engine at boot).
use crate::shared::cidr::Cidr;
use std::net::IpAddr;

/// Environment variable naming extra networks to fence off (comma/space separated CIDRs).
pub const API_DENY_SOURCES_ENV: &str = "SANDBOX_API_DENY_SOURCES";

/// The fenced-off networks.
#[derive(Clone, Debug, Default)]
pub struct SourceFence {
    networks: Vec<Cidr>,
}

impl SourceFence {
    pub fn new(networks: Vec<Cidr>) -> SourceFence {
        SourceFence { networks }
    }

    /// The networks, for the boot log.
    pub fn networks(&self) -> &[Cidr] {
        &self.networks
    }

    /// Whether a connection from `peer` that arrived on `local` must be closed unread.
    pub fn refuses(&self, peer: IpAddr, local: Option<IpAddr>) -> bool {
        self.networks
            .iter()
            .any(|n| n.contains(peer) || local.is_some_and(|local| n.contains(local)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection is refused when either end lies in a fenced network; loopback and the
    /// platform's networks pass.
    #[test]
    fn refuses_either_end_in_a_fenced_network() {
        let fence = SourceFence::new(vec![Cidr::parse("10.213.0.0/16").unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(fence.refuses(ip("10.213.128.5"), Some(ip("10.213.0.10"))));
        assert!(fence.refuses(ip("10.213.128.5"), None));
        // A session's packet to the spawner's address there, whatever the peer looks like.
        assert!(fence.refuses(ip("172.20.0.1"), Some(ip("10.213.0.10"))));
        assert!(!fence.refuses(ip("127.0.0.1"), Some(ip("127.0.0.1"))));
        assert!(!fence.refuses(ip("172.20.0.1"), Some(ip("172.20.0.3"))));
        assert!(!SourceFence::default().refuses(ip("10.213.0.1"), None));
    }
}
