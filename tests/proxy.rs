//! The streaming proxy core against the simulated upstream: rewrite for the serving release,
//! the alias put back, streaming chunk by chunk, pass-through, limits, upstream faults,
//! credentials, metrics and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::*;
use understudy_sim::{Behavior, Fault};

/// The simulator (the default upstream) under three names: as is, with an OpenAI key, as an
/// Anthropic API with a key; and an upstream nothing listens on.
fn config() -> ConfigToml {
    support::config()
        .upstream_timeout_secs(2)
        .max_body_bytes(65536)
        .shutdown_grace_secs(10)
        .default_upstream("sim")
        .upstream(
            "keyed",
            "base_url = \"{SIM}\"\napi_key_env = \"SIM_OPENAI_KEY\"",
        )
        .upstream(
            "claude",
            "base_url = \"{SIM}\"\napi = \"anthropic\"\napi_key_env = \"SIM_ANTHROPIC_KEY\"",
        )
        .upstream("dead", "base_url = \"http://127.0.0.1:9\"")
}

const ROUTES: &str = r#"
[routes.bot]
model = "support-bot"

[routes.bot.stable]
label = "v3"
upstream = "sim"
model = "sim-stable-2024-08-06"
system_prompt = "You are concise."
params = { temperature = 0.2 }

[routes.keyed]
model = "keyed-bot"
[routes.keyed.stable]
upstream = "keyed"
model = "sim-keyed-1"

[routes.claude]
model = "claude-bot"
[routes.claude.stable]
upstream = "claude"
model = "sim-claude-1"
system_prompt = "Answer in English."

[routes.dead]
model = "dead-bot"
[routes.dead.stable]
upstream = "dead"
model = "nothing-1"
"#;

const OPENAI_SECRET: &str = "sk-upstream-secret-openai";
const ANTHROPIC_SECRET: &str = "sk-ant-upstream-secret";

async fn setup() -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(Behavior::default()).await;
    let (server, dir) = Server::start_with_secrets(
        &config().routes(ROUTES),
        &sim.url,
        &[
            ("SIM_OPENAI_KEY", OPENAI_SECRET),
            ("SIM_ANTHROPIC_KEY", ANTHROPIC_SECRET),
        ],
    )
    .await;
    (sim, server, dir)
}

/// Data lines of an SSE body, as JSON (skipping `[DONE]`).
fn sse_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d}: {e}")))
        .collect()
}

