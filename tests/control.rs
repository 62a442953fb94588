//! Release control against the simulated upstream: automatic rollback on quality in every phase
//! and on errors, Alertmanager's webhook, the admin API's auth, rollback to any version,
//! finalize, publishing over the API, the CLI, and a benign candidate left alone over a long run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::*;
use understudy_sim::{Behavior, Fault, Style};

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";

fn config(phase: &str, share: f64, rollback: &str) -> String {
    support::config()
        .upstream_timeout_secs(5)
        .store("u.db")
        .routes(&format!(
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
noise_floor_share = 0.3
[routes.bot.rollback]
{rollback}
"#
        ))
}

const FAST_JUDGE: &str = "window = 40\nmin_samples = 20\nthreshold = 0.8\nmax_error_rate = 0.1";

async fn setup(
    phase: &str,
    share: f64,
    rollback: &str,
    candidate: Behavior,
) -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(Behavior {
        style: Style::Benign,
        ..Behavior::default()
    })
    .await;
    sim.sim.set_behavior(CANDIDATE, candidate);
    let (server, dir) = Server::start(&config(phase, share, rollback), &sim.url).await;
    (sim, server, dir)
}

fn benign() -> Behavior {
    Behavior {
        style: Style::Benign,
        ..Behavior::default()
    }
}

async fn chat(server: &Server, i: usize) -> Reply {
    let prompts = [
        "Where is my order?",
        "Reset my password",
        "Refund policy?",
        "Ship to Canada?",
        "Card declined",
        "Warranty terms",
    ];
    let body = request_for(
        "/v1/chat/completions",
        "support-bot",
        prompts[i % prompts.len()],
        false,
    );
    post(
        &format!("{}/v1/chat/completions", server.proxy),
        &body,
        &[("x-user-id", &format!("u{}", i % 40))],
    )
    .await
}

async fn route(server: &Server) -> Value {
    send(
        Method::GET,
        &format!("{}/admin/routes/bot", server.admin),
        &[],
        Bytes::new(),
    )
    .await
    .json()
}

async fn admin_post(server: &Server, path: &str, body: Value, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    post(&format!("{}{path}", server.admin), &body, &headers).await
}

/// Sends traffic until the route is back on stable alone (or `max` requests).
async fn until_rolled_back(server: &Server, max: usize) -> usize {
    for i in 0..max {
        let r = chat(server, i).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if i % 10 == 9 && route(server).await["candidate"].is_null() {
            return i + 1;
        }
    }
    panic!(
        "not rolled back after {max} requests: {}",
        route(server).await
    );
}

