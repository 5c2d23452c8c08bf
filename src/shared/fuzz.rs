//! What both daemons' fuzz targets share (test builds only): the case count from
//! `TALE_FUZZ_CASES`, a runner that keeps no failure files, arbitrary JSON built from a text
//! strategy of the caller's, and valid bodies with fields replaced, added or removed.
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

/// Cases per target: `TALE_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("TALE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner for `cases` cases (at least one) that writes no regression files.
pub fn runner_with(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases.max(1),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Any JSON value, four levels deep at most, with strings and keys from `text`.
pub fn json_value(text: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(text.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// One of `templates` with up to three of `fields` (top level or one level down) replaced by a
/// value from `value`, added, or removed.
pub fn mutated_body(
    templates: Vec<Value>,
    fields: &'static [&'static str],
    value: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Value> {
    let edits = prop::collection::vec(
        (
            prop::sample::select(fields),
            prop::option::of(value),
            any::<bool>(),
        ),
        0..4,
    );
    (prop::sample::select(templates), edits).prop_map(|(mut body, edits)| {
        for (field, value, nested) in edits {
            let target = match (nested, body.as_object_mut()) {
                (true, Some(map)) => map
                    .values_mut()
                    .find(|v| v.is_object())
                    .and_then(Value::as_object_mut),
                (false, Some(map)) => Some(map),
                _ => None,
            };
            let Some(target): Option<&mut Map<String, Value>> = target else {
                continue;
            };
            match value {
                Some(value) => target.insert(field.to_owned(), value),
                None => target.remove(field),
            };
        }
        body
    })
}
