//! End-to-end: `tale session shell` in a real terminal. tmux runs the CLI against the real spawner
//! (local backend); the test types with `send-keys` and reads the screen with `capture-pane`:
//! commands and their output, Ctrl-C reaching the remote program, a resize reaching `stty size`,
//! detaching with ctrl-p ctrl-q, reattaching with `tale session attach`, and the local terminal
//! restored after each.
mod support;

use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::runnerd::processes_with;
use support::spawner::{SpawnerProcess, SANDBOX_TOKEN};

const WAIT: Duration = Duration::from_secs(30);

/// A tmux server of this test alone (its own socket), ended on drop.
struct Tmux {
    socket: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Tmux {
    /// `tag` tells apart the servers of tests running at once in this process.
    fn new(spawner_url: &str, tag: &str) -> Tmux {
        Tmux {
            socket: std::env::temp_dir()
                .join(format!("tale-shell-test-{}-{tag}.sock", std::process::id())),
            env: vec![
                ("TALE_SPAWNER_URL".into(), spawner_url.into()),
                ("SANDBOX_TOKEN".into(), SANDBOX_TOKEN.into()),
                ("SHELL".into(), "/bin/sh".into()),
            ],
        }
    }

    /// A server whose session `t` (100x30) runs `command` in window 0.
    fn start(spawner_url: &str, tag: &str, command: &str) -> Tmux {
        let tmux = Tmux::new(spawner_url, tag);
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            command,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .envs(self.env.iter().cloned())
            .env_remove("TMUX")
            .output()
            .expect("tmux is installed");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn screen(&self, target: &str) -> String {
        let output = self.run(&["capture-pane", "-p", "-J", "-t", target]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, target: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", target];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Polls the screen of `target` until `check` passes; panics with the screen after [`WAIT`].
    fn wait_for(&self, target: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen(target);
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never showed on {target}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_text(&self, target: &str, text: &str) -> String {
        self.wait_for(target, text, |screen| screen.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What a pane runs: the CLI, then its exit code and whether the terminal is back in cooked
/// mode (`stty -a` lists `icanon`, not `-icanon`), then a wait so the screen stays readable.
fn pane_command(cli: &str) -> String {
    format!(
        "{cli}; echo \"cli-exit:$?\"; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon | sed 's/^/mode:/'; exec sleep 1000"
    )
}

fn tale() -> &'static str {
    env!("CARGO_BIN_EXE_tale")
}

/// Creates session `id` with the CLI.
fn create_session(url: &str, id: &str) {
    let created = Command::new(tale())
        .args(["session", "create", id, "--json"])
        .env("TALE_SPAWNER_URL", url)
        .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
}

/// A whole interactive session: type, interrupt, resize, detach, reattach, exit.
#[tokio::test(flavor = "multi_thread")]
async fn shell_in_a_real_terminal() {
    let spawner = SpawnerProcess::local(&[]).await;
    let url = format!("http://127.0.0.1:{}", spawner.port);
    create_session(&url, "sh1");
    let shell = pane_command(&format!("{} session shell sh1 --exec-id term1", tale()));
    let tmux = Tmux::start(&url, "shell", &shell);
    let pane = "t:0";
    tmux.wait_for_text(
        pane,
        "shell exec term1 in session sh1; detach with ctrl-p ctrl-q",
    );

    // Commands run remotely and their output shows (the arithmetic proves it ran, not echoed).
    tmux.keys(pane, &["echo hi-$((40+2))", "Enter"]);
    tmux.wait_for_text(pane, "hi-42");

    // Ctrl-C interrupts the remote foreground program, not the CLI.
    let marker = "987.5";
    tmux.keys(pane, &[&format!("sleep {marker}"), "Enter"]);
    let deadline = Instant::now() + WAIT;
    while processes_with(marker).is_empty() {
        assert!(Instant::now() < deadline, "the remote sleep never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.keys(pane, &["C-c"]);
    let deadline = Instant::now() + WAIT;
    while !processes_with(marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Ctrl-C did not end the remote sleep"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.keys(pane, &["echo after-$((2+3))", "Enter"]);
    let screen = tmux.wait_for_text(pane, "after-5");
    assert!(
        !screen.contains("cli-exit"),
        "the CLI kept running:\n{screen}"
    );

    // A resize of the local terminal reaches the remote one. The resize and the typed command
    // travel separately, so ask again until the new size shows.
    tmux.run(&["resize-window", "-t", pane, "-x", "120", "-y", "40"]);
    let deadline = Instant::now() + WAIT;
    loop {
        tmux.keys(pane, &["stty size", "Enter"]);
        let asked = Instant::now();
        let mut seen = false;
        while asked.elapsed() < Duration::from_secs(2) {
            if tmux.screen(pane).lines().any(|l| l.trim() == "40 120") {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stty size never said 40 120:\n{}",
            tmux.screen(pane)
        );
    }

    // ctrl-p ctrl-q detaches: the CLI says how to come back, exits 0, the terminal is restored,
    // and the shell keeps running.
    tmux.keys(pane, &["C-p", "C-q"]);
    let screen = tmux.wait_for_text(pane, "mode:");
    assert!(screen.contains("cli-exit:0"), "{screen}");
    assert!(
        screen.contains("reattach with: tale session attach sh1 term1"),
        "{screen}"
    );
    assert!(screen.lines().any(|l| l == "mode:icanon"), "{screen}");
    let listed = Command::new(tale())
        .args(["session", "execs", "sh1", "--json"])
        .env("TALE_SPAWNER_URL", &url)
        .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let term = listed["execs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["execId"] == "term1")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        (term["state"].as_str(), term["pty"].as_bool()),
        (Some("running"), Some(true))
    );

    // `attach` from a terminal takes the same shell back: the earlier output is replayed, new
    // commands run, and the shell's own exit code ends it.
    let attach = pane_command(&format!("{} session attach sh1 term1", tale()));
    tmux.run(&["new-window", "-t", "t:1", &attach]);
    let pane = "t:1";
    tmux.wait_for_text(pane, "hi-42");
    tmux.keys(pane, &["echo again-$((3+4))", "Enter"]);
    tmux.wait_for_text(pane, "again-7");
    tmux.keys(pane, &["exit 3", "Enter"]);
    let screen = tmux.wait_for_text(pane, "mode:");
    assert!(screen.contains("cli-exit:3"), "{screen}");
    assert!(screen.lines().any(|l| l == "mode:icanon"), "{screen}");
}

/// The local terminal comes back from raw mode on the other ways out too: SIGTERM to the CLI
/// (which detaches, naming the shell) and a stream that breaks (the spawner killed; exit 125 with
/// the attach command).
#[tokio::test(flavor = "multi_thread")]
async fn terminal_restored_on_sigterm_and_broken_stream() {
    let mut spawner = SpawnerProcess::local(&[]).await;
    let url = format!("http://127.0.0.1:{}", spawner.port);
    create_session(&url, "rs1");
    let shell = pane_command(&format!("{} session shell rs1 --exec-id termed", tale()));
    let tmux = Tmux::start(&url, "restore", &shell);
    tmux.wait_for_text("t:0", "shell exec termed in session rs1");
    tmux.keys("t:0", &["echo up-$((1+1))", "Enter"]);
    tmux.wait_for_text("t:0", "up-2");
    // The CLI itself, not the pane's `sh -c` whose command line holds the same words.
    let cli: Vec<i32> = processes_with("termed")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(format!("{}\0", tale()).as_bytes()))
        })
        .collect();
    assert_eq!(cli.len(), 1, "{cli:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli[0]),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let screen = tmux.wait_for_text("t:0", "mode:");
    assert!(screen.contains("cli-exit:0"), "{screen}");
    assert!(
        screen.contains("tale session attach rs1 termed"),
        "{screen}"
    );
    assert!(screen.lines().any(|l| l == "mode:icanon"), "{screen}");

    let shell = pane_command(&format!("{} session shell rs1 --exec-id broken", tale()));
    tmux.run(&["new-window", "-t", "t:1", &shell]);
    tmux.keys("t:1", &["echo up-$((2+2))", "Enter"]);
    tmux.wait_for_text("t:1", "up-4");
    spawner.kill9();
    let screen = tmux.wait_for_text("t:1", "mode:");
    assert!(screen.contains("cli-exit:125"), "{screen}");
    assert!(
        screen.contains("tale session attach rs1 broken"),
        "{screen}"
    );
    assert!(screen.lines().any(|l| l == "mode:icanon"), "{screen}");
}

/// `exec -i` from a terminal sends each typed line as it is, JSON or not (raw stdin), and Ctrl-D
/// ends the input.
#[tokio::test(flavor = "multi_thread")]
async fn exec_interactive_from_a_terminal_sends_any_line() {
    let spawner = SpawnerProcess::local(&[]).await;
    let url = format!("http://127.0.0.1:{}", spawner.port);
    create_session(&url, "in1");
    // A shell loop, not sed: its output is not held back in a pipe buffer.
    let exec = pane_command(&format!(
        "{} session exec -i in1 'while read -r l; do echo \"got:$l\"; done'",
        tale()
    ));
    let tmux = Tmux::start(&url, "exec", &exec);
    let pane = "t:0";
    tmux.wait_for_text(pane, "started in session in1");
    tmux.keys(pane, &["not json at all", "Enter"]);
    tmux.wait_for_text(pane, "got:not json at all");
    tmux.keys(pane, &["C-d"]);
    let screen = tmux.wait_for_text(pane, "mode:");
    assert!(screen.contains("cli-exit:0"), "{screen}");
    assert!(!screen.contains("not delivered"), "{screen}");
}

/// Outside a terminal `shell` refuses with what to use instead; bad detach keys are named.
#[tokio::test(flavor = "multi_thread")]
async fn shell_refusals() {
    let run = |args: &[&str]| {
        Command::new(tale())
            .arg("session")
            .args(args)
            .env("TALE_SPAWNER_URL", "http://127.0.0.1:9")
            .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["shell", "s1"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a terminal"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["shell", "s1", "--detach-keys", "ctrl-1"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--detach-keys"));
}
