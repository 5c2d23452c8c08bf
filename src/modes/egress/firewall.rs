//! The egress container's SSRF firewall, as `iptables-restore` / `ip6tables-restore` input.
//!
//! The hostname filter works on names, after which tinyproxy resolves them; DNS rebinding could
//! point an allowed name at a private address. Only the IP layer is a hard fence, so the proxy's own
//! outbound traffic is refused to the metadata service, link-local and private ranges (v4 and v6),
//! except DNS to the configured resolvers; to public addresses only TCP ports 80 and 443 are allowed
//! (this is what bounds plain-HTTP requests, which tinyproxy's `ConnectPort` does not). Replies to
//! sessions (established connections) pass; on loopback only the ports the proxy serves and DNS are
//! reachable, so `GET http://127.0.0.1:<port>/` through the proxy cannot reach another service on
//! its host. The proxy never forwards packets between its networks (FORWARD policy DROP). Rules
//! live in their own chain, so re-applying is idempotent.
use crate::shared::cidr::Cidr;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The chain holding the rules, jumped to from OUTPUT.
pub const CHAIN: &str = "TALE-EGRESS";
/// Most resolver addresses taken from resolv.conf.
pub const MAX_NAMESERVERS: usize = 64;
/// Largest resolv.conf read.
pub const MAX_RESOLV_CONF_BYTES: usize = 64 * 1024;

/// IPv4 destinations the proxy never connects to (IANA special-purpose registry, the parts that
/// can lead to the host, the platform, a cloud's metadata or internal services, or that no public
/// service uses). Loopback (127.0.0.0/8) is handled by the loopback rules before these.
pub const REJECTED_V4: &[&str] = &[
    // "This network": connecting to 0.0.0.0 reaches the proxy host's own services on Linux.
    "0.0.0.0/8",
    // Private networks (RFC 1918): the platform, Docker networks, the host.
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    // Shared address space (CGNAT, RFC 6598): carrier and cloud internals (Alibaba Cloud's
    // metadata service is 100.100.100.200), Tailscale-style overlays.
    "100.64.0.0/10",
    // Link-local, with the cloud metadata address (169.254.169.254) inside.
    "169.254.0.0/16",
    // IETF protocol assignments (DS-Lite, NAT64 discovery, ...).
    "192.0.0.0/24",
    // Documentation ranges (TEST-NET-1/2/3): never public services.
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    // Benchmarking (RFC 2544): not routed publicly, used internally (fake-IP DNS of VPN clients).
    "198.18.0.0/15",
    // Multicast, and the reserved block with the limited broadcast address 255.255.255.255.
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// IPv6 destinations the proxy never connects to (IANA IPv6 special-purpose registry). `::1` is
/// loopback (the loopback rules); the IPv4-mapped, NAT64 and tunnel prefixes embed IPv4 addresses
/// and could reach the IPv4 ranges above through a translator or relay.
pub const REJECTED_V6: &[&str] = &[
    "::/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/32",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fec0::/10",
    "fe80::/10",
    "ff00::/8",
];
/// DNS, always allowed on loopback (TCP and UDP): the forwarder, and the resolver Docker embeds at
/// 127.0.0.11 (whose real port is NAT-ed from 53, hence matching the original port).
pub const LOOPBACK_DNS_PORT: u16 = 53;

/// What the rules are made from.
#[derive(Clone, Debug, Default)]
pub struct FirewallPlan {
    /// Resolvers DNS may go to (from resolv.conf).
    pub resolvers: Vec<IpAddr>,
    /// TCP ports the proxy itself serves: the only loopback destinations allowed besides DNS, so
    /// a proxied request cannot reach other services on the proxy's own host.
    pub served_tcp_ports: Vec<u16>,
    /// Networks exempted from the rejected ranges (still ports 80 and 443 only): an operator's
    /// internal mirror, or a test rig's stand-in for the internet.
    pub permitted: Vec<Cidr>,
}

/// Why the firewall could not be applied (the egress proxy then refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot read {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("{tool} does not work here ({source}); refusing to run without the SSRF firewall")]
    ToolUnusable {
        tool: &'static str,
        source: ToolFailure,
    },
    #[error("{tool} refused the rules: {source}")]
    Rejected {
        tool: &'static str,
        source: ToolFailure,
    },
    #[error("IPv6 is enabled but ip6tables does not work; disable IPv6 or provide ip6tables")]
    Ipv6Unfenced,
    #[error("bad permitted range: {0}")]
    BadPermit(String),
}

