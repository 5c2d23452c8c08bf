//! Downloads for `stage` items given by URL: `http://` and `https://` (rustls, ring, webpki roots),
//! streamed to a file with a size cap. URLs are fetched directly from the session's network.
use crate::shared::http::BoxError;
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
    /// The connection, the body or the write to disk failed; the cause is in the reason too.
    #[error("fetch failed: {0}")]
    Failed(#[source] BoxError),
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
        .map_err(|e| FetchError::Failed(e.into()))?;
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
        let frame = frame.map_err(|e| FetchError::Failed(e.into()))?;
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
            .map_err(|e| FetchError::Failed(e.into()))?
            .map_err(|e| FetchError::Failed(e.into()))?;
        out = Some(file);
    }
    Ok((total, out.expect("file present")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A download that cannot connect is `fetch failed: …` in `skipped[].reason`, and keeps the
    /// connection error as its cause.
    #[tokio::test]
    async fn failed_fetches_keep_their_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = start(&format!("http://127.0.0.1:{port}/file"), 1024)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Failed(_)), "{error:?}");
        let cause = std::error::Error::source(&error).expect("a cause");
        assert_eq!(error.reason(), format!("fetch failed: {cause}"));
        assert!(cause
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect()));
    }
}
