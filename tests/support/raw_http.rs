//! Raw HTTP/1.1 over TCP for the edge tests: connections from chosen loopback addresses, request
//! heads written by hand (signed, forged or bare), response heads read with a deadline, and the
//! spawner's RSS.
#![allow(dead_code)]

use super::spawner::{now_ms, SANDBOX_TOKEN};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tale::shared::hmac::sign_request;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// Most bytes a body may have by default, less one: the largest body the spawner accepts.
pub const BODY_BYTES: usize = 2 * 1024 * 1024 - 1;

/// Opens a connection to the spawner from `source` (a loopback address).
pub async fn connect_from(source: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// The request head of a POST that announces `len` body bytes, with the given extra headers.
pub fn post_head(path: &str, len: usize, headers: &[(String, String)]) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Signature headers of the right shape and a fresh timestamp, made with the wrong key.
pub fn forged_headers(path: &str) -> Vec<(String, String)> {
    let ts = now_ms().to_string();
    let nonce = tale::shared::hex::random::<16>();
    vec![
        (
            "x-tale-sandbox-signature".into(),
            sign_request(b"not-the-key", "POST", path, &ts, Some(&nonce), b"{}"),
        ),
        ("x-tale-sandbox-timestamp".into(), ts),
        ("x-tale-sandbox-nonce".into(), nonce),
    ]
}

/// Signature headers made with the right key over `body`.
pub fn signed_headers(method: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
    let signed = tale::shared::hmac::SignedHeaders::new(
        SANDBOX_TOKEN.as_bytes(),
        method,
        path,
        body,
        now_ms(),
    );
    vec![
        ("x-tale-sandbox-signature".into(), signed.signature),
        ("x-tale-sandbox-timestamp".into(), signed.timestamp),
        ("x-tale-sandbox-nonce".into(), signed.nonce),
    ]
}

/// Reads a response head (status line and headers) from a raw connection, within `limit`.
pub async fn read_head(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&seen).into_owned())
}

pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Lets this process (and the spawner it starts) hold the test's sockets.
pub fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
}
