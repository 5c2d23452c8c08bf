//! `tale egress-proxy …`: the egress proxy's configuration (tinyproxy + filter), its SSRF firewall,
//! and `run`, the egress image's entrypoint that supervises the DNS forwarder and tinyproxy.
pub mod allowlist;
pub mod firewall;
pub mod supervise;
pub mod tinyproxy;

use std::path::PathBuf;
use std::process::ExitCode;

/// `tale egress-proxy` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: EgressCommand,
}

/// Settings shared by `render` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// Allowlist (`|`, `,`, space or newline separated); unset/empty = open mode.
    #[arg(long, env = "SANDBOX_EGRESS_ALLOWLIST")]
    pub allowlist: Option<String>,
    /// File holding the allowlist (read at start and on SIGHUP); wins over --allowlist.
    #[arg(long, env = "SANDBOX_EGRESS_ALLOWLIST_FILE")]
    pub allowlist_file: Option<PathBuf>,
    /// Where tinyproxy.conf and the filter file are written.
    #[arg(long, default_value = "/run/tale-egress")]
    pub out_dir: PathBuf,
    /// Proxy port.
    #[arg(long, default_value_t = tinyproxy::DEFAULT_PROXY_PORT)]
    pub port: u16,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen: String,
    /// tinyproxy MaxClients.
    #[arg(long, env = "SANDBOX_EGRESS_MAX_CLIENTS", default_value_t = tinyproxy::DEFAULT_MAX_CLIENTS)]
    pub max_clients: u32,
    /// Client networks allowed to use the proxy (repeatable) [default: loopback + private ranges].
    #[arg(long = "allow-client")]
    pub allow_clients: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum EgressCommand {
    /// Write tinyproxy's config (and filter, in allowlist mode).
    Render(RenderArgs),
    /// Print (or, with --apply, apply) the SSRF firewall rules.
    Firewall {
        #[arg(long)]
        apply: bool,
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: String,
        /// The proxy port: the only TCP port reachable on loopback besides DNS.
        #[arg(long, default_value_t = tinyproxy::DEFAULT_PROXY_PORT)]
        port: u16,
        #[command(flatten)]
        permit: PermitArgs,
    },
    /// The egress image's entrypoint: firewall, render, DNS forwarder and tinyproxy.
    Run {
        #[command(flatten)]
        render: RenderArgs,
        /// Do not start the DNS forwarder.
        #[arg(long)]
        no_dns: bool,
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: String,
        #[command(flatten)]
        permit: PermitArgs,
    },
}

/// Networks exempted from the firewall's rejected ranges.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PermitArgs {
    /// Networks (CIDR) the proxy may reach although they lie in a rejected range, still on ports
    /// 80 and 443 only (repeatable; comma/space-separated lists accepted; empty = none).
    #[arg(long = "permit-range", env = "SANDBOX_EGRESS_PERMIT_RANGES")]
    pub permit_ranges: Vec<String>,
}

/// The firewall's plan for a proxy serving `port`.
pub fn firewall_plan(
    resolv_conf: &str,
    port: u16,
    permit: &PermitArgs,
) -> Result<firewall::FirewallPlan, firewall::FirewallError> {
    Ok(firewall::FirewallPlan {
        resolvers: firewall::resolvers_from(resolv_conf)?,
        served_tcp_ports: vec![port],
        permitted: crate::shared::cidr::Cidr::parse_list(&permit.permit_ranges.join(","))
            .map_err(|e| firewall::FirewallError::BadPermit(e.to_string()))?,
    })
}

/// What a render produced.
#[derive(Debug)]
pub struct Rendered {
    pub config: PathBuf,
    pub open_mode: bool,
}

/// Why a render wrote no configuration.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file the render reads or writes failed; `action` says which way.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The allowlist has an entry the proxy cannot enforce.
    #[error(transparent)]
    Allowlist(#[from] allowlist::AllowlistError),
}

