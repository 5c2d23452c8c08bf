//! The spawner API over HTTPS with real TLS clients: the real `tale spawner` (local backend) with
//! `SANDBOX_TLS_CERT_FILE`/`SANDBOX_TLS_KEY_FILE` from a CA made by `openssl`, driven by `curl
//! --cacert` (health, a signed create and delete); the wrong CA and plain HTTP refused; a
//! mismatched key or a missing file stops the boot. Needs `curl` and `openssl`.
mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::runnerd::{free_port, poll, tls_scratch};
use support::spawner::{now_ms, SANDBOX_TOKEN};

/// A CA, a certificate for 127.0.0.1 signed by it, and an unrelated CA, made with `openssl`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make() -> Pki {
        let dir = tls_scratch("pki");
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
    let root = tls_scratch("spawner");
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
