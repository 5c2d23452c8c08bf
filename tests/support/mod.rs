//! Shared by the end-to-end tests.
pub mod agent_runs;
pub mod fake_kube;
pub mod fake_model;
pub mod git_http;
pub mod k8s_schema;
pub mod raw_http;
pub mod rbac;
pub mod runnerd;
pub mod spawner;
