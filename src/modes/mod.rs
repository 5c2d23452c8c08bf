//! One module per mode of the `tale` binary.
pub mod git_credential;
pub mod runnerd;
pub mod spawner;
