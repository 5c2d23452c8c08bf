//! The egress allowlist: which host names the proxy lets sessions reach.
//!
//! Entries (from `SANDBOX_EGRESS_ALLOWLIST`, separated by `|`, `,`, whitespace or newlines):
//! - `api.example.com` — exactly that host;
//! - `*.example.com` — `example.com` **and** every subdomain of it (what people mean by it;
//!   tinyproxy's own wildcard would not match `example.com` itself);
//! - a literal IPv4 address.
//!
//! Names are compared case-insensitively. Each entry becomes an anchored, escaped extended regular
//! expression, so `held.example` never matches `xheld.example` or `heldXexample`. Anything else
//! (schemes, ports, paths, `*` inside a name, empty labels) is refused with an error naming it.

/// Longest host name.
pub const MAX_HOST_LEN: usize = 253;

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowEntry {
    /// Exactly this host (lower case).
    Host(String),
    /// This domain and all its subdomains (lower case, without `*.`).
    Domain(String),
}

/// An entry that is not a host, a `*.domain` or an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid egress allowlist entry {entry:?}: {reason}")]
pub struct AllowlistError {
    pub entry: String,
    pub reason: &'static str,
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn parse_entry(raw: &str) -> Result<AllowEntry, AllowlistError> {
    let fail = |reason| AllowlistError {
        entry: raw.to_owned(),
        reason,
    };
    let entry = raw.to_ascii_lowercase();
    if entry.contains("://") || entry.contains('/') {
        return Err(fail("write a host name, not a URL"));
    }
    if entry.contains(':') {
        return Err(fail(
            "ports are not part of an entry (CONNECT is limited to 443)",
        ));
    }
    let (wildcard, host) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry.as_str()),
    };
    if host.contains('*') {
        return Err(fail("`*` is only allowed as a leading `*.`"));
    }
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(fail("the host name is empty or longer than 253 characters"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        if wildcard {
            return Err(fail("`*.` cannot precede an IP address"));
        }
        return Ok(AllowEntry::Host(host.to_owned()));
    }
    if !host.split('.').all(valid_label) {
        return Err(fail(
            "labels must be letters, digits and inner hyphens, 1-63 long",
        ));
    }
    Ok(if wildcard {
        AllowEntry::Domain(host.to_owned())
    } else {
        AllowEntry::Host(host.to_owned())
    })
}

/// Parses the whole allowlist; `Ok(None)` when it is unset or empty (open mode).
pub fn parse(text: Option<&str>) -> Result<Option<Vec<AllowEntry>>, AllowlistError> {
    let Some(text) = text else { return Ok(None) };
    let entries: Vec<AllowEntry> = text
        .split(|c: char| c == '|' || c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(parse_entry)
        .collect::<Result<_, _>>()?;
    Ok((!entries.is_empty()).then_some(entries))
}

fn escape(host: &str) -> String {
    host.replace('.', "\\.")
}

/// The filter file lines (one anchored ERE per line).
pub fn filter_patterns(entries: &[AllowEntry]) -> Vec<String> {
    let mut patterns = Vec::new();
    for entry in entries {
        match entry {
            AllowEntry::Host(host) => patterns.push(format!("^{}$", escape(host))),
            AllowEntry::Domain(domain) => {
                patterns.push(format!("^{}$", escape(domain)));
                patterns.push(format!("^([a-z0-9-]+\\.)+{}$", escape(domain)));
            }
        }
    }
    patterns.dedup();
    patterns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries, separators, case, and the `*.` rule.
    #[test]
    fn parsing_and_patterns() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(parse(Some(" \n")).unwrap(), None);
        let entries = parse(Some("API.GitHub.com|*.npmjs.org, 10.1.2.3\nexample.com"))
            .unwrap()
            .unwrap();
        assert_eq!(
            entries,
            vec![
                AllowEntry::Host("api.github.com".into()),
                AllowEntry::Domain("npmjs.org".into()),
                AllowEntry::Host("10.1.2.3".into()),
                AllowEntry::Host("example.com".into()),
            ]
        );
        assert_eq!(
            filter_patterns(&entries),
            vec![
                "^api\\.github\\.com$",
                "^npmjs\\.org$",
                "^([a-z0-9-]+\\.)+npmjs\\.org$",
                "^10\\.1\\.2\\.3$",
                "^example\\.com$",
            ]
        );
    }

    /// Invalid entries name themselves.
    #[test]
    fn invalid_entries() {
        for bad in [
            "https://x.com",
            "x.com:443",
            "x.com/path",
            "a*.x.com",
            "*.*.x",
            "x..com",
            "-x.com",
            "*.1.2.3.4",
            "ex ample",
        ] {
            if bad == "ex ample" {
                continue; // whitespace separates entries
            }
            let err = parse(Some(bad)).unwrap_err();
            assert_eq!(err.entry, bad);
            assert!(err.to_string().contains(bad));
        }
        assert!(parse(Some(&"a".repeat(254))).is_err());
    }
}
