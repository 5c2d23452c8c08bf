//! The fake's object lifecycle, as the API server and its controllers behave:
//! - graceful deletion: a Pod DELETE sets `deletionTimestamp` and `deletionGracePeriodSeconds`;
//!   the object stays until its kubelet confirms (runnerd exited, SIGKILL after the grace); grace 0
//!   removes it at once (a force delete); on a lost node nothing confirms, so it stays Terminating;
//! - the `kubernetes.io/pvc-protection` finalizer: a PVC deleted while a Pod that has not ended
//!   uses it stays Terminating until that Pod is gone;
//! - owner references: removing a Pod deletes the objects it owns (the garbage collector's
//!   background propagation);
//! - eviction: `POST pods/<name>/eviction` (policy/v1) marks the Pod `DisruptionTarget` and
//!   deletes it gracefully, as the Eviction API does; [`FakeKube::evict_for_node_pressure`] is the
//!   kubelet's own eviction (the Pod stays, `Failed`, reason `Evicted`);
//! - volume attachment (`attachments.rs`);
//! - JSON merge patches (RFC 7386) of any stored object.
use super::{lock, not_found, now_rfc3339, reply, status, FakeKube, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The finalizer the PVC protection admission plugin puts on every claim.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// Lifecycle state beside the stored objects.
#[derive(Default)]
pub(super) struct Lifecycle {
    /// (namespace, claim) → the node its volume is attached to.
    pub(super) attachments: HashMap<(String, String), String>,
    /// (namespace, claim) → until when a test holds its attachment on another node.
    pub(super) held: HashMap<(String, String), Instant>,
    /// Events recorded so far (for unique names).
    pub(super) events: u64,
}

type Key = (String, String, String);

pub(super) fn pod_claims(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .map(str::to_owned)
        .collect()
}

pub(super) fn is_ended(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Failed" | "Succeeded")
    )
}

