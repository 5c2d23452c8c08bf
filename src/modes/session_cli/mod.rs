//! `tale session …`: operator one-liners against a spawner, every request HMAC-signed with
//! `SANDBOX_TOKEN` (from the environment or `--token-file`). People get tables, scripts get JSON;
//! `exec` streams the command's output to this terminal and exits with the command's exit code.
mod client;
mod cp;
mod render;
mod shell;
mod stdin;
mod stream;
mod terminal;

use crate::shared::clock::now_ms;
use client::{check_id, parse_base_url, refusal, session_missing, CliClient, CliError};
use hyper::Method;
use render::Format;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use stdin::StdinPlan;
use stream::Target;

/// Exit code when the CLI itself fails (bad flags or configuration, spawner unreachable).
pub const CLI_FAILURE: u8 = 125;
/// Exit code when the spawner refused (401, unknown session or exec, bad request).
pub const REFUSED: u8 = 1;
/// Longest `create` waits in all for an earlier create of the id (503 `create_in_progress`)
/// before it gives the refusal to the caller.
pub const CREATE_IN_PROGRESS_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Flags shared by every `tale session` command.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Spawner base URL (http://HOST[:PORT]).
    #[arg(
        long,
        env = "TALE_SPAWNER_URL",
        default_value = "http://127.0.0.1:8003"
    )]
    pub url: String,
    /// File holding the spawner's SANDBOX_TOKEN (else the SANDBOX_TOKEN environment variable; one
    /// of the two is required unless --unsigned).
    #[arg(long, env = "TALE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Send unsigned requests (only a spawner started without SANDBOX_TOKEN accepts them).
    #[arg(long, conflicts_with = "token_file")]
    pub unsigned: bool,
    /// Print replies as JSON (the default when stdout is not a terminal).
    #[arg(long, global = true, conflicts_with = "table")]
    pub json: bool,
    /// Print replies as tables (the default on a terminal).
    #[arg(long, global = true)]
    pub table: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create (or resume) a session.
    Create {
        id: String,
        #[arg(long, default_value = "default-org")]
        org: String,
        #[arg(long, default_value = "default")]
        profile: String,
        /// Seed env, NAME=VALUE (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
    },
    /// List sessions.
    Ls {
        #[arg(long)]
        org: Option<String>,
    },
    /// Show one session.
    Get { id: String },
    /// List a session's execs (running and recently finished).
    Execs { id: String },
    /// Run a command in a session and stream its output: `exec ID 'shell line'`, or
    /// `exec ID --argv -- PROGRAM ARG…`. Prints the exec id on stderr; Ctrl-C detaches (the exec
    /// keeps running; `attach` resumes).
    Exec {
        id: String,
        /// Exec id [default: a fresh one].
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run the words as an argv (no shell); a missing program exits 127.
        #[arg(long)]
        argv: bool,
        /// Forward stdin: piped input is sent whole (up to 2 MiB, any bytes); from a terminal each
        /// line is sent as typed (any text; for keystrokes use `tale session shell`).
        #[arg(short, long)]
        interactive: bool,
        /// The shell line (its words are joined by spaces), or with --argv the program and its
        /// arguments; put `--` before words that start with `-`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Re-attach to an exec and stream its output (from the start, or after --since-seq). A shell
    /// (a pty exec) attached from a terminal is interactive again, as `shell` left it.
    Attach {
        id: String,
        exec_id: String,
        #[arg(long, default_value_t = 0)]
        since_seq: u64,
        /// Keys that detach from an interactive shell (comma-separated; empty: never).
        #[arg(long, default_value = terminal::DEFAULT_DETACH_KEYS)]
        detach_keys: String,
    },
    /// An interactive shell in the session on a pseudo-terminal: keys (Ctrl-C too) go to the
    /// session, the size follows this terminal; detach with the detach keys and come back with
    /// `attach`. Exits with the shell's exit code.
    Shell {
        /// Session id.
        id: String,
        /// Exec id (default `shell-<unix ms>`).
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(long)]
        cwd: Option<String>,
        /// Deadline of the shell (the spawner clamps it to its maximum); each key sent and each
        /// attach restarts it.
        #[arg(long, default_value_t = shell::DEFAULT_SHELL_TIMEOUT_MS)]
        timeout_ms: u64,
        /// Keys that detach, leaving the shell running (comma-separated; empty: never).
        #[arg(long, default_value = terminal::DEFAULT_DETACH_KEYS)]
        detach_keys: String,
        /// Run this command line on the terminal instead of a login shell.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Cancel a running exec (exits 1 when it is unknown or already finished).
    Cancel { id: String, exec_id: String },
    /// Destroy a session and its workspace (exits 1 when it does not exist).
    Rm { id: String },
    /// Copy files or directory trees of any size between this machine and a session:
    /// `cp ./local SESSION:path` uploads, `cp SESSION:path ./local` downloads (a directory copies
    /// its files recursively; symlinks, special files and empty directories are left out).
    Cp { source: String, dest: String },
}

