//! The spawner's request signature (HMAC-SHA256 keyed with `SANDBOX_TOKEN`) and the derivation of
//! per-session runnerd tokens. Byte-compatible with the original platform client.
//!
//! Signed string: `METHOD\npath?query\ntimestamp\nnonce\nsha256hex(body)`, or without the nonce line
//! when no nonce is sent (the legacy form). Verification order, clock skew (30 s) and the replay
//! window (35 s) follow the original exactly; the reason of a failure is logged, never returned.
use super::hex;
use ring::{digest, hmac};
use std::collections::HashMap;
use std::sync::Mutex;

pub const SIGNATURE_HEADER: &str = "x-tale-sandbox-signature";
pub const TIMESTAMP_HEADER: &str = "x-tale-sandbox-timestamp";
pub const NONCE_HEADER: &str = "x-tale-sandbox-nonce";
/// Largest accepted difference between the request's timestamp and our clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 30_000;
/// How long a signature stays in the replay cache.
pub const REPLAY_WINDOW_MS: i64 = 35_000;
/// Expired replay entries are swept every this many verifications.
pub const REPLAY_SWEEP_EVERY: u64 = 100;
/// Most signatures remembered at once. A flood beyond it is refused (fail closed) rather than
/// growing memory; at the window above it allows ~2800 signed requests per second.
pub const MAX_REPLAY_ENTRIES: usize = 100_000;

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// The string the signature covers.
pub fn signing_string(
    method: &str,
    path_and_query: &str,
    timestamp_ms: &str,
    nonce: Option<&str>,
    body: &[u8],
) -> String {
    let method = method.to_ascii_uppercase();
    let body_hash = sha256_hex(body);
    match nonce.filter(|n| !n.is_empty()) {
        Some(nonce) => format!("{method}\n{path_and_query}\n{timestamp_ms}\n{nonce}\n{body_hash}"),
        None => format!("{method}\n{path_and_query}\n{timestamp_ms}\n{body_hash}"),
    }
}

/// Lowercase hex HMAC-SHA256 of the signing string.
pub fn sign_request(
    key: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp_ms: &str,
    nonce: Option<&str>,
    body: &[u8],
) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hex::encode(
        hmac::sign(
            &key,
            signing_string(method, path_and_query, timestamp_ms, nonce, body).as_bytes(),
        )
        .as_ref(),
    )
}

/// The runnerd token of a session: hex HMAC-SHA256(SANDBOX_TOKEN, `runnerd-v1:` + id). One-way, so a
/// session learns only its own token; stored nowhere, derived when needed.
pub fn derive_runnerd_token(sandbox_token: &[u8], session_id: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, sandbox_token);
    hex::encode(hmac::sign(&key, format!("runnerd-v1:{session_id}").as_bytes()).as_ref())
}

/// The three headers a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub signature: String,
    pub timestamp: String,
    pub nonce: String,
}

impl SignedHeaders {
    /// Signs a request now, with a fresh random nonce.
    pub fn new(
        key: &[u8],
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: u64,
    ) -> SignedHeaders {
        let nonce = hex::random::<16>();
        let timestamp = now_ms.to_string();
        SignedHeaders {
            signature: sign_request(key, method, path_and_query, &timestamp, Some(&nonce), body),
            timestamp,
            nonce,
        }
    }
}

impl SignedHeaders {
    /// Adds the three headers to a request being built.
    pub fn apply(self, builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        builder
            .header(SIGNATURE_HEADER, self.signature)
            .header(TIMESTAMP_HEADER, self.timestamp)
            .header(NONCE_HEADER, self.nonce)
    }
}

/// Why a request's signature was refused (logged; the client always sees 401 `unauthorized`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing_signature")]
    MissingSignature,
    #[error("missing_timestamp")]
    MissingTimestamp,
    #[error("bad_timestamp")]
    BadTimestamp,
    #[error("timestamp_skew")]
    TimestampSkew,
    #[error("bad_signature")]
    BadSignature,
    #[error("replay")]
    Replay,
    #[error("replay_cache_full")]
    ReplayCacheFull,
}

/// What a request presents.
pub struct Presented<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub signature: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub body: &'a [u8],
}

struct ReplayCache {
    expiries: HashMap<String, i64>,
    calls: u64,
}

/// Verifies signatures and remembers them for the replay window.
pub struct RequestVerifier {
    key: hmac::Key,
    replay: Mutex<ReplayCache>,
}

