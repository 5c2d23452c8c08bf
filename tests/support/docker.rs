//! Docker helpers for end-to-end suites: the session test image, the `docker` CLI, and a spawner on
//! the docker backend with its own network. Tests FAIL (never skip) when Docker is not available.
#![allow(dead_code)]

use super::spawner::SpawnerProcess;
use std::process::Command;
use std::sync::OnceLock;

/// The session test image: `TALE_TEST_IMAGE` when set (scripts/test.sh builds it), else built
/// once per test binary as `tale-test-runtime:latest`.
pub fn test_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        local_image(
            "TALE_TEST_IMAGE",
            "tale-test-runtime:latest",
            "build-test-image.sh",
            "test",
        )
    })
}

/// A session image: the tag in `env_var` when set (it must exist), else `default_tag` built with
/// `scripts/<script>`. Asserts the engine answers first, so a missing Docker fails clearly.
pub fn local_image(env_var: &str, default_tag: &str, script: &str, what: &str) -> String {
    let ping = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    assert!(
        ping.as_ref().is_ok_and(|o| o.status.success()),
        "Docker is required for these tests (run scripts/setup.sh): {ping:?}"
    );
    if let Ok(tag) = std::env::var(env_var) {
        assert!(
            docker(&["image", "inspect", &tag]).0,
            "{env_var}={tag} does not exist"
        );
        return tag;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(format!("{root}/scripts/{script}"))
        .arg(default_tag)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "building the {what} image failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    default_tag.to_string()
}

/// Runs `docker ARGS`: (success, trimmed stdout).
pub fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

/// A fresh network name for one spawner (tests run in parallel; the engine allows duplicates).
pub fn network_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "tale-test-net-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A spawner on the docker backend, on `network`, with `extra` env.
pub async fn docker_spawner(network: &str, extra: &[(&str, &str)]) -> SpawnerProcess {
    let mut env: Vec<(String, String)> = vec![
        ("SANDBOX_BACKEND".into(), "docker".into()),
        ("SANDBOX_RUNTIME_IMAGE".into(), test_image().into()),
        ("SANDBOX_EGRESS_NETWORK".into(), network.into()),
        ("SANDBOX_EGRESS_PROXY".into(), "none".into()),
        ("SANDBOX_CACHE_VOLUMES".into(), "0".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let root = std::env::temp_dir().join(format!(
        "tale-docker-{}-{}",
        std::process::id(),
        super::runnerd::free_port()
    ));
    SpawnerProcess::start(root, env).await
}

/// [`docker_spawner`] with 16 MiB disk quotas whose images live in `dir`; `extra` goes on top.
pub async fn quota_spawner(
    dir: &std::path::Path,
    network: &str,
    extra: &[(&str, &str)],
) -> SpawnerProcess {
    let mut env = vec![
        ("SANDBOX_DISK_QUOTA_MB", "16"),
        ("SANDBOX_DISK_QUOTA_DIR", dir.to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    docker_spawner(network, &env).await
}

/// Runs `scripts/quickstart.sh --down` for stack `stack`, whose quota images are in `quota_dir`
/// (the test image as the quota helper): its standard output, once it succeeded.
pub fn quickstart_down(stack: &str, quota_dir: &std::path::Path) -> String {
    let state = std::env::temp_dir().join(format!("tale-quickstart-down-{stack}"));
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/quickstart.sh"
    ))
    .arg("--down")
    .env("TALE_BIN", env!("CARGO_BIN_EXE_tale"))
    .env("TALE_QUICKSTART_DIR", &state)
    .env("TALE_QUICKSTART_STACK", stack)
    .env("SANDBOX_DISK_QUOTA_DIR", quota_dir)
    .env("SANDBOX_DISK_QUOTA_HELPER_IMAGE", test_image())
    .stdin(std::process::Stdio::null())
    .output()
    .unwrap();
    let _ = std::fs::remove_dir_all(&state);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Removes containers `names` (with their `-ws` volumes) and `network` when dropped, so a test
/// that fails an assertion leaves nothing behind on the shared engine.
pub struct Cleanup {
    pub names: Vec<String>,
    pub network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.names {
            docker(&["rm", "-f", name]);
        }
        let volumes: Vec<String> = self.names.iter().map(|n| format!("{n}-ws")).collect();
        remove_volumes(&volumes);
        remove_network(&self.network);
    }
}

/// Removes volumes as the spawner does (`tale docker-volumes rm`, what `scripts/quickstart.sh
/// --down` runs): a quota'd one with its loop device and its image in the default quota
/// directory. A plain `docker volume rm` would leave both on the host.
pub fn remove_volumes<S: AsRef<str>>(names: &[S]) {
    remove_volumes_in(None, names);
}

/// [`remove_volumes`] for quota images in `quota_dir` (`None`: the default directory).
pub fn remove_volumes_in<S: AsRef<str>>(quota_dir: Option<&str>, names: &[S]) {
    if names.is_empty() {
        return;
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_tale"));
    command.arg("docker-volumes");
    if let Some(dir) = quota_dir {
        command.args(["--quota-dir", dir]);
    }
    // The helper needs a session image with its tools; the test image has them (a Drop must not
    // build it).
    let helper = std::env::var("TALE_TEST_IMAGE").unwrap_or("tale-test-runtime:latest".into());
    command
        .args(["--helper-image", &helper, "rm"])
        .args(names.iter().map(AsRef::as_ref));
    if let Ok(out) = command.output() {
        if !out.status.success() {
            eprintln!(
                "removing test volumes: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Removes a test network and what the spawner's replicas agreed through on it: the network lock
/// and claim containers, pin marker volumes (all labelled `tale.claim=<prefix of the network>`).
pub fn remove_network(network: &str) {
    docker(&["network", "rm", network]);
    let prefix = tale::modes::spawner::backend::docker_shared::claim_prefix(network);
    let label = format!("label=tale.claim={prefix}");
    let (_, markers) = docker(&["ps", "-aq", "--filter", &label]);
    for id in markers.lines() {
        docker(&["rm", "-f", id]);
    }
    let (_, volumes) = docker(&["volume", "ls", "-q", "--filter", &label]);
    remove_volumes(&volumes.lines().collect::<Vec<_>>());
    // Disk-quota helpers a spawner killed by the test left behind (its boot reclaim's, say): the
    // next boot would remove them after the grace, but the test's deployment has none.
    remove_quota_helpers_of(network);
}

/// Removes every disk-quota helper container labelled as deployment `owner`'s (its network).
pub fn remove_quota_helpers_of(owner: &str) {
    let label = format!(
        "label={}={owner}",
        tale::modes::spawner::backend::docker_quota::HELPER_OWNER_LABEL
    );
    let (_, helpers) = docker(&["ps", "-aq", "--filter", &label]);
    for id in helpers.lines() {
        docker(&["rm", "-f", id]);
    }
}
