//! Several real spawner processes on one Docker engine act as one service: they share one sandbox
//! network, the caps hold across them under concurrent creates (claims the engine arbitrates), and
//! any replica serves a session another one created.
//! These tests FAIL (never skip) when Docker is not available.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use support::docker::{docker, test_image};
use support::spawner::{stdout_text, SpawnerClient, SpawnerProcess};

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// N spawner replicas sharing one network name (one deployment); removes every Docker object the
/// deployment made when dropped.
struct Deployment {
    replicas: Vec<SpawnerProcess>,
    network: String,
    orgs: Vec<String>,
    env: Vec<(String, String)>,
    tag: String,
}

impl Deployment {
    async fn start(tag: &str, n: usize, extra: &[(&str, &str)]) -> Deployment {
        let network = format!("tale-test-replicas-{tag}-{}", std::process::id());
        let mut env: Vec<(String, String)> = vec![
            ("SANDBOX_BACKEND".into(), "docker".into()),
            ("SANDBOX_RUNTIME_IMAGE".into(), test_image().into()),
            ("SANDBOX_EGRESS_NETWORK".into(), network.clone()),
            ("SANDBOX_EGRESS_PROXY".into(), "none".into()),
            ("SANDBOX_CACHE_VOLUMES".into(), "0".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut deployment = Deployment {
            replicas: Vec::new(),
            network,
            orgs: Vec::new(),
            env,
            tag: tag.to_owned(),
        };
        for _ in 0..n {
            deployment.add_replica().await;
        }
        deployment
    }

    async fn add_replica(&mut self) {
        let root = std::env::temp_dir().join(format!(
            "tale-replicas-{}-{}-{}-{}",
            self.tag,
            std::process::id(),
            self.replicas.len(),
            support::runnerd::free_port()
        ));
        self.replicas
            .push(SpawnerProcess::start(root, self.env.clone()).await);
    }

    fn client(&self, i: usize) -> SpawnerClient {
        self.replicas[i % self.replicas.len()].client.clone()
    }

    fn org(&mut self, name: &str) -> String {
        let org = format!("{name}-{}", std::process::id());
        self.orgs.push(org.clone());
        org
    }

    /// Ids of the org's session containers.
    fn containers_of(&self, org: &str) -> Vec<String> {
        lines(
            &docker(&[
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=tale.org={org}"),
            ])
            .1,
        )
    }

    /// Ids of the cap-claim containers held for session `id` on this deployment's network.
    fn claims_of(&self, id: &str) -> Vec<String> {
        let prefix = tale::modes::spawner::backend::docker_shared::claim_prefix(&self.network);
        lines(
            &docker(&[
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=tale.claim={prefix}"),
                "--filter",
                &format!("label=tale.claim-session={id}"),
            ])
            .1,
        )
    }

    fn networks(&self) -> Vec<String> {
        lines(
            &docker(&[
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("name=^{}$", self.network),
            ])
            .1,
        )
    }

    /// `n` concurrent creates for the given orgs, spread round-robin over the replicas; the
    /// statuses.
    async fn create_many(&self, tag: &str, orgs: &[String], n: usize) -> Vec<StatusCode> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let client = self.client(i);
            let body = json!({"sessionId": format!("{tag}{i}-{}", std::process::id()), "organizationId": orgs[i % orgs.len()]});
            tasks.push(tokio::spawn(async move {
                client
                    .json(Method::POST, "/v1/sessions", Some(body))
                    .await
                    .0
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        statuses
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(SpawnerProcess::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.replicas.clear();
        for org in &self.orgs {
            for id in self.containers_of(org) {
                let (_, volume) = docker(&[
                    "inspect",
                    "-f",
                    "{{range .Mounts}}{{if eq .Destination \"/workspace\"}}{{.Name}}{{end}}{{end}}",
                    &id,
                ]);
                docker(&["rm", "-f", "-v", &id]);
                if !volume.is_empty() {
                    support::docker::remove_volumes(&[&volume]);
                }
            }
        }
        let prefix = tale::modes::spawner::backend::docker_shared::claim_prefix(&self.network);
        let claims = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=tale.claim={prefix}"),
        ])
        .1;
        for id in lines(&claims) {
            docker(&["rm", "-f", &id]);
        }
        let markers = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=tale.claim={prefix}"),
        ])
        .1;
        support::docker::remove_volumes(&lines(&markers));
        // Workspaces the sweep kept (stopped sessions): this test binary's ids end in its pid.
        let suffix = format!("-{}-ws", std::process::id());
        let workspaces = docker(&["volume", "ls", "-q", "--filter", "name=tale-sbx-ses-r"]).1;
        let ours: Vec<_> = lines(&workspaces)
            .into_iter()
            .filter(|n| n.ends_with(&suffix))
            .collect();
        support::docker::remove_volumes(&ours);
        for id in self.networks() {
            docker(&["network", "rm", &id]);
        }
    }
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// 24 concurrent creates for one org with a cap of 3, spread over 3 replicas booted together:
/// exactly 3 sessions run, the rest get 429, and the replicas made one network between them.
#[tokio::test(flavor = "multi_thread")]
async fn org_cap_holds_across_replicas() {
    let mut deployment = Deployment::start(
        "org",
        3,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "3"),
            ("SANDBOX_MAX_SESSIONS", "100"),
        ],
    )
    .await;
    let org = deployment.org("capped");
    let statuses = deployment
        .create_many("rorg", std::slice::from_ref(&org), 24)
        .await;
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        3,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 21);
    assert_eq!(deployment.containers_of(&org).len(), 3);
    assert_eq!(deployment.networks().len(), 1, "one shared network");
}

