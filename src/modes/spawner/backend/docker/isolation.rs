//! Keeps sessions on the shared sandbox network from reaching the control plane or each other.
//!
//! - Every session's runnerd gets an allowlist of source networks (`allowed-sources` in its state
//!   base, [`RUNNERD_STATE_PATH`]): the control sources, i.e. `SANDBOX_DOCKER_CONTROL_SOURCES`, or
//!   when unset the one address this spawner reaches the network from. runnerd closes connections
//!   from anywhere else before reading a byte, so another session cannot make it answer or hold
//!   its descriptors. The file is written into the created container before it starts (no window
//!   without it) and rewritten in every running session at boot, so a changed control range (a new
//!   replica set) reaches sessions created before it.
//! - The sandbox network's subnets are handed to the API's source fence
//!   ([`crate::modes::spawner::edge::sources`]): the spawner never serves its API there.
//!
//! The root-owned state volume is out of the exec user's reach, so a session cannot rewrite its own
//! allowlist (and gains nothing by it: the list only limits who reaches its own runnerd).
use super::{engine, DockerBackend, RUNNERD_STATE_PATH, SESSION_LABEL};
use crate::modes::runnerd::source_allowlist::ALLOWED_SOURCES_FILE;
use crate::modes::spawner::backend::BackendResult;
use crate::shared::cidr::Cidr;
use bollard::query_parameters::{ListContainersOptionsBuilder, UploadToContainerOptionsBuilder};
use std::collections::HashMap;
use std::net::IpAddr;

/// What isolation needs, learned once from the engine.
#[derive(Clone, Debug)]
pub struct NetworkPlan {
    /// The sandbox network's subnets (fenced off from the API).
    pub subnets: Vec<Cidr>,
    /// Where spawners connect to runnerd from (runnerd's allowlist); empty = no allowlist.
    pub control_sources: Vec<Cidr>,
}

/// The source address this process uses toward `target` (a UDP `connect` sends no packet; the
/// kernel only picks the route and the source address).
fn own_source_toward(target: IpAddr) -> Option<IpAddr> {
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect((target, 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The allowlist file's text.
pub fn allowlist_text(sources: &[Cidr]) -> String {
    let mut text = String::from(
        "# Written by the tale spawner: the only networks allowed to connect to this runnerd.\n",
    );
    for source in sources {
        text.push_str(&format!("{source}\n"));
    }
    text
}

/// A one-file ustar archive (root-owned, mode 0644), as the engine's archive upload wants.
pub fn one_file_tar(name: &str, content: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len() as u64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    octal(&mut header[136..148], now);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().next_multiple_of(512) + 1024, 0);
    out
}

impl DockerBackend {
    /// The network plan (read from the engine once; the network is created if missing).
    pub async fn network_plan(&self) -> BackendResult<NetworkPlan> {
        self.network_plan
            .get_or_try_init(|| self.read_network_plan())
            .await
            .cloned()
    }

    async fn read_network_plan(&self) -> BackendResult<NetworkPlan> {
        // By id: the name can stand for several networks while replicas agree on one.
        let network_id = self.ensure_network().await?;
        let network = self
            .docker
            .inspect_network(&network_id, None)
            .await
            .map_err(engine("cannot inspect the sandbox network"))?;
        let configs = network.ipam.and_then(|i| i.config).unwrap_or_default();
        let subnets: Vec<Cidr> = configs
            .iter()
            .filter_map(|c| Cidr::parse(c.subnet.as_deref()?).ok())
            .collect();
        let control_sources = if !self.config.control_sources.is_empty() {
            self.config.control_sources.clone()
        } else {
            let gateway = configs
                .iter()
                .find_map(|c| c.gateway.as_deref()?.parse::<IpAddr>().ok());
            match gateway.and_then(own_source_toward) {
                Some(own) => vec![Cidr::host(own)],
                None => {
                    tracing::warn!(network = %self.config.network, "cannot tell which address this spawner reaches the sandbox network from: sessions' runnerd accept connections from every session (set SANDBOX_DOCKER_CONTROL_SOURCES)");
                    Vec::new()
                }
            }
        };
        tracing::info!(network = %self.config.network, subnets = ?subnets.iter().map(Cidr::to_string).collect::<Vec<_>>(), control_sources = ?control_sources.iter().map(Cidr::to_string).collect::<Vec<_>>(), "session isolation");
        Ok(NetworkPlan {
            subnets,
            control_sources,
        })
    }

    /// Writes the runnerd allowlist into container `name` (created or running).
    pub(super) async fn write_allowed_sources(&self, name: &str) -> BackendResult<()> {
        let plan = self.network_plan().await?;
        if plan.control_sources.is_empty() {
            return Ok(());
        }
        let tar = one_file_tar(
            ALLOWED_SOURCES_FILE,
            allowlist_text(&plan.control_sources).as_bytes(),
        );
        let options = UploadToContainerOptionsBuilder::new()
            .path(RUNNERD_STATE_PATH)
            .build();
        self.docker
            .upload_to_container(name, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(engine("cannot write the session's runnerd allowlist"))
    }

    /// Boot: learns the network plan and rewrites the allowlist in every running session of this
    /// deployment — on its network (and of its stack, when labelled) — as the control sources may
    /// have changed since they were created. Another deployment's sessions on the same engine are
    /// left alone: its spawners reach them from elsewhere. Returns the subnets to fence off from
    /// the API.
    pub async fn prepare_isolation(&self) -> BackendResult<Vec<Cidr>> {
        let plan = self.network_plan().await?;
        let mut labels = vec![format!("{SESSION_LABEL}=1")];
        if let Some(stack) = &self.config.stack_label {
            labels.push(format!("{}={stack}", super::STACK_LABEL));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        let running = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine("cannot list session containers"))?;
        for name in running
            .iter()
            .filter(|c| super::super::docker_shared::on_network(c, &self.config.network))
            .filter_map(|c| c.names.as_ref()?.first())
            .map(|n| n.trim_start_matches('/'))
        {
            if let Err(err) = self.write_allowed_sources(name).await {
                tracing::warn!(container = name, %err, "cannot refresh the runnerd allowlist");
            }
        }
        Ok(plan.subnets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive is a valid ustar stream: header checksum, size, padding, end blocks.
    #[test]
    fn tar_layout() {
        let tar = one_file_tar("allowed-sources", b"10.0.0.0/8\n");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..15], b"allowed-sources");
        assert_eq!(&tar[124..136], b"00000000013\0");
        let mut header = tar[..512].to_vec();
        header[148..156].fill(b' ');
        let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        let stored = std::str::from_utf8(&tar[148..154]).unwrap();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&tar[512..523], b"10.0.0.0/8\n");
        assert!(tar[523..].iter().all(|&b| b == 0));
        assert_eq!(
            allowlist_text(&[Cidr::parse("10.213.0.0/27").unwrap()])
                .lines()
                .nth(1),
            Some("10.213.0.0/27")
        );
    }
}
