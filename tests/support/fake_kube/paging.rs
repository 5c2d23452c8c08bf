//! Lists as the API server serves them: `labelSelector`, and `limit` + `continue` pagination with
//! real `metadata.continue` tokens (base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"<name>\u0000"}`).
//! Every page of one list comes from the snapshot at the first page's resourceVersion (the
//! journal's history), so objects created or deleted meanwhile never tear a listing; a token older
//! than the history window gets 410 Gone `Expired`, with the real server's message.
use super::journal::{self, Key};
use super::{kind_of, labels_match, lock, reply, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The real API server's message for an expired continue token.
const EXPIRED_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn encode_token(rv: u64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}")});
    base64_simd::STANDARD.encode_to_string(token.to_string())
}

/// (snapshot resourceVersion, first name to serve) of a continue token.
fn decode_token(token: &str) -> Option<(u64, String)> {
    let bytes = base64_simd::STANDARD.decode_to_vec(token).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    if value["v"] != "meta.k8s.io/v1" {
        return None;
    }
    Some((value["rv"].as_u64()?, value["start"].as_str()?.to_owned()))
}

fn bad_request(message: String, resource: &str) -> Response<Full<Bytes>> {
    super::status(400, "BadRequest", message, resource, "")
}

/// GET on a collection.
pub fn list(
    state: &Mutex<State>,
    namespace: &str,
    resource: &str,
    params: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let mut guard = lock(state);
    journal::sync(&mut guard);
    let limit = match params.get("limit").map(|l| l.parse::<u64>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n as usize),
        Some(Err(_)) => {
            return bad_request(format!("invalid limit {:?}", params["limit"]), resource)
        }
    };
    let (rv, start, snapshot): (u64, String, BTreeMap<Key, Value>) =
        match params.get("continue").filter(|c| !c.is_empty()) {
            None => (guard.resource_version, String::new(), guard.objects.clone()),
            Some(token) => {
                let Some((rv, start)) = decode_token(token) else {
                    return bad_request(
                        "continue key is not valid: the token cannot be decoded".into(),
                        resource,
                    );
                };
                match journal::snapshot_at(&guard, rv) {
                    Ok(snapshot) => (rv, start, snapshot),
                    Err(_) => {
                        // The real server offers a token that continues inconsistently, from now.
                        let fresh =
                            encode_token(guard.resource_version, start.trim_end_matches('\u{0}'));
                        let body = json!({
                            "kind": "Status", "apiVersion": "v1",
                            "metadata": {"continue": fresh}, "status": "Failure",
                            "message": EXPIRED_CONTINUE, "reason": "Expired", "code": 410,
                        });
                        return reply(StatusCode::GONE, &body);
                    }
                }
            }
        };
    drop(guard);
    let selector = params.get("labelSelector");
    let field_selector = params.get("fieldSelector");
    let mut matching = snapshot.iter().filter(|((r, ns, name), o)| {
        r == resource
            && ns == namespace
            && name.as_str() >= start.as_str()
            && selector.is_none_or(|s| labels_match(o, s))
            && field_selector.is_none_or(|s| super::fields_match(o, s))
    });
    let mut items: Vec<Value> = Vec::new();
    let mut next = None;
    for ((_, _, name), object) in matching.by_ref() {
        if let (Some(limit), Some(last)) = (limit, items.last()) {
            if items.len() == limit {
                let last = last["metadata"]["name"].as_str().unwrap_or_default();
                next = Some(encode_token(rv, last));
                // This one was not served: it counts among the remaining.
                let _ = name;
                break;
            }
        }
        items.push(object.clone());
    }
    let (kind, api_version) = kind_of(resource);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
        if selector.is_none() && field_selector.is_none() {
            // Only lists without a selector know how many are left.
            metadata["remainingItemCount"] = json!(matching.count() + 1);
        }
    }
    reply(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": metadata, "items": items}),
    )
}
