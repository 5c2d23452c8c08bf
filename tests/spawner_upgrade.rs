//! Upgrades on Docker with the previous release's real spawner (the commit in
//! `scripts/previous-release`, built by `scripts/build-previous.sh` into
//! `target/previous/tale-<commit>`): its sessions are adopted by this release, and replicas of both
//! releases serve one deployment side by side. The session image is this release's test image
//! (runnerd of this release) for both spawners.
//! These tests FAIL (never skip) when Docker or the previous binary is not available.
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::docker::{docker, remove_network, test_image};
use support::spawner::{SpawnerClient, SpawnerProcess};

/// The previous release's `tale`, built by `scripts/build-previous.sh`.
fn previous_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let pinned = std::fs::read_to_string(root.join("scripts/previous-release")).unwrap();
    let commit = pinned
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("scripts/previous-release names a commit")
        .trim();
    let binary = root.join(format!("target/previous/tale-{commit}"));
    assert!(
        binary.is_file(),
        "{} is missing: run scripts/build-previous.sh first (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// Which release a replica runs.
#[derive(Clone, Copy, Debug)]
enum Release {
    Previous,
    Current,
}

/// One deployment (one network name, one token, one set of caps) whose replicas may run either
/// release; removes every Docker object of its sessions, claims, pins and network when dropped.
struct Deployment {
    tag: String,
    network: String,
    env: Vec<(String, String)>,
    orgs: Vec<String>,
    replicas: Vec<(Release, SpawnerProcess)>,
    /// Sessions created (201), for [`Deployment::destroy_all`].
    created: std::sync::Mutex<Vec<String>>,
}

impl Deployment {
    fn new(tag: &str, extra: &[(&str, &str)]) -> Deployment {
        let network = format!("tale-test-upgrade-{tag}-{}", std::process::id());
        let mut env: Vec<(String, String)> = vec![
            ("SANDBOX_BACKEND".into(), "docker".into()),
            ("SANDBOX_RUNTIME_IMAGE".into(), test_image().into()),
            ("SANDBOX_EGRESS_NETWORK".into(), network.clone()),
            ("SANDBOX_EGRESS_PROXY".into(), "none".into()),
            ("SANDBOX_CACHE_VOLUMES".into(), "0".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Deployment {
            tag: tag.to_owned(),
            network,
            env,
            orgs: Vec::new(),
            replicas: Vec::new(),
            created: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Starts a replica of `release`; its index.
    async fn start(&mut self, release: Release) -> usize {
        let root = std::env::temp_dir().join(format!(
            "tale-upgrade-{}-{}-{}-{}",
            self.tag,
            std::process::id(),
            self.replicas.len(),
            support::runnerd::free_port()
        ));
        let process = match release {
            Release::Previous => {
                SpawnerProcess::start_program(previous_binary(), root, self.env.clone()).await
            }
            Release::Current => SpawnerProcess::start(root, self.env.clone()).await,
        };
        self.replicas.push((release, process));
        self.replicas.len() - 1
    }

    fn client(&self, i: usize) -> SpawnerClient {
        self.replicas[i].1.client.clone()
    }

    fn org(&mut self, name: &str) -> String {
        let org = format!("{name}-{}", std::process::id());
        self.orgs.push(org.clone());
        org
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|(release, p)| format!("== {release:?} replica ==\n{}", p.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `POST /v1/sessions` on replica `i`: status and body.
    async fn create(&self, i: usize, body: Value) -> (StatusCode, Value) {
        let (status, reply) = self
            .client(i)
            .json(Method::POST, "/v1/sessions", Some(body.clone()))
            .await;
        if status == StatusCode::CREATED {
            let id = body["sessionId"].as_str().unwrap().to_owned();
            self.created.lock().unwrap().push(id);
        }
        (status, reply)
    }

    /// Destroys every session the test created through a replica of this release, which removes
    /// all of a session's objects (quota images included; `Drop` only removes what the engine
    /// lists).
    async fn destroy_all(&self) {
        let current = self
            .replicas
            .iter()
            .position(|(release, _)| matches!(release, Release::Current))
            .expect("a replica of this release");
        let ids = self.created.lock().unwrap().clone();
        for id in ids {
            let (status, _) = self.client(current).destroy(&id).await;
            assert_eq!(status, StatusCode::OK, "destroy {id}\n{}", self.logs());
        }
    }

    /// Creates `id` on replica `i`, asserting 201.
    async fn create_ok(&self, i: usize, body: Value) {
        let (status, reply) = self.create(i, body.clone()).await;
        if status != StatusCode::CREATED {
            let prefix = tale::modes::spawner::backend::docker_shared::claim_prefix(&self.network);
            let label = format!("label=tale.claim={prefix}");
            let format = "{{.Names}} {{.Labels}}";
            let claims = docker(&["ps", "-a", "--filter", &label, "--format", format]).1;
            panic!(
                "{body}: {status} {reply}\nclaims:\n{claims}\n{}",
                self.logs()
            );
        }
    }

    /// `GET /v1/sessions/:id` on replica `i`: status and the session object.
    async fn get(&self, i: usize, id: &str) -> (StatusCode, Value) {
        let (status, reply) = self
            .client(i)
            .json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await;
        (status, reply["session"].clone())
    }

    /// Session ids replica `i` lists for `org`, sorted.
    async fn listed(&self, i: usize, org: &str) -> Vec<String> {
        let (status, list) = self
            .client(i)
            .json(
                Method::GET,
                &format!("/v1/sessions?organizationId={org}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let mut ids: Vec<String> = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Runs `shell` in session `id` through replica `i`; its stdout (a refusal fails with its body
    /// and the logs).
    async fn exec(&self, i: usize, id: &str, exec_id: &str, shell: &str) -> String {
        use http_body_util::BodyExt;
        let client = self.client(i);
        let body = json!({"execId": exec_id, "shell": shell}).to_string();
        let request = client.request(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            body.into(),
            true,
        );
        let response = client.send(request).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(
            status,
            StatusCode::OK,
            "exec in {id} through replica {i}: {text}\n{}\n== runnerd of {id} ==\n{}",
            self.logs(),
            session_log(id)
        );
        let events = tale::shared::sse::SseParser::default().feed(&bytes);
        support::spawner::stdout_text(&events)
    }

    async fn pin(&self, i: usize, id: &str, pinned: bool) {
        let (status, reply) = self
            .client(i)
            .json(
                Method::PATCH,
                &format!("/v1/sessions/{id}/pin"),
                Some(json!({ "pinned": pinned })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}\n{}", self.logs());
    }

    /// The org and global claim containers held by `id`.
    fn claims_of(&self, id: &str) -> usize {
        let prefix = tale::modes::spawner::backend::docker_shared::claim_prefix(&self.network);
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=tale.claim={prefix}"),
            "--filter",
            &format!("label=tale.claim-session={id}"),
        ])
        .1
        .lines()
        .count()
    }
}

/// The last lines of session `id`'s runnerd log (for failure messages).
fn session_log(id: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["logs", "--tail", "40", &format!("tale-sbx-ses-{id}")])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether session `id`'s container exists.
fn container_exists(id: &str) -> bool {
    docker(&["inspect", &format!("tale-sbx-ses-{id}")]).0
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.replicas.clear();
        for org in &self.orgs {
            let (_, ids) = docker(&["ps", "-aq", "--filter", &format!("label=tale.org={org}")]);
            for id in ids.lines() {
                docker(&["rm", "-f", "-v", id]);
            }
            let (_, volumes) = docker(&[
                "volume",
                "ls",
                "-q",
                "--filter",
                "label=tale.sandbox-workspace=1",
            ]);
            let suffix = format!("-{}-ws", std::process::id());
            for name in volumes.lines().filter(|n| n.ends_with(&suffix)) {
                docker(&["volume", "rm", "-f", name]);
            }
        }
        remove_network(&self.network);
    }
}

/// The previous release creates sessions (env and files in some, pins on some, one org at its
/// cap) and is stopped; this release boots on the same engine and network and adopts them: listed,
/// exec'd with env and files kept, counted against both caps (an org at its cap and a full
/// spawner answer 429), destroyed, the freed slot usable again. Pins: the previous release held
/// them in its memory only (lost at any restart of that release); re-pinned through this release
/// they persist across its restarts.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_of_the_previous_binary_are_adopted() {
    let mut deployment = Deployment::new(
        "adopt",
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "2"),
            ("SANDBOX_MAX_SESSIONS", "4"),
        ],
    );
    let (org_a, org_b, org_c, org_d) = (
        deployment.org("ua"),
        deployment.org("ub"),
        deployment.org("uc"),
        deployment.org("ud"),
    );
    let pid = std::process::id();
    let (env_id, pin_id, file_id) = (
        format!("uenv-{pid}"),
        format!("upin-{pid}"),
        format!("ufile-{pid}"),
    );
    let old = deployment.start(Release::Previous).await;
    deployment
        .create_ok(
            old,
            json!({"sessionId": env_id, "organizationId": org_a,
                   "env": {"GREETING": "from-the-previous-release"}}),
        )
        .await;
    deployment
        .create_ok(old, json!({"sessionId": pin_id, "organizationId": org_a}))
        .await;
    deployment
        .create_ok(old, json!({"sessionId": file_id, "organizationId": org_b}))
        .await;
    let client = deployment.client(old);
    for id in [&env_id, &file_id] {
        let written = client
            .exec_stdout(
                id,
                "write",
                "echo kept > /workspace/notes.txt && echo written",
            )
            .await;
        assert_eq!(written, "written\n");
    }
    deployment.pin(old, &pin_id, true).await;
    deployment.pin(old, &file_id, true).await;
    assert_eq!(deployment.get(old, &pin_id).await.1["pinned"], true);
    // The previous release is at its org cap for org A (its own count).
    let (status, _) = deployment
        .create(
            old,
            json!({"sessionId": format!("uover-{pid}"), "organizationId": org_a}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    let stopped = deployment.replicas[old]
        .1
        .terminate(Duration::from_secs(20))
        .await;
    assert!(stopped.is_some(), "{}", deployment.logs());
    for id in [&env_id, &pin_id, &file_id] {
        assert!(container_exists(id), "{id} outlives its spawner");
    }

    let new = deployment.start(Release::Current).await;
    assert_eq!(
        deployment.listed(new, &org_a).await,
        {
            let mut ids = vec![env_id.clone(), pin_id.clone()];
            ids.sort();
            ids
        },
        "{}",
        deployment.logs()
    );
    assert_eq!(deployment.listed(new, &org_b).await, vec![file_id.clone()]);
    for id in [&env_id, &pin_id, &file_id] {
        let (status, session) = deployment.get(new, id).await;
        assert_eq!(status, StatusCode::OK, "{session}");
        assert_eq!(
            session["state"],
            "ready",
            "{id}: {session}\n{}",
            deployment.logs()
        );
        assert_eq!(
            deployment.claims_of(id),
            2,
            "{id}: one org and one global claim"
        );
    }
    let new_client = deployment.client(new);
    assert_eq!(
        new_client
            .exec_stdout(&env_id, "read", "echo $GREETING; cat /workspace/notes.txt")
            .await,
        "from-the-previous-release\nkept\n"
    );
    assert_eq!(
        new_client
            .exec_stdout(&file_id, "read", "cat /workspace/notes.txt")
            .await,
        "kept\n"
    );
    // The previous release's pins lived in its memory: gone with it, as at any of its restarts.
    assert_eq!(deployment.get(new, &pin_id).await.1["pinned"], false);
    // Re-pinned through this release, a pin is a marker in the engine: it outlives the process.
    deployment.pin(new, &pin_id, true).await;
    deployment.replicas[new].1.restart().await;
    assert_eq!(deployment.get(new, &pin_id).await.1["pinned"], true);

    // Caps count the adopted sessions: org A is full (2 of 2), the spawner has 3 of 4.
    let (status, reply) = deployment
        .create(
            new,
            json!({"sessionId": format!("uover-{pid}"), "organizationId": org_a}),
        )
        .await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("session_quota")),
        "{reply}"
    );
    deployment
        .create_ok(
            new,
            json!({"sessionId": format!("uc-{pid}"), "organizationId": org_c}),
        )
        .await;
    let (status, reply) = deployment
        .create(
            new,
            json!({"sessionId": format!("ud-{pid}"), "organizationId": org_d}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reply}");

    // Destroy through this release: container, workspace and claims go; the slot is free again.
    let (status, destroyed) = new_client.destroy(&env_id).await;
    assert_eq!((status, destroyed), (StatusCode::OK, true));
    assert!(!container_exists(&env_id));
    assert!(!docker(&["volume", "inspect", &format!("tale-sbx-ses-{env_id}-ws")]).0);
    assert_eq!(deployment.claims_of(&env_id), 0);
    deployment
        .create_ok(
            new,
            json!({"sessionId": format!("uagain-{pid}"), "organizationId": org_a}),
        )
        .await;
    deployment.destroy_all().await;
}

/// A rolling update: a replica of the previous release and two of this one serve one deployment
/// side by side. Sessions created on either are got and exec'd on both and listed by this
/// release; this release's caps count the old replica's sessions at once — a create right after
/// the old replica's, with no sweep or listing in between, is refused when that session filled the
/// org. A deployment booting on the same engine meanwhile cuts none of them off.
#[tokio::test(flavor = "multi_thread")]
async fn previous_and_current_replicas_serve_one_deployment() {
    let mut deployment = Deployment::new(
        "roll",
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "2"),
            ("SANDBOX_MAX_SESSIONS", "100"),
            // No sweep during the test: only the create itself may count the old replica's session.
            ("SANDBOX_SWEEP_INTERVAL_MS", "3600000"),
        ],
    );
    let (org_a, org_b) = (deployment.org("ra"), deployment.org("rb"));
    let pid = std::process::id();
    let old = deployment.start(Release::Previous).await;
    let first = format!("rfirst-{pid}");
    deployment
        .create_ok(old, json!({"sessionId": first, "organizationId": org_a}))
        .await;
    // The new replicas come up while the old one serves.
    let new1 = deployment.start(Release::Current).await;
    let new2 = deployment.start(Release::Current).await;

    let from_new = format!("rnew-{pid}");
    deployment
        .create_ok(
            new1,
            json!({"sessionId": from_new, "organizationId": org_a}),
        )
        .await;
    let from_old = format!("rold-{pid}");
    deployment
        .create_ok(old, json!({"sessionId": from_old, "organizationId": org_b}))
        .await;
    // Org B holds the old replica's fresh session: one more fits, then it is full.
    let (status, reply) = deployment
        .create(
            new2,
            json!({"sessionId": format!("rb1-{pid}"), "organizationId": org_b}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{reply}\n{}",
        deployment.logs()
    );
    let (status, reply) = deployment
        .create(
            new1,
            json!({"sessionId": format!("rb2-{pid}"), "organizationId": org_b}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "{reply}\n{}",
        deployment.logs()
    );
    // Org A: the old replica's session and the new one's fill it.
    let (status, _) = deployment
        .create(
            new2,
            json!({"sessionId": format!("ra3-{pid}"), "organizationId": org_a}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another deployment (its own network) booting on the same engine leaves this one's sessions
    // reachable: it rewrites the runnerd allowlists of its own sessions only.
    let mut other = Deployment::new("other", &[]);
    other.start(Release::Current).await;
    for (replica, id) in [(old, &from_new), (new2, &from_old), (new1, &first)] {
        let (status, session) = deployment.get(replica, id).await;
        assert_eq!(status, StatusCode::OK, "{id} on {replica}: {session}");
        assert_eq!(
            session["state"],
            "ready",
            "{id} on {replica}: {session}\n{}",
            deployment.logs()
        );
        let out = deployment
            .exec(replica, id, &format!("e{replica}"), "echo served")
            .await;
        assert_eq!(out, "served\n", "{id} on replica {replica}");
    }
    assert!(deployment.listed(new2, &org_a).await.contains(&from_new));
    assert_eq!(deployment.listed(new1, &org_b).await.len(), 2);
    // Destroyed through the old replica, a new replica's session is gone for this release too,
    // and a create of its id on a replica that still held it is a new create, not a duplicate.
    let (status, destroyed) = deployment.client(old).destroy(&from_new).await;
    assert_eq!((status, destroyed), (StatusCode::OK, true));
    assert_eq!(
        deployment.get(new1, &from_new).await.0,
        StatusCode::NOT_FOUND
    );
    // (In another org: the old replica's destroy left the org A claim, reclaimed only later.)
    let org_c = deployment.org("rc");
    deployment
        .create_ok(
            new2,
            json!({"sessionId": from_new, "organizationId": org_c}),
        )
        .await;
    deployment.destroy_all().await;
}

/// During a rolling update the sweeps of both releases run (an idle unpinned session is stopped)
/// and neither stops a session whose exec is still running (started through the old replica, its
/// stream dropped), one in use through this release (the old replica goes by runnerd's activity
/// clock), nor one pinned through this release.
#[tokio::test(flavor = "multi_thread")]
async fn sweeps_of_both_releases_spare_busy_and_pinned_sessions() {
    let mut deployment = Deployment::new("sweep", &[("SANDBOX_SWEEP_INTERVAL_MS", "200")]);
    let org = deployment.org("rs");
    let pid = std::process::id();
    let old = deployment.start(Release::Previous).await;
    let new1 = deployment.start(Release::Current).await;
    let new2 = deployment.start(Release::Current).await;
    // Every session has a 4 s idle timeout: `busy` runs an exec the whole time, `pinned` is pinned
    // through a new replica, `active` (a new replica's, known to the old one too) is used every
    // second through a new replica, `idle` is none of these and must be stopped by a sweep.
    let body = |id: &str| json!({"sessionId": id, "organizationId": org, "idleTimeoutMs": 4000});
    let (busy, pinned, active, idle) = (
        format!("rbusy-{pid}"),
        format!("rpinned-{pid}"),
        format!("ractive-{pid}"),
        format!("ridle-{pid}"),
    );
    deployment.create_ok(old, body(&busy)).await;
    deployment.create_ok(new1, body(&pinned)).await;
    deployment.pin(new2, &pinned, true).await;
    deployment.create_ok(new2, body(&active)).await;
    assert_eq!(deployment.get(old, &active).await.0, StatusCode::OK);
    let user = deployment.client(new1);
    let (active_id, stop_using) = (
        active.clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let stopped_using = stop_using.clone();
    let using = tokio::spawn(async move {
        for n in 0.. {
            let exec_id = format!("use{n}");
            tokio::select! {
                _ = user.exec_stdout(&active_id, &exec_id, "true") => {}
                _ = stopped_using.notified() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped_using.notified() => return,
            }
        }
    });
    deployment.create_ok(old, body(&idle)).await;
    let (status, mut stream) = deployment
        .client(old)
        .sse(
            Method::POST,
            &format!("/v1/sessions/{busy}/exec"),
            Some(json!({"execId": "long", "shell": "echo started; sleep 60"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    while let Some(event) = stream.next().await {
        if event.event == "stdout" {
            break;
        }
    }
    drop(stream);
    let idle_stopped = support::runnerd::poll(Duration::from_secs(60), async || {
        (!container_exists(&idle)).then_some(())
    })
    .await;
    assert!(
        idle_stopped.is_some(),
        "a sweep stops the idle session:\n{}",
        deployment.logs()
    );
    // Now past the idle timeout of all three; a few more seconds of sweeps every 200 ms.
    let quiet_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < quiet_until {
        assert!(
            container_exists(&busy),
            "the busy session runs on:\n{}",
            deployment.logs()
        );
        assert!(
            container_exists(&pinned),
            "the pinned session runs on:\n{}",
            deployment.logs()
        );
        assert!(
            container_exists(&active),
            "the session in use runs on:\n{}",
            deployment.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_using.notify_one();
    using.await.unwrap();
    assert_eq!(deployment.get(new1, &pinned).await.1["pinned"], true);
    deployment.destroy_all().await;
}
