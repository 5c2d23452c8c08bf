//! `tale docker-volumes rm`: removes Docker volumes the way the spawner does. A quota'd volume is
//! more than the engine's object: a loop device and an image file on the host stay behind a plain
//! `docker volume rm`. This command runs the same disk quota helper as the spawner's destroy, so
//! operators, `scripts/quickstart.sh --down` and the test suites leave nothing behind.
use crate::modes::spawner::backend::docker_quota::{
    remove_any_volume, DiskQuotaConfig, DiskQuotas, Removed, DEFAULT_DISK_QUOTA_DIR,
};
use crate::modes::spawner::config::{
    DEFAULT_DOCKER_SOCKET, DEFAULT_EGRESS_NETWORK, DEFAULT_RUNTIME_IMAGE,
};
use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;

/// Most volumes one `rm` removes (named plus matched by labels).
pub const MAX_VOLUMES_PER_RUN: usize = 10_000;
/// Longest `--network` accepted (it becomes a label value of the helper containers).
pub const MAX_NETWORK_NAME_BYTES: usize = 255;

/// A Docker network name (as the engine allows it), bounded.
fn network_name_ok(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NETWORK_NAME_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Flags of `tale docker-volumes` (the spawner's variables, with its defaults).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Docker engine's socket.
    #[arg(long, env = "SANDBOX_DOCKER_SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
    pub socket: String,
    /// Directory of the disk quota images on the Docker host.
    #[arg(long, env = "SANDBOX_DISK_QUOTA_DIR", default_value = DEFAULT_DISK_QUOTA_DIR)]
    pub quota_dir: String,
    /// Image the disk quota helper runs [default: $SANDBOX_RUNTIME_IMAGE, else the spawner's
    /// default session image].
    #[arg(long, env = "SANDBOX_DISK_QUOTA_HELPER_IMAGE")]
    pub helper_image: Option<String>,
    /// The deployment (its sandbox network) this run works for: its helper containers are
    /// labelled with it, so that deployment's spawner removes any this run leaves behind.
    #[arg(long, env = "SANDBOX_EGRESS_NETWORK", default_value = DEFAULT_EGRESS_NETWORK)]
    pub network: String,
    /// The deployment's stack label, put on the helper containers too.
    #[arg(long, env = "SANDBOX_STACK_LABEL")]
    pub stack: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Remove volumes (named, and/or every volume carrying all the given labels); a quota'd one
    /// goes with its loop device and image. One line per volume removed.
    Rm {
        /// Also remove every volume carrying this label (`KEY=VALUE` or `KEY`); repeated: all of
        /// them.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Volume names.
        names: Vec<String>,
    },
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error("--quota-dir must be an absolute host path without ':' or ',' (got {0:?})")]
    QuotaDir(String),
    #[error("--network must be 1-{MAX_NETWORK_NAME_BYTES} characters of A-Z, a-z, 0-9, '_', '.' and '-' (got {0:?})")]
    Network(String),
    #[error("--stack must be 1-128 characters of A-Z, a-z, 0-9, '_' and '-' (got {0:?})")]
    Stack(String),
    #[error("rm needs volume names or --label")]
    Nothing,
    #[error("cannot use the Docker socket {0}: {1}")]
    Socket(String, bollard::errors::Error),
    #[error("cannot list volumes: {0}")]
    List(bollard::errors::Error),
    #[error("more than {MAX_VOLUMES_PER_RUN} volumes match; narrow the labels")]
    TooMany,
}

