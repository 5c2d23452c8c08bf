//! A small fake Kubernetes API server for the kubernetes backend's end-to-end tests (no cluster can
//! run here). It keeps Pods, Secrets, PVCs and NetworkPolicies in memory and answers the REST calls
//! with real Kubernetes JSON shapes: objects with uid/resourceVersion/creationTimestamp, lists,
//! and `Status` objects for 404/409. It records every request, so tests assert on what the spawner
//! sent (and never sent: `pods/exec`). Collections are listed with `limit`/`continue` pagination
//! (`paging`), watched with `?watch=true` streams (`watch`, over the change history in `journal`),
//! and a switch answers 429 with `Retry-After` for the next N requests (`throttle`).
//!
//! Its "kubelet" really runs created Pods: it resolves the container env (including
//! `secretKeyRef`s from stored Secrets, failing with `CreateContainerConfigError` like the real one),
//! refuses images marked unpullable (`ImagePullBackOff`), gives each Pod its own loopback IP
//! (127.x.y.z, standing in for the Pod network), and starts the real `tale runnerd` bound to that IP
//! as the Pod's `runAsUser`/`runAsGroup` with the workspace PVC as a directory (group = fsGroup).
//! Deleting a Pod sets `deletionTimestamp`, sends SIGTERM, and removes the object once runnerd has
//! exited (SIGKILL after the grace period), as a kubelet does. Pods are scheduled to Nodes
//! (`nodes.rs`: node loss, the out-of-service taint) and their volumes attached there; graceful
//! and forced deletion, PVC protection, eviction, Multi-Attach, owner-reference garbage collection
//! and merge patches are in `lifecycle.rs`.
#![allow(dead_code)]

pub mod attachments;
mod conflicts;
mod journal;
mod leases;
pub mod lifecycle;
pub mod nodes;
mod paging;
mod throttle;
mod watch;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bearer token the fake's kubeconfig carries; other requests are answered 401.
pub const FAKE_TOKEN: &str = "fake-kube-token";
/// Namespace of the kubeconfig context (the "spawner's own" namespace).
pub const CONTEXT_NAMESPACE: &str = "tale-control";

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    resource_version: u64,
    requests: Vec<Recorded>,
    unpullable: HashSet<String>,
    /// Resources every request for is answered 403 (an RBAC Role without them).
    forbidden: HashSet<String>,
    /// Pod (namespace, name) → its runnerd.
    kubelet: HashMap<(String, String), Child>,
    next_ip: u32,
    /// Change history for watches and consistent paginated lists.
    journal: journal::Journal,
    /// 429 answers still to give.
    throttle: throttle::Throttle,
    /// Attachments and events (see `lifecycle`).
    lifecycle: lifecycle::Lifecycle,
    /// The fake's root directory (volumes live under it).
    root: Option<PathBuf>,
}

/// A response body: whole (most answers) or streamed (watches).
type FakeBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A running fake API server; its runnerd processes are killed on drop.
pub struct FakeKube {
    pub port: u16,
    pub root: PathBuf,
    state: Arc<Mutex<State>>,
    ip_prefix: u8,
    server: tokio::task::JoinHandle<()>,
}

