//! The names of a session's backend objects (Docker container and volume, Kubernetes Pod, PVC and
//! Secret), shared by the backends.
//!
//! The mapping id → base name is injective over every valid id (`[A-Za-z0-9_-]{1,64}`):
//! - an id whose plain name `tale-sbx-ses-<id>` is a valid name for the engine and fits a DNS label
//!   (63 characters) keeps it; distinct ids give distinct plain names;
//! - every other id gets `tale-sbx-hash-<first 48 hex of SHA-256(id)>` (192 bits). No plain name
//!   starts with `tale-sbx-hash-` (plain names start with `tale-sbx-ses-`), so a hashed name can
//!   never equal a plain one, and two ids share a hashed name only through a SHA-256 collision.
//!
//! Per-object names append a fixed suffix (`-ws`, `-spec`) to the base, which keeps them injective.
//!
//! Releases before this one hashed with the first 16 hex of SHA-1 under the *plain* prefix, so the
//! 16-hex id equal to that prefix mapped to the same objects. [`legacy_base_name`] still computes
//! those names: a session created under one is found there, but only after its labels (session id,
//! organization) are checked, since the same name may be another session's plain name.

/// Prefix of plain names (and of every name before this release).
pub const PLAIN_PREFIX: &str = "tale-sbx-ses-";
/// Prefix of hashed names; no plain name starts with it.
pub const HASHED_PREFIX: &str = "tale-sbx-hash-";
/// Hex digits of SHA-256 kept in a hashed name (192 bits).
pub const HASHED_NAME_HEX_DIGITS: usize = 48;
/// Longest base name: a DNS label.
pub const MAX_BASE_NAME_LEN: usize = 63;
/// Hex digits of SHA-1 the names before this release kept.
const LEGACY_HASH_HEX_DIGITS: usize = 16;

/// Which engine's name rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRules {
    /// Docker accepts `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (case-sensitive): every valid id fits.
    Docker,
    /// Kubernetes names are lowercase DNS names: `[a-z0-9-]`, ending with a letter or digit.
    Kubernetes,
}

impl NameRules {
    fn allows_plain(self, id: &str) -> bool {
        match self {
            NameRules::Docker => true,
            NameRules::Kubernetes => {
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !id.ends_with('-')
            }
        }
    }
}

/// The base name of a session's objects (the container or Pod name).
pub fn session_base_name(session_id: &str, rules: NameRules) -> String {
    let plain = format!("{PLAIN_PREFIX}{session_id}");
    if plain.len() <= MAX_BASE_NAME_LEN && rules.allows_plain(session_id) {
        return plain;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, session_id.as_bytes());
    let hex = crate::shared::hex::encode(digest.as_ref());
    format!("{HASHED_PREFIX}{}", &hex[..HASHED_NAME_HEX_DIGITS])
}

/// The base name releases before this one gave the session: on Docker the plain name when it
/// fitted 63 characters, on Kubernetes always; otherwise the first 16 hex of SHA-1 under the plain
/// prefix. Not injective: use it only to find objects whose labels are then checked.
pub fn legacy_base_name(session_id: &str, rules: NameRules) -> String {
    let plain = format!("{PLAIN_PREFIX}{session_id}");
    if rules == NameRules::Docker && plain.len() <= MAX_BASE_NAME_LEN {
        return plain;
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        session_id.as_bytes(),
    );
    let hex = crate::shared::hex::encode(digest.as_ref());
    format!("{PLAIN_PREFIX}{}", &hex[..LEGACY_HASH_HEX_DIGITS])
}

/// Where to look for a session's objects: the current base name first, then the legacy one when
/// it differs.
pub fn candidate_base_names(session_id: &str, rules: NameRules) -> Vec<String> {
    let current = session_base_name(session_id, rules);
    let legacy = legacy_base_name(session_id, rules);
    if legacy == current {
        vec![current]
    } else {
        vec![current, legacy]
    }
}

/// What the labels (or annotations) on an object found under a session's name say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// It is this session's (same id; same organization, or none recorded).
    Ours,
    /// It belongs to another session or organization.
    Foreign {
        session_id: String,
        organization_id: String,
    },
}

