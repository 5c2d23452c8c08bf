use super::*;
use crate::shared::protocol::runnerd::{ExecEvent, FailCode, PtySize, StdinMode, Truncated};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const LIMITS: RequestLimits = TEST_LIMITS;

/// `reachable` is absent for a reachable session (the original's bytes), `false` for one on
/// a lost node, `null` when unknown, and reads back as written (absent: reachable).
#[test]
fn reachable_is_additive() {
    let info = SessionInfo {
        session_id: "s".into(),
        organization_id: "o".into(),
        profile: Profile::Default,
        state: SessionState::Ready,
        backend: "kubernetes".into(),
        created_at_ms: 1,
        last_activity_at_ms: 1,
        expires_at_ms: 2,
        idle_timeout_ms: 3,
        pinned: false,
        reachable: Reachability::Reachable,
    };
    let wire = serde_json::to_value(&info).unwrap();
    assert!(wire.get("reachable").is_none(), "{wire}");
    for (reachable, expected) in [
        (Reachability::Unreachable, json!(false)),
        (Reachability::Unknown, json!(null)),
    ] {
        let info = SessionInfo {
            reachable,
            ..info.clone()
        };
        let wire = serde_json::to_value(&info).unwrap();
        assert_eq!(wire["reachable"], expected);
        assert_eq!(serde_json::from_value::<SessionInfo>(wire).unwrap(), info);
    }
    assert_eq!(
        serde_json::from_value::<SessionInfo>(serde_json::to_value(&info).unwrap()).unwrap(),
        info
    );
}

/// Create: ids, profile, clamping, env rules and messages.
#[test]
fn create_validation() {
    let ok = CreateSession::parse(
        &json!({"sessionId": "s1", "organizationId": "o1", "ttlMs": 1000, "idleTimeoutMs": -5,
        "env": {"A": "1", "PATH": "/x", "https_proxy": "p"}}),
        &LIMITS,
    )
    .unwrap();
    assert_eq!((ok.ttl_ms, ok.idle_timeout_ms), (1000, 1_800_000));
    assert_eq!(ok.profile, Profile::Default);
    assert_eq!(ok.env, BTreeMap::from([("A".to_string(), "1".to_string())]));
    let big = CreateSession::parse(
        &json!({"sessionId": "s1", "organizationId": "o1", "ttlMs": 1e30, "profile": "agent"}),
        &LIMITS,
    )
    .unwrap();
    assert_eq!((big.ttl_ms, big.profile), (86_400_000, Profile::Agent));
    let err = |body: Value| CreateSession::parse(&body, &LIMITS).unwrap_err().0;
    assert_eq!(
        err(json!({"organizationId": "o"})),
        "sessionId must match ^[A-Za-z0-9_-]{1,64}$"
    );
    assert_eq!(
        err(json!({"sessionId": "a/b", "organizationId": "o"})),
        "sessionId must match ^[A-Za-z0-9_-]{1,64}$"
    );
    assert_eq!(
        err(json!({"sessionId": "a", "organizationId": ""})),
        "organizationId must match ^[A-Za-z0-9_-]{1,128}$"
    );
    assert_eq!(
        err(json!({"sessionId": "a", "organizationId": "o", "profile": "root"})),
        "profile must be \"default\" or \"agent\""
    );
    assert_eq!(
        err(json!({"sessionId": "a", "organizationId": "o", "env": {"K": 1}})),
        "env.K must be a string"
    );
    assert_eq!(
        err(json!({"sessionId": "a", "organizationId": "o", "env": {"K": "x".repeat(32769)}})),
        "env.K value too large"
    );
    let many: Map<String, Value> = (0..129).map(|i| (format!("K{i}"), json!("v"))).collect();
    assert!(
        err(json!({"sessionId": "a", "organizationId": "o", "env": many}))
            .contains("more than 128")
    );
    assert_eq!(err(json!([1])), "body must be a JSON object");
}

