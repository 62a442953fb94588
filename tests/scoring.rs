//! Judging what answers mean, end to end against the simulated upstream: with default scoring
//! settings (the noise floor warms up on its own) a bad candidate is rolled back within 100
//! requests in every phase and a benign one is kept; the semantic scorer keeps a paraphrase and
//! rolls back an off-topic answer; the blind LLM judge rolls back a tone regression that keeps
//! the words; failing scorers never fail a candidate; a user check names itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use support::*;
use understudy_sim::{Behavior, Fault, Style};

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";
const EMBEDDER: &str = "embed-2024-01-01";
const JUDGE: &str = "judge-2024-07-18";

const PROMPTS: [&str; 8] = [
    "Where is my order",
    "How do I reset my password",
    "Can I change the delivery address",
    "What is your refund policy for damaged items",
    "My package says delivered but I never got it",
    "Do you ship to Canada",
    "Why was my card declined",
    "Can I cancel my subscription online",
];

/// A route in `phase` at share 1 whose scoring section is `scoring` (empty: every default).
/// Only the mirror budget is raised, so that requests sent back to back are all mirrored.
fn config(phase: &str, scoring: &str, extra: &str) -> String {
    support::config().store("u.db").routes(&format!(
        r#"
[routes.bot]
model = "support-bot"
phase = "{phase}"
share = 1.0
[routes.bot.stable]
upstream = "sim"
model = "{STABLE}"
[routes.bot.candidate]
upstream = "sim"
model = "{CANDIDATE}"
[routes.bot.shadow]
max_rps = 10000
[routes.bot.scoring]
{scoring}
{extra}
"#
    ))
}

const SEMANTIC: &str = r#"
[routes.bot.scoring.semantic]
upstream = "sim"
model = "embed-2024-01-01"
max_rps = 10000
"#;

const JUDGE_SECTION: &str = r#"
[routes.bot.scoring.judge]
upstream = "sim"
model = "judge-2024-07-18"
rubric = "The answer helps the customer, is correct, and keeps a friendly, professional tone."
max_rps = 10000
"#;

fn style(s: Style) -> Behavior {
    Behavior {
        style: s,
        ..Behavior::default()
    }
}

async fn setup(candidate: Behavior, toml: &str) -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(Behavior::default()).await;
    // Stable with an LLM's ordinary randomness; the judge model judges.
    sim.sim.set_behavior(STABLE, style(Style::Benign));
    sim.sim.set_behavior(CANDIDATE, candidate);
    sim.sim.set_behavior(JUDGE, style(Style::Judge));
    let (server, dir) = Server::start(toml, &sim.url).await;
    (sim, server, dir)
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

fn rolled_back(route: &Value) -> bool {
    route["candidate"].is_null()
}

/// Mirrors that have finished (scored, errored or unpaired) so far, to either release.
fn mirrors_done(metrics: &str) -> f64 {
    let mut done = 0.0;
    for outcome in ["scored", "error", "unpaired"] {
        for release in ["1", "2"] {
            // A series exists from its first mirror on.
            done += metric_value_or_absent(
                metrics,
                &format!(
                    r#"understudy_shadow_requests_total{{outcome="{outcome}",release="{release}",route="bot"}}"#
                ),
            )
            .unwrap_or(0.0);
        }
    }
    done
}

/// Sends up to `max` chat requests, five at a time, each batch's mirrors finished before the
/// next; returns how many were sent when the candidate was found rolled back, or None.
async fn requests_until_rollback(server: &Server, max: usize) -> Option<usize> {
    let url = format!("{}/v1/chat/completions", server.proxy);
    let mut sent = 0;
    while sent < max {
        for _ in 0..5 {
            let prompt = format!("{} {}?", PROMPTS[sent % PROMPTS.len()], sent);
            let reply = post(
                &url,
                &request_for("/v1/chat/completions", "support-bot", &prompt, false),
                &[],
            )
            .await;
            // A failing candidate that serves (canary, promoted) fails its clients: the reason
            // to roll it back.
            assert!(
                matches!(reply.status.as_u16(), 200 | 500),
                "{}",
                reply.text()
            );
            sent += 1;
        }
        let want = sent as f64;
        eventually(10, "this batch's mirrors to finish", || async {
            let m = server.metrics().await;
            mirrors_done(&m) >= want || rolled_back(&route(server).await)
        })
        .await;
        if rolled_back(&route(server).await) {
            return Some(sent);
        }
    }
    None
}

