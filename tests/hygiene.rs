//! Connection hygiene and overload on the proxy listener (issue 11, finding 3): slow heads,
//! idle connections and stalled bodies are cut by their timeouts; the connection cap refuses
//! new connections while the admin listener keeps answering; concurrent requests past the cap
//! are shed with an API-shaped 503; a stream making progress outlives every timeout; shutdown
//! ends within its grace period with a half-sent request. Raw TCP where the test needs to
//! misbehave as a client would; timeouts of 1 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use understudy_sim::Behavior;

const CHAT: &str = "/v1/chat/completions";

fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(addr(&server.proxy)).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset), at most `limit`; returns when it
/// closed (from `since`) and what it sent, or None if it was still open.
async fn closed_within(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> Option<(Duration, String)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = since + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((since.elapsed(), String::from_utf8_lossy(&seen).into_owned()))
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one whole HTTP/1.1 response with a content-length (head and body).
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + len {
                return (head, text[end + 4..end + 4 + len].to_string());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A route with a candidate in shadow, for the rollback.
const ROUTE: &str = r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 0.0
[routes.bot.stable]
upstream = "sim"
model = "stable-model"
[routes.bot.candidate]
upstream = "sim"
model = "candidate-model"
"#;

#[tokio::test]
async fn slowloris_heads_are_cut_after_the_header_timeout() {
    let sim = Sim::start(Behavior::default()).await;
    let toml = support::config()
        .server("header_read_timeout_secs", 1)
        .server("idle_timeout_secs", 30)
        .routes("");
    let (server, _dir) = Server::start(&toml, &sim.url).await;

    let mut stream = connect(&server).await;
    let started = Instant::now();
    stream
        .write_all(format!("POST {CHAT} HTTP/1.1\r\nhost: x\r\n").as_bytes())
        .await
        .unwrap();
    // A header line every 250 ms, never the blank line that ends the head.
    let mut lines = 0;
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slowloris connection still open after 5 s ({lines} header lines sent)"
        );
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                    break started.elapsed();
                }
                lines += 1;
            }
        }
    };
    assert!(lines >= 3, "closed after {lines} lines, {closed:?}");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "closed after {closed:?}, header timeout 1 s"
    );
    let closes = r#"understudy_connections_closed_total{reason="header_timeout"}"#;
    assert_eq!(server.metric(closes).await, 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let sim = Sim::start(Behavior::default()).await;
    let toml = support::config()
        .server("header_read_timeout_secs", 30)
        .server("idle_timeout_secs", 1)
        .routes("");
    let (server, _dir) = Server::start(&toml, &sim.url).await;

    // A connection that never sends a byte.
    let mut silent = connect(&server).await;
    let silent_since = Instant::now();
    // A keep-alive connection used every 400 ms for 2 s (longer than the idle timeout: each
    // request restarts it), then left idle.
    let mut kept = connect(&server).await;
    for _ in 0..5 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut kept).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "ok\n");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let idle_since = Instant::now();

    let (after, _) = closed_within(&mut silent, silent_since, Duration::from_secs(5))
        .await
        .expect("a connection that sent nothing is still open after 5 s");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    let (after, _) = closed_within(&mut kept, idle_since, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is still open after 5 s");
    assert!(
        after < Duration::from_millis(1500),
        "closed {after:?} after its last answer"
    );
    let closes = r#"understudy_connections_closed_total{reason="idle_timeout"}"#;
    assert_eq!(server.metric(closes).await, 2.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_with_an_api_shaped_408() {
    let sim = Sim::start(Behavior::default()).await;
    let toml = support::config().server("body_timeout_secs", 1).routes("");
    let (server, _dir) = Server::start(&toml, &sim.url).await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]}).to_string();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );

    // Ten bytes, then nothing.
    let mut stalled = connect(&server).await;
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&body.as_bytes()[..10]).await.unwrap();
    let started = Instant::now();
    let (status, answer) = read_response(&mut stalled).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["error"]["code"], "request_timeout", "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    assert!(
        closed_within(&mut stalled, Instant::now(), Duration::from_secs(2))
            .await
            .is_some(),
        "the connection of a stalled body stays open"
    );

    // A body trickled in five pieces 400 ms apart (2 s in all) keeps making progress: served.
    let mut slow = connect(&server).await;
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for piece in body.as_bytes().chunks(body.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        slow.write_all(piece).await.unwrap();
    }
    let (status, _) = read_response(&mut slow).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(started.elapsed() > Duration::from_secs(1));

    let metrics = server.metrics().await;
    let rejected = r#"understudy_requests_rejected_total{reason="body_timeout"}"#;
    assert_eq!(metric_value(&metrics, rejected), 1.0);
    let counted = r#"understudy_requests_total{release="none",route="_unrouted",status="408"}"#;
    assert_eq!(metric_value(&metrics, counted), 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_answers_while_the_proxy_is_at_its_connection_cap() {
    let sim = Sim::start(Behavior::default()).await;
    let toml = support::config()
        .server("max_connections", 4)
        .server("idle_timeout_secs", 30)
        .server("header_read_timeout_secs", 30)
        .routes(ROUTE);
    let (server, _dir) = Server::start(&toml, &sim.url).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&server).await);
    }
    eventually(5, "four proxy connections open", || async {
        server.metric("understudy_proxy_connections").await == 4.0
    })
    .await;
    // The fifth is answered 503 and closed at once, not left open.
    let mut fifth = connect(&server).await;
    let (_, sent) = closed_within(&mut fifth, Instant::now(), Duration::from_secs(2))
        .await
        .expect("a connection past the cap was left open");
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 503"),
        "{sent:?}"
    );

    // The admin listener: health, a rollback, metrics.
    let health = send(
        http::Method::GET,
        &format!("{}/healthz", server.admin),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(health.status, 200);
    let auth = format!("Bearer {TOKEN}");
    let rollback = post(
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &json!({"reason": "proxy exhausted"}),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(rollback.status, 200, "{}", rollback.text());
    let refused = r#"understudy_connections_closed_total{reason="over_capacity"}"#;
    assert!(server.metric(refused).await >= 1.0);

    // A slot freed is a slot reused.
    drop(held.pop());
    eventually(5, "a slot freed", || async {
        server.metric("understudy_proxy_connections").await == 3.0
    })
    .await;
    let mut again = connect(&server).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut again).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.shutdown().await;
}

