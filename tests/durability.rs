//! Durability against the real `understudy` binary. Random release changes go through the admin
//! API while the process is killed with SIGKILL at random moments (right after an acknowledged
//! rollback, with a change in flight, between calls) and restarted on the same store; after
//! each restart the route must be exactly what the acknowledged changes made it (or, when a
//! change was cut off in flight, what that change would have made it), and no rolled-back
//! candidate may come back. A second test measures how soon a rollback takes effect: the very
//! next proxied request must be served by stable.
//!
//! `DURABILITY_SEED=N` replays a run (the seed is printed at the start).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::{Sim, TOKEN};
use understudy_sim::Behavior;

/// Kill-and-restart cycles of the durability test.
const ROUNDS: u32 = 25;
/// Rollbacks timed by the latency test.
const ROLLBACKS: usize = 9;
/// Bound on the wait for a started process to print its addresses.
const STARTUP: Duration = Duration::from_secs(20);
/// Bound on any one HTTP call.
const CALL: Duration = Duration::from_secs(10);
const ROUTE: &str = "bot";

/// One route with a candidate; its upstream is never called (nothing listens on port 9).
fn durability_config() -> String {
    support::config()
        .store("store/understudy.db")
        .without_sim()
        .upstream("nowhere", "base_url = \"http://127.0.0.1:9\"")
        .default_upstream("nowhere")
        .routes(
            r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 0.1

[routes.bot.stable]
label = "v1"
upstream = "nowhere"
model = "config-stable-2024-08-06"

[routes.bot.candidate]
label = "v2"
upstream = "nowhere"
model = "config-candidate-2024-11-20"
"#,
        )
}

/// The candidate serves everything (phase promoted, nothing mirrored) until it is rolled back.
fn latency_config() -> String {
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

// ---------------------------------------------------------------------------------------------
// The process

/// Every line the test's `understudy` processes wrote on stderr, for failure messages.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    /// The last `n` lines.
    fn tail(&self, n: usize) -> String {
        let text = self.0.lock().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics with `msg` and the end of the processes' stderr.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- understudy stderr (last 60 lines) ---\n{}",
            self.tail(60)
        )
    }
}

/// A running `understudy serve`, killed (SIGKILL) when dropped.
struct Understudy {
    child: Child,
    proxy: String,
    admin: String,
}

