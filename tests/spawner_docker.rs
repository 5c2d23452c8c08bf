//! End-to-end against a real Docker engine: the spawner's docker backend creates hardened session
//! containers from a locally built image (`scripts/build-test-image.sh`), and the whole session life
//! works — exec, attach replay, env, files, idle stop with the workspace volume kept, resume,
//! destroy, kill -9 and re-adopt, and failed creates that leave nothing behind.
//! These tests FAIL (never skip) when Docker is not available.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use support::docker::{docker, network_name, test_image};
use support::runnerd::poll;
use support::spawner::{result, stdout_text, SpawnerProcess};

fn unique(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// A spawner on the docker backend with its own fresh network.
async fn docker_spawner(extra: &[(&str, &str)]) -> SpawnerProcess {
    support::docker::docker_spawner(&network_name(), extra).await
}

/// Removes whatever a test left behind for a session id.
fn cleanup(id: &str) {
    docker(&["rm", "-f", &format!("tale-sbx-ses-{id}")]);
    support::docker::remove_volumes(&[format!("tale-sbx-ses-{id}-ws")]);
}

/// Removes the test spawner's network.
fn remove_network(spawner: &SpawnerProcess) {
    if let Some((_, network)) = spawner
        .env
        .iter()
        .find(|(k, _)| k == "SANDBOX_EGRESS_NETWORK")
    {
        support::docker::remove_network(network);
    }
}

/// The whole life of a Docker session, including hardening checks from inside it.
#[tokio::test(flavor = "multi_thread")]
async fn docker_session_lifecycle() {
    let id = unique("dlife");
    cleanup(&id);
    let spawner = docker_spawner(&[("SANDBOX_SWEEP_INTERVAL_MS", "300")]).await;
    let c = &spawner.client;
    let (status, created) = c
        .json(Method::POST, "/v1/sessions", Some(json!({"sessionId": id, "organizationId": "dorg", "idleTimeoutMs": 4000, "env": {"SEED": "planted"}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}\n{}", spawner.log());
    assert_eq!(created["session"]["backend"], "docker");
    let container = format!("tale-sbx-ses-{id}");
    let (_, labels) = docker(&["inspect", "-f", "{{index .Config.Labels \"tale.session\"}} {{index .Config.Labels \"tale.org\"}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}}", &container]);
    assert_eq!(labels, format!("{id} dorg true [ALL]"));
    let (_, env) = docker(&["inspect", "-f", "{{json .Config.Env}}", &container]);
    let token =
        tale::shared::hmac::derive_runnerd_token(support::spawner::SANDBOX_TOKEN.as_bytes(), &id);
    assert!(
        !env.contains("planted") && !env.contains(&token),
        "seed env and the token stay out of the container: {env}"
    );

    let exec = |exec_id: &str, shell: &str| {
        let body = json!({"execId": exec_id, "shell": shell});
        let c = c.clone();
        let path = format!("/v1/sessions/{id}/exec");
        async move {
            c.sse(Method::POST, &path, Some(body), &[])
                .await
                .1
                .collect_all()
                .await
        }
    };
    let events = exec("who", "echo $SEED; id -u; grep CapEff /proc/self/status; touch /rootfs-write 2>/dev/null || echo read-only; cat /workspace/.tale/token 2>/dev/null || echo token-hidden; ls -d /run/tale/runnerd-* >/dev/null && echo state-on-disk; ls -d /tmp/runnerd-* 2>/dev/null || echo tmp-clean; echo data > kept.txt").await;
    assert_eq!(
        stdout_text(&events),
        "planted\n65534\nCapEff:\t0000000000000000\nread-only\ntoken-hidden\nstate-on-disk\ntmp-clean\n",
        "{events:?}"
    );
    assert_eq!(result(&events)["exitCode"], 0);
    let (_, replay) = c
        .sse(
            Method::GET,
            &format!("/v1/sessions/{id}/exec/who/attach?sinceSeq=0"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        stdout_text(&replay.collect_all().await),
        stdout_text(&events)
    );
    let (status, listing) = c
        .json(Method::GET, &format!("/v1/sessions/{id}/files"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "kept.txt"));

    // runnerd's state (journal spool, credential socket) sits on an anonymous volume.
    let state_volume = || {
        docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Destination \"/run/tale\"}}{{.Name}}{{end}}{{end}}",
            &container,
        ])
        .1
    };
    let first_state = state_volume();
    assert!(!first_state.is_empty(), "a volume at /run/tale");

    // Idle: the sweep stops the container and keeps the workspace volume.
    let stopped = poll(Duration::from_secs(30), async || {
        (!docker(&["inspect", &container]).0).then_some(())
    })
    .await;
    assert!(
        stopped.is_some(),
        "sweep stopped the container:\n{}",
        spawner.log()
    );
    assert!(
        docker(&["volume", "inspect", &format!("{container}-ws")]).0,
        "workspace volume kept"
    );
    assert!(
        !docker(&["volume", "inspect", &first_state]).0,
        "the state volume went with the container"
    );
    assert_eq!(
        c.json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Resume on the kept workspace.
    let (status, _) = c
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": "dorg"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(stdout_text(&exec("again", "cat kept.txt").await), "data\n");
    let second_state = state_volume();
    assert!(!second_state.is_empty() && second_state != first_state);

    assert_eq!(
        c.json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await,
        (StatusCode::OK, json!({"destroyed": true, "busy": false}))
    );
    assert!(!docker(&["inspect", &container]).0, "container gone");
    assert!(
        !docker(&["volume", "inspect", &format!("{container}-ws")]).0,
        "workspace volume gone"
    );
    assert!(
        !docker(&["volume", "inspect", &second_state]).0,
        "state volume gone"
    );
    remove_network(&spawner);
}

/// kill -9 of the spawner mid-exec, restart: the session is re-adopted from its labels and the exec
/// that kept running replays fully.
#[tokio::test(flavor = "multi_thread")]
async fn docker_kill9_readopt() {
    let id = unique("dsurv");
    cleanup(&id);
    let mut spawner = docker_spawner(&[]).await;
    spawner.client.create(&id, "dorg").await;
    let (_, mut stream) = spawner
        .client
        .sse(Method::POST, &format!("/v1/sessions/{id}/exec"), Some(json!({"execId": "count", "shell": "i=1; while [ $i -le 30 ]; do echo n$i; i=$((i+1)); sleep 0.05; done", "collectOutput": false})), &[])
        .await;
    assert_eq!(stream.next().await.unwrap().event, "phase");
    spawner.kill9();
    drop(stream);
    spawner.restart().await;
    let c = &spawner.client;
    let (_, listed) = c.json(Method::GET, "/v1/sessions", None).await;
    assert!(
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["sessionId"] == id.as_str()),
        "{listed}"
    );
    let (_, stream) = c
        .sse(
            Method::GET,
            &format!("/v1/sessions/{id}/exec/count/attach?sinceSeq=0"),
            None,
            &[],
        )
        .await;
    let events = stream.collect_all().await;
    assert_eq!(
        stdout_text(&events),
        (1..=30).map(|i| format!("n{i}\n")).collect::<String>()
    );
    assert_eq!(result(&events)["exitCode"], 0);
    c.json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    cleanup(&id);
    remove_network(&spawner);
}

/// A create that fails (missing image; runnerd dying at start) leaves no container or volume.
#[tokio::test(flavor = "multi_thread")]
async fn failed_create_leaves_nothing() {
    let image = test_image();
    let dying = "tale-test-dying:latest";
    let dir = std::env::temp_dir().join(format!("tale-dying-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), format!("FROM {image}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"echo runnerd cannot start >&2; exit 3\"]\n")).unwrap();
    assert!(docker(&["build", "-q", "-t", dying, dir.to_str().unwrap()]).0);
    std::fs::remove_dir_all(&dir).unwrap();

    for (image, tag) in [("tale-test-missing:none", "dmiss"), (dying, "ddie")] {
        let id = unique(tag);
        cleanup(&id);
        let spawner = docker_spawner(&[("SANDBOX_RUNTIME_IMAGE", image)]).await;
        let (status, body) = spawner
            .client
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": id, "organizationId": "dorg"})),
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_GATEWAY, &json!("create_failed")),
            "{body}"
        );
        if tag == "ddie" {
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("runnerd cannot start"),
                "the reason is in the error: {body}"
            );
        }
        let (_, containers) = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=tale.session={id}"),
        ]);
        assert_eq!(containers, "", "no container left");
        let (_, volumes) = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=tale-sbx-ses-{id}"),
        ]);
        assert_eq!(volumes, "", "no volume left");
        assert_eq!(
            spawner
                .client
                .json(Method::GET, "/v1/sessions", None)
                .await
                .1,
            json!({"sessions": []})
        );
        remove_network(&spawner);
    }
}

