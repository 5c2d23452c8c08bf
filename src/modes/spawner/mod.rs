//! `tale spawner`: the control plane — sessions API, registry, sweeper, backends.
pub mod backend;
