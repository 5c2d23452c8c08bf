//! End-to-end with real git: per-operation credentials granted to runnerd reach git only through
//! `tale git-credential`, only for the granted host, are revoked at the next operation, and never
//! show up in an exec's environment, any /proc/*/environ, or runnerd's log.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use support::git_http::{create_repo, GitServer};
use support::runnerd::{output, terminal, Options, Runnerd};

const SECRET: &str = "s3cret-password-for-git-0042";

/// Clone with a granted credential; another host gets nothing; after revocation a fetch fails.
#[tokio::test(flavor = "multi_thread")]
async fn git_uses_granted_credentials_per_operation() {
    let daemon = Runnerd::start(Options::default()).await;
    let repos = daemon.root.parent().unwrap().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    create_repo(&repos, "project.git", "hello from the repo\n");
    let server = GitServer::start(&repos, "alice", SECRET).await;

    // The helper is configured as git would find it in the image: `credential.helper=tale` resolves
    // to `git-credential-tale` on PATH (the binary under that name, busybox style). A copy, not a
    // symlink: the exec user may not be able to traverse the build directory.
    let bin_dir = daemon.root.parent().unwrap().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_tale"),
        bin_dir.join("git-credential-tale"),
    )
    .unwrap();
    let git_env = json!({
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "tale",
        "GIT_CONFIG_NOSYSTEM": "1",
    });
    let run = |id: &str, shell: String| {
        let client = daemon.client.clone();
        let env = git_env.clone();
        let bin = bin_dir.display().to_string();
        let id = id.to_string();
        async move {
            client
                .exec(json!({"execId": id, "shell": format!("export PATH={bin}:$PATH; {shell}"), "env": env, "timeoutMs": 60000}))
                .await
        }
    };

    // Nothing granted yet: git cannot authenticate.
    let events = run(
        "clone0",
        format!("git clone -q {} first", server.url("project.git")),
    )
    .await;
    assert_ne!(terminal(&events)["exitCode"], 0);

    let (status, reply) = daemon
        .client
        .json(
            Method::PUT,
            "/credentials/git",
            Some(json!({"host": server.host(), "username": "alice", "password": SECRET})),
        )
        .await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"ok": true})));

    let events = run(
        "clone1",
        format!(
            "git clone -q {} repo && cat repo/README",
            server.url("project.git")
        ),
    )
    .await;
    assert_eq!(
        terminal(&events)["exitCode"],
        0,
        "{}",
        String::from_utf8_lossy(&output(&events, "stderr"))
    );
    assert_eq!(output(&events, "stdout"), b"hello from the repo\n");
    assert!(
        daemon.client.health().await["credentialAccesses"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // Another host gets nothing from the helper.
    let events = run(
        "other",
        "printf 'protocol=https\\nhost=github.com\\n\\n' | git-credential-tale get; echo end"
            .into(),
    )
    .await;
    assert_eq!(output(&events, "stdout"), b"end\n");

    // The secret is nowhere in the exec's environment or any process environment.
    let events = run(
        "peek",
        "env; for f in /proc/[0-9]*/environ; do cat $f 2>/dev/null; done; echo done".into(),
    )
    .await;
    let seen = String::from_utf8_lossy(&output(&events, "stdout")).to_string();
    assert!(seen.ends_with("done\n"));
    assert!(!seen.contains(SECRET), "secret visible to an exec");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(environ) = std::fs::read(entry.path().join("environ")) {
            assert!(
                !String::from_utf8_lossy(&environ).contains(SECRET),
                "secret in {:?}",
                entry.path()
            );
        }
    }

    // Revoke: the very next operation fails.
    let (status, reply) = daemon
        .client
        .json(
            Method::DELETE,
            &format!("/credentials/git/{}", server.host()),
            None,
        )
        .await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"ok": true, "existed": true}))
    );
    let events = run("fetch", "cd repo && git fetch -q origin".into()).await;
    assert_ne!(
        terminal(&events)["exitCode"],
        0,
        "fetch must fail after revocation"
    );

    // Expired grants are not served either.
    daemon
        .client
        .json(Method::PUT, "/credentials/git", Some(json!({"host": server.host(), "username": "alice", "password": SECRET, "expiresAtMs": 1})))
        .await;
    let events = run("fetch2", "cd repo && git fetch -q origin".into()).await;
    assert_ne!(
        terminal(&events)["exitCode"],
        0,
        "fetch must fail with an expired grant"
    );

    assert!(!daemon.log().contains(SECRET), "secret in runnerd's log");
}

/// Grants that could inject helper-protocol lines are refused with 400.
#[tokio::test(flavor = "multi_thread")]
async fn bad_grants_are_refused() {
    let daemon = Runnerd::start(Options::default()).await;
    for body in [
        json!({"host": "h", "username": "u", "password": "p\nhost=evil"}),
        json!({"host": "a b", "username": "u", "password": "p"}),
        json!({"host": "h", "username": "u"}),
    ] {
        let (status, reply) = daemon
            .client
            .json(Method::PUT, "/credentials/git", Some(body.clone()))
            .await;
        assert_eq!(
            (status, &reply["error"]),
            (StatusCode::BAD_REQUEST, &json!("bad_request")),
            "{body}"
        );
    }
}
