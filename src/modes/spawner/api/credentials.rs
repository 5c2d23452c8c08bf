//! Per-operation git credentials: granted to the session's runnerd, held in its memory only.
use super::sessions::lost_or_upstream;
use super::{bad_request, ok, ApiError, ApiRequest, Reply};
use crate::modes::spawner::state::Spawner;
use crate::shared::protocol::runnerd::GitCredentialGrant;

/// The grant route's body: `{host, username, password, expiresAtMs?}`.
pub fn grant_body(body: serde_json::Value) -> Result<GitCredentialGrant, ApiError> {
    serde_json::from_value(body)
        .map_err(|_| bad_request("body must be {host, username, password, expiresAtMs?}"))
}

/// The host of the revoke route's path, percent-decoded.
pub fn revoke_host(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

pub async fn grant(spawner: &Spawner, id: &str, request: &ApiRequest) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let grant = grant_body(request.json()?)?;
    match entry.runnerd.grant_git_credential(&grant).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}

pub async fn revoke(spawner: &Spawner, id: &str, host: &str) -> Reply {
    let entry = spawner.lookup_or_heal(id).await?;
    let host = revoke_host(host);
    match entry.runnerd.revoke_git_credential(&host).await {
        Ok(reply) => Ok(ok(&reply)),
        Err(err) => Err(lost_or_upstream(spawner, id, err).await),
    }
}
