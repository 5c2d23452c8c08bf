//! A session's seed: what the platform hands over at create and nothing stores outside runnerd's
//! memory (today the `env`; files and credentials given at create would join it). A session is
//! `ready` only once its whole seed was delivered and runnerd recorded that (`PUT /seed`); until
//! then it is `degraded`. runnerd keeps the record in memory beside what it vouches for, so every
//! way the seed can be missing — a spawner killed in the middle of a create, a container or Pod
//! started again with a fresh runnerd — reads as unseeded, on every backend.
use crate::modes::spawner::runnerd_client::{RunnerdClient, RunnerdError};
use crate::shared::protocol::runnerd::EnvPatch;
use crate::shared::protocol::spawner::{CreateSession, SessionState};

/// What the create's seed is, as a digest: equal bodies (organization, profile, env) give equal
/// digests, whatever the order of the env's names.
pub fn seed_digest(create: &CreateSession) -> String {
    let canonical = serde_json::json!({
        "organizationId": create.organization_id,
        "profile": create.profile.as_str(),
        // A BTreeMap: serialized in name order.
        "env": create.env,
    });
    crate::shared::hmac::sha256_hex(canonical.to_string().as_bytes())
}

/// Delivers the seed (the env through runnerd, never through the container's environment), then
/// records it as delivered. Safe to repeat: setting the same env again changes nothing.
pub async fn deliver(runnerd: &RunnerdClient, create: &CreateSession) -> Result<(), RunnerdError> {
    let id = &create.session_id;
    if !create.env.is_empty() {
        let patch = EnvPatch {
            set: Some(create.env.clone()),
            unset: None,
        };
        let reply = runnerd.patch_env(&patch).await?;
        if !reply.denied.is_empty() {
            tracing::info!(session_id = %id, denied = ?reply.denied, "seed env names refused");
        }
    }
    super::test_hooks::pause_at("during_seeding").await;
    if runnerd.mark_seeded(&seed_digest(create)).await?.is_none() {
        // A session image older than the spawner (a rolling upgrade): its runnerd cannot keep
        // the record, and reads as seeded (`state_of`) — as every session did before it.
        tracing::info!(session_id = %id, "runnerd predates the seed record; seed delivered unrecorded");
    }
    Ok(())
}

/// The digest recorded for a session a previous release created and seeded without recording it
/// (see [`adopted_state`]): no create body hashes to it, so a retried create is a duplicate, as it
/// was in that release.
pub fn unrecorded_seed_digest() -> String {
    crate::shared::hmac::sha256_hex(b"tale: seed delivered by a release that did not record it")
}

/// The state a session is adopted in: as [`state_of`], except for a session whose creator did not
/// record seeds (a previous release's spawner, while the session runs this release's runnerd). Its
/// creator delivered the seed before answering the create, as that release always did, so its
/// runnerd is told so once (`PUT /seed`, a digest no create body has) and every replica then
/// reads it as `ready`, as that release reported it.
pub async fn adopted_state(
    runnerd: &RunnerdClient,
    backend: &dyn crate::modes::spawner::backend::Backend,
    session_id: &str,
) -> SessionState {
    let status = runnerd.seed_status().await;
    if matches!(&status, Ok(Some(s)) if !s.seeded) {
        match backend.creator_records_seed(session_id).await {
            Ok(false) => match runnerd.mark_seeded(&unrecorded_seed_digest()).await {
                Ok(_) => {
                    tracing::info!(
                        session_id,
                        "adopted a previous release's session; its seed recorded as delivered"
                    );
                    return SessionState::Ready;
                }
                Err(err) => {
                    tracing::warn!(session_id, %err, "cannot record the seed of a previous release's session; reported degraded")
                }
            },
            Ok(true) => {}
            Err(err) => {
                tracing::warn!(session_id, %err, "cannot tell which release created the session")
            }
        }
    }
    state_from(session_id, status)
}

/// The state a live session is reported in, from runnerd's seed record: `ready` when seeded (or
/// when runnerd predates the record), `degraded` when not, or when runnerd cannot say.
pub async fn state_of(runnerd: &RunnerdClient, session_id: &str) -> SessionState {
    state_from(session_id, runnerd.seed_status().await)
}