fn file_error(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> RenderError {
    let path = path.to_path_buf();
    move |source| RenderError::File {
        action,
        path,
        source,
    }
}

/// Renders into `args.out_dir`.
pub fn render(args: &RenderArgs) -> Result<Rendered, RenderError> {
    let text = match &args.allowlist_file {
        Some(file) => Some(std::fs::read_to_string(file).map_err(file_error("read", file))?),
        None => args.allowlist.clone(),
    };
    let entries = allowlist::parse(text.as_deref())?;
    std::fs::create_dir_all(&args.out_dir).map_err(file_error("create", &args.out_dir))?;
    let filter = args.out_dir.join("allowlist");
    let filter_file = match &entries {
        Some(entries) => {
            std::fs::write(&filter, tinyproxy::render_filter(entries))
                .map_err(file_error("write", &filter))?;
            Some(filter.as_path())
        }
        None => None,
    };
    let settings = tinyproxy::ProxySettings {
        listen: args.listen.clone(),
        port: args.port,
        max_clients: args.max_clients,
        allow_clients: if args.allow_clients.is_empty() {
            tinyproxy::DEFAULT_ALLOWED_CLIENTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            args.allow_clients.clone()
        },
        drop_to_nobody: nix::unistd::geteuid().is_root(),
    };
    let config = args.out_dir.join("tinyproxy.conf");
    let text =
        tinyproxy::render_config(&settings, filter_file, &args.out_dir.join("tinyproxy.pid"));
    std::fs::write(&config, text).map_err(file_error("write", &config))?;
    Ok(Rendered {
        config,
        open_mode: entries.is_none(),
    })
}

/// Runs one `egress-proxy` command.
pub fn run(args: Args) -> ExitCode {
    crate::shared::logging::init(crate::shared::logging::LogFormat::Text);
    match args.command {
        EgressCommand::Render(render_args) => match render(&render_args) {
            Ok(rendered) => {
                println!("{}", rendered.config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("tale egress-proxy render: {err}");
                ExitCode::from(2)
            }
        },
        EgressCommand::Firewall {
            apply,
            resolv_conf,
            port,
            permit,
        } => {
            let plan = match firewall_plan(&resolv_conf, port, &permit) {
                Ok(plan) => plan,
                Err(err) => {
                    eprintln!("tale egress-proxy firewall: {err}");
                    return ExitCode::FAILURE;
                }
            };
            if !apply {
                print!("{}", firewall::rules_v4(&plan));
                print!("{}", firewall::rules_v6(&plan));
                return ExitCode::SUCCESS;
            }
            match firewall::apply(&plan) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("tale egress-proxy firewall: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        EgressCommand::Run {
            render,
            no_dns,
            resolv_conf,
            permit,
        } => supervise::run(render, no_dns, &resolv_conf, &permit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, allowlist: Option<&str>) -> RenderArgs {
        RenderArgs {
            allowlist: allowlist.map(str::to_owned),
            allowlist_file: None,
            out_dir: dir.to_path_buf(),
            port: 3128,
            listen: "0.0.0.0".into(),
            max_clients: 2000,
            allow_clients: vec![],
        }
    }

    /// Open and allowlist renders match the golden files (pid paths normalised); refusals keep
    /// their cause.
    #[test]
    fn golden_configs() {
        let dir = std::env::temp_dir().join(format!("tale-egress-golden-{}", std::process::id()));
        let norm = |text: String| {
            text.replace(&dir.display().to_string(), "OUT")
                .replace("User nobody\nGroup nogroup\n", "")
        };
        let open = render(&args(&dir, None)).unwrap();
        assert!(open.open_mode);
        assert_eq!(
            norm(std::fs::read_to_string(&open.config).unwrap()),
            include_str!("../../../tests/golden/egress/open.conf")
        );
        let listed = render(&args(&dir, Some("Api.GitHub.com|*.npmjs.org"))).unwrap();
        assert!(!listed.open_mode);
        assert_eq!(
            norm(std::fs::read_to_string(&listed.config).unwrap()),
            include_str!("../../../tests/golden/egress/allowlist.conf")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("allowlist")).unwrap(),
            include_str!("../../../tests/golden/egress/allowlist.filter")
        );
        let refused = render(&args(&dir, Some("http://x"))).unwrap_err();
        assert!(matches!(refused, RenderError::Allowlist(_)), "{refused:?}");
        assert!(refused.to_string().contains("\"http://x\""));
        let unwritable = render(&args(&dir.join("allowlist").join("sub"), None)).unwrap_err();
        assert!(
            unwritable.to_string().starts_with(&format!(
                "cannot create {}: ",
                dir.join("allowlist").join("sub").display()
            )),
            "{unwritable}"
        );
        assert!(
            std::error::Error::source(&unwritable)
                .and_then(|c| c.downcast_ref::<std::io::Error>())
                .is_some(),
            "the io error is the cause"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