impl RequestVerifier {
    pub fn new(key: &[u8]) -> RequestVerifier {
        RequestVerifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            replay: Mutex::new(ReplayCache {
                expiries: HashMap::new(),
                calls: 0,
            }),
        }
    }

    /// Checks a request in the original's order.
    pub fn verify(&self, request: &Presented<'_>, now_ms: i64) -> Result<(), AuthFailure> {
        let signature = request
            .signature
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::MissingSignature)?;
        let timestamp_text = request
            .timestamp
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::MissingTimestamp)?;
        let timestamp: f64 = timestamp_text
            .trim()
            .parse()
            .map_err(|_| AuthFailure::BadTimestamp)?;
        if !timestamp.is_finite() || timestamp <= 0.0 {
            return Err(AuthFailure::BadTimestamp);
        }
        if (now_ms as f64 - timestamp).abs() > MAX_CLOCK_SKEW_MS as f64 {
            return Err(AuthFailure::TimestampSkew);
        }
        let given = hex::decode(signature).ok_or(AuthFailure::BadSignature)?;
        let message = signing_string(
            request.method,
            request.path_and_query,
            timestamp_text,
            request.nonce,
            request.body,
        );
        hmac::verify(&self.key, message.as_bytes(), &given)
            .map_err(|_| AuthFailure::BadSignature)?;
        let mut cache = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        cache.calls += 1;
        if cache.calls % REPLAY_SWEEP_EVERY == 0 || cache.expiries.len() >= MAX_REPLAY_ENTRIES {
            cache.expiries.retain(|_, expiry| *expiry > now_ms);
        }
        let key = signature.to_ascii_lowercase();
        if cache
            .expiries
            .get(&key)
            .is_some_and(|expiry| *expiry > now_ms)
        {
            return Err(AuthFailure::Replay);
        }
        if cache.expiries.len() >= MAX_REPLAY_ENTRIES {
            return Err(AuthFailure::ReplayCacheFull);
        }
        cache.expiries.insert(key, now_ms + REPLAY_WINDOW_MS);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"sandbox-token";

    fn presented<'a>(
        sig: &'a str,
        ts: &'a str,
        nonce: Option<&'a str>,
        body: &'a [u8],
    ) -> Presented<'a> {
        Presented {
            method: "post",
            path_and_query: "/v1/sessions?x=1",
            signature: Some(sig),
            timestamp: Some(ts),
            nonce,
            body,
        }
    }

    /// Values computed independently with Python's hmac/hashlib modules.
    #[test]
    fn known_vectors() {
        assert_eq!(
            derive_runnerd_token(b"sandbox-token", "ses1"),
            "64bea8c5297feb77101dc7081a5cb756764d9d01b91289a95f2ee6b1613847cf"
        );
        assert_eq!(
            sign_request(b"k", "GET", "/v1/sessions", "1000", None, b""),
            "b852693acbd1b6e3623f1d704c47ba581fa97ca66f71d37016f7d8bbb5e64aed"
        );
        assert_eq!(
            signing_string("get", "/v1/sessions", "1000", None, b""),
            "GET\n/v1/sessions\n1000\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            signing_string("POST", "/p", "5", Some("n"), b"{}"),
            "POST\n/p\n5\nn\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    /// Valid signatures pass once, with and without a nonce; replays, skew and tampering fail.
    #[test]
    fn verification_order_and_replay() {
        let verifier = RequestVerifier::new(KEY);
        let now = 1_700_000_000_000i64;
        let ts = now.to_string();
        let sig = sign_request(KEY, "POST", "/v1/sessions?x=1", &ts, Some("abc"), b"{}");
        assert_eq!(
            verifier.verify(&presented(&sig, &ts, Some("abc"), b"{}"), now),
            Ok(())
        );
        assert_eq!(
            verifier.verify(&presented(&sig, &ts, Some("abc"), b"{}"), now + 1),
            Err(AuthFailure::Replay)
        );
        assert_eq!(
            verifier.verify(
                &presented(&sig, &ts, Some("abc"), b"{}"),
                now + REPLAY_WINDOW_MS + 1
            ),
            Err(AuthFailure::TimestampSkew)
        );
        let legacy = sign_request(KEY, "POST", "/v1/sessions?x=1", &ts, None, b"{}");
        assert_eq!(
            verifier.verify(&presented(&legacy, &ts, None, b"{}"), now),
            Ok(())
        );
        assert_eq!(
            verifier.verify(&presented(&legacy, &ts, Some(""), b"{}"), now),
            Err(AuthFailure::Replay)
        );
        let other = sign_request(KEY, "POST", "/v1/sessions?x=1", &ts, Some("n2"), b"{}");
        assert_eq!(
            verifier.verify(&presented(&other, &ts, Some("n2"), b"{ }"), now),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            verifier.verify(&presented(&other, &ts, Some("n3"), b"{}"), now),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            verifier.verify(&presented("zz", &ts, None, b"{}"), now),
            Err(AuthFailure::BadSignature)
        );
        let old = (now - MAX_CLOCK_SKEW_MS - 1).to_string();
        let stale = sign_request(KEY, "POST", "/v1/sessions?x=1", &old, None, b"{}");
        assert_eq!(
            verifier.verify(&presented(&stale, &old, None, b"{}"), now),
            Err(AuthFailure::TimestampSkew)
        );
        for bad in ["abc", "-5", "0", "NaN", "inf"] {
            assert_eq!(
                verifier.verify(&presented(&other, bad, None, b"{}"), now),
                Err(AuthFailure::BadTimestamp),
                "{bad}"
            );
        }
        let missing = Presented {
            signature: None,
            ..presented("", &ts, None, b"")
        };
        assert_eq!(
            verifier.verify(&missing, now),
            Err(AuthFailure::MissingSignature)
        );
        let no_ts = Presented {
            timestamp: None,
            ..presented(&other, "", None, b"")
        };
        assert_eq!(
            verifier.verify(&no_ts, now),
            Err(AuthFailure::MissingTimestamp)
        );
    }
}
