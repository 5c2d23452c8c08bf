//! One module per mode of the `tale` binary.
pub mod runnerd;