fn state_from(
    session_id: &str,
    status: Result<Option<crate::shared::protocol::runnerd::SeedStatus>, RunnerdError>,
) -> SessionState {
    match status {
        Ok(Some(status)) if status.seeded => SessionState::Ready,
        Ok(None) => SessionState::Ready,
        Ok(Some(_)) => {
            tracing::warn!(
                session_id,
                "session was never completely seeded; reported degraded until a create with its body finishes it"
            );
            SessionState::Degraded
        }
        Err(err) => {
            tracing::warn!(session_id, %err, "runnerd could not say whether the session is seeded; reported degraded");
            SessionState::Degraded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::protocol::spawner::Profile;
    use std::collections::BTreeMap;

    fn create(org: &str, env: &[(&str, &str)]) -> CreateSession {
        CreateSession {
            session_id: "s".into(),
            organization_id: org.into(),
            profile: Profile::Default,
            ttl_ms: 1,
            idle_timeout_ms: 1,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Answers every request on a loopback port with `status` and `body`; returns the base URL.
    async fn fixed_runnerd(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        url
    }

    /// The reported state follows runnerd's seed record: seeded → ready, unseeded → degraded, a
    /// runnerd from before the record (404) → ready, a runnerd that cannot say → degraded.
    #[tokio::test]
    async fn state_follows_the_seed_record() {
        let cases = [
            (
                "200 OK",
                r#"{"seeded":true,"digest":"00","seededAtMs":1}"#,
                SessionState::Ready,
            ),
            ("200 OK", r#"{"seeded":false}"#, SessionState::Degraded),
            (
                "404 Not Found",
                r#"{"error":"not_found"}"#,
                SessionState::Ready,
            ),
            (
                "500 Internal Server Error",
                r#"{"error":"internal"}"#,
                SessionState::Degraded,
            ),
            ("200 OK", r#"{"unexpected":1}"#, SessionState::Degraded),
        ];
        for (status, body, expected) in cases {
            let url = fixed_runnerd(status, body).await;
            let client = RunnerdClient::new(&url, "t");
            assert_eq!(state_of(&client, "s").await, expected, "{status} {body}");
        }
        let gone = RunnerdClient::new("http://127.0.0.1:1", "t");
        assert_eq!(state_of(&gone, "s").await, SessionState::Degraded);
    }

    /// A runnerd older than the seed record (404 on `/seed`) still takes a create: the seed is
    /// delivered unrecorded; one that fails the mark otherwise fails the delivery.
    #[tokio::test]
    async fn delivery_to_a_runnerd_without_the_record() {
        let old = RunnerdClient::new(
            &fixed_runnerd("404 Not Found", r#"{"error":"not_found"}"#).await,
            "t",
        );
        deliver(&old, &create("o", &[])).await.unwrap();
        let broken =
            RunnerdClient::new(&fixed_runnerd("500 Internal Server Error", "{}").await, "t");
        assert!(deliver(&broken, &create("o", &[])).await.is_err());
    }

    /// The digest covers org, profile and env (in any order), not the TTLs; it is what runnerd's
    /// `PUT /seed` accepts (64 lowercase hex).
    #[test]
    fn digest_names_the_seed() {
        let a = seed_digest(&create("o", &[("A", "1"), ("B", "2")]));
        assert_eq!(a, seed_digest(&create("o", &[("B", "2"), ("A", "1")])));
        let mut longer = create("o", &[("A", "1"), ("B", "2")]);
        longer.ttl_ms = 99;
        assert_eq!(a, seed_digest(&longer));
        assert_ne!(a, seed_digest(&create("p", &[("A", "1"), ("B", "2")])));
        assert_ne!(a, seed_digest(&create("o", &[("A", "1"), ("B", "3")])));
        let mut agent = create("o", &[("A", "1"), ("B", "2")]);
        agent.profile = Profile::Agent;
        assert_ne!(a, seed_digest(&agent));
        assert!(crate::shared::protocol::runnerd::SeedMark { digest: a }.is_valid());
    }
}
