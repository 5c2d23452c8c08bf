//! End-to-end: `tale egress-proxy firewall --apply` inside a network namespace this test creates,
//! checked against the test's own hosts in other namespaces it creates (veth pairs): a private-range
//! host (10.200.x) and a shared-address-space host (100.64.x) are refused; a host in the
//! benchmarking range (198.18.x) is refused by default and, once permitted (`--permit-range`, the
//! test's stand-in for the internet), passes on port 80 but not on 8080; on loopback only the
//! proxy's port answers; re-applying is idempotent, and a missing iptables fails closed. A second
//! test runs the real tinyproxy in open mode behind the firewall: it cannot be used to reach other
//! services on its own loopback. No packet leaves the namespaces.
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
            // Whatever a server started (tinyproxy under the proxy's supervisor) goes too.
            let _ = sh(&format!("ip netns pids {name} | xargs -r kill -KILL"));
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
    ok(&format!(
        "ip -n {a} addr add 100.64.7.1/24 dev tfw{id}p && ip -n {b} addr add 100.64.7.2/24 dev tfw{id}q"
    ));
    ok(&format!("ip link add tfw{id}r type veth peer name tfw{id}s && ip link set tfw{id}r netns {a} && ip link set tfw{id}s netns {c}"));
    ok(&format!(
        "ip -n {a} addr add 198.18.7.1/24 dev tfw{id}r && ip -n {a} link set tfw{id}r up"
    ));
    ok(&format!(
        "ip -n {c} addr add 198.18.7.2/24 dev tfw{id}s && ip -n {c} link set tfw{id}s up"
    ));
    ns.serve(&b, "10.200.7.2", 80);
    ns.serve(&b, "100.64.7.2", 80);
    ns.serve(&a, "127.0.0.1", 3128);
    ns.serve(&c, "198.18.7.2", 80);
    ns.serve(&c, "198.18.7.2", 8080);
    ns.serve(&a, "127.0.0.1", 9000);
    for url in [
        "http://10.200.7.2/",
        "http://100.64.7.2/",
        "http://127.0.0.1:3128/",
        "http://198.18.7.2/",
        "http://198.18.7.2:8080/",
        "http://127.0.0.1:9000/",
    ] {
        wait_for(&a, url);
    }

    let resolv = std::env::temp_dir().join(format!("tale-fw-resolv-{id}"));
    std::fs::write(&resolv, "nameserver 10.200.7.53\n").unwrap();
    let apply_with = |extra: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a,
                env!("CARGO_BIN_EXE_tale"),
                "egress-proxy",
                "firewall",
                "--apply",
                "--port",
                "3128",
                "--resolv-conf",
            ])
            .arg(&resolv)
            .args(extra)
            .output()
            .unwrap()
    };
    let applied = apply_with(&[]);
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        fetch(&a, "http://198.18.7.2/"),
        "000",
        "the benchmarking range is refused by default"
    );
    let apply = || apply_with(&["--permit-range", "198.18.7.0/24"]);
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
        fetch(&a, "http://100.64.7.2/"),
        "000",
        "shared address space (CGNAT) refused"
    );
    assert_eq!(
        fetch(&a, "http://198.18.7.2/"),
        "200",
        "a permitted range on port 80 passes"
    );
    assert_eq!(
        fetch(&a, "http://198.18.7.2:8080/"),
        "000",
        "only ports 80 and 443 outside"
    );
    assert_eq!(
        fetch(&a, "http://127.0.0.1:9000/"),
        "000",
        "loopback: other services refused"
    );
    assert_eq!(
        fetch(&a, "http://127.0.0.1:3128/"),
        "200",
        "loopback: the proxy's own port answers"
    );
    let rules = sh(&format!("ip netns exec {a} iptables -S TALE-EGRESS"));
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("-d 169.254.0.0/16 -j REJECT"), "{rules}");
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

/// Open mode with the real tinyproxy behind the firewall (as in the egress image): a request for
/// another service on the proxy's own loopback fails, while a permitted outside host answers
/// through the same proxy (so the failure is the firewall's doing, not a broken proxy).
#[test]
fn open_mode_proxy_cannot_reach_its_own_loopback() {
    for tool in ["ip", "iptables", "curl", "python3", "tinyproxy"] {
        assert!(
            sh(&format!("command -v {tool}")).status.success(),
            "{tool} is required (scripts/setup.sh)"
        );
    }
    let id = std::process::id() % 100_000;
    let (a, c) = (format!("tfl{id}a"), format!("tfl{id}c"));
    let mut ns = Namespaces {
        names: vec![a.clone(), c.clone()],
        servers: vec![],
    };
    for name in &ns.names {
        ok(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
    }
    ok(&format!("ip link add tfl{id}r type veth peer name tfl{id}s && ip link set tfl{id}r netns {a} && ip link set tfl{id}s netns {c}"));
    ok(&format!(
        "ip -n {a} addr add 198.18.8.1/24 dev tfl{id}r && ip -n {a} link set tfl{id}r up"
    ));
    ok(&format!(
        "ip -n {c} addr add 198.18.8.2/24 dev tfl{id}s && ip -n {c} link set tfl{id}s up"
    ));
    ns.serve(&c, "198.18.8.2", 80);
    ns.serve(&a, "127.0.0.1", 9000);
    wait_for(&a, "http://198.18.8.2/");
    wait_for(&a, "http://127.0.0.1:9000/");

    let dir = std::env::temp_dir().join(format!("tale-fw-proxy-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 198.18.8.53\n").unwrap();
    let proxy = Command::new("ip")
        .args(["netns", "exec", &a, env!("CARGO_BIN_EXE_tale")])
        .args([
            "egress-proxy",
            "run",
            "--no-dns",
            "--listen",
            "127.0.0.1",
            "--port",
            "3128",
            "--allow-client",
            "127.0.0.1",
            "--permit-range",
            "198.18.8.0/24",
            "--out-dir",
        ])
        .arg(dir.join("run"))
        .arg("--resolv-conf")
        .arg(&resolv)
        .env_remove("SANDBOX_EGRESS_ALLOWLIST")
        .env_remove("SANDBOX_EGRESS_ALLOWLIST_FILE")
        .env_remove("TALE_SKIP_SSRF_FIREWALL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    ns.servers.push(proxy);
    let via_proxy = |url: &str| {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &a,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
            ])
            .args(["-w", "%{http_code}", "-x", "http://127.0.0.1:3128", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while via_proxy("http://198.18.8.2/") != "200" {
        assert!(
            Instant::now() < deadline,
            "the proxy does not reach the permitted host: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = std::fs::read_to_string(dir.join("run/tinyproxy.conf")).unwrap();
    assert!(
        !config.lines().any(|l| l.starts_with("Filter ")),
        "open mode: {config}"
    );
    for url in [
        "http://127.0.0.1:9000/",
        "http://127.0.0.2:9000/",
        "http://0.0.0.0:9000/",
        "http://198.18.8.1:9000/",
    ] {
        let status = via_proxy(url);
        assert!(
            status != "200" && status != "000",
            "{url} through the proxy must fail at the proxy, got {status}"
        );
    }
    // The Drop ends every process in the namespaces (tinyproxy included).
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}
