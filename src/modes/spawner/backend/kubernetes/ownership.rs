//! Finding a session's Pod, PVC and Secret by name and proving they are the session's own by their
//! annotations (`tale.dev/session-id`, `tale.dev/organization-id`) before anything uses, replaces
//! or deletes them. Objects are looked for under the session's current base name, then under the
//! base name the previous release gave it (always the SHA-1 prefix); see `backend::names`.
use super::super::names::{candidate_base_names, judge, Found, NameRules};
use super::super::BackendResult;
use super::manifests::{
    pvc_name_for, secret_name_for, ANNOTATION_ORGANIZATION_ID, ANNOTATION_SESSION_ID,
};
use super::{api, KubernetesBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;

/// The session's base names to look under, current first.
pub fn base_names(session_id: &str) -> Vec<String> {
    candidate_base_names(session_id, NameRules::Kubernetes)
}

/// (session id, organization) as an object's annotations record them.
fn recorded(meta: &ObjectMeta) -> (Option<&str>, Option<&str>) {
    let note = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    (
        note(ANNOTATION_SESSION_ID),
        note(ANNOTATION_ORGANIZATION_ID),
    )
}

/// Whether the object was created less than `window` ago by the API server's clock as read here
/// (an object without a creation time counts as old).
pub fn younger_than(meta: &ObjectMeta, window: std::time::Duration) -> bool {
    time_left(meta, window).is_some()
}

/// How long until the object is `window` old (`None` when it already is, or has no creation time):
/// the `retry-after` of a create that meets another create's young objects.
pub fn time_left(meta: &ObjectMeta, window: std::time::Duration) -> Option<std::time::Duration> {
    let created = meta.creation_timestamp.as_ref()?;
    let created_ms = created.0.as_millisecond().max(0) as u64;
    let age_ms = crate::shared::clock::now_ms().saturating_sub(created_ms);
    (window.as_millis() as u64)
        .checked_sub(age_ms)
        .filter(|left| *left > 0)
        .map(std::time::Duration::from_millis)
}

/// Judges `object`, found under candidate `index`, for the session asking.
pub fn judge_object<K: Metadata<Ty = ObjectMeta>>(
    kind: &'static str,
    name: &str,
    object: K,
    index: usize,
    asking: (&str, Option<&str>),
) -> Option<Found<K>> {
    let (owner, owner_org) = recorded(object.metadata());
    let (owner, owner_org) = (owner.map(str::to_owned), owner_org.map(str::to_owned));
    judge(
        kind,
        name.to_owned(),
        object,
        index,
        asking,
        (owner.as_deref(), owner_org.as_deref()),
    )
}

/// Looks for the session's object of one kind under each candidate name (`name_for(base)`).
async fn find<K>(
    api: &kube::Api<K>,
    kind: &'static str,
    name_for: impl Fn(&str) -> String,
    session_id: &str,
    org: Option<&str>,
) -> BackendResult<Found<K>>
where
    K: kube::Resource
        + Metadata<Ty = ObjectMeta>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    for (index, base) in base_names(session_id).into_iter().enumerate() {
        let name = name_for(&base);
        let Some(object) = api.get_opt(&name).await.map_err(api_error(kind))? else {
            continue;
        };
        if let Some(found) = judge_object(kind, &name, object, index, (session_id, org)) {
            return Ok(found);
        }
    }
    Ok(Found::Absent)
}

fn api_error(kind: &'static str) -> impl FnOnce(kube::Error) -> super::super::BackendError {
    api(match kind {
        "Pod" => "cannot read the session Pod",
        "PVC" => "cannot read the workspace PVC",
        _ => "cannot read a session object",
    })
}

impl KubernetesBackend {
    /// The session's Pod (its name is the base name), annotation-checked (the organization too
    /// when `org` is given).
    pub(super) async fn find_pod(
        &self,
        session_id: &str,
        org: Option<&str>,
    ) -> BackendResult<Found<k8s_openapi::api::core::v1::Pod>> {
        find(&self.pods, "Pod", str::to_owned, session_id, org).await
    }

    /// The session's workspace PVC, annotation-checked.
    pub(super) async fn find_pvc(
        &self,
        session_id: &str,
        org: Option<&str>,
    ) -> BackendResult<Found<k8s_openapi::api::core::v1::PersistentVolumeClaim>> {
        find(&self.pvcs, "PVC", pvc_name_for, session_id, org).await
    }

    /// Whether the Secret of base name `base` is absent or this session's (safe to delete).
    pub(super) async fn secret_is_ours_or_absent(
        &self,
        session_id: &str,
        base: &str,
    ) -> BackendResult<bool> {
        let name = secret_name_for(base);
        Ok(
            match self
                .secrets
                .get_opt(&name)
                .await
                .map_err(api("cannot read the session Secret"))?
            {
                None => true,
                Some(secret) => matches!(
                    judge_object("Secret", &name, secret, 0, (session_id, None)),
                    Some(Found::Ours { .. })
                ),
            },
        )
    }
}
