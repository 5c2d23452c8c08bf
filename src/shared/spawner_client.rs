//! The signed HTTP client of the spawner's API, written once for everything that calls it from
//! Rust: `tale session` (the operator CLI), the end-to-end tests and the spawner bench. It builds
//! each request with a fresh [`SignedHeaders`] (`SANDBOX_TOKEN` as the key) and reads replies; what
//! a refusal means is left to the caller. The Python and TypeScript client libraries sign the same
//! way in their own languages.
use super::clock::now_ms;
use super::hmac::SignedHeaders;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why a call did not get a whole reply.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerClientError {
    /// The method, path or a header is not valid HTTP.
    #[error("cannot build the request")]
    Build(#[source] hyper::http::Error),
    /// No connection, or it failed before the reply's head arrived.
    #[error("cannot reach the spawner at {base}")]
    Unreachable {
        base: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The head arrived but the connection failed before the body's end.
    #[error("the reply broke off")]
    Body(#[source] hyper::Error),
}

/// A whole reply: its status and body bytes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; `Null` when it is not JSON (a proxy's HTML error page, an empty body).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One spawner (base URL such as `http://127.0.0.1:8003`) and the key its requests are signed with.
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct SpawnerClient {
    base: String,
    key: Option<Vec<u8>>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl SpawnerClient {
    /// `key` `None` sends unsigned requests (a spawner started without `SANDBOX_TOKEN`).
    pub fn new(base: impl Into<String>, key: Option<&[u8]>) -> SpawnerClient {
        SpawnerClient {
            base: base.into(),
            key: key.map(<[u8]>::to_vec),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same spawner and connection pool, without the key: its requests go unsigned.
    pub fn unsigned(&self) -> SpawnerClient {
        SpawnerClient {
            key: None,
            ..self.clone()
        }
    }

    /// A request for `path` (with its query, exactly as signed): signed when the client has a key,
    /// `content-type: application/json` when it carries a body.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, SpawnerClientError> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        let bytes = body.clone().unwrap_or_default();
        if let Some(key) = &self.key {
            builder =
                SignedHeaders::new(key, method.as_str(), path, &bytes, now_ms()).apply(builder);
        }
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(bytes))
            .map_err(SpawnerClientError::Build)
    }

    /// Sends a request built by [`Self::request`] (possibly with headers added); the reply's head,
    /// its body still to read (an SSE stream, say).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SpawnerClientError> {
        self.http
            .request(request)
            .await
            .map_err(|source| SpawnerClientError::Unreachable {
                base: self.base.clone(),
                source,
            })
    }

    /// Builds and sends one request; the reply's head.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, SpawnerClientError> {
        let body = body.map(|value| Bytes::from(value.to_string()));
        self.send(self.request(method, path, body)?).await
    }

    /// Builds and sends one request and reads the whole reply.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, SpawnerClientError> {
        read_reply(self.open(method, path, body).await?).await
    }
}

/// Reads a reply's whole body.
pub async fn read_reply(response: Response<Incoming>) -> Result<Reply, SpawnerClientError> {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(SpawnerClientError::Body)?
        .to_bytes();
    Ok(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::hmac::{RequestVerifier, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

    fn header<'a>(request: &'a Request<Full<Bytes>>, name: &str) -> Option<&'a str> {
        request.headers().get(name).map(|v| v.to_str().unwrap())
    }

    /// A request the client builds passes the spawner's own verifier (path with query, body and
    /// method all covered); the unsigned twin carries no signature headers.
    #[test]
    fn requests_verify_with_the_spawners_verifier() {
        let client = SpawnerClient::new("http://127.0.0.1:9", Some(b"key"));
        let body = Bytes::from_static(b"{\"sessionId\":\"s\"}");
        let request = client
            .request(Method::POST, "/v1/sessions?x=1", Some(body.clone()))
            .unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:9/v1/sessions?x=1");
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        let verifier = RequestVerifier::new(b"key", 0);
        let presented = |body: &'static [u8]| crate::shared::hmac::Presented {
            method: "POST",
            path_and_query: "/v1/sessions?x=1",
            signature: header(&request, SIGNATURE_HEADER),
            timestamp: header(&request, TIMESTAMP_HEADER),
            nonce: header(&request, NONCE_HEADER),
            body,
        };
        let now = now_ms() as i64;
        assert_eq!(
            verifier.verify(&presented(b"{\"sessionId\":\"t\"}"), now),
            Err(crate::shared::hmac::AuthFailure::BadSignature),
            "the signature covers the body"
        );
        assert_eq!(
            verifier.verify(&presented(b"{\"sessionId\":\"s\"}"), now),
            Ok(())
        );

        let unsigned = client
            .unsigned()
            .request(Method::GET, "/v1/sessions", None)
            .unwrap();
        for name in [
            SIGNATURE_HEADER,
            TIMESTAMP_HEADER,
            NONCE_HEADER,
            "content-type",
        ] {
            assert_eq!(header(&unsigned, name), None, "{name}");
        }
    }

    /// Nothing listening: the error names the spawner and keeps the connection error as its cause.
    #[tokio::test]
    async fn unreachable_keeps_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let error = SpawnerClient::new(base.clone(), None)
            .call(Method::GET, "/health", None)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot reach the spawner at {base}")
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