type Shared = (Arc<Mutex<State>>, PathBuf, u8);

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let root =
            std::env::temp_dir().join(format!("tale-fake-kube-{}-{port}", std::process::id()));
        std::fs::create_dir_all(root.join("volumes")).unwrap();
        std::fs::create_dir_all(root.join("logs")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A second octet per fake, so parallel test binaries hand out different Pod IPs.
        let ip_prefix = 100 + (port % 150) as u8;
        let mut initial = State::default();
        nodes::add_nodes(&mut initial);
        lifecycle::set_root(&mut initial, &root);
        let state = Arc::new(Mutex::new(initial));
        let shared: Shared = (state.clone(), root.clone(), ip_prefix);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move {
                            let response = if watch::is_watch(&request) {
                                watch::serve(shared, request).await
                            } else {
                                handle(shared, request).await.map(BodyExt::boxed)
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeKube {
            port,
            root,
            state,
            ip_prefix,
            server,
        }
    }

    /// A kubeconfig pointing at this fake over plain HTTP.
    pub fn write_kubeconfig(&self) -> PathBuf {
        let path = self.root.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {CONTEXT_NAMESPACE}\n\
                 users:\n- name: fake\n  user:\n    token: {FAKE_TOKEN}\ncurrent-context: fake\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// Pods using `image` fail to pull.
    pub fn set_unpullable(&self, image: &str) {
        lock(&self.state).unpullable.insert(image.to_owned());
    }

    /// The API verbs the recorded requests used, as (API group, resource, sorted verbs) — what an
    /// RBAC Role must grant for them.
    pub fn verbs_used(&self) -> Vec<(String, String, Vec<String>)> {
        let mut used: BTreeMap<(String, String), std::collections::BTreeSet<String>> =
            BTreeMap::new();
        for r in self.requests() {
            let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
            let (group, rest): (&str, &[&str]) = match segments.as_slice() {
                ["api", "v1", "namespaces", _, rest @ ..] => ("", rest),
                ["apis", group, _, "namespaces", _, rest @ ..] => (*group, rest),
                // Cluster-scoped: Nodes, VolumeAttachments.
                ["api", "v1", rest @ ..] if rest.first() == Some(&"nodes") => ("", rest),
                ["apis", group, _, rest @ ..] if rest.first() == Some(&"volumeattachments") => {
                    (*group, rest)
                }
                _ => continue,
            };
            let (resource, verb) = match (rest, r.method.as_str()) {
                ([resource], "GET") if r.query.contains("watch=true") => {
                    (resource.to_string(), "watch")
                }
                ([resource], "GET") => (resource.to_string(), "list"),
                ([resource], "POST") => (resource.to_string(), "create"),
                ([resource, _], "GET") => (resource.to_string(), "get"),
                ([resource, _], "PUT") => (resource.to_string(), "update"),
                ([resource, _], "PATCH") => (resource.to_string(), "patch"),
                ([resource, _], "DELETE") => (resource.to_string(), "delete"),
                ([resource, _, sub], method) => (
                    format!("{resource}/{sub}"),
                    if method == "GET" { "get" } else { "create" },
                ),
                (_, method) => (
                    format!("?{}", r.path),
                    if method == "GET" { "get" } else { "other" },
                ),
            };
            used.entry((group.to_owned(), resource))
                .or_default()
                .insert(verb.to_owned());
        }
        used.into_iter()
            .map(|((group, resource), verbs)| (group, resource, verbs.into_iter().collect()))
            .collect()
    }

    /// Requests for `resource` are answered 403 Forbidden.
    pub fn forbid(&self, resource: &str) {
        lock(&self.state).forbidden.insert(resource.to_owned());
    }

    /// Requests for `resource` are served again (undoes [`FakeKube::forbid`]).
    pub fn allow(&self, resource: &str) {
        lock(&self.state).forbidden.remove(resource);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Every stored object of a resource (`pods`, `secrets`, `persistentvolumeclaims`,
    /// `networkpolicies`), by name.
    pub fn objects(&self, resource: &str) -> BTreeMap<String, Value> {
        lock(&self.state)
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|((_, _, name), object)| (name.clone(), object.clone()))
            .collect()
    }

    pub fn object(&self, resource: &str, name: &str) -> Option<Value> {
        self.objects(resource).remove(name)
    }

    /// Stores an object as-is (a peer's Pod, say), with no kubelet behind it.
    pub fn insert(&self, resource: &str, namespace: &str, mut object: Value) {
        let mut state = lock(&self.state);
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        object["metadata"]["namespace"] = json!(namespace);
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        state
            .objects
            .insert((resource.into(), namespace.into(), name), object);
    }

    /// Simulates a node losing the Pod's container: runnerd is killed (the Pod then reports
    /// CrashLoopBackOff, like a kubelet whose container keeps dying).
    pub fn kill_runnerd(&self, namespace: &str, pod: &str) {
        if let Some(child) = lock(&self.state)
            .kubelet
            .get_mut(&(namespace.to_owned(), pod.to_owned()))
        {
            let _ = child.kill();
        }
    }

    /// The runnerd log of a Pod.
    pub fn pod_log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.root.join("logs").join(format!("{pod}.log")))
            .unwrap_or_default()
    }

    /// Host directory standing in for a PVC.
    pub fn volume_dir(&self, pvc: &str) -> PathBuf {
        self.root.join("volumes").join(pvc)
    }

    pub fn ip_prefix(&self) -> u8 {
        self.ip_prefix
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        let mut state = lock(&self.state);
        for (_, mut child) in state.kubelet.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(state);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A Kubernetes `Status` error object.
fn status(
    code: u16,
    reason: &str,
    message: String,
    resource: &str,
    name: &str,
) -> Response<Full<Bytes>> {
    let mut details = json!({"name": name, "kind": resource});
    // Resources of an API group name it in the details, as the API server does.
    if let Some((group, _)) = kind_of(resource).1.split_once('/') {
        details["group"] = json!(group);
    }
    reply(
        StatusCode::from_u16(code).unwrap(),
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason,
            "details": details, "code": code,
        }),
    )
}

pub fn now_rfc3339() -> String {
    // Whole seconds in UTC, as the API server writes them.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "pods" => ("Pod", "v1"),
        "secrets" => ("Secret", "v1"),
        "persistentvolumeclaims" => ("PersistentVolumeClaim", "v1"),
        "networkpolicies" => ("NetworkPolicy", "networking.k8s.io/v1"),
        "leases" => ("Lease", "coordination.k8s.io/v1"),
        "events" => ("Event", "v1"),
        "nodes" => ("Node", "v1"),
        _ => ("Unknown", "v1"),
    }
}