impl Understudy {
    /// Starts the binary and waits until it prints `proxy=ADDR admin=ADDR`.
    async fn start(config: &Path, log: &Log) -> Understudy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
            .env(support::pg::PASSWORD_ENV, support::pg::PASSWORD)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", env!("CARGO_BIN_EXE_understudy")));
        log.push(&format!("=== understudy serve, pid {} ===", child.id()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = addresses(&line) {
                    let _ = tx.send(addrs);
                }
                lines.push(&line);
            }
        });
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok((proxy, admin)) = rx.try_recv() {
                return Understudy {
                    child,
                    proxy: format!("http://{proxy}"),
                    admin: format!("http://{admin}"),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await; // let the reader catch up
                log.fail(&format!("understudy exited ({status}) before serving"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                log.fail(&format!(
                    "understudy did not print its addresses within {STARTUP:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Understudy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The (proxy, admin) addresses of the `understudy serving proxy=... admin=...` log line.
fn addresses(line: &str) -> Option<(String, String)> {
    if !line.contains("understudy serving") {
        return None;
    }
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(key))
            .map(str::to_string)
    };
    Some((field("proxy=")?, field("admin=")?))
}

/// The config file, written into `dir`, with `{DIR}` and `{SIM}` filled in.
fn write_config(dir: &Path, template: &str, sim: &str) -> PathBuf {
    let path = dir.join("understudy.toml");
    let text = template
        .replace("{DIR}", dir.to_str().unwrap())
        .replace("{SIM}", sim);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// HTTP

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// When the response head arrived.
    head_at: Instant,
}

impl Answer {
    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One request; an error when the connection fails or the call takes longer than [`CALL`].
async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let head_at = Instant::now();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
            head_at,
        })
    };
    tokio::time::timeout(CALL, exchange)
        .await
        .map_err(|_| format!("no answer within {CALL:?}"))?
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// `GET /admin/routes/bot`, which must answer.
async fn detail(client: &HttpClient, admin: &str, log: &Log) -> Value {
    let url = format!("{admin}/admin/routes/{ROUTE}");
    let auth = bearer();
    let a = call(client, Method::GET, &url, &[("authorization", &auth)], None)
        .await
        .unwrap_or_else(|e| log.fail(&format!("GET {url}: {e}")));
    if a.status != StatusCode::OK {
        log.fail(&format!("GET {url}: {} {:?}", a.status, a.body));
    }
    a.json().unwrap_or_else(|e| log.fail(&e))
}

// ---------------------------------------------------------------------------------------------
// The model of acknowledged changes

/// A change made through the admin API.
#[derive(Clone, Debug)]
enum Op {
    Publish {
        label: String,
        upstream: &'static str,
        model: String,
    },
    Promote {
        phase: &'static str,
        share: Option<f64>,
    },
    Rollback {
        to: Option<u32>,
        reason: Option<String>,
    },
    Finalize,
}

impl Op {
    fn action(&self) -> &'static str {
        match self {
            Op::Publish { .. } => "releases",
            Op::Promote { .. } => "promote",
            Op::Rollback { .. } => "rollback",
            Op::Finalize => "finalize",
        }
    }

    /// The JSON body, None for an empty one.
    fn body(&self) -> Option<Value> {
        match self {
            Op::Publish {
                label,
                upstream,
                model,
            } => Some(json!({
                "label": label,
                "upstream": upstream,
                "model": model,
                "system_prompt": "You answer briefly.",
                "params": { "temperature": 0.2 },
            })),
            Op::Promote { phase, share } => {
                let mut b = json!({ "phase": phase });
                if let Some(s) = share {
                    b["share"] = json!(s);
                }
                Some(b)
            }
            Op::Rollback {
                to: None,
                reason: None,
            } => None,
            Op::Rollback { to, reason } => {
                let mut b = json!({});
                if let Some(v) = to {
                    b["to"] = json!(v);
                }
                if let Some(r) = reason {
                    b["reason"] = json!(r);
                }
                Some(b)
            }
            Op::Finalize => None,
        }
    }

    async fn send(&self, client: &HttpClient, admin: &str) -> Result<Answer, String> {
        let url = format!("{admin}/admin/routes/{ROUTE}/{}", self.action());
        let auth = bearer();
        let body = self.body();
        call(
            client,
            Method::POST,
            &url,
            &[("authorization", &auth)],
            body.as_ref(),
        )
        .await
    }
}

/// What the route is: its state and every release it has had.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    phase: String,
    share: f64,
    stable: u32,
    candidate: Option<u32>,
    /// version → model name.
    releases: BTreeMap<u32, String>,
    /// version → reason, for the releases marked rolled back.
    rolled_back: BTreeMap<u32, String>,
}

impl Model {
    /// The model after `op`, or the HTTP status refusing it.
    fn apply(&self, op: &Op) -> Result<Model, u16> {
        let mut m = self.clone();
        match op {
            Op::Publish { model, .. } => {
                let version = m.releases.keys().max().map_or(1, |v| v + 1);
                m.releases.insert(version, model.clone());
                m.candidate = Some(version);
                m.phase = "shadow".into();
            }
            Op::Promote { phase, share } => {
                if m.candidate.is_none() {
                    return Err(409);
                }
                m.phase = phase.to_string();
                m.share = share.unwrap_or(m.share);
            }
            Op::Rollback { to, reason } => {
                let target = match to {
                    Some(v) if !m.releases.contains_key(v) => return Err(404),
                    Some(v) => *v,
                    None => m.stable,
                };
                if m.candidate.is_none() && target == m.stable {
                    return if to.is_some() { Ok(m) } else { Err(409) };
                }
                if let Some(c) = m.candidate.filter(|c| *c != target) {
                    let reason = reason.clone().unwrap_or_else(|| "manual rollback".into());
                    m.rolled_back.insert(c, reason);
                }
                m.rolled_back.remove(&target);
                m.stable = target;
                m.candidate = None;
                m.phase = "stable".into();
            }
            Op::Finalize => match m.candidate {
                Some(c) if m.phase == "promoted" => {
                    m.stable = c;
                    m.candidate = None;
                    m.phase = "stable".into();
                }
                _ => return Err(409),
            },
        }
        Ok(m)
    }

