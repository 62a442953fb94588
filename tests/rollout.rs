//! The automatic rollout (`[routes.NAME.rollout]`) against the simulated upstream, with
//! durations compressed to seconds: a benign candidate walks every step to finalize by itself;
//! a candidate that degrades at its canary step is rolled back there; pause holds, resume
//! continues, skip advances, a manual promote pauses; the rollout's state survives a restart;
//! progress and the reason a step waits are in the admin API, `understudy status`, the metrics
//! and the event log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::*;
use understudy::store::{
    EventRecord, Loaded, SampleList, SqliteStore, Store, StoreError, Transition,
};
use understudy_sim::{Behavior, Style};

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";

/// Route `bot` (stable and candidate on the simulator) walking `steps`.
fn config(steps: &str) -> String {
    config_with(steps, "auto = true")
}

/// [`config`] with one more `[routes.bot.rollback]` line.
fn config_with(steps: &str, rollback: &str) -> String {
    support::config()
        .upstream_timeout_secs(5)
        .store("r.db")
        .routes(&format!(
            r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 0.05
[routes.bot.stable]
upstream = "sim"
model = "{STABLE}"
[routes.bot.candidate]
upstream = "sim"
model = "{CANDIDATE}"
[routes.bot.shadow]
max_rps = 10000
max_inflight = 256
[routes.bot.scoring]
noise_floor_share = 0.3
[routes.bot.rollback]
window = 40
min_samples = 20
threshold = 0.8
max_error_rate = 0.1
{rollback}
[routes.bot.rollout]
steps = [
{steps}
]
"#
        ))
}

/// Shadow on every request, then canary and promoted, each for a second, then finalize.
const WALK: &str = r#"
  { phase = "shadow",   share = 1.0, min_samples = 20 },
  { phase = "canary",   share = 0.5, min_duration = "1s", min_samples = 10 },
  { phase = "promoted", share = 1.0, min_duration = "1s", min_samples = 10 },
  { finalize = true },"#;

fn style(s: Style) -> Behavior {
    Behavior {
        style: s,
        ..Behavior::default()
    }
}

async fn setup(steps: &str) -> (Sim, Server, tempfile::TempDir) {
    let sim = Sim::start(style(Style::Benign)).await;
    let (server, dir) = Server::start(&config(steps), &sim.url).await;
    (sim, server, dir)
}

