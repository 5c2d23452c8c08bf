//! End-to-end: the Python and TypeScript client libraries (`clients/`) run their own test suites
//! against the real spawner (local backend), directly and through a TCP proxy that cuts every
//! connection after a few KiB of response — so their transparent stream resume is exercised for
//! real — plus the real Claude Code CLI against the scripted model for agent runs. Also runs the
//! README's `curl` + `openssl` signed-request example verbatim.
//!
//! Python: a venv under `target/client-libraries/` (PyPI: pinned httpx, pytest, setuptools, mypy;
//! kept while the pins are unchanged), `./clients/python` installed into it, `mypy --strict`. TypeScript: `npm ci` (the
//! pinned `typescript` devDependency; kept while the lockfile is unchanged), `tsc`, `node --test`.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fake_model::{FakeModel, STEER_MARKER};
use support::spawner::{SpawnerProcess, SANDBOX_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Packages of the Python test venv; the venv is rebuilt when this changes.
const PYTHON_TEST_PINS: &[&str] = &[
    "httpx==0.28.1",
    "pytest==9.2.0",
    "setuptools==80.9.0",
    "mypy==1.19.1",
];
/// The gateway key the agent-run tests hand the scripted model.
const GATEWAY_TOKEN: &str = "vk-client-libraries";
/// Bytes of response the cut proxy lets through on its first connection, and how many more on
/// each later one (so even a large event eventually passes and every stream makes progress).
const CUT_FIRST_BYTES: usize = 2500;
const CUT_STEP_BYTES: usize = 700;
/// Upper bound for one language's whole suite (installs included).
const SUITE_DEADLINE: Duration = Duration::from_secs(900);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn work_dir() -> PathBuf {
    let dir = repo().join("target").join("client-libraries");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP proxy to `127.0.0.1:target` that closes connection n (0, 1, …) after forwarding
/// `CUT_FIRST_BYTES + n * CUT_STEP_BYTES` bytes of response. Returns its port and the cut count.
async fn cut_proxy(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = cuts.clone();
    tokio::spawn(async move {
        let mut connections = 0usize;
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let limit = CUT_FIRST_BYTES + connections * CUT_STEP_BYTES;
            connections += 1;
            let cuts = counter.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut left = limit;
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let n = match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let take = n.min(left);
                    if client_write.write_all(&buffer[..take]).await.is_err() {
                        break;
                    }
                    left -= take;
                    if left == 0 {
                        cuts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                upstream.abort();
                // Dropping both halves closes the client's connection mid-response.
            });
        }
    });
    (port, cuts)
}

/// Marks the output a split proxy cuts after: `split-<n>:` is printed, then the first half of a
/// 4-byte character, then (a moment later) the rest.
const SPLIT_MARKER: &[u8] = b"split-";

/// Where a split proxy stops forwarding what it has seen of a response.
#[derive(Debug, PartialEq)]
enum SplitCut {
    /// Forward everything.
    None,
    /// Forward up to here and wait for more (a marker's frame has not ended yet).
    Hold(usize),
    /// Forward up to here (the end of the marker's frame), then close; remember the token.
    At(usize, String),
}

/// The first `split-<n>:` in `seen` not yet cut after.
fn split_cut(seen: &[u8], done: &std::collections::HashSet<String>) -> SplitCut {
    let mut from = 0;
    while let Some(offset) = seen[from..]
        .windows(SPLIT_MARKER.len())
        .position(|w| w == SPLIT_MARKER)
    {
        let start = from + offset;
        let Some(colon) = seen[start..].iter().position(|b| *b == b':') else {
            return SplitCut::Hold(start);
        };
        let token = String::from_utf8_lossy(&seen[start..start + colon]).into_owned();
        from = start + colon;
        if done.contains(&token) {
            continue;
        }
        return match seen[start..].windows(2).position(|w| w == b"\n\n") {
            Some(end) => SplitCut::At(start + end + 2, token),
            None => SplitCut::Hold(start),
        };
    }
    SplitCut::None
}