    /// A release's state as the admin API names it.
    fn state_of(&self, version: u32) -> &'static str {
        if Some(version) == self.candidate {
            "candidate"
        } else if version == self.stable {
            "stable"
        } else if self.rolled_back.contains_key(&version) {
            "rolled_back"
        } else {
            "retired"
        }
    }

    /// The route as `GET /admin/routes/{route}` shows it; also checks that each release's
    /// `state` agrees with the route's stable and candidate.
    fn from_detail(v: &Value) -> Result<Model, String> {
        let (phase, share, stable, candidate) = route_state(v)?;
        let mut m = Model {
            phase,
            share,
            stable,
            candidate,
            releases: BTreeMap::new(),
            rolled_back: BTreeMap::new(),
        };
        let list = v["releases"].as_array().ok_or("no releases list")?;
        let mut states = Vec::new();
        for r in list {
            let version = r["version"].as_u64().ok_or("release without version")? as u32;
            let model = r["model"].as_str().ok_or("release without model")?;
            m.releases.insert(version, model.to_string());
            if !r["rolled_back"].is_null() {
                let reason = r["rolled_back"]["reason"].as_str().unwrap_or_default();
                if r["rolled_back"]["trigger"] != "manual" {
                    return Err(format!("release #{version}: trigger is not manual: {r}"));
                }
                m.rolled_back.insert(version, reason.to_string());
            }
            states.push((version, r["state"].as_str().unwrap_or_default().to_string()));
        }
        for (version, state) in states {
            if state != m.state_of(version) {
                return Err(format!(
                    "release #{version} is listed as {state:?}, but the route says {:?}",
                    m.state_of(version)
                ));
            }
        }
        Ok(m)
    }

    /// Checks a 200 answer of a change (the route JSON) against this model.
    fn check_answer(&self, v: &Value) -> Result<(), String> {
        let got = route_state(v)?;
        let want = (self.phase.clone(), self.share, self.stable, self.candidate);
        if got != want {
            return Err(format!(
                "answered (phase, share, stable, candidate) = {got:?}, expected {want:?}"
            ));
        }
        let model_of = |key: &str, version: Option<u32>| {
            let want = version
                .and_then(|v| self.releases.get(&v))
                .map(String::as_str);
            let got = v[key]["model"].as_str();
            (got == want)
                .then_some(())
                .ok_or_else(|| format!("answered {key} model {got:?}, expected {want:?}"))
        };
        model_of("stable", Some(self.stable))?;
        model_of("candidate", self.candidate)
    }
}

/// (phase, share, stable version, candidate version) of a route JSON.
fn route_state(v: &Value) -> Result<(String, f64, u32, Option<u32>), String> {
    let phase = v["phase"]
        .as_str()
        .ok_or_else(|| format!("no phase in {v}"))?;
    let share = v["share"]
        .as_f64()
        .ok_or_else(|| format!("no share in {v}"))?;
    let stable = v["stable"]["version"]
        .as_u64()
        .ok_or_else(|| format!("no stable version in {v}"))? as u32;
    let candidate = match &v["candidate"] {
        Value::Null => None,
        c => Some(
            c["version"]
                .as_u64()
                .ok_or_else(|| format!("bad candidate in {v}"))? as u32,
        ),
    };
    Ok((phase.to_string(), share, stable, candidate))
}

/// A random change, applicable or not. `tag` makes names and reasons unique.
fn random_op(m: &Model, rng: &mut StdRng, tag: &str) -> Op {
    let newest = m.releases.keys().max().copied().unwrap_or(1);
    match rng.random_range(0..100) {
        0..22 => Op::Publish {
            label: format!("l{tag}"),
            upstream: "nowhere",
            model: format!("durable-{tag}-{:08x}", rng.random::<u32>()),
        },
        22..50 => Op::Promote {
            phase: ["shadow", "canary", "promoted"][rng.random_range(0..3)],
            share: rng
                .random_bool(0.7)
                .then(|| f64::from(rng.random_range(0..=100_u32)) / 100.0),
        },
        50..80 => Op::Rollback {
            // Now and then one past the newest release: 404.
            to: rng
                .random_bool(0.5)
                .then(|| rng.random_range(1..=newest + 1)),
            reason: rng.random_bool(0.7).then(|| format!("reason {tag}")),
        },
        _ => Op::Finalize,
    }
}

