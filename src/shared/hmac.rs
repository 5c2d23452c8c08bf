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
    /// Signed before this process started: a replay cache that was empty then cannot vouch for it.
    #[error("signed_before_start")]
    SignedBeforeStart,
    #[error("bad_signature")]
    BadSignature,
    #[error("replay")]
    Replay,
    #[error("replay_cache_full")]
    ReplayCacheFull,
}

/// Bytes of an HMAC-SHA256 tag; the signature header is exactly twice as many hex digits.
pub const MAC_LEN: usize = 32;

/// What a request presents.
pub struct Presented<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub signature: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub body: &'a [u8],
}

/// The headers of a request that passed every check that needs no body: a well-formed signature
/// and a fresh timestamp. Only such requests get their body read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prechecked {
    mac: [u8; MAC_LEN],
    timestamp_text: String,
}

struct ReplayCache {
    /// Keyed on the decoded tag, so no spelling of the same signature counts as new.
    expiries: HashMap<[u8; MAC_LEN], i64>,
    calls: u64,
}

/// Verifies signatures and remembers them for the replay window.
pub struct RequestVerifier {
    key: hmac::Key,
    /// Timestamps before this are refused: the replay cache starts empty with the process, so a
    /// request signed earlier may already have been served by the previous one.
    not_before_ms: i64,
    replay: Mutex<ReplayCache>,
}

