//! The TLS settings: the spawner API's certificate and key files (`SANDBOX_TLS_CERT_FILE`,
//! `SANDBOX_TLS_KEY_FILE`: both or neither; neither serves plain HTTP), and whether traffic to
//! runnerd is TLS (`SANDBOX_RUNNERD_TLS`: always on the kubernetes backend, where it crosses the
//! cluster network; off by default on docker and local, where it stays on one host).
use super::ConfigError;
use crate::modes::spawner::backend::BackendKind;
use std::path::PathBuf;

/// The PEM files the spawner API serves TLS with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `Some`: the API is HTTPS only.
    pub api: Option<TlsFiles>,
    /// Sessions' runnerd serves TLS with a per-session certificate the spawner pins.
    pub runnerd: bool,
}

pub(super) fn tls_settings(
    get: &dyn Fn(&str) -> Option<String>,
    flag: &dyn Fn(&'static str, bool) -> Result<bool, ConfigError>,
    backend: BackendKind,
) -> Result<TlsSettings, ConfigError> {
    let api = match (get("SANDBOX_TLS_CERT_FILE"), get("SANDBOX_TLS_KEY_FILE")) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert_file: cert.into(),
            key_file: key.into(),
        }),
        (Some(_), None) => {
            return Err(ConfigError::Incomplete {
                set: "SANDBOX_TLS_CERT_FILE",
                missing: "SANDBOX_TLS_KEY_FILE",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Incomplete {
                set: "SANDBOX_TLS_KEY_FILE",
                missing: "SANDBOX_TLS_CERT_FILE",
            })
        }
    };
    let always = backend == BackendKind::Kubernetes;
    let runnerd = flag("SANDBOX_RUNNERD_TLS", always)?;
    if always && !runnerd {
        return Err(ConfigError::NotAllowed {
            name: "SANDBOX_RUNNERD_TLS",
            value: get("SANDBOX_RUNNERD_TLS").unwrap_or_default(),
            allowed: "1/true (the kubernetes backend always encrypts runnerd traffic)",
        });
    }
    Ok(TlsSettings { api, runnerd })
}

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;

    /// Plain HTTP by default; both files or neither; runnerd TLS on for kubernetes (and not
    /// switchable off there), opt-in elsewhere.
    #[test]
    fn tls_settings() {
        let c = config(&[("SANDBOX_TOKEN", "t")], false).unwrap();
        assert_eq!(
            c.tls,
            TlsSettings {
                api: None,
                runnerd: false
            }
        );
        let c = config(
            &[
                ("SANDBOX_TOKEN", "t"),
                ("SANDBOX_TLS_CERT_FILE", "/etc/tale/tls.crt"),
                ("SANDBOX_TLS_KEY_FILE", "/etc/tale/tls.key"),
                ("SANDBOX_BACKEND", "local"),
                ("SANDBOX_RUNNERD_TLS", "true"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            c.tls.api.unwrap().cert_file,
            PathBuf::from("/etc/tale/tls.crt")
        );
        assert!(c.tls.runnerd);
        let err = config(
            &[("SANDBOX_TOKEN", "t"), ("SANDBOX_TLS_CERT_FILE", "/c")],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SANDBOX_TLS_KEY_FILE"), "{err}");
        let kube = [("SANDBOX_TOKEN", "t"), ("SANDBOX_BACKEND", "kubernetes")];
        assert!(config(&kube, false).unwrap().tls.runnerd);
        let mut off = kube.to_vec();
        off.push(("SANDBOX_RUNNERD_TLS", "0"));
        let err = config(&off, false).unwrap_err().to_string();
        assert!(err.contains("SANDBOX_RUNNERD_TLS"), "{err}");
    }
}
