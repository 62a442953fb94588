//! Streams through the whole proxy, cut anywhere on the wire: an upstream that writes its
//! chunked SSE answer in pieces split at arbitrary byte boundaries (inside chunk headers,
//! events, lines, the `model` value) reaches the client identical but for the `model` value,
//! and is observed the same (usage counted, no failure); events the upstream spaces out reach the
//! client one by one, none held back for the next.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;
use support::{post, request_for, Server, Sim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use understudy_sim::Behavior;

const ROUTES: &str = r#"
[routes.bot]
model = "support-bot"
[routes.bot.stable]
upstream = "raw"
model = "real-model-2024"
"#;

/// An OpenAI chat stream with these deltas, its usage counting one token per delta.
fn chat_stream(deltas: &[String]) -> String {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "real-model-2024",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null})
    };
    let mut s = String::new();
    for d in deltas {
        s.push_str(&format!(
            "data: {}\n\n",
            chunk(json!({"content": d}), json!(null))
        ));
    }
    s.push_str(&format!("data: {}\n\n", chunk(json!({}), json!("stop"))));
    let usage = json!({"id": "c", "object": "chat.completion.chunk", "model": "real-model-2024",
        "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": deltas.len()}});
    s.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
    s
}

/// The whole HTTP response the raw upstream writes: one chunk per event, as model APIs send.
fn wire(stream: &str) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for event in stream.split_inclusive("\n\n") {
        out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// An upstream that answers each request on a connection with the next response set in
/// `next`, written in the pieces given, each on its own after a pause.
async fn raw_upstream(next: Arc<Mutex<Vec<Vec<u8>>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            conn.set_nodelay(true).unwrap();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then content-length bytes of body.
                    let (head_end, length) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            break (end + 4, length);
                        }
                        let mut more = [0u8; 4096];
                        match conn.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    };
                    while buf.len() < head_end + length {
                        let mut more = [0u8; 4096];
                        match conn.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let pieces = std::mem::take(&mut *next.lock().unwrap());
                    for piece in pieces {
                        if conn.write_all(&piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
        }
    });
    url
}

/// `bytes` cut at `cuts` (modulo its length).
fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(bytes[start..p].to_vec());
        start = p;
    }
    out.push(bytes[start..].to_vec());
    out
}

#[test]
fn streams_cut_anywhere_on_the_wire_reach_the_client_whole() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let next = Arc::new(Mutex::new(Vec::new()));
    let (server, _dir) = rt.block_on(async {
        let url = raw_upstream(Arc::clone(&next)).await;
        let toml = support::config()
            .without_sim()
            .upstream("raw", &format!("base_url = \"{url}\""))
            .default_upstream("raw")
            .routes(ROUTES);
        Server::start(&toml, "").await
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec("[ -~é]{0,24}", 0..10),
        prop::collection::vec(any::<usize>(), 0..16),
    );
    let completion = "understudy_tokens_total{kind=\"completion\",release=\"1\",route=\"bot\"}";
    let malformed =
        "understudy_upstream_errors_total{kind=\"malformed\",release=\"1\",route=\"bot\"}";
    runner
        .run(&strategy, |(deltas, cuts)| {
            let stream = chat_stream(&deltas);
            let bytes = wire(&stream);
            *next.lock().unwrap() = pieces(&bytes, &cuts);
            let (reply, counted) = rt.block_on(async {
                let before = metric(&server, completion).await;
                let body = request_for("/v1/chat/completions", "support-bot", "hi", true);
                let url = format!("{}/v1/chat/completions", server.proxy);
                let reply = post(&url, &body, &[]).await;
                (reply, metric(&server, completion).await - before)
            });
            prop_assert_eq!(reply.status, 200);
            prop_assert_eq!(&reply.body_error, &None);
            let expected =
                stream.replace("\"model\":\"real-model-2024\"", "\"model\":\"support-bot\"");
            prop_assert_eq!(reply.text(), expected);
            prop_assert_eq!(counted, deltas.len() as f64);
            Ok(())
        })
        .unwrap();
    let malformed = rt.block_on(metric(&server, malformed));
    assert_eq!(
        malformed, 0.0,
        "a stream cut on the wire was observed as malformed"
    );
    rt.block_on(server.shutdown());
}

/// A metric's value, 0 while the series does not exist yet.
async fn metric(server: &Server, name_and_labels: &str) -> f64 {
    support::metric_value_or_absent(&server.metrics().await, name_and_labels).unwrap_or(0.0)
}

#[tokio::test]
async fn paced_events_reach_the_client_one_by_one() {
    let sim = Sim::start(Behavior {
        chunk_delay: Duration::from_millis(40),
        ..Behavior::default()
    })
    .await;
    let routes = r#"
[routes.bot]
model = "support-bot"
[routes.bot.stable]
upstream = "sim"
model = "sim-stable-1"
"#;
    let (server, _dir) = Server::start(&support::config().routes(routes), &sim.url).await;
    let body = request_for(
        "/v1/chat/completions",
        "support-bot",
        "Where is my order?",
        true,
    );
    let reply = post(&format!("{}/v1/chat/completions", server.proxy), &body, &[]).await;
    assert_eq!(reply.status, 200);
    let events = reply.text().matches("\n\n").count();
    assert!(events >= 4, "{events} events");
    // The simulator pauses after each event but the last: every event but the last comes alone.
    assert!(
        reply.chunks.len() >= events - 1,
        "{} chunks for {events} events spaced 40 ms apart: events were held back",
        reply.chunks.len()
    );
    for pair in reply.chunks.windows(2) {
        let (first, second) = (&pair[0], &pair[1]);
        assert!(
            second.0 > first.0,
            "chunks out of order or at the same instant"
        );
    }
    server.shutdown().await;
}
