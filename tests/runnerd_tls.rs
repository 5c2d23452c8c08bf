//! runnerd's TLS with the spawner's pinning client, end to end with the real binary on loopback:
//! runnerd serving its per-session certificate to a client pinned to it (another session's
//! certificate, plain HTTP and an impostor on the port all refused, the key in no exec's
//! environment), and the local backend with `SANDBOX_RUNNERD_TLS=1` (create, exec, the session's
//! port speaking only TLS with its derived certificate, re-adoption after `kill -9` of the spawner).
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::runnerd::{free_port, poll, tls_scratch};
use support::spawner::{result, stdout_text, SpawnerProcess, SANDBOX_TOKEN};
use tale::modes::spawner::runnerd_client::RunnerdClient;
use tale::shared::protocol::runnerd::{ExecEvent, ExecRequest};
use tale::shared::tls::SessionTls;

const TOKEN: &str = "tls-test-token";

/// A `tale runnerd` serving TLS with `tls`; killed and its directory removed on drop.
struct TlsRunnerd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsRunnerd {
    fn start(tls: &SessionTls) -> TlsRunnerd {
        let dir = tls_scratch("runnerd");
        std::fs::create_dir_all(dir.join("ws")).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tale"))
            .arg("runnerd")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workspace-root")
            .arg(dir.join("ws"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TALE_RUNNERD_TOKEN", TOKEN)
            .env("TALE_STATE_DIR", &dir)
            .env("TALE_RUNNERD_TLS_CERT", tls.cert_pem())
            .env("TALE_RUNNERD_TLS_KEY", tls.key_pem())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        TlsRunnerd { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Waits until the pinned client gets an answer.
    async fn ready(&self, client: &RunnerdClient) {
        let ready = poll(Duration::from_secs(20), async || client.health().await.ok()).await;
        assert!(ready.is_some(), "runnerd never answered:\n{}", self.log());
    }
}

impl Drop for TlsRunnerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `shell` through `client` and returns (stdout, exit code).
async fn run(client: &RunnerdClient, exec_id: &str, shell: &str) -> (String, i32) {
    let request: ExecRequest =
        serde_json::from_value(json!({"execId": exec_id, "shell": shell})).unwrap();
    let mut events = client.exec(&request).await.unwrap();
    let mut stdout = Vec::new();
    while let Some(event) = events.next().await.unwrap() {
        match event {
            ExecEvent::Stdout { b64, .. } => {
                stdout.extend(tale::shared::protocol::runnerd::decode_lenient_base64(&b64).unwrap())
            }
            ExecEvent::Exit { exit_code, .. } => {
                return (String::from_utf8(stdout).unwrap(), exit_code)
            }
            ExecEvent::Fail { message, .. } => panic!("exec failed: {message}"),
            _ => {}
        }
    }
    panic!("the exec stream ended without an exit");
}

/// runnerd serves the session's certificate; the spawner's client pinned to it runs execs, and
/// is refused by a runnerd holding another session's key (an impostor on the port) — as is a
/// plain-HTTP client by the TLS runnerd. Execs never see the key.
#[tokio::test(flavor = "multi_thread")]
async fn runnerd_tls_with_a_pinned_client() {
    let tls = SessionTls::derive(b"sandbox-token", "tls-session");
    let daemon = TlsRunnerd::start(&tls);
    let pinned = RunnerdClient::pinned(&daemon.url(), TOKEN, tls.cert_der());
    daemon.ready(&pinned).await;
    let (stdout, code) = run(
        &pinned,
        "over-tls",
        "echo over-tls; env | grep -c TALE_RUNNERD_TLS || true",
    )
    .await;
    assert_eq!(
        (stdout.as_str(), code),
        ("over-tls\n0\n", 0),
        "{}",
        daemon.log()
    );

    // Another session's certificate: the handshake fails and says why.
    let other = SessionTls::derive(b"sandbox-token", "another-session");
    let wrong_pin = RunnerdClient::pinned(&daemon.url(), TOKEN, other.cert_der());
    let err = wrong_pin.health().await.unwrap_err();
    assert!(err.is_transport(), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // Plain HTTP gets nothing out of a TLS runnerd.
    let plain = RunnerdClient::new(&daemon.url(), TOKEN);
    let err = plain.health().await.unwrap_err();
    assert!(err.is_transport(), "{err}");

    // An impostor: a runnerd with a key of its own on some port. The client pinned to the real
    // session's certificate refuses it, so it never sees the token or a request.
    let impostor = TlsRunnerd::start(&other);
    let honest_other = RunnerdClient::pinned(&impostor.url(), TOKEN, other.cert_der());
    impostor.ready(&honest_other).await;
    let fooled = RunnerdClient::pinned(&impostor.url(), TOKEN, tls.cert_der());
    let err = fooled.health().await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// The local backend with runnerd TLS on: sessions work end to end, their runnerd port speaks
/// only TLS with the session's derived certificate, and after `kill -9` of the spawner the
/// re-adopted session is reached again (the pin derived anew).
#[tokio::test(flavor = "multi_thread")]
async fn local_backend_with_runnerd_tls() {
    let mut spawner = SpawnerProcess::local(&[("SANDBOX_RUNNERD_TLS", "1")]).await;
    let c = spawner.client.clone();
    let id = "tls-local";
    let created = c.create(id, "org").await;
    assert_eq!(created["session"]["sessionId"], id, "{created}");
    let exec = async |exec_id: &str, shell: &str| {
        c.sse(
            Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"execId": exec_id, "shell": shell})),
            &[],
        )
        .await
        .1
        .collect_all()
        .await
    };
    let events = exec(
        "one",
        "echo secured; env | grep -c TALE_RUNNERD_TLS || true",
    )
    .await;
    assert_eq!(stdout_text(&events), "secured\n0\n", "{events:?}");
    assert_eq!(result(&events)["exitCode"], 0);

    // The session's runnerd port: the certificate derived for this session is what it serves;
    // plain HTTP gets nothing.
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            spawner
                .root
                .join("sessions")
                .join(".state")
                .join(format!("{id}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{}", record["port"]);
    let token = tale::shared::hmac::derive_runnerd_token(SANDBOX_TOKEN.as_bytes(), id);
    let derived = SessionTls::derive(SANDBOX_TOKEN.as_bytes(), id);
    let pinned = RunnerdClient::pinned(&url, &token, derived.cert_der());
    assert!(pinned.health().await.is_ok());
    assert!(RunnerdClient::new(&url, &token).health().await.is_err());
    let stranger = SessionTls::derive(SANDBOX_TOKEN.as_bytes(), "someone-else");
    assert!(RunnerdClient::pinned(&url, &token, stranger.cert_der())
        .health()
        .await
        .is_err());

    spawner.restart().await;
    let (status, got) = c
        .json(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}\n{}", spawner.log());
    let events = exec("two", "echo again").await;
    assert_eq!(stdout_text(&events), "again\n", "{}", spawner.log());
    let (status, _) = c
        .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert!(status.is_success());
}