impl RequestVerifier {
    /// A verifier that accepts requests signed at or after `not_before_ms` (the process start).
    pub fn new(key: &[u8], not_before_ms: i64) -> RequestVerifier {
        RequestVerifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            not_before_ms,
            replay: Mutex::new(ReplayCache {
                expiries: HashMap::new(),
                calls: 0,
            }),
        }
    }

    /// The checks that need no body, in the original's order: signature present and well formed
    /// (exactly 64 hex digits), timestamp present, numeric, within the skew and not before start.
    pub fn precheck(
        &self,
        signature: Option<&str>,
        timestamp: Option<&str>,
        now_ms: i64,
    ) -> Result<Prechecked, AuthFailure> {
        let signature = signature
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::MissingSignature)?;
        let timestamp_text = timestamp
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
        if timestamp < self.not_before_ms as f64 {
            return Err(AuthFailure::SignedBeforeStart);
        }
        let mac = hex::decode_exact::<MAC_LEN>(signature).ok_or(AuthFailure::BadSignature)?;
        Ok(Prechecked {
            mac,
            timestamp_text: timestamp_text.to_owned(),
        })
    }

    /// Checks the tag over the whole request, then the replay cache.
    pub fn verify_prechecked(
        &self,
        prechecked: &Prechecked,
        method: &str,
        path_and_query: &str,
        nonce: Option<&str>,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), AuthFailure> {
        let message = signing_string(
            method,
            path_and_query,
            &prechecked.timestamp_text,
            nonce,
            body,
        );
        // ring compares the tag in constant time.
        hmac::verify(&self.key, message.as_bytes(), &prechecked.mac)
            .map_err(|_| AuthFailure::BadSignature)?;
        let mut cache = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        cache.calls += 1;
        if cache.calls % REPLAY_SWEEP_EVERY == 0 || cache.expiries.len() >= MAX_REPLAY_ENTRIES {
            cache.expiries.retain(|_, expiry| *expiry > now_ms);
        }
        if cache
            .expiries
            .get(&prechecked.mac)
            .is_some_and(|expiry| *expiry > now_ms)
        {
            return Err(AuthFailure::Replay);
        }
        if cache.expiries.len() >= MAX_REPLAY_ENTRIES {
            return Err(AuthFailure::ReplayCacheFull);
        }
        cache
            .expiries
            .insert(prechecked.mac, now_ms + REPLAY_WINDOW_MS);
        Ok(())
    }

    /// Both steps at once (a request whose body is already in hand).
    pub fn verify(&self, request: &Presented<'_>, now_ms: i64) -> Result<(), AuthFailure> {
        let prechecked = self.precheck(request.signature, request.timestamp, now_ms)?;
        self.verify_prechecked(
            &prechecked,
            request.method,
            request.path_and_query,
            request.nonce,
            request.body,
            now_ms,
        )
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
        let verifier = RequestVerifier::new(KEY, 0);
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
    /// Every respelling of a valid signature is refused: `+` in place of a byte's leading zero,
    /// padding, prefixes, sign and whitespace are malformed; a case change decodes to the same tag
    /// and so is a replay once the original was served (and the original a replay after it).
    #[test]
    fn respelled_signatures_never_pass_twice() {
        let now = 1_700_000_000_000i64;
        let ts = now.to_string();
        // A nonce whose tag has a byte below 0x10, so `0x` → `+x` is possible.
        let (nonce, sig) = (0..)
            .map(|n| {
                let nonce = format!("n{n}");
                let sig = sign_request(KEY, "POST", "/v1/sessions?x=1", &ts, Some(&nonce), b"{}");
                (nonce, sig)
            })
            .find(|(_, sig)| sig.as_bytes().chunks(2).any(|pair| pair[0] == b'0'))
            .unwrap();
        let mut malformed = Vec::new();
        for (i, pair) in sig.as_bytes().chunks(2).enumerate() {
            if pair[0] == b'0' {
                let mut plus = sig.clone();
                plus.replace_range(i * 2..i * 2 + 1, "+");
                malformed.push(plus);
            }
        }
        for padded in [
            format!(" {sig}"),
            format!("{sig} "),
            format!("0{sig}"),
            format!("{sig}0"),
            format!("00{sig}"),
            format!("0x{sig}"),
            format!("+{sig}"),
            format!("{sig}="),
            format!("{sig}\n"),
            sig[..62].to_string(),
        ] {
            malformed.push(padded);
        }
        let verifier = RequestVerifier::new(KEY, 0);
        for bad in &malformed {
            assert_eq!(
                verifier.verify(&presented(bad, &ts, Some(&nonce), b"{}"), now),
                Err(AuthFailure::BadSignature),
                "{bad:?}"
            );
        }
        let upper = sig.to_ascii_uppercase();
        let mut mixed = sig.clone();
        mixed.replace_range(..1, &sig[..1].to_ascii_uppercase());
        assert_eq!(
            verifier.verify(&presented(&sig, &ts, Some(&nonce), b"{}"), now),
            Ok(())
        );
        for respelled in [&upper, &mixed, &sig] {
            assert_eq!(
                verifier.verify(&presented(respelled, &ts, Some(&nonce), b"{}"), now),
                Err(AuthFailure::Replay),
                "{respelled}"
            );
        }
        // The uppercase spelling served first makes the lowercase one the replay.
        let fresh = RequestVerifier::new(KEY, 0);
        assert_eq!(
            fresh.verify(&presented(&upper, &ts, Some(&nonce), b"{}"), now),
            Ok(())
        );
        assert_eq!(
            fresh.verify(&presented(&sig, &ts, Some(&nonce), b"{}"), now),
            Err(AuthFailure::Replay)
        );
    }

    /// A request signed before the verifier's start is refused even within the skew; one signed
    /// at or after it is served at once.
    #[test]
    fn signatures_from_before_start_are_refused() {
        let start = 1_700_000_000_000i64;
        let verifier = RequestVerifier::new(KEY, start);
        let before = (start - 1).to_string();
        let sig = sign_request(KEY, "POST", "/v1/sessions?x=1", &before, None, b"{}");
        assert_eq!(
            verifier.verify(&presented(&sig, &before, None, b"{}"), start + 5),
            Err(AuthFailure::SignedBeforeStart)
        );
        let at = start.to_string();
        let sig = sign_request(KEY, "POST", "/v1/sessions?x=1", &at, None, b"{}");
        assert_eq!(
            verifier.verify(&presented(&sig, &at, None, b"{}"), start),
            Ok(())
        );
    }
}
