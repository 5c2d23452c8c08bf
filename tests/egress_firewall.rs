//! End-to-end: `tale egress-proxy firewall --apply` inside a network namespace this test creates,
//! checked against the test's own hosts in other namespaces it creates (veth pairs): a private-range
//! host (10.200.x) is refused, a public-range host (198.18.x, the benchmarking range) passes on port
//! 80 but not on 8080, loopback keeps working, re-applying is idempotent, and a missing iptables
//! fails closed. No packet leaves the namespaces; 169.254.169.254 is only checked as rule text.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Namespaces {
    names: Vec<String>,
    servers: Vec<Child>,
}

fn sh(command: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(command).output().unwrap()
}

fn ok(command: &str) {
    let output = sh(command);
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for name in &self.names {
            let _ = sh(&format!("ip netns del {name}"));
        }
    }
}

impl Namespaces {
    fn serve(&mut self, ns: &str, addr: &str, port: u16) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
    }
}

/// HTTP status seen from `ns` for `url` ("000" when refused).
fn fetch(ns: &str, url: &str) -> String {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "3",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn wait_for(ns: &str, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(ns, url) != "200" {
        assert!(Instant::now() < deadline, "{url} did not come up in {ns}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn firewall_in_a_namespace() {
    for tool in ["ip", "iptables", "curl", "python3"] {
        assert!(
            sh(&format!("command -v {tool}")).status.success(),
            "{tool} is required (scripts/setup.sh)"
        );
    }
    let id = std::process::id() % 100_000;
    let (a, b, c) = (
        format!("tfw{id}a"),
        format!("tfw{id}b"),
        format!("tfw{id}c"),
    );
    let mut ns = Namespaces {
        names: vec![a.clone(), b.clone(), c.clone()],
        servers: vec![],
    };
    for name in &ns.names {
        ok(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
    }
    ok(&format!("ip link add tfw{id}p type veth peer name tfw{id}q && ip link set tfw{id}p netns {a} && ip link set tfw{id}q netns {b}"));
    ok(&format!(
        "ip -n {a} addr add 10.200.7.1/24 dev tfw{id}p && ip -n {a} link set tfw{id}p up"
    ));
    ok(&format!(
        "ip -n {b} addr add 10.200.7.2/24 dev tfw{id}q && ip -n {b} link set tfw{id}q up"
    ));
    ok(&format!("ip link add tfw{id}r type veth peer name tfw{id}s && ip link set tfw{id}r netns {a} && ip link set tfw{id}s netns {c}"));
    ok(&format!(
        "ip -n {a} addr add 198.18.7.1/24 dev tfw{id}r && ip -n {a} link set tfw{id}r up"
    ));
    ok(&format!(
        "ip -n {c} addr add 198.18.7.2/24 dev tfw{id}s && ip -n {c} link set tfw{id}s up"
    ));
    ns.serve(&b, "10.200.7.2", 80);
    ns.serve(&c, "198.18.7.2", 80);
    ns.serve(&c, "198.18.7.2", 8080);
    ns.serve(&a, "127.0.0.1", 9000);
    for url in [
        "http://10.200.7.2/",
        "http://198.18.7.2/",
        "http://198.18.7.2:8080/",
        "http://127.0.0.1:9000/",
    ] {
        wait_for(&a, url);
    }

    let resolv = std::env::temp_dir().join(format!("tale-fw-resolv-{id}"));
    std::fs::write(&resolv, "nameserver 10.200.7.53\n").unwrap();
    let apply = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a,
                env!("CARGO_BIN_EXE_tale"),
                "egress-proxy",
                "firewall",
                "--apply",
                "--resolv-conf",
            ])
            .arg(&resolv)
            .output()
            .unwrap()
    };
    let applied = apply();
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        fetch(&a, "http://10.200.7.2/"),
        "000",
        "private range refused"
    );
    assert_eq!(
        fetch(&a, "http://198.18.7.2/"),
        "200",
        "public range on port 80 passes"
    );
    assert_eq!(
        fetch(&a, "http://198.18.7.2:8080/"),
        "000",
        "only ports 80 and 443 outside"
    );
    assert_eq!(
        fetch(&a, "http://127.0.0.1:9000/"),
        "200",
        "loopback untouched"
    );
    let rules = sh(&format!("ip netns exec {a} iptables -S TALE-EGRESS"));
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("-d 169.254.169.254/32 -j REJECT"), "{rules}");
    assert!(
        rules.contains("-d 10.200.7.53/32 -p udp -m udp --dport 53 -j RETURN"),
        "{rules}"
    );

    assert!(apply().status.success(), "re-apply");
    let jumps = sh(&format!("ip netns exec {a} iptables -S OUTPUT"));
    assert_eq!(
        String::from_utf8_lossy(&jumps.stdout)
            .matches("-j TALE-EGRESS")
            .count(),
        1,
        "idempotent"
    );

    let broken = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "env",
            "PATH=/nonexistent",
            env!("CARGO_BIN_EXE_tale"),
            "egress-proxy",
            "firewall",
            "--apply",
            "--resolv-conf",
        ])
        .arg(&resolv)
        .output()
        .unwrap();
    assert!(!broken.status.success(), "fails closed without iptables");
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("iptables"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
    let _ = std::fs::remove_file(&resolv);
}
