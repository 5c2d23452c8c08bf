//! The key and self-signed certificate runnerd serves TLS with, one per session.
//!
//! Both are derived from SANDBOX_TOKEN and the session id, like the runnerd token: an Ed25519 seed
//! is HMAC-SHA256(SANDBOX_TOKEN, `runnerd-tls-v1:` + id), and the certificate is built from it with
//! fixed fields, so the same inputs always give the same bytes. The spawner hands key and
//! certificate to the session when it creates it, and after a restart it derives the certificate
//! again to pin it: nothing needs to be stored, and no other session's key can be computed from
//! what a session holds.
use ring::signature::{Ed25519KeyPair, KeyPair};
use ring::{digest, hmac};

/// The subject and issuer common name of every session certificate.
pub const SESSION_CERT_NAME: &str = "tale-runnerd";

/// A session's runnerd key (PKCS#8) and certificate (DER).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionTls {
    cert_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SessionTls {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTls")
            .field("cert_sha256", &self.cert_sha256_hex())
            .finish_non_exhaustive()
    }
}

impl SessionTls {
    /// The session's key and certificate, derived from `sandbox_token` and `session_id`.
    pub fn derive(sandbox_token: &[u8], session_id: &str) -> SessionTls {
        let key = hmac::Key::new(hmac::HMAC_SHA256, sandbox_token);
        let tag = hmac::sign(&key, format!("runnerd-tls-v1:{session_id}").as_bytes());
        let seed: [u8; 32] = tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes");
        SessionTls::from_seed(&seed)
    }

    fn from_seed(seed: &[u8; 32]) -> SessionTls {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed");
        let public = pair.public_key().as_ref();
        let tbs = tbs_certificate(public);
        let signature = pair.sign(&tbs);
        let mut bit_string = vec![0u8]; // no unused bits
        bit_string.extend_from_slice(signature.as_ref());
        let cert_der = der(
            SEQUENCE,
            &[tbs, ed25519_algorithm(), der(BIT_STRING, &bit_string)].concat(),
        );
        SessionTls {
            cert_der,
            key_pkcs8: [ED25519_PKCS8_V1_PREFIX.as_slice(), seed].concat(),
        }
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PKCS#8 DER.
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// The certificate as a PEM `CERTIFICATE` block.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// The private key as a PEM `PRIVATE KEY` block.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key_pkcs8)
    }

    /// SHA-256 of the certificate, lowercase hex (what logs may show).
    pub fn cert_sha256_hex(&self) -> String {
        crate::shared::hex::encode(digest::digest(&digest::SHA256, &self.cert_der).as_ref())
    }
}

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): everything before the 32 seed bytes.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The Ed25519 object identifier 1.3.101.112, encoded.
const ED25519_OID: [u8; 3] = [0x2b, 0x65, 0x70];
/// The commonName attribute type 2.5.4.3, encoded.
const COMMON_NAME_OID: [u8; 3] = [0x55, 0x04, 0x03];

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const VERSION_TAG: u8 = 0xa0;

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn ed25519_algorithm() -> Vec<u8> {
    der(SEQUENCE, &der(OID, &ED25519_OID))
}

fn name() -> Vec<u8> {
    let attribute = [
        der(OID, &COMMON_NAME_OID),
        der(UTF8_STRING, SESSION_CERT_NAME.as_bytes()),
    ]
    .concat();
    der(SEQUENCE, &der(SET, &der(SEQUENCE, &attribute)))
}

/// The X.509 v3 TBSCertificate: a serial taken from the key's hash, valid from 1970 to the
/// RFC 5280 "no expiry" date (the spawner pins this exact certificate, so dates prove nothing and
/// an expiring one would only break long sessions), and the Ed25519 public key.
fn tbs_certificate(public_key: &[u8]) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, public_key);
    let mut serial = hash.as_ref()[..16].to_vec();
    // Positive and minimal: the top bit clear, the first byte never zero.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let validity = [
        der(UTC_TIME, b"700101000000Z"),
        der(GENERALIZED_TIME, b"99991231235959Z"),
    ]
    .concat();
    let mut key_bits = vec![0u8];
    key_bits.extend_from_slice(public_key);
    let public_key_info = der(
        SEQUENCE,
        &[ed25519_algorithm(), der(BIT_STRING, &key_bits)].concat(),
    );
    der(
        SEQUENCE,
        &[
            der(VERSION_TAG, &der(INTEGER, &[2])),
            der(INTEGER, &serial),
            ed25519_algorithm(),
            name(),
            der(SEQUENCE, &validity),
            name(),
            public_key_info,
        ]
        .concat(),
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64_simd::STANDARD.encode_to_string(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same token and id give the same bytes; another id or token gives another key.
    #[test]
    fn derivation_is_stable_and_separates_sessions() {
        let a = SessionTls::derive(b"token", "ses-1");
        assert_eq!(a, SessionTls::derive(b"token", "ses-1"));
        assert_ne!(
            a.key_pkcs8_der(),
            SessionTls::derive(b"token", "ses-2").key_pkcs8_der()
        );
        assert_ne!(
            a.key_pkcs8_der(),
            SessionTls::derive(b"other", "ses-1").key_pkcs8_der()
        );
        assert!(!format!("{a:?}").contains(&a.key_pem()[30..60]));
    }

    /// rustls accepts key and certificate as a pair (it checks the certificate's public key is the
    /// key's) and the PEM forms parse back to the same bytes.
    #[test]
    fn rustls_takes_the_pair() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = SessionTls::derive(b"token", "ses-1");
        let cert = CertificateDer::from_pem_slice(tls.cert_pem().as_bytes()).unwrap();
        assert_eq!(cert.as_ref(), tls.cert_der());
        let key = PrivateKeyDer::from_pem_slice(tls.key_pem().as_bytes()).unwrap();
        assert_eq!(key.secret_der(), tls.key_pkcs8_der());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("key and certificate match");
        // A key of another session does not match this certificate.
        let other = SessionTls::derive(b"token", "ses-2");
        let mismatched = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(tls.cert_der().to_vec())],
                PrivateKeyDer::from_pem_slice(other.key_pem().as_bytes()).unwrap(),
            );
        assert!(mismatched.is_err());
    }

    /// Long DER lengths use the long form.
    #[test]
    fn der_lengths() {
        assert_eq!(der(0x04, &[7; 3]), [0x04, 3, 7, 7, 7]);
        let long = der(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
    }
}