/// Removes an object from storage and runs what follows a removal: owner-reference garbage
/// collection and the PVC protection controller.
pub(super) fn remove_object(state: &mut State, key: &Key) {
    let Some(object) = state.objects.remove(key) else {
        return;
    };
    if key.0 == "persistentvolumeclaims" {
        forget_volume(state, &key.1, &key.2);
    }
    let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let namespace = key.1.clone();
    let owned: Vec<Key> = state
        .objects
        .iter()
        .filter(|((_, ns, _), o)| {
            *ns == namespace
                && o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for dependent in owned {
        // Background propagation: dependents go their own way (a Secret is removed at once).
        if dependent.0 == "pods" {
            mark_deleting(state, &dependent, 0);
        } else {
            remove_object(state, &dependent);
        }
    }
    release_pvcs(state);
}

/// Sets `deletionTimestamp` (once) on a stored object.
fn mark_deleting(state: &mut State, key: &Key, grace: u64) -> Option<Value> {
    state.resource_version += 1;
    let rv = state.resource_version.to_string();
    let object = state.objects.get_mut(key)?;
    if object["metadata"]["deletionTimestamp"].is_null() {
        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        object["metadata"]["resourceVersion"] = json!(rv);
    }
    Some(object.clone())
}

/// The PVC protection controller: a Terminating claim no live Pod uses loses its finalizer and
/// goes.
pub(super) fn release_pvcs(state: &mut State) {
    let terminating: Vec<Key> = state
        .objects
        .iter()
        .filter(|((r, _, _), o)| {
            r == "persistentvolumeclaims" && !o["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in terminating {
        let in_use = state.objects.iter().any(|((r, ns, _), pod)| {
            r == "pods" && *ns == key.1 && !is_ended(pod) && pod_claims(pod).contains(&key.2)
        });
        if !in_use {
            state.objects.remove(&key);
            forget_volume(state, &key.1, &key.2);
        }
    }
}

/// A claim's volume goes with it (the fake's reclaim policy is Delete).
fn forget_volume(state: &mut State, namespace: &str, claim: &str) {
    state
        .lifecycle
        .attachments
        .remove(&(namespace.to_owned(), claim.to_owned()));
    if let Some(root) = state.root.clone() {
        let _ = std::fs::remove_dir_all(root.join("volumes").join(claim));
    }
}

/// DELETE of a stored object, with the semantics above.
pub(super) fn delete(
    state: &Arc<Mutex<State>>,
    key: Key,
    body: Option<Value>,
) -> Response<Full<Bytes>> {
    let (resource, namespace, name) = key.clone();
    let mut guard = lock(state);
    let Some(object) = guard.objects.get(&key).cloned() else {
        return not_found(&resource, &name);
    };
    if let Some(conflict) = super::conflicts::unmet_precondition(&resource, &object, body.as_ref())
    {
        return conflict;
    }
    let finalizers = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if resource == "persistentvolumeclaims" && finalizers {
        let object = mark_deleting(&mut guard, &key, 0).unwrap();
        release_pvcs(&mut guard);
        return reply(StatusCode::OK, &object);
    }
    if resource != "pods" {
        remove_object(&mut guard, &key);
        return reply(StatusCode::OK, &object);
    }
    let default_grace = object["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    let grace = body
        .as_ref()
        .and_then(|b| b["gracePeriodSeconds"].as_u64())
        .unwrap_or(default_grace);
    let child = guard.kubelet.remove(&(namespace.clone(), name.clone()));
    if grace == 0 {
        // A force delete: gone from the API at once, whatever the kubelet does.
        remove_object(&mut guard, &key);
        drop(guard);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = std::thread::spawn(move || child.wait());
        }
        return reply(StatusCode::OK, &object);
    }
    let object = mark_deleting(&mut guard, &key, grace).unwrap();
    let node = object["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
    if super::nodes::is_lost(&guard, &node) {
        // No kubelet confirms: Terminating until a force delete (or the out-of-service taint's
        // Pod garbage collection, which is the spawner's force delete here).
        return reply(StatusCode::OK, &object);
    }
    drop(guard);
    let state = state.clone();
    tokio::spawn(async move {
        if let Some(mut child) = child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
            while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        remove_object(&mut lock(&state), &key);
    });
    reply(StatusCode::OK, &object)
}

/// `POST pods/<name>/eviction`: the Eviction API (no PodDisruptionBudget covers session Pods).
pub(super) fn evict(
    state: &Arc<Mutex<State>>,
    key: Key,
    body: Option<Value>,
) -> Response<Full<Bytes>> {
    let (_, namespace, name) = key.clone();
    let valid = body.as_ref().is_some_and(|b| {
        b["kind"] == "Eviction"
            && b["apiVersion"] == "policy/v1"
            && b["metadata"]["name"] == json!(name)
    });
    if !valid {
        return status(
            400,
            "BadRequest",
            "the eviction body must be a policy/v1 Eviction naming the Pod".into(),
            "pods",
            &name,
        );
    }
    {
        let mut guard = lock(state);
        if !guard.objects.contains_key(&key) {
            return not_found("pods", &name);
        }
        set_condition(
            &mut guard,
            &key,
            json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                   "message": "Eviction API: evicting", "lastTransitionTime": now_rfc3339()}),
        );
    }
    let _ = delete(
        state,
        key,
        body.and_then(|b| b.get("deleteOptions").cloned()),
    );
    let _ = namespace;
    reply(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// Adds or replaces one condition of a stored Pod's status.
fn set_condition(state: &mut State, key: &Key, condition: Value) {
    state.resource_version += 1;
    let rv = state.resource_version.to_string();
    let Some(pod) = state.objects.get_mut(key) else {
        return;
    };
    let mut conditions: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != condition["type"]);
    conditions.push(condition);
    pod["status"]["conditions"] = json!(conditions);
    pod["metadata"]["resourceVersion"] = json!(rv);
}

/// Marks a Pod's readiness False (the node lifecycle controller's view of a lost node).
pub(super) fn mark_not_ready(state: &mut State, key: &Key) {
    set_condition(
        state,
        key,
        json!({"type": "Ready", "status": "False", "lastTransitionTime": now_rfc3339()}),
    );
}

impl FakeKube {
    /// The kubelet evicts the Pod for node pressure: runnerd is killed and the Pod stays,
    /// `Failed` with reason `Evicted` (it is never restarted: a bare Pod has no controller).
    pub fn evict_for_node_pressure(&self, namespace: &str, pod: &str) {
        let mut guard = lock(&self.state);
        if let Some(mut child) = guard
            .kubelet
            .remove(&(namespace.to_owned(), pod.to_owned()))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let key: Key = ("pods".into(), namespace.into(), pod.into());
        guard.resource_version += 1;
        let rv = guard.resource_version.to_string();
        if let Some(object) = guard.objects.get_mut(&key) {
            let now = now_rfc3339();
            object["status"] = json!({
                "phase": "Failed", "reason": "Evicted",
                "message": "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. ",
                "qosClass": "Burstable", "hostIP": object["status"]["hostIP"].clone(),
                "conditions": [
                    {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                     "message": "The node was low on resource: memory.", "lastTransitionTime": now},
                    {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
                ],
                "containerStatuses": [{"name": "runner", "ready": false, "restartCount": 0,
                    "image": object["spec"]["containers"][0]["image"].clone(), "imageID": "",
                    "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated"}}}],
            });
            object["metadata"]["resourceVersion"] = json!(rv);
        }
        release_pvcs(&mut guard);
    }

    /// `POST pods/<pod>/eviction`, as `kubectl drain` sends it (the same code path as over HTTP).
    pub fn evict_via_api(&self, namespace: &str, pod: &str) -> u16 {
        let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": pod, "namespace": namespace}});
        evict(
            &self.state,
            ("pods".into(), namespace.into(), pod.into()),
            Some(body),
        )
        .status()
        .as_u16()
    }

    /// Removes an object at once (a Pod: as a force delete; its owned objects follow).
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) {
        let mut guard = lock(&self.state);
        if let Some(mut child) = guard
            .kubelet
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_object(
            &mut guard,
            &(resource.into(), namespace.into(), name.into()),
        );
    }
}

/// Root of the fake's volumes, for the PVC protection controller's removals.
pub(super) fn set_root(state: &mut State, root: &Path) {
    state.root = Some(root.to_path_buf());
}