fn token(args: &Args) -> Result<Option<Vec<u8>>, CliError> {
    if args.unsigned {
        return Ok(None);
    }
    if let Some(file) = &args.token_file {
        let text = std::fs::read_to_string(file).map_err(|err| {
            CliError::local(format!(
                "cannot read --token-file {}: {err}",
                file.display()
            ))
        })?;
        if text.trim().is_empty() {
            return Err(CliError::local(format!(
                "--token-file {} is empty",
                file.display()
            )));
        }
        return Ok(Some(text.trim().as_bytes().to_vec()));
    }
    match std::env::var("SANDBOX_TOKEN") {
        Ok(token) if !token.is_empty() => Ok(Some(token.into_bytes())),
        _ => Err(CliError::local(
            "SANDBOX_TOKEN is not set: export SANDBOX_TOKEN=<the spawner's token> or pass \
             --token-file FILE (--unsigned for a spawner started without a token)",
        )),
    }
}

/// Runs one CLI command.
pub fn run(args: Args) -> ExitCode {
    let format = if args.json {
        Format::Json
    } else if args.table || std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    };
    let setup = token(&args).and_then(|token| Ok((token, parse_base_url(&args.url)?)));
    let (token, base) = match setup {
        Ok(setup) => setup,
        Err(err) => return fail(err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(CliError::local(err.to_string())),
    };
    let client = CliClient::new(base, token);
    let outcome = runtime.block_on(execute(&client, args.command, format));
    // A stdin reader may still be blocked on the terminal: do not wait for it.
    runtime.shutdown_background();
    outcome.unwrap_or_else(fail)
}

fn fail(err: CliError) -> ExitCode {
    eprintln!("tale session: {}", err.message);
    ExitCode::from(err.code)
}