/// Sends `op`, which must be answered as the model predicts; returns the model after it.
async fn perform(
    client: &HttpClient,
    admin: &str,
    m: &Model,
    op: &Op,
    log: &Log,
    stats: &mut Stats,
) -> Model {
    let answer = op
        .send(client, admin)
        .await
        .unwrap_or_else(|e| log.fail(&format!("{op:?}: {e}")));
    acknowledged(m, op, &answer, log, stats)
}

/// The model after an answered `op`, after checking the answer against the model.
fn acknowledged(m: &Model, op: &Op, answer: &Answer, log: &Log, stats: &mut Stats) -> Model {
    let body = String::from_utf8_lossy(&answer.body);
    match m.apply(op) {
        Ok(next) => {
            if answer.status != StatusCode::OK {
                log.fail(&format!(
                    "{op:?} on {m:?}: expected 200, got {} {body}",
                    answer.status
                ));
            }
            let v = answer.json().unwrap_or_else(|e| log.fail(&e));
            if let Err(e) = next.check_answer(&v) {
                log.fail(&format!("{op:?} on {m:?}: {e}\nanswer: {body}"));
            }
            stats.acknowledged += 1;
            next
        }
        Err(code) => {
            if answer.status.as_u16() != code {
                log.fail(&format!(
                    "{op:?} on {m:?}: expected {code}, got {} {body}",
                    answer.status
                ));
            }
            stats.refused += 1;
            m.clone()
        }
    }
}

/// Checks the state found after a restart against the acknowledged model `acked`, where
/// `in_flight` is a change whose outcome is unknown (cut off by the kill). Returns the state
/// found and whether it includes the in-flight change.
fn check_restart(acked: &Model, in_flight: Option<&Op>, found: &Model, log: &Log) -> bool {
    for (version, model) in &acked.releases {
        match found.releases.get(version) {
            Some(m) if m == model => {}
            other => log.fail(&format!(
                "acknowledged release #{version} ({model}) is {other:?} after the restart"
            )),
        }
    }
    for version in acked.rolled_back.keys() {
        if found.candidate == Some(*version) {
            log.fail(&format!(
                "release #{version}, rolled back (acknowledged), is the candidate again after the restart: {found:?}"
            ));
        }
        let explicitly_restored =
            matches!(in_flight, Some(Op::Rollback { to: Some(v), .. }) if v == version);
        if found.stable == *version && !explicitly_restored {
            log.fail(&format!(
                "release #{version}, rolled back (acknowledged), is stable after the restart: {found:?}"
            ));
        }
    }
    if found == acked {
        return false;
    }
    let would = in_flight.and_then(|op| acked.apply(op).ok());
    if would.as_ref() == Some(found) {
        return true;
    }
    log.fail(&format!(
        "state after the restart matches neither the acknowledged one nor that of the change in flight\n\
         found:        {found:?}\nacknowledged: {acked:?}\nin flight:    {in_flight:?}\nwould give:   {would:?}"
    ))
}

#[derive(Default)]
struct Stats {
    kills: u32,
    after_rollback: u32,
    in_flight: u32,
    /// In flight, but answered before the kill.
    answered: u32,
    /// In flight, unanswered, found committed after the restart.
    committed: u32,
    between_calls: u32,
    acknowledged: u32,
    refused: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &durability_config(), "");
    survive_sigkill(&config, ROUNDS).await;
}

/// The same model against the PostgreSQL store (a throwaway cluster): the state
/// is the database's, so a killed replica's acknowledged changes must be there after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_on_postgres() {
    let cluster = support::pg::Cluster::start();
    let url = cluster.database("durability");
    let dir = tempfile::tempdir().unwrap();
    let text = support::pg::on_postgres(&durability_config(), &url);
    let config = write_config(dir.path(), &text, "");
    survive_sigkill(&config, ROUNDS).await;
}

