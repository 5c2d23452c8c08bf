//! End-to-end disk quotas against the real Docker engine: a session's workspace and its
//! organization's cache volumes are size-limited ext4 images on loop devices; writing past the
//! quota fails with ENOSPC inside the session while the host holds at most the quota; a resume
//! after the loop device is gone (a host reboot) re-attaches it; destroy leaves no loop device,
//! image or volume behind. These tests FAIL (never skip) when Docker is not available.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::docker::{docker, test_image};
use support::runnerd::poll;
use support::spawner::{result, stdout_text, SpawnerProcess};

const MIB: u64 = 1 << 20;

/// Loop devices (`/dev/loopN`) whose backing file is named `file_name`, read from sysfs.
fn loops_backed_by(file_name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim().trim_end_matches(" (deleted)");
        if backing.rsplit('/').next() == Some(file_name) {
            found.push(format!("/dev/{name}"));
        }
    }
    found
}

/// Bytes the host filesystem holds for `path` (allocated blocks, not the apparent size).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Removes a volume, its loop devices and its image (what a failed test leaves behind).
fn cleanup_volume(dir: &Path, volume: &str) {
    docker(&["volume", "rm", "-f", volume]);
    let image = format!("{volume}.ext4");
    for device in loops_backed_by(&image) {
        let _ = Command::new("losetup").args(["-d", &device]).status();
    }
    let _ = std::fs::remove_file(dir.join(image));
}

/// A small file that takes over a freed loop device number.
fn squatter_name() -> String {
    format!("tale-quota-squatter-{}.img", std::process::id())
}

/// Removes a test network when dropped (also when the test panics).
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        support::docker::remove_network(&self.0);
    }
}

