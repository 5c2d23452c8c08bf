//! Starting an exec and driving it from spawn to its one terminal event.
use super::super::limits::PIPE_DRAIN_GRACE;
use super::super::state::Daemon;
use super::journal::{Journal, JournalCursor};
use super::output::{pump, OutputStream};
use super::spec::{parse_exec_id, parse_spec, resolve_cwd, ExecSpec, SpecError, StdinMode};
use super::stdin::StdinState;
use super::tree::{ExecMark, Trees};
use super::{Exec, Phase, RegisterRefusal};
use crate::shared::clock::now_ms;
use crate::shared::protocol::runnerd::{ExecEvent, ExecRequestWire, FailCode, PtySize, Truncated};
use crate::shared::sys::pty::{PtyPair, WindowSize};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// A request refused before spawn: the single `fail` line of its stream.
pub fn refusal_event(err: SpecError) -> ExecEvent {
    ExecEvent::Fail {
        code: err.code,
        message: err.message,
        seq: None,
    }
}

fn refusal(refused: RegisterRefusal, exec_id: &str) -> SpecError {
    match refused {
        RegisterRefusal::Limit(cap) => SpecError {
            code: FailCode::ExecLimit,
            message: format!("live exec cap {cap} reached"),
        },
        RegisterRefusal::Duplicate => SpecError {
            code: FailCode::DuplicateExec,
            message: exec_id.to_owned(),
        },
        RegisterRefusal::ShuttingDown => SpecError {
            code: FailCode::BadRequest,
            message: "runnerd is shutting down".into(),
        },
    }
}

/// Validates `wire` in the specified order, registers the exec and starts its driver. Returns a
/// cursor over the whole journal (the primary response), or the refusal.
pub async fn start_exec(
    daemon: &Arc<Daemon>,
    wire: ExecRequestWire,
) -> Result<JournalCursor, SpecError> {
    daemon.execs.check_capacity().map_err(|r| refusal(r, ""))?;
    let exec_id = parse_exec_id(&wire)?;
    if daemon.execs.is_live(&exec_id) {
        return Err(refusal(RegisterRefusal::Duplicate, &exec_id));
    }
    let spec = parse_spec(exec_id, &wire)?;
    let root = daemon.root.clone();
    let cwd = spec.cwd.clone();
    let cwd = tokio::task::spawn_blocking(move || resolve_cwd(&root, cwd.as_deref()))
        .await
        .map_err(|_| SpecError {
            code: FailCode::BadRequest,
            message: "cwd check failed".into(),
        })??;

    let terminal = match spec.pty {
        None => None,
        Some(size) => Some(open_terminal(size).map_err(|err| SpecError {
            code: FailCode::BadRequest,
            message: format!("cannot open a pseudo-terminal: {err}"),
        })?),
    };
    let resize_handle = match &terminal {
        Some(pair) => Some(pair.master.try_clone().map_err(|err| SpecError {
            code: FailCode::BadRequest,
            message: format!("cannot open a pseudo-terminal: {err}"),
        })?),
        None => None,
    };
    let journal = Journal::new(&daemon.journal_budget, daemon.journal_memory_bytes);
    let exec = Exec::new(
        spec.exec_id.clone(),
        journal,
        now_ms(),
        spec.timeout,
        spec.stdin_mode,
        resize_handle,
    );
    daemon
        .execs
        .register(exec.clone())
        .map_err(|r| refusal(r, &spec.exec_id))?;
    // Held until the driver has written the initial stdin bytes, so an early `/stdin` waits for
    // them instead of finding no pipe yet.
    let stdin = exec
        .stdin
        .clone()
        .try_lock_owned()
        .expect("nobody else holds a new exec's stdin");
    let cursor = exec.journal.cursor(0);
    tokio::spawn(drive(daemon.clone(), exec, spec, cwd, stdin, terminal));
    Ok(cursor)
}