pub fn run(args: Args) -> ExitCode {
    crate::shared::logging::init(crate::shared::logging::LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tale docker-volumes: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(remove(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("tale docker-volumes: {err}");
            ExitCode::from(2)
        }
    }
}

/// Removes what `rm` names; `Ok(false)` when some volume could not be removed (each said why).
async fn remove(args: Args) -> Result<bool, UsageError> {
    let Command::Rm { labels, names } = args.command;
    let dir = args.quota_dir;
    if !dir.starts_with('/') || dir.contains([':', ',']) || dir.contains("/../") {
        return Err(UsageError::QuotaDir(dir));
    }
    if !network_name_ok(&args.network) {
        return Err(UsageError::Network(args.network));
    }
    // An empty SANDBOX_STACK_LABEL means none, as for the spawner.
    let stack = args.stack.filter(|s| !s.is_empty());
    if let Some(stack) = &stack {
        if !crate::modes::spawner::backend::docker::label_value_ok(stack) {
            return Err(UsageError::Stack(stack.clone()));
        }
    }
    if labels.is_empty() && names.is_empty() {
        return Err(UsageError::Nothing);
    }
    let docker = bollard::Docker::connect_with_unix(
        &args.socket,
        crate::modes::spawner::backend::docker::DOCKER_CALL_TIMEOUT.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|err| UsageError::Socket(args.socket.clone(), err))?;
    let helper_image = args
        .helper_image
        .or_else(|| std::env::var("SANDBOX_RUNTIME_IMAGE").ok())
        .unwrap_or_else(|| DEFAULT_RUNTIME_IMAGE.to_owned());
    let config = DiskQuotaConfig {
        dir,
        helper_image,
        org_cache_bytes: 0,
    };
    // This command only removes: the deployment record is never written; the deployment only
    // labels the helper containers.
    let quotas = DiskQuotas::new(docker.clone(), config, &args.network, stack.as_deref());
    let mut targets: BTreeSet<String> = names.into_iter().collect();
    if !labels.is_empty() {
        let filters = HashMap::from([("label".to_string(), labels)]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::new()
            .filters(&filters)
            .build();
        let listed = docker
            .list_volumes(Some(options))
            .await
            .map_err(UsageError::List)?;
        targets.extend(
            listed
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name),
        );
    }
    if targets.len() > MAX_VOLUMES_PER_RUN {
        return Err(UsageError::TooMany);
    }
    let mut all_removed = true;
    for name in targets {
        match remove_any_volume(&docker, &quotas, &name).await {
            Ok(Removed::Quota) => {
                println!("removed volume {name} (and its disk quota image and loop device)")
            }
            Ok(Removed::Plain) => println!("removed volume {name}"),
            Ok(Removed::Absent) => {}
            Err(err) => {
                eprintln!("tale docker-volumes: cannot remove volume {name}: {err}");
                all_removed = false;
            }
        }
    }
    Ok(all_removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(network: &str, stack: Option<&str>) -> Args {
        Args {
            socket: "/nonexistent/docker.sock".into(),
            quota_dir: "/srv/q".into(),
            helper_image: None,
            network: network.into(),
            stack: stack.map(str::to_owned),
            command: Command::Rm {
                labels: vec![],
                names: vec!["v".into()],
            },
        }
    }

    /// The deployment names that label helper containers are checked before the engine is
    /// reached: a bad network or stack is a usage error naming the flag.
    #[tokio::test]
    async fn deployment_names_are_checked_first() {
        for bad in [
            "",
            "-net",
            "a b",
            "a=b",
            &"n".repeat(MAX_NETWORK_NAME_BYTES + 1),
        ] {
            let err = remove(args(bad, None)).await.unwrap_err();
            assert!(matches!(err, UsageError::Network(_)), "{bad:?}: {err}");
        }
        for bad in ["a.b", "a=b", &"s".repeat(129)] {
            let err = remove(args("net", Some(bad))).await.unwrap_err();
            assert!(matches!(err, UsageError::Stack(_)), "{bad:?}: {err}");
        }
        // Good names (an empty stack is none) get as far as the socket.
        for stack in [None, Some(""), Some("qs-1")] {
            let err = remove(args("tale-sandbox.net_1", stack)).await.unwrap_err();
            assert!(matches!(err, UsageError::Socket(..)), "{stack:?}: {err}");
        }
    }
}
