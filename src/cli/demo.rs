//! `understudy demo`: the whole loop on one machine with no API key. A simulated upstream plays
//! both models (stable with an LLM's ordinary randomness; a candidate that is as good at first
//! and then degrades), a traffic generator sends chat requests through the proxy, the candidate
//! is walked shadow -> canary -> promoted through the admin API, and the judge rolls it back by
//! itself. The proxy and `/metrics` stay up afterwards until Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use understudy_sim::{Behavior, SimUpstream, Style};

use crate::admin::AdminClient;
use crate::config::Config;
use crate::server::{run, Listeners, ServerError};

const STABLE_MODEL: &str = "sim-stable-2024-08-06";
const CANDIDATE_MODEL: &str = "sim-candidate-2024-11-20";
const TOKEN: &str = "demo-admin-token";
/// Requests per second the traffic generator aims for.
const RATE: u64 = 40;

const PROMPTS: &[&str] = &[
    "Where is my order 1234?",
    "How do I reset my password?",
    "Can I change the delivery address of an order?",
    "What is your refund policy for damaged items?",
    "My package says delivered but I never got it.",
    "Do you ship to Canada?",
    "How long does express shipping take?",
    "Can I cancel my subscription online?",
    "Why was my card declined?",
    "How do I update my billing details?",
    "Is there a warranty on electronics?",
    "Can I return a gift without a receipt?",
];

