//! Reviewing and rehearsing releases against the simulated upstream, through the real binary:
//! the review page in headless Chromium (`tests/ui/review_page.py`, driven by Playwright), the
//! `export` -> `replay` round trip (a bad release exits 1 with its failing cases, a benign one
//! 0), and the rollback drill (steps timed, the candidate restored, both in the event log, a
//! route without a candidate refused). `scripts/test.sh` installs Chromium and Playwright.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::process::{Command, Output};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::*;
use understudy_sim::{Behavior, Style};

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";
const BAD: &str = "bad-2025-01-01";
const JUDGE: &str = "judge-2024-07-18";

const PROMPTS: [&str; 12] = [
    "Where is my order 1234?",
    "How do I reset my password?",
    "Can I change the delivery address of an order?",
    "What is your refund policy for damaged items?",
    "My package says delivered but I never got it.",
    "Do you ship to Canada?",
    "How long does express shipping take?",
    "Can I cancel my subscription online?",
    "Why was my card declined?",
    "How do I update my billing details?",
    "Is there a warranty on electronics?",
    "Can I return a gift without a receipt?",
];

fn config(phase: &str, share: f64) -> String {
    support::config().upstream_timeout_secs(10).routes(&format!(
        r#"
[routes.bot]
model = "support-bot"
phase = "{phase}"
share = {share}
[routes.bot.stable]
label = "v1"
upstream = "sim"
model = "{STABLE}"
[routes.bot.candidate]
label = "v2"
upstream = "sim"
model = "{CANDIDATE}"
[routes.bot.shadow]
max_rps = 10000
max_inflight = 256
[routes.bot.scoring]
noise_warmup = 1000
keep_worst = 40
keep_random = 40
[routes.bot.scoring.judge]
upstream = "sim"
model = "{JUDGE}"
rubric = "The answer helps the customer and is correct."
max_rps = 1000
[routes.bot.rollback]
auto = false
"#
    ))
}

async fn start(phase: &str, share: f64) -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(Behavior {
        style: Style::Benign,
        ..Behavior::default()
    })
    .await;
    sim.sim.set_behavior(
        JUDGE,
        Behavior {
            style: Style::Judge,
            ..Behavior::default()
        },
    );
    sim.sim.set_behavior(
        BAD,
        Behavior {
            style: Style::Unrelated,
            ..Behavior::default()
        },
    );
    let (server, dir) = Server::start(&config(phase, share), &sim.url).await;
    (sim, server, dir)
}

