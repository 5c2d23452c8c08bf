//! One module per mode of the `tale` binary.
pub mod docker_volumes;
pub mod egress;
pub mod git_credential;
pub mod runnerd;
pub mod session_cli;
pub mod spawner;
