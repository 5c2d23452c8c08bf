//! Disk quota helper containers left behind by a killed spawner, against the real Docker engine: a
//! spawner is `kill -9`ed while its helper exists (created, paused by the test hook before it
//! starts), and the leftover is then removed by the next boot of its deployment, or by
//! `scripts/quickstart.sh --down` of its stack, while other deployments' helpers, helpers without
//! a deployment label and (at boot) helpers younger than the grace are kept. These tests FAIL
//! (never skip) when Docker is not available.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::docker::{docker, quota_spawner, test_image};
use support::runnerd::poll;
use support::spawner::SpawnerProcess;

/// The boot's leftover grace in these tests (`TALE_TEST_QUOTA_HELPER_GRACE_MS`): long enough for a
/// spawner to boot and list, short enough to wait out.
const TEST_GRACE: Duration = Duration::from_secs(20);

/// Removes the test's containers, volumes, quota directory and network when dropped (also on a
/// panic).
struct Leftovers {
    names: Vec<String>,
    /// Made-up quota'd volumes (never mounted: a plain removal is enough).
    volumes: Vec<String>,
    owners: Vec<String>,
    dir: PathBuf,
    network: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for name in &self.names {
            docker(&["rm", "-f", name]);
        }
        for owner in &self.owners {
            support::docker::remove_quota_helpers_of(owner);
        }
        for volume in &self.volumes {
            docker(&["volume", "rm", volume]);
        }
        support::docker::remove_network(&self.network);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Names and states of the helper containers carrying every label in `labels`.
fn helpers(labels: &[String]) -> Vec<(String, String)> {
    let mut args = vec![
        "ps".to_string(),
        "-a".into(),
        "--format".into(),
        "{{.Names}} {{.State}}".into(),
        "--filter".into(),
        "label=tale.disk-quota-helper=1".into(),
    ];
    for label in labels {
        args.extend(["--filter".into(), format!("label={label}")]);
    }
    let (ok, out) = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "docker {args:?}");
    let mut found: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect();
    found.sort();
    found
}

/// Creates a never-started container `name` that looks like a helper, with `labels` on top of the
/// helper label.
fn plant_helper(name: &str, labels: &[String]) {
    let mut args = vec![
        "create".to_string(),
        "--name".into(),
        name.into(),
        "--network".into(),
        "none".into(),
        "--label".into(),
        "tale.disk-quota-helper=1".into(),
    ];
    for label in labels {
        args.extend(["--label".into(), label.clone()]);
    }
    args.extend([test_image().to_string(), "true".into()]);
    let (ok, _) = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "docker {args:?}");
}

fn exists(container: &str) -> bool {
    docker(&["inspect", container]).0
}

/// Boots a spawner whose every helper run pauses between the helper's create and its start (the
/// boot's own orphan reclaim runs one), waits for the pause, and `kill -9`s it there: returns the
/// name of the helper it left behind (one, never started) and when it was seen.
async fn leave_a_helper_behind(spawner: &mut SpawnerProcess, owner: &str) -> (String, Instant) {
    let paused = spawner
        .paused_at("quota_helper_created", Duration::from_secs(60))
        .await;
    assert!(paused, "no helper paused:\n{}", spawner.log());
    let seen = Instant::now();
    spawner.kill9();
    // (Helpers the test planted are named otherwise.)
    let left: Vec<_> = helpers(&[format!("tale.disk-quota-owner={owner}")])
        .into_iter()
        .filter(|(name, _)| name.starts_with("tale-disk-quota-"))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}\n{}", spawner.log());
    assert_eq!(left[0].1, "created", "{left:?}");
    (left[0].0.clone(), seen)
}

