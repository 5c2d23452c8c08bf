//! A complete packet record of a Docker session's network namespace, and the check that it holds
//! nothing but the gateway: `tcpdump -i any` run (as root, through `nsenter`) inside the
//! container's netns for as long as a test lets it, then read back with `tcpdump -nn -r` and every
//! packet classified.
//!
//! Allowed: the session's traffic with the fake model (the gateway address and the fake's port,
//! both directions), the spawner's connections to runnerd (the gateway address to the session's
//! runnerd port, both directions), ARP between the session and the gateway, and the kernel's own
//! link-local IPv6 set-up on link-up (router solicitation, duplicate address detection, multicast
//! listener reports: to link-local multicast groups, never to a peer). Anything
//! else is a violation: a DNS query (to Docker's resolver on loopback, or forwarded by it), any
//! other TCP/UDP destination, ICMP, loopback traffic. A destination the netns has no route to
//! sends no packet and is refused by the kernel, so it contacts nothing; the Docker network's
//! default route goes to the gateway, so every other address does send a packet and is recorded.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for tcpdump to start listening or to exit after SIGTERM.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(20);

/// Bytes kept of each packet: enough for the link, IP and TCP/UDP headers the check reads.
const SNAPSHOT_BYTES: u32 = 256;
/// The kernel's capture ring, in KiB.
const RING_KIB: u32 = 8192;
/// The session port the end-of-record marker is sent to (discard: nothing listens).
const MARKER_PORT: u16 = 9;

/// The endpoints a session's netns may exchange packets with.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    /// The session container's address on the test network.
    pub session: Ipv4Addr,
    /// The test network's gateway: where the fake model and the spawner are.
    pub gateway: Ipv4Addr,
    /// The fake model's port on the gateway address.
    pub model_port: u16,
    /// runnerd's port in the session (the spawner connects to it).
    pub runnerd_port: u16,
}

/// A running `tcpdump` in a container's network namespace.
pub struct NetnsCapture {
    tcpdump: Child,
    pcap: PathBuf,
    stderr: PathBuf,
    /// The container's address on the test network.
    pub session: Ipv4Addr,
}

