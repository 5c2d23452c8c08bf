//! Volume attachment in the fake, as the attach/detach controller and the kubelet do it: a
//! ReadWriteOnce claim (bound at once to the volume [`volume_name`]) is attached to one node at a
//! time; a Pod on another node waits in `ContainerCreating` with a `FailedAttachVolume`
//! Multi-Attach Event until the old node's attachment is released (no running Pod of the claim
//! left there, and the node Ready or tainted `node.kubernetes.io/out-of-service`). Attachments are
//! served as cluster-scoped VolumeAttachments.
use super::lifecycle::{is_ended, pod_claims};
use super::{lock, now_rfc3339, reply, status, FakeKube, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the fake kubelet retries attaching a volume held by another node.
const ATTACH_RETRY: Duration = Duration::from_millis(100);

type Key = (String, String, String);

/// Whether `claim` may be attached to `node` now; records the attachment when it may. A test's
/// hold, or another node's attachment that cannot yet be released, says no.
fn try_attach(state: &mut State, namespace: &str, claim: &str, node: &str) -> Result<(), String> {
    let claim_key = (namespace.to_owned(), claim.to_owned());
    if let Some(until) = state.lifecycle.held.get(&claim_key).copied() {
        if Instant::now() < until {
            return Err(String::new());
        }
        state.lifecycle.held.remove(&claim_key);
        state.lifecycle.attachments.remove(&claim_key);
    }
    if let Some(current) = state.lifecycle.attachments.get(&claim_key).cloned() {
        if current != node {
            let users: Vec<String> = state
                .objects
                .iter()
                .filter(|((r, ns, _), pod)| {
                    r == "pods"
                        && ns == namespace
                        && pod["spec"]["nodeName"] == json!(current)
                        && !is_ended(pod)
                        && pod_claims(pod).iter().any(|c| c == claim)
                })
                .map(|((_, _, name), _)| name.clone())
                .collect();
            let releasable = users.is_empty()
                && (!super::nodes::is_lost(state, &current)
                    || super::nodes::is_out_of_service(state, &current));
            if !releasable {
                return Err(users.join(", "));
            }
        }
    }
    state
        .lifecycle
        .attachments
        .insert(claim_key, node.to_owned());
    Ok(())
}

/// Records (or counts again) the Multi-Attach Event of a Pod, as the attach/detach controller.
fn multi_attach_event(state: &mut State, key: &Key, claim: &str, users: &str) {
    let (_, namespace, pod) = key;
    let uid = state.objects.get(key).map(|p| p["metadata"]["uid"].clone());
    let Some(uid) = uid else {
        return;
    };
    let volume = format!("pvc-{claim}");
    let message = if users.is_empty() {
        format!("Multi-Attach error for volume \"{volume}\" Volume is already exclusively attached to one node and can't be attached to another")
    } else {
        format!(
            "Multi-Attach error for volume \"{volume}\" Volume is already used by pod(s) {users}"
        )
    };
    let existing = state.objects.iter().find_map(|((r, ns, name), e)| {
        (r == "events"
            && ns == namespace
            && e["involvedObject"]["uid"] == uid
            && e["reason"] == "FailedAttachVolume")
            .then(|| name.clone())
    });
    state.resource_version += 1;
    let rv = state.resource_version.to_string();
    let now = now_rfc3339();
    if let Some(name) = existing {
        let event = state
            .objects
            .get_mut(&("events".into(), namespace.clone(), name))
            .unwrap();
        event["count"] = json!(event["count"].as_u64().unwrap_or(1) + 1);
        event["lastTimestamp"] = json!(now);
        event["message"] = json!(message);
        event["metadata"]["resourceVersion"] = json!(rv);
        return;
    }
    state.lifecycle.events += 1;
    let name = format!("{pod}.{:016x}", state.lifecycle.events);
    let event = json!({
        "kind": "Event", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv,
                     "uid": format!("{rv}-fake-event"), "creationTimestamp": now},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "uid": uid,
                           "apiVersion": "v1"},
        "reason": "FailedAttachVolume", "message": message, "type": "Warning",
        "source": {"component": "attachdetach-controller"},
        "count": 1, "firstTimestamp": now, "lastTimestamp": now,
        "reportingComponent": "attachdetach-controller", "reportingInstance": "",
    });
    state
        .objects
        .insert(("events".into(), namespace.clone(), name), event);
}