/// Interrupts `tale docker-volumes rm` of a quota'd volume (a made-up one: never mounted) for
/// deployment `network` while its helper exists (created, paused by the test hook): returns the
/// name of the helper it left behind (besides the deployment's helpers in `before`).
async fn interrupt_docker_volumes_rm(
    dir: &Path,
    network: &str,
    volume: &str,
    before: &[&str],
) -> String {
    let (ok, _) = docker(&[
        "volume",
        "create",
        "--opt",
        "type=ext4",
        "--opt",
        "device=/dev/null",
        "--label",
        "tale.disk-quota-bytes=16777216",
        volume,
    ]);
    assert!(ok, "docker volume create {volume}");
    let log = dir.with_extension("docker-volumes.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tale"))
        .args(["docker-volumes", "--quota-dir", dir.to_str().unwrap()])
        .args(["--helper-image", test_image(), "rm", volume])
        .env("SANDBOX_EGRESS_NETWORK", network)
        .env("TALE_TEST_CREATE_PAUSE_AT", "quota_helper_created")
        .env("TALE_TEST_CREATE_PAUSE_MS", "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let paused = poll(Duration::from_secs(60), async || {
        read().contains("test hook: create paused").then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = read();
    let _ = std::fs::remove_file(&log);
    assert!(paused.is_some(), "no helper paused: {text}");
    let left: Vec<_> = helpers(&[format!("tale.disk-quota-owner={network}")])
        .into_iter()
        .filter(|(name, state)| {
            name.starts_with("tale-disk-quota-")
                && state == "created"
                && !before.contains(&name.as_str())
        })
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    left[0].0.clone()
}

/// A spawner killed between a helper's create and its remove leaves the helper behind, and so
/// does an interrupted `tale docker-volumes rm`; the next boot of their deployment removes both
/// once older than the grace, and keeps another deployment's (old) helper, an (old) helper
/// without a deployment label (an older release's) and its own deployment's helper younger than
/// the grace (another replica's run in flight).
#[tokio::test(flavor = "multi_thread")]
async fn boot_removes_its_own_deployments_leftover_helpers_only() {
    let pid = std::process::id();
    let network = format!("tale-test-net-qhelpers-{pid}");
    let (foreign, legacy, young) = (
        format!("tale-test-qhelper-foreign-{pid}"),
        format!("tale-test-qhelper-legacy-{pid}"),
        format!("tale-test-qhelper-young-{pid}"),
    );
    let other_network = format!("{network}-other");
    let dir = std::env::temp_dir().join(format!("tale-disk-quota-helpers-{pid}"));
    let mut cleanup = Leftovers {
        names: vec![foreign.clone(), legacy.clone(), young.clone()],
        volumes: vec![format!("tale-test-qhelper-vol-{pid}")],
        owners: vec![network.clone(), other_network.clone()],
        dir: dir.clone(),
        network: network.clone(),
    };
    // Old by the time of the reclaim: made before the leftover.
    plant_helper(
        &foreign,
        &[format!("tale.disk-quota-owner={other_network}")],
    );
    plant_helper(&legacy, &[]);
    let mut spawner = quota_spawner(
        &dir,
        &network,
        &[
            ("TALE_TEST_CREATE_PAUSE_AT", "quota_helper_created"),
            ("TALE_TEST_CREATE_PAUSE_MS", "60000"),
        ],
    )
    .await;
    let (leftover, seen) = leave_a_helper_behind(&mut spawner, &network).await;
    cleanup.names.push(leftover.clone());
    let volume = cleanup.volumes[0].clone();
    let from_cli = interrupt_docker_volumes_rm(&dir, &network, &volume, &[&leftover]).await;
    cleanup.names.push(from_cli.clone());
    // The leftover is older than the grace once this much has passed since it was seen (a span
    // of time to outlast: there is nothing to poll for).
    tokio::time::sleep_until((seen + TEST_GRACE + Duration::from_secs(1)).into()).await;
    plant_helper(&young, &[format!("tale.disk-quota-owner={network}")]);
    let young_made = Instant::now();

    let grace_ms = TEST_GRACE.as_millis().to_string();
    let mut rebooted = quota_spawner(
        &dir,
        &network,
        &[("TALE_TEST_QUOTA_HELPER_GRACE_MS", grace_ms.as_str())],
    )
    .await;
    let done = poll(Duration::from_secs(60), async || {
        rebooted
            .log()
            .lines()
            .find(|l| l.contains("disk quota helper reclaim"))
            .map(str::to_owned)
    })
    .await;
    let done = done.unwrap_or_else(|| panic!("no helper reclaim:\n{}", rebooted.log()));
    assert!(
        young_made.elapsed() < TEST_GRACE,
        "inconclusive: the reboot took longer than the test grace"
    );
    assert!(done.contains("removed=2"), "{done}\n{}", rebooted.log());
    assert!(!exists(&leftover), "the spawner's leftover helper is gone");
    assert!(
        !exists(&from_cli),
        "docker-volumes' leftover helper is gone"
    );
    for kept in [&foreign, &legacy, &young] {
        assert!(exists(kept), "{kept} kept\n{}", rebooted.log());
    }
    assert!(
        rebooted.log().contains(&format!(
            "removed a leftover disk quota helper container helper={leftover}"
        )),
        "{}",
        rebooted.log()
    );
    // Let the boot's orphan reclaim (a helper run of its own) end before cleaning up.
    let reclaimed = poll(Duration::from_secs(60), async || {
        rebooted
            .log()
            .contains("disk quota orphan reclaim")
            .then_some(())
    })
    .await;
    assert!(reclaimed.is_some(), "{}", rebooted.log());
    rebooted.kill9();
    drop(cleanup);
}

