//! End-to-end: `scripts/quickstart.sh --local-backend` with the test's binary — step lines, a
//! session that answers, no runnerd left after it is stopped, `--down` removing the local sessions,
//! and a refusal when the spawner's port is taken.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn quickstart(dir: &std::path::Path, port: u16, args: &[&str]) -> Command {
    let mut command = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/quickstart.sh"
    ));
    command
        .args(args)
        .env("TALE_BIN", env!("CARGO_BIN_EXE_tale"))
        .env("TALE_QUICKSTART_DIR", dir)
        .env("TALE_QUICKSTART_PORT", port.to_string())
        // A stack name of its own: `--down` must never reach a real stack on this engine.
        .env(
            "TALE_QUICKSTART_STACK",
            format!("qs-test-{}", std::process::id()),
        )
        .stdin(Stdio::null());
    command
}

fn runnerds_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" runnerd ") && c.contains(&needle))
        .collect()
}

/// The local quick start runs a command in a session, leaves no runnerd behind when stopped, and
/// `--down` removes the local sessions and says so.
#[test]
fn local_quickstart_runs_stops_clean_and_goes_down() {
    let dir = std::env::temp_dir().join(format!("tale-quickstart-test-{}", std::process::id()));
    let port = support::runnerd::free_port();
    let mut child = quickstart(&dir, port, &["--local-backend"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("Ctrl-C stops it") {
        assert!(
            Instant::now() < deadline,
            "quick start never came up: {seen}"
        );
        let read = out.read_line(&mut seen).unwrap();
        assert!(read > 0, "quick start ended early: {seen}");
    }
    assert!(seen.contains("start the spawner on 127.0.0.1:"), "{seen}");
    assert!(seen.contains("create session demo"), "{seen}");
    assert!(seen.contains(" ok ("), "step lines carry durations: {seen}");
    assert!(seen.contains("hello from session demo"), "{seen}");
    assert_eq!(
        runnerds_under(&dir).len(),
        1,
        "the demo session's runnerd runs"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    child.wait().unwrap();
    assert!(
        rest.contains("stopped the spawner and 1 runnerd(s)"),
        "{rest}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !runnerds_under(&dir).is_empty() {
        assert!(Instant::now() < deadline, "runnerd left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = quickstart(&dir, port, &["--down"]).output().unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(String::from_utf8_lossy(&down.stdout).contains("local sessions under"));
    assert!(!dir.join("sessions").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the spawner's port taken the local quick start stops and says why, instead of running
/// against whatever listens there.
#[test]
fn local_quickstart_refuses_a_taken_port() {
    let dir = std::env::temp_dir().join(format!("tale-quickstart-port-{}", std::process::id()));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = quickstart(&dir, port, &["--local-backend"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Address already in use") || text.contains("already listens"),
        "{text}"
    );
    assert!(runnerds_under(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// The objects one stack leaves on an engine: a session container and its workspace volume
/// (`tale.stack`), a cache volume, and the compose project's spawner container, network and
/// volume. Names are tale-like on purpose; returns (kind, name) pairs.
fn plant_stack(stack: &str, image: &str) -> Vec<(&'static str, String)> {
    let project = format!("com.docker.compose.project={stack}");
    let project = project.as_str();
    let stack_label = format!("tale.stack={stack}");
    let objects = vec![
        ("container", format!("tale-sbx-ses-{stack}-demo")),
        ("container", format!("{stack}-sandbox")),
        ("volume", format!("tale-sbx-ses-{stack}-demo-ws")),
        ("volume", format!("tale-sandbox-pip-cache-{stack}")),
        ("volume", format!("{stack}_llm-gateway-data")),
        ("network", format!("{stack}-sandbox-net")),
    ];
    let run = |args: &[&str]| assert!(docker(args).0, "docker {args:?}");
    run(&[
        "network",
        "create",
        "--internal",
        "--label",
        project,
        &objects[5].1,
    ]);
    run(&[
        "volume",
        "create",
        "--label",
        &stack_label,
        "--label",
        "tale.sandbox-workspace=1",
        "--label",
        "tale.session=demo",
        &objects[2].1,
    ]);
    run(&[
        "volume",
        "create",
        "--label",
        &stack_label,
        "--label",
        "tale.sandbox-cache=1",
        &objects[3].1,
    ]);
    run(&["volume", "create", "--label", project, &objects[4].1]);
    run(&[
        "create",
        "--name",
        &objects[0].1,
        "--network",
        &objects[5].1,
        "--label",
        &stack_label,
        "--label",
        "tale.sandbox-session=1",
        "--label",
        "tale.session=demo",
        image,
        "true",
    ]);
    run(&[
        "create",
        "--name",
        &objects[1].1,
        "--network",
        &objects[5].1,
        "--label",
        project,
        image,
        "true",
    ]);
    objects
}

fn exists(kind: &str, name: &str) -> bool {
    let inspect = if kind == "container" {
        vec!["inspect", name]
    } else {
        vec![kind, "inspect", name]
    };
    docker(&inspect).0
}

/// Two stacks on one engine (tale-like names, one session id in both): `--down` of one removes
/// exactly its labelled objects — session container, workspace and cache volumes, the compose
/// project's container, network and volume — names each, and leaves the other stack whole.
#[test]
fn down_removes_exactly_its_own_stack() {
    let image = "tale-test-runtime:latest";
    assert!(
        docker(&["image", "inspect", image]).0,
        "Docker and {image} are required (scripts/build-test-image.sh)"
    );
    let pid = std::process::id();
    let (ours, theirs) = (format!("fh-qs-a{pid}"), format!("fh-qs-b{pid}"));
    let dir = std::env::temp_dir().join(format!("tale-quickstart-stacks-{pid}"));
    let our_objects = plant_stack(&ours, image);
    let their_objects = plant_stack(&theirs, image);
    let down = |stack: &str| {
        quickstart(&dir, support::runnerd::free_port(), &["--down"])
            .env("TALE_QUICKSTART_STACK", stack)
            .output()
            .unwrap()
    };
    let out = down(&ours);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (kind, name) in &our_objects {
        assert!(!exists(kind, name), "{kind} {name} is left: {text}");
        assert!(
            text.contains(name.as_str()),
            "--down names {kind} {name}: {text}"
        );
    }
    for (kind, name) in &their_objects {
        assert!(
            exists(kind, name),
            "the other stack's {kind} {name} was removed: {text}"
        );
        assert!(!text.contains(name.as_str()), "{text}");
    }
    assert!(
        text.contains(&format!("stack {ours}: nothing of it is left")),
        "{text}"
    );
    let out = down(&theirs);
    assert!(out.status.success());
    for (kind, name) in &their_objects {
        assert!(!exists(kind, name), "{kind} {name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A quick start of the other kind (`--agents` after the plain one) against a stack that runs
/// stops before any stage and says to run `--down` first, instead of recreating the spawner under
/// the running sessions and failing on the existing session `demo`.
#[test]
fn switching_the_session_image_of_a_running_stack_is_refused() {
    let image = "tale-test-runtime:latest";
    assert!(
        docker(&["image", "inspect", image]).0,
        "Docker and {image} are required (scripts/build-test-image.sh)"
    );
    let pid = std::process::id();
    let stack = format!("fh-qs-sw{pid}");
    let dir = std::env::temp_dir().join(format!("tale-quickstart-switch-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    // What the plain quick start leaves: its .env and the stack's running spawner container.
    std::fs::write(
        dir.join(".env"),
        format!("SANDBOX_RUNTIME_IMAGE={image}\nTALE_STACK={stack}\n"),
    )
    .unwrap();
    let spawner = format!("{stack}-sandbox");
    let project = format!("com.docker.compose.project={stack}");
    assert!(
        docker(&[
            "run",
            "-d",
            "--name",
            &spawner,
            "--label",
            &project,
            "--entrypoint",
            "/bin/sleep",
            image,
            "300",
        ])
        .0
    );
    let out = quickstart(&dir, support::runnerd::free_port(), &["--agents"])
        .env("TALE_QUICKSTART_STACK", &stack)
        .output()
        .unwrap();
    docker(&["rm", "-f", &spawner]);
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "no stage ran: {stdout}");
    assert!(
        stderr.contains(&format!(
            "stack {stack} already runs with sessions from {image}"
        )) && stderr.contains("tale-agent-runtime:latest")
            && stderr.contains("scripts/quickstart.sh --down"),
        "{stderr}"
    );
}

/// Every README section a script's message points at (`README "…"`, `README.md, "…"`) is a
/// heading of the README, so a newcomer can find it.
#[test]
fn scripts_point_at_readme_sections_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let headings: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{root}/scripts")).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let text = text.replace("\\\"", "\"");
        for (at, _) in text.match_indices("README") {
            let rest = text[at + "README".len()..]
                .trim_start_matches(".md")
                .trim_start_matches(',')
                .trim_start_matches([' ', '\n']);
            let Some(quoted) = rest.strip_prefix('"') else {
                continue;
            };
            let name: String = quoted
                .split('"')
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                headings.iter().any(|h| h.starts_with(&name)),
                "{} points at README section {name:?}, which is no heading",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "found only {checked} references");
}

/// Without rustup (the one prerequisite the set-up does not install) `scripts/setup.sh` — the
/// quick start's first stage — stops before touching apt and says how to install it, instead of
/// failing later with `rustup: command not found`.
#[test]
fn setup_without_rustup_says_how_to_get_it() {
    // A PATH holding only bash: no rustup, and no dpkg or apt-get that could run.
    let dir = std::env::temp_dir().join(format!("tale-quickstart-norustup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bash = dir.join("bash");
    let _ = std::fs::remove_file(&bash);
    std::os::unix::fs::symlink("/bin/bash", &bash).unwrap();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.sh"))
        .env_clear()
        .env("PATH", &dir)
        .env("HOME", dir.join("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("setup: rustup is needed and not installed")
            && stderr.contains("https://rustup.rs"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
