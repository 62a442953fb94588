//! `understudy demo`, the README's first command, plays its whole scenario: shadow scores come
//! in, the candidate goes canary then promoted, degrades, and is rolled back by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;

#[test]
fn the_demo_walks_the_phases_and_rolls_back_by_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["demo", "--port", "0", "--exit"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pos = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{stdout}"))
    };
    // The phases come in order, with scores, and the rollback is the judge's own.
    assert!(pos("phase shadow") < pos("phase canary"));
    assert!(pos("phase canary") < pos("phase promoted"));
    assert!(pos("phase promoted") < pos("rolled back by itself"));
    assert!(pos("rolled back by itself") < pos("demo done"));
    assert!(stdout.contains("trigger quality"), "{stdout}");
    let qualities: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            l.split("quality ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        qualities.iter().any(|q| *q > 0.9),
        "no good quality reading: {qualities:?}"
    );
    let rollback = stdout
        .lines()
        .find(|l| l.contains("rolled back by itself"))
        .unwrap();
    let judged: f64 = rollback
        .split("(quality ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(judged < 0.8 && rollback.contains("below 0.8"), "{rollback}");
}
