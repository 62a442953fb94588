//! Runs the Python client suite (`tests/sdk/`, the official `openai` and `anthropic` SDKs)
//! against the real `understudy` binary. `scripts/test.sh` installs the virtualenv it needs and
//! sets UNDERSTUDY_TEST_PYTHON.

use std::process::Command;

#[test]
fn official_python_sdks_work_through_the_proxy() {
    let python = std::env::var("UNDERSTUDY_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run scripts/test.sh, which installs the Python SDKs into .venv"
    );
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sdk"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("UNDERSTUDY_BIN", env!("CARGO_BIN_EXE_understudy"))
        .status()
        .expect("run pytest");
    assert!(
        status.success(),
        "the SDK client suite failed (output above)"
    );
}