impl NetnsCapture {
    /// Starts recording every packet of `container`'s netns (all interfaces, loopback included)
    /// and returns once tcpdump is listening. `network` is the Docker network the session is on.
    pub async fn start(container: &str, network: &str) -> NetnsCapture {
        let inspect = |format: &str| {
            let (ok, out) = super::agent_stack::docker(&["inspect", "-f", format, container]);
            assert!(ok, "docker inspect {container}: {out}");
            out
        };
        let pid = inspect("{{.State.Pid}}");
        let session: Ipv4Addr = inspect(&format!(
            "{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"
        ))
        .parse()
        .unwrap_or_else(|err| panic!("{container} has no IPv4 address on {network}: {err}"));
        let base = std::env::temp_dir().join(format!("tale-netns-{container}-{pid}"));
        let pcap = base.with_extension("pcap");
        let stderr = base.with_extension("tcpdump.log");
        // --immediate-mode: each packet reaches tcpdump as it arrives (not in blocks, of which
        // the last is lost at SIGTERM); -U: and is written at once. Headers only (-s), so the
        // kernel's ring (-B, KiB) holds thousands of packets and none is dropped in a burst.
        let tcpdump = Command::new("nsenter")
            .args([
                "-t",
                &pid,
                "-n",
                "tcpdump",
                "-i",
                "any",
                "--immediate-mode",
                "-U",
            ])
            .args([
                "-s",
                &SNAPSHOT_BYTES.to_string(),
                "-B",
                &RING_KIB.to_string(),
                "-w",
            ])
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("nsenter + tcpdump are required ({err}); scripts/setup.sh installs tcpdump")
            });
        let mut capture = NetnsCapture {
            tcpdump,
            pcap,
            stderr,
            session,
        };
        let deadline = Instant::now() + CAPTURE_DEADLINE;
        while !capture.log().contains("listening on any") {
            if let Some(status) = capture.tcpdump.try_wait().unwrap() {
                panic!(
                    "tcpdump in the netns of {container} exited ({status}): {}",
                    capture.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start: {}",
                capture.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        capture
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Ends the record and returns every packet up to its end as one `tcpdump -nn -t` line.
    ///
    /// tcpdump loses what is still in the kernel's ring when it is stopped, so the end is a
    /// marker: a UDP datagram from `gateway` to the session's discard port, sent until the live
    /// file shows it. The ring is in arrival order and the kernel dropped nothing (checked), so
    /// every packet before the marker is in the file; what comes after it is cut off.
    pub async fn stop(mut self, gateway: Ipv4Addr) -> Vec<String> {
        let marker_socket = std::net::UdpSocket::bind((gateway, 0)).unwrap();
        let marker = format!(
            "IP {gateway}.{} > {}.{MARKER_PORT}: UDP",
            marker_socket.local_addr().unwrap().port(),
            self.session
        );
        let deadline = Instant::now() + CAPTURE_DEADLINE;
        let packets = loop {
            marker_socket
                .send_to(b"end of record", (self.session, MARKER_PORT))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            // A live file may end in half a packet: tcpdump then fails after printing the rest.
            let packets = self.read();
            if let Some(end) = packets.iter().position(|p| p.contains(&marker)) {
                break packets[..end].to_vec();
            }
            assert!(
                Instant::now() < deadline,
                "the end marker ({marker}) did not reach the record: {}",
                self.log()
            );
        };
        let pid = self.tcpdump.id().to_string();
        let (ok, out) = run("kill", &["-TERM", &pid]);
        assert!(ok, "kill -TERM {pid}: {out}");
        while self.tcpdump.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "tcpdump did not exit: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let log = self.log();
        let dropped = log.lines().find_map(|line| {
            let count = line.strip_suffix(" dropped by kernel")?.split(' ').next()?;
            count.parse::<u64>().ok()
        });
        assert_eq!(dropped, Some(0), "the record is incomplete: {log}");
        packets
    }

    /// The file's packets so far, one `tcpdump -nn -t` line each.
    fn read(&self) -> Vec<String> {
        let out = Command::new("tcpdump")
            .args(["-nn", "-t", "-r"])
            .arg(&self.pcap)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for NetnsCapture {
    fn drop(&mut self) {
        // A test that failed before `stop`: end the tcpdump it started.
        if self.tcpdump.try_wait().ok().flatten().is_none() {
            let _ = self.tcpdump.kill();
            let _ = self.tcpdump.wait();
        }
        let _ = std::fs::remove_file(&self.pcap);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Runs a command: whether it succeeded, and its stdout (or stderr when it failed).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => (true, String::from_utf8_lossy(&out.stdout).into()),
        Ok(out) => (false, String::from_utf8_lossy(&out.stderr).into()),
        Err(err) => (false, err.to_string()),
    }
}

/// The packets of a `tcpdump -nn -t` record that `allowed` does not account for.
pub fn violations<'a>(packets: &'a [String], allowed: &Allowed) -> Vec<&'a str> {
    packets
        .iter()
        .map(String::as_str)
        .filter(|line| !is_allowed(line, allowed))
        .collect()
}

/// One line of `tcpdump -nn -t` on a `-i any` record: `<interface> <direction> <packet>`, e.g.
/// `eth0  Out IP 172.18.0.2.41000 > 172.18.0.1.39999: Flags [S], …` (the interface is `?` when read back
/// outside the netns).
fn is_allowed(line: &str, allowed: &Allowed) -> bool {
    let mut fields = line.split_whitespace();
    let (Some(_interface), Some(_direction)) = (fields.next(), fields.next()) else {
        return false;
    };
    let packet: Vec<&str> = fields.collect();
    match packet.as_slice() {
        // IGMP membership reports to a link-local group (224.0.0.0/24), which the host's bridge
        // (the gateway) or the session's own stack send when an interface comes up: never to a peer.
        ["IP", from, ">", to, "igmp", ..] => {
            let from: Option<Ipv4Addr> = from.parse().ok();
            let to: Option<Ipv4Addr> = to.trim_end_matches(':').parse().ok();
            (from == Some(allowed.gateway) || from == Some(allowed.session))
                && to.is_some_and(|to| to.octets()[..3] == [224, 0, 0])
        }
        ["IP", from, ">", to, ..] => {
            let (Some(from), Some(to)) = (endpoint(from), endpoint(to.trim_end_matches(':')))
            else {
                return false; // no ports: ICMP or another protocol
            };
            let flow = |a: (Ipv4Addr, u16), b: (Ipv4Addr, u16)| {
                let model = (allowed.gateway, allowed.model_port);
                let (session, gateway) = (allowed.session, allowed.gateway);
                (a.0 == session && b == model)
                    || (a == (session, allowed.runnerd_port) && b.0 == gateway)
            };
            flow(from, to) || flow(to, from)
        }
        ["ARP,", "Request", "who-has", target, "tell", sender, ..] => {
            let pair = (
                target.parse().ok(),
                sender.trim_end_matches(',').parse().ok(),
            );
            let (s, g) = (Some(allowed.session), Some(allowed.gateway));
            pair == (g, s) || pair == (s, g)
        }
        ["ARP,", "Reply", who, "is-at", ..] => {
            let who = who.parse().ok();
            who == Some(allowed.gateway) || who == Some(allowed.session)
        }
        // The kernel configuring the link's IPv6 (no address but link-local is set up): router
        // solicitation, duplicate address detection, multicast listener reports — from no
        // address or a link-local one, to a link-local multicast group, never to a peer.
        ["IP6", from, ">", to, kind @ ..] => {
            let kind = kind.join(" ");
            (*from == "::" || from.starts_with("fe80:"))
                && to.starts_with("ff02:")
                && [
                    "ICMP6, router solicitation",
                    "ICMP6, neighbor solicitation",
                    "HBH ICMP6, multicast listener report",
                ]
                .iter()
                .any(|allowed| kind.starts_with(allowed))
        }
        _ => false,
    }
}

/// `a.b.c.d.port` → address and port.
fn endpoint(text: &str) -> Option<(Ipv4Addr, u16)> {
    let (address, port) = text.rsplit_once('.')?;
    Some((address.parse().ok()?, port.parse().ok()?))
}
