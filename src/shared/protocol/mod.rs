//! The wire contract, shared by both ends of every connection.
pub mod agent_runs;
pub mod runnerd;
pub mod spawner;
pub mod terminal;
