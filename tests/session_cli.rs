//! End-to-end: the operator CLI (`tale session …`) against the real spawner on the local backend —
//! the exec id and how to resume, stdin, the execs list, tables and JSON, and errors that say what
//! to do.
mod support;

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::spawner::{SpawnerProcess, SANDBOX_TOKEN};

struct Cli {
    url: String,
}

impl Cli {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tale"));
        command
            .arg("session")
            .args(args)
            .env("TALE_SPAWNER_URL", &self.url)
            .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
            .env_remove("TALE_TOKEN_FILE")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn start() -> (SpawnerProcess, Cli) {
    let spawner = SpawnerProcess::local(&[]).await;
    let cli = Cli {
        url: format!("http://127.0.0.1:{}", spawner.port),
    };
    (spawner, cli)
}

/// The exec id from the start line on stderr.
fn announced_exec_id(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("started in session"))
        .unwrap_or_else(|| panic!("no start line in stderr: {stderr}"));
    line.split_whitespace().nth(3).unwrap().to_owned()
}

/// `exec` announces its id with the attach command; `-i` sends piped stdin (any text, not only JSON
/// lines) and the printed id attaches to the same output; without `-i` stdin stays closed.
#[tokio::test(flavor = "multi_thread")]
async fn exec_announces_its_id_and_forwards_piped_stdin() {
    let (_spawner, cli) = start().await;
    assert!(cli.run(&["create", "in1"]).status.success());
    let input = b"hello\nnot json at all\n{\"a\":1}\nno trailing newline";
    let exec = cli.with_stdin(&["exec", "-i", "in1", "cat"], input);
    assert_eq!(exec.status.code(), Some(0), "{}", text(&exec.stderr));
    assert_eq!(exec.stdout, input);
    let stderr = text(&exec.stderr);
    let exec_id = announced_exec_id(&stderr);
    assert!(
        stderr.contains(&format!("tale session attach in1 {exec_id}")),
        "{stderr}"
    );
    let attach = cli.run(&["attach", "in1", &exec_id]);
    assert_eq!(attach.status.code(), Some(0), "{}", text(&attach.stderr));
    assert_eq!(attach.stdout, input);
    let closed = cli.with_stdin(&["exec", "in1", "cat; echo done"], b"ignored\n");
    assert_eq!(text(&closed.stdout), "done\n");
    let too_big = vec![b'x'; 2 * 1024 * 1024 + 1];
    let refused = cli.with_stdin(&["exec", "-i", "in1", "cat"], &too_big);
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        text(&refused.stderr).contains("over 2 MiB"),
        "{}",
        text(&refused.stderr)
    );
}