/// `n` chat requests, 4 at a time, each from one of 40 users; all must be answered 200.
async fn traffic(server: &Server, n: usize) {
    let url = format!("{}/v1/chat/completions", server.proxy);
    let prompts = [
        "Where is my order?",
        "Reset my password",
        "Refund policy?",
        "Ship to Canada?",
        "Card declined",
        "Warranty terms",
    ];
    let c = client();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (url, c) = (url.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(4) {
                let body = request_for(
                    "/v1/chat/completions",
                    "support-bot",
                    prompts[i % prompts.len()],
                    false,
                );
                let user = format!("u{}", i % 40);
                let r = send_with(
                    &c,
                    Method::POST,
                    &url,
                    &[("content-type", "application/json"), ("x-user-id", &user)],
                    Bytes::from(body.to_string()),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn route(server: &Server) -> Value {
    let auth = format!("Bearer {TOKEN}");
    send(
        Method::GET,
        &format!("{}/admin/routes/bot", server.admin),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await
    .json()
}

async fn rollout(server: &Server, action: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    post(
        &format!("{}/admin/routes/bot/rollout", server.admin),
        &json!({ "action": action }),
        &[("authorization", &auth)],
    )
    .await
}

/// Sends traffic in batches until `done(route)` holds, or fails after `secs` seconds showing
/// the route.
async fn drive_until(server: &Server, secs: u64, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = route(server).await;
        if done(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; route: {:#}",
            r["rollout"]
        );
        traffic(server, 24).await;
    }
}

fn events(r: &Value, kind: &str) -> Vec<Value> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// Runs the real binary's admin command (off the runtime's thread, which serves the server).
async fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
    cmd.args(args)
        .env("UNDERSTUDY_ADMIN_URL", &server.admin)
        .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn a_benign_candidate_walks_every_step_to_finalize_by_itself() {
    let (_sim, server, _dir) = setup(WALK).await;
    // Before any traffic: step 1, moved to its phase and share, waiting for samples.
    let r = route(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["share"].as_f64()),
        (Some("shadow"), Some(1.0))
    );
    let ro = &r["rollout"];
    assert_eq!(ro["state"], "running", "{ro}");
    assert_eq!(
        (ro["step"].as_u64(), ro["steps"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(ro["reason"], "samples", "{ro}");
    let waiting: Vec<&str> = ro["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        waiting.contains(&"waiting: 0/20 samples in this step"),
        "{waiting:?}"
    );
    // The same in `understudy status` and the gauges.
    let (ok, out, err) = cli(&server, &["status", "bot"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("bot: rollout step 1/4 (shadow 1), running")
            && out.contains("waiting: 0/20 samples in this step"),
        "{out}"
    );
    eventually(5, "the waiting gauge", || async {
        let m = server.metrics().await;
        metric_value_or_absent(
            &m,
            r#"understudy_rollout_waiting{reason="samples",route="bot"}"#,
        ) == Some(1.0)
            && metric_value(&m, r#"understudy_rollout_step{route="bot"}"#) == 1.0
    })
    .await;

    // Traffic only: it walks shadow -> canary -> promoted -> finalized.
    let started = Instant::now();
    drive_until(&server, 90, "the candidate finalized", |r| {
        r["candidate"].is_null()
    })
    .await;
    println!("walked to finalize in {:?}", started.elapsed());
    let r = route(&server).await;
    assert_eq!(r["phase"], "stable", "{r:#}");
    assert_eq!(r["stable"]["version"], 2, "the candidate is the new stable");
    assert_eq!(r["rollout"]["state"], "finished");
    let steps: Vec<(String, f64)> = events(&r, "rollout_step")
        .iter()
        .map(|e| {
            (
                e["phase"].as_str().unwrap().to_string(),
                e["share"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("shadow".to_string(), 1.0),
            ("canary".to_string(), 0.5),
            ("promoted".to_string(), 1.0)
        ]
    );
    // Each advance names the evidence it rests on.
    for e in &events(&r, "rollout_step")[1..] {
        let reason = e["reason"].as_str().unwrap();
        assert!(reason.contains("quality lower bound"), "{reason}");
    }
    let fin = events(&r, "finalized");
    assert_eq!(fin.len(), 1);
    assert!(
        fin[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("rollout step 4/4 (finalize): quality lower bound"),
        "{}",
        fin[0]
    );
    assert!(events(&r, "rolled_back").is_empty());
    eventually(5, "the step gauge back to 0", || async {
        server
            .metric(r#"understudy_rollout_step{route="bot"}"#)
            .await
            == 0.0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn no_step_advances_without_evidence_that_the_candidate_is_good() {
    // A bad candidate the judge only reports (auto = false): nothing says it is bad enough to
    // roll back by itself, and nothing says it is good, so step 1 holds.
    let sim = Sim::start(style(Style::Benign)).await;
    sim.sim.set_behavior(CANDIDATE, style(Style::Unrelated));
    let (server, _dir) = Server::start(&config_with(WALK, "auto = false"), &sim.url).await;
    traffic(&server, 120).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = route(&server).await;
    let ro = &r["rollout"];
    assert_eq!(
        (r["phase"].as_str(), ro["step"].as_u64()),
        (Some("shadow"), Some(1)),
        "{ro}"
    );
    assert!(ro["step_samples"].as_u64().unwrap() >= 20, "{ro}");
    // The judge's window restarts each time it reports (auto = false), so the step waits on
    // the window's samples or on the quality's lower bound; either way not on its own samples.
    let reason = ro["reason"].as_str().unwrap();
    assert!(["samples", "quality"].contains(&reason), "{ro}");
    let waiting: Vec<&str> = ro["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        waiting
            .iter()
            .any(|w| w.starts_with("waiting: quality lower bound 0.")
                || w.starts_with("waiting: no quality yet")),
        "{waiting:?}"
    );
    assert!(
        !waiting.iter().any(|w| w.contains("in this step")),
        "{waiting:?}"
    );
    eventually(5, "the waiting gauge", || async {
        let m = server.metrics().await;
        ["samples", "quality"].iter().any(|r| {
            metric_value(
                &m,
                &format!(r#"understudy_rollout_waiting{{reason="{r}",route="bot"}}"#),
            ) == 1.0
        })
    })
    .await;
    assert!(events(&r, "rollout_step").len() == 1, "only the start");
    server.shutdown().await;
}

#[tokio::test]
async fn a_candidate_that_degrades_at_the_canary_step_is_rolled_back_there() {
    let (sim, server, _dir) = setup(
        r#"
  { phase = "shadow",   share = 1.0, min_samples = 20 },
  { phase = "canary",   share = 0.5, min_duration = "1h" },
  { phase = "promoted", share = 1.0, min_duration = "1h" },
  { finalize = true },"#,
    )
    .await;
    drive_until(&server, 60, "the canary step", |r| r["phase"] == "canary").await;
    let r = route(&server).await;
    assert_eq!(r["rollout"]["step"], 2);
    assert_eq!(r["rollout"]["reason"], "duration", "{}", r["rollout"]);
    // Now the candidate goes bad: the judge rolls it back, at this step.
    sim.sim.set_behavior(CANDIDATE, style(Style::Unrelated));
    drive_until(&server, 60, "the rollback", |r| r["candidate"].is_null()).await;
    let r = route(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["serving"].as_u64()),
        (Some("stable"), Some(1))
    );
    let rb = events(&r, "rolled_back");
    assert_eq!(rb.len(), 1, "{rb:?}");
    assert_eq!(rb[0]["trigger"], "quality");
    assert_eq!(r["rollout"]["state"], "rolled_back");
    assert_eq!(r["rollout"]["step"], 2);
    assert_eq!(r["rollout"]["phase"], "canary");
    let phases: Vec<String> = events(&r, "rollout_step")
        .iter()
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(phases, ["shadow", "canary"], "never promoted");
    eventually(5, "no rollout runs", || async {
        let m = server.metrics().await;
        metric_value(&m, r#"understudy_rollout_step{route="bot"}"#) == 0.0
            && metric_value(
                &m,
                r#"understudy_rollbacks_total{route="bot",trigger="quality"}"#,
            ) == 1.0
    })
    .await;
    // Asking a rollout with no candidate: a conflict, said.
    let reply = rollout(&server, "skip").await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    server.shutdown().await;
}

#[tokio::test]
async fn pause_holds_resume_continues_skip_advances() {
    let (_sim, server, _dir) = setup(
        r#"
  { phase = "shadow",   share = 1.0, min_samples = 20 },
  { phase = "canary",   share = 0.5, min_duration = "1h" },
  { phase = "promoted", share = 1.0, min_duration = "1h" },
  { finalize = true },"#,
    )
    .await;
    // Without the token: 401 and nothing changes; a bad action: 400.
    let anon = post(
        &format!("{}/admin/routes/bot/rollout", server.admin),
        &json!({"action": "pause"}),
        &[],
    )
    .await;
    assert_eq!(anon.status, 401);
    assert_eq!(rollout(&server, "faster").await.status, 400);

    let paused = rollout(&server, "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    assert_eq!(paused.json()["rollout"]["state"], "paused");
    assert_eq!(
        paused.json()["rollout"]["waiting"][0],
        "paused by an operator"
    );
    // Enough evidence for step 1, but paused: it holds (several rollout ticks).
    traffic(&server, 120).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = route(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["rollout"]["step"].as_u64()),
        (Some("shadow"), Some(1))
    );
    assert!(r["samples"].as_u64().unwrap() >= 20, "{r}");
    assert_eq!(
        server
            .metric(r#"understudy_rollout_waiting{reason="paused",route="bot"}"#)
            .await,
        1.0
    );
    // Resume: it continues to step 2 on the evidence (the CLI this time).
    let (ok, out, err) = cli(&server, &["rollout", "bot", "resume"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("bot: rollout step 1/4"), "{out}");
    drive_until(&server, 60, "step 2", |r| r["rollout"]["step"] == 2).await;
    assert_eq!(route(&server).await["phase"], "canary");

    // A manual promote takes the wheel: the rollout pauses; resume puts the candidate back.
    let auth = format!("Bearer {TOKEN}");
    let promoted = post(
        &format!("{}/admin/routes/bot/promote", server.admin),
        &json!({"phase": "promoted", "share": 0.2}),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(promoted.status, 200);
    let v = promoted.json();
    assert_eq!(
        (v["phase"].as_str(), v["rollout"]["state"].as_str()),
        (Some("promoted"), Some("paused"))
    );
    let resumed = rollout(&server, "resume").await.json();
    assert_eq!(resumed["phase"], "canary");
    assert_eq!(resumed["share"], 0.5);
    assert_eq!(resumed["rollout"]["state"], "running");

    // Skip: the 1 h steps are passed over at once, by an operator.
    let skipped = rollout(&server, "skip").await.json();
    assert_eq!(
        (
            skipped["phase"].as_str(),
            skipped["rollout"]["step"].as_u64()
        ),
        (Some("promoted"), Some(3))
    );
    let (ok, _, err) = cli(&server, &["rollout", "bot", "skip"]).await;
    assert!(ok, "{err}");
    let r = route(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["stable"]["version"].as_u64()),
        (Some("stable"), Some(2))
    );
    let reasons: Vec<String> = events(&r, "rollout_step")
        .iter()
        .chain(events(&r, "finalized").iter())
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|x| x == "step 3/4 (promoted 1): skipped by an operator at step 2"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|x| x == "rollout step 4/4 (finalize): skipped by an operator at step 3"),
        "{reasons:?}"
    );
    assert_eq!(events(&r, "rollout_paused").len(), 2);
    assert_eq!(events(&r, "rollout_resumed").len(), 2);

    // A new candidate starts the rollout again at step 1.
    let published = post(
        &format!("{}/admin/routes/bot/releases", server.admin),
        &json!({"label": "v3", "upstream": "sim", "model": "candidate-2025-01-01"}),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    let v = published.json();
    assert_eq!(
        (v["phase"].as_str(), v["share"].as_f64()),
        (Some("shadow"), Some(1.0))
    );
    assert_eq!(
        (
            v["rollout"]["state"].as_str(),
            v["rollout"]["step"].as_u64(),
            v["rollout"]["candidate"].as_u64()
        ),
        (Some("running"), Some(1), Some(3))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rollout_state_survives_a_restart() {
    let sim = Sim::start(style(Style::Benign)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        r#"
  { phase = "shadow",   share = 1.0, min_samples = 20 },
  { phase = "canary",   share = 0.5, min_duration = "1h" },
  { finalize = true },"#,
    )
    .replace("{SIM}", &sim.url)
    .replace("{DIR}", dir.path().to_str().unwrap());
    // The finalize step must follow a promoted one: the file is refused, by key.
    let refused = understudy::Config::parse(&text, dir.path()).unwrap_err();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]
            .to_string()
            .contains("routes.bot.rollout.steps.2.finalize: finalize must follow a promoted step"),
        "{}",
        refused[0]
    );
    let text = text.replace(
        "  { finalize = true },",
        "  { phase = \"promoted\", share = 1.0, min_duration = \"1h\" },",
    );
    let start = || async {
        let config = understudy::Config::parse(&text, dir.path()).unwrap();
        Server::start_config(config, &[]).await
    };
    let server = start().await;
    drive_until(&server, 60, "step 2", |r| r["rollout"]["step"] == 2).await;
    assert_eq!(rollout(&server, "pause").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = route(&server).await["rollout"].clone();
    assert_eq!(before["state"], "paused");
    server.shutdown().await;

    let server = start().await;
    let r = route(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["share"].as_f64()),
        (Some("canary"), Some(0.5))
    );
    let after = &r["rollout"];
    assert_eq!(
        (
            after["state"].as_str(),
            after["step"].as_u64(),
            after["candidate"].as_u64()
        ),
        (Some("paused"), Some(2), Some(2))
    );
    assert_eq!(
        after["step_elapsed_secs"], before["step_elapsed_secs"],
        "the paused clock stands still across the restart"
    );
    // Resumed after the restart, the step's clock goes on from where it was.
    let resumed = rollout(&server, "resume").await.json();
    assert_eq!(resumed["rollout"]["state"], "running");
    assert!(
        resumed["rollout"]["step_elapsed_secs"].as_u64() >= before["step_elapsed_secs"].as_u64()
    );
    server.shutdown().await;
    // And the store holds the last word: a third start is still at step 2, running.
    let server = start().await;
    let r = route(&server).await;
    assert_eq!(
        (
            r["rollout"]["state"].as_str(),
            r["rollout"]["step"].as_u64()
        ),
        (Some("running"), Some(2))
    );
    server.shutdown().await;
}

/// The SQLite store, whose writes fail with ENOSPC while `full` is set (as on a full disk).
struct Faulty {
    inner: SqliteStore,
    full: Arc<AtomicBool>,
}

impl Faulty {
    fn refuse(&self) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: self.inner.path().to_path_buf(),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        Ok(())
    }
}

impl Store for Faulty {
    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }
    fn probe(&mut self) -> Result<(), StoreError> {
        self.refuse()?;
        self.inner.probe()
    }
    fn load(&self) -> Result<Loaded, StoreError> {
        self.inner.load()
    }
    fn commit(&mut self, t: &Transition) -> Result<(), StoreError> {
        self.refuse()?;
        self.inner.commit(t)
    }
    fn events(&self, route: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.inner.events(route, limit)
    }
    fn replace_samples(
        &mut self,
        route: &str,
        list: SampleList,
        samples: &[String],
    ) -> Result<(), StoreError> {
        self.refuse()?;
        self.inner.replace_samples(route, list, samples)
    }
    fn samples(&self, route: &str, list: SampleList) -> Result<Vec<String>, StoreError> {
        self.inner.samples(route, list)
    }
}

#[tokio::test]
async fn a_step_is_written_before_it_is_taken_so_a_failing_store_holds_it() {
    let sim = Sim::start(style(Style::Benign)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(WALK)
        .replace("{SIM}", &sim.url)
        .replace("{DIR}", dir.path().to_str().unwrap());
    let config = understudy::Config::parse(&text, dir.path()).unwrap();
    let full = Arc::new(AtomicBool::new(false));
    let store = Faulty {
        inner: SqliteStore::open(&dir.path().join("r.db")).unwrap(),
        full: Arc::clone(&full),
    };
    let server = Server::start_config_with_store(config, &[], Some(Box::new(store))).await;
    // Started (its first state committed): then the disk fills. Step 1's evidence comes in,
    // but the step is not taken.
    assert_eq!(route(&server).await["rollout"]["step"], 1);
    full.store(true, Ordering::SeqCst);
    traffic(&server, 120).await;
    eventually(10, "the step ready but held", || async {
        server
            .metric(r#"understudy_rollout_waiting{reason="store",route="bot"}"#)
            .await
            == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = route(&server).await;
    assert_eq!(
        (r["phase"].as_str(), r["rollout"]["step"].as_u64()),
        (Some("shadow"), Some(1)),
        "{}",
        r["rollout"]
    );
    assert_eq!(r["rollout"]["reason"], "store", "{}", r["rollout"]);
    assert_eq!(
        r["rollout"]["waiting"][0],
        "waiting: the store cannot be written; the step is taken once it can"
    );
    // An operator's change is refused the same way, and says why.
    let paused = rollout(&server, "pause").await;
    assert_eq!(paused.status, 503, "{}", paused.text());
    // The disk has room again: the step is written, then taken.
    full.store(false, Ordering::SeqCst);
    drive_until(&server, 30, "step 2", |r| r["rollout"]["step"] == 2).await;
    let r = route(&server).await;
    assert_eq!(r["phase"], "canary");
    let phases: Vec<String> = events(&r, "rollout_step")
        .iter()
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(phases, ["shadow", "canary"], "the store has the step");
    server.shutdown().await;
}

/// A reload (`POST /admin/reload`) that configures a rollout starts it for the running
/// candidate; one that edits the current step puts the candidate at the step's phase and share.
#[tokio::test]
async fn a_reload_starts_a_rollout_and_applies_edited_steps() {
    let sim = Sim::start(style(Style::Benign)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("understudy.toml");
    let write = |rollout: Option<&str>| {
        let mut text = config("  { phase = \"canary\", share = 0.5, min_duration = \"1h\" },")
            .replace("{SIM}", &sim.url)
            .replace("{DIR}", dir.path().to_str().unwrap());
        let at = text.find("[routes.bot.rollout]").unwrap();
        text.truncate(at);
        if let Some(steps) = rollout {
            text.push_str(&format!("[routes.bot.rollout]\nsteps = [\n{steps}\n]\n"));
        }
        std::fs::write(&path, text).unwrap();
    };
    write(None);
    let server = binary::Binary::start(binary::serve_command(&path, &[])).await;
    let auth = format!("Bearer {TOKEN}");
    let get = || async {
        send(
            Method::GET,
            &format!("{}/admin/routes/bot", server.admin),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .json()
    };
    let reload = || async {
        let r = send(
            Method::POST,
            &format!("{}/admin/reload", server.admin),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let r = get().await;
    assert!(r.get("rollout").is_none(), "no rollout configured: {r}");
    assert_eq!(r["phase"], "shadow");

    write(Some(
        "  { phase = \"canary\", share = 0.5, min_duration = \"1h\" },\n  \
         { phase = \"promoted\", share = 1.0, min_duration = \"1h\" },\n  { finalize = true },",
    ));
    reload().await;
    let r = get().await;
    assert_eq!(
        (r["phase"].as_str(), r["share"].as_f64()),
        (Some("canary"), Some(0.5))
    );
    assert_eq!(
        (
            r["rollout"]["state"].as_str(),
            r["rollout"]["step"].as_u64(),
            r["rollout"]["steps"].as_u64()
        ),
        (Some("running"), Some(1), Some(3))
    );

    write(Some(
        "  { phase = \"shadow\", share = 1.0, min_duration = \"1h\" },\n  \
         { phase = \"promoted\", share = 1.0, min_duration = \"1h\" },\n  { finalize = true },",
    ));
    reload().await;
    let r = get().await;
    assert_eq!(
        (r["phase"].as_str(), r["share"].as_f64()),
        (Some("shadow"), Some(1.0))
    );
    assert_eq!(r["rollout"]["step"], 1);
    let last = events(&r, "rollout_step").pop().unwrap();
    assert_eq!(
        last["reason"],
        "step 1/3 (shadow 1): the configuration changed the step"
    );
    server.stop().await;
}
