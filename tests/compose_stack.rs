//! End-to-end on one host with Debian's docker-compose: the stack (spawner, egress proxy, stub
//! gateway) from compose.yml + compose.local.yml with locally built images. A session created
//! with the CLI runs commands; through the proxy it reaches an allowed test host (a container this
//! test owns on the outside network) and gets 403 for a denied name; directly it reaches nothing.
//! Fails loudly without Docker or docker-compose.
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
    for (image, target) in [
        ("tale-sandbox:latest", "spawner"),
        ("tale-sandbox-egress:latest", "egress"),
    ] {
        if !run("docker", &["image", "inspect", image]).status.success() {
            ok(
                &format!("{ROOT}/scripts/build-images.sh"),
                &["--local", target],
            );
        }
    }
    if !run("docker", &["image", "inspect", "tale-test-runtime:latest"])
        .status
        .success()
    {
        ok(&format!("{ROOT}/scripts/build-test-image.sh"), &[]);
    }
    let project = format!("tale-e2e-{}", std::process::id());
    let env_file = std::env::temp_dir().join(format!("{project}.env"));
    std::fs::write(
        &env_file,
        format!("SANDBOX_TOKEN={TOKEN}\nSANDBOX_EGRESS_ALLOWLIST=allowed.test\n"),
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
        "tale-test-runtime:latest", "-c", "mkdir -p /tmp/www && echo hello-from-test-host > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
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

    assert!(cli(&["rm", "web"]).status.success());
    let _ = Path::new(ROOT);
}
