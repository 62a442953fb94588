//! Slow readers of large admin answers: a route whose detail lists every release with a large
//! system prompt is read by clients that send the request and never read the answer. At most a
//! bounded number of such answers is held at once; the next listing gets a 503 to retry, while
//! health, metrics and a rollback still answer; once the readers go away listings work again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use understudy_sim::Behavior;

/// The bound of `src/admin/listing.rs`.
const LISTINGS: usize = 8;

fn config() -> String {
    support::config().routes(
        r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 0.1
[routes.bot.stable]
upstream = "sim"
model = "stable-2024-08-06"
[routes.bot.candidate]
upstream = "sim"
model = "candidate-2024-11-20"
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_large_listings_are_bounded() {
    let sim = Sim::start(Behavior::default()).await;
    let (server, _dir) = Server::start(&config(), &sim.url).await;
    let token = format!("Bearer {TOKEN}");
    let auth = [("authorization", token.as_str())];
    // About 28 MB of releases: more than the kernel buffers of a connection hold.
    let prompt = "You are a careful support assistant. ".repeat(19_000);
    for i in 0..40 {
        let body = json!({"upstream": "sim", "model": format!("m-{i}-2025-01-01"), "system_prompt": prompt});
        let r = post(
            &format!("{}/admin/routes/bot/releases", server.admin),
            &body,
            &auth,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let detail = format!("{}/admin/routes/bot", server.admin);
    let full = send(Method::GET, &detail, &auth, Bytes::new()).await;
    assert_eq!(full.status, 200);
    assert!(full.body.len() > 25_000_000, "{} bytes", full.body.len());

    // Readers that ask and never read.
    let addr = server.admin.trim_start_matches("http://").to_owned();
    let mut readers = Vec::new();
    for _ in 0..LISTINGS {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!("GET /admin/routes/bot HTTP/1.1\r\nhost: x\r\nauthorization: {token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        readers.push(s);
    }
    eventually(
        10,
        "the listings to be taken by the slow readers",
        || async { send(Method::GET, &detail, &auth, Bytes::new()).await.status == 503 },
    )
    .await;
    let busy = send(
        Method::GET,
        &format!("{}/admin/routes", server.admin),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("1"));
    // What an operator needs still answers.
    let health = send(
        Method::GET,
        &format!("{}/healthz", server.admin),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(health.status, 200);
    assert!(!server.metrics().await.is_empty());
    let r = post(
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &json!({"reason": "while readers stall"}),
        &auth,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The readers leave: their answers are dropped and listings work again.
    drop(readers);
    eventually(10, "listings to answer again", || async {
        send(Method::GET, &detail, &auth, Bytes::new()).await.status == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
}
