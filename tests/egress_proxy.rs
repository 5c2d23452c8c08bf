//! End-to-end with Debian's tinyproxy: `tale egress-proxy run` renders the configuration and runs
//! the real proxy on loopback. Test host names resolve through a hosts file bind-mounted over
//! /etc/hosts in a private mount namespace (never the machine's own); every target is a listener
//! this test owns on 127.0.0.x. Fails loudly when tinyproxy is missing.
mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::runnerd::free_port;

/// Listeners standing in for remote hosts: they accept (so the proxy's CONNECT succeeds) and close
/// at once (so curl's TLS handshake fails fast instead of waiting).
fn listen(addr: &str) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let clone = listener.try_clone().unwrap();
    std::thread::spawn(move || for _ in clone.incoming() {});
    listener
}

struct Proxy {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Proxy {
    fn start(allowlist: Option<&str>) -> Proxy {
        assert!(
            Command::new("tinyproxy").arg("-v").output().is_ok(),
            "tinyproxy is required (scripts/setup.sh)"
        );
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tale-egress-e2e-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.2 allowed.test xallowed.test sub.wild.test wild.test\n127.0.0.3 denied.test\n").unwrap();
        std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644)).unwrap();
        let allowlist_file = dir.join("allowlist.txt");
        std::fs::write(&allowlist_file, allowlist.unwrap_or("")).unwrap();
        let script = format!(
            "mount --bind {} /etc/hosts && exec {} egress-proxy run --no-dns --listen 127.0.0.1 --port {port} --allow-client 127.0.0.1 --out-dir {} --allowlist-file {}",
            hosts.display(),
            env!("CARGO_BIN_EXE_tale"),
            dir.join("run").display(),
            allowlist_file.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("TALE_SKIP_SSRF_FIREWALL", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        let proxy = Proxy { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "proxy did not start: {}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The proxy's answer to `CONNECT host:port` as curl reports it (`%{http_connect}`).
    fn connect(&self, host: &str, port: u16) -> String {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "-w",
                "%{http_connect}",
                "-p",
                "-x",
            ])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .arg(format!("https://{host}:{port}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// The status of a plain-HTTP GET through the proxy.
    fn get(&self, url: &str) -> String {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "-w",
                "%{http_code}",
                "-x",
            ])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Allowlist mode: listed names (any case, and subdomains of `*.` entries) pass; others, look-alikes
/// and CONNECT to ports other than 443 get 403; SIGHUP reloads a changed allowlist.
#[test]
fn allowlist_mode() {
    let _allowed = listen("127.0.0.2:443");
    let _denied = listen("127.0.0.3:443");
    let _other_port = listen("127.0.0.2:8443");
    let proxy = Proxy::start(Some("allowed.test|*.wild.test"));
    assert_eq!(proxy.connect("allowed.test", 443), "200", "{}", proxy.log());
    assert_eq!(proxy.connect("ALLOWED.Test", 443), "200");
    assert_eq!(proxy.connect("wild.test", 443), "200", "*.x also means x");
    assert_eq!(proxy.connect("sub.wild.test", 443), "200");
    assert_eq!(
        proxy.connect("xallowed.test", 443),
        "403",
        "look-alike refused"
    );
    assert_eq!(proxy.connect("denied.test", 443), "403");
    assert_eq!(
        proxy.connect("allowed.test", 8443),
        "403",
        "CONNECT only to 443"
    );
    assert_eq!(
        proxy.get("http://denied.test/"),
        "403",
        "plain HTTP is filtered by host too"
    );

    std::fs::write(proxy.dir.join("allowlist.txt"), "allowed.test denied.test").unwrap();
    // Signal the tale process (the child of unshare's sh, which exec'd it).
    let tale_pid = proxy.child.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tale_pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually("SIGHUP reloads the allowlist", || {
        proxy.connect("denied.test", 443) == "200"
    });
    assert_eq!(
        proxy.connect("allowed.test", 443),
        "200",
        "still running after the reload"
    );
}

/// Open mode (no allowlist): no filter at all, everything on 443 passes.
#[test]
fn open_mode() {
    let _a = listen("127.0.0.4:443");
    let proxy = Proxy::start(None);
    assert_eq!(proxy.connect("127.0.0.4", 443), "200", "{}", proxy.log());
    assert!(
        !std::fs::read_to_string(proxy.dir.join("run/tinyproxy.conf"))
            .unwrap()
            .contains("\nFilter ")
    );
}

/// An invalid allowlist stops the proxy from starting, with the entry named.
#[test]
fn invalid_allowlist_refuses_to_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_tale"))
        .args(["egress-proxy", "render", "--out-dir"])
        .arg(std::env::temp_dir().join(format!("tale-egress-bad-{}", std::process::id())))
        .args(["--allowlist", "ok.test|https://bad.test/x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"https://bad.test/x\""));
}
