//! `tale egress-proxy run`: fence (firewall), render, start the DNS forwarder and tinyproxy in the
//! foreground, forward SIGTERM/SIGINT, reload on SIGHUP (re-render, then SIGUSR1 — in foreground
//! mode SIGHUP would kill tinyproxy), and exit with tinyproxy's status when it exits.
use super::{firewall, firewall_plan, render, PermitArgs, RenderArgs};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

/// How often children are checked for exit.
pub const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// After forwarding a stop signal, how long to wait before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

fn signal(child: &Child, signal: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    ExitCode::from(
        status
            .code()
            .or(status.signal().map(|s| 128 + s))
            .unwrap_or(1) as u8,
    )
}

/// Runs the proxy until tinyproxy exits or a stop signal arrives.
pub fn run(args: RenderArgs, no_dns: bool, resolv_conf: &str, permit: &PermitArgs) -> ExitCode {
    if std::env::var("TALE_SKIP_SSRF_FIREWALL").as_deref() == Ok("1") {
        tracing::warn!("!!! TALE_SKIP_SSRF_FIREWALL=1: the egress proxy runs WITHOUT its IP-layer fence. Development only. !!!");
    } else {
        let applied =
            firewall_plan(resolv_conf, args.port, permit).and_then(|plan| firewall::apply(&plan));
        if let Err(err) = applied {
            tracing::error!("refusing to start: {err}");
            return ExitCode::FAILURE;
        }
    }
    let rendered = match render(&args) {
        Ok(rendered) => rendered,
        Err(err) => {
            tracing::error!("refusing to start: {err}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %rendered.config.display(), open_mode = rendered.open_mode, "egress proxy configuration rendered");
    let mut dns = if no_dns {
        None
    } else {
        match Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-hosts",
                "--bind-dynamic",
                "--user=root",
                "--log-facility=-",
            ])
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(child) => Some(child),
            Err(err) => {
                tracing::error!("refusing to start: cannot start dnsmasq: {err}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut proxy = match Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&rendered.config)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            tracing::error!("refusing to start: cannot start tinyproxy: {err}");
            if let Some(dns) = dns.as_mut() {
                let _ = dns.kill();
                let _ = dns.wait();
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        use tokio::signal::unix::{signal as unix_signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            unix_signal(SignalKind::terminate()),
            unix_signal(SignalKind::interrupt()),
            unix_signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let mut tick = tokio::time::interval(CHILD_POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                _ = hup.recv() => match render(&args) {
                    Ok(_) => {
                        tracing::info!("configuration re-rendered; reloading tinyproxy");
                        signal(&proxy, Signal::SIGUSR1);
                    }
                    Err(err) => tracing::error!("reload refused, keeping the running configuration: {err}"),
                },
                _ = tick.tick() => {
                    if let Ok(Some(status)) = proxy.try_wait() {
                        tracing::warn!(%status, "tinyproxy exited");
                        break Some(exit_code(status));
                    }
                    if let Some(Ok(Some(status))) = dns.as_mut().map(Child::try_wait) {
                        tracing::error!(%status, "dnsmasq exited; stopping");
                        break None;
                    }
                }
            }
        }
        .unwrap_or_else(|| {
            for child in std::iter::once(&proxy).chain(dns.as_ref()) {
                signal(child, Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + STOP_GRACE;
            while std::time::Instant::now() < deadline && matches!(proxy.try_wait(), Ok(None)) {
                std::thread::sleep(CHILD_POLL_INTERVAL);
            }
            let _ = proxy.kill();
            ExitCode::SUCCESS
        })
    });
    let _ = proxy.kill();
    let _ = proxy.wait();
    if let Some(mut dns) = dns {
        let _ = dns.kill();
        let _ = dns.wait();
    }
    code
}
