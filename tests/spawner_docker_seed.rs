//! A crash during create never yields a ready session without its seed (real Docker engine, real
//! spawner process): the spawner is killed with `kill -9` at each point of a create (container
//! created but not started, started, runnerd ready, env delivered but not recorded), restarted,
//! and the platform's retry of the same create answers 201 with every exec seeing the seed.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use support::docker::{docker, docker_spawner, network_name, Cleanup};
use support::runnerd::poll;

/// The points of a create the test hook can pause at (`TALE_TEST_CREATE_PAUSE_AT`), and whether
/// the session's container is running once the spawner is killed there.
const POINTS: [(&str, bool); 4] = [
    ("before_start", false),
    ("after_start", true),
    ("after_ready", true),
    ("during_seeding", true),
];

/// What an exec prints: the seed env it sees.
const SHOW_SEED: &str = "printf %s \"$SEED\"";

/// After a crash before start: the kept workspace gets a marker, a retry is 503
/// `create_in_progress` with a `retry-after` within the create budget plus the grace, and
/// `tale session create` waits it out and answers the created session (201), whose exec sees the
/// marker (the same workspace).
async fn retry_after_a_crash_before_start(
    spawner: &support::spawner::SpawnerProcess,
    id: &str,
    seed: &str,
) -> serde_json::Value {
    let volume = format!("tale-sbx-ses-{id}-ws");
    let planted = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        "-v",
        &format!("{volume}:/w"),
        support::docker::test_image(),
        "-c",
        "echo kept > /w/marker && chmod 644 /w/marker",
    ]);
    assert!(planted.0, "marker planted in {volume}");
    let body = json!({"sessionId": id, "organizationId": "sorg", "env": {"SEED": seed}});
    let request =
        spawner
            .client
            .request(Method::POST, "/v1/sessions", body.to_string().into(), true);
    let response = spawner.client.send(request).await;
    let status = response.status();
    let retry_after: Option<u64> = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let reply = tale::shared::spawner_client::read_reply(response)
        .await
        .unwrap()
        .json();
    assert_eq!(
        (status, &reply["error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("create_in_progress")
        ),
        "{reply}\n{}",
        spawner.log()
    );
    // Budget 15 s + grace 10 s, rounded up: the container was made moments ago.
    let secs = retry_after.unwrap_or_else(|| panic!("retry-after on {reply}"));
    assert!((1..=26).contains(&secs), "retry-after {secs}");

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tale"));
    command
        .args(["session", "--json", "create", id, "--org", "sorg"])
        .args(["--env", &format!("SEED={seed}")])
        .env(
            "TALE_SPAWNER_URL",
            format!("http://127.0.0.1:{}", spawner.port),
        )
        .env("SANDBOX_TOKEN", support::spawner::SANDBOX_TOKEN)
        .stdin(std::process::Stdio::null());
    // The CLI bounds its own wait (300 s); this bounds the test.
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("tale session create finished")
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", spawner.log());
    assert!(stderr.contains("retrying in"), "the wait is said: {stderr}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        spawner.client.exec_stdout(id, "marker", "cat marker").await,
        "kept\n",
        "the retry created on the kept workspace"
    );
    created
}

