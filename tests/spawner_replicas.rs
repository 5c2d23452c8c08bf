//! Several real spawner processes on one Docker engine act as one service: they share one sandbox
//! network, the caps hold across them under concurrent creates (claims the engine arbitrates), and
//! any replica serves a session another one created.
//! These tests FAIL (never skip) when Docker is not available.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::process::Command;
use std::sync::OnceLock;
use support::spawner::{stdout_text, SpawnerClient, SpawnerProcess};

/// The session image: `TALE_TEST_IMAGE`, else the one `scripts/build-test-image.sh` builds.
fn test_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        assert!(
            docker(&["version"]).0,
            "Docker is required for these tests (run scripts/setup.sh)"
        );
        if let Ok(tag) = std::env::var("TALE_TEST_IMAGE") {
            assert!(
                docker(&["image", "inspect", &tag]).0,
                "{tag} does not exist"
            );
            return tag;
        }
        let root = env!("CARGO_MANIFEST_DIR");
        let built = Command::new(format!("{root}/scripts/build-test-image.sh"))
            .arg("tale-test-runtime:latest")
            .current_dir(root)
            .output()
            .unwrap();
        assert!(built.status.success(), "building the test image failed");
        "tale-test-runtime:latest".into()
    })
}

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

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
        let mut replicas = Vec::new();
        for i in 0..n {
            let root = std::env::temp_dir().join(format!(
                "tale-replicas-{tag}-{}-{i}-{}",
                std::process::id(),
                support::runnerd::free_port()
            ));
            replicas.push(SpawnerProcess::start(root, env.clone()).await);
        }
        Deployment {
            replicas,
            network,
            orgs: Vec::new(),
        }
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
                    docker(&["volume", "rm", "-f", &volume]);
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