fn config(dir: &std::path::Path, sim: &str, port: u16) -> String {
    let admin_port = if port == 0 { 0 } else { port + 1 };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
upstream_timeout_secs = 30
[admin]
listen = "127.0.0.1:{admin_port}"
[store]
path = "{db}"
[upstreams.simulated]
base_url = "{sim}"
default = true
[routes.support-bot]
model = "support-bot"
phase = "shadow"
share = 0.5
sticky_key = "header:x-user-id"
[routes.support-bot.stable]
label = "v3"
upstream = "simulated"
model = "{STABLE_MODEL}"
system_prompt = "You are a concise support assistant."
params = {{ temperature = 0.2 }}
[routes.support-bot.candidate]
label = "v4"
upstream = "simulated"
model = "{CANDIDATE_MODEL}"
system_prompt = "You are a concise, friendly support assistant."
[routes.support-bot.shadow]
max_inflight = 64
max_rps = 100
[routes.support-bot.scoring]
noise_floor_share = 0.3
[routes.support-bot.rollback]
threshold = 0.8
window = 40
min_samples = 20
max_error_rate = 0.2
"#,
        db = dir.join("understudy.db").display(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Runs the demo. `exit`: stop once the scenario has played out (for tests) instead of
/// serving until `shutdown`.
pub async fn demo(
    port: u16,
    exit: bool,
    shutdown: impl std::future::Future<Output = ()>,
    out: impl Fn(&str) + Send + Sync + 'static,
) -> Result<(), DemoError> {
    let setup = |e: std::io::Error| DemoError::Setup(e.to_string());
    let dir = tempfile_dir().map_err(setup)?;
    let sim = SimUpstream::new(Behavior {
        style: Style::Benign,
        ..Behavior::default()
    });
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.map_err(setup)?;
    let sim_url = format!("http://{}", sim_listener.local_addr().map_err(setup)?);
    let text = config(dir.path(), &sim_url, port);
    let config = Config::parse(&text, dir.path()).map_err(|e| {
        DemoError::Setup(format!(
            "demo config: {}",
            e.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| DemoError::Setup(format!("cannot listen on {addr}: {e} (try --port)")))
    };
    let listeners = Listeners {
        proxy: bind(config.server.listen).await?,
        admin: bind(config.admin.listen).await?,
    };
    let proxy = format!("http://{}", listeners.proxy.local_addr().map_err(setup)?);
    let admin = format!("http://{}", listeners.admin.local_addr().map_err(setup)?);

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn({
        let sim = Arc::clone(&sim);
        let stop = stop.clone();
        async move {
            sim.serve(sim_listener, async move { stop.cancelled().await })
                .await
        }
    });
    let server = tasks.spawn({
        let stop = stop.clone();
        async move {
            let secret = |k: &str| (k == "UNDERSTUDY_ADMIN_TOKEN").then(|| TOKEN.to_string());
            run(
                config,
                listeners,
                secret,
                async move { stop.cancelled().await },
            )
            .await
        }
    });
    let out = Arc::new(out);
    out(&format!(
        "understudy demo: proxy {proxy}  admin {admin}  (metrics at {admin}/metrics)"
    ));
    out(&format!("  try: curl -s {proxy}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"support-bot\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"));
    out(&format!(
        "  or:  UNDERSTUDY_ADMIN_URL={admin} UNDERSTUDY_ADMIN_TOKEN={TOKEN} understudy status"
    ));

    let traffic_on = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    tasks.spawn(traffic(
        proxy.clone(),
        Arc::clone(&traffic_on),
        Arc::clone(&sent),
        stop.clone(),
    ));

    let scenario = scenario(&admin, &sim, Arc::clone(&out));
    tokio::pin!(shutdown);
    let played = tokio::select! {
        r = scenario => Some(r),
        () = &mut shutdown => None,
    };
    match played {
        Some(Ok(())) if !exit => {
            out(&format!(
                "traffic continues; proxy and {admin}/metrics stay up until Ctrl-C"
            ));
            shutdown.await;
        }
        Some(Err(e)) => out(&format!("demo scenario stopped: {e}")),
        _ => {}
    }
    traffic_on.store(false, Ordering::Relaxed);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    match server.await {
        Ok(r) => r?,
        Err(e) => return Err(DemoError::Setup(format!("server task: {e}"))),
    }
    out(&format!(
        "demo done: {} requests sent",
        sent.load(Ordering::Relaxed)
    ));
    Ok(())
}

fn tempfile_dir() -> std::io::Result<TempDir> {
    let base = std::env::temp_dir().join(format!(
        "understudy-demo-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&base)?;
    Ok(TempDir(base))
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Chat requests at about `RATE` per second from a few dozen users until stopped.
async fn traffic(
    proxy: String,
    on: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let client = client();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let inflight = TaskTracker::new();
    let mut n: u64 = 0;
    while on.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        n += 1;
        let prompt = PROMPTS[(n as usize * 7) % PROMPTS.len()];
        let body =
            json!({"model": "support-bot", "messages": [{"role": "user", "content": prompt}]});
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{proxy}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-user-id", format!("user-{}", n % 50))
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else { continue };
        let client = client.clone();
        let sent = Arc::clone(&sent);
        inflight.spawn(async move {
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    inflight.close();
    inflight.wait().await;
}

/// Walks the candidate through the phases, degrades it, and waits for the rollback, printing
/// a status line every second.
async fn scenario(admin: &str, sim: &SimUpstream, out: Arc<impl Fn(&str)>) -> Result<(), String> {
    let admin = AdminClient::new(admin, Some(TOKEN));
    let admin = &admin;
    let started = Instant::now();
    let status = || async {
        let v = admin
            .route("support-bot")
            .await
            .map_err(|e| e.to_string())?;
        let f = |k: &str| {
            v[k].as_f64()
                .map_or("  -  ".to_string(), |x| format!("{x:.3}"))
        };
        let line = format!(
            "[{:>4.1}s] phase {:<8} share {:.2}  serving #{}  quality {}  noise floor {}  samples {:>3}",
            started.elapsed().as_secs_f64(),
            v["phase"].as_str().unwrap_or("?"),
            v["share"].as_f64().unwrap_or(0.0),
            v["serving"],
            f("quality"),
            f("noise_floor"),
            v["samples"],
        );
        Ok::<_, String>((v, line))
    };
    let promote = |phase: &'static str, share: f64| async move {
        admin
            .change(
                "support-bot",
                "promote",
                json!({"phase": phase, "share": share}),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    // (seconds after start, step)
    let mut steps: Vec<(f64, &str)> = vec![(10.0, "canary"), (20.0, "promoted"), (28.0, "degrade")];
    steps.reverse();
    out("shadow: stable v3 serves everything; half the requests are mirrored to candidate v4 and scored");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (v, line) = status().await?;
        out(&line);
        if v["phase"] == "stable" && v["candidate"].is_null() {
            let events = v["events"].as_array().cloned().unwrap_or_default();
            let reason = events
                .iter()
                .rev()
                .find(|e| e["kind"] == "rolled_back")
                .map(|e| {
                    format!(
                        "trigger {} ({})",
                        e["trigger"].as_str().unwrap_or("?"),
                        e["reason"].as_str().unwrap_or("")
                    )
                });
            out(&format!(
                "rolled back by itself after {:.0}s: stable #{} serves again, {}",
                started.elapsed().as_secs_f64(),
                v["serving"],
                reason.unwrap_or_default()
            ));
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(90) {
            return Err("no rollback within 90 s".into());
        }
        if let Some(&(at, step)) = steps.last() {
            if started.elapsed().as_secs_f64() >= at {
                steps.pop();
                match step {
                    "canary" => {
                        promote("canary", 0.3).await?;
                        out("canary: candidate v4 now answers 30% of users (sticky by x-user-id); stable is mirrored on those requests");
                    }
                    "promoted" => {
                        promote("promoted", 0.5).await?;
                        out("promoted: candidate v4 answers everyone; stable is mirrored on half the requests and stays the rollback target");
                    }
                    _ => {
                        sim.set_behavior(
                            CANDIDATE_MODEL,
                            Behavior {
                                style: Style::Unrelated,
                                ..Behavior::default()
                            },
                        );
                        out("the candidate degrades: its answers drift off topic. Watch quality fall...");
                    }
                }
            }
        }
    }
}
