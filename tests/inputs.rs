//! Input at the edges (issue 11, findings 4 to 6): one validation for every way in (the CLI,
//! the admin API, the webhook), 413 over the admin body limit, bounded reasons, a mixed
//! Alertmanager batch, a request abandoned before the response head counted as `cancelled`,
//! client `x-understudy-*` headers kept from the upstream, and system prompts only with the
//! admin token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::*;
use understudy_sim::Behavior;

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";
const SLOW: &str = "slow-2024-08-06";
const STABLE_PROMPT: &str = "SECRET stable prompt: never say the discount code";
const CANDIDATE_PROMPT: &str = "SECRET candidate prompt: the discount code is HUSH";

/// `bot`: stable and candidate, each with a system prompt and parameters, every request
/// mirrored; `slow`: stable only.
fn config() -> String {
    support::config().upstream_timeout_secs(10).routes(&format!(
        r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 1.0
[routes.bot.stable]
upstream = "sim"
model = "{STABLE}"
system_prompt = "{STABLE_PROMPT}"
params = {{ temperature = 0.2 }}
[routes.bot.candidate]
upstream = "sim"
model = "{CANDIDATE}"
system_prompt = "{CANDIDATE_PROMPT}"
params = {{ temperature = 0.7 }}
[routes.bot.rollback]
auto = false

[routes.slow]
model = "slow-bot"
[routes.slow.stable]
upstream = "sim"
model = "{SLOW}"
"#
    ))
}

async fn setup() -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(Behavior::default()).await;
    let (server, dir) = Server::start(&config(), &sim.url).await;
    (sim, server, dir)
}

async fn admin_get(server: &Server, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(
        Method::GET,
        &format!("{}{path}", server.admin),
        &headers,
        Bytes::new(),
    )
    .await
}

async fn admin_post(server: &Server, path: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    post(
        &format!("{}{path}", server.admin),
        body,
        &[("authorization", &auth)],
    )
    .await
}

