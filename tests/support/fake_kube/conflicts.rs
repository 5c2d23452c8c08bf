//! Optimistic concurrency as the API server does it: DELETE `preconditions` (uid, resourceVersion)
//! answered 409 Conflict when unmet, and PATCH with a JSON merge patch (RFC 7386,
//! `application/merge-patch+json`), whose `metadata.resourceVersion`, when sent, must match.
use super::{lock, qualified, reply, status, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Mutex;

/// The content type of a JSON merge patch.
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// The 409 a DELETE whose `preconditions` do not match `object` gets (`None`: they match or none
/// were sent).
pub fn unmet_precondition(
    resource: &str,
    object: &Value,
    body: Option<&Value>,
) -> Option<Response<Full<Bytes>>> {
    let preconditions = body.map(|b| &b["preconditions"])?;
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    for (field, key) in [("UID", "uid"), ("ResourceVersion", "resourceVersion")] {
        let Some(wanted) = preconditions[key].as_str() else {
            continue;
        };
        let actual = meta[key].as_str().unwrap_or("");
        if wanted != actual {
            return Some(status(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {actual}",
                    qualified(resource)
                ),
                resource,
                name,
            ));
        }
    }
    None
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// PATCH of a stored object: only merge patches are served (415 for other patch types).
pub fn patch(
    state: &Mutex<State>,
    key: (String, String, String),
    content_type: &str,
    body: Option<Value>,
) -> Response<Full<Bytes>> {
    let (resource, _, name) = key.clone();
    if content_type.split(';').next().map(str::trim) != Some(MERGE_PATCH) {
        return status(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: {MERGE_PATCH} (the fake serves no other patch type)"),
            &resource,
            &name,
        );
    }
    let Some(patch) = body else {
        return status(
            400,
            "BadRequest",
            "the body is not JSON".into(),
            &resource,
            &name,
        );
    };
    let mut guard = lock(state);
    let Some(current) = guard.objects.get(&key).cloned() else {
        return super::not_found(&resource, &name);
    };
    if let Some(sent) = patch["metadata"]["resourceVersion"].as_str() {
        if Some(sent) != current["metadata"]["resourceVersion"].as_str() {
            return status(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", qualified(&resource)),
                &resource,
                &name,
            );
        }
    }
    let mut object = current.clone();
    merge(&mut object, &patch);
    // Fields a patch cannot change.
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
    ] {
        object["metadata"][field] = current["metadata"][field].clone();
    }
    if let Some(refs) = object["metadata"]["ownerReferences"].as_array() {
        let complete = refs.iter().all(|r| {
            ["apiVersion", "kind", "name", "uid"]
                .iter()
                .all(|f| r[*f].as_str().is_some_and(|v| !v.is_empty()))
        });
        if !complete {
            return status(
                422,
                "Invalid",
                "metadata.ownerReferences: apiVersion, kind, name and uid are required".into(),
                &resource,
                &name,
            );
        }
    }
    guard.resource_version += 1;
    object["metadata"]["resourceVersion"] = json!(guard.resource_version.to_string());
    guard.objects.insert(key, object.clone());
    reply(StatusCode::OK, &object)
}