/// kill -9 at every point of a create, restart, retry: degraded (never ready) before the retry,
/// 201 and the seed in every exec after it (after a crash before start, once the 503
/// `create_in_progress` wait is over).
#[tokio::test(flavor = "multi_thread")]
async fn crash_during_create_never_leaves_a_ready_session_without_its_seed() {
    let network = network_name();
    let _cleanup = Cleanup {
        names: (0..POINTS.len())
            .map(|index| format!("tale-sbx-ses-seedcrash{}x{index}", std::process::id()))
            .collect(),
        network: network.clone(),
    };
    // A short create budget: a container a crashed create made but never started counts as dead
    // (replaceable by a retry) only once it is older than the budget plus the reclaim grace —
    // before that it could be another replica's create in flight (README, "same-id races").
    let mut spawner =
        docker_spawner(&network, &[("SANDBOX_SESSION_CREATE_TIMEOUT_MS", "15000")]).await;
    for (index, (point, running)) in POINTS.into_iter().enumerate() {
        let id = format!("seedcrash{}x{index}", std::process::id());
        let seed = format!("planted-{point}");
        let body = json!({"sessionId": id, "organizationId": "sorg", "env": {"SEED": seed}});
        // A spawner that pauses every create at `point`.
        spawner
            .env
            .retain(|(k, _)| !k.starts_with("TALE_TEST_CREATE_PAUSE"));
        spawner
            .env
            .push(("TALE_TEST_CREATE_PAUSE_AT".into(), point.into()));
        spawner
            .env
            .push(("TALE_TEST_CREATE_PAUSE_MS".into(), "60000".into()));
        spawner.restart().await;
        let client = spawner.client.clone();
        let first = tokio::spawn({
            let body = body.clone();
            async move {
                client
                    .raw(
                        Method::POST,
                        "/v1/sessions",
                        Some(body.to_string().into()),
                        true,
                    )
                    .await
            }
        });
        let paused = spawner.paused_at(point, Duration::from_secs(60)).await;
        assert!(paused, "create paused at {point}:\n{}", spawner.log());
        spawner.kill9();
        let _ = first.await;

        let container = format!("tale-sbx-ses-{id}");
        let (_, state) = docker(&["inspect", "-f", "{{.State.Running}}", &container]);
        assert_eq!(state, running.to_string(), "container state at {point}");

        spawner
            .env
            .retain(|(k, _)| !k.starts_with("TALE_TEST_CREATE_PAUSE"));
        spawner.restart().await;
        let c = &spawner.client;
        let (status, got) = c
            .json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await;
        if running {
            assert_eq!(status, StatusCode::OK, "{point}: {got}\n{}", spawner.log());
            assert_eq!(
                got["session"]["state"], "degraded",
                "{point}: an unseeded session is never ready: {got}"
            );
        } else {
            assert_eq!(status, StatusCode::NOT_FOUND, "{point}: {got}");
        }

        // The retry succeeds (after the settle wait, `UNSEEDED_SETTLE_WAIT`: the session is young
        // enough that its first create could still be seeding it from another replica), except
        // after a crash before start: then the never-started
        // container may be another replica's create about to start it, so the retry is told to
        // come back (503 `create_in_progress`, `retry-after`: seconds until it counts as dead) —
        // never the 409 `duplicate` a platform takes as "use it". `tale session create` waits
        // that out and creates on the kept workspace.
        let created = if running {
            let (status, created) = c
                .json(Method::POST, "/v1/sessions", Some(body.clone()))
                .await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{point}: the retry is a successful create: {created}\n{}",
                spawner.log()
            );
            created
        } else {
            retry_after_a_crash_before_start(&spawner, &id, &seed).await
        };
        assert_eq!(created["session"]["state"], "ready", "{point}: {created}");
        for exec_id in ["first", "second"] {
            assert_eq!(
                spawner.client.exec_stdout(&id, exec_id, SHOW_SEED).await,
                seed,
                "{point}: {exec_id}"
            );
        }
        let (_, got) = c
            .json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await;
        assert_eq!(got["session"]["state"], "ready", "{point}: {got}");
        // A further retry of a complete create is the duplicate it always was.
        let (status, again) = c
            .json(Method::POST, "/v1/sessions", Some(body.clone()))
            .await;
        assert_eq!(
            (status, &again["error"]),
            (StatusCode::CONFLICT, &json!("duplicate")),
            "{point}"
        );
        if index == POINTS.len() - 1 {
            // runnerd started again (what a re-created Pod is): its seed is gone, and so is
            // `ready`, until the platform's create seeds it again.
            assert!(docker(&["restart", "-t", "1", &container]).0);
            let degraded = poll(Duration::from_secs(30), async || {
                let (_, got) = c
                    .json(Method::GET, &format!("/v1/sessions/{id}"), None)
                    .await;
                (got["session"]["state"] == "degraded").then_some(())
            })
            .await;
            assert!(
                degraded.is_some(),
                "degraded after a restart:\n{}",
                spawner.log()
            );
            assert_eq!(
                c.exec_stdout(&id, "bare", SHOW_SEED).await,
                "",
                "the seed went with runnerd"
            );
            let (status, created) = c.json(Method::POST, "/v1/sessions", Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{created}\n{}", spawner.log());
            assert_eq!(created["session"]["state"], "ready");
            assert_eq!(c.exec_stdout(&id, "reseeded", SHOW_SEED).await, seed);
        }
        assert_eq!(
            c.json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
                .await
                .0,
            StatusCode::OK
        );
    }
}