/// Literal nameserver addresses from resolv.conf text (at most [`MAX_NAMESERVERS`]).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.split('%').next()?.parse::<IpAddr>().ok())
        .take(MAX_NAMESERVERS)
        .collect()
}

fn rules(family_v6: bool, plan: &FirewallPlan) -> String {
    let (rejected, reject_with, host_bits) = if family_v6 {
        (REJECTED_V6, "icmp6-adm-prohibited", 128)
    } else {
        (REJECTED_V4, "icmp-net-prohibited", 32)
    };
    let port_reject = if family_v6 {
        "icmp6-port-unreachable"
    } else {
        "icmp-port-unreachable"
    };
    let mut out = String::from("*filter\n");
    out.push_str(":FORWARD DROP [0:0]\n");
    out.push_str(&format!(":{CHAIN} - [0:0]\n"));
    out.push_str(&format!(
        "-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n"
    ));
    // Loopback (and the proxy's own addresses, which route through lo): only what the proxy
    // serves. The original destination port is matched because Docker NATs its DNS port.
    let mut tcp_ports = plan.served_tcp_ports.clone();
    tcp_ports.push(LOOPBACK_DNS_PORT);
    tcp_ports.sort_unstable();
    tcp_ports.dedup();
    let served = tcp_ports
        .iter()
        .map(|port| ("tcp", *port))
        .chain([("udp", LOOPBACK_DNS_PORT)]);
    for (proto, port) in served {
        out.push_str(&format!(
            "-A {CHAIN} -o lo -p {proto} -m conntrack --ctproto {proto} --ctorigdstport {port} -j RETURN\n"
        ));
    }
    out.push_str(&format!(
        "-A {CHAIN} -o lo -j REJECT --reject-with {port_reject}\n"
    ));
    for resolver in plan.resolvers.iter().filter(|r| r.is_ipv6() == family_v6) {
        for proto in ["udp", "tcp"] {
            out.push_str(&format!(
                "-A {CHAIN} -d {resolver}/{host_bits} -p {proto} --dport 53 -j RETURN\n"
            ));
        }
    }
    for permitted in plan.permitted.iter().filter(|p| p.is_ipv6() == family_v6) {
        out.push_str(&format!(
            "-A {CHAIN} -d {permitted} -p tcp -m multiport --dports 80,443 -j RETURN\n"
        ));
    }
    for range in rejected {
        out.push_str(&format!(
            "-A {CHAIN} -d {range} -j REJECT --reject-with {reject_with}\n"
        ));
    }
    out.push_str(&format!(
        "-A {CHAIN} -p tcp -m multiport ! --dports 80,443 -j REJECT --reject-with {port_reject}\n"
    ));
    out.push_str(&format!(
        "-A {CHAIN} -p udp -j REJECT --reject-with {port_reject}\n"
    ));
    out.push_str("COMMIT\n");
    out
}

/// The IPv4 rules.
pub fn rules_v4(plan: &FirewallPlan) -> String {
    rules(false, plan)
}

/// The IPv6 rules.
pub fn rules_v6(plan: &FirewallPlan) -> String {
    rules(true, plan)
}

/// Why one run of iptables (or its restore tool) failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolFailure {
    /// It could not be started or fed its rules.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It ran and exited non-zero; its stderr, trimmed.
    #[error("{stderr}")]
    Failed { stderr: String },
}

fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<(), ToolFailure> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ToolFailure::Failed {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn apply_family(
    iptables: &'static str,
    restore: &'static str,
    rules: &str,
) -> Result<(), FirewallError> {
    run(iptables, &["-w", "-L", "OUTPUT", "-n"], None).map_err(|source| {
        FirewallError::ToolUnusable {
            tool: iptables,
            source,
        }
    })?;
    run(restore, &["-w", "--noflush"], Some(rules)).map_err(|source| FirewallError::Rejected {
        tool: restore,
        source,
    })?;
    if run(iptables, &["-w", "-C", "OUTPUT", "-j", CHAIN], None).is_err() {
        run(iptables, &["-w", "-I", "OUTPUT", "1", "-j", CHAIN], None).map_err(|source| {
            FirewallError::Rejected {
                tool: iptables,
                source,
            }
        })?;
    }
    Ok(())
}

fn ipv6_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "1")
        || !std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Applies both families; fails closed.
pub fn apply(plan: &FirewallPlan) -> Result<(), FirewallError> {
    apply_family("iptables", "iptables-restore", &rules_v4(plan))?;
    match apply_family("ip6tables", "ip6tables-restore", &rules_v6(plan)) {
        Ok(()) => Ok(()),
        Err(_) if ipv6_disabled() => {
            tracing::warn!(
                "ip6tables does not work, but IPv6 is disabled: only IPv4 rules applied"
            );
            Ok(())
        }
        Err(FirewallError::ToolUnusable { .. }) => Err(FirewallError::Ipv6Unfenced),
        Err(err) => Err(err),
    }
}

/// Reads resolvers from a resolv.conf path (bounded).
pub fn resolvers_from(path: &str) -> Result<Vec<IpAddr>, FirewallError> {
    let text = std::fs::read(path).map_err(|source| FirewallError::ResolvConf {
        path: path.into(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text[..text.len().min(MAX_RESOLV_CONF_BYTES)]).into_owned();
    Ok(nameservers(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool that cannot start keeps its I/O error as the cause; one that exits non-zero is
    /// reported by its stderr; the message reads as before either way.
    #[test]
    fn tool_failures_keep_their_cause() {
        let missing = run("/nonexistent/tale-no-such-iptables", &["-L"], None).unwrap_err();
        let ToolFailure::Io(io) = &missing else {
            panic!("{missing:?}");
        };
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let error = FirewallError::ToolUnusable {
            tool: "iptables",
            source: missing,
        };
        let cause = std::error::Error::source(&error).expect("the tool failure is the cause");
        assert!(error
            .to_string()
            .starts_with(&format!("iptables does not work here ({cause});")));
        let refused = run("sh", &["-c", "echo ' no such chain ' >&2; exit 1"], None).unwrap_err();
        assert!(
            matches!(&refused, ToolFailure::Failed { stderr } if stderr == "no such chain"),
            "{refused:?}"
        );
        let error = FirewallError::Rejected {
            tool: "iptables-restore",
            source: refused,
        };
        assert_eq!(
            error.to_string(),
            "iptables-restore refused the rules: no such chain"
        );
    }

    /// Nameserver lines become literal addresses; junk is ignored.
    #[test]
    fn resolv_conf_parsing() {
        let text = "# c\nnameserver 127.0.0.11\nnameserver fe80::1%eth0\nnameserver bogus\nsearch x\noptions ndots:0\n";
        assert_eq!(
            nameservers(text),
            vec![
                "127.0.0.11".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    /// The rendered rules, byte for byte (golden).
    #[test]
    fn golden_rules() {
        let plan = FirewallPlan {
            resolvers: vec!["10.0.0.2".parse().unwrap(), "fd00::53".parse().unwrap()],
            served_tcp_ports: vec![3128],
            permitted: vec![
                Cidr::parse("198.18.0.0/24").unwrap(),
                Cidr::parse("fd00:1::/64").unwrap(),
            ],
        };
        let golden_v4 = include_str!("../../../tests/golden/egress/iptables-v4.rules");
        let golden_v6 = include_str!("../../../tests/golden/egress/iptables-v6.rules");
        assert_eq!(rules_v4(&plan), golden_v4);
        assert_eq!(rules_v6(&plan), golden_v6);
    }
}
