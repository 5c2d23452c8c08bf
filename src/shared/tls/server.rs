//! TLS server configurations from PEM (files or text) and the handshake of an accepted connection.
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest certificate or key PEM file read (a chain of a few certificates is a few KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_PEM_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{what} holds no PEM CERTIFICATE block")]
    NoCertificate { what: String },
    #[error("{what} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { what: String },
    #[error("{what}: {source}")]
    Rejected { what: String, source: rustls::Error },
}

/// Which TLS versions a server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.2 and 1.3: for clients we do not control (the platform, curl, proxies).
    Compatible,
    /// TLS 1.3 only: both ends are ours.
    Tls13Only,
}

/// A server configuration from a certificate chain and key in PEM files (read bounded).
pub fn load_server_config(
    cert_file: &Path,
    key_file: &Path,
    versions: Versions,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = read_bounded(cert_file)?;
    let key = read_bounded(key_file)?;
    server_config_from_pem(
        &certs,
        &key,
        versions,
        &cert_file.display().to_string(),
        &key_file.display().to_string(),
    )
}

/// A server configuration from a certificate chain and key in PEM text; `cert_what` and
/// `key_what` name their sources in errors.
pub fn server_config_from_pem(
    certs_pem: &[u8],
    key_pem: &[u8],
    versions: Versions,
    cert_what: &str,
    key_what: &str,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certs_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            what: cert_what.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsConfigError::NoKey {
        what: key_what.to_owned(),
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::new(super::provider()));
    let builder = match versions {
        Versions::Compatible => builder.with_safe_default_protocol_versions(),
        Versions::Tls13Only => builder.with_protocol_versions(&[&rustls::version::TLS13]),
    }
    .expect("the ring provider supports these versions");
    let mut config = builder
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsConfigError::Rejected {
            what: format!("{cert_what} with {key_what}"),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    use std::io::Read;
    let read_error = |source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Runs the server side of the handshake on an accepted connection, within `timeout` (a client
/// that connects and says nothing must not hold its place longer than one sending no headers).
pub async fn handshake<IO>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: IO,
    timeout: Duration,
) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tls::SessionTls;

    /// Missing, oversized and empty files, and a key that is not the certificate's, are refused
    /// with an error naming the file.
    #[test]
    fn bad_inputs_name_the_file() {
        let dir = std::env::temp_dir().join(format!("tale-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = SessionTls::derive(b"t", "a");
        let other = SessionTls::derive(b"t", "b");
        let write = |name: &str, text: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("cert.pem", tls.cert_pem().as_bytes());
        let key = write("key.pem", tls.key_pem().as_bytes());
        let wrong_key = write("wrong.pem", other.key_pem().as_bytes());
        let empty = write("empty.pem", b"");
        let huge = write("huge.pem", &vec![b'A'; MAX_PEM_FILE_BYTES as usize + 1]);
        assert!(load_server_config(&cert, &key, Versions::Compatible).is_ok());
        let err = |c: &Path, k: &Path| {
            load_server_config(c, k, Versions::Compatible)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&dir.join("nope"), &key).contains("nope"));
        assert!(err(&empty, &key).contains("empty.pem"));
        assert!(err(&cert, &empty).contains("empty.pem"));
        assert!(err(&huge, &key).contains("larger than"));
        assert!(err(&cert, &wrong_key).contains("wrong.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
