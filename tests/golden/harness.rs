//! Golden transcripts: raw HTTP/1.1 exchanges with a real daemon, written as text and compared with a
//! stored file byte for byte.
//!
//! A transcript shows each request (`> ` lines) and the response as it came off the socket (`< `
//! lines): status line, every header but `date` in the order sent, a blank line, then the body with
//! its framing made visible — the body's bytes split after each `\n`, bytes outside printable ASCII
//! escaped as `\xNN`, and `\ no newline at end` when the body does not end in one. A chunked body
//! is shown de-chunked (chunk boundaries depend on timing); its `transfer-encoding` header stays.
//!
//! Only what truly varies between runs is replaced, each by a named placeholder: the numbers of
//! listed JSON keys (timestamps, durations) and of listed metric series, listed literal strings
//! (temporary paths), and `content-length` when the body it counts held a replaced value (the
//! harness checks it against the received body first).
//!
//! Re-record after an intended wire change with `TALE_UPDATE_GOLDEN=1 cargo test --test golden_…`
//! and review the diff; by default any byte difference fails the test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Time allowed for any single read from the daemon.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One request as sent on the wire.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Sent, but shown in the transcript as their placeholder (signatures, timestamps, nonces).
    pub hidden_headers: Vec<(String, String, &'static str)>,
    pub body: Vec<u8>,
    /// Shown instead of the body (for bodies too large to print).
    pub body_label: Option<String>,
}