/// Each scorer's own quality in the route's view.
fn scorer_quality(route: &Value, scorer: &str) -> f64 {
    route["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scorer"] == scorer)
        .unwrap_or_else(|| panic!("no {scorer} quality in {route}"))["quality"]
        .as_f64()
        .unwrap()
}

/// Sends `n` requests and asserts the candidate is still there.
async fn assert_kept(server: &Server, n: usize) {
    assert_eq!(
        requests_until_rollback(server, n).await,
        None,
        "{}",
        last_rollback_reason(server).await
    );
}

async fn last_rollback_reason(server: &Server) -> String {
    let r = route(server).await;
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "rolled_back")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_roll_back_a_bad_candidate_within_100_requests_in_every_phase() {
    for phase in ["shadow", "canary", "promoted"] {
        for bad in [
            style(Style::Unrelated),
            Behavior {
                fault: Some(Fault::Status(500)),
                ..Behavior::default()
            },
        ] {
            let (_sim, server, _dir) = setup(bad.clone(), &config(phase, "", "")).await;
            let n = requests_until_rollback(&server, 100).await;
            let reason = last_rollback_reason(&server).await;
            assert!(
                n.is_some(),
                "{phase} {bad:?}: still a candidate after 100 requests: {}",
                route(&server).await
            );
            let trigger = route(&server).await["events"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|e| e["kind"] == "rolled_back")
                .unwrap()["trigger"]
                .clone();
            let expected = if bad.fault.is_some() {
                "errors"
            } else {
                "quality"
            };
            assert_eq!(trigger, expected, "{phase}: {reason}");
            server.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_keep_a_benign_candidate() {
    let (_sim, server, _dir) = setup(style(Style::Benign), &config("shadow", "", "")).await;
    assert_kept(&server, 400).await;
    let r = route(&server).await;
    assert!(r["quality"].as_f64().unwrap() > 0.9, "{r}");
    // The floor warmed up without any noise_floor_share set: at least noise_warmup samples.
    let m = server.metrics().await;
    assert!(metric_value(&m, r#"understudy_noise_floor{route="bot"}"#) > 0.5);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_only_keeps_a_paraphrase_and_rolls_back_off_topic() {
    let scoring =
        "weights = { lexical = 0.0, structure = 0.0, length = 0.0, refusal = 0.0, semantic = 1.0 }";
    // A heavy paraphrase: other words, same meaning. Lexical alone would call it a regression.
    let (sim, server, _dir) = setup(
        style(Style::Paraphrase),
        &config("shadow", scoring, SEMANTIC),
    )
    .await;
    assert_kept(&server, 200).await;
    let r = route(&server).await;
    let semantic = scorer_quality(&r, "semantic");
    assert!(semantic > 0.9, "{r}");
    let lexical = scorer_quality(&r, "lexical");
    assert!(lexical < 0.8, "lexical sees the rewording: {r}");
    assert!(
        sim.sim.calls_for(EMBEDDER) >= 200,
        "one embeddings call per sample"
    );
    let m = server.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"understudy_scorer_calls_total{outcome="ok",route="bot",scorer="semantic"}"#
        ) >= 200.0
    );
    assert!(
        metric_value(
            &m,
            r#"understudy_scorer_quality{route="bot",scorer="semantic"}"#
        ) > 0.9
    );
    server.shutdown().await;

    let (_sim, server, _dir) = setup(
        style(Style::Unrelated),
        &config("shadow", scoring, SEMANTIC),
    )
    .await;
    assert!(requests_until_rollback(&server, 100).await.is_some());
    let reason = last_rollback_reason(&server).await;
    assert!(
        reason.contains("semantic: quality"),
        "the reason names the scorer: {reason}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_only_rolls_back_a_tone_regression_and_keeps_a_benign_candidate() {
    let scoring =
        "weights = { lexical = 0.0, structure = 0.0, length = 0.0, refusal = 0.0, judge = 1.0 }";
    // Pirate speak keeps most words: lexical overlap stays high, the judge is not fooled.
    let (sim, server, _dir) = setup(
        style(Style::Pirate),
        &config("shadow", scoring, JUDGE_SECTION),
    )
    .await;
    assert!(
        requests_until_rollback(&server, 100).await.is_some(),
        "{}",
        route(&server).await
    );
    let reason = last_rollback_reason(&server).await;
    assert!(reason.contains("judge: candidate lost"), "{reason}");
    // The judge saw the contract's layout.
    let asked = sim
        .sim
        .requests()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains(JUDGE))
        .unwrap();
    let body: Value = serde_json::from_slice(&asked.body).unwrap();
    let text = body["messages"][1]["content"].as_str().unwrap();
    assert!(
        text.starts_with("<rubric>\nThe answer helps the customer"),
        "{text}"
    );
    assert!(text.contains("<answer id=\"A\">") && text.contains("<answer id=\"B\">"));
    assert_eq!(body["temperature"], 0);
    server.shutdown().await;

    let (_sim, server, _dir) = setup(
        style(Style::Benign),
        &config("shadow", scoring, JUDGE_SECTION),
    )
    .await;
    assert_kept(&server, 200).await;
    let r = route(&server).await;
    let judge = scorer_quality(&r, "judge");
    assert!(judge > 0.8, "the judge's coin flips are noise: {r}");
    let m = server.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"understudy_tokens_total{kind="prompt",release="judge",route="bot"}"#
        ) > 0.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_scorers_never_fail_a_candidate() {
    let scoring = "weights = { lexical = 0.0, structure = 0.0, length = 0.0, refusal = 0.0, semantic = 1.0, judge = 1.0 }";
    let (sim, server, _dir) = setup(
        style(Style::Benign),
        &config("shadow", scoring, &format!("{SEMANTIC}{JUDGE_SECTION}")),
    )
    .await;
    sim.sim.set_behavior(
        EMBEDDER,
        Behavior {
            fault: Some(Fault::Status(503)),
            ..Behavior::default()
        },
    );
    sim.sim.set_behavior(JUDGE, style(Style::JudgeGarbled));
    assert_kept(&server, 120).await;
    let m = server.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"understudy_scorer_calls_total{outcome="failed",route="bot",scorer="semantic"}"#
        ) >= 100.0
    );
    assert!(
        metric_value(
            &m,
            r#"understudy_scorer_calls_total{outcome="unparseable",route="bot",scorer="judge"}"#
        ) >= 100.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_shadow_requests_total{outcome="scored",release="2",route="bot"}"#
        ),
        120.0,
        "every mirror was scored, by the scorers that could"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_only_the_candidate_fails_is_a_named_hard_failure() {
    // Stable's answers mention no pirate; the candidate's do.
    let checks = r#"
[[routes.bot.checks]]
name = "no-pirate"
must_not_match = "(?i)matey"
[[routes.bot.checks]]
name = "short"
max_words = 2
"#;
    let (_sim, server, _dir) = setup(style(Style::Pirate), &config("shadow", "", checks)).await;
    assert!(requests_until_rollback(&server, 100).await.is_some());
    let samples = send(
        Method::GET,
        &format!(
            "{}/admin/routes/bot/samples?order=worst&limit=3",
            server.admin
        ),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await
    .json();
    let worst = &samples["samples"][0];
    assert_eq!(worst["hard_failure"], "check", "{worst}");
    assert_eq!(
        worst["failed_check"], "no-pirate",
        "both fail 'short': not the candidate's fault"
    );
    let m = server.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"understudy_check_failures_total{check="no-pirate",route="bot"}"#
        ) >= 30.0
    );
    assert_eq!(
        metric_value_or_absent(
            &m,
            r#"understudy_check_failures_total{check="short",route="bot"}"#
        ),
        None
    );
    server.shutdown().await;
}
