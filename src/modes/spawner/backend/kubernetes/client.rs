//! How the spawner reaches the Kubernetes API: in-cluster service account when it runs in a Pod,
//! else the kubeconfig (`KUBECONFIG`, `~/.kube/config`); `SANDBOX_K8S_SERVER`, `SANDBOX_K8S_TOKEN`
//! and `SANDBOX_K8S_CAFILE` override the server, the credentials and the CA of either.
use super::super::BackendError;
use crate::modes::spawner::config::KubernetesSettings;
use std::time::Duration;

/// Longest wait for one API response (kube's own default is none).
pub const K8S_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The client configuration for `settings`.
pub async fn client_config(settings: &KubernetesSettings) -> Result<kube::Config, BackendError> {
    let discovered = match kube::Config::incluster() {
        Ok(config) => Ok(config),
        Err(_) => kube::Config::infer().await.map_err(|err| err.to_string()),
    };
    let mut config = match (discovered, &settings.server) {
        (Ok(config), _) => config,
        (Err(_), Some(server)) => kube::Config::new(parse_server(server)?),
        (Err(reason), None) => {
            return Err(BackendError::Engine(format!(
                "no Kubernetes API access: the spawner is not in a cluster and has no kubeconfig ({reason}); \
                 run it in-cluster, set KUBECONFIG, or set SANDBOX_K8S_SERVER (with SANDBOX_K8S_TOKEN)"
            )))
        }
    };
    if let Some(server) = &settings.server {
        config.cluster_url = parse_server(server)?;
    }
    if let Some(token) = &settings.token {
        // AuthInfo's token is a secrecy::SecretString; its Deserialize impl builds one without
        // this crate depending on secrecy itself.
        config.auth_info = serde_json::from_value(serde_json::json!({ "token": token }))
            .map_err(|err| BackendError::engine_call("SANDBOX_K8S_TOKEN", err))?;
    }
    if let Some(path) = &settings.ca_file {
        config.root_cert = Some(read_ca_bundle(path)?);
        config.root_cert_file = Some(path.clone());
    }
    config.read_timeout = Some(K8S_CALL_TIMEOUT);
    config.reset_reader_on_write = true;
    Ok(config)
}

fn parse_server(server: &str) -> Result<hyper::Uri, BackendError> {
    server.parse().map_err(|err| {
        BackendError::Engine(format!(
            "SANDBOX_K8S_SERVER={server:?} is not a URL ({err}); use e.g. https://10.0.0.1:6443"
        ))
    })
}

/// The DER certificates of a PEM bundle.
fn read_ca_bundle(path: &std::path::Path) -> Result<Vec<Vec<u8>>, BackendError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fail = |what: String| {
        BackendError::Engine(format!(
            "SANDBOX_K8S_CAFILE={}: {what}; point it at the API server's CA bundle (PEM)",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| fail(err.to_string()))?
        .map(|cert| cert.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| fail(err.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubernetesSettings {
        crate::modes::spawner::config::SpawnerConfig::from_env(|_| None, true)
            .unwrap()
            .kubernetes
    }

    /// Overrides replace the server and credentials; a bad CA file says which variable.
    #[tokio::test]
    async fn overrides() {
        let mut s = settings();
        s.server = Some("http://127.0.0.1:1".into());
        s.token = Some("abc".into());
        let config = client_config(&s).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:1/");
        assert!(config.auth_info.token.is_some());
        assert_eq!(config.read_timeout, Some(K8S_CALL_TIMEOUT));
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let err = client_config(&s).await.unwrap_err().to_string();
        assert!(err.contains("SANDBOX_K8S_CAFILE"), "{err}");
        s.ca_file = None;
        s.server = Some("not a url".into());
        let err = client_config(&s).await.unwrap_err().to_string();
        assert!(err.contains("SANDBOX_K8S_SERVER"), "{err}");
    }
}
