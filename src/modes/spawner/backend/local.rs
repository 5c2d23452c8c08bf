//! The `local` backend: each session is a `tale runnerd` child process on 127.0.0.1 with its own
//! workspace directory and port. **No isolation at all** — execs run on the host (as the exec user
//! when the spawner runs as root). It exists for development, tests and quick starts, and says so
//! in its logs.
//!
//! State lives on disk so a restarted spawner re-adopts live sessions: under the state root,
//! `ses-<id>/` is the workspace (kept by stop, removed by destroy) and `.state/<id>.json` records
//! the session (its existence means "compute exists", like a Docker container), next to the token
//! file `.state/<id>.token` (0600) and runnerd's log. runnerd processes run in their own session, so
//! they outlive a spawner that is killed.
use super::{
    wait_for_runnerd, Backend, BackendError, BackendKind, BackendResult, BoxFuture, ListedSession,
    SessionSpec,
};
use crate::shared::protocol::runnerd::is_valid_id;
use crate::shared::sys::proctree;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long `stop` waits for runnerd to exit after SIGTERM (runnerd then ends every process of the
/// session itself) before the backend kills what is left of the session and then runnerd.
pub const LOCAL_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often exited runnerd children are reaped.
pub const LOCAL_REAP_INTERVAL: Duration = Duration::from_secs(2);

/// The on-disk record of a local session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct LocalRecord {
    session_id: String,
    organization_id: String,
    profile: String,
    created_at_ms: u64,
    ttl_ms: u64,
    idle_timeout_ms: u64,
    port: u16,
    pid: i32,
}

/// Sessions as runnerd child processes.
pub struct LocalBackend {
    root: PathBuf,
    binary: PathBuf,
    children: Arc<Mutex<HashMap<String, Child>>>,
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let context = context.into();
    move |source| BackendError::Io { context, source }
}

