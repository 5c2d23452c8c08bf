//! End-to-end on one host with Debian's docker-compose: the stack (spawner, egress proxy, stub
//! gateway) from compose.yml + compose.local.yml with locally built images. A session created
//! with the CLI runs commands; through the proxy it reaches an allowed test host (a container this
//! test owns on the outside network) and gets 403 for a denied name; directly it reaches nothing.
//! From inside a session, the spawner's address on the sandbox network answers nothing (API and
//! `/metrics`), and a second session's runnerd closes the connection unread, while the spawner
//! still execs in both. `TALE_IMAGE_TAG` picks the spawner and egress images' tag (default
//! `latest`), `TALE_TEST_IMAGE` the session image. Fails loudly without Docker or docker-compose.
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::proc_net;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOKEN: &str = "compose-test-token-0123456789";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

struct Stack {
    project: String,
    env_file: std::path::PathBuf,
    host: Option<String>,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "-f",
            "compose.yml",
            "-f",
            "compose.local.yml",
            "-p",
            &self.project,
            "--env-file",
        ];
        let env_file = self.env_file.display().to_string();
        all.push(&env_file);
        all.extend_from_slice(args);
        run("docker-compose", &all)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(host) = &self.host {
            run("docker", &["rm", "-f", host]);
        }
        // Sessions first (they sit on the stack's network), then the stack.
        let sessions = run(
            "docker",
            &["ps", "-aq", "--filter", "label=tale.org=compose-e2e"],
        );
        for id in String::from_utf8_lossy(&sessions.stdout).split_whitespace() {
            run("docker", &["rm", "-f", id]);
        }
        self.compose(&["down", "-v", "--remove-orphans"]);
        let _ = std::fs::remove_file(&self.env_file);
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tale"))
        .arg("session")
        .args(args)
        .env("TALE_SPAWNER_URL", "http://127.0.0.1:8003")
        .env("SANDBOX_TOKEN", TOKEN)
        .output()
        .unwrap()
}

