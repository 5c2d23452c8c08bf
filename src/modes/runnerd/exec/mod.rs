//! Execs: spawn, stream into the journal, deadlines, cancel, stdin, retention.
pub mod journal;
pub mod spool;