/// A pty of `size` whose master is non-blocking (it is read and written through tokio).
fn open_terminal(size: PtySize) -> std::io::Result<PtyPair> {
    let pair = crate::shared::sys::pty::open_pty(WindowSize {
        cols: size.cols,
        rows: size.rows,
    })?;
    let flags = nix::fcntl::fcntl(&pair.master, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&pair.master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(pair)
}

/// Owns the process from spawn to the terminal event, then retires the exec.
async fn drive(
    daemon: Arc<Daemon>,
    exec: Arc<Exec>,
    spec: ExecSpec,
    cwd: std::path::PathBuf,
    stdin: StdinGuard,
    terminal: Option<PtyPair>,
) {
    daemon.activity.touch();
    let started_at_ms = exec.started_at_ms;
    exec.journal.append(|seq| ExecEvent::Start {
        exec_id: exec.id.clone(),
        started_at_ms,
        seq,
    });
    let exit_code = match run_process(&daemon, &exec, &spec, &cwd, stdin, terminal).await {
        Ok(outcome) => {
            let (cancelled, timed_out) = {
                let mut control = exec.control();
                control.phase = Phase::Exited(Some(outcome.exit_code));
                (control.cancelled, control.timed_out)
            };
            exec.journal.append(|seq| ExecEvent::Exit {
                exit_code: outcome.exit_code,
                duration_ms: now_ms().saturating_sub(started_at_ms),
                truncated: outcome.truncated,
                timed_out,
                cancelled,
                seq,
            });
            Some(outcome.exit_code)
        }
        Err(err) => {
            exec.control().phase = Phase::Exited(None);
            exec.journal.append(|seq| ExecEvent::Fail {
                code: FailCode::BadRequest,
                message: format!("spawn failed: {err}"),
                seq: Some(seq),
            });
            None
        }
    };
    *exec.stdin.lock().await = StdinState::Closed;
    exec.release_terminal();
    exec.journal.finish();
    daemon.execs.retire(&exec);
    daemon.activity.touch();
    tracing::info!(exec_id = %exec.id, ?exit_code, "exec finished");
}

struct Outcome {
    exit_code: i32,
    truncated: Truncated,
}

async fn run_process(
    daemon: &Arc<Daemon>,
    exec: &Arc<Exec>,
    spec: &ExecSpec,
    cwd: &std::path::Path,
    stdin_guard: StdinGuard,
    terminal: Option<PtyPair>,
) -> std::io::Result<Outcome> {
    let (mut child, exit, mark_gid) = {
        let _permit = daemon
            .spawn_permits
            .acquire()
            .await
            .map_err(std::io::Error::other)?;
        let mut command = {
            let store = daemon.env_store();
            let slave = terminal.as_ref().map(|pair| &pair.slave);
            daemon.launcher.command(spec, cwd, store.vars(), slave)?
        };
        if let (Some(pair), Some((uid, gid))) = (&terminal, daemon.launcher.exec_user()) {
            // The exec user owns its terminal, as a login would (programs that reopen it need
            // that); best effort, the exec already holds it open.
            let _ = nix::unistd::fchown(
                &pair.slave,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            );
        }
        let daemon = daemon.clone();
        tokio::task::spawn_blocking(move || {
            // Only a root runnerd can hand out mark groups (allocation may scan /proc).
            let mark = daemon
                .launcher
                .exec_user()
                .and_then(|_| daemon.trees.allocate_mark());
            daemon.launcher.set_identity(&mut command, mark);
            daemon
                .reaper
                .spawn(&mut command)
                .map(|(child, exit)| (child, exit, mark))
        })
        .await
        .map_err(std::io::Error::other)??
    };
    let mark = ExecMark {
        leader: child.id() as i32,
        gid: mark_gid,
    };
    exec.set_mark(mark, &daemon.trees);
    tracing::info!(exec_id = %exec.id, pid = child.id(), ?mark_gid, "exec started");

    let (stdout, stderr, stdin) = match terminal {
        None => (
            pipe_receiver(child.stdout.take())?,
            Some(pipe_receiver(child.stderr.take())?),
            child
                .stdin
                .take()
                .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()?,
        ),
        Some(PtyPair { master, slave }) => {
            // Only the exec may hold the slave: the master reports the end of output once the
            // last process holding it is gone.
            drop(slave);
            let writer = master.try_clone()?;
            (
                // A pty master is no pipe; tokio reads and writes it all the same.
                pipe::Receiver::from_owned_fd_unchecked(master)?,
                None,
                Some(pipe::Sender::from_owned_fd_unchecked(writer)?),
            )
        }
    };
    let stdin_writer = start_stdin(stdin_guard, spec, stdin);

    let mut stdout_pump = tokio::spawn(pump(
        exec.journal.clone(),
        stdout,
        OutputStream::Stdout,
        spec.stdout_cap,
    ));
    // A pty has one output stream: everything arrives as `stdout`.
    let mut stderr_pump = match stderr {
        Some(stderr) => tokio::spawn(pump(
            exec.journal.clone(),
            stderr,
            OutputStream::Stderr,
            spec.stderr_cap,
        )),
        None => tokio::spawn(async { false }),
    };

    let status = wait_with_deadline(exec, exit, &daemon.trees).await;
    // A cancel or deadline ends the whole tree before `exit` is written: once it is, nothing the
    // exec started is left (and the pipes are closed, so the drain below ends at once).
    if let Some(ending) = exec.take_ending() {
        let _ = ending.await;
    }
    // The process is gone; a background child may still hold the pipes, so drain only for a grace
    // (not counting time the journal held the pumps back for readers that keep reading).
    // A pump that finished inside the grace must not be awaited again after it (a JoinHandle
    // polled after completion panics, and the exec would never end): keep what it returned.
    let (mut stdout_done, mut stderr_done) = (None, None);
    let drained = exec
        .journal
        .within_drain_grace(PIPE_DRAIN_GRACE, async {
            let stdout = (&mut stdout_pump).await.unwrap_or(false);
            stdout_done = Some(stdout);
            let stderr = (&mut stderr_pump).await.unwrap_or(false);
            stderr_done = Some(stderr);
            (stdout, stderr)
        })
        .await;
    let (stdout_truncated, stderr_truncated) = match drained {
        Some(flags) => flags,
        None => {
            let cut =
                async |done: Option<bool>, pump: &mut tokio::task::JoinHandle<bool>| match done {
                    Some(truncated) => truncated,
                    None => {
                        pump.abort();
                        pump.await.unwrap_or(false)
                    }
                };
            (
                cut(stdout_done, &mut stdout_pump).await,
                cut(stderr_done, &mut stderr_pump).await,
            )
        }
    };
    // A background child may hold stdin open without reading: never wait on the initial write.
    if let Some(writer) = stdin_writer {
        writer.abort();
    }
    Ok(Outcome {
        exit_code: status,
        truncated: Truncated {
            stdout: stdout_truncated,
            stderr: stderr_truncated,
        },
    })
}

fn pipe_receiver<T: Into<OwnedFd>>(pipe: Option<T>) -> std::io::Result<pipe::Receiver> {
    let fd: OwnedFd = pipe
        .ok_or_else(|| std::io::Error::other("child has no output pipe"))?
        .into();
    // A larger pipe means fewer wake-ups per megabyte; failure just keeps the default size.
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(super::super::limits::PIPE_BUFFER_BYTES as i32),
    );
    pipe::Receiver::from_owned_fd(fd)
}

