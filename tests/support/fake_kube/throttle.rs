//! API priority and fairness, as a client meets it: while the switch is on, the next requests are
//! answered 429 with a `Retry-After` header and the real server's `Status` body.
use super::{lock, reply, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;
use std::sync::Mutex;

#[derive(Default)]
pub struct Throttle {
    /// Requests still to answer 429.
    pub remaining: u32,
    /// The `Retry-After` seconds they carry.
    pub retry_after_secs: u32,
}

impl super::FakeKube {
    /// The next `requests` requests are answered 429 with `Retry-After: retry_after_secs`.
    pub fn throttle(&self, requests: u32, retry_after_secs: u32) {
        let mut state = lock(&self.state);
        state.throttle.remaining = requests;
        state.throttle.retry_after_secs = retry_after_secs;
    }
}

/// The 429 for this request, while the throttle lasts.
pub fn check(state: &Mutex<State>) -> Option<Response<Full<Bytes>>> {
    let mut guard = lock(state);
    if guard.throttle.remaining == 0 {
        return None;
    }
    guard.throttle.remaining -= 1;
    let retry = guard.throttle.retry_after_secs;
    drop(guard);
    let mut response = reply(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
            "details": {"retryAfterSeconds": retry}, "code": 429,
        }),
    );
    response
        .headers_mut()
        .insert("retry-after", retry.to_string().parse().unwrap());
    Some(response)
}
