//! Code shared by more than one mode: the wire contract, logging, and the only unsafe code.
pub mod cidr;
pub mod clock;
#[cfg(test)]
pub mod fuzz;
pub mod hex;
pub mod hmac;
pub mod http;
pub mod logging;
pub mod ndjson;
pub mod protocol;
#[cfg(test)]
mod readme_tables;
pub mod spawner_client;
pub mod sse;
pub mod sys;
pub mod tls;
