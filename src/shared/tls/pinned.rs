//! A TLS client that trusts exactly one certificate: no CA, no name check, no dates. The server
//! must present that certificate as its end entity and prove it holds the certificate's key in
//! the handshake; anything else fails the handshake.
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use std::sync::Arc;

/// Verifies that the server's certificate is the pinned one.
#[derive(Debug)]
pub struct PinnedCert {
    cert_der: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCert {
    pub fn new(cert_der: &[u8]) -> PinnedCert {
        PinnedCert {
            cert_der: cert_der.to_vec(),
            algorithms: super::provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // Certificates are public: a plain comparison leaks nothing.
        if end_entity.as_ref() == self.cert_der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client configuration that accepts only `cert_der` (ALPN is left to the connector).
pub fn pinned_client_config(cert_der: &[u8]) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(super::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert::new(cert_der)))
        .with_no_client_auth()
}