/// `SANDBOX_STACK_LABEL` marks every object a spawner creates (session container, workspace and
/// cache volumes, its network) with `tale.stack`; a spawner lists and adopts only its own stack's
/// sessions, and never uses a volume another stack on the same engine made.
#[tokio::test(flavor = "multi_thread")]
async fn stack_label_marks_and_scopes_sessions() {
    let (stack_a, stack_b) = (unique("fh-stack-a-"), unique("fh-stack-b-"));
    let (ours, theirs) = (unique("dstack-a"), unique("dstack-b"));
    let org = unique("dstackorg");
    let caches = [unique("fh-pip-"), unique("fh-npm-"), unique("fh-bun-")];
    cleanup(&ours);
    cleanup(&theirs);
    let with_stack = |stack: &str| {
        vec![
            ("SANDBOX_STACK_LABEL".to_string(), stack.to_string()),
            ("SANDBOX_CACHE_VOLUMES".to_string(), "1".to_string()),
            (
                "SANDBOX_PIP_CACHE_VOLUME_PREFIX".to_string(),
                caches[0].clone(),
            ),
            (
                "SANDBOX_NPM_CACHE_VOLUME_PREFIX".to_string(),
                caches[1].clone(),
            ),
            (
                "SANDBOX_BUN_CACHE_VOLUME_PREFIX".to_string(),
                caches[2].clone(),
            ),
        ]
    };
    let env_a = with_stack(&stack_a);
    let env_a: Vec<(&str, &str)> = env_a
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = docker_spawner(&env_a).await;
    a.client.create(&ours, &org).await;
    let label = |kind: &str, name: &str| {
        docker(&[
            kind,
            "inspect",
            "-f",
            "{{index .Labels \"tale.stack\"}}",
            name,
        ])
        .1
    };
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"tale.stack\"}}",
            &format!("tale-sbx-ses-{ours}")
        ])
        .1,
        stack_a
    );
    assert_eq!(label("volume", &format!("tale-sbx-ses-{ours}-ws")), stack_a);
    // Caches are per stack and org: another stack's session of the same org gets its own.
    for prefix in &caches {
        let cache = format!("{prefix}-{stack_a}-{org}");
        assert_eq!(label("volume", &cache), stack_a, "{cache}");
    }
    let network = a
        .env
        .iter()
        .find(|(k, _)| k == "SANDBOX_EGRESS_NETWORK")
        .unwrap()
        .1
        .clone();
    assert_eq!(label("network", &network), stack_a);

    // Another stack on the same engine: it sees only its own sessions, and is refused our volume.
    let env_b = with_stack(&stack_b);
    let env_b: Vec<(&str, &str)> = env_b
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let b = docker_spawner(&env_b).await;
    b.client.create(&theirs, &org).await;
    for prefix in &caches {
        let cache = format!("{prefix}-{stack_b}-{org}");
        assert_eq!(label("volume", &cache), stack_b, "{cache}");
    }
    let listed = |spawner: &SpawnerProcess| {
        let client = spawner.client.clone();
        async move {
            let (_, body) = client.json(Method::GET, "/v1/sessions", None).await;
            body["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sessionId"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&a).await, std::slice::from_ref(&ours));
    assert_eq!(listed(&b).await, std::slice::from_ref(&theirs));
    let (status, body) = b
        .client
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": ours, "organizationId": org})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        label("volume", &format!("tale-sbx-ses-{ours}-ws")),
        stack_a,
        "our volume untouched"
    );
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.State.Running}}",
            &format!("tale-sbx-ses-{ours}")
        ])
        .1,
        "true",
        "our session untouched"
    );

    for (spawner, id) in [(&a, &ours), (&b, &theirs)] {
        spawner
            .client
            .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await;
        cleanup(id);
        remove_network(spawner);
    }
    for prefix in &caches {
        for stack in [&stack_a, &stack_b] {
            support::docker::remove_volumes(&[format!("{prefix}-{stack}-{org}")]);
        }
    }
}
