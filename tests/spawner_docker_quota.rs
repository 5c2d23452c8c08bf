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
    support::docker::remove_volumes_in(dir.to_str(), &[volume]);
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
        // The boot's orphan reclaim runs a helper of its own in the background: wait for its end.
        let reclaimed = poll(Duration::from_secs(60), async || {
            spawner
                .log()
                .contains("disk quota orphan reclaim")
                .then_some(())
        })
        .await;
        assert!(reclaimed.is_some(), "{}", spawner.log());
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

/// Image files (`*.ext4`) and deployment records left in a quota directory.
fn images_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".ext4") || n.ends_with(".ext4.owner"))
        .collect();
    names.sort();
    names
}

/// A spawner with 16 MiB quotas in `dir` and the organization caches on, quota'd at 16 MiB too.
async fn quota_spawner(dir: &Path, network: &str, extra: &[(&str, &str)]) -> SpawnerProcess {
    let mut env = vec![
        ("SANDBOX_CACHE_VOLUMES", "1"),
        ("SANDBOX_ORG_CACHE_QUOTA_MB", "16"),
    ];
    env.extend_from_slice(extra);
    support::docker::quota_spawner(dir, network, &env).await
}

/// `scripts/quickstart.sh --down` removes a stack's quota'd volumes (workspaces and caches) with
/// their loop devices and image files: after it, no loop device is backed by any of their images
/// and the quota directory holds no image. (A plain `docker volume rm`, as `--down` did, left
/// every loop device attached and every image on the host.)
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_down_frees_loop_devices_and_images() {
    let pid = std::process::id();
    let stack = format!("qdown{pid}");
    let org = format!("dorg{pid}");
    let dir = std::env::temp_dir().join(format!("tale-disk-quota-down-{pid}"));
    let network = format!("tale-test-net-quota-down-{pid}");
    let _network = NetworkGuard(network.clone());
    let prefixes = ["pip", "npm", "bun"].map(|tool| format!("tale-test-qdown-{tool}-{pid}"));
    let ids = [format!("qdowna{pid}"), format!("qdownb{pid}")];
    let mut volumes: Vec<String> = ids
        .iter()
        .map(|id| format!("tale-sbx-ses-{id}-ws"))
        .collect();
    volumes.extend(prefixes.iter().map(|p| format!("{p}-{stack}-{org}")));
    let _fixture = Fixture {
        dir: dir.clone(),
        volumes: volumes.clone(),
        container: format!("tale-sbx-ses-{}", ids[0]),
    };
    let _second = support::docker::Cleanup {
        names: vec![format!("tale-sbx-ses-{}", ids[1])],
        network: network.clone(),
    };
    let mut spawner = quota_spawner(
        &dir,
        &network,
        &[
            ("SANDBOX_STACK_LABEL", stack.as_str()),
            ("SANDBOX_PIP_CACHE_VOLUME_PREFIX", prefixes[0].as_str()),
            ("SANDBOX_NPM_CACHE_VOLUME_PREFIX", prefixes[1].as_str()),
            ("SANDBOX_BUN_CACHE_VOLUME_PREFIX", prefixes[2].as_str()),
        ],
    )
    .await;
    for id in &ids {
        let (status, body) = spawner
            .client
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": id, "organizationId": org})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    }
    for volume in &volumes {
        assert_eq!(
            loops_backed_by(&format!("{volume}.ext4")).len(),
            1,
            "{volume}"
        );
    }
    // The stack's spawner is gone (crashed, or its compose project stopped): --down finds the
    // sessions and volumes by their stack label.
    spawner.kill9();
    let text = support::docker::quickstart_down(&stack, &dir);
    for volume in &volumes {
        assert!(
            !docker(&["volume", "inspect", volume]).0,
            "{volume} is left"
        );
        assert_eq!(
            loops_backed_by(&format!("{volume}.ext4")),
            Vec::<String>::new(),
            "a loop device still backs {volume}'s image"
        );
    }
    assert_eq!(images_in(&dir), Vec::<String>::new(), "image files left");
    for volume in &volumes {
        assert!(
            text.contains(&format!(
                "removed session volume {volume} (and its disk quota image and loop device)"
            )),
            "{text}"
        );
    }
}

/// At boot the spawner reclaims its own deployment's quota images whose volume was removed some
/// other way (a plain `docker volume rm`): the loop device is detached and the image deleted. It
/// never touches another deployment's image (another sandbox network's record), a fresh one (a
/// create in flight), or an image without a record; and it keeps a live session's.
#[tokio::test(flavor = "multi_thread")]
async fn boot_reclaims_this_deployments_orphaned_images_only() {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("tale-disk-quota-orphan-{pid}"));
    let network = format!("tale-test-net-quota-orphan-{pid}");
    let _network = NetworkGuard(network.clone());
    let (orphan_id, live_id) = (format!("qorph{pid}"), format!("qlive{pid}"));
    let orphan = format!("tale-sbx-ses-{orphan_id}-ws");
    let live = format!("tale-sbx-ses-{live_id}-ws");
    let _fixture = Fixture {
        dir: dir.clone(),
        volumes: vec![orphan.clone(), live.clone()],
        container: format!("tale-sbx-ses-{orphan_id}"),
    };
    let _live = support::docker::Cleanup {
        names: vec![format!("tale-sbx-ses-{live_id}")],
        network: network.clone(),
    };
    let mut spawner = quota_spawner(&dir, &network, &[("SANDBOX_CACHE_VOLUMES", "0")]).await;
    for id in [&orphan_id, &live_id] {
        let (status, body) = spawner
            .client
            .json(
                Method::POST,
                "/v1/sessions",
                Some(json!({"sessionId": id, "organizationId": "oorg"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}\n{}", spawner.log());
    }
    spawner.kill9();
    // The orphan, made by hand as the old `--down` did: container and volume removed by the engine.
    assert!(docker(&["rm", "-f", &format!("tale-sbx-ses-{orphan_id}")]).0);
    assert!(docker(&["volume", "rm", &orphan]).0);
    assert_eq!(loops_backed_by(&format!("{orphan}.ext4")).len(), 1);
    // Past the reclaim grace: the records were last rewritten long ago (not a create in flight).
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let age = |file: &Path| {
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .set_modified(long_ago)
            .unwrap()
    };
    age(&dir.join(format!("{orphan}.ext4.owner")));
    age(&dir.join(format!("{live}.ext4.owner")));
    // Another deployment's orphan (its own record, a loop device attached), a fresh record of
    // ours, and an image without a record: all kept.
    let foreign = dir.join(format!("tale-test-foreign-{pid}-ws.ext4"));
    std::fs::write(&foreign, vec![0u8; 1 << 16]).unwrap();
    std::fs::write(
        dir.join(format!("tale-test-foreign-{pid}-ws.ext4.owner")),
        "another-net\n",
    )
    .unwrap();
    age(&dir.join(format!("tale-test-foreign-{pid}-ws.ext4.owner")));
    let attached = Command::new("losetup")
        .args(["-f", "--show", foreign.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(attached.status.success(), "{attached:?}");
    let foreign_loop = String::from_utf8_lossy(&attached.stdout).trim().to_string();
    let fresh = dir.join(format!("tale-test-fresh-{pid}-ws.ext4"));
    std::fs::write(&fresh, b"x").unwrap();
    std::fs::write(
        dir.join(format!("tale-test-fresh-{pid}-ws.ext4.owner")),
        format!("{network}\n"),
    )
    .unwrap();
    let legacy = dir.join(format!("tale-test-legacy-{pid}-ws.ext4"));
    std::fs::write(&legacy, b"x").unwrap();

    // Only this boot's reclaim counts (the log file is appended to).
    let before = spawner.log().len();
    spawner.restart().await;
    let done = poll(Duration::from_secs(120), async || {
        spawner.log()[before..]
            .lines()
            .find(|l| l.contains("disk quota orphan reclaim"))
            .map(str::to_owned)
    })
    .await;
    let foreign_kept = loops_backed_by(foreign.file_name().unwrap().to_str().unwrap());
    let _ = Command::new("losetup").args(["-d", &foreign_loop]).status();
    let done = done.unwrap_or_else(|| panic!("no reclaim in the log:\n{}", spawner.log()));
    assert!(done.contains("reclaimed=1"), "{done}");
    assert!(
        !dir.join(format!("{orphan}.ext4")).exists(),
        "orphan image deleted"
    );
    assert!(!dir.join(format!("{orphan}.ext4.owner")).exists());
    assert_eq!(
        loops_backed_by(&format!("{orphan}.ext4")),
        Vec::<String>::new(),
        "orphan's loop device detached"
    );
    assert_eq!(
        foreign_kept,
        vec![foreign_loop],
        "another deployment's loop device kept"
    );
    for kept in [&foreign, &fresh, &legacy, &dir.join(format!("{live}.ext4"))] {
        assert!(kept.exists(), "{} kept", kept.display());
    }
    assert_eq!(
        loops_backed_by(&format!("{live}.ext4")).len(),
        1,
        "live session's device kept"
    );
    let (status, _) = spawner
        .client
        .json(Method::DELETE, &format!("/v1/sessions/{live_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}