/// Every `model` value anywhere in a JSON value.
fn models(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "model" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                models(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| models(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn each_api_is_rewritten_and_answered_under_the_alias() {
    let (sim, server, _dir) = setup().await;
    for path in PATHS {
        for stream in [false, true] {
            let body = request_for(path, "support-bot", "Where is my order 1234?", stream);
            let reply = post(&format!("{}{path}", server.proxy), &body, &[]).await;
            assert_eq!(
                reply.status,
                200,
                "{path} stream={stream}: {}",
                reply.text()
            );
            assert_eq!(reply.header("x-understudy-route"), Some("bot"));
            assert_eq!(reply.header("x-understudy-release"), Some("1"));

            // What the upstream got: the release's model, prompt and params.
            let sent = sim.sim.requests().pop().unwrap();
            assert_eq!(sent.path, path);
            let got: Value = serde_json::from_slice(&sent.body).unwrap();
            assert_eq!(got["model"], "sim-stable-2024-08-06");
            assert_eq!(got["temperature"], 0.2);
            assert_eq!(got["stream"], stream);
            match path {
                "/v1/chat/completions" => {
                    assert_eq!(
                        got["messages"][0],
                        json!({"role": "system", "content": "You are concise."})
                    );
                    assert_eq!(got["messages"][1]["content"], "Where is my order 1234?");
                }
                "/v1/responses" => assert_eq!(got["instructions"], "You are concise."),
                "/v1/messages" => assert_eq!(got["system"], "You are concise."),
                _ => assert_eq!(got["prompt"], "Where is my order 1234?"),
            }

            // What the client got: the upstream's answer with the alias in place of the model.
            let mut seen = Vec::new();
            if stream {
                assert!(reply
                    .header("content-type")
                    .unwrap()
                    .starts_with("text/event-stream"));
                let events = sse_events(&reply.text());
                assert!(events.len() >= 3, "{path}: {} events", events.len());
                events.iter().for_each(|e| models(e, &mut seen));
            } else {
                models(&reply.json(), &mut seen);
            }
            assert!(!seen.is_empty(), "{path} stream={stream}: no model field");
            assert!(
                seen.iter().all(|m| m == "support-bot"),
                "{path} stream={stream}: {seen:?}"
            );
            assert!(!reply.text().contains("sim-stable-2024-08-06"));
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_body_is_byte_for_byte_the_upstreams_apart_from_the_model() {
    let (sim, server, _dir) = setup().await;
    for path in PATHS {
        for stream in [false, true] {
            let body = request_for(
                path,
                "support-bot",
                "Can I change my delivery address?",
                stream,
            );
            let proxied = post(&format!("{}{path}", server.proxy), &body, &[]).await;
            // Replay exactly what the proxy sent upstream, straight to the simulator.
            let sent = sim.sim.requests().pop().unwrap();
            let direct = send(
                Method::POST,
                &format!("{}{path}", sim.url),
                &[("content-type", "application/json")],
                sent.body.clone(),
            )
            .await;
            let want = direct
                .text()
                .replace("\"sim-stable-2024-08-06\"", "\"support-bot\"");
            assert_eq!(
                normalise(&proxied.text()),
                normalise(&want),
                "{path} stream={stream}"
            );
        }
    }
    server.shutdown().await;
}

/// Ids and timestamps differ between two calls to the simulator; everything else must not.
fn normalise(body: &str) -> String {
    let mut out = String::new();
    for line in body.split_inclusive('\n') {
        let json_part = line.trim_start_matches("data: ");
        match serde_json::from_str::<Value>(json_part.trim()) {
            Ok(mut v) => {
                scrub(&mut v);
                out.push_str(&v.to_string());
                out.push('\n');
            }
            Err(_) => out.push_str(line),
        }
    }
    out
}

fn scrub(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if matches!(
                    k.as_str(),
                    "id" | "created" | "created_at" | "item_id" | "system_fingerprint" | "call_id"
                ) {
                    *x = Value::Null;
                } else {
                    scrub(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk() {
    let (sim, server, _dir) = setup().await;
    sim.sim.set_behavior(
        "sim-stable-2024-08-06",
        Behavior {
            chunk_delay: Duration::from_millis(60),
            ..Behavior::default()
        },
    );
    for path in PATHS {
        let body = request_for(
            path,
            "support-bot",
            "Tell me about shipping times please",
            true,
        );
        let reply = post(&format!("{}{path}", server.proxy), &body, &[]).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.chunks.len() >= 4,
            "{path}: only {} chunks",
            reply.chunks.len()
        );
        let first = reply.chunks[0].0;
        assert!(
            reply.total - first >= Duration::from_millis(180),
            "{path}: first chunk at {first:?}, end at {:?}: the stream was buffered",
            reply.total
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn other_paths_and_unrouted_requests_pass_through_untouched() {
    let (sim, server, _dir) = setup().await;
    let reply = send(
        Method::GET,
        &format!("{}/echo/a/b?x=1&y=two", server.proxy),
        &[
            ("x-custom", "kept"),
            ("connection", "x-hop"),
            ("x-hop", "dropped"),
            ("authorization", "Bearer client-key"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo/a/b");
    assert_eq!(echo["query"], "x=1&y=two");
    assert_eq!(echo["headers"]["x-custom"], "kept");
    assert_eq!(echo["headers"]["authorization"], "Bearer client-key");
    assert!(
        echo["headers"].get("x-hop").is_none(),
        "hop-by-hop header forwarded: {echo}"
    );

    let payload: String = "0123456789".repeat(500);
    let reply = send(
        Method::PUT,
        &format!("{}/echo/upload", server.proxy),
        &[],
        Bytes::from(payload.clone()),
    )
    .await;
    assert_eq!(reply.json()["body"], payload);
    assert_eq!(reply.json()["method"], "PUT");

    // A managed path whose model is no route's alias goes to the default upstream as sent.
    let raw =
        br#"{"model":"gpt-unmanaged","messages":[{"role":"user","content":"hi"}],"extra":{"a":1}}"#;
    let reply = send(
        Method::POST,
        &format!("{}/v1/chat/completions", server.proxy),
        &[("content-type", "application/json")],
        Bytes::from_static(raw),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-understudy-release"), None);
    assert_eq!(sim.sim.requests().pop().unwrap().body.as_ref(), raw);
    assert_eq!(reply.json()["model"], "gpt-unmanaged");
    let m = server.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"understudy_requests_total{release="none",route="_unrouted",status="200"}"#
        ) >= 3.0,
        "{m}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn route_header_selects_the_route() {
    let (sim, server, _dir) = setup().await;
    let body = request_for("/v1/chat/completions", "anything", "hi", false);
    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &body,
        &[("x-understudy-route", "bot")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-understudy-route"), Some("bot"));
    assert_eq!(reply.json()["model"], "anything");
    let sent = sim.sim.requests().pop().unwrap();
    assert!(sent.headers.get("x-understudy-route").is_none());

    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &body,
        &[("x-understudy-route", "nope")],
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_api_shaped_errors() {
    let (sim, server, _dir) = setup().await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    let before = sim.sim.calls();

    let big = Bytes::from(vec![b' '; 70_000]);
    let reply = send(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        big.clone(),
    )
    .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "request_too_large");

    // Same size without a Content-Length (chunked): refused while reading.
    let status = chunked_post(&server.proxy, "/v1/chat/completions", &big).await;
    assert!(status.contains(" 413 "), "{status}");

    // Passed-through paths have the same limit.
    let reply = send(
        Method::POST,
        &format!("{}/echo/x", server.proxy),
        &[],
        Bytes::from(vec![b'x'; 70_000]),
    )
    .await;
    assert_eq!(reply.status, 413);

    for bad in [&b"{not json"[..], b"[1,2]", b"", b"\"text\""] {
        let reply = send(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            Bytes::copy_from_slice(bad),
        )
        .await;
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(bad));
        let err = reply.json();
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert!(err["error"]["message"].as_str().unwrap().contains("JSON"));
    }
    // Anthropic clients get Anthropic's error shape.
    let reply = send(
        Method::POST,
        &format!("{}/v1/messages", server.proxy),
        &[],
        Bytes::from_static(b"{"),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    assert_eq!(
        sim.sim.calls(),
        before,
        "a refused request reached the upstream"
    );
    server.shutdown().await;
}

/// POSTs `body` with chunked transfer encoding (no Content-Length); returns the status line.
async fn chunked_post(base: &str, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
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
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn upstream_faults_become_clear_errors() {
    let (sim, server, _dir) = setup().await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    let chat = |stream| request_for("/v1/chat/completions", "support-bot", "hello there", stream);

    // Unreachable upstream: 502.
    let reply = post(
        &url,
        &request_for("/v1/chat/completions", "dead-bot", "hi", false),
        &[],
    )
    .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_unreachable");

    // No answer within upstream_timeout_secs (2 s): 504.
    let reply = post(&url, &chat(false), &[("x-sim-fault", "hang")]).await;
    assert_eq!(reply.status, 504);
    assert!(
        reply.total >= Duration::from_millis(1900) && reply.total < Duration::from_secs(5),
        "{:?}",
        reply.total
    );

    // An upstream error status is the upstream's answer: passed through as is.
    let reply = post(&url, &chat(false), &[("x-sim-fault", "500")]).await;
    assert_eq!(reply.status, 500);
    assert!(reply.json()["error"]["message"].is_string());

    // A reset in the middle of a stream reaches the client as a broken body, not a clean end.
    let reply = post(&url, &chat(true), &[("x-sim-fault", "reset")]).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body_error.is_some(),
        "reset mid-stream ended cleanly: {}",
        reply.text()
    );

    // Broken SSE is relayed as the upstream sent it.
    let reply = post(&url, &chat(true), &[("x-sim-fault", "broken-sse")]).await;
    assert_eq!(reply.status, 200);

    let m = server.metrics().await;
    for (kind, release) in [
        ("connect", "1"),
        ("timeout", "1"),
        ("reset", "1"),
        ("status", "1"),
    ] {
        let route = if kind == "connect" { "dead" } else { "bot" };
        let line = format!(
            r#"understudy_upstream_errors_total{{kind="{kind}",release="{release}",route="{route}"}}"#
        );
        assert!(metric_value(&m, &line) >= 1.0, "missing {line}\n{m}");
    }
    assert!(
        metric_value(
            &m,
            r#"understudy_requests_total{release="1",route="bot",status="504"}"#
        ) >= 1.0
    );
    let _ = sim;
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_stalls_is_cut_after_the_idle_timeout() {
    let (_sim, server, _dir) = setup().await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    let chat = |stream| request_for("/v1/chat/completions", "support-bot", "hello there", stream);

    // Two events arrive at once, then the upstream goes silent: the client has them, and after
    // upstream_timeout_secs (2 s) of silence its body ends with an error, not a clean end.
    let reply = post(&url, &chat(true), &[("x-sim-fault", "stall")]).await;
    assert_eq!(reply.status, 200);
    let (first_at, _) = reply.chunks.first().expect("no event before the stall");
    assert!(*first_at < Duration::from_secs(1), "{first_at:?}");
    assert!(reply.text().contains("data: "), "{}", reply.text());
    assert!(!reply.text().contains("[DONE]"));
    assert!(reply.body_error.is_some(), "stalled stream ended cleanly");
    assert!(
        reply.total >= Duration::from_millis(1900) && reply.total < Duration::from_secs(5),
        "{:?}",
        reply.total
    );

    // The same for a JSON body cut off halfway.
    let reply = post(&url, &chat(false), &[("x-sim-fault", "stall")]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body_error.is_some(), "stalled body ended cleanly");
    assert!(
        reply.total >= Duration::from_millis(1900),
        "{:?}",
        reply.total
    );

    let m = server.metrics().await;
    let line = r#"understudy_upstream_errors_total{kind="timeout",release="1",route="bot"}"#;
    assert_eq!(metric_value(&m, line), 2.0, "{m}");
    server.shutdown().await;
}

#[tokio::test]
async fn upstream_credentials_replace_the_clients_and_never_leak() {
    let (sim, server, _dir) = setup().await;
    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &request_for("/v1/chat/completions", "keyed-bot", "hi", false),
        &[("authorization", "Bearer sk-client")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = sim.sim.requests().pop().unwrap();
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {OPENAI_SECRET}")
    );

    let reply = post(
        &format!("{}/v1/messages", server.proxy),
        &request_for("/v1/messages", "claude-bot", "hi", true),
        &[
            ("x-api-key", "sk-ant-client"),
            ("anthropic-version", "2023-06-01"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = sim.sim.requests().pop().unwrap();
    assert_eq!(sent.headers["x-api-key"], ANTHROPIC_SECRET);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.headers.get("authorization").is_none());

    // Errors and metrics name the upstream, never its key.
    let fail = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &request_for("/v1/chat/completions", "keyed-bot", "hi", false),
        &[("x-sim-fault", "hang")],
    )
    .await;
    assert_eq!(fail.status, 504);
    let everything = format!("{}{}{}", fail.text(), reply.text(), server.metrics().await);
    assert!(!everything.contains(OPENAI_SECRET) && !everything.contains(ANTHROPIC_SECRET));
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_latency_and_tokens() {
    let (_sim, server, _dir) = setup().await;
    for stream in [false, true] {
        for _ in 0..3 {
            let body = request_for(
                "/v1/chat/completions",
                "support-bot",
                "count my tokens please",
                stream,
            );
            let mut body = body;
            body["stream_options"] = json!({"include_usage": true});
            if !stream {
                body.as_object_mut().unwrap().remove("stream_options");
            }
            assert_eq!(
                post(&format!("{}/v1/chat/completions", server.proxy), &body, &[])
                    .await
                    .status,
                200
            );
        }
    }
    let m = server.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_requests_total{release="1",route="bot",status="200"}"#
        ),
        6.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_request_duration_seconds_count{release="1",route="bot"}"#
        ),
        6.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"understudy_time_to_first_byte_seconds_count{release="1",route="bot"}"#
        ),
        6.0
    );
    let prompt = metric_value(
        &m,
        r#"understudy_tokens_total{kind="prompt",release="1",route="bot"}"#,
    );
    let completion = metric_value(
        &m,
        r#"understudy_tokens_total{kind="completion",release="1",route="bot"}"#,
    );
    assert!(
        prompt >= 6.0 && completion >= 6.0,
        "tokens prompt={prompt} completion={completion}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn health_endpoints_answer_on_both_listeners() {
    let (_sim, server, _dir) = setup().await;
    for base in [&server.proxy, &server.admin] {
        for path in ["/healthz", "/readyz"] {
            let r = send(Method::GET, &format!("{base}{path}"), &[], Bytes::new()).await;
            assert_eq!(r.status, 200, "{base}{path}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let (sim, server, _dir) = setup().await;
    sim.sim.set_behavior(
        "sim-stable-2024-08-06",
        Behavior {
            chunk_delay: Duration::from_millis(80),
            ..Behavior::default()
        },
    );
    let url = format!("{}/v1/chat/completions", server.proxy);
    let body = request_for(
        "/v1/chat/completions",
        "support-bot",
        "a long answer please",
        true,
    );
    let inflight = tokio::spawn(async move { post(&url, &body, &[]).await });
    // In flight: the proxy has taken the request and passed it on (the answer then takes 80 ms
    // a chunk), rather than a guess that 150 ms is enough for it to get there.
    eventually(5, "the stream to reach the upstream", || async {
        sim.sim.calls_for("sim-stable-2024-08-06") >= 1
    })
    .await;
    let proxy = server.proxy.clone();
    server.shutdown().await;
    let reply = inflight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body_error.is_none(), "{:?}", reply.body_error);
    assert!(
        reply.text().contains("[DONE]"),
        "stream cut short: {}",
        reply.text()
    );
    // And nothing new is accepted.
    let refused = client()
        .request(
            http::Request::get(format!("{proxy}/healthz"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(refused.is_err());
    let _ = Fault::Hang;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_serve_concurrent_connections_and_shut_down() {
    let sim = Sim::start(Behavior::default()).await;
    let config = config().workers(3).routes(ROUTES);
    let (server, _dir) = Server::start_with_secrets(
        &config,
        &sim.url,
        &[
            ("SIM_OPENAI_KEY", OPENAI_SECRET),
            ("SIM_ANTHROPIC_KEY", ANTHROPIC_SECRET),
        ],
    )
    .await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    // 12 requests at once, so connections land on every worker (handed out in turn).
    let mut all = tokio::task::JoinSet::new();
    for i in 0..12_u32 {
        let url = url.clone();
        all.spawn(async move {
            let stream = i.is_multiple_of(2);
            let body = request_for("/v1/chat/completions", "support-bot", "hello there", stream);
            (stream, post(&url, &body, &[]).await)
        });
    }
    while let Some(done) = all.join_next().await {
        let (stream, reply) = done.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.body_error.is_none());
        let text = reply.text();
        if stream {
            assert!(text.contains("[DONE]"), "{text}");
        } else {
            assert_eq!(reply.json()["model"], "support-bot");
        }
    }
    let m = server.metrics().await;
    let line = r#"understudy_requests_total{release="1",route="bot",status="200"}"#;
    assert_eq!(metric_value(&m, line), 12.0, "{m}");
    // Shutdown stops the workers' threads: it returns.
    tokio::time::timeout(Duration::from_secs(15), server.shutdown())
        .await
        .expect("shutdown with three workers did not finish");
}

#[tokio::test]
async fn http2_with_prior_knowledge_and_http1_share_the_proxy_port() {
    let (_sim, server, _dir) = setup().await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for stream in [false, true] {
        let body = request_for("/v1/chat/completions", "support-bot", "Hello?", stream);
        let reply = send_with(
            &h2,
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await;
        assert_eq!(reply.status, 200, "h2c stream={stream}: {}", reply.text());
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(reply.header("x-understudy-route"), Some("bot"));
        let text = reply.text();
        assert!(text.contains("support-bot"), "alias not put back: {text}");
        // The same port still speaks HTTP/1.1.
        let reply = post(&url, &body, &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, http::Version::HTTP_11);
    }
    server.shutdown().await;
}
