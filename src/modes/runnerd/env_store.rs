//! The session's env store: variables every later exec sees, set by the platform (seed env, env
//! patches) and never by the execs themselves. In memory only; the spawner re-seeds after a restart.
use super::limits::{MAX_ENV_ENTRIES, MAX_ENV_VALUE_BYTES};
pub use crate::shared::protocol::runnerd::is_denied_name;
use std::collections::BTreeMap;

/// The store: at most [`MAX_ENV_ENTRIES`] names, values of at most [`MAX_ENV_VALUE_BYTES`].
#[derive(Debug, Default)]
pub struct EnvStore {
    vars: BTreeMap<String, String>,
}

impl EnvStore {
    /// Applies `set` then `unset`; returns the names refused (deny-listed, over a cap, or unusable).
    pub fn patch(&mut self, set: &BTreeMap<String, String>, unset: &[String]) -> Vec<String> {
        let mut denied = Vec::new();
        for (name, value) in set {
            let is_new = !self.vars.contains_key(name);
            if is_denied_name(name)
                || value.len() > MAX_ENV_VALUE_BYTES
                || value.contains('\0')
                || (is_new && self.vars.len() >= MAX_ENV_ENTRIES)
            {
                denied.push(name.clone());
                continue;
            }
            self.vars.insert(name.clone(), value.clone());
        }
        for name in unset {
            if is_denied_name(name) {
                denied.push(name.clone());
                continue;
            }
            self.vars.remove(name);
        }
        denied
    }

    /// Seeds the store from `TALE_SESSION_ENV` (a JSON object): non-string values are dropped, invalid
    /// JSON is logged and ignored, as the original does.
    pub fn seed_from_json(&mut self, json: &str) {
        let object = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
        {
            Ok(object) => object,
            Err(err) => {
                tracing::warn!(%err, "TALE_SESSION_ENV is not a JSON object; ignored");
                return;
            }
        };
        let set: BTreeMap<String, String> = object
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect();
        let denied = self.patch(&set, &[]);
        if !denied.is_empty() {
            tracing::warn!(?denied, "seed env names refused");
        }
    }

    /// The variables, in name order.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The deny-list of the spec, compared upper-cased, plus names no environment can hold.
    #[test]
    fn deny_list() {
        for name in [
            "HOME",
            "path",
            "TmpDir",
            "TALE_RUNNERD_TOKEN",
            "tale_runnerd_x",
            "http_proxy",
            "HTTPS_PROXY",
            "No_Proxy",
            "",
            "A=B",
        ] {
            assert!(is_denied_name(name), "{name} should be denied");
        }
        for name in ["FOO", "HOMEX", "XPATH", "HTTP_PROXYX", "TALE_SESSION"] {
            assert!(!is_denied_name(name), "{name} should be allowed");
        }
    }

    /// Set and unset report denied names; the rest applies.
    #[test]
    fn patch_reports_denied_names() {
        let mut store = EnvStore::default();
        let denied = store.patch(&map(&[("A", "1"), ("PATH", "/x")]), &["HOME".into()]);
        assert_eq!(denied, vec!["PATH".to_string(), "HOME".to_string()]);
        assert_eq!(store.vars(), &map(&[("A", "1")]));
        assert!(store.patch(&BTreeMap::new(), &["A".into()]).is_empty());
        assert!(store.vars().is_empty());
    }

    /// A new name beyond the entry cap is denied; updating an existing one still works.
    #[test]
    fn entry_and_value_caps() {
        let mut store = EnvStore::default();
        let full: BTreeMap<_, _> = (0..MAX_ENV_ENTRIES)
            .map(|i| (format!("V{i}"), "x".to_string()))
            .collect();
        assert!(store.patch(&full, &[]).is_empty());
        assert_eq!(store.patch(&map(&[("NEW", "1")]), &[]), vec!["NEW"]);
        assert!(store.patch(&map(&[("V0", "2")]), &[]).is_empty());
        let big = "y".repeat(MAX_ENV_VALUE_BYTES + 1);
        assert_eq!(store.patch(&map(&[("V1", &big)]), &[]), vec!["V1"]);
    }

    /// Seed env keeps string values only and survives invalid JSON.
    #[test]
    fn seed_env() {
        let mut store = EnvStore::default();
        store.seed_from_json(r#"{"A":"1","B":2,"HOME":"/x"}"#);
        assert_eq!(store.vars(), &map(&[("A", "1")]));
        store.seed_from_json("not json");
        assert_eq!(store.vars().len(), 1);
    }
}
