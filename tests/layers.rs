//! The layering of ARCHITECTURE.md, checked: each top-level module of `src/` may refer only to
//! modules below it in [`LAYERS`], so no two folders import each other and a new import that
//! points up (the start of a circle) fails here with the file and line that made it.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is the test failing"
)]

use std::path::{Path, PathBuf};

/// Top to bottom, as ARCHITECTURE.md lists them.
const LAYERS: &[&str] = &[
    "cli",
    "server",
    "admin",
    "control",
    "proxy",
    "shadow",
    "upstream",
    "telemetry",
    "state",
    "metrics",
    "config",
    "score",
    "observe",
    "domain",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code refers to with `crate::NAME`.
fn crate_refs(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter(|(i, _)| {
            // `understudy_sim::...` or `my_crate::` are not `crate::`.
            !code[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, m)| {
            let rest = &code[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn modules_import_only_from_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs");
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = rank(top) else {
            violations.push(format!("{}: module {top} is not in LAYERS", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in crate_refs(line) {
                checked += 1;
                match rank(target) {
                    Some(r) if r > own || target == top => {}
                    Some(_) => violations.push(format!(
                        "{}:{}: {top} refers to {target}, which is not below it",
                        rel.display(),
                        n + 1
                    )),
                    None => violations.push(format!(
                        "{}:{}: crate::{target} is not a module in LAYERS",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} references found: is the scan broken?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn every_layer_exists() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for layer in LAYERS {
        let exists =
            src.join(layer).join("mod.rs").is_file() || src.join(format!("{layer}.rs")).is_file();
        assert!(
            exists,
            "LAYERS names {layer}, which is not a module of src/"
        );
    }
}

#[test]
fn the_scan_sees_what_it_should() {
    assert_eq!(crate_refs("use crate::domain::{Body, full};"), ["domain"]);
    assert_eq!(
        crate_refs("let x = crate::a::f() + crate::b::g(); // crate::c"),
        ["a", "b"]
    );
    assert!(crate_refs("use understudy_sim::Behavior;").is_empty());
}