struct Fixture {
    dir: PathBuf,
    volumes: Vec<String>,
    container: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.container]);
        for volume in &self.volumes {
            cleanup_volume(&self.dir, volume);
        }
        let squatter = squatter_name();
        for device in loops_backed_by(&squatter) {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 64 MiB workspace quota: 96 MiB written fail at the quota with ENOSPC, the image holds at most
/// the quota on the host, a 16 MiB org cache is capped too, a resume after the loop device was
/// detached (as after a reboot) re-attaches on another device with the data kept, and destroy
/// leaves no loop device, image or workspace volume.
#[tokio::test(flavor = "multi_thread")]
async fn workspace_and_cache_quotas_hold() {
    let pid = std::process::id();
    let id = format!("dquota{pid}");
    let org = format!("qorg{pid}");
    let container = format!("tale-sbx-ses-{id}");
    let workspace = format!("{container}-ws");
    let cache_prefix = format!("tale-test-quota-pip-{pid}");
    let cache = format!("{cache_prefix}-{org}");
    let dir = std::env::temp_dir().join(format!("tale-disk-quota-{pid}"));
    let fixture = Fixture {
        dir: dir.clone(),
        volumes: vec![
            workspace.clone(),
            cache.clone(),
            format!("tale-test-quota-npm-{pid}-{org}"),
            format!("tale-test-quota-bun-{pid}-{org}"),
        ],
        container: container.clone(),
    };
    let network = format!("tale-test-net-quota-{pid}");
    let _network = NetworkGuard(network.clone());
    let image = test_image().to_string();
    let env: Vec<(String, String)> = [
        ("SANDBOX_BACKEND", "docker"),
        ("SANDBOX_RUNTIME_IMAGE", image.as_str()),
        ("SANDBOX_EGRESS_NETWORK", network.as_str()),
        ("SANDBOX_EGRESS_PROXY", "none"),
        ("SANDBOX_SWEEP_INTERVAL_MS", "300"),
        ("SANDBOX_DISK_QUOTA_MB", "64"),
        ("SANDBOX_ORG_CACHE_QUOTA_MB", "16"),
        ("SANDBOX_DISK_QUOTA_DIR", dir.to_str().unwrap()),
        ("SANDBOX_PIP_CACHE_VOLUME_PREFIX", cache_prefix.as_str()),
        (
            "SANDBOX_NPM_CACHE_VOLUME_PREFIX",
            &format!("tale-test-quota-npm-{pid}"),
        ),
        (
            "SANDBOX_BUN_CACHE_VOLUME_PREFIX",
            &format!("tale-test-quota-bun-{pid}"),
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let root = std::env::temp_dir().join(format!("tale-docker-quota-{pid}"));
    let spawner = SpawnerProcess::start(root, env).await;
    let c = &spawner.client;
    let create = || async {
        c.json(
            Method::POST,
            "/v1/sessions",
            Some(json!({"sessionId": id, "organizationId": org, "idleTimeoutMs": 4000})),
        )
        .await
    };
    let (status, created) = create().await;
    assert_eq!(status, StatusCode::CREATED, "{created}\n{}", spawner.log());
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

    let events = exec(
        "fill",
        "echo kept > kept.txt; dd if=/dev/zero of=/workspace/big bs=1M count=96 2>&1; echo rc=$?",
    )
    .await;
    let out = stdout_text(&events);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(!out.contains("rc=0"), "{out}");
    let image_file = dir.join(format!("{workspace}.ext4"));
    let held = allocated(&image_file);
    assert!(
        (48 * MIB..=64 * MIB + MIB).contains(&held),
        "the host holds {held} bytes for a 64 MiB quota"
    );
    let events = exec("size", "ls -l /workspace/big | awk '{print $5}'").await;
    let written: u64 = stdout_text(&events).trim().parse().unwrap();
    eprintln!(
        "64 MiB quota: file written {written} bytes, image allocated {held} bytes on the host"
    );
    assert!(written < 64 * MIB && written > 40 * MIB, "wrote {written}");

    // The org cache is capped by its own quota.
    let events = exec(
        "cache",
        "dd if=/dev/zero of=/cache/pip/blob bs=1M count=32 2>&1; echo rc=$?",
    )
    .await;
    let out = stdout_text(&events);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(allocated(&dir.join(format!("{cache}.ext4"))) <= 16 * MIB + MIB);

    // Idle stop, then the loop device disappears (a reboot) and its number is taken by another.
    let stopped = poll(Duration::from_secs(30), async || {
        (!docker(&["inspect", &container]).0).then_some(())
    })
    .await;
    assert!(stopped.is_some(), "idle stop:\n{}", spawner.log());
    let old = loops_backed_by(&format!("{workspace}.ext4"));
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(Command::new("losetup")
        .args(["-d", &old[0]])
        .status()
        .unwrap()
        .success());
    let squatter_file = dir.join(squatter_name());
    std::fs::write(&squatter_file, vec![0u8; 1 << 16]).unwrap();
    let squatted = Command::new("losetup")
        .args([&old[0], squatter_file.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    let (status, body) = create().await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    let events = exec("again", "cat kept.txt; touch more 2>&1; echo rc=$?").await;
    let now = loops_backed_by(&format!("{workspace}.ext4"));
    if squatted {
        let _ = Command::new("losetup").args(["-d", &old[0]]).status();
        assert_ne!(now, old, "re-attached on another device");
    }
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(stdout_text(&events).starts_with("kept\n"), "{events:?}");
    assert_eq!(result(&events)["exitCode"], 0);
    let (_, device) = docker(&[
        "volume",
        "inspect",
        "-f",
        "{{index .Options \"device\"}}",
        &workspace,
    ]);
    assert_eq!(device, now[0], "the volume follows the device");

    assert_eq!(
        c.json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await,
        (StatusCode::OK, json!({"destroyed": true, "busy": false}))
    );
    assert!(!docker(&["volume", "inspect", &workspace]).0);
    assert!(!image_file.exists(), "image deleted");
    assert!(
        loops_backed_by(&format!("{workspace}.ext4")).is_empty(),
        "loop device freed"
    );
    drop(fixture);
}

/// A create that fails after its quota image was made (runnerd dies at once), or before (the
/// image does not exist, so neither does the helper), answers 502 and leaves no loop device,
/// image or volume behind.
#[tokio::test(flavor = "multi_thread")]
async fn failed_create_frees_the_quota() {
    let pid = std::process::id();
    let image = test_image().to_string();
    let dying = format!("tale-test-dying-disk-quota:{pid}");
    let build = std::env::temp_dir().join(format!("tale-dying-quota-{pid}"));
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(
        build.join("Dockerfile"),
        format!("FROM {image}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"exit 3\"]\n"),
    )
    .unwrap();
    assert!(docker(&["build", "-q", "-t", &dying, build.to_str().unwrap()]).0);
    std::fs::remove_dir_all(&build).unwrap();
    let dir = std::env::temp_dir().join(format!("tale-disk-quota-fail-{pid}"));
    let network = format!("tale-test-net-quota-fail-{pid}");
    let _network = NetworkGuard(network.clone());
    for (runtime, tag) in [
        (dying.as_str(), "qdie"),
        ("tale-test-missing:none", "qmiss"),
    ] {
        let id = format!("{tag}{pid}");
        let workspace = format!("tale-sbx-ses-{id}-ws");
        let _fixture = Fixture {
            dir: dir.clone(),
            volumes: vec![workspace.clone()],
            container: format!("tale-sbx-ses-{id}"),
        };
        let env: Vec<(String, String)> = [
            ("SANDBOX_BACKEND", "docker"),
            ("SANDBOX_RUNTIME_IMAGE", runtime),
            ("SANDBOX_EGRESS_NETWORK", network.as_str()),
            ("SANDBOX_EGRESS_PROXY", "none"),
            ("SANDBOX_CACHE_VOLUMES", "0"),
            ("SANDBOX_DISK_QUOTA_MB", "32"),
            ("SANDBOX_DISK_QUOTA_DIR", dir.to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let root = std::env::temp_dir().join(format!("tale-docker-quota-{tag}-{pid}"));
        let spawner = SpawnerProcess::start(root, env).await;
        let (status, body) = spawner
            .client
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": id, "organizationId": "qorg"})),
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_GATEWAY, &json!("create_failed")),
            "{body}\n{}",
            spawner.log()
        );
        assert!(!docker(&["volume", "inspect", &workspace]).0, "no volume");
        assert!(
            loops_backed_by(&format!("{workspace}.ext4")).is_empty(),
            "no loop device"
        );
        assert!(!dir.join(format!("{workspace}.ext4")).exists(), "no image");
        let (_, helpers) = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            "label=tale.disk-quota-helper=1",
            "--filter",
            &format!("ancestor={runtime}"),
        ]);
        assert_eq!(helpers, "", "no helper container left");
    }
    docker(&["rmi", &dying]);
}