/// A TCP proxy to `127.0.0.1:target` that closes a connection right after the SSE frame carrying
/// a `split-<n>:` marker it has not cut after before — exactly between the two halves of the
/// character that follows the marker. Returns its port and the markers it cut after.
async fn split_proxy(
    target: u16,
) -> (
    u16,
    Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let done = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let cut_markers = done.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let done = cut_markers.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut seen = Vec::new();
                let mut sent = 0;
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let n = match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buffer[..n]);
                    let cut = split_cut(&seen, &done.lock().unwrap());
                    let until = match &cut {
                        SplitCut::None => seen.len(),
                        SplitCut::Hold(at) | SplitCut::At(at, _) => (*at).max(sent),
                    };
                    if client_write.write_all(&seen[sent..until]).await.is_err() {
                        break;
                    }
                    sent = until;
                    if let SplitCut::At(_, token) = cut {
                        done.lock().unwrap().insert(token);
                        break;
                    }
                }
                upstream.abort();
            });
        }
    });
    (port, done)
}

/// Runs `command` to completion within `SUITE_DEADLINE` off the async runtime (the proxy and the
/// fake model keep serving); returns (success, combined output).
async fn run(mut command: Command, what: &str) -> (bool, String) {
    let log = work_dir().join(format!("{}.log", what.replace(' ', "-")));
    let file = std::fs::File::create(&log).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let what = what.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {what}: {err}"));
        let deadline = Instant::now() + SUITE_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(status) => (status.success(), output),
            None => (
                false,
                format!("{what}: timed out after {SUITE_DEADLINE:?}\n{output}"),
            ),
        }
    })
    .await
    .unwrap()
}

/// Panics with the output unless the command succeeded.
async fn must_run(command: Command, what: &str) -> String {
    let (ok, output) = run(command, what).await;
    assert!(ok, "{what} failed:\n{output}");
    output
}

/// The Python venv with the pinned test packages, created once per pin set.
async fn python_venv() -> PathBuf {
    let venv = work_dir().join("py-venv");
    let marker = venv.join("tale-pins.txt");
    let pins = PYTHON_TEST_PINS.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(pins.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        must_run(create, "python venv").await;
        let mut install = Command::new(venv.join("bin/pip"));
        install
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_TEST_PINS);
        must_run(install, "pip install test packages").await;
        std::fs::write(&marker, &pins).unwrap();
    }
    venv
}

/// Cut proxies per suite: one for each test that goes through one (their thresholds grow per
/// connection, so each test gets a fresh one).
const CUT_PROXIES: usize = 3;

/// `CUT_PROXIES` cut proxies to the spawner: their ports and cut counters.
async fn cut_proxies(target: u16) -> Vec<(u16, Arc<AtomicUsize>)> {
    let mut proxies = Vec::new();
    for _ in 0..CUT_PROXIES {
        proxies.push(cut_proxy(target).await);
    }
    proxies
}

/// Every proxy cut at least three connections (each suite streams through all of them).
fn assert_cut(proxies: &[(u16, Arc<AtomicUsize>)]) {
    let cuts: Vec<usize> = proxies
        .iter()
        .map(|(_, cuts)| cuts.load(Ordering::Relaxed))
        .collect();
    assert!(
        cuts.iter().all(|n| *n >= 3),
        "each proxy must have cut connections: {cuts:?}"
    );
}

/// The environment every client suite gets: the spawner, the cut proxies, the scripted model.
fn live_env(
    spawner: &SpawnerProcess,
    proxies: &[(u16, Arc<AtomicUsize>)],
    split: u16,
    model: &FakeModel,
) -> Vec<(String, String)> {
    let urls: Vec<String> = proxies
        .iter()
        .map(|(port, _)| format!("http://127.0.0.1:{port}"))
        .collect();
    vec![
        (
            "TALE_TEST_SPAWNER_URL".into(),
            format!("http://127.0.0.1:{}", spawner.port),
        ),
        ("TALE_TEST_CUT_PROXY_URLS".into(), urls.join(",")),
        (
            "TALE_TEST_SPLIT_PROXY_URL".into(),
            format!("http://127.0.0.1:{split}"),
        ),
        ("SANDBOX_TOKEN".into(), SANDBOX_TOKEN.into()),
        ("TALE_TEST_MODEL_URL".into(), model.root()),
        ("TALE_TEST_GATEWAY_TOKEN".into(), GATEWAY_TOKEN.into()),
        ("TALE_TEST_STEER_MARKER".into(), STEER_MARKER.into()),
    ]
}

