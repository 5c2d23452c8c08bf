//! TLS end to end with real clients: runnerd serving its per-session certificate to the spawner's
//! pinning client (the real binary on loopback; another session's certificate, plain HTTP and an
//! impostor on the port all refused), the spawner API over HTTPS to `curl --cacert` (a wrong CA
//! refused, plain HTTP refused, bad files stop the boot), and the local backend with runnerd TLS on
//! (create, exec, the wire really encrypted, re-adoption after `kill -9` of the spawner).
mod support;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::runnerd::{free_port, poll};
use support::spawner::{now_ms, result, stdout_text, SpawnerProcess, SANDBOX_TOKEN};
use tale::modes::spawner::runnerd_client::RunnerdClient;
use tale::shared::protocol::runnerd::{ExecEvent, ExecRequest};
use tale::shared::tls::SessionTls;

const TOKEN: &str = "tls-test-token";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tale-tls-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `tale runnerd` serving TLS with `tls`; killed and its directory removed on drop.
struct TlsRunnerd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsRunnerd {
    fn start(tls: &SessionTls) -> TlsRunnerd {
        let dir = scratch("runnerd");
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

/// A CA, a certificate for 127.0.0.1 signed by it, and an unrelated CA, made with `openssl`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make() -> Pki {
        let dir = scratch("pki");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=tale-spawner",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl` against `url`: (exit code, HTTP status, body).
fn curl(args: &[&str], url: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        status.to_owned(),
        body.to_owned(),
    )
}

fn spawner_command(root: &Path, port: u16, extra: &[(&str, &Path)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tale"));
    command
        .arg("spawner")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("SANDBOX_TOKEN", SANDBOX_TOKEN)
        .env("SANDBOX_BACKEND", "local")
        .env("SANDBOX_HOST_SESSION_ROOT", root.join("sessions"))
        .envs(extra.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// The spawner API over HTTPS: `curl --cacert` with the right CA gets `/health` and a signed
/// session create and delete; the wrong CA and plain HTTP are refused; a key that does not match
/// the certificate, or a missing file, stops the boot with a message naming the file.
#[tokio::test(flavor = "multi_thread")]
async fn spawner_api_over_tls_to_curl() {
    let pki = Pki::make();
    let root = scratch("spawner");
    let port = free_port();
    let log = root.join("spawner.log");
    let mut child = spawner_command(
        &root,
        port,
        &[
            ("SANDBOX_TLS_CERT_FILE", &pki.path("server.pem")),
            ("SANDBOX_TLS_KEY_FILE", &pki.path("server.key")),
        ],
    )
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let ca = pki.path("ca.pem").display().to_string();
    let health = format!("{base}/health");
    let up = poll(Duration::from_secs(30), async || {
        let (code, status, body) = curl(&["--cacert", &ca], &health);
        (code == 0).then_some((status, body))
    })
    .await;
    let Some((status, body)) = up else {
        let _ = child.kill();
        panic!(
            "no HTTPS answer:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert_eq!(status, "200", "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok",
        "{body}"
    );

    // A signed create and delete through curl: the whole API is there over TLS.
    let sign = |method: &str, path: &str, body: &[u8]| {
        let s = tale::shared::hmac::SignedHeaders::new(
            SANDBOX_TOKEN.as_bytes(),
            method,
            path,
            body,
            now_ms(),
        );
        vec![
            format!("{}: {}", tale::shared::hmac::SIGNATURE_HEADER, s.signature),
            format!("{}: {}", tale::shared::hmac::TIMESTAMP_HEADER, s.timestamp),
            format!("{}: {}", tale::shared::hmac::NONCE_HEADER, s.nonce),
        ]
    };
    let create = json!({"sessionId": "tls-api", "organizationId": "org"}).to_string();
    let headers = sign("POST", "/v1/sessions", create.as_bytes());
    let mut args = vec![
        "--cacert",
        &ca,
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &create,
    ];
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    let (code, status, body) = curl(&args, &format!("{base}/v1/sessions"));
    assert_eq!((code, status.as_str()), (0, "201"), "{body}");
    let headers = sign("DELETE", "/v1/sessions/tls-api", b"");
    let mut args = vec!["--cacert", &ca, "-X", "DELETE"];
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    let (code, status, body) = curl(&args, &format!("{base}/v1/sessions/tls-api"));
    assert_eq!(code, 0, "{body}");
    assert!(status.starts_with('2'), "{status} {body}");

    // The wrong CA: curl refuses the server (exit 60: peer certificate cannot be authenticated).
    let other_ca = pki.path("other-ca.pem").display().to_string();
    let (code, status, _) = curl(&["--cacert", &other_ca], &health);
    assert_eq!((code, status.as_str()), (60, "000"));
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (code, status, _) = curl(&[], &format!("http://127.0.0.1:{port}/health"));
    assert_ne!(code, 0);
    assert_eq!(status, "000");
    let _ = child.kill();
    let _ = child.wait();

    // A key that is not the certificate's, and a missing key file: refused at boot, exit 2.
    for (key, named) in [
        (pki.path("ca.key"), "server.pem"),
        (pki.path("missing.key"), "missing.key"),
    ] {
        let out = spawner_command(
            &root,
            free_port(),
            &[
                ("SANDBOX_TLS_CERT_FILE", &pki.path("server.pem")),
                ("SANDBOX_TLS_KEY_FILE", &key),
            ],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&root);
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
