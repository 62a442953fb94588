//! Embedding routes against the simulated upstream: a benign migration to a model with another
//! space (its own index) walks shadow -> canary -> promoted -> finalize while every response
//! names the index of the model that made its vectors; a broken model is rolled back on
//! neighbourhood disagreement; the guard refuses a new model on the old index (config file and
//! admin API); a rollback onto a dropped index is refused; the index retention countdown
//! survives a restart and shows in `understudy status`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::*;
use understudy::Config;
use understudy_sim::{embed_in, Behavior, EmbeddingSpace, Fault};

const SMALL: &str = "embed-small-2026-01";
const LARGE: &str = "embed-large-2026-06";
const BROKEN: &str = "embed-broken-2026-06";
/// The large model's transform: another space than the small one's.
const LARGE_SPACE: EmbeddingSpace = EmbeddingSpace::Rotated { seed: 11 };
/// The broken model keeps only the first characters, which every input shares.
const BROKEN_SPACE: EmbeddingSpace = EmbeddingSpace::Truncated { chars: 14 };

fn routes(candidate_model: &str, candidate_index: &str) -> String {
    support::config().store("e.db").routes(&format!(
        r#"
[routes.docs]
model = "docs-embed"
phase = "shadow"
share = 1.0
index_retention = "1h"
[routes.docs.stable]
upstream = "sim"
model = "{SMALL}"
index = "docs-small"
[routes.docs.candidate]
upstream = "sim"
model = "{candidate_model}"
params = {{ dimensions = 96 }}
index = "{candidate_index}"
[routes.docs.shadow]
max_rps = 10000
max_inflight = 256
[routes.docs.rollback]
window = 30
min_samples = 12
threshold = 0.8
"#
    ))
}

/// Support questions with their own meanings, all starting with the same instruction prefix
/// (as retrieval prompts often do).
fn input(i: usize) -> String {
    const TOPICS: [&str; 12] = [
        "how do I reset my password",
        "my parcel has not arrived yet",
        "can I get a refund for a damaged item",
        "how do I change my shipping address",
        "the app crashes when I upload a photo",
        "do you ship to Canada and Mexico",
        "my card was declined at checkout",
        "how do I export my invoices",
        "cancel my subscription please",
        "the warranty covers two years",
        "I want to delete my account",
        "where can I track my order",
    ];
    let extra = ["", " today", " again", " urgently", " now"][i / TOPICS.len() % 5];
    format!("search query: {}{extra}", TOPICS[i % TOPICS.len()])
}

async fn sim() -> Sim {
    let sim = Sim::start(Behavior::default()).await;
    sim.sim.set_embedding_space(LARGE, LARGE_SPACE);
    sim.sim.set_embedding_space(BROKEN, BROKEN_SPACE);
    sim
}

