//! The safe direction never depends on the disk. With a store that cannot be written (a wrapper
//! of the SQLite store that fails writes on demand, as a full disk does, injected through
//! `run_with_store`), or whose file was moved away while running, a rollback (admin or
//! Alertmanager) still takes effect for the next request; the failure shows in `/readyz`, the
//! metrics and the route view; risky changes are refused with 503; the webhook answers 503 until
//! its rollback is durable; and once the store can be written again the queued rollback is
//! written, so a restart on the same store keeps it. Also: one server per store file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::{eventually, post, send, Reply, Server, Sim, TOKEN};
use understudy::store::{
    EventRecord, Loaded, SampleList, SqliteStore, Store, StoreError, Transition,
};
use understudy::Config;
use understudy_sim::Behavior;

/// The candidate serves everything until it is rolled back; nothing is mirrored.
fn toml() -> String {
    support::config().default_upstream("sim").routes(
        r#"
[routes.bot]
model = "support-bot"
phase = "promoted"
share = 0.0

[routes.bot.stable]
upstream = "sim"
model = "sim-stable-2024-08-06"

[routes.bot.candidate]
upstream = "sim"
model = "sim-candidate-2024-11-20"

[routes.bot.rollback]
auto = false
"#,
    )
}

/// The SQLite store, whose writes fail with ENOSPC while `full` is set (reads still work, as on
/// a full disk).
struct Faulty {
    inner: SqliteStore,
    full: Arc<AtomicBool>,
}

