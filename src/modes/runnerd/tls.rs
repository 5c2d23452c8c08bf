//! runnerd's TLS: the per-session certificate and key the spawner hands over in
//! `TALE_RUNNERD_TLS_CERT` / `TALE_RUNNERD_TLS_KEY` (PEM; both or neither), served TLS 1.3 only.
//! The spawner pins that exact certificate, so a process that takes over runnerd's port without
//! the key cannot pass for it.
//!
//! The key must stay out of the exec user's reach. Exec environments never carry `TALE_RUNNERD_*`
//! variables. Where runnerd runs as root (Docker) the exec user cannot read runnerd's memory or
//! `/proc/<pid>/environ`. Where it runs as the exec user's own uid (Kubernetes), runnerd marks
//! itself non-dumpable ([`guard_memory`]): `/proc/<pid>/environ`, `/proc/<pid>/mem` and ptrace
//! then need `CAP_SYS_PTRACE`, which session Pods drop.
use crate::shared::protocol::runnerd::{RUNNERD_TLS_CERT_ENV, RUNNERD_TLS_KEY_ENV};
use crate::shared::tls::server::{server_config_from_pem, TlsConfigError, Versions};
use crate::shared::tls::TlsAcceptor;

/// Why runnerd's TLS settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum RunnerdTlsError {
    #[error("{0} is set but {1} is not: set both or neither")]
    Incomplete(&'static str, &'static str),
    #[error(transparent)]
    Config(#[from] TlsConfigError),
}

/// The acceptor for the PEM certificate and key given, `None` for plain HTTP (neither given).
pub fn acceptor(
    cert_pem: Option<String>,
    key_pem: Option<String>,
) -> Result<Option<TlsAcceptor>, RunnerdTlsError> {
    let present = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    match (present(cert_pem), present(key_pem)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(RunnerdTlsError::Incomplete(
            RUNNERD_TLS_CERT_ENV,
            RUNNERD_TLS_KEY_ENV,
        )),
        (None, Some(_)) => Err(RunnerdTlsError::Incomplete(
            RUNNERD_TLS_KEY_ENV,
            RUNNERD_TLS_CERT_ENV,
        )),
        (Some(cert), Some(key)) => Ok(Some(TlsAcceptor::from(server_config_from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            Versions::Tls13Only,
            RUNNERD_TLS_CERT_ENV,
            RUNNERD_TLS_KEY_ENV,
        )?))),
    }
}

/// The acceptor from runnerd's environment.
pub fn acceptor_from_env() -> Result<Option<TlsAcceptor>, RunnerdTlsError> {
    acceptor(
        std::env::var(RUNNERD_TLS_CERT_ENV).ok(),
        std::env::var(RUNNERD_TLS_KEY_ENV).ok(),
    )
}

/// When runnerd is not root, its uid is the exec user's: mark the process non-dumpable so execs
/// cannot read its environment (the TLS key) or memory (the key, git credentials). Root's memory
/// is out of the exec user's reach already.
pub fn guard_memory(is_root: bool) {
    if is_root {
        return;
    }
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%err, "cannot mark runnerd non-dumpable: execs of the same uid may read its memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tls::SessionTls;

    /// Neither: plain; both: TLS; one alone, or a key that is not the certificate's: refused,
    /// naming the variables.
    #[test]
    fn settings() {
        let tls = SessionTls::derive(b"t", "s");
        let other = SessionTls::derive(b"t", "o");
        assert!(acceptor(None, None).unwrap().is_none());
        assert!(acceptor(Some(String::new()), None).unwrap().is_none());
        assert!(acceptor(Some(tls.cert_pem()), Some(tls.key_pem()))
            .unwrap()
            .is_some());
        let err = acceptor(Some(tls.cert_pem()), None)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(RUNNERD_TLS_KEY_ENV), "{err}");
        let err = acceptor(Some(tls.cert_pem()), Some(other.key_pem()))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(RUNNERD_TLS_KEY_ENV), "{err}");
        let err = acceptor(Some("junk".into()), Some(tls.key_pem()))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(RUNNERD_TLS_CERT_ENV), "{err}");
    }
}