/// The kubelet's volume attach step for a scheduled Pod: waits (retrying) until every claim is
/// attached to its node. `false` when the Pod was deleted meanwhile.
pub(super) async fn attach_volumes(state: &Arc<Mutex<State>>, key: &Key, node: &str) -> bool {
    loop {
        {
            let mut guard = lock(state);
            let Some(pod) = guard.objects.get(key).cloned() else {
                return false;
            };
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                return false;
            }
            let mut blocked = None;
            for claim in pod_claims(&pod) {
                if let Err(users) = try_attach(&mut guard, &key.1, &claim, node) {
                    blocked = Some((claim, users));
                    break;
                }
            }
            match blocked {
                None => return true,
                Some((claim, users)) => multi_attach_event(&mut guard, key, &claim, &users),
            }
        }
        tokio::time::sleep(ATTACH_RETRY).await;
    }
}

/// The PersistentVolume the fake binds claim `claim` to.
pub fn volume_name(claim: &str) -> String {
    format!("pvc-{claim}")
}

/// `GET /apis/storage.k8s.io/v1/volumeattachments`: one VolumeAttachment per attached claim, as
/// the attach/detach controller keeps them (cluster-scoped, named for volume and node).
pub(super) fn volume_attachments(
    state: &Mutex<State>,
    method: &hyper::Method,
) -> Response<Full<Bytes>> {
    let guard = lock(state);
    if guard.forbidden.contains("volumeattachments") {
        return status(
            403,
            "Forbidden",
            "volumeattachments is forbidden".into(),
            "volumeattachments",
            "",
        );
    }
    if method != hyper::Method::GET {
        return status(
            405,
            "MethodNotAllowed",
            format!("{method} on volumeattachments"),
            "volumeattachments",
            "",
        );
    }
    let items: Vec<Value> = guard
        .lifecycle
        .attachments
        .iter()
        .map(|((_, claim), node)| {
            let pv = volume_name(claim);
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                   "metadata": {"name": format!("csi-{pv}-{node}")},
                   "spec": {"attacher": "fake.csi.tale.dev", "nodeName": node,
                            "source": {"persistentVolumeName": pv}},
                   "status": {"attached": true}})
        })
        .collect();
    reply(
        StatusCode::OK,
        &json!({"kind": "VolumeAttachmentList", "apiVersion": "storage.k8s.io/v1",
                "metadata": {"resourceVersion": guard.resource_version.to_string()}, "items": items}),
    )
}

impl FakeKube {
    /// Holds `claim`'s volume attached to another node for `duration` (a detach that is slow
    /// to happen): Pods using it wait with a Multi-Attach Event meanwhile.
    pub fn hold_attachment(&self, namespace: &str, claim: &str, duration: Duration) {
        let mut guard = lock(&self.state);
        let key = (namespace.to_owned(), claim.to_owned());
        guard
            .lifecycle
            .held
            .insert(key.clone(), Instant::now() + duration);
        guard
            .lifecycle
            .attachments
            .insert(key, "node-elsewhere".into());
    }

    /// The volume of `claim` is detached from its node (a storage fencing agent, or the
    /// attach/detach controller's force detach): its VolumeAttachment is gone.
    pub fn detach(&self, namespace: &str, claim: &str) {
        lock(&self.state)
            .lifecycle
            .attachments
            .remove(&(namespace.to_owned(), claim.to_owned()));
    }

    /// The node `claim`'s volume is attached to, if any.
    pub fn attachment(&self, namespace: &str, claim: &str) -> Option<String> {
        lock(&self.state)
            .lifecycle
            .attachments
            .get(&(namespace.to_owned(), claim.to_owned()))
            .cloned()
    }
}