#[tokio::test]
async fn requests_past_the_concurrency_cap_are_shed_with_an_api_shaped_503() {
    let sim = Sim::start(Behavior::default()).await;
    let toml = support::config()
        .upstream_timeout_secs(10)
        .server("max_concurrent_requests", 2)
        .routes("");
    let (server, _dir) = Server::start(&toml, &sim.url).await;
    let url = format!("{}{CHAT}", server.proxy);
    let body = request_for(CHAT, "m", "hello", false);

    // Two requests held at the upstream for a second each.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post(&url, &body, &[("x-sim-latency-ms", "1000")]).await })
        })
        .collect();
    eventually(5, "two requests at the upstream", || async {
        sim.sim.calls() == 2
    })
    .await;

    let shed = post(&url, &body, &[]).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    let v = shed.json();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(v["error"]["type"], "server_error");
    let messages = post(
        &format!("{}/v1/messages", server.proxy),
        &request_for("/v1/messages", "m", "hello", false),
        &[],
    )
    .await;
    assert_eq!(messages.status, 503);
    let v = messages.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    // Health stays green under load.
    let health = send(
        http::Method::GET,
        &format!("{}/healthz", server.proxy),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(health.status, 200);

    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    // Permits come back with the answers.
    assert_eq!(post(&url, &body, &[]).await.status, 200);
    let rejected = r#"understudy_requests_rejected_total{reason="overloaded"}"#;
    assert_eq!(server.metric(rejected).await, 2.0);
    assert_eq!(sim.sim.calls(), 3, "a shed request reached the upstream");
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_making_progress_outlives_every_timeout() {
    let sim = Sim::start(Behavior {
        chunk_delay: Duration::from_millis(300),
        ..Behavior::default()
    })
    .await;
    let toml = support::config()
        .upstream_timeout_secs(2)
        .server("header_read_timeout_secs", 1)
        .server("idle_timeout_secs", 1)
        .server("body_timeout_secs", 1)
        .routes(ROUTE);
    let (server, _dir) = Server::start(&toml, &sim.url).await;
    let prompt = "Tell me everything about the parcel, the refund and the delivery window.";
    let reply = post(
        &format!("{}{CHAT}", server.proxy),
        &request_for(CHAT, "support-bot", prompt, true),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_error, None);
    assert!(reply.text().contains("[DONE]"), "{}", reply.text());
    assert!(
        reply.total > Duration::from_millis(2500),
        "the stream lasted {:?} ({} chunks): not longer than the timeouts",
        reply.total,
        reply.chunks.len()
    );
    let metrics = server.metrics().await;
    for reason in ["header_timeout", "idle_timeout"] {
        let series = format!(r#"understudy_connections_closed_total{{reason="{reason}"}}"#);
        assert_eq!(metric_value(&metrics, &series), 0.0, "{reason}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_period_with_a_half_sent_request() {
    let sim = Sim::start(Behavior::default()).await;
    let toml = support::config().shutdown_grace_secs(1).routes("");
    let (server, _dir) = Server::start(&toml, &sim.url).await;

    let mut half = connect(&server).await;
    half.write_all(
        format!(
            "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 100\r\nexpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // "100 Continue" comes when the proxy starts reading the body: the request is in flight.
    let mut buf = [0u8; 64];
    let n = half.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));
    half.write_all(b"{\"model\":").await.unwrap();

    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1600),
        "shutdown took {took:?} with a 1 s grace period"
    );
    assert!(
        closed_within(&mut half, Instant::now(), Duration::from_secs(1))
            .await
            .is_some(),
        "the half-sent request's connection survived shutdown"
    );
}