/// Prints a 2xx reply (JSON, or `human` on a terminal); a refusal becomes an error.
fn show(
    reply: client::Reply,
    format: Format,
    session: Option<&str>,
    human: impl FnOnce(&Value) -> String,
) -> Result<ExitCode, CliError> {
    match (reply.status, session) {
        (200..=299, _) => {}
        (404, Some(id)) => return Err(session_missing(id)),
        (status, _) => return Err(refusal(status, &reply.body)),
    }
    match format {
        Format::Json => render::print_json(&reply.body),
        Format::Table => render::print_text(&human(&reply.body)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute(
    client: &CliClient,
    command: Command,
    format: Format,
) -> Result<ExitCode, CliError> {
    // Relative times are taken after the reply, so nothing the spawner just made is "in the future".
    let now = now_ms;
    match command {
        Command::Create {
            id,
            org,
            profile,
            env,
        } => {
            check_id("session", &id)?;
            let env: serde_json::Map<String, Value> = env
                .iter()
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                        .ok_or(CliError::local(format!(
                            "--env {pair}: expected NAME=VALUE"
                        )))
                })
                .collect::<Result<_, _>>()?;
            let body =
                json!({"sessionId": id, "organizationId": org, "profile": profile, "env": env});
            let reply = create_waiting(client, &id, &body).await?;
            show(reply, format, None, |v| {
                render::session_detail(&v["session"], now())
            })
        }
        Command::Ls { org } => {
            let path = match org {
                Some(org) => format!(
                    "/v1/sessions?organizationId={}",
                    form_urlencoded::byte_serialize(org.as_bytes()).collect::<String>()
                ),
                None => "/v1/sessions".into(),
            };
            let reply = client.json(Method::GET, &path, None).await?;
            show(reply, format, None, |v| render::sessions_table(v, now()))
        }
        Command::Get { id } => {
            check_id("session", &id)?;
            let reply = client
                .json(Method::GET, &format!("/v1/sessions/{id}"), None)
                .await?;
            show(reply, format, Some(&id), |v| {
                render::session_detail(&v["session"], now())
            })
        }
        Command::Execs { id } => {
            check_id("session", &id)?;
            let reply = client
                .json(Method::GET, &format!("/v1/sessions/{id}/exec"), None)
                .await?;
            show(reply, format, Some(&id), |v| render::execs_table(v, now()))
        }
        Command::Rm { id } => {
            check_id("session", &id)?;
            let reply = client
                .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
                .await?;
            if reply.status == 200 && reply.body["destroyed"] == json!(false) {
                return Err(match (&reply.body["busy"], reply.body["error"].as_str()) {
                    (Value::Bool(true), _) => CliError::refused(format!(
                        "session {id:?} is busy and was not removed; try again"
                    )),
                    (_, Some(error)) => {
                        CliError::refused(format!("session {id:?} was not removed: {error}"))
                    }
                    _ => session_missing(&id),
                });
            }
            show(reply, format, Some(&id), |_| {
                format!("removed session {id}\n")
            })
        }
        Command::Cancel { id, exec_id } => cancel(client, &id, &exec_id, format).await,
        Command::Cp { source, dest } => {
            let copied = cp::copy(
                client,
                cp::Location::parse(&source),
                cp::Location::parse(&dest),
            )
            .await?;
            for skipped in &copied.skipped {
                eprintln!("tale session: left out {skipped} (not a regular file or directory)");
            }
            match format {
                Format::Json => render::print_json(&json!(copied)),
                Format::Table => render::print_text(&format!(
                    "copied {} file(s), {} bytes\n",
                    copied.files, copied.bytes
                )),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            id,
            exec_id,
            cwd,
            timeout_ms,
            argv,
            interactive,
            command,
        } => {
            check_id("session", &id)?;
            let exec_id = exec_id.unwrap_or_else(|| format!("cli-{}", now_ms()));
            check_id("exec", &exec_id)?;
            let stdin = StdinPlan::from_process(interactive)?;
            let mut body = json!({"execId": exec_id, "collectOutput": false});
            let map = body.as_object_mut().expect("an object");
            if argv {
                map.insert("command".into(), json!(command));
            } else {
                map.insert("shell".into(), json!(command.join(" ")));
            }
            if let Some(cwd) = cwd {
                map.insert("cwd".into(), json!(cwd));
            }
            if let Some(timeout) = timeout_ms {
                map.insert("timeoutMs".into(), json!(timeout));
            }
            stdin.apply(map);
            let target = Target {
                session: &id,
                exec_id: &exec_id,
                program: argv.then(|| command[0].as_str()),
            };
            let path = format!("/v1/sessions/{id}/exec");
            stream::run(client, &path, Some(&body), target, stdin).await
        }
        Command::Shell {
            id,
            exec_id,
            cwd,
            timeout_ms,
            detach_keys,
            command,
        } => {
            check_id("session", &id)?;
            let exec_id = exec_id.unwrap_or_else(|| format!("shell-{}", now_ms()));
            check_id("exec", &exec_id)?;
            let detach_keys = terminal::parse_detach_keys(&detach_keys)?;
            shell::require_terminal("`tale session shell`")?;
            let body = shell::shell_request(&exec_id, &command, cwd.as_deref(), timeout_ms);
            let session = shell::Interactive {
                target: Target {
                    session: &id,
                    exec_id: &exec_id,
                    program: None,
                },
                body: Some(body),
                path: format!("/v1/sessions/{id}/exec"),
                detach_keys,
            };
            shell::run(client, session).await
        }
        Command::Attach {
            id,
            exec_id,
            since_seq,
            detach_keys,
        } => {
            check_id("session", &id)?;
            check_id("exec", &exec_id)?;
            let detach_keys = terminal::parse_detach_keys(&detach_keys)?;
            if shell::require_terminal("").is_ok() && is_pty_exec(client, &id, &exec_id).await? {
                let session = shell::Interactive {
                    target: Target {
                        session: &id,
                        exec_id: &exec_id,
                        program: None,
                    },
                    body: None,
                    path: format!("/v1/sessions/{id}/exec/{exec_id}/attach?sinceSeq={since_seq}"),
                    detach_keys,
                };
                return shell::run(client, session).await;
            }
            let path = format!("/v1/sessions/{id}/exec/{exec_id}/attach?sinceSeq={since_seq}");
            let target = Target {
                session: &id,
                exec_id: &exec_id,
                program: None,
            };
            stream::run(client, &path, None, target, StdinPlan::Closed).await
        }
    }
}

/// Whether the session lists `exec_id` as a running pty exec (an interactive attach).
/// `POST /v1/sessions`, waiting out 503 `create_in_progress` (an earlier create of the id that
/// crashed before starting its container, or another replica's in flight) as its `retry-after`
/// says, up to [`CREATE_IN_PROGRESS_MAX_WAIT`] in all; each wait is said on stderr.
async fn create_waiting(
    client: &CliClient,
    id: &str,
    body: &Value,
) -> Result<client::Reply, CliError> {
    let give_up = std::time::Instant::now() + CREATE_IN_PROGRESS_MAX_WAIT;
    loop {
        let reply = client
            .json(Method::POST, "/v1/sessions", Some(body))
            .await?;
        let wait = match (
            reply.status,
            reply.body["error"].as_str(),
            reply.retry_after,
        ) {
            (503, Some("create_in_progress"), Some(secs)) => std::time::Duration::from_secs(secs),
            _ => return Ok(reply),
        };
        if std::time::Instant::now() + wait > give_up {
            return Ok(reply);
        }
        eprintln!(
            "session {id}: an earlier create of it made its container but has not started it; retrying in {} s",
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
    }
}

async fn is_pty_exec(client: &CliClient, id: &str, exec_id: &str) -> Result<bool, CliError> {
    let reply = client
        .json(Method::GET, &format!("/v1/sessions/{id}/exec"), None)
        .await?;
    if reply.status == 404 {
        return Err(session_missing(id));
    }
    Ok(reply.body["execs"].as_array().is_some_and(|execs| {
        execs.iter().any(|exec| {
            exec["execId"] == json!(exec_id)
                && exec["pty"] == json!(true)
                && exec["state"] == json!("running")
        })
    }))
}

/// Cancels a running exec; an unknown or finished one is an error that says which.
async fn cancel(
    client: &CliClient,
    id: &str,
    exec_id: &str,
    format: Format,
) -> Result<ExitCode, CliError> {
    check_id("session", id)?;
    check_id("exec", exec_id)?;
    let reply = client
        .json(
            Method::POST,
            &format!("/v1/sessions/{id}/exec/{exec_id}/cancel"),
            None,
        )
        .await?;
    if reply.status == 200 && reply.body["killed"] == json!(false) {
        let status = client
            .json(
                Method::GET,
                &format!("/v1/sessions/{id}/exec/{exec_id}"),
                None,
            )
            .await?;
        return Err(CliError::refused(match status.body["state"].as_str() {
            Some("exited") => format!(
                "exec {exec_id:?} had already finished (exit code {})",
                status.body["exitCode"]
            ),
            _ => format!(
                "exec {exec_id:?} not found in session {id:?} (list its execs with `tale session execs {id}`)"
            ),
        }));
    }
    show(reply, format, Some(id), |_| {
        format!("cancelled exec {exec_id}\n")
    })
}
