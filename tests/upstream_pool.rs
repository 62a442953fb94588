//! The plain-HTTP upstream pool, against a hand-written HTTP/1.1 upstream that counts its
//! connections: keep-alive reuse, an upstream that closes idle connections, a client that leaves
//! mid-stream (its upstream connection is closed, not reused), and streams relayed whole.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the upstream answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// A JSON chat completion, then the connection is kept.
    Json,
    /// The same, then the connection is closed without `connection: close` (as an upstream
    /// closing an idle keep-alive connection does).
    JsonThenClose,
    /// A chunked SSE stream of 40 events 50 ms apart.
    SlowStream,
    /// The head and two events of a chunked SSE stream, then a reset, in one burst.
    ResetAfterTwoEvents,
}

/// A one-route HTTP/1.1 upstream on 127.0.0.1:0 counting the connections it accepted and the
/// ones that ended.
struct Upstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(answer: Answer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (accepted, ended) = (Arc::clone(&accepted), Arc::clone(&ended));
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let (sock, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let ended = Arc::clone(&ended);
                    conns.spawn(async move {
                        serve(sock, answer).await;
                        ended.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Upstream {
            url,
            accepted,
            ended,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Answers requests on `sock` until the peer closes it (or after one, for `JsonThenClose`).
async fn serve(mut sock: TcpStream, answer: Answer) {
    let mut buf = Vec::new();
    loop {
        let Some(body_start) = read_head(&mut sock, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < body_start + length {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_start + length);
        let written = match answer {
            Answer::Json | Answer::JsonThenClose => {
                let body = json!({
                    "id": "c1", "object": "chat.completion", "model": "raw-1",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hello"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                })
                .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await
            }
            Answer::SlowStream => slow_stream(&mut sock).await,
            Answer::ResetAfterTwoEvents => {
                let mut burst = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for i in 0..2 {
                    burst.extend_from_slice(chunk_of(&event(i)).as_bytes());
                }
                let _ = sock.write_all(&burst).await;
                // Closed with linger 0: a reset right behind the bytes.
                let _ = sock.set_zero_linger();
                return;
            }
        };
        if written.is_err() || answer == Answer::JsonThenClose {
            return;
        }
    }
}

/// Reads into `buf` until it holds a whole request head; the offset of its body, or None when
/// the peer closed the connection.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn slow_stream(sock: &mut TcpStream) -> std::io::Result<()> {
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    for i in 0..40 {
        sock.write_all(chunk_of(&event(i)).as_bytes()).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sock.write_all(b"0\r\n\r\n").await
}

/// The `i`th event of a chat stream (its text `t{i} `).
fn event(i: usize) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "raw-1",
               "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}]})
    )
}

/// `data` as one HTTP/1.1 chunk.
fn chunk_of(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// One worker (one pool), the upstream as the route's stable release.
async fn proxy(upstream: &Upstream) -> (Server, tempfile::TempDir) {
    let toml = support::config()
        .workers(1)
        .upstream_timeout_secs(5)
        .without_sim()
        .upstream("raw", &format!("base_url = \"{}\"", upstream.url))
        .default_upstream("raw")
        .routes(
            r#"
[routes.bot]
model = "bot"
[routes.bot.stable]
upstream = "raw"
model = "raw-1"
"#,
        );
    Server::start(&toml, "").await
}

fn chat(stream: bool) -> serde_json::Value {
    json!({"model": "bot", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = Upstream::start(Answer::Json).await;
    let (server, _dir) = proxy(&upstream).await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    for _ in 0..20 {
        let reply = post(&url, &chat(false), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        // The release's model is put back to the client's alias.
        assert_eq!(body["model"], "bot");
        assert_eq!(body["choices"][0]["message"]["content"], "hello");
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "every request should reuse the first connection"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_loses_no_request() {
    let upstream = Upstream::start(Answer::JsonThenClose).await;
    let (server, _dir) = proxy(&upstream).await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    for i in 0..10 {
        // The upstream's close has reached the proxy before the next request: the closed
        // connection is found at checkout and a new one is opened.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let reply = post(&url, &chat(false), &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(upstream.accepted(), 10);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_closes_its_upstream_connection() {
    let upstream = Upstream::start(Answer::SlowStream).await;
    let (server, _dir) = proxy(&upstream).await;
    // The head and the first events, then the client goes away (the stream has ~2 s to run).
    let mut sock = TcpStream::connect(server.proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    let body = chat(true).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("t1 ") {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"model\":\"bot\""),
        "alias not put back: {text}"
    );
    drop(sock);
    // The half-read response is not left on a pooled connection: the upstream sees it closed
    // long before the stream would have ended.
    eventually(1, "the upstream connection closed", || async {
        upstream.ended() == 1
    })
    .await;
    // The next request gets a connection of its own, and a whole stream.
    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &chat(true),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert_eq!(text.matches("data: ").count(), 40, "{text}");
    assert!(text.contains("t39 "));
    assert_eq!(upstream.accepted(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn what_the_upstream_sent_before_a_reset_reaches_the_client() {
    let upstream = Upstream::start(Answer::ResetAfterTwoEvents).await;
    let (server, _dir) = proxy(&upstream).await;
    let url = format!("{}/v1/chat/completions", server.proxy);
    for _ in 0..5 {
        let reply = post(&url, &chat(true), &[]).await;
        // The head, the two events (their model put back), then a broken body: not a clean end,
        // and not a connection closed before any answer.
        assert_eq!(reply.status, 200);
        let text = reply.text();
        assert!(text.contains("t0 ") && text.contains("t1 "), "{text}");
        assert!(text.contains("\"model\":\"bot\""), "{text}");
        assert!(reply.body_error.is_some(), "ended cleanly: {text}");
    }
    server.shutdown().await;
}
