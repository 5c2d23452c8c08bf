//! `tale runnerd`: PID 1 of a session container.
pub mod env_store;
pub mod exec;
pub mod init;
pub mod limits;

use std::process::ExitCode;

/// Command-line flags of `tale runnerd`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8200")]
    pub listen: std::net::SocketAddr,
}

/// Runs the daemon until a shutdown signal.
pub fn run(_args: Args) -> ExitCode {
    ExitCode::FAILURE
}