/// Compares an object's recorded owner with the session asking for it. `expected_org` is `None`
/// when the caller does not know the organization (stop, destroy, endpoint lookups); an object
/// without a recorded organization (made before organizations were recorded on it) matches any.
pub fn ownership(
    session_id: &str,
    expected_org: Option<&str>,
    recorded_session: Option<&str>,
    recorded_org: Option<&str>,
) -> Ownership {
    let same_session = recorded_session == Some(session_id);
    let same_org = match (expected_org, recorded_org) {
        (Some(expected), Some(recorded)) => expected == recorded,
        _ => true,
    };
    if same_session && same_org {
        Ownership::Ours
    } else {
        Ownership::Foreign {
            session_id: recorded_session.unwrap_or_default().to_owned(),
            organization_id: recorded_org.unwrap_or_default().to_owned(),
        }
    }
}

/// What a lookup under a session's candidate names found.
pub enum Found<T> {
    /// The session's own object, under `name`.
    Ours { name: String, object: T },
    /// Nothing of this session's.
    Absent,
    /// The current name (or a legacy object with this session's id) is recorded for another
    /// session or organization.
    Foreign { name: String },
}

/// Judges one object found under candidate `index` of [`candidate_base_names`] (0 = the current
/// name) from its recorded owner (labels or annotations): `asking` is (session id, organization
/// when known), `recorded` what the object says. `None`: not this session's and not in its way —
/// a legacy name that is another session's current name — so the lookup goes on.
pub fn judge<T>(
    object: &'static str,
    name: String,
    value: T,
    index: usize,
    asking: (&str, Option<&str>),
    recorded: (Option<&str>, Option<&str>),
) -> Option<Found<T>> {
    let (session_id, org) = asking;
    match ownership(session_id, org, recorded.0, recorded.1) {
        Ownership::Ours => Some(Found::Ours {
            name,
            object: value,
        }),
        Ownership::Foreign {
            session_id: owner,
            organization_id: owner_org,
        } => {
            if index > 0 && owner != session_id {
                return None;
            }
            tracing::warn!(
                session_id,
                object,
                %name,
                owner_session = %owner,
                owner_org = %owner_org,
                "an object named for this session is recorded for another session or organization"
            );
            Some(Found::Foreign { name })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::protocol::runnerd::is_valid_id;

    /// The colliding pair of the old scheme: a long id and the 16-hex id equal to its SHA-1 prefix.
    fn colliding_pair() -> (String, String) {
        let long = "L".repeat(64);
        let legacy = legacy_base_name(&long, NameRules::Docker);
        let short = legacy.strip_prefix(PLAIN_PREFIX).unwrap().to_owned();
        (long, short)
    }

    /// The old scheme collided; the new one does not, on either engine.
    #[test]
    fn colliding_pair_gets_distinct_names() {
        let (long, short) = colliding_pair();
        assert_eq!(
            legacy_base_name(&long, NameRules::Docker),
            legacy_base_name(&short, NameRules::Docker),
            "the old names collided"
        );
        for rules in [NameRules::Docker, NameRules::Kubernetes] {
            assert_ne!(
                session_base_name(&long, rules),
                session_base_name(&short, rules)
            );
        }
        assert_eq!(
            session_base_name(&short, NameRules::Docker),
            format!("{PLAIN_PREFIX}{short}"),
            "short ids keep their plain (pre-upgrade) name"
        );
        assert!(session_base_name(&long, NameRules::Docker).starts_with(HASHED_PREFIX));
    }

    /// Asserts `name(id, rules)` for each `(id, rules, expected)`.
    fn expect_names(name: fn(&str, NameRules) -> String, cases: &[(&str, NameRules, &str)]) {
        for &(id, rules, expected) in cases {
            assert_eq!(name(id, rules), expected, "{id} under {rules:?}");
        }
    }

    /// Plain names where the engine allows them, hashed otherwise, always within a DNS label, and
    /// always valid for the engine.
    #[test]
    fn shapes() {
        expect_names(
            session_base_name,
            &[
                ("Ses_1", NameRules::Docker, "tale-sbx-ses-Ses_1"),
                ("ses-1", NameRules::Kubernetes, "tale-sbx-ses-ses-1"),
            ],
        );
        for id in ["Ses_1", "ses-", "ses_1", &"a".repeat(51)] {
            let name = session_base_name(id, NameRules::Kubernetes);
            assert!(name.starts_with(HASHED_PREFIX), "{id} → {name}");
        }
        assert_eq!(
            session_base_name(&"a".repeat(50), NameRules::Docker).len(),
            63
        );
        assert!(session_base_name(&"a".repeat(51), NameRules::Docker).starts_with(HASHED_PREFIX));
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(
            session_base_name("abc_", NameRules::Kubernetes).len(),
            HASHED_PREFIX.len() + HASHED_NAME_HEX_DIGITS
        );
        assert_eq!(
            session_base_name("ABC", NameRules::Kubernetes),
            format!(
                "{HASHED_PREFIX}{}",
                &crate::shared::hex::encode(
                    ring::digest::digest(&ring::digest::SHA256, b"ABC").as_ref()
                )[..48]
            )
        );
        for rules in [NameRules::Docker, NameRules::Kubernetes] {
            for id in ["a", "Z", "-", "_", "a-", &"Q_".repeat(32), &"z".repeat(64)] {
                let name = session_base_name(id, rules);
                assert!(name.len() <= MAX_BASE_NAME_LEN, "{name}");
                if rules == NameRules::Kubernetes {
                    assert!(
                        name.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                            && !name.ends_with('-'),
                        "{name}"
                    );
                }
            }
        }
    }

    /// Legacy names are what the previous release computed (Kubernetes: always SHA-1).
    #[test]
    fn legacy_names() {
        // sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
        expect_names(
            legacy_base_name,
            &[
                (
                    "abc",
                    NameRules::Kubernetes,
                    "tale-sbx-ses-a9993e364706816a",
                ),
                ("abc", NameRules::Docker, "tale-sbx-ses-abc"),
            ],
        );
        assert_eq!(
            candidate_base_names("abc", NameRules::Docker),
            vec!["tale-sbx-ses-abc"]
        );
        assert_eq!(
            candidate_base_names("abc", NameRules::Kubernetes),
            vec!["tale-sbx-ses-abc", "tale-sbx-ses-a9993e364706816a"]
        );
    }

    /// Injective over a large sample of valid ids of every length and alphabet, for both engines:
    /// no two ids share a name, and no id's name is another id's legacy-free plain name.
    #[test]
    fn injective_over_a_sample() {
        let alphabet: Vec<char> = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain(['_', '-'])
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 1..=64usize {
            for _ in 0..200 {
                let id: String = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                ids.insert(id);
            }
        }
        let (long, short) = colliding_pair();
        ids.insert(long);
        ids.insert(short);
        for rules in [NameRules::Docker, NameRules::Kubernetes] {
            let mut seen = std::collections::HashMap::new();
            for id in &ids {
                assert!(is_valid_id(id));
                let name = session_base_name(id, rules);
                if let Some(other) = seen.insert(name.clone(), id.clone()) {
                    panic!("{other} and {id} share {name} under {rules:?}");
                }
            }
        }
    }

    /// Ownership: same id and org (or no org recorded / asked) is ours; anything else is foreign.
    #[test]
    fn ownership_rules() {
        assert_eq!(
            ownership("a", Some("o"), Some("a"), Some("o")),
            Ownership::Ours
        );
        assert_eq!(ownership("a", None, Some("a"), Some("o")), Ownership::Ours);
        assert_eq!(ownership("a", Some("o"), Some("a"), None), Ownership::Ours);
        assert_eq!(
            ownership("a", Some("o"), Some("a"), Some("p")),
            Ownership::Foreign {
                session_id: "a".into(),
                organization_id: "p".into()
            }
        );
        assert!(matches!(
            ownership("a", None, Some("b"), Some("o")),
            Ownership::Foreign { .. }
        ));
        assert!(matches!(
            ownership("a", None, None, None),
            Ownership::Foreign { .. }
        ));
    }
}