/// `execs` lists live and finished execs with state and exit code, as JSON and as a table; an
/// unknown session is named.
#[tokio::test(flavor = "multi_thread")]
async fn execs_lists_a_sessions_execs() {
    let (_spawner, cli) = start().await;
    assert!(cli.run(&["create", "ex1"]).status.success());
    assert_eq!(
        cli.run(&["exec", "ex1", "--exec-id", "first", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let mut running = cli
        .command(&["exec", "ex1", "--exec-id", "second", "sleep 30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let out = cli.run(&["execs", "ex1", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        if listed["execs"].as_array().unwrap().len() == 2 {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "second exec never listed: {listed}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let execs = listed["execs"].as_array().unwrap();
    assert_eq!(
        (
            &execs[0]["execId"],
            &execs[0]["state"],
            &execs[0]["exitCode"]
        ),
        (
            &Value::from("first"),
            &Value::from("exited"),
            &Value::from(3)
        )
    );
    assert_eq!(
        (
            &execs[1]["execId"],
            &execs[1]["state"],
            &execs[1]["exitCode"]
        ),
        (
            &Value::from("second"),
            &Value::from("running"),
            &Value::Null
        )
    );
    assert!(execs[1]["startedAtMs"].as_u64().unwrap() > 0);
    let table = text(&cli.run(&["execs", "ex1", "--table"]).stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("EXEC"), "{table}");
    assert!(
        lines[1].starts_with("first") && lines[1].ends_with(" 3"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("second") && lines[2].contains("running"),
        "{table}"
    );
    assert!(cli.run(&["cancel", "ex1", "second"]).status.success());
    running.wait().unwrap();
    let missing = cli.run(&["execs", "nosuch"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("session \"nosuch\" not found"));
}

/// On request (`--table`, the default on a terminal) `ls` and `get` print tables with relative
/// times; otherwise JSON for scripts.
#[tokio::test(flavor = "multi_thread")]
async fn tables_for_people_json_for_scripts() {
    let (_spawner, cli) = start().await;
    assert!(cli.run(&["create", "tb1", "--org", "ops"]).status.success());
    let ls = text(&cli.run(&["ls", "--table"]).stdout);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["SESSION", "ORG", "STATE", "BACKEND", "CREATED", "ACTIVE", "EXPIRES"]
    );
    assert_eq!(
        lines[1].split_whitespace().take(4).collect::<Vec<_>>(),
        ["tb1", "ops", "ready", "local"],
        "{ls}"
    );
    assert!(
        lines[1].contains("ago") || lines[1].contains("just now"),
        "{ls}"
    );
    let get = text(&cli.run(&["get", "tb1", "--table"]).stdout);
    assert!(
        get.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["org", "ops"]),
        "{get}"
    );
    assert!(get.contains("expires") && get.contains("in "), "{get}");
    let json: Value = serde_json::from_slice(&cli.run(&["get", "tb1"]).stdout).unwrap();
    assert_eq!(json["session"]["sessionId"], "tb1");
}

/// Errors name the problem and the fix: no token (before any request), a wrong token, a bad URL or
/// id, a missing session or exec, a missing program (127).
#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_to_do() {
    let (_spawner, cli) = start().await;
    assert!(cli.run(&["create", "er1"]).status.success());
    let fails = |out: Output, code: i32, needle: &str| {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(needle), "wanted {needle:?} in: {stderr}");
    };
    // Nothing listens on port 1: the message is about the token, so no request was tried.
    let mut no_token = cli.command(&["ls"]);
    no_token
        .env_remove("SANDBOX_TOKEN")
        .env("TALE_SPAWNER_URL", "http://127.0.0.1:1");
    fails(no_token.output().unwrap(), 125, "SANDBOX_TOKEN is not set");
    let mut wrong = cli.command(&["ls"]);
    wrong.env("SANDBOX_TOKEN", "not-the-token");
    fails(wrong.output().unwrap(), 1, "clock");
    let mut bad_url = cli.command(&["ls"]);
    bad_url.env("TALE_SPAWNER_URL", "127.0.0.1:8003 x");
    fails(
        bad_url.output().unwrap(),
        125,
        "expected http://HOST[:PORT]",
    );
    fails(cli.run(&["get", "a b"]), 125, "invalid session id \"a b\"");
    fails(
        cli.run(&["get", "nosuch"]),
        1,
        "session \"nosuch\" not found",
    );
    fails(
        cli.run(&["exec", "nosuch", "true"]),
        1,
        "session \"nosuch\" not found",
    );
    fails(
        cli.run(&["rm", "nosuch"]),
        1,
        "session \"nosuch\" not found",
    );
    fails(
        cli.run(&["cancel", "er1", "nope"]),
        1,
        "exec \"nope\" not found",
    );
    fails(
        cli.run(&["attach", "er1", "nope"]),
        1,
        "exec \"nope\" not found",
    );
    fails(
        cli.run(&["exec", "er1", "--argv", "--", "no-such-program-x", "a"]),
        127,
        "no-such-program-x: command not found",
    );
    assert!(cli.run(&["rm", "er1"]).status.success());
}

/// Ctrl-C detaches from a running exec (exit 130) and prints how to attach and cancel it; the exec
/// keeps running until cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_detaches_and_says_how_to_resume() {
    let (_spawner, cli) = start().await;
    assert!(cli.run(&["create", "cc1"]).status.success());
    let mut child = cli
        .command(&["exec", "cc1", "--exec-id", "long", "sleep 60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ctrl-C once the id is printed (the CLI watches for it from before the request).
    let mut stderr_pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut stderr = String::new();
    while !stderr.contains("started in session") {
        let read = std::io::BufRead::read_line(&mut stderr_pipe, &mut stderr).unwrap();
        assert!(
            read > 0,
            "the CLI ended before announcing the exec: {stderr}"
        );
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    std::io::Read::read_to_string(&mut stderr_pipe, &mut stderr).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("detached; exec long keeps running"),
        "{stderr}"
    );
    assert!(stderr.contains("tale session attach cc1 long"), "{stderr}");
    assert!(stderr.contains("tale session cancel cc1 long"), "{stderr}");
    let listed: Value =
        serde_json::from_slice(&cli.run(&["execs", "cc1", "--json"]).stdout).unwrap();
    assert_eq!(listed["execs"][0]["state"], "running");
    assert!(cli.run(&["cancel", "cc1", "long"]).status.success());
}

/// Bytes no two chunks of which are alike (a simple LCG), so a misplaced chunk cannot pass.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

/// Every regular file under `root`, by relative path, with its bytes.
fn tree(root: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// `cp` moves a 5 MiB file and a directory tree (nested, empty and chunk-sized files, a UTF-8
/// name) up to a session and back byte-exact, in chunks far below the spawner's body cap; the
/// uploaded file is whole inside the session; a missing remote path is named.
#[tokio::test(flavor = "multi_thread")]
async fn cp_round_trips_files_and_trees() {
    let (spawner, cli) = start().await;
    assert!(cli.run(&["create", "cp1"]).status.success());
    let scratch = std::env::temp_dir().join(format!("tale-cli-cp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let up = scratch.join("up");
    std::fs::create_dir_all(up.join("src/deep/er")).unwrap();
    let big = pattern(5 * 1024 * 1024 + 7, 1);
    std::fs::write(scratch.join("big.bin"), &big).unwrap();
    std::fs::write(up.join("README.md"), b"# hi\n").unwrap();
    std::fs::write(up.join("src/empty"), b"").unwrap();
    std::fs::write(up.join("src/one-chunk.bin"), pattern(1024 * 1024, 2)).unwrap();
    std::fs::write(up.join("src/deep/er/caf\u{e9}.txt"), "caf\u{e9}\n").unwrap();
    std::fs::write(up.join("src/deep/two.bin"), pattern(2 * 1024 * 1024 + 1, 3)).unwrap();

    let big_local = scratch.join("big.bin").display().to_string();
    let out = cli.run(&["--json", "cp", &big_local, "cp1:in/big.bin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (copied["files"].as_u64(), copied["bytes"].as_u64()),
        (Some(1), Some(big.len() as u64))
    );
    // Inside the session the file is whole (its size and checksum as the session sees them).
    let out = cli.run(&["exec", "cp1", "wc -c < in/big.bin; ls -A in"]);
    assert_eq!(text(&out.stdout), format!("{}\nbig.bin\n", big.len()));
    let down = scratch.join("big.down");
    let out = cli.run(&["cp", "cp1:in/big.bin", &down.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read(&down).unwrap() == big,
        "5 MiB file round trip"
    );

    let out = cli.run(&["cp", &up.display().to_string(), "cp1:tree"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = scratch.join("back");
    let out = cli.run(&["cp", "cp1:tree", &back.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(tree(&back), tree(&up), "tree round trip");
    assert_eq!(tree(&back).len(), 5);

    let out = cli.run(&[
        "cp",
        "cp1:nope.txt",
        &scratch.join("x").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nope.txt: not found"),
        "{}",
        text(&out.stderr)
    );
    let out = cli.run(&["cp", &big_local, &scratch.join("y").display().to_string()]);
    assert_eq!(out.status.code(), Some(125), "two local paths");
    let _ = std::fs::remove_dir_all(&scratch);
    drop(spawner);
}
