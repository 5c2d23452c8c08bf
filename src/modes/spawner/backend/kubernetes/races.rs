//! Same-id create races across replicas, and cleanup that only removes what a create made.
//!
//! The session's Secret is a create's lock: the create whose Secret POST succeeds goes on. A
//! Secret or live Pod younger than the create budget (plus grace) whose runnerd does not answer
//! yet is another replica's create in flight ([`BackendError::CreateInProgress`], 503 with the time until it counts as dead: nothing touched).
//! A failed create deletes only the objects it made, each under the uid the API server gave it
//! (`preconditions.uid`: 409 instead of deleting a same-named successor), and reaping an ended
//! Pod removes only that incarnation.
use super::super::names::Found;
use super::super::{BackendError, BackendResult, SessionSpec};
use super::{api, is_conflict, is_not_found, manifests, ownership, status, KubernetesBackend};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use std::time::Duration;

/// Delete options that act only on the object with this uid (409 Conflict otherwise).
pub(super) fn uid_precondition(uid: Option<String>) -> DeleteParams {
    DeleteParams::default().preconditions(Preconditions {
        uid,
        resource_version: None,
    })
}

/// A delete's outcome where "already gone" (404) and "replaced since" (409) count as done.
pub(super) fn gone_is_done<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) || is_conflict(&err) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The objects one create made (uids as the API server returned them), for its cleanup.
pub(super) struct Made {
    pub(super) pod_name: String,
    pub(super) secret_name: String,
    pub(super) pvc_name: String,
    pub(super) pod: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) pvc: Option<String>,
}

impl Made {
    pub(super) fn named(session_id: &str) -> Made {
        Made {
            pod_name: manifests::pod_name(session_id),
            secret_name: manifests::secret_name(session_id),
            pvc_name: manifests::pvc_name(session_id),
            pod: None,
            secret: None,
            pvc: None,
        }
    }
}

impl KubernetesBackend {
    /// Why a create stops at the session's live Pod: another replica's create still in flight
    /// (`CreateInProgress`: younger than `in_flight` and its runnerd not answering yet), else a session
    /// that exists (`Exists`; a create that died after runnerd came up is finished by the caller).
    pub(super) async fn live_pod_refusal(
        &self,
        spec: &SessionSpec,
        pod: &Pod,
        in_flight: Duration,
    ) -> BackendError {
        let id = spec.session_id.clone();
        let Some(left) = ownership::time_left(&pod.metadata, in_flight) else {
            return BackendError::Exists(id);
        };
        let in_progress = |session_id| BackendError::CreateInProgress {
            session_id,
            retry_after: left.max(Duration::from_secs(1)),
        };
        let Some(ip) = status::pod_ip(pod).filter(|_| status::is_running(pod)) else {
            return in_progress(id);
        };
        let url = status::runnerd_url(ip, self.manifests.runnerd_port);
        let answers = crate::modes::spawner::runnerd_client::RunnerdClient::for_session(
            &url,
            &spec.runnerd_token,
            spec.runnerd_tls.as_ref(),
        )
        .health()
        .await
        .is_ok();
        if answers {
            BackendError::Exists(id)
        } else {
            in_progress(id)
        }
    }

    /// Deletes what a failed create made, each object only under the uid it was created with (a
    /// concurrent create's objects of the same names are never touched).
    pub(super) async fn remove_made(&self, made: &Made) -> BackendResult<()> {
        if let Some(uid) = &made.pod {
            let params =
                uid_precondition(Some(uid.clone())).grace_period(manifests::STOP_GRACE_SECONDS);
            gone_is_done(self.pods.delete(&made.pod_name, &params).await)
                .map_err(api("cannot delete the session Pod"))?;
        }
        if let Some(uid) = &made.secret {
            gone_is_done(
                self.secrets
                    .delete(&made.secret_name, &uid_precondition(Some(uid.clone())))
                    .await,
            )
            .map_err(api("cannot delete the session Secret"))?;
        }
        if let Some(uid) = &made.pvc {
            gone_is_done(
                self.pvcs
                    .delete(&made.pvc_name, &uid_precondition(Some(uid.clone())))
                    .await,
            )
            .map_err(api("cannot delete the workspace PVC"))?;
        }
        Ok(())
    }

    /// Deletes the Secret of the ended Pod `base` when it is this session's and was made no later
    /// than the Pod (whole seconds, as the API server stamps them), under its uid.
    pub(super) async fn reap_secret(
        &self,
        session_id: &str,
        base: &str,
        ended: &Pod,
    ) -> BackendResult<()> {
        let name = manifests::secret_name_for(base);
        let Some(secret) = self
            .secrets
            .get_opt(&name)
            .await
            .map_err(api("cannot read the session Secret"))?
        else {
            return Ok(());
        };
        let predates = match (
            &secret.metadata.creation_timestamp,
            &ended.metadata.creation_timestamp,
        ) {
            (Some(secret), Some(pod)) => secret <= pod,
            // Without both times (objects of another writer) the ended Pod's Secret it is.
            _ => true,
        };
        let uid = secret.metadata.uid.clone();
        let ours = matches!(
            ownership::judge_object("Secret", &name, secret, 0, (session_id, None)),
            Some(Found::Ours { .. })
        );
        if !(ours && predates) {
            return Ok(());
        }
        gone_is_done(self.secrets.delete(&name, &uid_precondition(uid)).await)
            .map_err(api("cannot delete the session Secret"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(
            serde_json::json!({"code": code, "reason": "x", "message": "m"}),
        )
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    /// A cleanup delete counts "already gone" (404) and "replaced since" (409, an unmet uid
    /// precondition) as done; any other failure is reported.
    #[test]
    fn gone_or_replaced_is_done() {
        assert!(gone_is_done(Ok::<(), _>(())).is_ok());
        assert!(gone_is_done::<()>(Err(api_error(404))).is_ok());
        assert!(gone_is_done::<()>(Err(api_error(409))).is_ok());
        assert!(gone_is_done::<()>(Err(api_error(403))).is_err());
    }

    /// The delete options carry the uid precondition as the API expects it.
    #[test]
    fn uid_precondition_is_sent() {
        let params = uid_precondition(Some("u-1".into()));
        let body = serde_json::to_value(&params).unwrap();
        assert_eq!(body["preconditions"], serde_json::json!({"uid": "u-1"}));
    }
}
