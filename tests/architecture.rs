//! `docs/architecture.md` against the tree: every file its code map names exists, and every
//! source file of the workspace is named in the section of its crate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.rs` files under `dir`, relative to it.
fn sources(dir: &Path, rel: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("a folder entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                sources(&path, &rel.join(&name), out);
            }
        } else if name.ends_with(".rs") {
            out.insert(rel.join(&name).to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The code map's sections: crate folder -> the `.rs` paths its section names.
fn code_map(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let map = text
        .split("\n## Code map")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("docs/architecture.md has a Code map section");
    let mut sections = Vec::new();
    for section in map.split("\n### ").skip(1) {
        let (head, body) = section.split_once('\n').unwrap_or((section, ""));
        let dir = head.trim().trim_matches('`').to_string();
        let named = body
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| t.ends_with(".rs") && !t.contains(' '))
            .map(str::to_string)
            .collect();
        sections.push((dir, named));
    }
    sections
}

#[test]
fn the_code_map_names_every_source_file_and_nothing_else() {
    let text = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let sections = code_map(&text);
    let dirs: Vec<&str> = sections.iter().map(|(d, _)| d.as_str()).collect();
    let mut members: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| format!("crates/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    members.extend(["xtask".to_string(), "tests".to_string()]);
    for m in &members {
        assert!(dirs.contains(&m.as_str()), "no code-map section for {m}");
    }
    let mut problems = Vec::new();
    for (dir, named) in &sections {
        let mut files = BTreeSet::new();
        sources(&root().join(dir), Path::new(""), &mut files);
        for f in named.difference(&files) {
            problems.push(format!("{dir}: names {f}, which does not exist"));
        }
        for f in files.difference(named) {
            problems.push(format!("{dir}: {f} is not named"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
