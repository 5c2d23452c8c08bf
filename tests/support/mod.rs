//! Shared by the end-to-end tests.
pub mod agent_runs;
pub mod agent_stack;
pub mod docker;
pub mod fake_kube;
pub mod fake_model;
pub mod git_http;
pub mod k8s_schema;
pub mod netns_capture;
pub mod proc_net;
pub mod raw_http;
pub mod rbac;
pub mod runnerd;
pub mod spawner;