/// `scripts/quickstart.sh --down` removes the helper a killed spawner of its stack left behind,
/// and a helper labelled only with the stack's sandbox network (its deployment), whatever their
/// age, and keeps another stack's helper.
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_down_removes_the_stacks_leftover_helpers() {
    let pid = std::process::id();
    let stack = format!("qhdown{pid}");
    let network = format!("{stack}-sandbox-net");
    let other = format!("qhother{pid}");
    let (theirs, by_network) = (
        format!("tale-test-qhelper-{other}"),
        format!("tale-test-qhelper-net-{pid}"),
    );
    let dir = std::env::temp_dir().join(format!("tale-disk-quota-helpers-down-{pid}"));
    let mut cleanup = Leftovers {
        names: vec![theirs.clone(), by_network.clone()],
        volumes: vec![],
        owners: vec![network.clone(), format!("{other}-sandbox-net")],
        dir: dir.clone(),
        network: network.clone(),
    };
    plant_helper(
        &theirs,
        &[
            format!("tale.stack={other}"),
            format!("tale.disk-quota-owner={other}-sandbox-net"),
        ],
    );
    plant_helper(&by_network, &[format!("tale.disk-quota-owner={network}")]);
    let mut spawner = quota_spawner(
        &dir,
        &network,
        &[
            ("SANDBOX_STACK_LABEL", stack.as_str()),
            ("TALE_TEST_CREATE_PAUSE_AT", "quota_helper_created"),
            ("TALE_TEST_CREATE_PAUSE_MS", "60000"),
        ],
    )
    .await;
    let (leftover, _) = leave_a_helper_behind(&mut spawner, &network).await;
    cleanup.names.push(leftover.clone());
    assert_eq!(
        helpers(&[format!("tale.stack={stack}")]),
        [(leftover.clone(), "created".to_string())],
        "the leftover carries the stack label"
    );
    let text = support::docker::quickstart_down(&stack, &dir);
    for gone in [&leftover, &by_network] {
        assert!(!exists(gone), "{gone} is left: {text}");
        assert!(
            text.contains(&format!(
                "removed leftover disk quota helper container {gone}\n"
            )),
            "{text}"
        );
    }
    assert!(
        exists(&theirs),
        "the other stack's helper was removed: {text}"
    );
    assert!(!text.contains(&theirs), "{text}");
    drop(cleanup);
}