/// The global cap likewise: 16 concurrent creates over 8 orgs with a global cap of 4 → 4 sessions.
#[tokio::test(flavor = "multi_thread")]
async fn global_cap_holds_across_replicas() {
    let mut deployment = Deployment::start(
        "glob",
        3,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "50"),
            ("SANDBOX_MAX_SESSIONS", "4"),
        ],
    )
    .await;
    let orgs: Vec<String> = (0..8).map(|i| deployment.org(&format!("g{i}"))).collect();
    let statuses = deployment.create_many("rglob", &orgs, 16).await;
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        4,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    let running: usize = orgs.iter().map(|o| deployment.containers_of(o).len()).sum();
    assert_eq!(running, 4);
    assert_eq!(deployment.networks().len(), 1, "one shared network");
}

/// A session created on one replica is listed on another, exec'd on a third and destroyed on the
/// second; the first then no longer lists it.
#[tokio::test(flavor = "multi_thread")]
async fn any_replica_serves_any_session() {
    let mut deployment = Deployment::start("any", 3, &[]).await;
    let org = deployment.org("any");
    let id = format!("rany-{}", std::process::id());
    let (status, body) = deployment
        .client(0)
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": org})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    let listed_on = |i: usize| {
        let client = deployment.client(i);
        let org = org.clone();
        async move {
            let (_, list) = client
                .json(
                    Method::GET,
                    &format!("/v1/sessions?organizationId={org}"),
                    None,
                )
                .await;
            list["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sessionId"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed_on(1).await, vec![id.clone()], "listed on replica 1");
    let (_, stream) = deployment
        .client(2)
        .sse(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"execId": "hello", "shell": "echo from-replica-2"})),
            &[],
        )
        .await;
    assert_eq!(stdout_text(&stream.collect_all().await), "from-replica-2\n");
    let (status, destroyed) = deployment
        .client(1)
        .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(
        (status, destroyed),
        (StatusCode::OK, json!({"destroyed": true, "busy": false}))
    );
    assert!(deployment.containers_of(&org).is_empty(), "container gone");
    assert!(
        listed_on(0).await.is_empty(),
        "the creator lists it no more"
    );
}