/// The last line of a test runner's output that contains `needle` (its summary).
fn summary<'a>(output: &'a str, needle: &str) -> Option<&'a str> {
    output.lines().rev().find(|line| line.contains(needle))
}

/// The Python client type-checks (mypy --strict) and its suite (unit and live) passes against the
/// real spawner, with nothing skipped.
#[tokio::test(flavor = "multi_thread")]
async fn python_client_suite_passes_against_the_real_spawner() {
    let venv = python_venv().await;
    let mut install = Command::new(venv.join("bin/pip"));
    install
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--no-deps",
            "--force-reinstall",
        ])
        .arg(repo().join("clients/python"));
    must_run(install, "pip install clients-python").await;
    // The package is typed: its annotations must hold under mypy's strict mode.
    let mut mypy = Command::new(venv.join("bin/python"));
    mypy.args(["-m", "mypy", "--strict", "--cache-dir"])
        .arg(work_dir().join("mypy-cache"))
        .arg(repo().join("clients/python/src/tale_client"));
    must_run(mypy, "mypy").await;

    let model = FakeModel::start("/anthropic", GATEWAY_TOKEN).await;
    let spawner = SpawnerProcess::local(&[]).await;
    let proxies = cut_proxies(spawner.port).await;
    let (split, split_markers) = split_proxy(spawner.port).await;
    let mut pytest = Command::new(venv.join("bin/python"));
    pytest
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v"])
        .arg(repo().join("clients/python/tests"))
        .current_dir(repo().join("clients/python"))
        .envs(live_env(&spawner, &proxies, split, &model));
    let (ok, output) = run(pytest, "pytest").await;
    println!("{output}");
    assert!(
        ok,
        "the Python client's tests failed:\n{output}\nspawner log:\n{}",
        spawner.log()
    );
    let line = summary(&output, " passed").expect("a pytest summary line");
    assert!(
        !line.contains("skipped") && !line.contains("failed") && !line.contains("error"),
        "every Python test must run and pass: {line}"
    );
    assert_cut(&proxies);
    assert!(
        !split_markers.lock().unwrap().is_empty(),
        "the split proxy never cut"
    );

    // The README's example, as it stands.
    let mut example = Command::new(venv.join("bin/python"));
    example
        .arg("-c")
        .arg(readme_block("<!-- python-example -->", "python"))
        .env(
            "TALE_SPAWNER_URL",
            format!("http://127.0.0.1:{}", spawner.port),
        )
        .env("SANDBOX_TOKEN", SANDBOX_TOKEN);
    let output = must_run(example, "python readme example").await;
    assert!(output.ends_with("hi\n\n"), "{output}");
}

/// `npm ci` when the lockfile changed since the last install (the pinned `typescript` only).
async fn typescript_tools(dir: &Path) {
    let lock = std::fs::read(dir.join("package-lock.json")).unwrap();
    let installed = std::fs::read(dir.join("node_modules/.package-lock.json")).ok();
    let marker = dir.join("node_modules/.tale-lock");
    if installed.is_none() || std::fs::read(&marker).ok().as_deref() != Some(lock.as_slice()) {
        let mut ci = Command::new("npm");
        // No lifecycle scripts: the build step below compiles.
        ci.args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(dir);
        must_run(ci, "npm ci").await;
        std::fs::write(&marker, &lock).unwrap();
    }
}