/// `n` chat requests through the proxy, each prompt in turn.
async fn traffic(server: &Server, n: usize) {
    for i in 0..n {
        let body = request_for(
            "/v1/chat/completions",
            "support-bot",
            PROMPTS[i % PROMPTS.len()],
            false,
        );
        let r = post(&format!("{}/v1/chat/completions", server.proxy), &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

async fn samples(server: &Server) -> usize {
    let auth = format!("Bearer {TOKEN}");
    let r = send(
        Method::GET,
        &format!(
            "{}/admin/routes/bot/samples?order=random&limit=200",
            server.admin
        ),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    r.json()["samples"].as_array().map_or(0, Vec::len)
}

/// Traffic until the route holds `n` review samples (mirrors score after the answer; in canary
/// only the candidate's share is paired).
async fn captured(server: &Server, n: usize) {
    traffic(server, n).await;
    eventually(30, "review samples captured", || async {
        if samples(server).await >= n {
            return true;
        }
        traffic(server, PROMPTS.len()).await;
        false
    })
    .await;
}

async fn route(server: &Server) -> Value {
    let auth = format!("Bearer {TOKEN}");
    send(
        Method::GET,
        &format!("{}/admin/routes/bot", server.admin),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await
    .json()
}

async fn admin_post(server: &Server, path: &str, body: Value) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    post(
        &format!("{}{path}", server.admin),
        &body,
        &[("authorization", &auth)],
    )
    .await
}

/// Runs the `understudy` binary with `args` against `server` (off the runtime's threads).
async fn understudy(server: &Server, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (admin, proxy) = (server.admin.clone(), server.proxy.clone());
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args(&args)
            .env("UNDERSTUDY_ADMIN_URL", admin)
            .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
            .env("UNDERSTUDY_PROXY_URL", proxy)
            .output()
            .expect("run understudy")
    })
    .await
    .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_cases_replayed_gate_a_bad_release_and_pass_a_benign_one() {
    let (sim, server, dir) = start("shadow", 1.0).await;
    captured(&server, 24).await;

    let out = understudy(&server, &["export", "bot", "--random", "24"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 24);
    for case in &lines {
        assert_eq!(case["api"], "chat");
        assert_eq!(case["messages"][0]["role"], "user", "{case}");
        assert!(case["reference"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(case["output"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(
            (
                case["stable_version"].as_u64(),
                case["candidate_version"].as_u64()
            ),
            (Some(1), Some(2))
        );
        assert!(case["scores"]["lexical"].is_number());
    }
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(&cases, text(&out.stdout)).unwrap();
    let cases = cases.to_str().unwrap().to_owned();

    // A bad release, published as the candidate: the replay exits 1 and lists its cases.
    let published = admin_post(
        &server,
        "/admin/routes/bot/releases",
        json!({"label": "v3-bad", "upstream": "sim", "model": BAD}),
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    let report = dir.path().join("bad.json");
    let out = understudy(
        &server,
        &[
            "replay",
            "bot",
            "--cases",
            &cases,
            "--concurrency",
            "4",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("rollback"), "{stdout}");
    assert!(stdout.contains("failing cases (lines of"), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["verdict"], "rollback");
    assert_eq!(
        (report["release"].as_u64(), report["stable"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(report["replayed"], 24);
    assert!(
        report["failing"].as_array().unwrap().len() >= 20,
        "{report}"
    );
    assert!(report["quality"].as_f64().unwrap() < 0.8, "{report}");

    // The benign release #2 on the same cases: kept, exit 0.
    let report = dir.path().join("benign.json");
    let out = understudy(
        &server,
        &[
            "replay",
            "bot",
            "--cases",
            &cases,
            "--release",
            "2",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["verdict"], "keep", "{report}");
    assert_eq!(report["release"], 2);
    assert!(report["quality"].as_f64().unwrap() > 0.8, "{report}");

    // The budget: at most 5 cases; an unknown release and a bad file are refused (exit 2).
    let out = understudy(
        &server,
        &[
            "replay",
            "bot",
            "--cases",
            &cases,
            "--release",
            "2",
            "--max-cases",
            "5",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("5 replayed"),
        "{}",
        text(&out.stdout)
    );
    // The token budget: no case starts once it is spent (here: after the first two).
    let out = understudy(
        &server,
        &[
            "replay",
            "bot",
            "--cases",
            &cases,
            "--release",
            "2",
            "--concurrency",
            "2",
            "--max-tokens",
            "1",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 replayed"), "{stdout}");
    assert!(stdout.contains("token budget of"), "{stdout}");
    assert_eq!(out.status.code(), Some(3), "too few to judge: {stdout}");
    let out = understudy(
        &server,
        &["replay", "bot", "--cases", &cases, "--release", "99"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no release #99"),
        "{}",
        text(&out.stderr)
    );
    let junk = dir.path().join("junk.jsonl");
    std::fs::write(&junk, "{\"request\": {}}\nnot json\n").unwrap();
    let out = understudy(
        &server,
        &["replay", "bot", "--cases", junk.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 2: not JSON"),
        "{}",
        text(&out.stderr)
    );
    // Ctrl-C: what was done is printed and written, exit 130.
    let report = dir.path().join("interrupted.json");
    let child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args([
            "replay",
            "bot",
            "--cases",
            &cases,
            "--release",
            "2",
            "--concurrency",
            "1",
        ])
        .args(["--report", report.to_str().unwrap()])
        .env("UNDERSTUDY_ADMIN_URL", &server.admin)
        .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sim.sim.set_behavior(
        CANDIDATE,
        Behavior {
            style: Style::Benign,
            latency: std::time::Duration::from_millis(300),
            ..Behavior::default()
        },
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    let done = report["replayed"].as_u64().unwrap();
    assert!((1..24).contains(&done), "{report}");
    assert!(stdout.contains(&format!("{done} replayed")), "{stdout}");
    // Replays never reach the live judge: the route still has its candidate, no rollback.
    let r = route(&server).await;
    assert_eq!(r["candidate"]["version"], 3, "{r}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_rolls_back_probes_and_restores_with_its_times() {
    let (_sim, server, _dir) = start("canary", 0.3).await;
    traffic(&server, 3).await;
    let out = understudy(&server, &["drill", "bot"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for step in ["rollback", "probe", "restore", "verify", "total"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("{step}: {stdout}"));
        assert!(line.contains(" ms"), "{line}");
    }
    assert!(
        stdout.contains("x-understudy-release: 1 (stable)"),
        "{stdout}"
    );
    // As before: candidate #2 in canary at 0.3, serving traffic again.
    let r = route(&server).await;
    assert_eq!(
        (
            r["candidate"]["version"].as_u64(),
            r["phase"].as_str(),
            r["share"].as_f64()
        ),
        (Some(2), Some("canary"), Some(0.3)),
        "{r}"
    );
    let kinds: Vec<(&str, Option<&str>)> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["reason"].as_str()))
        .collect();
    let n = kinds.len();
    assert_eq!(kinds[n - 2].0, "rolled_back", "{kinds:?}");
    assert!(
        kinds[n - 2].1.unwrap().starts_with("rollback drill"),
        "{kinds:?}"
    );
    assert_eq!(kinds[n - 1].0, "restored", "{kinds:?}");
    // The restore path undoes only a drill: after a real rollback it is refused.
    let rolled = admin_post(
        &server,
        "/admin/routes/bot/rollback",
        json!({"reason": "tone"}),
    )
    .await;
    assert_eq!(rolled.status, 200);
    let restore = admin_post(
        &server,
        "/admin/routes/bot/restore",
        json!({"version": 2, "phase": "canary", "share": 0.3}),
    )
    .await;
    assert_eq!(restore.status, 409, "{}", restore.text());
    // No candidate: refused before anything changes.
    let out = understudy(&server, &["drill", "bot"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no candidate"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        route(&server).await["events"].as_array().unwrap().len(),
        n + 1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_page_in_headless_chromium() {
    let python = std::env::var("UNDERSTUDY_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run scripts/test.sh, which installs Playwright into .venv"
    );
    let chromium =
        std::env::var("UNDERSTUDY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} not found: run scripts/test.sh, which installs Debian's chromium"
    );
    let (_sim, server, _dir) = start("canary", 0.5).await;
    captured(&server, 12).await;
    let (admin, screenshot) = (
        server.admin.clone(),
        std::env::var("UNDERSTUDY_SCREENSHOT").ok(),
    );
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(&python);
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/ui/review_page.py"
        ))
        .env("ADMIN_URL", admin)
        .env("ADMIN_TOKEN", TOKEN)
        .env("ROUTE", "bot")
        .env("CHROMIUM", chromium);
        if let Some(path) = screenshot {
            cmd.env("SCREENSHOT", path);
        }
        cmd.output().expect("run the browser test")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "review page test failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // What the page's button did, seen through the API.
    let r = route(&server).await;
    assert!(r["candidate"].is_null(), "{r}");
    let last = r["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["trigger"].as_str()),
        (Some("rolled_back"), Some("manual")),
        "{last}"
    );
    assert_eq!(last["reason"], "reviewed in the browser");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_redacts_requests_exports_none_and_replays_nothing() {
    let sim = Sim::start(Behavior {
        style: Style::Benign,
        ..Behavior::default()
    })
    .await;
    let toml = config("shadow", 1.0).replace(
        "keep_random = 40\n",
        "keep_random = 40\nredact_requests = true\n",
    );
    let (server, dir) = Server::start(&toml, &sim.url).await;
    captured(&server, 6).await;
    let out = understudy(&server, &["export", "bot", "--worst", "6"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported = text(&out.stdout);
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for case in &lines {
        assert!(
            case["request"].is_null() && case["messages"].is_null(),
            "{case}"
        );
        assert!(!exported.contains(PROMPTS[0]) && !exported.contains(PROMPTS[1]));
        assert!(
            case["reference"].as_str().is_some_and(|t| !t.is_empty()),
            "answers are kept"
        );
    }
    let cases = dir.path().join("redacted.jsonl");
    std::fs::write(&cases, &exported).unwrap();
    let out = understudy(
        &server,
        &["replay", "bot", "--cases", cases.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("request redacted") && stderr.contains("no case to replay"),
        "{stderr}"
    );
    server.shutdown().await;
}