async fn survive_sigkill(config: &Path, rounds: u32) {
    let seed = std::env::var("DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("durability: seed {seed} (replay with DURABILITY_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let log = Log::default();
    log.push(&format!("seed {seed}"));
    let mut stats = Stats::default();
    let started = Instant::now();

    let mut acked: Option<Model> = None;
    let mut in_flight: Option<Op> = None;
    // The last round only restarts and checks what the previous kill left.
    for round in 0..=rounds {
        let mut proc = Understudy::start(config, &log).await;
        let admin = proc.admin.clone();
        let client = support::client();
        let found = Model::from_detail(&detail(&client, &admin, &log).await)
            .unwrap_or_else(|e| log.fail(&format!("round {round}: {e}")));
        let mut m = match acked.take() {
            None => {
                let expected = Model {
                    phase: "shadow".into(),
                    share: 0.1,
                    stable: 1,
                    candidate: Some(2),
                    releases: BTreeMap::from([
                        (1, "config-stable-2024-08-06".to_string()),
                        (2, "config-candidate-2024-11-20".to_string()),
                    ]),
                    rolled_back: BTreeMap::new(),
                };
                if found != expected {
                    log.fail(&format!(
                        "first start: {found:?}, expected the configuration: {expected:?}"
                    ));
                }
                found
            }
            Some(acked) => {
                if check_restart(&acked, in_flight.take().as_ref(), &found, &log) {
                    stats.committed += 1;
                }
                found
            }
        };
        if round == rounds {
            acked = Some(m);
            break;
        }

        // Round 0 rolls back the configuration's own candidate first thing, so that every
        // restart after it reads a config that still names a rolled-back candidate.
        let changes = if round == 0 {
            0
        } else {
            rng.random_range(0..=8)
        };
        for k in 0..changes {
            let op = random_op(&m, &mut rng, &format!("{round}.{k}"));
            m = perform(&client, &admin, &m, &op, &log, &mut stats).await;
        }
        match round % 3 {
            0 => {
                // Kill right after an acknowledged rollback of a candidate.
                if m.candidate.is_none() {
                    let op = Op::Publish {
                        label: format!("l{round}"),
                        upstream: "nowhere",
                        model: format!("durable-{round}-{:08x}", rng.random::<u32>()),
                    };
                    m = perform(&client, &admin, &m, &op, &log, &mut stats).await;
                }
                let candidate = m.candidate.unwrap();
                let others: Vec<u32> = m
                    .releases
                    .keys()
                    .copied()
                    .filter(|v| *v != candidate)
                    .collect();
                let op = Op::Rollback {
                    to: rng
                        .random_bool(0.5)
                        .then(|| others[rng.random_range(0..others.len())]),
                    reason: rng.random_bool(0.8).then(|| format!("reason {round}")),
                };
                m = perform(&client, &admin, &m, &op, &log, &mut stats).await;
                assert!(m.rolled_back.contains_key(&candidate));
                proc.kill();
                stats.after_rollback += 1;
            }
            1 => {
                // Kill 0-5 ms after sending a change that would change the state.
                let op = (0..100)
                    .map(|i| random_op(&m, &mut rng, &format!("{round}.f{i}")))
                    .find(|op| m.apply(op).is_ok_and(|next| next != m))
                    .expect("some change applies");
                let delay = Duration::from_micros(rng.random_range(0..=5000));
                // The killer sleeps on a thread of its own: the runtime's timer ticks in ms.
                let killer = tokio::task::spawn_blocking(move || {
                    std::thread::sleep(delay);
                    proc.kill();
                });
                let answer = op.send(&client, &admin).await;
                killer.await.unwrap();
                match answer {
                    Ok(a) => {
                        m = acknowledged(&m, &op, &a, &log, &mut stats);
                        stats.answered += 1;
                    }
                    Err(_) => in_flight = Some(op),
                }
                stats.in_flight += 1;
            }
            _ => {
                // Kill between calls, idle.
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..=3000))).await;
                proc.kill();
                stats.between_calls += 1;
            }
        }
        stats.kills += 1;
        acked = Some(m);
    }

    let m = acked.unwrap();
    println!(
        "durability: survived {} SIGKILLs in {:.1}s: {} right after an acknowledged rollback, \
         {} with a request in flight ({} answered before the kill, {} committed but unanswered, \
         {} cut off before committing), {} between calls",
        stats.kills,
        started.elapsed().as_secs_f64(),
        stats.after_rollback,
        stats.in_flight,
        stats.answered,
        stats.committed,
        stats.in_flight - stats.answered - stats.committed,
        stats.between_calls,
    );
    println!(
        "durability: {} changes acknowledged, {} refused as predicted; the route ended with {} \
         releases, {} of them rolled back",
        stats.acknowledged,
        stats.refused,
        m.releases.len(),
        m.rolled_back.len(),
    );
}

