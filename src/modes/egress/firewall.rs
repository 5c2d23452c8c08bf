//! The egress container's SSRF firewall, as `iptables-restore` / `ip6tables-restore` input.
//!
//! The hostname filter works on names, after which tinyproxy resolves them; DNS rebinding could
//! point an allowed name at a private address. Only the IP layer is a hard fence, so the proxy's own
//! outbound traffic is refused to the metadata service, link-local and private ranges (v4 and v6),
//! except DNS to the configured resolvers; to public addresses only TCP ports 80 and 443 are allowed
//! (this is what bounds plain-HTTP requests, which tinyproxy's `ConnectPort` does not). Replies to
//! sessions (established connections) and loopback pass; the proxy never forwards packets between
//! its networks (FORWARD policy DROP). Rules live in their own chain, so re-applying is idempotent.
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The chain holding the rules, jumped to from OUTPUT.
pub const CHAIN: &str = "TALE-EGRESS";
/// Most resolver addresses taken from resolv.conf.
pub const MAX_NAMESERVERS: usize = 64;
/// Largest resolv.conf read.
pub const MAX_RESOLV_CONF_BYTES: usize = 64 * 1024;

pub const REJECTED_V4: &[&str] = &[
    "169.254.169.254/32",
    "169.254.0.0/16",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
];
pub const REJECTED_V6: &[&str] = &[
    "fd00:ec2::254/128",
    "::ffff:169.254.0.0/112",
    "fe80::/10",
    "fc00::/7",
];

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

fn rules(family_v6: bool, resolvers: &[IpAddr]) -> String {
    let (rejected, reject_with, host_bits) = if family_v6 {
        (REJECTED_V6, "icmp6-adm-prohibited", 128)
    } else {
        (REJECTED_V4, "icmp-net-prohibited", 32)
    };
    let mut out = String::from("*filter\n");
    out.push_str(":FORWARD DROP [0:0]\n");
    out.push_str(&format!(":{CHAIN} - [0:0]\n"));
    out.push_str(&format!("-A {CHAIN} -o lo -j RETURN\n"));
    out.push_str(&format!(
        "-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n"
    ));
    for resolver in resolvers.iter().filter(|r| r.is_ipv6() == family_v6) {
        for proto in ["udp", "tcp"] {
            out.push_str(&format!(
                "-A {CHAIN} -d {resolver}/{host_bits} -p {proto} --dport 53 -j RETURN\n"
            ));
        }
    }
    for range in rejected {
        out.push_str(&format!(
            "-A {CHAIN} -d {range} -j REJECT --reject-with {reject_with}\n"
        ));
    }
    let port_reject = if family_v6 {
        "icmp6-port-unreachable"
    } else {
        "icmp-port-unreachable"
    };
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
pub fn rules_v4(resolvers: &[IpAddr]) -> String {
    rules(false, resolvers)
}

/// The IPv6 rules.
pub fn rules_v6(resolvers: &[IpAddr]) -> String {
    rules(true, resolvers)
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
pub fn apply(resolvers: &[IpAddr]) -> Result<(), FirewallError> {
    apply_family("iptables", "iptables-restore", &rules_v4(resolvers))?;
    match apply_family("ip6tables", "ip6tables-restore", &rules_v6(resolvers)) {
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
        let resolvers = vec!["10.0.0.2".parse().unwrap(), "fd00::53".parse().unwrap()];
        let golden_v4 = include_str!("../../../tests/golden/egress/iptables-v4.rules");
        let golden_v6 = include_str!("../../../tests/golden/egress/iptables-v6.rules");
        assert_eq!(rules_v4(&resolvers), golden_v4);
        assert_eq!(rules_v6(&resolvers), golden_v6);
    }
}
