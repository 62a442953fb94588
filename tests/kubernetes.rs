//! The Kubernetes manifests (`deploy/kubernetes/`): the base and the PostgreSQL overlay are
//! rendered with `kubectl kustomize`, validated against the Kubernetes schemas
//! (`kubernetes-validate --strict`), and checked by `tests/kubernetes/check.py` for what makes
//! them work with this server (ports, probes, grace, non-root, read-only root, Secrets,
//! selectors); the PrometheusRule carries exactly the rules of
//! `config/prometheus/understudy-rules.yml` (and passes `promtool check rules`); the config in
//! the ConfigMap is valid for the server.
//!
//! `scripts/test.sh` provides the tools: the venv with `kubernetes-validate` (and PyYAML),
//! `promtool`, and a `kubectl` that renders kustomizations (Debian's `kubernetes-client`, 1.20,
//! when none is on the PATH; its path in UNDERSTUDY_KUBECTL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "config/prometheus/understudy-rules.yml";

fn python() -> String {
    let python = std::env::var("UNDERSTUDY_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{ROOT}/.venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import kubernetes_validate, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import kubernetes_validate: run scripts/test.sh, which installs it into .venv"
    );
    python
}

fn kubectl() -> String {
    std::env::var("UNDERSTUDY_KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Renders, validates and checks one kustomization; `replicas` is what it must run.
fn check(kustomization: &str, replicas: u32) {
    let kubectl = kubectl();
    let rendered = Command::new(&kubectl)
        .args(["kustomize", kustomization])
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {kubectl} ({e}): scripts/test.sh installs Debian's kubernetes-client"
            )
        });
    assert!(
        rendered.status.success(),
        "kubectl kustomize {kustomization} failed:\n{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered.stdout).unwrap();
    let python = python();
    run(Command::new(&python)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "--no-warn",
        ])
        .arg(&file));
    let spec = dir.path().join("rules.yml");
    run(Command::new(&python)
        .arg("tests/kubernetes/check.py")
        .arg(&file)
        .arg(RULES)
        .arg(replicas.to_string())
        .arg(&spec));
    run(Command::new(promtool()).args(["check", "rules"]).arg(&spec));
}

fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.exists())
        .expect("promtool not found: scripts/test.sh installs Debian's prometheus")
}

#[test]
fn the_base_renders_validates_and_carries_the_rules() {
    check("deploy/kubernetes/base", 1);
}

#[test]
fn the_postgres_overlay_renders_and_validates() {
    check("deploy/kubernetes/overlays/postgres", 3);
}

/// The committed PrometheusRule is the rules file, indented under `spec`, as
/// `scripts/kubernetes-rules.sh` writes it.
#[test]
fn the_prometheus_rule_is_the_rules_file() {
    let rule =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes/base/prometheusrule.yaml"))
            .unwrap();
    let rules = std::fs::read_to_string(Path::new(ROOT).join(RULES)).unwrap();
    let (_, body) = rule
        .split_once("\nspec:\n")
        .expect("no `spec:` in the PrometheusRule");
    let unindented: String = body
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        unindented == rules,
        "deploy/kubernetes/base/prometheusrule.yaml is out of date: run scripts/kubernetes-rules.sh"
    );
}

#[test]
fn the_configs_in_the_config_maps_are_valid() {
    let base = Path::new(ROOT).join("deploy/kubernetes/base");
    let text = std::fs::read_to_string(base.join("understudy.toml")).unwrap();
    if let Err(problems) = understudy::Config::parse(&text, &base) {
        panic!("the base's understudy.toml: {problems:?}");
    }
    // The overlay's `[store] url` and `password_env` are the PostgreSQL store's keys
    // (CONTRACT.md); until this build has that store, they are its only problems.
    let overlay = Path::new(ROOT).join("deploy/kubernetes/overlays/postgres");
    let text = std::fs::read_to_string(overlay.join("understudy.toml")).unwrap();
    if let Err(problems) = understudy::Config::parse(&text, &overlay) {
        let other: Vec<_> = problems
            .iter()
            .filter(|p| !(p.key.starts_with("store") && p.message.contains("unknown field")))
            .collect();
        assert!(other.is_empty(), "the overlay's understudy.toml: {other:?}");
    }
}
