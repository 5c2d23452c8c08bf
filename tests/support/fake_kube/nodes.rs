//! The fake's Nodes (cluster-scoped, `GET /api/v1/nodes[/<name>]`): two Ready nodes at start,
//! `node-a` and `node-b`; the scheduler puts a Pod on the first Ready, untainted node (by name).
//! A test can lose a node — as a kubelet that stops posting status: its `Ready` condition turns
//! `Unknown`, the node lifecycle controller taints it `node.kubernetes.io/unreachable` and marks
//! its Pods not ready, their runnerd dies, and deleting them hangs Terminating — and then taint it
//! `node.kubernetes.io/out-of-service` as an operator does once it is known to be shut down.
use super::{lock, not_found, now_rfc3339, reply, status, FakeKube, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Mutex;

/// The nodes every fake starts with.
pub const NODES: [&str; 2] = ["node-a", "node-b"];
/// The taint an operator sets on a node known to be shut down (non-graceful node shutdown).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
/// The taints the node lifecycle controller sets on a node that stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

fn key(name: &str) -> (String, String, String) {
    ("nodes".into(), String::new(), name.into())
}

fn node(name: &str, uid: u64) -> Value {
    let now = now_rfc3339();
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("{uid:08x}-fake-node-{name}"),
                     "resourceVersion": uid.to_string(), "creationTimestamp": now,
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": name}],
        },
    })
}

/// Adds the starting nodes.
pub(super) fn add_nodes(state: &mut State) {
    for name in NODES {
        state.resource_version += 1;
        let object = node(name, state.resource_version);
        state.objects.insert(key(name), object);
    }
}

fn taints(state: &State, name: &str) -> Vec<String> {
    state
        .objects
        .get(&key(name))
        .and_then(|n| n["spec"]["taints"].as_array().cloned())
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_owned))
        .collect()
}

/// Whether the node has stopped reporting (its kubelet and its Pods are out of reach).
pub(super) fn is_lost(state: &State, name: &str) -> bool {
    state.objects.get(&key(name)).is_some_and(|n| {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] != "True")
    })
}

/// Whether an operator declared the node shut down.
pub(super) fn is_out_of_service(state: &State, name: &str) -> bool {
    taints(state, name)
        .iter()
        .any(|t| t == OUT_OF_SERVICE_TAINT)
}

/// The scheduler: the first Ready node without taints.
pub(super) fn schedule(state: &State) -> Option<String> {
    NODES
        .iter()
        .find(|name| !is_lost(state, name) && taints(state, name).is_empty())
        .map(|name| name.to_string())
}

/// `GET /api/v1/nodes` and `GET /api/v1/nodes/<name>`.
pub(super) fn route(state: &Mutex<State>, method: &Method, rest: &[&str]) -> Response<Full<Bytes>> {
    let guard = lock(state);
    if guard.forbidden.contains("nodes") {
        return status(
            403,
            "Forbidden",
            format!("nodes is forbidden: User \"system:serviceaccount:{}:tale-spawner\" cannot get resource \"nodes\" in API group \"\" at the cluster scope", super::CONTEXT_NAMESPACE),
            "nodes",
            rest.first().copied().unwrap_or(""),
        );
    }
    match (method, rest) {
        (&Method::GET, []) => {
            let items: Vec<Value> = guard
                .objects
                .iter()
                .filter(|((r, _, _), _)| r == "nodes")
                .map(|(_, o)| o.clone())
                .collect();
            reply(
                StatusCode::OK,
                &json!({"kind": "NodeList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": guard.resource_version.to_string()},
                        "items": items}),
            )
        }
        (&Method::GET, [name]) => match guard.objects.get(&key(name)) {
            Some(object) => reply(StatusCode::OK, object),
            None => not_found("nodes", name),
        },
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} on nodes"),
            "nodes",
            "",
        ),
    }
}

fn update_node(state: &mut State, name: &str, change: impl FnOnce(&mut Value)) {
    state.resource_version += 1;
    let rv = state.resource_version.to_string();
    if let Some(node) = state.objects.get_mut(&key(name)) {
        change(node);
        node["metadata"]["resourceVersion"] = json!(rv);
    }
}

fn add_taint(node: &mut Value, taint_key: &str, value: Option<&str>, effect: &str) {
    let mut taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut taint = json!({"key": taint_key, "effect": effect, "timeAdded": now_rfc3339()});
    if let Some(value) = value {
        taint["value"] = json!(value);
    }
    taints.push(taint);
    node["spec"]["taints"] = json!(taints);
}

impl FakeKube {
    /// The node a Pod was scheduled to.
    pub fn node_of(&self, namespace: &str, pod: &str) -> Option<String> {
        lock(&self.state)
            .objects
            .get(&("pods".into(), namespace.into(), pod.into()))
            .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
    }

    /// The node stops reporting (power loss, a partition): see the module doc.
    pub fn lose_node(&self, name: &str) {
        let mut guard = lock(&self.state);
        update_node(&mut guard, name, |node| {
            node["status"]["conditions"] = json!([{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]);
            add_taint(node, UNREACHABLE_TAINT, None, "NoSchedule");
            add_taint(node, UNREACHABLE_TAINT, None, "NoExecute");
        });
        let pods: Vec<(String, String, String)> = guard
            .objects
            .iter()
            .filter(|((r, _, _), p)| r == "pods" && p["spec"]["nodeName"] == json!(name))
            .map(|(k, _)| k.clone())
            .collect();
        for pod in pods {
            if let Some(mut child) = guard.kubelet.remove(&(pod.1.clone(), pod.2.clone())) {
                let _ = child.kill();
                let _ = child.wait();
            }
            super::lifecycle::mark_not_ready(&mut guard, &pod);
        }
    }

    /// What Kubernetes' controllers do with an out-of-service node's Pods on their next pass (the
    /// taint manager evicts the Pods, which do not tolerate the taint; the Pod garbage collector
    /// force-deletes Terminating Pods on a not-Ready out-of-service node): they are removed, their
    /// owned objects follow. Separate from [`FakeKube::taint_out_of_service`] because those
    /// controllers run periodically (the Pod GC every 20 s), after the taint.
    pub fn run_out_of_service_gc(&self) {
        let mut guard = lock(&self.state);
        let doomed: Vec<(String, String, String)> = guard
            .objects
            .iter()
            .filter(|((r, _, _), p)| {
                r == "pods"
                    && p["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| is_lost(&guard, n) && is_out_of_service(&guard, n))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for pod in doomed {
            super::lifecycle::remove_object(&mut guard, &pod);
        }
    }

    /// An operator marks the node out of service (it is shut down): its volumes may be detached.
    pub fn taint_out_of_service(&self, name: &str) {
        let mut guard = lock(&self.state);
        update_node(&mut guard, name, |node| {
            add_taint(
                node,
                OUT_OF_SERVICE_TAINT,
                Some("nodeshutdown"),
                "NoExecute",
            )
        });
    }
}
