//! `/healthz`'s spawn probe: a health check that stays green while execs cannot start is a lie.
//!
//! The probe walks the path an exec takes: a blocking thread, then a real spawn of `<shell> -c :`
//! as the exec user (fork, setuid, exec, its descriptors), reaped through the one reaper — each
//! step within [`HEALTH_PROBE_TIMEOUT`]. It does not queue for a spawn slot: behind a burst of
//! execs that would only measure the burst (the blocking pool keeps threads beyond the spawn
//! slots and file permits, so the probe still gets one). Concurrent health checks share one probe,
//! and a result is reused for [`HEALTH_PROBE_REUSE`] so polling `/healthz` costs at most one
//! process per interval.
use super::limits::{HEALTH_PROBE_REUSE, HEALTH_PROBE_TIMEOUT};
use super::state::Daemon;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// Why runnerd cannot spawn now.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unhealthy {
    /// Every blocking thread stayed busy for the probe timeout, so an exec could not start either.
    #[error("blocking threads stuck: no thread picked up the spawn probe in time")]
    BlockingThreadsStuck,
    /// The probe process could not be started. The cause is in the message too: the message is
    /// the `unhealthy` field of `/healthz`. Shared (`Arc`) because one probe's answer is reused.
    #[error("spawn failed: {0}")]
    SpawnFailed(#[source] Arc<std::io::Error>),
    /// The probe (`<shell> -c :` as the exec user) started but outlived the probe timeout; it is
    /// killed.
    #[error("spawn probe did not exit in time")]
    ProbeHung,
}

/// The last probe's time and result, shared by concurrent health checks.
#[derive(Default)]
pub struct SpawnProbe {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), Unhealthy>)>>,
}

impl SpawnProbe {
    /// Whether an exec could be spawned now (reusing a fresh enough earlier answer).
    pub async fn check(&self, daemon: &Arc<Daemon>) -> Result<(), Unhealthy> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < HEALTH_PROBE_REUSE {
                return result.clone();
            }
        }
        let result = probe(daemon).await;
        if let Err(reason) = &result {
            tracing::warn!(%reason, "spawn probe failed: reporting unhealthy");
        }
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

async fn probe(daemon: &Arc<Daemon>) -> Result<(), Unhealthy> {
    let mut command = Command::new(daemon.launcher.shell());
    command
        .args(["-c", ":"])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = daemon.launcher.exec_user() {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, gid);
    }
    crate::shared::sys::rlimit::restore_inherited_nofile_limit(&mut command);
    let reaper = daemon.reaper.clone();
    let spawn = tokio::task::spawn_blocking(move || {
        reaper
            .spawn(&mut command)
            .map(|(child, exit)| (child.id(), exit))
    });
    let (pid, exit) = tokio::time::timeout(HEALTH_PROBE_TIMEOUT, spawn)
        .await
        .map_err(|_| Unhealthy::BlockingThreadsStuck)?
        .map_err(|_| Unhealthy::BlockingThreadsStuck)?
        .map_err(|err| Unhealthy::SpawnFailed(Arc::new(err)))?;
    if tokio::time::timeout(HEALTH_PROBE_TIMEOUT, exit)
        .await
        .is_err()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        return Err(Unhealthy::ProbeHung);
    }
    Ok(())
}