/// One embeddings request of inputs `i` and `i + 1`; checks that every vector is the one the
/// model behind the `x-understudy-index` header makes, and returns that index.
async fn embed(server: &Server, i: usize) -> String {
    let inputs = [input(i), input(i + 1)];
    let r = post(
        &format!("{}/v1/embeddings", server.proxy),
        &json!({"model": "docs-embed", "input": inputs}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let index = r
        .header("x-understudy-index")
        .expect("index header")
        .to_owned();
    let (space, dims) = match index.as_str() {
        "docs-small" => (EmbeddingSpace::Base, 64),
        "docs-large" => (LARGE_SPACE, 96),
        other => panic!("unexpected index {other}"),
    };
    let v = r.json();
    assert_eq!(v["model"], "docs-embed", "the alias is put back");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (k, item) in data.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(
            got.len(),
            dims,
            "index {index} but a vector of {} dims",
            got.len()
        );
        assert_eq!(
            got,
            embed_in(space, &inputs[k], dims),
            "index {index} names the model that made the vector"
        );
    }
    index
}

async fn view(server: &Server) -> Value {
    let r = send(
        http::Method::GET,
        &format!("{}/admin/routes/docs", server.admin),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()
}

async fn admin(server: &Server, action: &str, body: Value) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    post(
        &format!("{}/admin/routes/docs/{action}", server.admin),
        &body,
        &[("authorization", &auth)],
    )
    .await
}

/// Sends embeddings until the route's judge holds `samples` candidate samples.
async fn until_judged(server: &Server, from: usize, samples: u64) -> Value {
    let mut i = from;
    for _ in 0..200 {
        for _ in 0..4 {
            assert_eq!(embed(server, i).await, "docs-small");
            i += 1;
        }
        let v = view(server).await;
        if v["samples"].as_u64().unwrap_or(0) >= samples && !v["quality"].is_null() {
            return v;
        }
        if v["candidate"].is_null() {
            return v;
        }
    }
    panic!("the candidate was never judged: {}", view(server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benign_migration_walks_every_phase_and_keeps_the_old_index_for_rollback() {
    let sim = sim().await;
    let text = routes(LARGE, "docs-large");
    let (server, dir) = Server::start(&text, &sim.url).await;
    assert_eq!(view(&server).await["index"], "docs-small");

    // Shadow: stable serves (small index) while the candidate is scored by neighbourhoods.
    let v = until_judged(&server, 0, 15).await;
    assert_eq!(v["phase"], "shadow", "a benign candidate stays: {v}");
    let quality = v["quality"].as_f64().unwrap();
    assert!(
        quality > 0.95,
        "neighbourhoods agree across the two spaces: {v}"
    );
    assert_eq!(
        v["noise_floor"], 1.0,
        "a deterministic model agrees with itself: {v}"
    );
    let scorers: Vec<&str> = v["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scorer"].as_str().unwrap())
        .collect();
    assert_eq!(scorers, ["knn", "neighbourhood"], "{v}");
    let m = server.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"understudy_shadow_requests_total{outcome="scored",release="2",route="docs"}"#
        ) >= 15.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_serving_index{index="docs-small",route="docs"}"#
        ),
        1.0
    );

    // Canary: each response names the index of the release that answered it.
    admin(&server, "promote", json!({"phase": "canary", "share": 0.5})).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        seen.insert(embed(&server, i).await);
    }
    assert_eq!(
        seen.len(),
        2,
        "a canary splits requests between the indexes: {seen:?}"
    );

    // Promoted: the candidate serves everything, stable is mirrored.
    admin(
        &server,
        "promote",
        json!({"phase": "promoted", "share": 0.5}),
    )
    .await;
    for i in 0..10 {
        assert_eq!(embed(&server, i).await, "docs-large");
    }
    assert_eq!(view(&server).await["index"], "docs-large");
    let r = admin(&server, "finalize", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for i in 0..4 {
        assert_eq!(embed(&server, i).await, "docs-large");
    }
    let v = view(&server).await;
    assert_eq!(v["index"], "docs-large");
    let old = &v["indexes"][0];
    assert_eq!(
        (old["name"].as_str(), old["state"].as_str()),
        (Some("docs-small"), Some("retained")),
        "{v}"
    );
    let left = old["retention_left_secs"].as_u64().unwrap();
    assert!((3500..=3600).contains(&left), "{v}");
    let until = old["retained_until"].clone();
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_serving_index{index="docs-large",route="docs"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_serving_index{index="docs-small",route="docs"}"#
        ),
        0.0
    );
    assert!(
        metric_value(
            &m,
            r#"understudy_index_retained_until_seconds{index="docs-small",route="docs"}"#
        ) > 1.7e9
    );

    // The countdown is durable: a restart on the same store shows the same deadline.
    server.shutdown().await;
    let config = Config::parse(
        &text
            .replace("{SIM}", &sim.url)
            .replace("{DIR}", dir.path().to_str().unwrap()),
        dir.path(),
    )
    .unwrap();
    let server = Server::start_config(config, &[]).await;
    let v = view(&server).await;
    let old = &v["indexes"][0];
    assert_eq!(old["state"], "retained", "{v}");
    assert_eq!(old["retained_until"], until, "{v}");
    assert!(old["retention_left_secs"].as_u64().unwrap() <= left);
    assert_eq!(
        embed(&server, 0).await,
        "docs-large",
        "finalized stays finalized"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["status", "docs"])
        .env("UNDERSTUDY_ADMIN_URL", &server.admin)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("docs: serving index docs-large"), "{said}");
    assert!(
        said.contains("docs: index docs-small (#1) retained: rollback target for 59m"),
        "{said}"
    );

    // Within retention, rolling back to the old model on its old index works.
    let r = admin(&server, "rollback", json!({"to": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(embed(&server, 0).await, "docs-small");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_is_rolled_back_on_neighbourhood_disagreement() {
    let sim = sim().await;
    let (server, _dir) = Server::start(&routes(BROKEN, "docs-broken"), &sim.url).await;
    let v = until_judged(&server, 0, 12).await;
    assert!(v["candidate"].is_null(), "rolled back: {v}");
    let v = view(&server).await;
    let rolled = v["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == 2)
        .unwrap()
        .clone();
    assert_eq!(rolled["state"], "rolled_back");
    let reason = rolled["rolled_back"]["reason"].as_str().unwrap();
    assert!(reason.contains("neighbourhood"), "{reason}");
    assert_eq!(
        server
            .metric(r#"understudy_rollbacks_total{route="docs",trigger="quality"}"#)
            .await,
        1.0
    );
    // Stable's index serves on.
    assert_eq!(embed(&server, 3).await, "docs-small");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_rolled_back_on_errors() {
    let sim = sim().await;
    sim.sim.set_behavior(
        LARGE,
        Behavior {
            fault: Some(Fault::Status(500)),
            ..Behavior::default()
        },
    );
    let (server, _dir) = Server::start(&routes(LARGE, "docs-large"), &sim.url).await;
    let v = until_judged(&server, 0, 12).await;
    assert!(v["candidate"].is_null(), "rolled back: {v}");
    assert_eq!(
        server
            .metric(r#"understudy_rollbacks_total{route="docs",trigger="errors"}"#)
            .await,
        1.0
    );
    assert_eq!(embed(&server, 0).await, "docs-small");
    server.shutdown().await;
}

#[tokio::test]
async fn the_guard_refuses_a_new_model_on_the_old_index() {
    // The configuration file.
    let text = routes(LARGE, "docs-small")
        .replace("{DIR}", "/tmp")
        .replace("{SIM}", "http://127.0.0.1:1");
    let problems: Vec<String> = Config::parse(&text, std::path::Path::new("."))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let said = problems.join("\n");
    assert!(said.contains("routes.docs.candidate.index"), "{said}");
    assert!(
        said.contains("index \"docs-small\" holds vectors of embed-small-2026-01"),
        "{said}"
    );

    // The admin API's publish.
    let sim = sim().await;
    let (server, _dir) = Server::start(&routes(LARGE, "docs-large"), &sim.url).await;
    for (body, expected) in [
        (
            json!({"upstream": "sim", "model": "embed-other-2026", "index": "docs-small"}),
            "holds vectors of embed-small-2026-01",
        ),
        (
            json!({"upstream": "sim", "model": "embed-other-2026", "index": "docs-large"}),
            "holds vectors of embed-large-2026-06 at 96 dimensions",
        ),
        (
            json!({"upstream": "sim", "model": "embed-other-2026"}),
            "index: is required",
        ),
        (
            json!({"upstream": "sim", "model": SMALL, "index": "bad name!"}),
            "index: \"bad name!\" may only hold",
        ),
    ] {
        let r = admin(&server, "releases", body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(expected), "{message}");
    }
    // The same model, re-indexed under a new name, is fine.
    let r = admin(
        &server,
        "releases",
        json!({"upstream": "sim", "model": SMALL, "index": "docs-small-v2"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.shutdown().await;
}

#[tokio::test]
async fn a_rollback_onto_a_dropped_index_is_refused() {
    let sim = sim().await;
    let (server, _dir) = Server::start(&routes(LARGE, "docs-large"), &sim.url).await;
    admin(&server, "promote", json!({"phase": "promoted"})).await;
    assert_eq!(admin(&server, "finalize", json!({})).await.status, 200);
    // In use: refused. Without the token: 401.
    let r = admin(&server, "indexes/docs-large/drop", json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("in use by the stable release #2"),
        "{}",
        r.text()
    );
    let r = post(
        &format!("{}/admin/routes/docs/indexes/docs-small/drop", server.admin),
        &json!({}),
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = admin(&server, "indexes/docs-small/drop", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["indexes"][0]["state"], "dropped");
    let r = admin(&server, "rollback", json!({"to": 1})).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("index \"docs-small\", which was dropped at"),
        "{message}"
    );
    assert_eq!(embed(&server, 0).await, "docs-large", "nothing changed");
    // An upstream error on an embedding route names the index too.
    let r = post(
        &format!("{}/v1/embeddings", server.proxy),
        &json!({"model": "docs-embed", "input": "x"}),
        &[("x-sim-fault", "500")],
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-understudy-index"), Some("docs-large"));
    let events = view(&server).await["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "index_dropped"),
        "{events}"
    );
    server.shutdown().await;
}