/// Exec: exclusivity, defaults, clamping, and the runnerd request it becomes.
#[test]
fn exec_validation_and_forwarding() {
    let exec = SessionExec::parse(
        &json!({"execId": "e", "command": ["ls", "-l"], "timeoutMs": 9e9}),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(exec.timeout_ms, 7_200_000);
    assert!(exec.collect_output);
    assert_eq!(
        serde_json::to_value(exec.runnerd_request(5, 6)).unwrap(),
        json!({"execId": "e", "command": ["ls", "-l"], "timeoutMs": 7_200_000, "stdoutMaxBytes": 5, "stderrMaxBytes": 6, "stdinMode": "close"})
    );
    let agent = SessionExec::parse(
        &json!({"execId": "e", "shell": "x", "collectOutput": false, "stdinMode": "hold"}),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(agent.timeout_ms, 600_000);
    let request = serde_json::to_value(agent.runnerd_request(5, 6)).unwrap();
    assert_eq!(
        (
            request["stdoutMaxBytes"].clone(),
            request["stdinMode"].clone()
        ),
        (json!(0), json!("hold"))
    );
    let err = |body: Value| SessionExec::parse(&body, &LIMITS).unwrap_err().0;
    let shell = SessionExec::parse(
        &json!({"execId": "e", "shell": "bash", "pty": {"cols": 100, "rows": 30}}),
        &LIMITS,
    )
    .unwrap();
    let request = serde_json::to_value(shell.runnerd_request(5, 6)).unwrap();
    assert_eq!(
        (request["pty"].clone(), request["stdinMode"].clone()),
        (json!({"cols": 100, "rows": 30}), json!("raw"))
    );
    let raw = SessionExec::parse(
        &json!({"execId": "e", "shell": "cat", "stdinMode": "raw"}),
        &LIMITS,
    )
    .unwrap();
    assert_eq!((raw.stdin_mode, raw.pty), (StdinMode::Raw, None));
    assert_eq!(
        err(json!({"execId": "e", "shell": "x", "pty": {"cols": 100}})),
        PtySize::rule()
    );
    assert_eq!(
        err(
            json!({"execId": "e", "shell": "x", "pty": {"cols": 1, "rows": 1}, "stdinMode": "close"})
        ),
        "a pty exec's stdinMode is \"raw\""
    );
    assert_eq!(
        err(json!({"execId": "e"})),
        "exactly one of command or shell is required"
    );
    assert_eq!(
        err(json!({"execId": "e", "command": ["a"], "shell": "b"})),
        "exactly one of command or shell is required"
    );
    assert_eq!(
        err(json!({"execId": "e", "command": []})),
        "command must be a non-empty array of strings"
    );
    assert_eq!(
        err(json!({"execId": "e", "command": ["a", 1]})),
        "command must be a non-empty array of strings"
    );
    assert_eq!(
        err(json!({"execId": "e", "shell": "x", "collectOutput": "yes"})),
        "collectOutput must be a boolean"
    );
    assert_eq!(
        err(json!({"execId": "", "shell": "x"})),
        "execId must match ^[A-Za-z0-9_-]{1,64}$"
    );
}

/// Result mapping: TIMEOUT only with a non-zero exit; fail codes; session lost.
#[test]
fn result_mapping() {
    let exit = |code, timed_out, cancelled| ExecEvent::Exit {
        exit_code: code,
        duration_ms: 7,
        truncated: Truncated::default(),
        timed_out,
        cancelled,
        seq: 9,
    };
    let r = SessionExecResponse::from_terminal(&exit(0, true, false), "YQ==".into(), String::new())
        .unwrap();
    assert_eq!(
        (r.status, r.error_code, r.reason),
        (ExecOutcomeStatus::Completed, None, ExecEndReason::Completed)
    );
    let r =
        SessionExecResponse::from_terminal(&exit(143, true, false), String::new(), String::new())
            .unwrap();
    assert_eq!(
        (r.status, r.error_code.as_deref(), r.reason),
        (
            ExecOutcomeStatus::Failed,
            Some("TIMEOUT"),
            ExecEndReason::TimedOut
        )
    );
    let r =
        SessionExecResponse::from_terminal(&exit(143, false, true), String::new(), String::new())
            .unwrap();
    assert_eq!(
        (r.status, r.reason),
        (ExecOutcomeStatus::Cancelled, ExecEndReason::Cancelled)
    );
    let fail = ExecEvent::Fail {
        code: FailCode::InvalidCwd,
        message: "m".into(),
        seq: None,
    };
    let r = SessionExecResponse::from_terminal(&fail, String::new(), String::new()).unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"status": "failed", "exitCode": null, "durationMs": 0, "stdoutBase64": "", "stderrBase64": "",
               "truncated": {"stdout": false, "stderr": false}, "errorCode": "INVALID_CWD", "errorMessage": "m", "reason": "failed"})
    );
    let lost =
        SessionExecResponse::session_lost(String::new(), String::new(), Truncated::default());
    assert_eq!(lost.error_code.as_deref(), Some("SESSION_LOST"));
}