/// A pin set on one replica survives `kill -9` of that replica: the other replicas, sweeping with
/// a short idle timeout, stop an unpinned control session of the same age but never the pinned one.
#[tokio::test(flavor = "multi_thread")]
async fn pin_survives_its_replica() {
    let mut deployment = Deployment::start("pin", 3, &[("SANDBOX_SWEEP_INTERVAL_MS", "200")]).await;
    let org = deployment.org("pin");
    let pinned = format!("rpin-{}", std::process::id());
    let control = format!("rctl-{}", std::process::id());
    let create = |id: String| {
        let client = deployment.client(0);
        let org = org.clone();
        async move {
            client
                .json(
                    Method::POST,
                    "/v1/sessions",
                    Some(json!({"sessionId": id, "organizationId": org, "idleTimeoutMs": 3000})),
                )
                .await
        }
    };
    let (status, body) = create(pinned.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    let (status, body) = deployment
        .client(0)
        .json(
            Method::PATCH,
            &format!("/v1/sessions/{pinned}/pin"),
            Some(json!({"pinned": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = create(control.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    deployment.replicas[0].kill9();
    let gone = |id: &str| !docker(&["inspect", &format!("tale-sbx-ses-{id}")]).0;
    // Generous: under CI load a sweep round over three replicas and Docker's stop can take a while.
    let control_stopped = support::runnerd::poll(std::time::Duration::from_secs(90), async || {
        gone(&control).then_some(())
    })
    .await;
    assert!(
        control_stopped.is_some(),
        "the other replicas sweep idle sessions:\n{}",
        deployment.logs()
    );
    // A surviving replica has swept past the idle deadline of both (the pinned one is older).
    assert!(
        !gone(&pinned),
        "the pinned session runs on:\n{}",
        deployment.logs()
    );
    let (status, got) = deployment
        .client(1)
        .json(Method::GET, &format!("/v1/sessions/{pinned}"), None)
        .await;
    assert_eq!(
        (status, &got["session"]["pinned"]),
        (StatusCode::OK, &json!(true))
    );
}

/// Six concurrent creates of one id over three replicas: one wins, the others get 409 (or 503
/// `create_in_progress` while the winner's container is not started yet), and
/// nothing of the winner is deleted — its container runs and serves, its workspace is there, and
/// it holds exactly its two cap claims (the losers handed theirs back).
#[tokio::test(flavor = "multi_thread")]
async fn same_id_race_keeps_the_winner() {
    let mut deployment = Deployment::start("same", 3, &[]).await;
    let org = deployment.org("same");
    let id = format!("rsame-{}", std::process::id());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let client = deployment.client(i);
        let body = json!({"sessionId": id, "organizationId": org});
        tasks.push(tokio::spawn(async move {
            client
                .json(Method::POST, "/v1/sessions", Some(body))
                .await
                .0
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        1,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    // A loser that finds the winner's container created but not yet started cannot tell it from
    // a crashed create's: it is told to come back (503 `create_in_progress`); after the start,
    // 409 `duplicate`.
    assert_eq!(
        count(&statuses, StatusCode::CONFLICT) + count(&statuses, StatusCode::SERVICE_UNAVAILABLE),
        5,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    let container = format!("tale-sbx-ses-{id}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &container]).1,
        "true"
    );
    assert!(docker(&["volume", "inspect", &format!("{container}-ws")]).0);
    assert_eq!(
        deployment.claims_of(&id).len(),
        2,
        "one org and one global claim"
    );
    for i in 0..3 {
        let (_, stream) = deployment
            .client(i)
            .sse(
                Method::POST,
                &format!("/v1/sessions/{id}/exec"),
                Some(json!({"execId": format!("e{i}"), "shell": "echo ok"})),
                &[],
            )
            .await;
        assert_eq!(stdout_text(&stream.collect_all().await), "ok\n");
    }
}

/// A same-id create that reaches a second replica while the first replica's create sits between
/// runnerd answering and its seed being recorded (held there 2 s by the test hook) waits for that
/// seed and is a 409 `duplicate`: exactly one caller gets 201, the session holds the winner's seed
/// and two cap claims (before, the second replica delivered its own seed and answered 201 too).
#[tokio::test(flavor = "multi_thread")]
async fn same_id_create_during_the_winners_seeding_is_a_duplicate() {
    let mut deployment = Deployment::start(
        "seeding",
        2,
        &[
            ("TALE_TEST_CREATE_PAUSE_AT", "after_ready"),
            ("TALE_TEST_CREATE_PAUSE_MS", "2000"),
        ],
    )
    .await;
    let org = deployment.org("seeding");
    let id = format!("rseeding-{}", std::process::id());
    let body = |seed: &str| json!({"sessionId": id, "organizationId": org, "env": {"SEED": seed}});
    let first = tokio::spawn({
        let client = deployment.client(0);
        let body = body("winner");
        async move { client.json(Method::POST, "/v1/sessions", Some(body)).await }
    });
    let paused = deployment.replicas[0]
        .paused_at("after_ready", Duration::from_secs(60))
        .await;
    assert!(paused, "paused after ready\n{}", deployment.logs());
    let (second, reply) = deployment
        .client(1)
        .json(Method::POST, "/v1/sessions", Some(body("loser")))
        .await;
    let (first, created) = first.await.unwrap();
    assert_eq!(
        (first, second),
        (StatusCode::CREATED, StatusCode::CONFLICT),
        "{created}\n{reply}\n{}",
        deployment.logs()
    );
    assert_eq!(reply["error"], "duplicate", "{reply}");
    assert_eq!(
        deployment
            .client(1)
            .exec_stdout(&id, "seed", "printf %s \"$SEED\"")
            .await,
        "winner"
    );
    assert_eq!(
        deployment.claims_of(&id).len(),
        2,
        "one org and one global claim"
    );
}

/// Upgrade: a session made by a release without claims or a network lock (simulated: made by this
/// release, then its claims and lock removed) is adopted by three new replicas booting together —
/// listed and exec'd on any of them, on the one existing network — and counts against the org cap
/// (cap 2: of six concurrent creates exactly one is admitted).
#[tokio::test(flavor = "multi_thread")]
async fn sessions_of_the_previous_release_are_adopted() {
    let mut deployment = Deployment::start(
        "upg",
        1,
        &[
            ("SANDBOX_MAX_SESSIONS_PER_ORG", "2"),
            ("SANDBOX_MAX_SESSIONS", "100"),
        ],
    )
    .await;
    let org = deployment.org("upg");
    let old = format!("rold-{}", std::process::id());
    let (status, body) = deployment
        .client(0)
        .json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": old, "organizationId": org})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", deployment.logs());
    deployment.replicas.clear();
    let prefix = tale::modes::spawner::backend::docker_shared::claim_prefix(&deployment.network);
    let markers = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=tale.claim={prefix}"),
    ])
    .1;
    assert_eq!(lines(&markers).len(), 3, "two claims and the network lock");
    for id in lines(&markers) {
        assert!(docker(&["rm", "-f", &id]).0);
    }
    // The three new replicas boot together: each adopts the old session's slots at boot, and
    // exactly one org and one global claim must remain.
    let root = |i: usize| {
        std::env::temp_dir().join(format!(
            "tale-replicas-upg-{}-new{i}-{}",
            std::process::id(),
            support::runnerd::free_port()
        ))
    };
    let (a, b, c) = tokio::join!(
        SpawnerProcess::start(root(0), deployment.env.clone()),
        SpawnerProcess::start(root(1), deployment.env.clone()),
        SpawnerProcess::start(root(2), deployment.env.clone()),
    );
    deployment.replicas.extend([a, b, c]);
    let claims = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=tale.claim-session={old}"),
    ])
    .1;
    assert_eq!(lines(&claims).len(), 2, "{}", deployment.logs());
    let statuses = deployment
        .create_many("rupg", std::slice::from_ref(&org), 6)
        .await;
    assert_eq!(
        count(&statuses, StatusCode::CREATED),
        1,
        "{statuses:?}\n{}",
        deployment.logs()
    );
    assert_eq!(deployment.containers_of(&org).len(), 2);
    assert_eq!(deployment.networks().len(), 1, "the existing network kept");
    let (_, list) = deployment
        .client(2)
        .json(
            Method::GET,
            &format!("/v1/sessions?organizationId={org}"),
            None,
        )
        .await;
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["sessionId"] == old.as_str()),
        "{list}"
    );
    let (_, stream) = deployment
        .client(1)
        .sse(
            Method::POST,
            &format!("/v1/sessions/{old}/exec"),
            Some(json!({"execId": "up", "shell": "echo upgraded"})),
            &[],
        )
        .await;
    assert_eq!(stdout_text(&stream.collect_all().await), "upgraded\n");
}