/// The resource as the API server names it in messages (`leases.coordination.k8s.io`).
fn qualified(resource: &str) -> String {
    match kind_of(resource).1.split_once('/') {
        Some((group, _)) => format!("{resource}.{group}"),
        None => resource.to_owned(),
    }
}

/// Equality-based selectors: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k` (does not exist).
/// A field selector of `path.to.field=value` pairs (what the API server serves for events'
/// `involvedObject.*`).
fn fields_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|pair| {
        let Some((path, value)) = pair.split_once('=') else {
            return false;
        };
        let field = path.split('.').fold(object, |v, k| &v[k]);
        field.as_str() == Some(value)
    })
}

fn labels_match(object: &Value, selector: &str) -> bool {
    let label = |key: &str| object["metadata"]["labels"][key.trim()].as_str();
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((key, value)) = term.split_once("!=") {
            label(key) != Some(value.trim())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(key) == Some(value.trim())
        } else if let Some(key) = term.strip_prefix('!') {
            label(key).is_none()
        } else {
            label(term).is_some()
        }
    })
}

async fn handle(shared: Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (state, root, ip_prefix) = shared;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {FAKE_TOKEN}"));
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    lock(&state).requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized".into(), "", "");
    }
    if let Some(throttled) = throttle::check(&state) {
        return throttled;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::GET && segments == ["version"] {
        return reply(
            StatusCode::OK,
            &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "platform": "linux/amd64"}),
        );
    }
    if let ["api", "v1", "nodes", rest @ ..] = segments.as_slice() {
        return nodes::route(&state, &method, rest);
    }
    if let ["apis", "storage.k8s.io", "v1", "volumeattachments"] = segments.as_slice() {
        return attachments::volume_attachments(&state, &method);
    }
    let rest: &[&str] = match segments.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "networking.k8s.io", "v1", "namespaces", rest @ ..] => rest,
        ["apis", leases::GROUP, "v1", "namespaces", rest @ ..] => rest,
        _ => {
            return status(
                404,
                "NotFound",
                format!("the fake serves no {path}"),
                "",
                "",
            )
        }
    };
    if let Some(resource) = rest.get(1).filter(|r| lock(&state).forbidden.contains(**r)) {
        return status(
            403,
            "Forbidden",
            format!("{resource} is forbidden: User \"system:serviceaccount:{CONTEXT_NAMESPACE}:tale-spawner\" cannot {method} resource \"{resource}\""),
            resource,
            "",
        );
    }
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    match rest {
        [namespace, resource] => {
            let (namespace, resource) = (namespace.to_string(), resource.to_string());
            match method {
                Method::GET => paging::list(&state, &namespace, &resource, &params),
                Method::POST => create(&state, &root, ip_prefix, &namespace, &resource, body),
                _ => status(
                    405,
                    "MethodNotAllowed",
                    format!("{method} {path}"),
                    &resource,
                    "",
                ),
            }
        }
        [namespace, resource, name] => {
            let key = (
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            );
            match method {
                Method::GET => match lock(&state).objects.get(&key) {
                    Some(object) => reply(StatusCode::OK, object),
                    None => not_found(resource, name),
                },
                Method::PUT => replace(&state, key, body),
                Method::PATCH => conflicts::patch(&state, key, &content_type, body),
                Method::DELETE => lifecycle::delete(&state, key, body),
                _ => status(
                    405,
                    "MethodNotAllowed",
                    format!("{method} {path}"),
                    resource,
                    name,
                ),
            }
        }
        [namespace, "pods", name, "eviction"] if method == Method::POST => lifecycle::evict(
            &state,
            ("pods".into(), namespace.to_string(), name.to_string()),
            body,
        ),
        // Other subresources (pods/exec, pods/log, …) are not served: the backend must never
        // need them.
        _ => status(
            404,
            "NotFound",
            format!("the fake serves no {path}"),
            "",
            "",
        ),
    }
}