impl RawRequest {
    pub fn new(method: &str, target: &str) -> RawRequest {
        RawRequest {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            hidden_headers: Vec::new(),
            body: Vec::new(),
            body_label: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A header whose value varies per run; the transcript shows `placeholder`.
    pub fn hidden_header(
        mut self,
        name: &str,
        value: &str,
        placeholder: &'static str,
    ) -> RawRequest {
        self.hidden_headers
            .push((name.into(), value.into(), placeholder));
        self
    }

    /// A JSON (or not-quite-JSON) body with its content type.
    pub fn json(self, body: &str) -> RawRequest {
        let mut request = self.header("content-type", "application/json");
        request.body = body.as_bytes().to_vec();
        request
    }

    /// A raw byte body (`application/octet-stream`).
    pub fn octets(self, body: &str) -> RawRequest {
        let mut request = self.header("content-type", "application/octet-stream");
        request.body = body.as_bytes().to_vec();
        request
    }

    /// A large body shown by its label.
    pub fn big_body(mut self, body: Vec<u8>, label: &str) -> RawRequest {
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self.body = body;
        self.body_label = Some(label.into());
        self
    }

    fn to_wire(&self, port: u16) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        for (name, value, _) in &self.hidden_headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || self.method != "GET" {
            out.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A response being read: its head, and its body read so far.
pub struct RawResponse {
    reader: BufReader<OwnedReadHalf>,
    // Owns the write half: kept open while the response is read (a half-closed connection could end
    // a stream early), and closed when the response is dropped even if the daemon never read it all.
    writer: tokio::task::JoinHandle<OwnedWriteHalf>,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    framing: Framing,
    done: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads more of the body until it contains `needle` (or the body ends).
    pub async fn read_until(&mut self, needle: &[u8]) {
        while !self.done && !contains(&self.body, needle) {
            self.read_some().await;
        }
    }

    /// Reads the rest of the body.
    pub async fn finish(&mut self) {
        while !self.done {
            self.read_some().await;
        }
    }

    async fn read_some(&mut self) {
        let read = async {
            match self.framing {
                Framing::Length(n) => {
                    let mut body = vec![0; n];
                    self.reader.read_exact(&mut body).await.unwrap();
                    self.body.extend_from_slice(&body);
                    self.done = true;
                }
                Framing::UntilClose => {
                    self.reader.read_to_end(&mut self.body).await.unwrap();
                    self.done = true;
                }
                Framing::Chunked => {
                    let line = read_crlf_line(&mut self.reader).await;
                    let size_text = line.split(';').next().unwrap().trim();
                    let size = usize::from_str_radix(size_text, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    if size == 0 {
                        // Trailers (none expected), then the final CRLF.
                        loop {
                            if read_crlf_line(&mut self.reader).await.is_empty() {
                                break;
                            }
                        }
                        self.done = true;
                    } else {
                        let mut chunk = vec![0; size + 2];
                        self.reader.read_exact(&mut chunk).await.unwrap();
                        assert_eq!(&chunk[size..], b"\r\n", "chunk not followed by CRLF");
                        self.body.extend_from_slice(&chunk[..size]);
                    }
                }
            }
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .expect("the daemon did not answer in time");
    }
}

impl Drop for RawResponse {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn read_crlf_line(reader: &mut BufReader<OwnedReadHalf>) -> String {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await.unwrap();
    assert!(line.ends_with(b"\r\n"), "line not ended by CRLF: {line:?}");
    line.truncate(line.len() - 2);
    String::from_utf8(line).expect("head lines are UTF-8")
}

/// Sends `request` on a fresh connection and reads the response head.
pub async fn send(port: u16, request: &RawRequest) -> RawResponse {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // A refused body may be answered before it is all sent: write what the daemon takes.
    let wire = request.to_wire(port);
    let (read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&wire).await;
        write_half
    });
    let mut reader = BufReader::new(read_half);
    let head = async {
        let status_line = read_crlf_line(&mut reader).await;
        let mut headers = Vec::new();
        loop {
            let line = read_crlf_line(&mut reader).await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        (status_line, headers)
    };
    let (status_line, headers) = tokio::time::timeout(READ_TIMEOUT, head)
        .await
        .expect("no response head in time");
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let framing = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else if let Some(length) = find("content-length") {
        Framing::Length(length.parse().unwrap())
    } else {
        Framing::UntilClose
    };
    let done = matches!(framing, Framing::Length(0));
    RawResponse {
        reader,
        writer,
        status_line,
        headers,
        body: Vec::new(),
        framing,
        done,
    }
}

/// Sends `request` and reads the whole response.
pub async fn exchange(port: u16, request: &RawRequest) -> RawResponse {
    let mut response = send(port, request).await;
    response.finish().await;
    response
}

/// What varies between runs, and the placeholder each becomes.
#[derive(Clone, Debug, Default)]
pub struct Normalizer {
    /// JSON keys whose number values become `<key>`.
    pub json_numbers: Vec<&'static str>,
    /// Text directly followed by a number, and the placeholder of that number (e.g. a directory's
    /// size, which depends on the filesystem).
    pub numbers_after: Vec<(&'static str, &'static str)>,
    /// Metric series (name prefix) whose sample values become `<value>`.
    pub metric_values: Vec<&'static str>,
    /// Literal strings replaced by a placeholder (e.g. a temporary directory by `<root>`).
    pub literals: Vec<(String, &'static str)>,
    /// Line prefixes whose consecutive lines are sorted (a labelled metric family's series come in
    /// hash order).
    pub sorted_runs: Vec<&'static str>,
}

impl Normalizer {
    /// The body with every listed variable part replaced.
    pub fn apply(&self, body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        for (literal, placeholder) in &self.literals {
            out = replace_all(&out, literal.as_bytes(), placeholder.as_bytes());
        }
        for key in &self.json_numbers {
            out = replace_number_after(&out, &format!("\"{key}\":"), &format!("<{key}>"));
        }
        for (before, placeholder) in &self.numbers_after {
            out = replace_number_after(&out, before, placeholder);
        }
        if !self.metric_values.is_empty() {
            out = self.replace_metric_values(&out);
        }
        for prefix in &self.sorted_runs {
            out = sort_runs(&out, prefix.as_bytes());
        }
        out
    }

    fn replace_metric_values(&self, body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(body.to_vec()).expect("metrics are text");
        let mut out = String::new();
        for line in text.split_inclusive('\n') {
            let listed = !line.starts_with('#')
                && self.metric_values.iter().any(|name| line.starts_with(name));
            match line.rfind(' ') {
                Some(space) if listed => {
                    out.push_str(&line[..=space]);
                    out.push_str("<value>");
                    if line.ends_with('\n') {
                        out.push('\n');
                    }
                }
                _ => out.push_str(line),
            }
        }
        out.into_bytes()
    }
}

/// Sorts every run of consecutive lines that start with `prefix`.
fn sort_runs(body: &[u8], prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut run: Vec<&[u8]> = Vec::new();
    for line in body.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(prefix) && line.ends_with(b"\n") {
            run.push(line);
            continue;
        }
        run.sort();
        out.extend(run.drain(..).flatten());
        out.extend_from_slice(line);
    }
    run.sort();
    out.extend(run.drain(..).flatten());
    out
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// `<before>123` → `<before><placeholder>`, e.g. `"durationMs":12` → `"durationMs":<durationMs>`.
fn replace_number_after(body: &[u8], before: &str, placeholder: &str) -> Vec<u8> {
    let pattern = before.as_bytes();
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(pattern) {
            out.extend_from_slice(pattern);
            i += pattern.len();
            let digits = body[i..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.' || **b == b'-')
                .count();
            if digits > 0 {
                out.extend_from_slice(placeholder.as_bytes());
                i += digits;
            }
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// A transcript being recorded, compared with `tests/golden/<dir>/<name>.txt` at the end.
pub struct Transcript {
    path: PathBuf,
    text: String,
    pub normalizer: Normalizer,
}

impl Transcript {
    pub fn new(dir: &str, name: &str, normalizer: Normalizer) -> Transcript {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(dir)
            .join(format!("{name}.txt"));
        Transcript {
            path,
            text: String::new(),
            normalizer,
        }
    }

    /// A comment line naming what the next exchanges show.
    pub fn note(&mut self, text: &str) {
        self.text.push_str(&format!("### {text}\n"));
    }

    /// Records one finished exchange.
    pub fn record(&mut self, request: &RawRequest, response: &RawResponse) {
        assert!(response.done, "record a response only once it is read");
        self.text
            .push_str(&format!("> {} {}\n", request.method, request.target));
        for (name, value) in &request.headers {
            self.text.push_str(&format!("> {name}: {value}\n"));
        }
        for (name, _, placeholder) in &request.hidden_headers {
            self.text.push_str(&format!("> {name}: {placeholder}\n"));
        }
        match &request.body_label {
            Some(label) => self.text.push_str(&format!("> <{label}>\n")),
            None if !request.body.is_empty() => {
                self.text.push_str(">\n");
                self.text.push_str(&show_body("> ", &request.body));
            }
            None => {}
        }
        let body = self.normalizer.apply(&response.body);
        let body_changed = body != response.body;
        self.text.push_str(&format!("< {}\n", response.status_line));
        for (name, value) in &response.headers {
            if name == "date" {
                continue;
            }
            if name == "content-length" {
                assert_eq!(
                    value.parse::<usize>().unwrap(),
                    response.body.len(),
                    "content-length matches the body"
                );
                if body_changed {
                    self.text.push_str("< content-length: <length>\n");
                    continue;
                }
            }
            self.text.push_str(&format!("< {name}: {value}\n"));
        }
        self.text.push_str("<\n");
        self.text.push_str(&show_body("< ", &body));
        self.text.push('\n');
    }

    /// Sends, reads and records one exchange; returns the response for further checks.
    pub async fn run(&mut self, port: u16, request: RawRequest) -> RawResponse {
        let response = exchange(port, &request).await;
        self.record(&request, &response);
        response
    }

    /// Compares with the stored file (or rewrites it under `TALE_UPDATE_GOLDEN=1`).
    pub fn finish(self) {
        if std::env::var_os("TALE_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(self.path.parent().unwrap()).unwrap();
            std::fs::write(&self.path, &self.text).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&self.path).unwrap_or_else(|err| {
            panic!(
                "no golden transcript {} ({err}); record it with TALE_UPDATE_GOLDEN=1",
                self.path.display()
            )
        });
        if expected != self.text {
            let actual = self.path.with_extension("actual");
            std::fs::write(&actual, &self.text).unwrap();
            panic!(
                "transcript differs from {} (this run's is in {}):\n{}",
                self.path.display(),
                actual.display(),
                first_difference(&expected, &self.text)
            );
        }
    }
}

fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    for number in 1.. {
        match (expected_lines.next(), actual_lines.next()) {
            (None, None) => return "(only line endings differ)".into(),
            (e, a) if e != a => {
                return format!("line {number}:\n  expected: {e:?}\n  actual:   {a:?}")
            }
            _ => {}
        }
    }
    unreachable!()
}

/// The body as lines with `prefix`, bytes outside printable ASCII escaped.
fn show_body(prefix: &str, body: &[u8]) -> String {
    let mut out = String::new();
    for line in body.split_inclusive(|b| *b == b'\n') {
        // No trailing blank on an empty line (SSE frames end with one).
        out.push_str(if line == b"\n" {
            prefix.trim_end()
        } else {
            prefix
        });
        let (content, newline) = match line.strip_suffix(b"\n") {
            Some(content) => (content, true),
            None => (line, false),
        };
        for &b in content {
            match b {
                b'\\' => out.push_str("\\\\"),
                b' '..=b'~' => out.push(b as char),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
        }
        out.push('\n');
        if !newline {
            out.push_str("\\ no newline at end\n");
        }
    }
    out
}
