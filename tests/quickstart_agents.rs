//! End-to-end: `scripts/quickstart.sh --agents` brings up the compose stack (spawner, egress proxy,
//! stub gateway) with the agent image as the sessions' runtime: session `demo` runs as the agent
//! profile's user and has the three agent CLIs at the Dockerfile's pinned versions, and git; run
//! again, it uses the running session `demo`; then `--down` removes the stack. Needs Docker and docker-compose; fails loudly without them, and
//! refuses to run while another quick start or compose stack holds the stack's container names.
use std::process::{Command, Output, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A model request to the stack's gateway from inside the session (bash's /dev/tcp), printing the
/// raw reply.
const STUB_REQUEST: &str = "exec 3<>/dev/tcp/sandbox-llm-gateway/8080 && \
    printf 'POST /anthropic/v1/messages HTTP/1.1\\r\\nHost: sandbox-llm-gateway\\r\\nContent-Length: 2\\r\\n\\r\\n{}' >&3 && \
    timeout 10 cat <&3";

fn pinned(name: &str) -> String {
    include_str!("../Dockerfile")
        .lines()
        .find_map(|line| line.strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("the Dockerfile pins {name}"))
        .trim()
        .to_owned()
}

fn quickstart(dir: &std::path::Path, bin: &str, args: &[&str]) -> Output {
    Command::new(format!("{ROOT}/scripts/quickstart.sh"))
        .args(args)
        .env("TALE_BIN", bin)
        .env("TALE_QUICKSTART_DIR", dir)
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The agent quick start: the demo session answers with the pinned CLIs, git and uid 10001, and a
/// second run against the running stack uses that session instead of failing on its create.
#[test]
fn agents_quickstart_sessions_have_the_agent_clis() {
    assert!(
        !docker(&["container", "inspect", "tale-sandbox"]).0,
        "a stack with container tale-sandbox exists (another quick start?); stop it first"
    );
    // The static binary the images get (scripts/test.sh picks its profile with TALE_PROFILE).
    let built = Command::new(format!("{ROOT}/scripts/build-static.sh"))
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let bin = String::from_utf8_lossy(&built.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let dir = std::env::temp_dir().join(format!("tale-quickstart-agents-{}", std::process::id()));

    let up = quickstart(&dir, &bin, &["--agents"]);
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    // Run again against the running stack: it uses the running session demo (a create of it
    // would be refused with 409 duplicate).
    let again = quickstart(&dir, &bin, &["--agents"]);
    let again_stdout = String::from_utf8_lossy(&again.stdout).into_owned();
    // The stub gateway, as a session sees it: a model request is answered at once with a 400
    // that names the stub (a 5xx made Claude Code retry for about 3 minutes).
    let stub = Command::new(&bin)
        .args(["session", "exec", "demo", STUB_REQUEST])
        .env(
            "SANDBOX_TOKEN",
            std::fs::read_to_string(dir.join("token")).unwrap_or_default(),
        )
        .env("TALE_SPAWNER_URL", "http://127.0.0.1:8003")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stub_reply = String::from_utf8_lossy(&stub.stdout).into_owned();
    let down = quickstart(&dir, &bin, &["--down"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        up.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(stdout.contains("build the agent session image"), "{stdout}");
    assert!(stdout.contains("uid 10001 in /workspace"), "{stdout}");
    for line in [
        format!("claude {} (Claude Code)", pinned("CLAUDE_CODE_VERSION")),
        format!("opencode {}", pinned("OPENCODE_VERSION")),
        format!("codex-cli {}", pinned("CODEX_VERSION")),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no {line:?} in {stdout}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("git version ")),
        "{stdout}"
    );
    assert!(
        again.status.success(),
        "{again_stdout}\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        again_stdout.contains("session demo runs already (profile agent): using it")
            && again_stdout.contains("uid 10001 in /workspace"),
        "{again_stdout}"
    );
    assert!(
        stub_reply.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && stub_reply.contains("invalid_request_error")
            && stub_reply.contains("this is the quick start stub gateway"),
        "{stub_reply:?} {}",
        String::from_utf8_lossy(&stub.stderr)
    );
    let down_text = String::from_utf8_lossy(&down.stdout);
    assert!(down.status.success(), "{down_text}");
    assert!(
        down_text.contains("removed stack tale container tale-sandbox")
            && down_text.contains("stack tale: nothing of it is left on this engine"),
        "{down_text}"
    );
    assert!(
        !docker(&["container", "inspect", "tale-sandbox"]).0,
        "the stack is gone"
    );
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("Docker is required for this test (run scripts/setup.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}