/// Exclusive access to an exec's stdin state, held from registration until the initial bytes are in.
type StdinGuard = tokio::sync::OwnedMutexGuard<StdinState>;

/// Writes the initial stdin bytes; keeps the pipe in hold mode, closes it otherwise. The guard is
/// released only then, so no `/stdin` write can overtake the initial bytes.
fn start_stdin(
    mut state: StdinGuard,
    spec: &ExecSpec,
    sender: Option<pipe::Sender>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut sender = sender?;
    let initial = spec.stdin.clone();
    let hold = spec.stdin_mode != StdinMode::Close;
    if initial.is_empty() {
        // Nothing to write: no task needed (dropping the sender closes stdin in close mode).
        if hold {
            *state = StdinState::Held(sender);
        }
        return None;
    }
    Some(tokio::spawn(async move {
        if !initial.is_empty() && sender.write_all(&initial).await.is_err() {
            return;
        }
        if hold {
            *state = StdinState::Held(sender);
        }
    }))
}

/// Waits for the exit status, firing the (sliding) deadline if it passes first.
async fn wait_with_deadline(
    exec: &Arc<Exec>,
    mut exit: tokio::sync::oneshot::Receiver<super::super::init::ProcessExit>,
    trees: &Arc<Trees>,
) -> i32 {
    let mut deadline = exec.deadline.subscribe();
    let mut expired = false;
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            status = &mut exit => return status.map_or(-1, |s| s.exit_code()),
            _ = tokio::time::sleep_until(at), if !expired => {
                tracing::info!(exec_id = %exec.id, "exec deadline passed");
                exec.expire(trees);
                expired = true;
            }
            changed = deadline.changed(), if !expired => {
                if changed.is_err() {
                    expired = true;
                }
            }
        }
    }
}