fn not_found(resource: &str, name: &str) -> Response<Full<Bytes>> {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", qualified(resource)),
        resource,
        name,
    )
}

fn create(
    state: &Arc<Mutex<State>>,
    root: &Path,
    ip_prefix: u8,
    namespace: &str,
    resource: &str,
    body: Option<Value>,
) -> Response<Full<Bytes>> {
    let Some(mut object) = body else {
        return status(
            400,
            "BadRequest",
            "the body is not JSON".into(),
            resource,
            "",
        );
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            422,
            "Invalid",
            "metadata.name: Required value".into(),
            resource,
            "",
        );
    };
    let key = (resource.to_owned(), namespace.to_owned(), name.clone());
    {
        let mut guard = lock(state);
        if guard.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(resource)),
                resource,
                &name,
            );
        }
        guard.resource_version += 1;
        let (kind, api_version) = kind_of(resource);
        object["kind"] = json!(kind);
        object["apiVersion"] = json!(api_version);
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(namespace);
        meta["uid"] = json!(format!("{:08x}-fake-{}", guard.resource_version, name));
        meta["resourceVersion"] = json!(guard.resource_version.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        match resource {
            "secrets" => {
                // The API server folds stringData into data (base64) and never returns stringData.
                if let Some(Value::Object(strings)) =
                    object.as_object_mut().unwrap().remove("stringData")
                {
                    for (k, v) in strings {
                        let encoded =
                            base64_simd::STANDARD.encode_to_string(v.as_str().unwrap_or(""));
                        object["data"][k] = json!(encoded);
                    }
                }
            }
            "persistentvolumeclaims" => {
                std::fs::create_dir_all(root.join("volumes").join(&name)).unwrap();
                // The PVC protection admission plugin's finalizer.
                object["metadata"]["finalizers"] = json!([lifecycle::PVC_PROTECTION]);
                // Bound at once to a dynamically provisioned volume named for the claim.
                object["spec"]["volumeName"] = json!(attachments::volume_name(&name));
                object["status"] =
                    json!({"phase": "Bound", "accessModes": object["spec"]["accessModes"]});
            }
            "pods" => {
                object["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
            }
            _ => {}
        }
        guard.objects.insert(key.clone(), object.clone());
    }
    if resource == "pods" {
        let (state, root) = (state.clone(), root.to_path_buf());
        tokio::spawn(async move { run_pod(state, root, ip_prefix, key).await });
    }
    reply(StatusCode::CREATED, &object)
}

