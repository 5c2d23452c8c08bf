//! The README's tables of error codes and metric names are checked against the code, so neither
//! can drift: every HTTP error envelope code either daemon can answer (found in the source, where
//! each is written as `StatusCode::X, "code"`), runnerd's exec `fail` codes and stdin refusal
//! reasons, and every metric the spawner exposes (from its own rendering).
use crate::modes::spawner::metrics::Metrics;
use crate::shared::protocol::runnerd::{FailCode, StdinRefusal};
use std::collections::BTreeSet;
use std::path::Path;

const README: &str = include_str!("../../README.md");

/// The README text between `<!-- name:start -->` and `<!-- name:end -->`.
fn section(name: &str) -> &'static str {
    README
        .split(&format!("<!-- {name}:start -->"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {name}:end -->")).next())
        .unwrap_or_else(|| panic!("README has the {name} table between its markers"))
}

/// The cells of a table's body rows (those whose first cell is code-quoted).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn unquote(cell: &str) -> String {
    cell.trim_matches('`').to_owned()
}

fn status_number(name: &str) -> u16 {
    match name {
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "NOT_FOUND" => 404,
        "REQUEST_TIMEOUT" => 408,
        "CONFLICT" => 409,
        "PAYLOAD_TOO_LARGE" => 413,
        "TOO_MANY_REQUESTS" => 429,
        "INTERNAL_SERVER_ERROR" => 500,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        other => panic!("add StatusCode::{other} to status_number"),
    }
}

/// Every `StatusCode::X, "code"` in non-test source under `dir`: (code, status, file).
fn scan(dir: &Path, found: &mut Vec<(String, u16, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, found);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy();
        if !name.ends_with(".rs")
            || matches!(name.as_ref(), "tests.rs" | "fuzz.rs" | "readme_tables.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code_part = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for piece in code_part.split("StatusCode::").skip(1) {
            let ident: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            let rest = piece[ident.len()..].trim_start();
            let Some(rest) = rest.strip_prefix(',') else {
                continue;
            };
            let Some(literal) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let code: String = literal.chars().take_while(|c| *c != '"').collect();
            found.push((code, status_number(&ident), path.display().to_string()));
        }
    }
}

/// Each HTTP error code in the table has the statuses the code answers it with, and names every
/// daemon that answers it; no code is missing from the table and none is in it but not in the code.
#[test]
fn readme_error_code_table_matches_the_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    scan(&src, &mut found);
    let mut in_code = BTreeSet::new();
    let mut daemons: Vec<(String, &str)> = Vec::new();
    for (code, status, file) in &found {
        in_code.insert((code.clone(), *status));
        for daemon in ["runnerd", "spawner"] {
            if file.contains(&format!("modes/{daemon}/")) || file.contains("shared/") {
                daemons.push((code.clone(), daemon));
            }
        }
    }
    let table = rows(section("error-codes"));
    let mut in_readme = BTreeSet::new();
    for cells in &table {
        assert_eq!(
            cells.len(),
            4,
            "code | status | answered by | meaning: {cells:?}"
        );
        let status: u16 = cells[1].parse().unwrap_or_else(|_| panic!("{cells:?}"));
        in_readme.insert((unquote(&cells[0]), status));
    }
    let missing: Vec<_> = in_code.difference(&in_readme).collect();
    let stale: Vec<_> = in_readme.difference(&in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README error table: missing {missing:?}, not in the code {stale:?}"
    );
    for (code, daemon) in daemons {
        assert!(
            table
                .iter()
                .any(|cells| unquote(&cells[0]) == code && cells[2].contains(daemon)),
            "README error table: `{code}` must name {daemon}"
        );
    }
}

/// runnerd's exec `fail` codes and stdin refusal reasons, each listed once.
#[test]
fn readme_fail_and_stdin_tables_match_the_code() {
    // The matches fail to compile when a variant is added, so this list cannot fall behind.
    let fail_codes = [
        FailCode::InvalidCwd,
        FailCode::ExecLimit,
        FailCode::DuplicateExec,
        FailCode::BadRequest,
    ]
    .map(|code| match code {
        FailCode::InvalidCwd
        | FailCode::ExecLimit
        | FailCode::DuplicateExec
        | FailCode::BadRequest => code,
    });
    let refusals = [
        StdinRefusal::NotFound,
        StdinRefusal::StdinClosed,
        StdinRefusal::BadLine,
        StdinRefusal::WriteFailed,
        StdinRefusal::TooLarge,
    ]
    .map(|reason| match reason {
        StdinRefusal::NotFound
        | StdinRefusal::StdinClosed
        | StdinRefusal::BadLine
        | StdinRefusal::WriteFailed
        | StdinRefusal::TooLarge => reason,
    });
    let wire = |value: serde_json::Value| value.as_str().unwrap().to_owned();
    for (name, expected) in [
        (
            "fail-codes",
            fail_codes
                .iter()
                .map(|c| wire(serde_json::to_value(c).unwrap()))
                .collect::<BTreeSet<_>>(),
        ),
        (
            "stdin-refusals",
            refusals
                .iter()
                .map(|r| wire(serde_json::to_value(r).unwrap()))
                .collect(),
        ),
    ] {
        let listed: BTreeSet<String> = rows(section(name)).iter().map(|c| unquote(&c[0])).collect();
        assert_eq!(listed, expected, "README {name} table");
    }
}

/// The metric table lists exactly the metrics `GET /metrics` exposes (counters by their
/// `_total` sample name), with their types and label names.
#[test]
fn readme_metric_table_matches_the_code() {
    let text = Metrics::with_every_family_sampled().render();
    let mut exposed = BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let sample = match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_owned(),
        };
        // Label names of the sample lines (the histogram's `le` is not a label of its own).
        let labels: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{sample}{{")))
            .flat_map(|l| {
                let inner = l.split('}').next().unwrap_or("");
                inner
                    .split(',')
                    .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let labels = labels
            .into_iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>();
        let labels = if labels.is_empty() {
            "—".to_owned()
        } else {
            labels.join(", ")
        };
        exposed.insert((sample, kind.to_owned(), labels));
    }
    assert!(!exposed.is_empty());
    let listed: BTreeSet<(String, String, String)> = rows(section("metrics"))
        .iter()
        .map(|cells| (unquote(&cells[0]), cells[1].clone(), cells[2].clone()))
        .collect();
    assert_eq!(
        listed, exposed,
        "README metric table (name | type | labels | meaning)"
    );
}