/// The TypeScript client compiles with `tsc` (strict) and its suite passes against the real
/// spawner under node's test runner, with nothing skipped.
#[tokio::test(flavor = "multi_thread")]
async fn typescript_client_suite_passes_against_the_real_spawner() {
    let dir = repo().join("clients/typescript");
    typescript_tools(&dir).await;
    let mut build = Command::new("node");
    build
        .args(["node_modules/typescript/bin/tsc", "-p", "."])
        .current_dir(&dir);
    must_run(build, "tsc").await;

    let model = FakeModel::start("/anthropic", GATEWAY_TOKEN).await;
    let spawner = SpawnerProcess::local(&[]).await;
    let proxies = cut_proxies(spawner.port).await;
    let (split, split_markers) = split_proxy(spawner.port).await;
    let mut test_files: Vec<PathBuf> = std::fs::read_dir(dir.join("dist/test"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".test.js"))
        .collect();
    test_files.sort();
    assert!(test_files.len() >= 2, "compiled test files: {test_files:?}");
    let mut test = Command::new("node");
    test.args(["--test", "--test-reporter=spec"])
        .args(&test_files)
        .current_dir(&dir)
        .envs(live_env(&spawner, &proxies, split, &model));
    let (ok, output) = run(test, "node test").await;
    println!("{output}");
    assert!(
        ok,
        "the TypeScript client's tests failed:\n{output}\nspawner log:\n{}",
        spawner.log()
    );
    for (counter, expected_zero) in [("skipped", true), ("fail", true), ("pass", false)] {
        let line = summary(&output, &format!("ℹ {counter} ")).expect("node's test summary");
        let count: usize = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot read {line:?}"));
        assert_eq!(count == 0, expected_zero, "{line}");
    }
    assert_cut(&proxies);
    assert!(
        !split_markers.lock().unwrap().is_empty(),
        "the split proxy never cut"
    );

    // The README's example, as it stands but for the package name (this checkout's build).
    let script = dir.join("dist/readme-example.mjs");
    let code = readme_block("<!-- typescript-example -->", "ts")
        .replace("from \"tale-client\"", "from \"./src/index.js\"");
    std::fs::write(&script, code).unwrap();
    let mut example = Command::new("node");
    example
        .arg(&script)
        .env(
            "TALE_SPAWNER_URL",
            format!("http://127.0.0.1:{}", spawner.port),
        )
        .env("SANDBOX_TOKEN", SANDBOX_TOKEN);
    let output = must_run(example, "typescript readme example").await;
    assert!(output.ends_with("hi\n\n"), "{output}");
}

/// The split proxy cuts once per marker, right after the end of the marker's frame.
#[test]
fn split_cut_points() {
    let mut done = std::collections::HashSet::new();
    let frame = b"event: stdout\nid: 4\ndata: {\"text\":\"split-1:\"}\n\nevent: x\n\n";
    let end = frame.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    assert_eq!(split_cut(frame, &done), SplitCut::At(end, "split-1".into()));
    let start = frame.windows(6).position(|w| w == b"split-").unwrap();
    // The marker's frame has not ended: hold at the marker (a marker cut short is no marker yet).
    assert_eq!(split_cut(&frame[..start + 9], &done), SplitCut::Hold(start));
    assert_eq!(split_cut(&frame[..start + 6], &done), SplitCut::Hold(start));
    assert_eq!(split_cut(&frame[..start + 3], &done), SplitCut::None);
    assert_eq!(split_cut(b"no marker", &done), SplitCut::None);
    done.insert("split-1".to_string());
    assert_eq!(split_cut(frame, &done), SplitCut::None);
}

/// The fenced block (opening with "```" + `lang`) that follows `marker` in the README.
fn readme_block(marker: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("the README has no {marker}"));
    readme[start..]
        .split(&format!("```{lang}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap_or_else(|| panic!("no {lang} block after {marker}"))
        .to_owned()
}

/// The README's `curl` + `openssl` example, run verbatim with bash, creates a session.
#[tokio::test(flavor = "multi_thread")]
async fn readme_curl_example_signs_a_request_that_the_spawner_accepts() {
    let block = readme_block("<!-- signed-request-example -->", "sh");
    let spawner = SpawnerProcess::local(&[]).await;
    let mut bash = Command::new("bash");
    bash.args(["-euo", "pipefail", "-c", &block])
        .env(
            "TALE_SPAWNER_URL",
            format!("http://127.0.0.1:{}", spawner.port),
        )
        .env("SANDBOX_TOKEN", SANDBOX_TOKEN);
    let output = must_run(bash, "readme curl example").await;
    let reply: serde_json::Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|err| panic!("not JSON ({err}): {output}"));
    assert_eq!(reply["session"]["sessionId"], "demo", "{reply}");
    let (status, _) = spawner
        .client
        .json(hyper::Method::DELETE, "/v1/sessions/demo", None)
        .await;
    assert_eq!(status, hyper::StatusCode::OK);
}
