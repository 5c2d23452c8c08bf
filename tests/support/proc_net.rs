//! Reading a container's TCP sockets from `/proc/net/tcp` text (what an exec inside it can `cat`),
//! and a local listening socket's backlog.
#![allow(dead_code)]
use std::net::Ipv4Addr;

/// The states (`/proc/net/tcp` hex codes, `01` = ESTABLISHED) of the IPv4 sockets on local `port`
/// whose remote address is `remote`.
pub fn states(proc_net_tcp: &str, port: u16, remote: Ipv4Addr) -> Vec<String> {
    // Addresses are the u32 in host (little-endian) byte order, ports big-endian, all in hex.
    let local_port = format!(":{port:04X}");
    let remote_hex = format!("{:08X}:", u32::from_le_bytes(remote.octets()));
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, peer, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            (local.ends_with(&local_port) && peer.starts_with(&remote_hex))
                .then(|| state.to_string())
        })
        .collect()
}

/// The shell line that holds a connection from a session to `host:port` open for `secs` seconds
/// in the background without sending a byte (an idle client; a closed connection then lingers on
/// the server's side as FIN_WAIT2, an accepted one as ESTABLISHED). Nothing it starts keeps the
/// exec's output pipes, so the exec ends at once.
pub fn hold_connection(host: &str, port: u16, secs: u32) -> String {
    format!(
        "( (sleep {secs} | nc -w {} {host} {port}) >/dev/null 2>&1 </dev/null &) ; true",
        secs + 2
    )
}

/// The backlog of the local listening socket on `port` (what `ss` shows in the Send-Q column of a
/// listening socket), and the backlog the daemons ask for as the kernel caps it (`somaxconn`).
pub fn listen_backlog(port: u16) -> (u32, u32) {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket on {port}: {text:?}"));
    (backlog, somaxconn.min(tale::shared::http::LISTEN_BACKLOG))
}
