//! Per-operation git credentials: granted to the session's runnerd, held in its memory only.
use super::sessions::lost_or_upstream;
use super::{bad_request, not_found, ok, ApiRequest};
use crate::modes::spawner::runnerd_client::RunnerdError;
use crate::modes::spawner::state::Spawner;
use crate::shared::http::HttpResponse;
use crate::shared::protocol::runnerd::GitCredentialGrant;

pub async fn grant(spawner: &Spawner, id: &str, request: &ApiRequest) -> HttpResponse {
    let Some(entry) = spawner.lookup(id).await else {
        return not_found();
    };
    let grant: GitCredentialGrant = match request.json().and_then(|v| {
        serde_json::from_value(v)
            .map_err(|_| bad_request("body must be {host, username, password, expiresAtMs?}"))
    }) {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    match entry.runnerd.grant_git_credential(&grant).await {
        Ok(reply) => ok(&reply),
        Err(RunnerdError::Status { status, body }) if status == hyper::StatusCode::BAD_REQUEST => {
            bad_request(body)
        }
        Err(err) => lost_or_upstream(spawner, id, err).await,
    }
}

pub async fn revoke(spawner: &Spawner, id: &str, host: &str) -> HttpResponse {
    let Some(entry) = spawner.lookup(id).await else {
        return not_found();
    };
    let host = percent_encoding::percent_decode_str(host).decode_utf8_lossy();
    match entry.runnerd.revoke_git_credential(&host).await {
        Ok(reply) => ok(&reply),
        Err(err) => lost_or_upstream(spawner, id, err).await,
    }
}
