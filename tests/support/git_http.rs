//! A smart-HTTP git server for tests: `git http-backend` (CGI) behind a small hyper server that
//! requires HTTP Basic auth. Serves the bare repositories under a directory it owns.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A running git server; stops with the test's runtime.
pub struct GitServer {
    pub port: u16,
    pub root: PathBuf,
    /// Requests answered 401 for lack of valid credentials.
    pub refused: Arc<AtomicU64>,
}

impl GitServer {
    /// Serves `root` on 127.0.0.1, accepting only `user`/`password`.
    pub async fn start(root: &Path, user: &str, password: &str) -> GitServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let expected = format!(
            "Basic {}",
            base64_simd::STANDARD.encode_to_string(format!("{user}:{password}"))
        );
        let refused = Arc::new(AtomicU64::new(0));
        let served_root = root.to_path_buf();
        let counter = refused.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let root = served_root.clone();
                let expected = expected.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let root = root.clone();
                        let expected = expected.clone();
                        let counter = counter.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handle(request, &root, &expected, &counter).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GitServer {
            port,
            root: root.to_path_buf(),
            refused,
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }

    /// The `host` git sends for this server.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

async fn handle(
    request: Request<Incoming>,
    root: &Path,
    expected: &str,
    refused: &AtomicU64,
) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        refused.fetch_add(1, Ordering::Relaxed);
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Basic realm=\"test\"")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let root = root.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("git")
            .arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("REMOTE_USER", "test")
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap().stdout
    })
    .await
    .unwrap();
    cgi_response(&output)
}

/// Turns CGI output (headers, blank line, body) into a response.
fn cgi_response(output: &[u8]) -> Response<Full<Bytes>> {
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| output.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
        .expect("CGI output has a header block");
    let head = String::from_utf8_lossy(&output[..split.0]);
    let mut builder = Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split_whitespace().next().unwrap().parse().unwrap();
            builder = builder.status(code);
        } else {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Full::new(Bytes::copy_from_slice(
            &output[split.0 + split.1..],
        )))
        .unwrap()
}

/// Creates a bare repository `name` under `root` with one commit holding `README` = `content`.
pub fn create_repo(root: &Path, name: &str, content: &str) {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    let git = |args: &[&str], dir: &Path| {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), content).unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            root.join(name).to_str().unwrap(),
        ],
        root,
    );
    std::fs::remove_dir_all(&work).unwrap();
}
