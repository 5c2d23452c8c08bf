//! tale: a self-hostable sandbox service for AI coding agents.
//!
//! One binary, several modes (`spawner`, `runnerd`, `egress-proxy`, `git-credential`, `session`);
//! `src/main.rs` only picks the mode. Everything lives here so tests and benchmarks can reach it.
#![deny(unsafe_code)]

pub mod modes;
pub mod shared;
