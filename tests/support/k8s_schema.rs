//! Checks Kubernetes objects against the official OpenAPI schemas (strict: unknown fields are
//! errors) of the oldest and newest Kubernetes versions the chart supports (`kubeVersion` in
//! helm/tale/Chart.yaml), with the `kubernetes-validate` wheel that scripts/setup.sh installs into
//! /opt/tale-helm-sdk (`TALE_HELM_PYTHON` names another interpreter that has it). FAILS, never
//! skips, when that interpreter or the wheel is missing.
#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Oldest and newest supported Kubernetes versions that kubernetes-validate ships schemas for.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.25", "1.37"];

/// Panics with every schema violation of `objects` (each a full Kubernetes object) in every
/// version of [`KUBERNETES_VERSIONS`]; returns how many (object, version) pairs were checked.
pub fn assert_valid(objects: &[Value]) -> usize {
    let report = validate(objects);
    let errors = report["errors"].as_array().expect("an errors list");
    assert!(
        errors.is_empty(),
        "objects that break the Kubernetes OpenAPI schema:\n{}",
        errors
            .iter()
            .map(|e| format!("  {} [{}]: {}", e["object"], e["version"], e["error"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let checked = report["checked"].as_u64().unwrap() as usize;
    assert_eq!(checked, objects.len() * KUBERNETES_VERSIONS.len());
    checked
}

/// The validator's report: `{"checked": n, "errors": [{"version", "object", "error"}]}`.
pub fn validate(objects: &[Value]) -> Value {
    let python = std::env::var("TALE_HELM_PYTHON")
        .unwrap_or_else(|_| "/opt/tale-helm-sdk/bin/python".into());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-validate.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(KUBERNETES_VERSIONS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{python}: {e}; scripts/setup.sh installs kubernetes-validate into /opt/tale-helm-sdk")
        });
    let input = serde_json::to_vec(objects).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "{} failed (scripts/setup.sh installs kubernetes-validate): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
