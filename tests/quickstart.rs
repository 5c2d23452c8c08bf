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
