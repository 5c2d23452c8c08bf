//! tale: a self-hostable sandbox service for AI coding agents.
//!
//! One binary, several modes (`spawner`, `runnerd`, `egress-proxy`, `git-credential`, `session`);
//! `src/main.rs` only picks the mode. Everything lives here so tests and benchmarks can reach it.
#![deny(unsafe_code)]

pub mod modes;
pub mod shared;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The README's code map rows: directory → the module names its second column lists.
    fn code_map(readme: &str) -> BTreeMap<String, Vec<String>> {
        let mut rows = BTreeMap::new();
        for line in readme.lines() {
            let Some(rest) = line.strip_prefix("| `src/") else {
                continue;
            };
            let (dir, modules) = rest.split_once("` | ").expect("a two-column row");
            // Drop the parenthesized notes, then every comma-separated item is one `module`.
            let mut depth = 0;
            let names: String = modules
                .chars()
                .filter(|&c| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => return depth == 0,
                    }
                    false
                })
                .collect();
            let names = names
                .trim_end_matches([' ', '|'])
                .split(',')
                .map(|item| {
                    let item = item.trim();
                    item.strip_prefix('`')
                        .and_then(|i| i.strip_suffix('`'))
                        .unwrap_or_else(|| panic!("src/{dir}: {item:?} is not one `module`"))
                        .to_owned()
                })
                .collect();
            rows.insert(format!("src/{dir}"), names);
        }
        rows
    }

    /// Every directory of src/ has a row naming each of its modules, every name in a row is a
    /// module file or directory there, and every `src/…` path the code map names exists.
    #[test]
    fn readme_code_map_names_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let rows = code_map(&readme);
        let mut dirs = vec![root.join("src")];
        while let Some(dir) = dirs.pop() {
            let relative = format!("{}/", dir.strip_prefix(root).unwrap().display());
            let listed = rows
                .get(&relative)
                .unwrap_or_else(|| panic!("the README's code map has no row for {relative}"));
            let mut present = Vec::new();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    present.push(path.file_name().unwrap().to_string_lossy().into_owned());
                    dirs.push(path);
                } else if let Some(stem) = path
                    .extension()
                    .is_some_and(|e| e == "rs")
                    .then(|| path.file_stem().unwrap().to_string_lossy().into_owned())
                {
                    assert!(
                        listed.contains(&stem),
                        "the code map's row for {relative} does not name `{stem}`"
                    );
                    present.push(stem);
                }
            }
            for name in listed {
                assert!(
                    present.contains(name),
                    "the code map names `{name}` in {relative}, which has no such module"
                );
            }
        }
        let map_start = readme.find("Code map:").expect("a code map");
        let map_end = map_start + readme[map_start..].find("\nContents:").unwrap();
        for path in readme[map_start..map_end].split('`').skip(1).step_by(2) {
            if path.starts_with("src/") && !path.contains('<') {
                assert!(
                    root.join(path).exists(),
                    "the README names {path}, which is gone"
                );
            }
        }
    }
}
