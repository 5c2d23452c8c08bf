//! hyper plumbing shared by every server and client in the crate: JSON replies, capped bodies,
//! streamed bodies, and the accept loop.
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The body type of every response we build.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
/// A response with our body type.
pub type HttpResponse = Response<ResponseBody>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// `status` with `value` as JSON.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("reply types always serialize");
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The error envelope `{error, message?}`.
pub fn error(status: StatusCode, code: &str, message: Option<String>) -> HttpResponse {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    }
    json(
        status,
        &ErrorBody {
            error: code,
            message,
        },
    )
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// The request body is larger than the {0} bytes this route accepts.
    #[error("the request body is larger than the {0} bytes this route accepts")]
    TooLarge(usize),
    /// The request body could not be read: {0}
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
}

/// Reads the whole body, refusing more than `cap` bytes (by `content-length` up front, or while
/// reading a chunked body).
pub async fn read_body(request: Request<Incoming>, cap: usize) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = request.into_body();
    if declared.is_some_and(|len| len > cap as u64) {
        drain(&mut body, declared.unwrap_or(0)).await;
        return Err(BodyError::TooLarge(cap));
    }
    match Limited::new(&mut body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            drain(&mut body, u64::MAX).await;
            Err(BodyError::TooLarge(cap))
        }
        Err(err) => Err(BodyError::Unreadable(err.to_string())),
    }
}

/// Most bytes of a refused body read and discarded so the client sees the 413 instead of a reset.
pub const MAX_DRAIN_BYTES: u64 = 32 * 1024 * 1024;
/// Time allowed for that.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and discards a refused body (bounded in bytes and time); past the bound the connection is
/// simply closed after the reply.
async fn drain(body: &mut Incoming, declared: u64) {
    if declared > MAX_DRAIN_BYTES && declared != u64::MAX {
        return;
    }
    let discard = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > MAX_DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, discard).await;
}

/// A response body fed by a channel: each message is one frame; the stream ends when every sender
/// is dropped. The producer learns the client left when `send` fails or `closed()` resolves.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it; `depth` frames may wait in between.
    pub fn new(depth: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// Settings of [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Time a client has to send the request headers.
    pub header_read_timeout: Duration,
    /// Keep writing a response after the client shut down its sending side. This also skips
    /// hyper's read for end-of-file while a response streams, which holds an 8 KiB buffer per
    /// connection: a client that vanished is then noticed at the next write instead.
    pub allow_half_close: bool,
}

/// Accepts HTTP/1.1 connections on `listener` until `shutdown` resolves; each request goes to
/// `handler`. Connections already open keep being served while the process lives.
pub async fn serve<H, F>(
    listener: TcpListener,
    options: ServeOptions,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let handler = Arc::new(handler);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                // Each request runs as its own task so a bug that panics costs that request a 500,
                // never the connection loop or the process.
                let response = tokio::spawn(handler(request));
                async move {
                    Ok::<_, Infallible>(response.await.unwrap_or_else(|_| {
                        error(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
                    }))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_read_timeout)
                .half_close(options.allow_half_close)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
}

/// The first value of `name` in the request's query string, percent-decoded.
pub fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Compares two secrets in time independent of where they differ (length mismatch fails at once,
/// which reveals only the length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal secrets match; any difference or length mismatch does not.
    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
