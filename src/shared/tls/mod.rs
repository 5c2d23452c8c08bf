//! TLS on the two hops that carry secrets (git passwords, seed env, tokens): the platform to the
//! spawner ([`server::load_server_config`] from the operator's PEM files), and the spawner to each
//! session's runnerd ([`session_cert`]: a per-session key and self-signed certificate runnerd
//! serves with, [`pinned`]: the spawner's client that trusts exactly that certificate).
//!
//! Always rustls with the ring provider, passed explicitly to every configuration: nothing here
//! depends on (or installs) a process-wide default provider.
pub mod pinned;
pub mod server;
pub mod session_cert;
pub mod stream;

pub use session_cert::SessionTls;
pub use stream::MaybeTls;
pub use tokio_rustls::TlsAcceptor;

/// The crypto provider of every TLS configuration in the crate.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
