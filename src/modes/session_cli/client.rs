//! The CLI's use of the shared signed client (`shared::spawner_client`) and the translation of
//! spawner refusals into messages that say what to do.
use crate::shared::spawner_client::{read_reply, SpawnerClient, SpawnerClientError};
use hyper::{Method, Uri};
use serde_json::Value;

/// A failure with its exit code: [`super::REFUSED`] when the spawner said no, [`super::CLI_FAILURE`]
/// when the CLI could not ask.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn local(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: super::CLI_FAILURE,
        }
    }

    pub fn refused(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: super::REFUSED,
        }
    }
}

/// Checks the spawner URL before any request: `http://host[:port]`, nothing else.
pub fn parse_base_url(url: &str) -> Result<String, CliError> {
    let hint =
        "expected http://HOST[:PORT], e.g. http://127.0.0.1:8003 (set --url or TALE_SPAWNER_URL)";
    let uri: Uri = url
        .parse()
        .map_err(|_| CliError::local(format!("the spawner URL {url:?} is not a URL: {hint}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) if matches!(uri.path(), "" | "/") && uri.query().is_none() => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        (Some("https"), _) => Err(CliError::local(format!(
            "the spawner URL {url:?} uses https, which this CLI does not speak: put it behind a local http endpoint or use http://"
        ))),
        _ => Err(CliError::local(format!(
            "the spawner URL {url:?} is not usable: {hint}"
        ))),
    }
}

/// Checks an id (session or exec) before it goes into a path.
pub fn check_id(what: &str, id: &str) -> Result<(), CliError> {
    if crate::shared::protocol::runnerd::is_valid_id(id) {
        Ok(())
    } else {
        Err(CliError::local(format!(
            "invalid {what} id {id:?}: ids are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

/// The shared signed client with the CLI's policy: failures become [`CliError`]s that say what to
/// do, and a 401 is a refusal before any caller sees it.
#[derive(Clone)]
pub struct CliClient {
    spawner: SpawnerClient,
}

/// A JSON reply: status, body (`Null` when the body is not JSON) and `retry-after` in seconds.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

impl CliClient {
    /// `token` `None` sends unsigned requests (a spawner started without SANDBOX_TOKEN).
    pub fn new(base: String, token: Option<Vec<u8>>) -> CliClient {
        CliClient {
            spawner: SpawnerClient::new(base, token.as_deref()),
        }
    }

    /// Sends one signed request (every request carries a fresh nonce).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        let response = self
            .spawner
            .open(method, path, body)
            .await
            .map_err(cannot_ask)?;
        if response.status() == hyper::StatusCode::UNAUTHORIZED {
            return Err(unauthorized());
        }
        Ok(response)
    }

    /// Sends one signed request with a raw body (`content_type` replaces the JSON default).
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        bytes: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        let mut request = self
            .spawner
            .request(method, path, Some(bytes.into()))
            .map_err(cannot_ask)?;
        match content_type {
            Some(value) => {
                let value = hyper::header::HeaderValue::from_str(value)
                    .map_err(|e| CliError::local(format!("bad content type {value:?}: {e}")))?;
                request
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            None => {
                request.headers_mut().remove(hyper::header::CONTENT_TYPE);
            }
        }
        let response = self.spawner.send(request).await.map_err(cannot_ask)?;
        if response.status() == hyper::StatusCode::UNAUTHORIZED {
            return Err(unauthorized());
        }
        Ok(response)
    }

    /// Sends a request and reads its JSON reply (any status but 401).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CliError> {
        let response = self.send(method, path, body).await?;
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let reply = read_reply(response).await.map_err(cannot_ask)?;
        Ok(Reply {
            status: reply.status.as_u16(),
            body: reply.json(),
            retry_after,
        })
    }
}

/// The message for a request that got no whole reply: the client's error, its cause, and for an
/// unreachable spawner where to look.
fn cannot_ask(error: SpawnerClientError) -> CliError {
    let cause = std::error::Error::source(&error).map_or_else(String::new, |c| format!(": {c}"));
    let hint = match error {
        SpawnerClientError::Unreachable { .. } => {
            " (is it running? check --url / TALE_SPAWNER_URL)"
        }
        _ => "",
    };
    CliError::local(format!("{error}{cause}{hint}"))
}

fn unauthorized() -> CliError {
    CliError::refused(
        "the spawner refused the request signature (401): SANDBOX_TOKEN (or --token-file) must hold \
         the spawner's own token, and this machine's clock must be within 30 s of the spawner's",
    )
}

/// The message for a refusal: the error envelope's code and message, or the status alone.
pub fn refusal(status: u16, body: &Value) -> CliError {
    let code = body["error"].as_str().unwrap_or("");
    let message = body["message"].as_str().unwrap_or("");
    let detail = match (code, message) {
        ("", "") => String::new(),
        (code, "") => format!(" ({code})"),
        (code, message) => format!(" ({code}: {message})"),
    };
    CliError::refused(format!("the spawner answered {status}{detail}"))
}

/// A 404 on a session route: the session does not exist (or is no longer known).
pub fn session_missing(id: &str) -> CliError {
    CliError::refused(format!(
        "session {id:?} not found (list sessions with `tale session ls`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only plain http base URLs pass; the messages name the fix.
    #[test]
    fn base_url_rules() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:8003/").unwrap(),
            "http://127.0.0.1:8003"
        );
        for bad in [
            "127.0.0.1:8003",
            "http://",
            "htp:/x y",
            "http://h/v1",
            "https://h",
        ] {
            let err = parse_base_url(bad).unwrap_err();
            assert!(err.message.contains("http"), "{bad}: {}", err.message);
        }
        assert!(check_id("session", "a_b-1").is_ok());
        assert!(check_id("session", "a b")
            .unwrap_err()
            .message
            .contains("1-64 characters"));
    }
}
