//! The one error envelope of the spawner's API: `{error: <code>, message?}` with a status. Every
//! route refuses through [`ApiError`]; runnerd, backend and validation errors convert into it.
use crate::modes::spawner::backend::BackendError;
use crate::modes::spawner::runnerd_client::RunnerdError;
use crate::shared::http::{json, HttpResponse};
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::StatusCode;
use serde::Serialize;

/// A refusal: the status, the stable `code` (the `error` field on the wire), and a message for
/// people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Option<String>,
    /// `retry-after` seconds, for refusals that a retry can cure.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: Option<String>) -> ApiError {
        ApiError {
            status,
            code,
            message,
            retry_after_secs: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", Some(message.into()))
    }

    /// 404 `not_found`, without a message.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", None)
    }

    /// 502 `upstream_error`: runnerd failed or answered what the protocol does not allow.
    pub fn upstream(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            Some(message.into()),
        )
    }

    /// Adds `retry-after`.
    pub fn retry_after(self, secs: u64) -> ApiError {
        ApiError {
            retry_after_secs: Some(secs),
            ..self
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl From<ApiError> for HttpResponse {
    fn from(err: ApiError) -> HttpResponse {
        let mut response = json(
            err.status,
            &Envelope {
                error: err.code,
                message: err.message.as_deref(),
            },
        );
        if let Some(secs) = err.retry_after_secs {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// runnerd refused the request as malformed: its own `{error, message}` envelope, unwrapped so
/// the client sees runnerd's message once, not a JSON text inside a JSON string.
fn runnerd_refusal(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct RunnerdEnvelope {
        error: String,
        message: Option<String>,
    }
    match serde_json::from_str::<RunnerdEnvelope>(body) {
        Ok(envelope) => envelope.message.unwrap_or(envelope.error),
        Err(_) => body.to_owned(),
    }
}

impl From<RunnerdError> for ApiError {
    /// A 400 from runnerd is the caller's input (400 `bad_request` with runnerd's message); all
    /// else is 502 `upstream_error`.
    fn from(err: RunnerdError) -> ApiError {
        match err {
            RunnerdError::Status { status, body } if status == StatusCode::BAD_REQUEST => {
                ApiError::bad_request(runnerd_refusal(&body))
            }
            err => ApiError::upstream(err.to_string()),
        }
    }
}

impl From<BackendError> for ApiError {
    /// Backend errors reach a client only from a create: an existing session is 409
    /// `duplicate`, a create of the id still in flight (or crashed before its start) 503
    /// `create_in_progress` with `retry-after`, an object named for the session but labelled for
    /// another session or organization 409 `owner_mismatch`, compute out of reach that cannot be
    /// replaced yet 503 `session_unreachable` (with `retry-after`), anything else 502 `create_failed`.
    fn from(err: BackendError) -> ApiError {
        match err {
            BackendError::Exists(id) => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate",
                Some(format!("session {id} exists")),
            ),
            err @ BackendError::CreateInProgress { retry_after, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "create_in_progress",
                Some(err.to_string()),
            )
            .retry_after(retry_after.as_secs()),
            err @ BackendError::OwnerMismatch { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "owner_mismatch",
                Some(err.to_string()),
            ),
            err @ BackendError::Unreachable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_unreachable",
                Some(err.to_string()),
            )
            .retry_after(crate::modes::spawner::limits::UNREACHABLE_RETRY_AFTER_SECONDS),
            err => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "create_failed",
                Some(err.to_string()),
            ),
        }
    }
}

impl From<crate::shared::protocol::spawner::BadRequest> for ApiError {
    fn from(err: crate::shared::protocol::spawner::BadRequest) -> ApiError {
        ApiError::bad_request(err.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn wire(err: ApiError) -> (StatusCode, Option<String>, String) {
        let response = HttpResponse::from(err);
        let retry = response
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    /// The envelope on the wire: `error` and an optional `message`, `retry-after` when set.
    #[tokio::test]
    async fn envelope_bytes() {
        assert_eq!(
            wire(ApiError::not_found()).await,
            (
                StatusCode::NOT_FOUND,
                None,
                r#"{"error":"not_found"}"#.into()
            )
        );
        assert_eq!(
            wire(ApiError::bad_request("x").retry_after(3)).await,
            (
                StatusCode::BAD_REQUEST,
                Some("3".into()),
                r#"{"error":"bad_request","message":"x"}"#.into()
            )
        );
    }

    /// runnerd's 400 envelope becomes our message, never a JSON text inside `message`; other
    /// runnerd failures are 502.
    #[test]
    fn runnerd_errors_are_not_double_encoded() {
        let refused = RunnerdError::Status {
            status: StatusCode::BAD_REQUEST,
            body: r#"{"error":"bad_request","message":"host must be a hostname"}"#.into(),
        };
        assert_eq!(
            ApiError::from(refused),
            ApiError::bad_request("host must be a hostname")
        );
        let bare = RunnerdError::Status {
            status: StatusCode::BAD_REQUEST,
            body: r#"{"error":"bad_request"}"#.into(),
        };
        assert_eq!(ApiError::from(bare), ApiError::bad_request("bad_request"));
        let text = RunnerdError::Status {
            status: StatusCode::BAD_REQUEST,
            body: "plain".into(),
        };
        assert_eq!(ApiError::from(text), ApiError::bad_request("plain"));
        let down = ApiError::from(RunnerdError::Transport("refused".into()));
        assert_eq!(
            (down.status, down.code),
            (StatusCode::BAD_GATEWAY, "upstream_error")
        );
    }

    /// A create still in flight (or crashed before its start) is 503 `create_in_progress` with
    /// the backend's seconds in `retry-after`, never the 409 `duplicate` a platform takes as "use it".
    #[tokio::test]
    async fn create_in_progress_is_a_retryable_503() {
        let err = BackendError::CreateInProgress {
            session_id: "s1".into(),
            retry_after: std::time::Duration::from_secs(7),
        };
        let (status, retry, body) = wire(ApiError::from(err)).await;
        assert_eq!(
            (status, retry.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7"))
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "create_in_progress");
        assert!(
            body["message"].as_str().unwrap().contains("retry in 7 s"),
            "{body}"
        );
    }
}
