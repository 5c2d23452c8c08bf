//! hyper plumbing shared by every server and client in the crate: JSON replies, capped bodies,
//! streamed bodies, and the accept loop.
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
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

/// Why a request body could not be read. The message is the `message` of the 413/400 reply, so
/// the unreadable case names its cause in the text too, as it always has on the wire.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the route's cap (by `content-length`, or while reading).
    #[error("the request body is larger than the {0} bytes this route accepts")]
    TooLarge(usize),
    /// The connection failed or the framing broke mid-body.
    #[error("the request body could not be read: {0}")]
    Unreadable(#[source] BoxError),
}

/// The cause an I/O layer hands back (hyper's body errors arrive boxed).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
        discard_body(&mut body, declared.unwrap_or(0)).await;
        return Err(BodyError::TooLarge(cap));
    }
    match Limited::new(&mut body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            discard_body(&mut body, u64::MAX).await;
            Err(BodyError::TooLarge(cap))
        }
        Err(err) => Err(BodyError::Unreadable(err)),
    }
}

/// Most bytes of a refused body read and discarded so the client sees the 413 instead of a reset.
pub const MAX_DRAIN_BYTES: u64 = 32 * 1024 * 1024;
/// Time allowed for that.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and discards a refused body (bounded in bytes and time); past the bound the connection is
/// simply closed after the reply. `declared` is the `content-length`, `u64::MAX` if unknown.
pub async fn discard_body(body: &mut Incoming, declared: u64) {
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

/// A response body fed by a channel, and the sender that feeds it: each message is one frame; the
/// stream ends when every sender is dropped. The producer learns the client left when `send` fails
/// or `closed()` resolves. `depth` frames may wait in between.
pub fn channel_body(depth: usize) -> (mpsc::Sender<Bytes>, ResponseBody) {
    let (tx, rx) = mpsc::channel(depth);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok(Frame::data(bytes)), rx))
    });
    (tx, StreamBody::new(frames).boxed_unsync())
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
                    accept_failed(err).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let handler = handler.clone();
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            options,
            move |request| handler(request),
            std::future::pending(),
        ));
    }
}

/// What an accept loop does when `accept` fails (EMFILE and friends): back off instead of spinning.
pub async fn accept_failed(err: std::io::Error) {
    tracing::warn!(%err, "accept failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// How long an accept loop waits after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Largest buffer hyper keeps per connection for reading (headers must fit in it). An unread body
/// then waits in the kernel's socket buffer, not in ours. 16 KiB rather than 64: with 500 flooding
/// connections the larger buffers left ~20 MiB of fragmented heap behind after the flood (9 MiB
/// with these), and no request of ours has headers near 16 KiB.
pub const CONNECTION_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Serves one HTTP/1.1 connection (plain or TLS: the caller sets `TCP_NODELAY` and does any
/// handshake); when `drain` resolves, the connection finishes its in-flight request and closes
/// (an idle one closes at once).
pub async fn serve_connection<IO, H, F>(
    stream: IO,
    options: ServeOptions,
    handler: H,
    drain: impl Future<Output = ()>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let handler = Arc::new(handler);
    let service = hyper::service::service_fn(move |request| {
        // Each request runs as its own task so a bug that panics costs that request a 500, never
        // the connection loop or the process.
        let response = tokio::spawn(handler(request));
        async move {
            Ok::<_, Infallible>(
                response
                    .await
                    .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)),
            )
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .half_close(options.allow_half_close)
        .max_buf_size(CONNECTION_READ_BUFFER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::pin!(drain);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = &mut drain => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "connection ended with an error");
    }
}

/// The first value of `name` in the request's query string, percent-decoded.
pub fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    query_value(request.uri().query()?, name)
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Compares two secrets in time independent of where they differ (`subtle`; a length mismatch
/// fails at once, which reveals only the length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Backlog of the daemons' listening sockets (the kernel caps it at `net.core.somaxconn`, 4096 by
/// default). The platform default of 128 overflows when hundreds of connections arrive while the
/// daemon is busy: with SYN cookies the kernel then completes handshakes whose final ACK it drops,
/// leaving clients with connections the daemon never saw — never served, never closed.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with a backlog of [`LISTEN_BACKLOG`] (not the platform's 128).
pub fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
