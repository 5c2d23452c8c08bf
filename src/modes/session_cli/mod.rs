//! `tale session …`: operator one-liners against a spawner, every request HMAC-signed with
//! `SANDBOX_TOKEN` (from the environment or `--token-file`). `exec` streams the command's output to
//! this terminal and exits with the command's exit code.
use crate::shared::clock::now_ms;
use crate::shared::hmac::SignedHeaders;
use crate::shared::sse::SseParser;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code when the CLI itself fails (as opposed to the remote command).
pub const CLI_FAILURE: u8 = 125;

/// Flags shared by every `tale session` command.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Spawner base URL.
    #[arg(
        long,
        env = "TALE_SPAWNER_URL",
        default_value = "http://127.0.0.1:8003"
    )]
    pub url: String,
    /// File holding SANDBOX_TOKEN (else the SANDBOX_TOKEN environment variable; none = unsigned).
    #[arg(long, env = "TALE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
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
    /// Run a shell command line (or, after `--`, an argv) and stream its output.
    Exec {
        id: String,
        /// Exec id [default: a fresh one].
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run as argv instead of a shell line.
        #[arg(long)]
        argv: bool,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Re-attach to an exec and stream the rest of its output.
    Attach {
        id: String,
        exec_id: String,
        #[arg(long, default_value_t = 0)]
        since_seq: u64,
    },
    /// Cancel an exec.
    Cancel { id: String, exec_id: String },
    /// Destroy a session and its workspace.
    Rm { id: String },
}

struct SpawnerClient {
    base: String,
    token: Option<Vec<u8>>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl SpawnerClient {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base.trim_end_matches('/')));
        if let Some(token) = &self.token {
            let signed = SignedHeaders::new(token, method.as_str(), path, &bytes, now_ms());
            builder = signed.apply(builder);
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        self.http
            .request(request)
            .await
            .map_err(|e| format!("cannot reach the spawner at {}: {e}", self.base))
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tale session: {message}");
    ExitCode::from(CLI_FAILURE)
}

fn print_json(status: u16, value: &Value) -> ExitCode {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
    if (200..300).contains(&status) {
        ExitCode::SUCCESS
    } else {
        eprintln!("tale session: the spawner answered {status}");
        ExitCode::from(1)
    }
}

/// Runs one CLI command.
pub fn run(args: Args) -> ExitCode {
    let token = match (&args.token_file, std::env::var("SANDBOX_TOKEN")) {
        (Some(file), _) => match std::fs::read_to_string(file) {
            Ok(text) => Some(text.trim().as_bytes().to_vec()),
            Err(err) => return fail(format!("cannot read {}: {err}", file.display())),
        },
        (None, Ok(token)) if !token.is_empty() => Some(token.into_bytes()),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(err),
    };
    runtime.block_on(async move {
        let client = SpawnerClient {
            base: args.url.clone(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        match execute(&client, args.command).await {
            Ok(code) => code,
            Err(message) => fail(message),
        }
    })
}

async fn execute(client: &SpawnerClient, command: Command) -> Result<ExitCode, String> {
    Ok(match command {
        Command::Create {
            id,
            org,
            profile,
            env,
        } => {
            let env: serde_json::Map<String, Value> = env
                .iter()
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                        .ok_or(format!("--env {pair}: expected NAME=VALUE"))
                })
                .collect::<Result<_, _>>()?;
            let body =
                json!({"sessionId": id, "organizationId": org, "profile": profile, "env": env});
            let (status, value) = client
                .json(Method::POST, "/v1/sessions", Some(&body))
                .await?;
            print_json(status, &value)
        }
        Command::Ls { org } => {
            let path = match org {
                Some(org) => format!("/v1/sessions?organizationId={org}"),
                None => "/v1/sessions".into(),
            };
            let (status, value) = client.json(Method::GET, &path, None).await?;
            print_json(status, &value)
        }
        Command::Get { id } => {
            let (status, value) = client
                .json(Method::GET, &format!("/v1/sessions/{id}"), None)
                .await?;
            print_json(status, &value)
        }
        Command::Rm { id } => {
            let (status, value) = client
                .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
                .await?;
            print_json(status, &value)
        }
        Command::Cancel { id, exec_id } => {
            let (status, value) = client
                .json(
                    Method::POST,
                    &format!("/v1/sessions/{id}/exec/{exec_id}/cancel"),
                    None,
                )
                .await?;
            print_json(status, &value)
        }
        Command::Exec {
            id,
            exec_id,
            cwd,
            timeout_ms,
            argv,
            command,
        } => {
            let exec_id = exec_id.unwrap_or_else(|| format!("cli-{}", now_ms()));
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
            let response = client
                .send(
                    Method::POST,
                    &format!("/v1/sessions/{id}/exec"),
                    Some(&body),
                )
                .await?;
            stream(response, &exec_id).await?
        }
        Command::Attach {
            id,
            exec_id,
            since_seq,
        } => {
            let response = client
                .send(
                    Method::GET,
                    &format!("/v1/sessions/{id}/exec/{exec_id}/attach?sinceSeq={since_seq}"),
                    None,
                )
                .await?;
            stream(response, &exec_id).await?
        }
    })
}

/// Prints an exec's SSE stream; returns the command's exit code.
async fn stream(
    response: hyper::Response<hyper::body::Incoming>,
    exec_id: &str,
) -> Result<ExitCode, String> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        return Err(format!(
            "the spawner answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let mut parser = SseParser::default();
    let mut last_seq = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("stream broke after seq {last_seq}; resume with `tale session attach <id> {exec_id} --since-seq {last_seq}`: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for event in parser.feed(&data) {
            let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            if let Some(seq) = value.get("seq").and_then(Value::as_u64) {
                last_seq = seq;
            }
            match event.event.as_str() {
                "stdout" => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(value["text"].as_str().unwrap_or("").as_bytes());
                    let _ = out.flush();
                }
                "stderr" => {
                    let _ = std::io::stderr()
                        .write_all(value["text"].as_str().unwrap_or("").as_bytes());
                }
                "gap" => eprintln!(
                    "tale session: output {}..{} was lost (beyond the replay budget)",
                    value["fromSeq"], value["toSeq"]
                ),
                "error" => {
                    return Err(value["message"]
                        .as_str()
                        .unwrap_or("stream error")
                        .to_owned())
                }
                "result" => {
                    if let Some(message) = value["errorMessage"].as_str() {
                        eprintln!(
                            "tale session: {} ({})",
                            message,
                            value["errorCode"].as_str().unwrap_or("")
                        );
                    }
                    return Ok(match value["exitCode"].as_i64() {
                        Some(code) => ExitCode::from((code & 0xff) as u8),
                        None => ExitCode::from(CLI_FAILURE),
                    });
                }
                _ => {}
            }
        }
    }
    Err(format!("the stream ended without a result; resume with `tale session attach <id> {exec_id} --since-seq {last_seq}`"))
}