impl Faulty {
    fn refuse(&self) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: self.inner.path().to_path_buf(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
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

fn config(dir: &Path, sim: &str) -> Config {
    let text = toml()
        .replace("{SIM}", sim)
        .replace("{DIR}", dir.to_str().unwrap());
    Config::parse(&text, dir).unwrap_or_else(|e| panic!("{}", e[0]))
}

fn db(dir: &Path) -> PathBuf {
    dir.join("understudy.db")
}

/// A server on the faulty store in `dir`, and its switch.
async fn start_faulty(dir: &Path, sim: &str) -> (Server, Arc<AtomicBool>) {
    let full = Arc::new(AtomicBool::new(false));
    let store = Faulty {
        inner: SqliteStore::open(&db(dir)).unwrap(),
        full: Arc::clone(&full),
    };
    let server =
        Server::start_config_with_store(config(dir, sim), &[], Some(Box::new(store))).await;
    // Started: the configuration's state is committed before the switch is touched.
    eventually(5, "the server answers", || ready(&server)).await;
    (server, full)
}

/// The release that served one proxied request.
async fn served_by(server: &Server) -> String {
    let body = json!({"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&format!("{}/v1/chat/completions", server.proxy), &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-understudy-release").unwrap().to_string()
}

async fn admin(server: &Server, path: &str, body: Value) -> Reply {
    post(
        &format!("{}{path}", server.admin),
        &body,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
}

async fn get(url: String) -> Reply {
    send(Method::GET, &url, &[], Bytes::new()).await
}

async fn route(server: &Server) -> Value {
    get(format!("{}/admin/routes/bot", server.admin))
        .await
        .json()
}

async fn ready(server: &Server) -> bool {
    get(format!("{}/readyz", server.admin)).await.status == 200
}

fn alert() -> Value {
    let now = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(1))
        .to_string();
    json!({
        "version": "4", "groupKey": "{}:{understudy_route=\"bot\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "understudy", "groupLabels": {"understudy_route": "bot"},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "UnderstudyQualityBelowThreshold", "understudy_route": "bot"},
            "annotations": {"summary": "quality 0.41 below 0.8 on bot"},
            "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": "a1b2c3"
        }]
    })
}

/// After a restart on the same store: the candidate stays rolled back, its rollback recorded
/// once.
async fn assert_rolled_back_after_restart(dir: &Path, sim: &str, trigger: &str) {
    let server = Server::start_config(config(dir, sim), &[]).await;
    assert_eq!(served_by(&server).await, "1");
    let r = route(&server).await;
    assert_eq!(r["phase"], "stable", "{r}");
    assert!(r["candidate"].is_null(), "{r}");
    assert_eq!(r["releases"][1]["state"], "rolled_back", "{r}");
    assert_eq!(r["releases"][1]["rolled_back"]["trigger"], trigger, "{r}");
    let rollbacks = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rolled_back")
        .count();
    assert_eq!(rollbacks, 1, "written once: {r}");
    assert_eq!(r["store"]["state"], "ok", "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn rollback_takes_effect_while_the_store_cannot_be_written_and_is_written_after() {
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, full) = start_faulty(dir.path(), &sim.url).await;
    assert_eq!(served_by(&server).await, "2");
    assert!(ready(&server).await);
    assert_eq!(server.metric("understudy_store_healthy").await, 1.0);
    assert_eq!(
        server
            .metric(r#"understudy_store_errors_total{op="commit"}"#)
            .await,
        0.0
    );

    full.store(true, Ordering::SeqCst);
    let r = admin(
        &server,
        "/admin/routes/bot/rollback",
        json!({"reason": "bad"}),
    )
    .await;
    // Accepted: in effect, not yet durable.
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["durable"], false, "{v}");
    assert_eq!(v["serving"], 1, "{v}");
    assert_eq!(v["store"]["state"], "failing", "{v}");
    assert_eq!(v["store"]["pending"], 1, "{v}");
    assert!(
        v["store"]["reason"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{v}"
    );
    // The very next request is served by stable.
    assert_eq!(served_by(&server).await, "1");
    // Not ready, and why.
    let r = get(format!("{}/readyz", server.admin)).await;
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("store failing") && r.text().contains("not yet durable"),
        "{}",
        r.text()
    );
    // The proxy listener keeps serving and stays ready: it serves correctly from memory.
    assert_eq!(get(format!("{}/readyz", server.proxy)).await.status, 200);
    let m = server.metrics().await;
    assert!(support::metric_value(&m, r#"understudy_store_errors_total{op="commit"}"#) >= 1.0);
    assert_eq!(support::metric_value(&m, "understudy_store_healthy"), 0.0);
    assert_eq!(
        support::metric_value(&m, "understudy_store_pending_changes"),
        1.0
    );
    assert_eq!(
        support::metric_value(
            &m,
            r#"understudy_rollbacks_total{route="bot",trigger="manual"}"#
        ),
        1.0
    );
    // The history shows the rollback, and the status view says the store is failing.
    let detail = route(&server).await;
    let last = detail["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "rolled_back", "{detail}");
    assert_eq!(detail["store"]["state"], "failing", "{detail}");
    // Risky changes are refused while the store is failing.
    let r = admin(
        &server,
        "/admin/routes/bot/releases",
        json!({"upstream": "sim", "model": "sim-next-2025-01-01"}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "store_unavailable",
        "{}",
        r.text()
    );
    // The retry timer keeps trying, and counts each failure.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server
            .metric(r#"understudy_store_errors_total{op="commit"}"#)
            .await
            >= 2.0
    );

    // The disk has room again: the queued rollback is written, the store is ready again.
    full.store(false, Ordering::SeqCst);
    eventually(5, "ready after the store recovers", || ready(&server)).await;
    assert_eq!(server.metric("understudy_store_healthy").await, 1.0);
    assert_eq!(server.metric("understudy_store_pending_changes").await, 0.0);
    assert_eq!(route(&server).await["store"]["state"], "ok");
    // Risky changes are accepted again.
    let r = admin(
        &server,
        "/admin/routes/bot/releases",
        json!({"upstream": "sim", "model": "sim-next-2025-01-01"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["durable"], true);
    let r = admin(
        &server,
        "/admin/routes/bot/rollback",
        json!({"reason": "not now"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.shutdown().await;

    // Durable: a restart on the same store keeps both rollbacks, each written once.
    let server = Server::start_config(config(dir.path(), &sim.url), &[]).await;
    let r = route(&server).await;
    assert!(r["candidate"].is_null(), "{r}");
    let states: Vec<&str> = r["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["stable", "rolled_back", "rolled_back"], "{r}");
    let kinds: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| *k == "rolled_back")
        .collect();
    assert_eq!(kinds, ["rolled_back", "rolled_back"], "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn promote_is_refused_while_the_store_is_failing() {
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, full) = start_faulty(dir.path(), &sim.url).await;
    full.store(true, Ordering::SeqCst);
    // The first write to fail: 503, and nothing changed.
    let promote = json!({"phase": "canary", "share": 0.5});
    let r = admin(&server, "/admin/routes/bot/promote", promote.clone()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "store_unavailable");
    assert_eq!(route(&server).await["phase"], "promoted");
    assert_eq!(served_by(&server).await, "2");
    assert!(!ready(&server).await);
    // Known failing: refused without trying, finalize too.
    for (action, body) in [("promote", promote.clone()), ("finalize", json!({}))] {
        let r = admin(&server, &format!("/admin/routes/bot/{action}"), body).await;
        assert_eq!(r.status, 503, "{action}: {}", r.text());
    }
    // The store recovers (found by the timer's probe write): promote goes through.
    full.store(false, Ordering::SeqCst);
    eventually(5, "ready after the store recovers", || ready(&server)).await;
    let r = admin(&server, "/admin/routes/bot/promote", promote).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["phase"], "canary");
    server.shutdown().await;
}

#[tokio::test]
async fn alertmanager_gets_a_5xx_until_its_rollback_is_durable() {
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, full) = start_faulty(dir.path(), &sim.url).await;
    full.store(true, Ordering::SeqCst);
    let r = admin(&server, "/admin/alertmanager", alert()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["alerts"][0]["outcome"], "rolled_back", "{v}");
    assert_eq!(v["alerts"][0]["durable"], false, "{v}");
    // In effect at once.
    assert_eq!(served_by(&server).await, "1");
    // Alertmanager retries: the repeat finds no candidate, but the rollback is still not
    // durable, so it is still a 5xx.
    let r = admin(&server, "/admin/alertmanager", alert()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["alerts"][0]["outcome"], "no_candidate");
    assert_eq!(
        server
            .metric(r#"understudy_rollbacks_total{route="bot",trigger="alert"}"#)
            .await,
        1.0
    );
    full.store(false, Ordering::SeqCst);
    eventually(5, "ready after the store recovers", || ready(&server)).await;
    let r = admin(&server, "/admin/alertmanager", alert()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alerts"][0]["durable"], true);
    server.shutdown().await;
    assert_rolled_back_after_restart(dir.path(), &sim.url, "alert").await;
}

#[tokio::test]
async fn a_store_file_moved_away_is_noticed_and_nothing_is_written_into_it() {
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_config(config(dir.path(), &sim.url), &[]).await;
    assert!(ready(&server).await);
    let path = db(dir.path());
    let away = dir.path().join("elsewhere.db");
    std::fs::rename(&path, &away).unwrap();
    // The timer's check notices within a second or so, before any write.
    eventually(5, "not ready once the file is gone", || async {
        !ready(&server).await
    })
    .await;
    let text = get(format!("{}/readyz", server.admin)).await.text();
    assert!(text.contains("removed"), "{text}");
    assert!(
        server
            .metric(r#"understudy_store_errors_total{op="check"}"#)
            .await
            >= 1.0
    );
    // A rollback takes effect, but is not acknowledged as durable.
    let r = admin(&server, "/admin/routes/bot/rollback", json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(served_by(&server).await, "1");
    // Nothing was written into the moved file (nor its WAL, still under the old name).
    assert_eq!(
        mentions(&[&away, &wal(&path)], "manual rollback"),
        0,
        "a rollback was written into a file nobody reads"
    );
    // The file back in place: the rollback is written to it.
    std::fs::rename(&away, &path).unwrap();
    eventually(5, "ready once the file is back", || ready(&server)).await;
    server.shutdown().await;
    assert_rolled_back_after_restart(dir.path(), &sim.url, "manual").await;
}

fn wal(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

/// Occurrences of `needle` in the bytes of `files` (the server holds the store's lock, so the
/// files are read raw).
fn mentions(files: &[&Path], needle: &str) -> usize {
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|bytes| {
            bytes
                .windows(needle.len())
                .filter(|w| *w == needle.as_bytes())
                .count()
        })
        .sum()
}

#[tokio::test]
async fn a_second_server_on_the_same_store_is_refused() {
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_config(config(dir.path(), &sim.url), &[]).await;
    assert!(ready(&first).await);
    // In this process: run returns the error before serving.
    let mut second = Server::start_config(config(dir.path(), &sim.url), &[]).await;
    let err = tokio::time::timeout(Duration::from_secs(10), second.task.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .expect_err("a second server on the same store started");
    let message = err.to_string();
    let path = db(dir.path()).display().to_string();
    assert!(
        message.contains(&path) && message.contains("in use by another understudy"),
        "{message}"
    );
    // Another process: `understudy serve` exits non-zero, naming the file.
    let file = dir.path().join("understudy.toml");
    std::fs::write(
        &file,
        toml()
            .replace("{SIM}", &sim.url)
            .replace("{DIR}", dir.path().to_str().unwrap()),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..200 {
        exited = child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if exited.is_none() {
        child.kill().unwrap();
        panic!("a second process on the same store kept running");
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&path) && stderr.contains("in use by another understudy"),
        "{stderr}"
    );
    // The first one is untouched, and the store is free once it stops.
    assert_eq!(served_by(&first).await, "2");
    first.shutdown().await;
    let again = Server::start_config(config(dir.path(), &sim.url), &[]).await;
    assert!(ready(&again).await);
    again.shutdown().await;
}
