//! Shadow mirroring and scoring against the simulated upstream: identical, benignly random and
//! broken candidates score as they should, across the four APIs streaming and not; mirrored work
//! never delays or changes the client's response; budgets drop rather than queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::*;
use understudy_sim::{Behavior, Fault, Style};

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";

/// A route in shadow at `share`, with scoring knobs; rollback is alert-only so that scoring
/// tests watch the numbers without the judge acting on them.
fn config(share: f64, shadow: &str) -> String {
    support::config()
        .max_body_bytes(8388608)
        .upstream_timeout_secs(5)
        .store("u.db")
        .routes(&format!(
            r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = {share}
sticky_key = "header:x-user-id"
[routes.bot.stable]
upstream = "sim"
model = "{STABLE}"
system_prompt = "You are concise."
[routes.bot.candidate]
upstream = "sim"
model = "{CANDIDATE}"
system_prompt = "You are concise and friendly."
[routes.bot.shadow]
{shadow}
[routes.bot.scoring]
noise_floor_share = 1.0
keep_worst = 5
keep_random = 5
[routes.bot.rollback]
auto = false
window = 400
min_samples = 10
"#
        ))
}

async fn setup(
    stable: Style,
    candidate: Behavior,
    share: f64,
    shadow: &str,
) -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(Behavior::default()).await;
    sim.sim.set_behavior(
        STABLE,
        Behavior {
            style: stable,
            ..Behavior::default()
        },
    );
    sim.sim.set_behavior(CANDIDATE, candidate);
    let (server, dir) = Server::start(&config(share, shadow), &sim.url).await;
    (sim, server, dir)
}

fn style(s: Style) -> Behavior {
    Behavior {
        style: s,
        ..Behavior::default()
    }
}

const PROMPTS: [&str; 8] = [
    "Where is my order 1234?",
    "How do I reset my password?",
    "Can I change the delivery address?",
    "What is the refund policy?",
    "Do you ship to Canada?",
    "Why was my card declined?",
    "Is there a warranty on electronics?",
    "Can I return a gift without a receipt?",
];

/// Sends `n` requests of one API and waits until each mirror has an outcome.
async fn drive(server: &Server, path: &str, stream: bool, n: usize, extra: &Value) {
    let before = mirrored(server).await;
    for i in 0..n {
        let mut body = request_for(path, "support-bot", PROMPTS[i % PROMPTS.len()], stream);
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let reply = post(&format!("{}{path}", server.proxy), &body, &[]).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let want = before + n as f64;
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while mirrored(server).await < want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if done.is_err() {
        let m = server.metrics().await;
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("understudy_shadow_requests_total"))
            .collect();
        panic!(
            "{path} stream={stream}: {} of {n} mirrors finished\n{}",
            mirrored(server).await - before,
            lines.join("\n")
        );
    }
}

