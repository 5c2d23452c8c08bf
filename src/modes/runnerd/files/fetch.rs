//! Downloads for `stage` items given by URL: `http://` and `https://` (rustls, ring, webpki roots),
//! streamed to a file with a size cap. URLs are fetched directly from the session's network.
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;

/// Why a download was skipped; `reason()` is the `skipped[].reason` string.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unsupported_url")]
    Unsupported,
    #[error("http_{0}")]
    Status(u16),
    #[error("too_large")]
    TooLarge,
    #[error("no_body")]
    NoBody,
    #[error("fetch failed: {0}")]
    Failed(String),
}

impl FetchError {
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn client() -> HttpsClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Starts a GET of `url`; checks scheme, status and the declared length against `cap`.
pub async fn start(url: &str, cap: u64) -> Result<Incoming, FetchError> {
    let uri: hyper::Uri = url.parse().map_err(|_| FetchError::Unsupported)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(FetchError::Unsupported);
    }
    let response = client()
        .get(uri)
        .await
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(FetchError::TooLarge);
    }
    if matches!(
        status,
        hyper::StatusCode::NO_CONTENT | hyper::StatusCode::RESET_CONTENT
    ) {
        return Err(FetchError::NoBody);
    }
    Ok(response.into_body())
}

/// Streams `body` into `out` (a blocking file written on a blocking thread per chunk), refusing
/// more than `cap` bytes. Returns the byte count.
pub async fn copy_to(
    mut body: Incoming,
    out: std::fs::File,
    cap: u64,
) -> Result<(u64, std::fs::File), FetchError> {
    let mut total = 0u64;
    let mut out = Some(out);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Failed(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > cap {
            return Err(FetchError::TooLarge);
        }
        let mut file = out.take().expect("file is put back after each write");
        file = tokio::task::spawn_blocking(move || file.write_all(&data).map(|()| file))
            .await
            .map_err(|e| FetchError::Failed(e.to_string()))?
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        out = Some(file);
    }
    Ok((total, out.expect("file present")))
}
