//! `tale spawner`: the control plane — sessions API, registry, sweeper, backends.
pub mod adoption;
pub mod agents;
pub mod api;
pub mod backend;
pub mod config;
pub mod edge;
pub mod heal;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod registry;
pub mod runnerd_client;
pub mod seed;
pub mod state;
pub mod sweeper;
pub mod test_hooks;

use crate::shared::logging::{self, LogFormat};
use backend::docker::{DockerBackend, DockerConfig};
use backend::kubernetes::{KubernetesBackend, KubernetesConfig};
use backend::local::LocalBackend;
use backend::Backend;
use backend::BackendKind;
use config::SpawnerConfig;
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
    #[error("API TLS: {0}")]
    Tls(#[from] crate::shared::tls::server::TlsConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The backend, and the networks its sessions live on (fenced off from the API).
async fn build_backend(
    config: &SpawnerConfig,
    session_networks: &mut Vec<crate::shared::cidr::Cidr>,
) -> Result<Arc<dyn Backend>, BootError> {
    Ok(match config.backend {
        BackendKind::Local => {
            let binary = std::env::current_exe().map_err(|source| backend::BackendError::Io {
                context: "cannot find this executable".into(),
                source,
            })?;
            LocalBackend::new(&config.host_session_root, &binary)?
        }
        BackendKind::Docker => {
            let docker = DockerBackend::new(DockerConfig {
                socket: config.docker_socket.clone(),
                image: config.runtime_image.clone(),
                network: config.egress_network.clone(),
                runtime: config.runtime.clone(),
                egress_proxy: config.egress_proxy.clone(),
                no_proxy: config.no_proxy.clone(),
                cache_volume_prefixes: config.cache_volume_prefixes.clone(),
                stack_label: config.stack_label.clone(),
                disk_quota: config.disk_quota.clone(),
                read_only_rootfs: config.hardening.read_only_rootfs,
                no_new_privileges: config.hardening.no_new_privileges,
                drop_all_capabilities: config.hardening.drop_all_capabilities,
                control_sources: config.docker_control_sources.clone(),
            })?;
            session_networks.extend(docker.prepare_isolation().await?);
            docker.spawn_boot_reclaim();
            Arc::new(docker)
        }
        BackendKind::Kubernetes => Arc::new(
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

/// After the drain signal, how long requests in flight (SSE streams, which clients resume) may go
/// on before they are cut.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves at SIGTERM or SIGINT (never, if the handlers cannot be installed).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; serving without them");
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

/// Runs the spawner until SIGTERM/SIGINT.
pub fn run(args: Args) -> ExitCode {
    logging::init(args.log_format);
    crate::shared::sys::purge_freed_memory_at_once();
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
    // Certificate problems stop the boot before anything else is touched.
    let tls = match &config.tls.api {
        Some(files) => Some(crate::shared::tls::TlsAcceptor::from(
            crate::shared::tls::server::load_server_config(
                &files.cert_file,
                &files.key_file,
                crate::shared::tls::server::Versions::Compatible,
            )?,
        )),
        None => None,
    };
    let mut fenced = config.api_deny_sources.clone();
    let backend = build_backend(&config, &mut fenced).await?;
    let fence = edge::sources::SourceFence::new(fenced);
    if !fence.networks().is_empty() {
        tracing::info!(networks = ?fence.networks().iter().map(ToString::to_string).collect::<Vec<_>>(), "the API is not served to these networks");
    }
    let listen = args
        .listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], config.port)));
    let spawner = Spawner::new(config, backend);
    // The listener binds first; sessions are adopted behind it (see `adoption`).
    spawner.adoption.begin();
    let socket =
        crate::shared::http::bind_listener(listen).map_err(|source| BootError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, backend = spawner.backend_name(), tls = tls.is_some(), runnerd_tls = spawner.config.tls.runnerd, "spawner listening; adopting the backend's sessions");
    // Every task the spawner starts for its lifetime is owned here and ends through one signal.
    let (drain_tx, drain) = listener::Drain::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (spawner, drain) = (spawner.clone(), drain.clone());
        async move {
            tokio::select! {
                _ = spawner.adopt_all() => {
                    tracing::info!(sessions = spawner.registry.len(), "spawner ready");
                }
                _ = drain.clone().fired() => {
                    spawner.adoption.finish();
                    return;
                }
            }
            spawner.adoption.finish();
            // Pinned sessions lost while no spawner ran have no running compute to adopt: they
            // are healed now, after adoption (a heal may take the whole create deadline).
            tokio::select! { _ = spawner.heal_lost_pinned() => {}, _ = drain.fired() => {} }
        }
    });
    tasks.spawn({
        let (spawner, drain) = (spawner.clone(), drain.clone());
        async move {
            tokio::select! { _ = sweeper::run(spawner) => {}, _ = drain.fired() => {} }
        }
    });
    tasks.spawn(listener::accept_loop(
        socket,
        spawner.clone(),
        Arc::new(fence),
        drain,
        tls,
    ));
    shutdown_signal().await;
    tracing::info!(
        "spawner shutting down; sessions keep running and are re-adopted at the next start"
    );
    let _ = drain_tx.send(true);
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::info!(grace = ?SHUTDOWN_GRACE, "requests still in flight at the end of the grace period are cut");
        tasks.shutdown().await;
    }
    Ok(())
}