impl LocalBackend {
    /// A backend keeping sessions under `root`, running `binary` (normally this executable).
    pub fn new(root: &Path, binary: &Path) -> BackendResult<Arc<LocalBackend>> {
        std::fs::create_dir_all(root.join(".state"))
            .map_err(io_error(format!("cannot create {}", root.display())))?;
        use std::os::unix::fs::PermissionsExt;
        // The exec user must reach its workspace; the state dir stays private.
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
        let _ =
            std::fs::set_permissions(root.join(".state"), std::fs::Permissions::from_mode(0o700));
        tracing::warn!(
            root = %root.display(),
            "local backend: sessions are plain processes on this host with NO isolation; use it for development and tests only"
        );
        let backend = Arc::new(LocalBackend {
            root: root.to_path_buf(),
            binary: binary.to_path_buf(),
            children: Arc::new(Mutex::new(HashMap::new())),
        });
        let weak: Weak<Mutex<HashMap<String, Child>>> = Arc::downgrade(&backend.children);
        // Owned by the backend: ends once the backend is dropped.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCAL_REAP_INTERVAL).await;
                let Some(children) = weak.upgrade() else {
                    return;
                };
                let mut children = children.lock().unwrap_or_else(|e| e.into_inner());
                children.retain(|_, child| matches!(child.try_wait(), Ok(None)));
            }
        });
        Ok(backend)
    }

    fn workspace(&self, id: &str) -> PathBuf {
        self.root.join(format!("ses-{id}"))
    }

    fn state_file(&self, id: &str, ext: &str) -> PathBuf {
        self.root.join(".state").join(format!("{id}.{ext}"))
    }

    fn read_record(&self, id: &str) -> Option<LocalRecord> {
        let text = std::fs::read_to_string(self.state_file(id, "json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether `record.pid` is still this session's runnerd (not a reused pid).
    fn is_running(&self, record: &LocalRecord) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", record.pid)) else {
            return false;
        };
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", record.pid)).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
        let workspace = self.workspace(&record.session_id);
        let needle = format!("--workspace-root\0{}\0", workspace.display());
        !zombie && String::from_utf8_lossy(&cmdline).contains(&needle)
    }

    fn check_id(id: &str) -> BackendResult<()> {
        if is_valid_id(id) {
            Ok(())
        } else {
            Err(BackendError::Invalid {
                what: "session id",
                value: id.to_owned(),
            })
        }
    }

    fn spawn_runnerd(&self, spec: &SessionSpec, port: u16) -> BackendResult<Child> {
        let id = &spec.session_id;
        let token_file = self.state_file(id, "token");
        write_private(&token_file, spec.runnerd_token.as_bytes())
            .map_err(io_error("cannot write the runnerd token file"))?;
        let log = std::fs::File::create(self.state_file(id, "log"))
            .map_err(io_error("cannot create the runnerd log"))?;
        let (uid, gid) = spec.resources.exec_user;
        let mut command = Command::new(&self.binary);
        command
            .arg("runnerd")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workspace-root")
            .arg(self.workspace(id))
            .arg("--exec-user")
            .arg(format!("{uid}:{gid}"))
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env(
                "LANG",
                std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            )
            .env("TALE_RUNNERD_TOKEN_FILE", &token_file)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(io_error("cannot share the runnerd log"))?,
            )
            .stderr(log);
        if let Ok(filter) = std::env::var("RUST_LOG") {
            command.env("RUST_LOG", filter);
        }
        command.envs(super::runnerd_tls_env(spec));
        // Its own session: a Ctrl-C or kill of the spawner's group leaves sessions running.
        crate::shared::sys::spawn_in_new_session(&mut command);
        command.spawn().map_err(io_error("cannot start runnerd"))
    }

    fn remove_state(&self, id: &str) {
        for ext in ["json", "token"] {
            let _ = std::fs::remove_file(self.state_file(id, ext));
        }
    }

    async fn stop_process(&self, record: &LocalRecord) {
        let child = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record.session_id);
        if !self.is_running(record) {
            return;
        }
        let pid = Pid::from_raw(record.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + LOCAL_STOP_GRACE;
        while self.is_running(record) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.is_running(record) {
            // runnerd did not finish its own shutdown. Freeze it (it stays the subreaper of its
            // session, so nothing escapes while it is stopped), end every process below it, then
            // kill it: a session's processes never outlive its runnerd on the host.
            tracing::warn!(session_id = %record.session_id, "runnerd did not exit in time; killing its processes");
            let _ = kill(pid, Signal::SIGSTOP);
            let _ = tokio::task::spawn_blocking(move || {
                proctree::kill_rounds(
                    &proctree::DescendantsOf(pid.as_raw()),
                    proctree::KILL_ROUNDS_LIMIT,
                )
            })
            .await;
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = child {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn free_port() -> BackendResult<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("cannot find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_error("cannot find a free port"))?
        .port())
}

impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn create_session<'a>(
        &'a self,
        spec: &'a SessionSpec,
        deadline: Duration,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            let id = &spec.session_id;
            Self::check_id(id)?;
            if let Some(record) = self.read_record(id) {
                if self.is_running(&record) {
                    return Err(BackendError::Exists(id.clone()));
                }
                self.remove_state(id);
            }
            let workspace = self.workspace(id);
            let preexisting = workspace.exists();
            std::fs::create_dir_all(&workspace).map_err(io_error("cannot create the workspace"))?;
            let port = free_port()?;
            let mut child = self.spawn_runnerd(spec, port)?;
            let record = LocalRecord {
                session_id: id.clone(),
                organization_id: spec.organization_id.clone(),
                profile: spec.profile.clone(),
                created_at_ms: spec.created_at_ms,
                ttl_ms: spec.ttl_ms,
                idle_timeout_ms: spec.idle_timeout_ms,
                port,
                pid: child.id() as i32,
            };
            let url = format!("http://127.0.0.1:{port}");
            let written = write_private(
                &self.state_file(id, "json"),
                &serde_json::to_vec(&record).expect("records serialize"),
            );
            let ready = match written {
                Err(source) => Err(BackendError::Io {
                    context: "cannot write the session record".into(),
                    source,
                }),
                Ok(()) => {
                    let log = self.state_file(id, "log");
                    wait_for_runnerd(&url, spec, deadline, || {
                        let exited = child.try_wait().ok().flatten();
                        let log = log.clone();
                        async move {
                            match exited {
                                None => Ok(()),
                                Some(status) => Err(format!(
                                    "runnerd exited ({status}): {}",
                                    last_lines(&log, 10)
                                )),
                            }
                        }
                    })
                    .await
                }
            };
            match ready {
                Ok(()) => {
                    self.children
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), child);
                    tracing::info!(session_id = %id, port, resumed = preexisting, "local session ready");
                    Ok(url)
                }
                Err(err) => {
                    let _ = child.kill();
                    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
                    self.remove_state(id);
                    if !preexisting {
                        let _ = std::fs::remove_dir_all(&workspace);
                    }
                    Err(err)
                }
            }
        })
    }

    fn resolve_endpoint<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            let record = self.read_record(session_id).ok_or_else(|| {
                BackendError::Engine(format!("session {session_id} has no runnerd"))
            })?;
            Ok(format!("http://127.0.0.1:{}", record.port))
        })
    }

    fn session_exists<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            Ok(self
                .read_record(session_id)
                .is_some_and(|r| self.is_running(&r)))
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            let Some(record) = self.read_record(session_id) else {
                return Ok(false);
            };
            self.stop_process(&record).await;
            self.remove_state(session_id);
            tracing::info!(session_id, "local session stopped; workspace kept");
            Ok(true)
        })
    }

    fn destroy_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            Self::check_id(session_id)?;
            let had_compute = self.stop_session(session_id).await?;
            let workspace = self.workspace(session_id);
            let had_workspace = workspace.exists();
            if had_workspace {
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&workspace))
                    .await
                    .map_err(BackendError::Task)?
                    .map_err(io_error("cannot remove the workspace"))?;
            }
            let _ = std::fs::remove_file(self.state_file(session_id, "log"));
            Ok(had_compute || had_workspace)
        })
    }

    fn list_sessions<'a>(
        &'a self,
        organization_id: Option<&'a str>,
    ) -> BoxFuture<'a, BackendResult<Vec<ListedSession>>> {
        Box::pin(async move {
            let dir = std::fs::read_dir(self.root.join(".state"))
                .map_err(io_error("cannot list sessions"))?;
            let mut sessions = Vec::new();
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".json") else {
                    continue;
                };
                let Some(record) = self.read_record(id) else {
                    continue;
                };
                if organization_id.is_some_and(|org| org != record.organization_id) {
                    continue;
                }
                sessions.push(ListedSession {
                    running: self.is_running(&record),
                    session_id: record.session_id,
                    organization_id: record.organization_id,
                    profile: record.profile,
                    created_at_ms: record.created_at_ms,
                    ttl_ms: record.ttl_ms,
                    idle_timeout_ms: record.idle_timeout_ms,
                });
            }
            sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
            Ok(sessions)
        })
    }

    fn health(&self) -> BoxFuture<'_, BackendResult<serde_json::Value>> {
        Box::pin(async move {
            Ok(serde_json::json!({"backend": "local", "root": self.root.display().to_string()}))
        })
    }

    /// A local session's workspace is a host directory, so its execs' HOME is too.
    fn exec_home(&self, session_id: &str) -> String {
        self.workspace(session_id)
            .join(".home")
            .display()
            .to_string()
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    tail.chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}
