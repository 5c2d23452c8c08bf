//! `tale`: picks a mode from argv[0] (busybox style) or from the first argument, then runs it.
//! A crate root of its own: the library's `deny(unsafe_code)` does not reach it, and nothing here
//! needs unsafe (that lives in the library's `shared::sys`).
#![forbid(unsafe_code)]
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;
use tale::modes;

/// musl's allocator hands large blocks back to the kernel on every free; under streaming load that
/// turns into page-fault and TLB-shootdown storms (measured: most of runnerd's CPU time). mimalloc
/// keeps them, so it is the allocator of every mode.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tale", version, about = "Sandbox service for AI coding agents")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// PID 1 of a session container: exec, streaming, replay, env store, file ops.
    Runnerd(modes::runnerd::Args),
    /// The control plane: sessions API, registry, sweeper, backends.
    Spawner(modes::spawner::Args),
    /// Operator commands against a spawner: create, ls, get, exec, attach, cancel, rm.
    Session(modes::session_cli::Args),
    /// Egress proxy: render tinyproxy's config, the SSRF firewall, or run the proxy.
    EgressProxy(modes::egress::Args),
    /// git credential helper: answers `get` from the session's granted credentials.
    GitCredential(modes::git_credential::Args),
    /// Docker volumes removed as the spawner removes them (quota'd ones with their loop device
    /// and image).
    DockerVolumes(modes::docker_volumes::Args),
}

/// Names a symlink to the binary may carry to run one mode directly.
const ARGV0_MODES: &[(&str, &str)] = &[
    ("runnerd", "runnerd"),
    ("git-credential-tale", "git-credential"),
];

/// Inserts the mode named by argv[0] (`runnerd` → `tale runnerd …`) so clap sees one grammar.
fn with_argv0_mode(args: Vec<OsString>) -> Vec<OsString> {
    let Some(argv0) = args.first() else {
        return args;
    };
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    match ARGV0_MODES.iter().find(|(link, _)| *link == name) {
        Some((_, mode)) => {
            let mut out = vec![OsString::from("tale"), OsString::from(mode)];
            out.extend(args.into_iter().skip(1));
            out
        }
        None => args,
    }
}

/// `tale runnerd …` alone: runnerd is PID 1 of every session, and building the whole command tree
/// would touch every other mode's argument code too (pages that then stay in its RSS).
#[derive(Parser)]
#[command(
    name = "runnerd",
    bin_name = "tale runnerd",
    version,
    about = "PID 1 of a session container"
)]
struct RunnerdCli {
    #[command(flatten)]
    args: modes::runnerd::Args,
}

fn main() -> ExitCode {
    tale::shared::sys::tune_allocator();
    let args = with_argv0_mode(std::env::args_os().collect());
    if args.get(1).is_some_and(|mode| mode == "runnerd") {
        let cli = RunnerdCli::parse_from(args.into_iter().skip(1));
        return modes::runnerd::run(cli.args);
    }
    let cli = Cli::parse_from(args);
    match cli.mode {
        Mode::Runnerd(args) => modes::runnerd::run(args),
        Mode::GitCredential(args) => modes::git_credential::run(args),
        Mode::Spawner(args) => modes::spawner::run(args),
        Mode::Session(args) => modes::session_cli::run(args),
        Mode::EgressProxy(args) => modes::egress::run(args),
        Mode::DockerVolumes(args) => modes::docker_volumes::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink named after a mode runs that mode with the remaining arguments.
    #[test]
    fn argv0_selects_the_mode() {
        let args = with_argv0_mode(vec!["/usr/bin/runnerd".into(), "--listen".into()]);
        assert_eq!(args, vec!["tale", "runnerd", "--listen"]);
        let plain = with_argv0_mode(vec!["/usr/bin/tale".into(), "runnerd".into()]);
        assert_eq!(plain, vec!["/usr/bin/tale", "runnerd"]);
    }

    /// runnerd's own parser accepts exactly what the full command tree accepts for it.
    #[test]
    fn runnerd_parser_matches_the_full_tree() {
        let argv = [
            "tale",
            "runnerd",
            "--listen",
            "127.0.0.1:9",
            "--insecure-no-token",
        ];
        let Mode::Runnerd(full) = Cli::try_parse_from(argv).unwrap().mode else {
            panic!("runnerd mode");
        };
        let alone = RunnerdCli::try_parse_from(&argv[1..]).unwrap().args;
        assert_eq!(format!("{full:?}"), format!("{alone:?}"));
        assert!(RunnerdCli::try_parse_from(["runnerd", "--no-such-flag"]).is_err());
    }
}