/// Mirrors with a final outcome (scored, error or unpaired). An outcome's series is born with
/// its first mirror (nothing pre-creates them), so an absent one counts as none yet.
async fn mirrored(server: &Server) -> f64 {
    let m = server.metrics().await;
    ["scored", "error", "unpaired"]
        .iter()
        .map(|o| {
            metric_value_or_absent(
                &m,
                &format!(
                    r#"understudy_shadow_requests_total{{outcome="{o}",release="2",route="bot"}}"#
                ),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// Mean per-sample score of one scorer, from the histogram.
async fn mean_score(server: &Server, scorer: &str) -> f64 {
    let m = server.metrics().await;
    let sum = metric_value(
        &m,
        &format!(r#"understudy_shadow_score_sum{{route="bot",scorer="{scorer}"}}"#),
    );
    let count = metric_value(
        &m,
        &format!(r#"understudy_shadow_score_count{{route="bot",scorer="{scorer}"}}"#),
    );
    assert!(count > 0.0, "no {scorer} scores");
    sum / count
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

#[tokio::test]
async fn identical_candidate_scores_one_on_every_api() {
    let (_sim, server, _dir) = setup(Style::Echo, style(Style::Echo), 1.0, "max_rps = 1000").await;
    for path in PATHS {
        for stream in [false, true] {
            drive(&server, path, stream, 4, &json!({})).await;
        }
    }
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_shadow_requests_total{outcome="scored",release="2",route="bot"}"#
        ),
        32.0,
        "{m}"
    );
    let mean = mean_score(&server, "combined").await;
    assert!(mean > 0.999, "identical candidate scored {mean}");
    let r = route(&server).await;
    assert!(r["quality"].as_f64().unwrap() > 0.99, "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn benign_randomness_keeps_quality_high() {
    let (_sim, server, _dir) =
        setup(Style::Benign, style(Style::Benign), 1.0, "max_rps = 1000").await;
    for path in PATHS {
        drive(&server, path, path == "/v1/messages", 10, &json!({})).await;
    }
    let r = route(&server).await;
    let quality = r["quality"].as_f64().unwrap();
    let floor = r["noise_floor"].as_f64().unwrap();
    assert!(
        quality >= 0.8,
        "benign candidate quality {quality} (noise floor {floor})"
    );
    assert!(
        floor < 1.0,
        "benign stable should not be identical to itself: floor {floor}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn broken_candidates_score_clearly_low() {
    // (candidate style, request extras, most telling scorer)
    let cases = [
        (Style::Unrelated, json!({}), "lexical"),
        (Style::Refuse, json!({}), "refusal"),
        (Style::Truncate, json!({}), "finish"),
        (
            Style::BrokenJson,
            json!({"response_format": {"type": "json_object"}}),
            "structure",
        ),
    ];
    for (candidate, extra, scorer) in cases {
        let (_sim, server, _dir) =
            setup(Style::Echo, style(candidate), 1.0, "max_rps = 1000").await;
        for stream in [false, true] {
            drive(&server, "/v1/chat/completions", stream, 8, &extra).await;
        }
        let combined = mean_score(&server, "combined").await;
        assert!(combined < 0.5, "{candidate:?}: combined {combined}");
        let specific = mean_score(&server, scorer).await;
        assert!(specific < 0.7, "{candidate:?}: {scorer} {specific}");
        let r = route(&server).await;
        assert!(r["quality"].as_f64().unwrap() < 0.6, "{candidate:?}: {r}");
        // The worst samples are there for review, with both outputs.
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
        let list = samples["samples"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert!(list[0]["score"].as_f64() <= list[2]["score"].as_f64());
        assert!(list[0]["request"]["messages"].is_array());
        assert!(list[0]["stable"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()));
        server.shutdown().await;
    }
}

#[tokio::test]
async fn failing_or_slow_candidates_never_touch_the_clients_response() {
    let faults = [
        Behavior {
            latency: Duration::from_millis(1500),
            ..Behavior::default()
        },
        Behavior {
            fault: Some(Fault::Hang),
            ..Behavior::default()
        },
        Behavior {
            fault: Some(Fault::Status(500)),
            ..Behavior::default()
        },
        Behavior {
            fault: Some(Fault::ResetMidStream),
            ..Behavior::default()
        },
    ];
    for candidate in faults {
        let (sim, server, _dir) =
            setup(Style::Echo, candidate.clone(), 1.0, "max_rps = 1000").await;
        for stream in [false, true] {
            for prompt in PROMPTS.iter().take(4) {
                let body = request_for("/v1/chat/completions", "support-bot", prompt, stream);
                let reply =
                    post(&format!("{}/v1/chat/completions", server.proxy), &body, &[]).await;
                assert_eq!(reply.status, 200);
                assert!(reply.body_error.is_none());
                assert!(
                    reply.total < Duration::from_millis(400),
                    "{candidate:?}: client waited {:?} for a mirrored candidate",
                    reply.total
                );
                // The same bytes as stable answers directly.
                let sent =
                    sim.sim.requests().into_iter().rev().find(|r| {
                        serde_json::from_slice::<Value>(&r.body).unwrap()["model"] == STABLE
                    });
                let direct = send(
                    Method::POST,
                    &format!("{}/v1/chat/completions", sim.url),
                    &[("content-type", "application/json")],
                    sent.unwrap().body,
                )
                .await;
                if !stream {
                    let mut want = direct.json();
                    let mut got = reply.json();
                    for v in [&mut want, &mut got] {
                        v["id"] = Value::Null;
                        v["created"] = Value::Null;
                        v["model"] = Value::Null;
                    }
                    assert_eq!(got, want);
                }
            }
        }
        if candidate.fault.is_some() && candidate.fault != Some(Fault::Hang) {
            // Absent until the first mirror ends in an error: not yet.
            eventually(10, "candidate errors counted", || async {
                let m = server.metrics().await;
                metric_value_or_absent(
                    &m,
                    r#"understudy_shadow_requests_total{outcome="error",release="2",route="bot"}"#,
                )
                .is_some_and(|n| n >= 8.0)
            })
            .await;
            let r = route(&server).await;
            assert_eq!(r["error_rate"], 1.0, "{r}");
        }
        server.shutdown().await;
    }
}

#[tokio::test]
async fn budgets_drop_mirrors_instead_of_queueing() {
    // One mirror at a time, each taking 300 ms: concurrent requests find the slot taken.
    let slow = Behavior {
        latency: Duration::from_millis(300),
        ..Behavior::default()
    };
    let (_sim, server, _dir) =
        setup(Style::Echo, slow, 1.0, "max_inflight = 1\nmax_rps = 1000").await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &url,
                &request_for("/v1/chat/completions", "support-bot", PROMPTS[i % 8], false),
                &[],
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let m = server.metrics().await;
    let busy = metric_value(
        &m,
        r#"understudy_shadow_requests_total{outcome="dropped_busy",release="2",route="bot"}"#,
    );
    assert!(busy >= 5.0, "dropped_busy {busy}\n{m}");
    server.shutdown().await;

    // Two mirrors per second at most.
    let (_sim, server, _dir) = setup(Style::Echo, style(Style::Echo), 1.0, "max_rps = 2").await;
    for i in 0..12 {
        let r = post(
            &url_of(&server),
            &request_for("/v1/chat/completions", "support-bot", PROMPTS[i % 8], false),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let m = server.metrics().await;
    let budget = metric_value(
        &m,
        r#"understudy_shadow_requests_total{outcome="dropped_budget",release="2",route="bot"}"#,
    );
    assert!(budget >= 8.0, "dropped_budget {budget}\n{m}");
    server.shutdown().await;

    // A token budget: each answer spends more than a minute's allowance, so after the first
    // mirror's usage is charged, the next ones are dropped.
    let (sim, server, _dir) = setup(
        Style::Echo,
        style(Style::Echo),
        1.0,
        "max_rps = 1000\nmax_tokens_per_min = 20",
    )
    .await;
    post(
        &url_of(&server),
        &request_for("/v1/chat/completions", "support-bot", PROMPTS[0], false),
        &[],
    )
    .await;
    eventually(5, "the first mirror", || async {
        sim.sim.calls_for(CANDIDATE) == 1
    })
    .await;
    // A mirror's usage is charged when its calls return, before its outcome is counted: once
    // the outcome is there, the budget is spent (no guess at how long that takes).
    eventually(5, "the first mirror's usage charged", || async {
        mirrored(&server).await >= 1.0
    })
    .await;
    for prompt in &PROMPTS[..5] {
        assert_eq!(
            post(
                &url_of(&server),
                &request_for("/v1/chat/completions", "support-bot", prompt, false),
                &[]
            )
            .await
            .status,
            200
        );
    }
    let m = server.metrics().await;
    let budget = metric_value(
        &m,
        r#"understudy_shadow_requests_total{outcome="dropped_budget",release="2",route="bot"}"#,
    );
    assert_eq!(budget, 5.0, "token budget: {m}");
    assert_eq!(sim.sim.calls_for(CANDIDATE), 1);
    server.shutdown().await;
}

fn url_of(server: &Server) -> String {
    format!("{}/v1/chat/completions", server.proxy)
}

#[tokio::test]
async fn the_mirrored_request_is_the_candidates_and_has_no_side_effects() {
    let (sim, server, _dir) = setup(Style::Echo, style(Style::Echo), 1.0, "max_rps = 1000").await;
    let mut body = request_for(
        "/v1/responses",
        "support-bot",
        "Where is my order 1234?",
        false,
    );
    body["store"] = json!(true);
    let reply = post(&format!("{}/v1/responses", server.proxy), &body, &[]).await;
    assert_eq!(reply.status, 200);
    eventually(5, "the mirror", || async {
        sim.sim.calls_for(CANDIDATE) >= 1
    })
    .await;
    let reqs = sim.sim.requests();
    let find = |model: &str| {
        reqs.iter()
            .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["model"] == model)
            .unwrap()
            .clone()
    };
    let (served, mirror) = (find(STABLE), find(CANDIDATE));
    let (s, c): (Value, Value) = (
        serde_json::from_slice(&served.body).unwrap(),
        serde_json::from_slice(&mirror.body).unwrap(),
    );
    assert_eq!(s["store"], true, "the client's own request is left as sent");
    assert_eq!(
        c["store"], false,
        "a mirrored request must not be stored upstream"
    );
    assert_eq!(c["instructions"], "You are concise and friendly.");
    assert_eq!(c["input"], "Where is my order 1234?");
    assert_eq!(mirror.headers["x-understudy-shadow"], "1");
    assert!(served.headers.get("x-understudy-shadow").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn sampling_is_sticky_per_user_and_large_prompts_are_mirrored() {
    let (sim, server, _dir) = setup(Style::Echo, style(Style::Echo), 0.5, "max_rps = 1000").await;
    let url = url_of(&server);
    let mut in_count = 0;
    for user in 0..20 {
        let before = sim.sim.calls_for(CANDIDATE);
        let id = format!("user-{user}");
        for _ in 0..4 {
            let r = post(
                &url,
                &request_for("/v1/chat/completions", "support-bot", "hi", false),
                &[("x-user-id", &id)],
            )
            .await;
            assert_eq!(r.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mirrored = sim.sim.calls_for(CANDIDATE) - before;
        assert!(
            mirrored == 0 || mirrored == 4,
            "{id} mirrored {mirrored} of 4 times"
        );
        in_count += usize::from(mirrored == 4);
    }
    assert!(
        (3..=17).contains(&in_count),
        "{in_count} of 20 users sampled at share 0.5"
    );

    // A 3 MB prompt is mirrored and scored like any other.
    let big = "lorem ipsum dolor ".repeat(180_000);
    let before = sim.sim.calls_for(CANDIDATE);
    let mut sampled_user = None;
    for user in 0..50 {
        let id = format!("big-{user}");
        let r = post(
            &url,
            &request_for("/v1/chat/completions", "support-bot", &big, false),
            &[("x-user-id", &id)],
        )
        .await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if sim.sim.calls_for(CANDIDATE) > before {
            sampled_user = Some(id);
            break;
        }
    }
    assert!(sampled_user.is_some(), "no large prompt was mirrored");
    let last = sim
        .sim
        .requests()
        .into_iter()
        .rev()
        .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["model"] == CANDIDATE)
        .unwrap();
    assert!(last.body.len() > 3_000_000);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_early_yields_no_sample() {
    let paced = Behavior {
        chunk_delay: Duration::from_millis(100),
        ..Behavior::default()
    };
    let sim = Sim::start(Behavior::default()).await;
    sim.sim.set_behavior(STABLE, paced);
    let (server, _dir) = Server::start(&config(1.0, "max_rps = 1000"), &sim.url).await;
    let body = request_for(
        "/v1/chat/completions",
        "support-bot",
        "a long answer please",
        true,
    );
    // Read only the head of the stream, then hang up.
    {
        let client = client();
        let req = http::Request::post(url_of(&server))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
    }
    // Absent until the mirror ends: not yet.
    eventually(10, "the mirror to end unpaired", || async {
        let m = server.metrics().await;
        metric_value_or_absent(
            &m,
            r#"understudy_shadow_requests_total{outcome="unpaired",release="2",route="bot"}"#,
        ) == Some(1.0)
    })
    .await;
    let m = server.metrics().await;
    // No mirror was scored. The scored series is born with the first scored mirror, so here it
    // is absent; absent and 0 both mean none. (The metric and label names are the ones the
    // unpaired series above was found under, so renaming those fails there, not passes here.)
    assert_eq!(
        metric_value_or_absent(
            &m,
            r#"understudy_shadow_requests_total{outcome="scored",release="2",route="bot"}"#
        )
        .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_requests_total{release="1",route="bot",status="cancelled"}"#
        ),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn redacted_routes_keep_no_request_bodies_for_review() {
    let sim = Sim::start(Behavior::default()).await;
    let text = config(1.0, "max_rps = 1000")
        .replace("keep_random = 5", "keep_random = 5\nredact_requests = true");
    let (server, _dir) = Server::start(&text, &sim.url).await;
    drive(&server, "/v1/chat/completions", false, 3, &json!({})).await;
    // The mirrors are counted when scored; the controller keeps their samples a moment later.
    let url = format!(
        "{}/admin/routes/bot/samples?order=random&limit=10",
        server.admin
    );
    let auth = format!("Bearer {TOKEN}");
    let fetch = || async {
        send(Method::GET, &url, &[("authorization", &auth)], Bytes::new())
            .await
            .json()
    };
    eventually(5, "3 samples kept", || async {
        fetch().await["samples"]
            .as_array()
            .is_some_and(|l| l.len() == 3)
    })
    .await;
    let samples = fetch().await;
    let list = samples["samples"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{samples}");
    assert!(list.iter().all(|s| s["request"].is_null()), "{samples}");
    assert!(list.iter().all(|s| s["candidate"]["text"]
        .as_str()
        .is_some_and(|t| !t.is_empty())));
    server.shutdown().await;
}