fn replace(
    state: &Mutex<State>,
    key: (String, String, String),
    body: Option<Value>,
) -> Response<Full<Bytes>> {
    let (resource, _, name) = key.clone();
    let Some(mut object) = body else {
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
        return not_found(&resource, &name);
    };
    let sent = object["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned);
    if sent
        .as_deref()
        .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
    {
        return status(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", qualified(&resource)),
            &resource,
            &name,
        );
    }
    guard.resource_version += 1;
    for field in ["uid", "creationTimestamp", "namespace"] {
        object["metadata"][field] = current["metadata"][field].clone();
    }
    object["metadata"]["resourceVersion"] = json!(guard.resource_version.to_string());
    guard.objects.insert(key, object.clone());
    reply(StatusCode::OK, &object)
}

/// Updates a stored Pod's status (unless it was deleted meanwhile).
fn set_pod_status(
    state: &Mutex<State>,
    key: &(String, String, String),
    update: impl FnOnce(&mut Value),
) {
    let mut guard = lock(state);
    guard.resource_version += 1;
    let rv = guard.resource_version.to_string();
    if let Some(pod) = guard.objects.get_mut(key) {
        update(&mut pod["status"]);
        pod["metadata"]["resourceVersion"] = json!(rv);
    }
}

fn waiting(reason: &str, message: &str) -> Value {
    json!([{"name": "runner", "ready": false, "restartCount": 0, "image": "",
            "state": {"waiting": {"reason": reason, "message": message}}}])
}

/// The kubelet: network, image, env, volumes, then runnerd as the Pod's user.
async fn run_pod(
    state: Arc<Mutex<State>>,
    root: PathBuf,
    ip_prefix: u8,
    key: (String, String, String),
) {
    let (pod, ip) = {
        let mut guard = lock(&state);
        guard.next_ip += 1;
        let n = guard.next_ip;
        let ip = format!("127.{ip_prefix}.{}.{}", n / 250, n % 250 + 2);
        let Some(pod) = guard.objects.get(&key).cloned() else {
            return;
        };
        (pod, ip)
    };
    let namespace = &key.1;
    let container = &pod["spec"]["containers"][0];
    let image = container["image"].as_str().unwrap_or("").to_owned();
    // The Pod's volumes must exist before it is scheduled.
    let mut claim_dirs: HashMap<String, PathBuf> = HashMap::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            let exists = lock(&state).objects.contains_key(&(
                "persistentvolumeclaims".into(),
                namespace.clone(),
                claim.into(),
            ));
            if !exists {
                set_pod_status(&state, &key, |s| {
                    s["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": format!("persistentvolumeclaim \"{claim}\" not found")}]);
                });
                return;
            }
            claim_dirs.insert(
                volume["name"].as_str().unwrap().to_owned(),
                root.join("volumes").join(claim),
            );
        }
    }
    // The scheduler binds the Pod to a node; the kubelet there attaches its volumes first.
    let Some(node) = nodes::schedule(&lock(&state)) else {
        set_pod_status(&state, &key, |s| {
            s["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 node(s) had untolerated taints."}]);
        });
        return;
    };
    {
        let mut guard = lock(&state);
        guard.resource_version += 1;
        let rv = guard.resource_version.to_string();
        let Some(pod) = guard.objects.get_mut(&key) else {
            return;
        };
        pod["spec"]["nodeName"] = json!(node);
        pod["metadata"]["resourceVersion"] = json!(rv);
    }
    set_pod_status(&state, &key, |s| {
        s["hostIP"] = json!("127.0.0.1");
        s["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
        s["containerStatuses"] = waiting("ContainerCreating", "");
    });
    if !attachments::attach_volumes(&state, &key, &node).await {
        return;
    }
    set_pod_status(&state, &key, |s| {
        s["podIP"] = json!(ip);
        s["podIPs"] = json!([{"ip": ip}]);
    });
    if lock(&state).unpullable.contains(&image) {
        let message = format!("Back-off pulling image \"{image}\": not found");
        set_pod_status(&state, &key, |s| {
            s["containerStatuses"] = waiting("ImagePullBackOff", &message)
        });
        return;
    }
    // Env, as the kubelet resolves it.
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        if let Some(value) = var["value"].as_str() {
            env.push((name, value.to_owned()));
            continue;
        }
        let secret_ref = &var["valueFrom"]["secretKeyRef"];
        let (secret, k) = (
            secret_ref["name"].as_str().unwrap_or(""),
            secret_ref["key"].as_str().unwrap_or(""),
        );
        let value = lock(&state)
            .objects
            .get(&("secrets".into(), namespace.clone(), secret.into()))
            .and_then(|s| s["data"][k].as_str().map(str::to_owned))
            .and_then(|b64| base64_simd::STANDARD.decode_to_vec(b64).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match value {
            Some(value) => env.push((name, value)),
            None => {
                let message = format!("secret \"{secret}\" not found or has no key {k}");
                set_pod_status(&state, &key, |s| {
                    s["containerStatuses"] = waiting("CreateContainerConfigError", &message)
                });
                return;
            }
        }
    }
    let security = &container["securityContext"];
    let uid = security["runAsUser"].as_u64().map(|u| u as u32);
    let gid = security["runAsGroup"].as_u64().map(|g| g as u32);
    if security["runAsNonRoot"].as_bool() == Some(true) && uid.unwrap_or(0) == 0 {
        set_pod_status(&state, &key, |s| {
            s["containerStatuses"] = waiting(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            )
        });
        return;
    }
    // Mounts: PVCs are host directories (fsGroup: group-owned, setgid, group-writable); emptyDirs
    // are left to the host's /tmp and /dev/shm.
    let fs_group = pod["spec"]["securityContext"]["fsGroup"]
        .as_u64()
        .map(|g| g as u32);
    let mut mounts: HashMap<String, PathBuf> = HashMap::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = mount["name"].as_str().unwrap_or("");
        if let Some(dir) = claim_dirs.get(volume) {
            if let Some(group) = fs_group.filter(|_| nix::unistd::geteuid().is_root()) {
                let _ = std::os::unix::fs::chown(dir, Some(0), Some(group));
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2775));
            }
            mounts.insert(mount["mountPath"].as_str().unwrap().to_owned(), dir.clone());
        }
    }
    let command: Vec<&str> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        command,
        ["/usr/local/bin/tale", "runnerd"],
        "session Pods run the image's tale runnerd"
    );
    let mut process = Command::new(env!("CARGO_BIN_EXE_tale"));
    process
        .arg("runnerd")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8");
    for (name, value) in env {
        let value = match (name.as_str(), mounts.get(&value)) {
            // A path that is a mount point inside the container is the volume's host dir here.
            (_, Some(dir)) => dir.display().to_string(),
            // The Pod's own network address stands in for 0.0.0.0 in its netns.
            ("TALE_RUNNERD_LISTEN", None) => value.replace("0.0.0.0", &ip),
            _ => value,
        };
        process.env(name, value);
    }
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        if let Some(uid) = uid {
            process.uid(uid);
        }
        if let Some(gid) = gid {
            process.gid(gid);
        }
    }
    let pod_name = key.2.clone();
    let log = std::fs::File::create(root.join("logs").join(format!("{pod_name}.log"))).unwrap();
    process
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = match process.spawn() {
        Ok(child) => child,
        Err(err) => {
            set_pod_status(&state, &key, |s| {
                s["containerStatuses"] = waiting("CreateContainerError", &err.to_string())
            });
            return;
        }
    };
    {
        let mut guard = lock(&state);
        if !guard.objects.contains_key(&key)
            || !guard.objects[&key]["metadata"]["deletionTimestamp"].is_null()
        {
            // Deleted while being scheduled.
            drop(guard);
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        guard.kubelet.insert((key.1.clone(), key.2.clone()), child);
    }
    set_pod_status(&state, &key, |s| {
        s["phase"] = json!("Running");
        s["conditions"] = json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]);
        s["containerStatuses"] = json!([{"name": "runner", "ready": true, "restartCount": 0, "image": image,
            "state": {"running": {"startedAt": now_rfc3339()}}}]);
    });
    // A container that dies while its Pod is not being deleted: CrashLoopBackOff.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut guard = lock(&state);
        let pod_key = (key.1.clone(), key.2.clone());
        let Some(child) = guard.kubelet.get_mut(&pod_key) else {
            return; // deletion took it over
        };
        if let Ok(Some(exit)) = child.try_wait() {
            guard.kubelet.remove(&pod_key);
            drop(guard);
            let message = format!("back-off restarting failed container runner ({exit})");
            set_pod_status(&state, &key, |s| {
                s["containerStatuses"] = waiting("CrashLoopBackOff", &message)
            });
            return;
        }
    }
}