/// The route's detail, with the token.
async fn detail(server: &Server) -> Value {
    let r = admin_get(server, "/admin/routes/bot", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Runs the real binary's admin command `args` against `admin` with the admin token.
fn cli(admin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(args)
        .env("UNDERSTUDY_ADMIN_URL", admin)
        .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_invalid_values_before_calling_the_api() {
    let (_sim, server, _dir) = setup().await;
    let before = detail(&server).await;
    let admin = server.admin.clone();
    for share in ["NaN", "inf", "-inf", "-1", "2"] {
        let arg = format!("--share={share}");
        let (ok, err) = tokio::task::block_in_place(|| {
            cli(&admin, &["promote", "bot", "--phase", "canary", &arg])
        });
        assert!(!ok, "--share {share} accepted");
        assert!(
            err.contains("--share must be between 0 and 1"),
            "--share {share}: {err}"
        );
    }
    // Nothing was applied: same phase, share and events.
    let after = detail(&server).await;
    assert_eq!(
        (&after["phase"], &after["share"], &after["events"]),
        (&before["phase"], &before["share"], &before["events"])
    );
    for args in [
        &["status", ""][..],
        &["history", ""],
        &["promote", "", "--phase", "canary"],
        &["rollback", ""],
        &["finalize", ""],
    ] {
        let (ok, err) = tokio::task::block_in_place(|| cli(&admin, args));
        assert!(!ok, "{args:?} exited 0");
        assert!(
            err.contains("route name \"\" must be non-empty"),
            "{args:?}: {err}"
        );
    }
    // Refused before any call: an admin URL nothing listens on is never reached.
    let (ok, err) = tokio::task::block_in_place(|| {
        cli(
            "http://127.0.0.1:9",
            &["promote", "bot", "--phase", "canary", "--share", "NaN"],
        )
    });
    assert!(
        !ok && err.contains("--share") && !err.contains("cannot reach"),
        "{err}"
    );
    // A valid share still works.
    let (ok, err) = tokio::task::block_in_place(|| {
        cli(
            &admin,
            &["promote", "bot", "--phase", "canary", "--share", "0.25"],
        )
    });
    assert!(ok, "{err}");
    assert_eq!(detail(&server).await["share"], 0.25);
    server.shutdown().await;
}

#[tokio::test]
async fn the_api_refuses_shares_that_are_not_numbers_in_range() {
    let (_sim, server, _dir) = setup().await;
    for share in [
        json!(null),
        json!(-1),
        json!(2),
        json!(1.5),
        json!("0.5"),
        json!(true),
    ] {
        let body = json!({"phase": "canary", "share": share});
        let r = admin_post(&server, "/admin/routes/bot/promote", &body).await;
        assert_eq!(r.status, 400, "share {share}: {}", r.text());
        let err = r.json();
        assert_eq!(err["error"]["code"], "invalid_request", "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("share must be"),
            "{err}"
        );
    }
    // Numbers JSON cannot carry are refused as JSON.
    for raw in [
        r#"{"phase":"canary","share":NaN}"#,
        r#"{"phase":"canary","share":1e400}"#,
    ] {
        let r = send(
            Method::POST,
            &format!("{}/admin/routes/bot/promote", server.admin),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            Bytes::from(raw),
        )
        .await;
        assert_eq!(r.status, 400, "{raw}: {}", r.text());
    }
    let r = detail(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["share"].as_f64()),
        (Some("shadow"), Some(1.0))
    );
    // Absent keeps the share; a valid one is applied.
    let r = admin_post(
        &server,
        "/admin/routes/bot/promote",
        &json!({"phase": "canary"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["phase"].as_str(), r.json()["share"].as_f64()),
        (Some("canary"), Some(1.0))
    );
    let body = json!({"phase": "canary", "share": 0.1});
    let r = admin_post(&server, "/admin/routes/bot/promote", &body).await;
    assert_eq!(r.json()["share"], 0.1);
    server.shutdown().await;
}

#[tokio::test]
async fn the_api_refuses_the_prices_the_config_refuses() {
    let (_sim, server, _dir) = setup().await;
    for (price, said) in [
        (
            json!(-5),
            "prices.prompt_per_mtok: must be a number >= 0, got -5",
        ),
        (
            json!(1e308),
            "prices.prompt_per_mtok: must be at most 1000000 USD per million tokens",
        ),
    ] {
        let body = json!({"upstream": "sim", "model": "candidate-2025-01-01",
            "prices": {"prompt_per_mtok": price, "completion_per_mtok": 1.0}});
        let r = admin_post(&server, "/admin/routes/bot/releases", &body).await;
        assert_eq!(r.status, 400, "{price}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(said), "{message}");
    }
    let releases = detail(&server).await["releases"].as_array().unwrap().len();
    assert_eq!(releases, 2, "a release was published");
    server.shutdown().await;
}

/// A chunked POST (no Content-Length) on a raw connection; the whole answer as text.
async fn chunked_post(base: &str, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(8192) {
        let chunk = format!("{:x}\r\n", piece.len());
        // The server may answer and close before reading everything: ignore write errors.
        if s.write_all(chunk.as_bytes()).await.is_err()
            || s.write_all(piece).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn admin_bodies_over_the_limit_are_413() {
    let (_sim, server, _dir) = setup().await;
    // A JSON string of 2 MiB: valid JSON, too large.
    let big = format!(r#"{{"reason": "{}"}}"#, "x".repeat(2 << 20));
    let r = send(
        Method::POST,
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("content-type", "application/json"),
        ],
        Bytes::from(big.clone()),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    // Without a Content-Length: refused while reading.
    let answer = chunked_post(&server.admin, "/admin/alertmanager", big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer:.200}");
    assert!(answer.contains("\"request_too_large\""), "{answer:.400}");
    // Nothing was rolled back.
    assert_eq!(detail(&server).await["candidate"]["version"], 2);
    server.shutdown().await;
}

fn alert(route: Value, summary: &str, starts_at: &str) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": "UnderstudyQualityBelowThreshold", "understudy_route": route},
        "annotations": {"summary": summary},
        "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f",
    })
}

fn batch(alerts: Vec<Value>) -> Value {
    json!({"version": "4", "status": "firing", "receiver": "understudy", "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am", "alerts": alerts})
}

#[tokio::test]
async fn a_mixed_alert_batch_applies_the_valid_alerts_and_reports_the_others() {
    let (_sim, server, _dir) = setup().await;
    let now = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(1))
        .to_string();
    // Nothing but an invalid alert: 400, nothing applied.
    let r = admin_post(
        &server,
        "/admin/alertmanager",
        &batch(vec![alert(json!("bot"), "x", "yesterday")]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(detail(&server).await["candidate"]["version"], 2);

    // One malformed alert, one valid with a 300 KB summary: the valid one rolls back.
    let summary = "quality 0.41 ".repeat(300_000 / 13);
    let body = batch(vec![
        alert(json!("bot"), "bad time", "yesterday"),
        alert(json!("bot"), &summary, &now),
        alert(json!(""), "empty route", &now),
    ]);
    let r = admin_post(&server, "/admin/alertmanager", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["alerts"][0]["route"], "bot");
    assert_eq!(v["alerts"][0]["outcome"], "rolled_back");
    let invalid = v["invalid"].as_array().unwrap();
    let said: Vec<(u64, &Value)> = invalid
        .iter()
        .map(|i| (i["index"].as_u64().unwrap(), &i["route"]))
        .collect();
    assert_eq!(said, [(0, &json!("bot")), (2, &Value::Null)], "{v}");
    assert!(
        invalid[0]["error"].as_str().unwrap().contains("startsAt"),
        "{v}"
    );

    // The reason is kept, cut to 1 KiB.
    let d = detail(&server).await;
    assert!(d["candidate"].is_null(), "{d}");
    let event = d["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (event["kind"].as_str(), event["trigger"].as_str()),
        (Some("rolled_back"), Some("alert"))
    );
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.len() <= 1024 && reason.ends_with('…'),
        "{} bytes",
        reason.len()
    );
    assert!(
        reason.starts_with("UnderstudyQualityBelowThreshold: quality 0.41"),
        "{reason:.80}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_manual_rollback_reason_is_cut_to_1_kib() {
    let (_sim, server, _dir) = setup().await;
    let body = json!({"reason": "é".repeat(100_000)});
    let r = admin_post(&server, "/admin/routes/bot/rollback", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = detail(&server).await;
    let rolled_back = &d["releases"][1]["rolled_back"];
    let reason = rolled_back["reason"].as_str().unwrap();
    assert!(
        reason.len() <= 1024 && reason.ends_with('…'),
        "{} bytes",
        reason.len()
    );
    assert!(reason.starts_with("ééé"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_abandoned_before_the_response_head_is_counted_as_cancelled() {
    use tokio::io::AsyncWriteExt;
    let (sim, server, _dir) = setup().await;
    sim.sim.set_behavior(
        SLOW,
        Behavior {
            latency: Duration::from_secs(3),
            ..Behavior::default()
        },
    );
    let body = request_for("/v1/chat/completions", "slow-bot", "hello", false).to_string();
    let addr = server.proxy.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    eventually(5, "the simulator got the request", || async {
        sim.sim.calls_for(SLOW) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s); // the client gives up before the upstream answers

    let series = r#"understudy_requests_total{release="1",route="slow",status="cancelled"}"#;
    eventually(5, "the abandoned request counted", || async {
        metric_value_or_absent(&server.metrics().await, series) == Some(1.0)
    })
    .await;
    // With its duration: from the request to the client going away.
    let m = server.metrics().await;
    let count = r#"understudy_request_duration_seconds_count{release="1",route="slow"}"#;
    let sum = r#"understudy_request_duration_seconds_sum{release="1",route="slow"}"#;
    assert_eq!(metric_value(&m, count), 1.0);
    let took = metric_value(&m, sum);
    assert!((0.3..3.0).contains(&took), "duration {took}");
    server.shutdown().await;
}

#[tokio::test]
async fn client_internal_headers_never_reach_the_upstream() {
    let (sim, server, _dir) = setup().await;
    let r = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &request_for("/v1/chat/completions", "support-bot", "hello", false),
        &[
            ("x-understudy-shadow", "1"),
            ("x-understudy-release", "2"),
            ("x-understudy-anything", "x"),
            ("x-user-id", "u1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-understudy-release"), Some("1"));
    eventually(5, "the mirror sent", || async {
        sim.sim.calls_for(CANDIDATE) == 1
    })
    .await;
    let requests = sim.sim.requests();
    let by_model = |model: &str| {
        requests
            .iter()
            .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["model"] == model)
            .unwrap_or_else(|| panic!("no request for {model}"))
    };
    let internal = |r: &understudy_sim::RecordedRequest| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-understudy-"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    };
    // The client's request carries none; the mirror only the proxy's own mark.
    let served = by_model(STABLE);
    assert_eq!(internal(served), []);
    assert_eq!(served.headers["x-user-id"], "u1");
    let mirrored = by_model(CANDIDATE);
    assert_eq!(
        internal(mirrored),
        [("x-understudy-shadow".into(), "1".into())]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn system_prompts_and_params_need_the_token() {
    let (_sim, server, _dir) = setup().await;
    for path in ["/admin/routes", "/admin/routes/bot"] {
        for token in [None, Some("wrong")] {
            let r = admin_get(&server, path, token).await;
            assert_eq!(r.status, 200, "{path} {token:?}");
            let text = r.text();
            assert!(
                !text.contains("SECRET"),
                "{path} {token:?} shows a prompt: {text}"
            );
            assert!(
                !text.contains("system_prompt") && !text.contains("params"),
                "{text}"
            );
            // The rest is there: releases by version and model.
            let v = r.json();
            let route = if path == "/admin/routes" {
                &v["routes"][0]
            } else {
                &v
            };
            assert_eq!(route["stable"]["model"], STABLE, "{v}");
            assert_eq!(route["candidate"]["version"], 2, "{v}");
        }
        let r = admin_get(&server, path, Some(TOKEN)).await;
        let text = r.text();
        assert!(
            text.contains(STABLE_PROMPT) && text.contains(CANDIDATE_PROMPT),
            "{text}"
        );
        assert!(text.contains("\"temperature\":0.7"), "{text}");
    }
    let r = admin_get(&server, "/admin/routes/bot", None).await.json();
    assert_eq!(r["releases"].as_array().unwrap().len(), 2);
    assert!(r["releases"][0].get("system_prompt").is_none(), "{r}");
    server.shutdown().await;
}