// ---------------------------------------------------------------------------------------------
// Rollback latency

/// A chat request for the route's alias; returns the answer (checked 200) and the release that
/// served it.
async fn chat(client: &HttpClient, proxy: &str, log: &Log) -> (Answer, u32) {
    let url = format!("{proxy}/v1/chat/completions");
    let body = json!({"model": "support-bot",
        "messages": [{"role": "user", "content": "How do I reset my password?"}]});
    let a = call(client, Method::POST, &url, &[], Some(&body))
        .await
        .unwrap_or_else(|e| log.fail(&format!("POST {url}: {e}")));
    if a.status != StatusCode::OK {
        log.fail(&format!("POST {url}: {} {:?}", a.status, a.body));
    }
    let release = a
        .headers
        .get("x-understudy-release")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| log.fail(&format!("no x-understudy-release in {:?}", a.headers)));
    (a, release)
}

/// A change that must succeed; returns the route JSON.
async fn admin_change(client: &HttpClient, admin: &str, op: &Op, log: &Log) -> Value {
    let a = op
        .send(client, admin)
        .await
        .unwrap_or_else(|e| log.fail(&format!("{op:?}: {e}")));
    if a.status != StatusCode::OK {
        log.fail(&format!("{op:?}: {} {:?}", a.status, a.body));
    }
    a.json().unwrap_or_else(|e| log.fail(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_takes_effect_on_the_very_next_request() {
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &latency_config(), &sim.url);
    let log = Log::default();
    let proc = Understudy::start(&config, &log).await;
    let client = support::client();
    let mut latencies = Vec::new();
    for i in 0..ROLLBACKS {
        let route = if i == 0 {
            detail(&client, &proc.admin, &log).await
        } else {
            let publish = Op::Publish {
                label: format!("c{i}"),
                upstream: "sim",
                model: format!("sim-candidate-{i}"),
            };
            admin_change(&client, &proc.admin, &publish, &log).await;
            let promote = Op::Promote {
                phase: "promoted",
                share: Some(0.0),
            };
            admin_change(&client, &proc.admin, &promote, &log).await
        };
        let (phase, _, stable, candidate) = route_state(&route).unwrap_or_else(|e| log.fail(&e));
        assert_eq!(phase, "promoted", "round {i}: {route}");
        let candidate = candidate.unwrap_or_else(|| log.fail(&format!("no candidate: {route}")));
        let (_, before) = chat(&client, &proc.proxy, &log).await;
        assert_eq!(
            before, candidate,
            "the promoted candidate serves before the rollback"
        );

        let to = (i % 2 == 1).then_some(stable);
        let rollback = Op::Rollback {
            to,
            reason: Some(format!("latency {i}")),
        };
        let back = admin_change(&client, &proc.admin, &rollback, &log).await;
        let answered = Instant::now();
        let (a, after) = chat(&client, &proc.proxy, &log).await;
        latencies.push(a.head_at - answered);
        assert_eq!(
            route_state(&back).ok(),
            Some(("stable".to_string(), 0.0, stable, None)),
            "rollback {to:?} answered {back}"
        );
        assert_eq!(
            after, stable,
            "the request right after the rollback answer was served by #{after}, not stable #{stable}"
        );
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "rollback latency (rollback answered -> next request answered by stable), {} rollbacks: \
         min {:.2} ms, median {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(latencies[0]),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1]),
    );
}