fn last_event(r: &Value, kind: &str) -> Value {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_bad_candidate_is_rolled_back_by_itself_in_every_phase() {
    for phase in ["shadow", "canary", "promoted"] {
        let (_sim, server, _dir) = setup(
            phase,
            1.0,
            FAST_JUDGE,
            Behavior {
                style: Style::Unrelated,
                ..Behavior::default()
            },
        )
        .await;
        let sent = until_rolled_back(&server, 400).await;
        let r = route(&server).await;
        assert_eq!(r["phase"], "stable", "{phase}: {r}");
        assert_eq!(r["serving"], 1);
        let e = last_event(&r, "rolled_back");
        assert_eq!(e["trigger"], "quality", "{phase}: {e}");
        assert!(e["reason"].as_str().unwrap().contains("quality"), "{e}");
        let v2 = r["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == 2)
            .unwrap()
            .clone();
        assert_eq!(v2["state"], "rolled_back");
        assert_eq!(v2["rolled_back"]["trigger"], "quality");
        let m = server.metrics().await;
        assert_eq!(
            metric_value(
                &m,
                r#"understudy_rollbacks_total{route="bot",trigger="quality"}"#
            ),
            1.0
        );
        assert_eq!(
            metric_value(&m, r#"understudy_serving_release{route="bot"}"#),
            1.0
        );
        assert_eq!(
            metric_value(&m, r#"understudy_route_phase{phase="stable",route="bot"}"#),
            1.0
        );
        // Every request after the rollback is served by stable.
        for i in 0..5 {
            assert_eq!(
                chat(&server, i).await.header("x-understudy-release"),
                Some("1")
            );
        }
        println!("{phase}: rolled back after {sent} requests");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_failing_candidate_is_rolled_back_on_errors() {
    let failing = Behavior {
        fault: Some(Fault::Status(503)),
        ..Behavior::default()
    };
    let (_sim, server, _dir) = setup("shadow", 1.0, FAST_JUDGE, failing).await;
    until_rolled_back(&server, 300).await;
    let r = route(&server).await;
    let e = last_event(&r, "rolled_back");
    assert_eq!(e["trigger"], "errors", "{e}");
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_rollbacks_total{route="bot",trigger="errors"}"#
        ),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benign_candidate_is_never_rolled_back_over_a_long_run() {
    let (_sim, server, _dir) = setup(
        "shadow",
        1.0,
        "window = 200\nmin_samples = 30\nthreshold = 0.8",
        benign(),
    )
    .await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    let client = client();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (url, client) = (url.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..140 {
                let body = request_for(
                    "/v1/chat/completions",
                    "support-bot",
                    &format!("question {} about order {}", w, i % 17),
                    false,
                );
                let r = send_with(
                    &client,
                    Method::POST,
                    &url,
                    &[("content-type", "application/json")],
                    Bytes::from(body.to_string()),
                )
                .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every mirror reaches an outcome; at least 2,000 of the 2,240 are scored samples (a mirror
    // may be dropped when the slots are busy: that is the budget working, not a sample).
    let series = |o: &str| {
        format!(r#"understudy_shadow_requests_total{{outcome="{o}",release="2",route="bot"}}"#)
    };
    // An outcome's series is born with its first mirror (the server does not pre-create them),
    // so while counting, an absent outcome is none yet; the scored count is read strictly below.
    let outcome = |m: &str, o: &str| metric_value_or_absent(m, &series(o)).unwrap_or(0.0);
    let outcomes = [
        "scored",
        "error",
        "unpaired",
        "dropped_busy",
        "dropped_budget",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = server.metrics().await;
        let done: f64 = outcomes.iter().map(|o| outcome(&m, o)).sum();
        if done >= 2240.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let counts: Vec<(&str, f64)> = outcomes.iter().map(|o| (*o, outcome(&m, o))).collect();
    assert!(
        metric_value(&m, &series("scored")) >= 2000.0,
        "mirror outcomes: {counts:?}"
    );
    let r = route(&server).await;
    assert_eq!(
        r["phase"],
        "shadow",
        "benign candidate rolled back: {}",
        last_event(&r, "rolled_back")
    );
    assert!(r["quality"].as_f64().unwrap() >= 0.9, "{r}");
    // The rollback counters exist from the start at 0 (one per trigger): present, and still 0.
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_rollbacks_total{route="bot",trigger="quality"}"#
        ),
        0.0
    );
    println!(
        "benign: quality {} noise floor {} after 2,240 requests",
        r["quality"], r["noise_floor"]
    );
    server.shutdown().await;
}

fn alert(status: &str, route: &str, starts_at: &str) -> Value {
    json!({
        "version": "4", "groupKey": "{}:{understudy_route=\"bot\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "understudy", "groupLabels": {"understudy_route": route},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "UnderstudyQualityBelowThreshold", "understudy_route": route, "severity": "page"},
            "annotations": {"summary": "quality 0.41 below 0.8 on bot"},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": "a1b2c3"
        }]
    })
}

#[tokio::test]
async fn alertmanager_rolls_back_once_and_ignores_the_rest() {
    let (_sim, server, _dir) = setup("canary", 0.5, "auto = false", benign()).await;
    let now = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(1))
        .to_string();

    // Without the token: 401, nothing changes.
    let r = admin_post(
        &server,
        "/admin/alertmanager",
        alert("firing", "bot", &now),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(route(&server).await["phase"], "canary");
    // Malformed: 400.
    for bad in [
        json!({"alerts": "nope"}),
        json!({"version": "3", "alerts": []}),
        json!([1]),
    ] {
        let r = admin_post(&server, "/admin/alertmanager", bad, Some(TOKEN)).await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    // Resolved: nothing.
    let r = admin_post(
        &server,
        "/admin/alertmanager",
        alert("resolved", "bot", &now),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(route(&server).await["phase"], "canary");
    // Firing: rolled back, trigger alert, reason from the summary.
    let r = admin_post(
        &server,
        "/admin/alertmanager",
        alert("firing", "bot", &now),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        r.json()["alerts"][0]["outcome"],
        "rolled_back",
        "{}",
        r.text()
    );
    let state = route(&server).await;
    assert_eq!(state["phase"], "stable");
    let e = last_event(&state, "rolled_back");
    assert_eq!(e["trigger"], "alert");
    assert!(
        e["reason"].as_str().unwrap().contains("quality 0.41"),
        "{e}"
    );
    // Delivered again (at least once): no second rollback.
    for _ in 0..3 {
        let r = admin_post(
            &server,
            "/admin/alertmanager",
            alert("firing", "bot", &now),
            Some(TOKEN),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // An alert for an unknown route changes nothing either.
    let r = admin_post(
        &server,
        "/admin/alertmanager",
        alert("firing", "nope", &now),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.json()["alerts"][0]["outcome"], "unknown_route");
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_rollbacks_total{route="bot",trigger="alert"}"#
        ),
        1.0
    );

    // A stale repeat of that alert does not roll back a candidate published after it began.
    let publish = json!({"label": "v3", "upstream": "sim", "model": "candidate-2025-01-01"});
    assert_eq!(
        admin_post(&server, "/admin/routes/bot/releases", publish, Some(TOKEN))
            .await
            .status,
        200
    );
    let r = admin_post(
        &server,
        "/admin/alertmanager",
        alert("firing", "bot", "2020-01-01T00:00:00Z"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.json()["alerts"][0]["outcome"], "stale");
    assert_eq!(route(&server).await["candidate"]["version"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn mutating_calls_need_the_token_and_change_nothing_without_it() {
    let (_sim, server, _dir) = setup("shadow", 0.5, "auto = false", benign()).await;
    let before = route(&server).await;
    let calls = [
        (
            "/admin/routes/bot/promote",
            json!({"phase": "promoted", "share": 1.0}),
        ),
        ("/admin/routes/bot/rollback", json!({"reason": "x"})),
        ("/admin/routes/bot/finalize", json!({})),
        (
            "/admin/routes/bot/releases",
            json!({"upstream": "sim", "model": "m-2025-01-01"}),
        ),
    ];
    for (path, body) in &calls {
        for token in [None, Some("wrong"), Some("")] {
            let r = admin_post(&server, path, body.clone(), token).await;
            assert_eq!(r.status, 401, "{path} with {token:?}");
            assert!(!r.text().contains(TOKEN));
        }
    }
    let samples = send(
        Method::GET,
        &format!("{}/admin/routes/bot/samples", server.admin),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(samples.status, 401);
    let after = route(&server).await;
    assert_eq!(before["releases"], after["releases"]);
    assert_eq!(
        (before["phase"].clone(), before["share"].clone()),
        (after["phase"].clone(), after["share"].clone())
    );
    assert_eq!(
        before["events"].as_array().unwrap().len(),
        after["events"].as_array().unwrap().len()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn promote_finalize_publish_and_roll_back_to_any_version() {
    let (sim, server, _dir) = setup("shadow", 0.5, "auto = false", benign()).await;
    let p = |path: &'static str, body: Value| {
        let server = &server;
        async move { admin_post(server, path, body, Some(TOKEN)).await }
    };
    // Refusals are clear: (path, body, status).
    let refusals = [
        ("/admin/routes/bot/finalize", json!({}), 409),
        (
            "/admin/routes/bot/promote",
            json!({"phase": "sideways"}),
            400,
        ),
        (
            "/admin/routes/bot/promote",
            json!({"phase": "canary", "share": 2}),
            400,
        ),
        (
            "/admin/routes/nope/promote",
            json!({"phase": "canary"}),
            404,
        ),
        ("/admin/routes/bot/rollback", json!({"to": 99}), 404),
        (
            "/admin/routes/bot/releases",
            json!({"upstream": "sim", "model": "gpt-4o-latest"}),
            400,
        ),
        (
            "/admin/routes/bot/releases",
            json!({"upstream": "nope", "model": "m-1"}),
            400,
        ),
    ];
    for (path, body, status) in refusals {
        let r = p(path, body.clone()).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        assert!(r.json()["error"]["message"].is_string());
    }

    // Promoted: the candidate serves everyone.
    let r = p(
        "/admin/routes/bot/promote",
        json!({"phase": "promoted", "share": 0.2}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["serving"], 2);
    assert_eq!(
        chat(&server, 0).await.header("x-understudy-release"),
        Some("2")
    );
    // Finalize: #2 is the new stable.
    let r = p("/admin/routes/bot/finalize", json!({})).await.json();
    assert_eq!(
        (
            r["phase"].as_str(),
            r["stable"]["version"].as_u64(),
            r["candidate"].is_null()
        ),
        (Some("stable"), Some(2), true)
    );
    assert_eq!(
        chat(&server, 1).await.header("x-understudy-release"),
        Some("2")
    );

    // Publish #3 over the API: the candidate, in shadow, mirrored.
    let body = json!({"label": "v3", "upstream": "sim", "model": "candidate-2025-02-02", "system_prompt": "Be brief.", "params": {"temperature": 0.1}});
    let r = p("/admin/routes/bot/releases", body).await.json();
    assert_eq!(
        (r["phase"].as_str(), r["candidate"]["version"].as_u64()),
        (Some("shadow"), Some(3))
    );
    p(
        "/admin/routes/bot/promote",
        json!({"phase": "shadow", "share": 1.0}),
    )
    .await;
    chat(&server, 2).await;
    eventually(5, "the new candidate mirrored", || async {
        sim.sim.calls_for("candidate-2025-02-02") >= 1
    })
    .await;

    // Roll back to #1, two releases ago: effective for the very next request.
    let r = p(
        "/admin/routes/bot/rollback",
        json!({"to": 1, "reason": "back to the original"}),
    )
    .await;
    let answered = Instant::now();
    assert_eq!(r.status, 200);
    let next = chat(&server, 3).await;
    assert_eq!(
        next.header("x-understudy-release"),
        Some("1"),
        "the next request after the rollback"
    );
    println!(
        "rollback to #1: next request served by #1 {:?} after the answer",
        answered.elapsed()
    );
    let r = route(&server).await;
    let states: Vec<(u64, &str)> = r["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["version"].as_u64().unwrap(), x["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(1, "stable"), (2, "retired"), (3, "rolled_back")]);
    let e = last_event(&r, "rolled_back");
    assert_eq!(
        (
            e["trigger"].as_str(),
            e["reason"].as_str(),
            e["to"].as_u64()
        ),
        (Some("manual"), Some("back to the original"), Some(1))
    );
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_rollbacks_total{route="bot",trigger="manual"}"#
        ),
        1.0
    );
    server.shutdown().await;
}

fn cli(admin: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
    cmd.args(args)
        .env("UNDERSTUDY_ADMIN_URL", admin)
        .env_remove("UNDERSTUDY_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("UNDERSTUDY_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_talks_to_the_admin_api() {
    let (_sim, server, _dir) = setup("shadow", 0.5, "auto = false", benign()).await;
    let admin = server.admin.clone();
    let s = admin.as_str();
    let (ok, out, _) = tokio::task::block_in_place(|| cli(s, None, &["status"]));
    assert!(ok);
    assert!(
        out.contains("ROUTE")
            && out.contains("bot")
            && out.contains("shadow")
            && out.contains(CANDIDATE),
        "{out}"
    );
    let (ok, out, _) = tokio::task::block_in_place(|| cli(s, None, &["status", "bot", "--json"]));
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["phase"],
        "shadow"
    );

    let (ok, _, err) =
        tokio::task::block_in_place(|| cli(s, None, &["promote", "bot", "--phase", "canary"]));
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("UNDERSTUDY_ADMIN_TOKEN"),
        "{err}"
    );
    let (ok, out, err) = tokio::task::block_in_place(|| {
        cli(
            s,
            Some(TOKEN),
            &["promote", "bot", "--phase", "canary", "--share", "0.3"],
        )
    });
    assert!(ok, "{err}");
    assert!(out.contains("canary") && out.contains("0.30"), "{out}");
    let (ok, _, err) = tokio::task::block_in_place(|| cli(s, Some(TOKEN), &["finalize", "bot"]));
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        cli(
            s,
            Some(TOKEN),
            &["rollback", "bot", "--reason", "from the cli"],
        )
    });
    assert!(ok, "{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| cli(s, None, &["history", "bot"]));
    assert!(ok);
    assert!(
        out.contains("rolled_back") && out.contains("from the cli") && out.contains("manual"),
        "{out}"
    );
    let (ok, _, err) = tokio::task::block_in_place(|| cli(s, Some(TOKEN), &["rollback", "nope"]));
    assert!(!ok && err.contains("404"), "{err}");
    server.shutdown().await;

    // An unreachable admin API is a clear error, not a hang.
    let (ok, _, err) = tokio::task::block_in_place(|| cli(s, None, &["status"]));
    assert!(!ok && err.contains("cannot reach"), "{err}");
}
