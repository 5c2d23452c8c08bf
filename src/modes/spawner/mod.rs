//! `tale spawner`: the control plane — sessions API, registry, sweeper, backends.
pub mod agents;
pub mod api;
pub mod backend;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod state;
pub mod sweeper;

use crate::shared::logging::{self, LogFormat};
use backend::docker::{DockerBackend, DockerConfig};
use backend::kubernetes::{KubernetesBackend, KubernetesConfig};
use backend::local::LocalBackend;
use backend::Backend;
use config::{BackendChoice, SpawnerConfig};
use state::Spawner;
use std::process::ExitCode;
use std::sync::Arc;

/// Flags of `tale spawner` (everything else comes from the `SANDBOX_*` environment).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run without SANDBOX_TOKEN: no request signatures, predictable runnerd tokens. Development only.
    #[arg(long)]
    pub insecure_dev: bool,
    /// Listen address [default: 0.0.0.0:$SANDBOX_PORT].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Log line format.
    #[arg(long, env = "TALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Why the spawner refused to start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("backend: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

async fn build_backend(config: &SpawnerConfig) -> Result<Arc<dyn Backend>, BootError> {
    Ok(match config.backend {
        BackendChoice::Local => {
            let binary = std::env::current_exe().map_err(|source| backend::BackendError::Io {
                context: "cannot find this executable".into(),
                source,
            })?;
            LocalBackend::new(&config.host_session_root, &binary)?
        }
        BackendChoice::Docker => Arc::new(DockerBackend::new(DockerConfig {
            socket: config.docker_socket.clone(),
            image: config.runtime_image.clone(),
            network: config.egress_network.clone(),
            runtime: config.runtime.clone(),
            egress_proxy: config.egress_proxy.clone(),
            no_proxy: config.no_proxy.clone(),
            cache_volume_prefixes: config.cache_volume_prefixes.clone(),
            read_only_rootfs: config.hardening.read_only_rootfs,
            no_new_privileges: config.hardening.no_new_privileges,
            drop_all_capabilities: config.hardening.drop_all_capabilities,
        })?),
        BackendChoice::Kubernetes => Arc::new(
            KubernetesBackend::connect(KubernetesConfig {
                settings: config.kubernetes.clone(),
                image: config.runtime_image.clone(),
                egress_proxy: config.egress_proxy.clone(),
                no_proxy: config.no_proxy.clone(),
                hardening: config.hardening,
            })
            .await?,
        ),
    })
}

/// Runs the spawner until SIGTERM/SIGINT.
pub fn run(args: Args) -> ExitCode {
    logging::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("spawner refused to start: {}", BootError::Runtime(err));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("spawner refused to start: {err}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: Args) -> Result<(), BootError> {
    let config = SpawnerConfig::from_env(|name| std::env::var(name).ok(), args.insecure_dev)?;
    if config.token.is_none() {
        tracing::warn!("!!! spawner runs with --insecure-dev: requests are NOT authenticated and runnerd tokens are predictable. Development only. !!!");
    }
    let ignored =
        config::ignored_kubernetes_variables(|name| std::env::var(name).ok(), config.backend);
    if !ignored.is_empty() {
        tracing::warn!(variables = ?ignored, "these variables only apply to SANDBOX_BACKEND=kubernetes and are ignored");
    }
    let backend = build_backend(&config).await?;
    let listen = args
        .listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], config.port)));
    let spawner = Spawner::new(config, backend);
    spawner.adopt_all().await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| BootError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, backend = spawner.backend_name(), sessions = spawner.registry.len(), "spawner ready");
    tokio::spawn(sweeper::run(spawner.clone()));
    let handler_state = spawner.clone();
    crate::shared::http::serve(
        listener,
        crate::shared::http::ServeOptions {
            header_read_timeout: std::time::Duration::from_secs(10),
            // A platform that went away must release its SSE proxy (and the session's keep-alive)
            // at once, not at the next keepalive.
            allow_half_close: false,
        },
        move |request| api::handle(handler_state.clone(), request),
        async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!(
                "spawner shutting down; sessions keep running and are re-adopted at the next start"
            );
        },
    )
    .await;
    Ok(())
}
