//! `?watch=true` on a collection, as the API server streams it: newline-delimited JSON events
//! `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": …}` filtered by `labelSelector`
//! (an object that stops matching is DELETED to the watcher, one that starts matching ADDED),
//! from `resourceVersion` (unset or "0": every current object as ADDED first), BOOKMARKs with the
//! latest version when `allowWatchBookmarks=true` and nothing else was sent for
//! [`BOOKMARK_INTERVAL`], closed after `timeoutSeconds`. A version older than the journal's window
//! is answered, like the real watch cache, with HTTP 200 and one ERROR event carrying a 410
//! `Expired` Status ("too old resource version").
use super::journal::{self, Change};
use super::{labels_match, lock, FakeBody, Recorded, Shared, State, FAKE_TOKEN};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often an open watch looks for new events.
pub const WATCH_TICK: Duration = Duration::from_millis(10);
/// Quiet time after which a watch that allows bookmarks gets one (a real server: about a minute;
/// short here so tests see them).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// A watch's longest life when the client sets no `timeoutSeconds` (the real default is 30–60 min).
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

impl super::FakeKube {
    /// Compacts the change history: watches and continue tokens from before now get 410 Expired.
    pub fn compact(&self) {
        journal::compact(&mut lock(&self.state));
    }

    /// Ends every open watch stream (as an API server restart does); clients resume from their
    /// last resourceVersion.
    pub fn end_watches(&self) {
        lock(&self.state).journal.watch_epoch += 1;
    }

    /// Watches of `resource` are answered 403 (a Role without the `watch` verb); other verbs
    /// stay allowed.
    pub fn forbid_watch(&self, resource: &str) {
        lock(&self.state)
            .forbidden
            .insert(format!("{resource}/watch"));
    }
}

/// Whether the request is a watch (`watch=true` or `watch=1`).
pub fn is_watch(request: &Request<Incoming>) -> bool {
    let query = request.uri().query().unwrap_or("");
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Serves a watch request (recorded, authorized and throttled like every other request).
pub async fn serve(shared: Shared, request: Request<Incoming>) -> Response<FakeBody> {
    let (state, _, _) = shared;
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {FAKE_TOKEN}"));
    lock(&state).requests.push(Recorded {
        method: "GET".into(),
        path: path.clone(),
        query: query.clone(),
        body: None,
    });
    if !authorized {
        return boxed(super::status(
            401,
            "Unauthorized",
            "Unauthorized".into(),
            "",
            "",
        ));
    }
    if let Some(throttled) = super::throttle::check(&state) {
        return boxed(throttled);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (namespace, resource) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, resource] => (ns.to_string(), resource.to_string()),
        ["apis", _, "v1", "namespaces", ns, resource] => (ns.to_string(), resource.to_string()),
        _ => {
            return boxed(super::status(
                405,
                "MethodNotAllowed",
                format!("the fake serves watches of namespaced collections only, not {path}"),
                "",
                "",
            ))
        }
    };
    let forbidden = {
        let guard = lock(&state);
        guard.forbidden.contains(&resource)
            || guard.forbidden.contains(&format!("{resource}/watch"))
    };
    if forbidden {
        return boxed(super::status(
            403,
            "Forbidden",
            format!("{resource} is forbidden: cannot watch resource \"{resource}\""),
            &resource,
            "",
        ));
    }
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let from = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return boxed(super::status(
                    400,
                    "BadRequest",
                    format!("invalid resource version {rv:?}"),
                    &resource,
                    "",
                ))
            }
        },
    };
    let watch = Watch {
        namespace,
        resource,
        selector: params.get("labelSelector").cloned(),
        bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        timeout: params
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCH_TIMEOUT),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(watch.run(state, from, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

fn boxed(response: Response<http_body_util::Full<Bytes>>) -> Response<FakeBody> {
    response.map(BodyExt::boxed)
}

struct Watch {
    namespace: String,
    resource: String,
    selector: Option<String>,
    bookmarks: bool,
    timeout: Duration,
}

impl Watch {
    fn matches(&self, object: Option<&Value>) -> bool {
        object.is_some_and(|o| self.selector.as_deref().is_none_or(|s| labels_match(o, s)))
    }

    /// The lines for events after `cursor` (and the new cursor), or the ERROR line when history
    /// since `cursor` is compacted.
    fn collect(&self, state: &mut State, cursor: u64) -> Result<(Vec<Bytes>, u64), Bytes> {
        journal::sync(state);
        let events = journal::since(state, cursor).map_err(|compacted| {
            line(
                "ERROR",
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {cursor} ({compacted})"),
                    "reason": "Expired", "code": 410}),
            )
        })?;
        let mut lines = Vec::new();
        for event in events {
            let (_, ns, _) = &event.key;
            if event.key.0 != self.resource || *ns != self.namespace {
                continue;
            }
            let was = self.matches(event.previous.as_ref());
            let is = event.change != Change::Deleted && self.matches(Some(&event.object));
            let wire = match (was, is) {
                (false, true) => "ADDED",
                (true, true) => event.change.wire(),
                (true, false) => "DELETED",
                (false, false) => continue,
            };
            lines.push(line(wire, &event.object));
        }
        Ok((lines, state.resource_version))
    }

    async fn run(
        self,
        state: Arc<Mutex<State>>,
        from: Option<u64>,
        tx: tokio::sync::mpsc::Sender<Bytes>,
    ) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let epoch = lock(&state).journal.watch_epoch;
        let (kind, api_version) = super::kind_of(&self.resource);
        let mut cursor = match from {
            Some(rv) => rv,
            None => {
                // No version: the current objects as ADDED, then what changes.
                let (lines, rv) = {
                    let mut guard = lock(&state);
                    journal::sync(&mut guard);
                    let lines: Vec<Bytes> = guard
                        .objects
                        .iter()
                        .filter(|((r, ns, _), o)| {
                            *r == self.resource && *ns == self.namespace && self.matches(Some(o))
                        })
                        .map(|(_, o)| line("ADDED", o))
                        .collect();
                    (lines, guard.resource_version)
                };
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                rv
            }
        };
        let mut last_sent = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline && !tx.is_closed() {
            let collected = {
                let mut guard = lock(&state);
                if guard.journal.watch_epoch != epoch {
                    return;
                }
                self.collect(&mut guard, cursor)
            };
            match collected {
                Err(error) => {
                    let _ = tx.send(error).await;
                    return;
                }
                Ok((lines, next)) => {
                    cursor = next;
                    if !lines.is_empty() {
                        last_sent = tokio::time::Instant::now();
                    }
                    for l in lines {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if self.bookmarks && last_sent.elapsed() >= BOOKMARK_INTERVAL {
                let bookmark = json!({"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": cursor.to_string()}});
                if tx.send(line("BOOKMARK", &bookmark)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            tokio::time::sleep(WATCH_TICK).await;
        }
    }
}