#[test]
fn compose_stack_end_to_end() {
    assert!(
        run("docker", &["version"]).status.success(),
        "Docker is required (scripts/setup.sh)"
    );
    assert!(
        run("docker-compose", &["version"]).status.success(),
        "docker-compose is required (scripts/setup.sh)"
    );
    let tag = std::env::var("TALE_IMAGE_TAG").unwrap_or_else(|_| "latest".into());
    let spawner_image = format!("tale-sandbox:{tag}");
    let egress_image = format!("tale-sandbox-egress:{tag}");
    for (image, target) in [(&spawner_image, "spawner"), (&egress_image, "egress")] {
        if !run("docker", &["image", "inspect", image]).status.success() {
            ok(
                &format!("{ROOT}/scripts/build-images.sh"),
                &["--local", target],
            );
        }
    }
    let runtime_image =
        std::env::var("TALE_TEST_IMAGE").unwrap_or_else(|_| "tale-test-runtime:latest".into());
    if !run("docker", &["image", "inspect", &runtime_image])
        .status
        .success()
    {
        ok(
            &format!("{ROOT}/scripts/build-test-image.sh"),
            &[&runtime_image],
        );
    }
    let project = format!("tale-e2e-{}", std::process::id());
    let env_file = std::env::temp_dir().join(format!("{project}.env"));
    std::fs::write(
        &env_file,
        format!(
            "SANDBOX_TOKEN={TOKEN}\nSANDBOX_EGRESS_ALLOWLIST=allowed.test\n\
             TALE_SPAWNER_IMAGE={spawner_image}\nTALE_EGRESS_IMAGE={egress_image}\n\
             SANDBOX_RUNTIME_IMAGE={runtime_image}\nTALE_GATEWAY_STUB_IMAGE={runtime_image}\n"
        ),
    )
    .unwrap();
    let mut stack = Stack {
        project: project.clone(),
        env_file,
        host: None,
    };
    let up = stack.compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    // The test host: on the outside network, answering as allowed.test and denied.test on :80.
    let host = format!("{project}-host");
    ok("docker", &[
        "run", "-d", "--name", &host, "--network", &format!("{project}_internal"),
        "--network-alias", "allowed.test", "--network-alias", "denied.test", "--entrypoint", "/bin/sh",
        &runtime_image, "-c", "mkdir -p /tmp/www && echo hello-from-test-host > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
    ]);
    stack.host = Some(host.clone());
    let host_ip = ok(
        "docker",
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &host,
        ],
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    while !cli(&["ls"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "spawner not ready: {}",
            String::from_utf8_lossy(&stack.compose(&["logs", "--tail", "30"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let created = cli(&["create", "web", "--org", "compose-e2e"]);
    assert!(
        created.status.success(),
        "create: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let exec = |line: &str| cli(&["exec", "web", line]);
    let hello = exec("echo up && id -u");
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout),
        "up\n65534\n",
        "{}",
        String::from_utf8_lossy(&hello.stderr)
    );

    // Requests are written by hand with busybox nc: the static busybox cannot resolve names, so the
    // proxy is addressed by IP and the names are resolved by the proxy, as in real use.
    let proxy_ip = ok(
        "docker",
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"tale-sandbox-net\").IPAddress}}",
            "tale-sandbox-egress",
        ],
    );
    let via_proxy = |name: &str| {
        let line = format!("printf 'GET http://{name}/ HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n' | nc -w 10 {proxy_ip} 3128");
        String::from_utf8_lossy(&exec(&line).stdout).to_string()
    };
    let allowed = via_proxy("allowed.test");
    assert!(
        allowed.starts_with("HTTP/1.1 200") && allowed.ends_with("hello-from-test-host\n"),
        "allowed host through the proxy: {allowed}"
    );
    let denied = via_proxy("denied.test");
    assert!(
        denied.starts_with("HTTP/1.0 403"),
        "denied name gets 403: {denied}"
    );
    let direct = exec(&format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host_ip} 80; echo rc=$?"
    ));
    let direct_text = String::from_utf8_lossy(&direct.stdout).to_string();
    assert!(
        !direct_text.contains("hello") && !direct_text.trim_end().ends_with("rc=0"),
        "no route but the proxy: {direct_text}"
    );

    // Isolation, from inside the session: the spawner's address on the sandbox network serves
    // nothing, to this session, of the API or /metrics (refused or closed before a byte is read).
    let spawner_ip = ok(
        "docker",
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"tale-sandbox-net\").IPAddress}}",
            "tale-sandbox",
        ],
    );
    assert_eq!(
        spawner_ip, "10.213.0.10",
        "the spawner sits in the control range"
    );
    for path in ["/metrics", "/v1/sessions", "/health"] {
        let seen = exec(&format!(
            "printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {spawner_ip} 8003; echo rc=$?"
        ));
        let seen = String::from_utf8_lossy(&seen.stdout).to_string();
        assert!(
            seen.contains("rc=") && !seen.contains("HTTP/"),
            "the spawner answered a session on {path}: {seen}"
        );
    }
    // A second session: its runnerd closes the first one's connection unread and at once.
    let second = cli(&["create", "web2", "--org", "compose-e2e"]);
    assert!(
        second.status.success(),
        "create: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    let second_ip = ok(
        "docker",
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"tale-sandbox-net\").IPAddress}}",
            "tale-sbx-ses-web2",
        ],
    );
    assert!(second_ip.starts_with("10.213."), "{second_ip}");
    let probe = exec(&format!(
        "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {second_ip} 8200; echo rc=$?"
    ));
    let probe = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(
        probe.contains("rc=") && !probe.contains("HTTP/"),
        "the second session's runnerd answered the first: {probe}"
    );
    // Held open by the first session, the connection is not ESTABLISHED on the second's side.
    let first_ip: std::net::Ipv4Addr = ok(
        "docker",
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"tale-sandbox-net\").IPAddress}}",
            "tale-sbx-ses-web",
        ],
    )
    .parse()
    .unwrap();
    assert!(exec(&proc_net::hold_connection(&second_ip, 8200, 6))
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let table = cli(&["exec", "web2", "cat /proc/net/tcp"]);
        let states = proc_net::states(&String::from_utf8_lossy(&table.stdout), 8200, first_ip);
        if !states.is_empty() && states.iter().all(|s| s != "01") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first session's connection stays ESTABLISHED on the second's runnerd: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let both = cli(&["exec", "web2", "echo second-alive"]);
    assert_eq!(String::from_utf8_lossy(&both.stdout), "second-alive\n");
    assert_eq!(
        String::from_utf8_lossy(&exec("echo first-alive").stdout),
        "first-alive\n"
    );

    assert!(cli(&["rm", "web"]).status.success());
    assert!(cli(&["rm", "web2"]).status.success());
    let _ = Path::new(ROOT);
}
