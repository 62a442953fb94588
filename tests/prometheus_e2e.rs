//! End to end with the real Prometheus stack. The shipped files (config/prometheus,
//! config/alertmanager, config/grafana) are checked with promtool and amtool as they are (the
//! rules' unit tests included), then copied with text substitutions only (ports, 1 s intervals,
//! 3 s `for:`, 1 s group wait), so what ships is what runs. Prometheus and Alertmanager run as
//! child processes against an in-process Understudy (an alert-only route, `auto = false`) and
//! the simulator. The live /metrics must pass `promtool check metrics`; then the candidate is
//! degraded and the test follows the chain: quality gauge, Prometheus alert, Alertmanager
//! webhook, rollback with trigger `alert`, and prints how long each step took (see them with
//! `--nocapture`). Last, every PromQL expression of the Grafana dashboard must return data from
//! the live Prometheus.
//!
//! Needs `prometheus`, `promtool`, `alertmanager` (Debian: `prometheus-alertmanager`) and
//! `amtool` on PATH; scripts/test.sh installs them. Without them the test fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::print_stdout
)] // test code: a failure is the test failing; it prints its timings

mod support;

use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use support::{client, metric_value, metric_value_or_absent, Server, Sim, TOKEN};
use understudy_sim::{Behavior, Style};

const ROUTE: &str = "bot";
const ALIAS: &str = "support-bot";
const CANDIDATE_MODEL: &str = "sim-candidate-2024-11-20";
const FIXED_MODEL: &str = "sim-candidate-2024-12-05";
const THRESHOLD: f64 = 0.8;
const QUALITY_ALERT: &str = "UnderstudyQualityBelowThreshold";
/// Values the test gives the dashboard's variables.
const DASHBOARD_VARIABLES: &[(&str, &str)] = &[
    ("${route}", ROUTE),
    ("$route", ROUTE),
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "5m"),
];

/// An alert-only route in shadow phase: everything mirrored, a large noise-floor share and a
/// small window so that quality is known within seconds.
fn config() -> String {
    support::config()
        .upstream_timeout_secs(10)
        .default_upstream("sim")
        .routes(ROUTES)
}

const ROUTES: &str = r#"
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 1.0

[routes.bot.stable]
label = "v1"
upstream = "sim"
model = "sim-stable-2024-08-06"
prices = { prompt_per_mtok = 2.5, completion_per_mtok = 10.0 }

[routes.bot.candidate]
label = "v2"
upstream = "sim"
model = "sim-candidate-2024-11-20"
prices = { prompt_per_mtok = 1.0, completion_per_mtok = 4.0 }

[routes.bot.shadow]
max_inflight = 64
max_rps = 500

[routes.bot.scoring]
noise_floor_share = 0.5

[routes.bot.rollback]
threshold = 0.8
window = 20
min_samples = 10
auto = false
"#;

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
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_candidate_is_rolled_back_through_prometheus_and_alertmanager() {
    let test_started = Instant::now();
    let tools = Tools::find();
    let shipped = Shipped::read();

    // The shipped files, as they are.
    shipped.check(&tools);

    // Understudy and the simulator.
    let sim = Sim::start(Behavior {
        style: Style::Benign,
        ..Behavior::default()
    })
    .await;
    let (server, dir) = Server::start(&config(), &sim.url).await;
    let admin_addr = server.admin.trim_start_matches("http://").to_string();

    // Their copies for this test, checked too, and the two servers.
    let (prom_port, am_port) = free_ports();
    let (prom_addr, am_addr) = (
        format!("127.0.0.1:{prom_port}"),
        format!("127.0.0.1:{am_port}"),
    );
    let work = dir.path().join("prometheus-stack");
    let files = shipped.template(&work, &admin_addr, &am_addr);
    files.check(&tools);
    let stack = Stack::start(&tools, &files, &work, &prom_addr, &am_addr, &server.admin);
    stack.wait_ready().await;

    // Traffic until the end; Prometheus sees the route and the candidate's quality.
    let traffic = Traffic::start(server.proxy.clone());
    stack
        .wait_until(
            30,
            "Prometheus to scrape the candidate's quality",
            || async {
                let q = stack
                    .query(&format!(r#"understudy_quality{{route="{ROUTE}"}}"#))
                    .await?;
                (!q.is_empty()).then_some(())
            },
        )
        .await;

    // The live exposition passes promtool's checks.
    let exposition = server.metrics().await;
    let (ok, out) = run_tool(
        &tools.promtool,
        &["check", "metrics"],
        Some(exposition.as_bytes()),
    );
    assert!(
        ok,
        "promtool check metrics found problems in Understudy's /metrics:\n{out}\n\n{exposition}"
    );

    // Healthy so far: the candidate is live and above the threshold; nothing fired.
    let before = stack.route().await;
    assert_eq!(before["phase"], "shadow", "{before:#}");
    assert!(!before["candidate"].is_null(), "{before:#}");
    assert!(
        rollbacks(&before).is_empty(),
        "rolled back early: {before:#}"
    );
    let quality = gauge(&server.metrics().await, "understudy_quality");
    assert!(
        quality.is_some_and(|q| q >= THRESHOLD),
        "a benign candidate should score at least {THRESHOLD}, got {quality:?}"
    );

    // Degrade the candidate; follow quality, alert and rollback.
    sim.sim.set_behavior(
        CANDIDATE_MODEL,
        Behavior {
            style: Style::Unrelated,
            ..Behavior::default()
        },
    );
    let degraded = Instant::now();
    let low = stack
        .wait_until(
            20,
            "Understudy's quality gauge to drop below the threshold",
            || {
                let server = &server;
                async move {
                    let q = gauge(&server.metrics().await, "understudy_quality")?;
                    (q < THRESHOLD).then_some(q)
                }
            },
        )
        .await;
    let t_low = degraded.elapsed();
    let alert =
        stack
            .wait_until(
                30,
                &format!("Prometheus to fire {QUALITY_ALERT}"),
                || async {
                    stack.alerts().await?.into_iter().find(|a| {
                        a["labels"]["alertname"] == QUALITY_ALERT && a["state"] == "firing"
                    })
                },
            )
            .await;
    let t_fired = degraded.elapsed();
    assert_eq!(alert["labels"]["understudy_route"], ROUTE, "{alert:#}");
    assert_eq!(
        alert["labels"]["understudy_action"], "rollback",
        "{alert:#}"
    );
    let event = stack
        .wait_until(30, "the route to be rolled back by the alert", || async {
            rollbacks(&stack.route().await).into_iter().next()
        })
        .await;
    let t_rolled_back = degraded.elapsed();

    // Rolled back by Alertmanager's webhook, with the alert's summary as the reason.
    assert_eq!(event["trigger"], "alert", "{event:#}");
    let reason = event["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("{QUALITY_ALERT}: candidate quality "))
            && reason.ends_with(&format!("on route {ROUTE}")),
        "reason {reason:?}"
    );
    let after = stack.route().await;
    assert_eq!(after["phase"], "stable", "{after:#}");
    assert!(after["candidate"].is_null(), "{after:#}");
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            &format!(r#"understudy_rollbacks_total{{route="{ROUTE}",trigger="alert"}}"#)
        ),
        1.0,
        "{metrics}"
    );
    let am_metrics = stack.get(&format!("{}/metrics", stack.am_url)).await;
    let sent = sum_samples(&am_metrics, "alertmanager_notifications_total", "webhook");
    let failed = sum_samples(
        &am_metrics,
        "alertmanager_notifications_failed_total",
        "webhook",
    );
    assert!(
        sent >= 1.0 && failed == 0.0,
        "Alertmanager webhook notifications: {sent} sent, {failed} failed"
    );

    // Prometheus sees the phase change (for the dashboard's annotation) before the next one.
    let stable = format!(r#"understudy_route_phase{{route="{ROUTE}",phase="stable"}} == 1"#);
    stack
        .wait_until(
            10,
            "Prometheus to see the route in phase stable",
            || async { (!stack.query(&stable).await?.is_empty()).then_some(()) },
        )
        .await;
    // Some upstream errors for the dashboard's error panel (no candidate now: nothing mirrored).
    for _ in 0..3 {
        let body = support::request_for("/v1/chat/completions", ALIAS, "Is this thing on?", false);
        let (status, text) = try_send(
            Method::POST,
            &format!("{}/v1/chat/completions", server.proxy),
            &[("content-type", "application/json"), ("x-sim-fault", "500")],
            body.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(status, 500, "{text}");
    }
    // A fixed candidate is published, so the quality panels have a live candidate again.
    let (status, text) = try_send(
        Method::POST,
        &format!("{}/admin/routes/{ROUTE}/releases", server.admin),
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {TOKEN}")),
        ],
        json!({"label": "v3", "upstream": "sim", "model": FIXED_MODEL,
               "prices": {"prompt_per_mtok": 1.0, "completion_per_mtok": 4.0}})
        .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");

    // Every expression of the dashboard returns data.
    let exprs = shipped.dashboard_queries();
    stack.wait_for_data(&exprs, 30).await;

    let (sent_requests, failed_requests) = traffic.stop().await;
    assert_eq!(
        failed_requests, 0,
        "client requests failed ({sent_requests} sent)"
    );
    println!(
        "degradation -> Understudy quality {low:.2} < {THRESHOLD}: {:.1} s",
        t_low.as_secs_f64()
    );
    println!(
        "degradation -> {QUALITY_ALERT} firing in Prometheus: {:.1} s",
        t_fired.as_secs_f64()
    );
    println!(
        "degradation -> rolled back by Alertmanager's webhook: {:.1} s",
        t_rolled_back.as_secs_f64()
    );
    println!(
        "{} dashboard expressions returned data; {sent_requests} client requests; whole test {:.1} s",
        exprs.len(),
        test_started.elapsed().as_secs_f64()
    );
    drop(stack);
    server.shutdown().await;
}

/// The four binaries, found on PATH.
struct Tools {
    prometheus: PathBuf,
    promtool: PathBuf,
    alertmanager: PathBuf,
    amtool: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            prometheus: find_tool(&["prometheus"]),
            promtool: find_tool(&["promtool"]),
            alertmanager: find_tool(&["alertmanager", "prometheus-alertmanager"]),
            amtool: find_tool(&["amtool"]),
        }
    }
}

fn find_tool(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{}` not found on PATH. This test needs the real Prometheus and Alertmanager: \
                 run scripts/test.sh, which installs them (Debian packages prometheus and \
                 prometheus-alertmanager)",
                names.join("` or `")
            )
        })
}

/// Runs a tool to completion (off the async workers), with `stdin` as its input.
fn run_tool(bin: &Path, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    tokio::task::block_in_place(|| {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
}

fn check_tool(bin: &Path, args: &[&str]) {
    let (ok, out) = run_tool(bin, args, None);
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    assert!(ok, "`{name} {}` failed:\n{out}", args.join(" "));
}

/// A configuration set: Prometheus' config, its rules (and their unit tests), Alertmanager's.
struct Files {
    prometheus: PathBuf,
    rules: PathBuf,
    /// Unit tests of the rules (shipped files only: they expect the shipped `for:`).
    rules_test: Option<PathBuf>,
    alertmanager: PathBuf,
}

impl Files {
    fn check(&self, tools: &Tools) {
        let s = |p: &Path| p.to_str().unwrap().to_string();
        check_tool(&tools.promtool, &["check", "config", &s(&self.prometheus)]);
        check_tool(&tools.promtool, &["check", "rules", &s(&self.rules)]);
        if let Some(tests) = &self.rules_test {
            check_tool(&tools.promtool, &["test", "rules", &s(tests)]);
        }
        check_tool(&tools.amtool, &["check-config", &s(&self.alertmanager)]);
    }
}

/// The shipped files and their text.
struct Shipped {
    files: Files,
    prometheus: String,
    rules: String,
    alertmanager: String,
    dashboard: Value,
}

impl Shipped {
    fn read() -> Shipped {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let files = Files {
            prometheus: config.join("prometheus/prometheus.yml"),
            rules: config.join("prometheus/understudy-rules.yml"),
            rules_test: Some(config.join("prometheus/understudy-rules.test.yml")),
            alertmanager: config.join("alertmanager/alertmanager.yml"),
        };
        let read =
            |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dashboard = config.join("grafana/understudy-dashboard.json");
        let dashboard = serde_json::from_str(&read(&dashboard))
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", dashboard.display()));
        Shipped {
            prometheus: read(&files.prometheus),
            rules: read(&files.rules),
            alertmanager: read(&files.alertmanager),
            dashboard,
            files,
        }
    }

    /// promtool and amtool accept the files; the dashboard reads from `${DS_PROMETHEUS}`.
    fn check(&self, tools: &Tools) {
        self.files.check(tools);
        let mut sources = Vec::new();
        walk(&self.dashboard, &mut |key, v| {
            if key == "datasource" && v.get("type").is_some_and(|t| t == "prometheus") {
                sources.push(v["uid"].clone());
            }
        });
        assert!(
            !sources.is_empty(),
            "the dashboard has no Prometheus queries"
        );
        assert!(
            sources.iter().all(|uid| uid == "${DS_PROMETHEUS}"),
            "every Prometheus datasource of the dashboard should be ${{DS_PROMETHEUS}}: {sources:?}"
        );
        let variables = self.dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
            "the dashboard should have a DS_PROMETHEUS datasource variable"
        );
    }

    /// Copies for this test under `dir`: the same files with the addresses and the durations
    /// replaced, nothing else.
    fn template(&self, dir: &Path, admin: &str, alertmanager: &str) -> Files {
        let prom_dir = dir.join("prometheus");
        let am_dir = dir.join("alertmanager");
        fs::create_dir_all(&prom_dir).unwrap();
        fs::create_dir_all(&am_dir).unwrap();
        let token_file = am_dir.join("understudy-admin-token");
        fs::write(&token_file, TOKEN).unwrap();

        let prometheus = Edit::new("prometheus.yml", &self.prometheus)
            .set("scrape_interval", "1s")
            .set("evaluation_interval", "1s")
            .replace("127.0.0.1:8081", admin)
            .replace("127.0.0.1:9093", alertmanager)
            .text;
        let alerts = self.rules.matches("- alert:").count();
        let rules = Edit::new("understudy-rules.yml", &self.rules)
            .set_n("for", "3s", alerts)
            .text;
        let am = Edit::new("alertmanager.yml", &self.alertmanager)
            .set("group_wait", "1s")
            .set("group_interval", "2s")
            .replace("127.0.0.1:8081", admin)
            .set("credentials_file", token_file.to_str().unwrap())
            .text;
        let files = Files {
            prometheus: prom_dir.join("prometheus.yml"),
            rules: prom_dir.join("understudy-rules.yml"),
            rules_test: None,
            alertmanager: am_dir.join("alertmanager.yml"),
        };
        fs::write(&files.prometheus, prometheus).unwrap();
        fs::write(&files.rules, rules).unwrap();
        fs::write(&files.alertmanager, am).unwrap();
        files
    }

    /// Every PromQL expression of the dashboard (panels, annotations, query variables), keyed by
    /// where it comes from, with the variables given concrete values.
    fn dashboard_queries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in self.dashboard["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let origin = format!("panel {:?} {}", p["title"], t["refId"]);
                out.push((origin, t["expr"].as_str().unwrap().to_string()));
            }
        }
        for a in self.dashboard["annotations"]["list"].as_array().unwrap() {
            if let Some(expr) = a["expr"].as_str() {
                out.push((format!("annotation {:?}", a["name"]), expr.to_string()));
            }
        }
        for v in self.dashboard["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            // label_values(METRIC, LABEL): the metric must exist with that label.
            let def = v["definition"].as_str().unwrap();
            let args = def
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.rsplit_once(','))
                .unwrap_or_else(|| panic!("variable {:?}: unexpected query {def}", v["name"]));
            let expr = format!("group by ({}) ({})", args.1.trim(), args.0.trim());
            out.push((format!("variable {:?}", v["name"]), expr));
        }
        assert!(out.len() >= 10, "too few dashboard expressions: {out:?}");
        for (origin, expr) in &mut out {
            for (var, value) in DASHBOARD_VARIABLES {
                *expr = expr.replace(var, value);
            }
            assert!(
                !expr.contains('$'),
                "{origin}: variable without a test value in {expr}"
            );
        }
        out
    }
}

/// Visits every key/value pair of a JSON document.
fn walk(v: &Value, f: &mut impl FnMut(&str, &Value)) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                f(k, x);
                walk(x, f);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// Text substitutions on a shipped file, each required to match.
struct Edit {
    name: &'static str,
    text: String,
}

impl Edit {
    fn new(name: &'static str, text: &str) -> Edit {
        Edit {
            name,
            text: text.to_string(),
        }
    }

    fn replace(mut self, from: &str, to: &str) -> Edit {
        assert!(
            self.text.contains(from),
            "shipped {} no longer contains {from:?}; the test derives its copy from it",
            self.name
        );
        self.text = self.text.replace(from, to);
        self
    }

    /// Sets the value of every `key:` line (at least one).
    fn set(self, key: &str, value: &str) -> Edit {
        let n = self.text.lines().filter(|l| is_key(l, key)).count();
        assert!(
            n > 0,
            "shipped {} has no `{key}:` line; the test derives its copy from it",
            self.name
        );
        self.set_n(key, value, n)
    }

    /// Sets the value of the `key:` lines, which must be exactly `n`.
    fn set_n(mut self, key: &str, value: &str, n: usize) -> Edit {
        let mut found = 0;
        let mut out = String::with_capacity(self.text.len());
        for line in self.text.lines() {
            if is_key(line, key) {
                found += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                let _ = writeln!(out, "{indent}{key}: {value}");
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert_eq!(
            found, n,
            "shipped {}: expected {n} `{key}:` lines, found {found}",
            self.name
        );
        self.text = out;
        self
    }
}

fn is_key(line: &str, key: &str) -> bool {
    line.trim_start()
        .strip_prefix(key)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// Two distinct loopback ports nobody listens on right now.
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A child process, killed (by its id) and reaped on drop, its output in a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc { name, child, log }
    }

    /// The end of its log.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus and Alertmanager, running.
struct Stack {
    procs: Mutex<Vec<Proc>>,
    prom_url: String,
    am_url: String,
    admin_url: String,
}

impl Stack {
    fn start(
        tools: &Tools,
        files: &Files,
        dir: &Path,
        prom_addr: &str,
        am_addr: &str,
        admin_url: &str,
    ) -> Stack {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let am = Proc::spawn(
            "alertmanager",
            &tools.alertmanager,
            &[
                format!("--config.file={}", path(&files.alertmanager)),
                format!("--storage.path={}", path(&dir.join("alertmanager/data"))),
                format!("--web.listen-address={am_addr}"),
                "--cluster.listen-address=".into(),
                "--log.level=debug".into(),
            ],
            dir.join("alertmanager.log"),
        );
        let prom = Proc::spawn(
            "prometheus",
            &tools.prometheus,
            &[
                format!("--config.file={}", path(&files.prometheus)),
                format!("--storage.tsdb.path={}", path(&dir.join("prometheus/data"))),
                format!("--web.listen-address={prom_addr}"),
                "--log.level=debug".into(),
            ],
            dir.join("prometheus.log"),
        );
        Stack {
            procs: Mutex::new(vec![am, prom]),
            prom_url: format!("http://{prom_addr}"),
            am_url: format!("http://{am_addr}"),
            admin_url: admin_url.to_string(),
        }
    }

    /// Waits until each expression has returned data at least once.
    async fn wait_for_data(&self, exprs: &[(String, String)], secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut pending = exprs.to_vec();
        loop {
            let mut still = Vec::new();
            for (origin, expr) in pending {
                if self.query(&expr).await.is_none_or(|r| r.is_empty()) {
                    still.push((origin, expr));
                }
            }
            pending = still;
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = pending.iter().map(|(o, e)| format!("{o}: {e}")).collect();
                let msg = format!("no data after {secs} s from:\n{}", list.join("\n"));
                self.fail(&msg).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_ready(&self) {
        for url in [&self.am_url, &self.prom_url] {
            self.wait_until(30, &format!("{url}/-/ready"), || async {
                let (status, _) = try_get(&format!("{url}/-/ready")).await.ok()?;
                (status == 200).then_some(())
            })
            .await;
        }
        self.wait_until(30, "Prometheus to scrape Understudy", || async {
            let up = self.query(r#"up{job="understudy"} == 1"#).await?;
            (!up.is_empty()).then_some(())
        })
        .await;
    }

    /// Polls `probe` until it gives a value, for at most `secs` seconds; fails with the state
    /// of everything if it never does, or at once if a child process exits.
    async fn wait_until<T, F, Fut>(&self, secs: u64, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if let Some(exited) = self.exited() {
                self.fail(&format!("waiting for {what}: {exited}")).await;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {secs} s waiting for {what}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn exited(&self) -> Option<String> {
        let mut procs = self.procs.lock().unwrap();
        procs.iter_mut().find_map(|p| {
            let status = p.child.try_wait().ok()??;
            Some(format!("{} exited ({status})", p.name))
        })
    }

    /// Panics with `msg`, the route's state, Prometheus' alerts and the children's logs.
    async fn fail(&self, msg: &str) -> ! {
        let route = try_get(&format!("{}/admin/routes/{ROUTE}", self.admin_url)).await;
        let alerts = try_get(&format!("{}/api/v1/alerts", self.prom_url)).await;
        let mut report =
            format!("{msg}\n\nroute {ROUTE}: {route:?}\nPrometheus alerts: {alerts:?}\n");
        for p in self.procs.lock().unwrap().iter() {
            let _ = write!(
                report,
                "\n--- {} log, last lines ---\n{}\n",
                p.name,
                p.log_tail()
            );
        }
        panic!("{report}");
    }

    /// An instant query's result vector; None while Prometheus cannot answer. A rejected
    /// expression fails the test.
    async fn query(&self, expr: &str) -> Option<Vec<Value>> {
        let url = format!("{}/api/v1/query?query={}", self.prom_url, encode(expr));
        let (status, body) = try_get(&url).await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        if v["status"] == "error" && v["errorType"] == "bad_data" {
            self.fail(&format!(
                "Prometheus rejected {expr}: {} ({status})",
                v["error"]
            ))
            .await;
        }
        v["data"]["result"].as_array().cloned()
    }

    /// Prometheus' active alerts.
    async fn alerts(&self) -> Option<Vec<Value>> {
        let (_, body) = try_get(&format!("{}/api/v1/alerts", self.prom_url))
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["alerts"].as_array().cloned()
    }

    /// The route's detail from the admin API.
    async fn route(&self) -> Value {
        let body = self
            .get(&format!("{}/admin/routes/{ROUTE}", self.admin_url))
            .await;
        serde_json::from_str(&body).unwrap()
    }

    async fn get(&self, url: &str) -> String {
        match try_get(url).await {
            Ok((200, body)) => body,
            other => self.fail(&format!("GET {url}: {other:?}")).await,
        }
    }
}

/// Client traffic through the proxy until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(proxy: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            async move {
                let url = format!("{proxy}/v1/chat/completions");
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let prompt = PROMPTS[n % PROMPTS.len()];
                    let body = support::request_for(
                        "/v1/chat/completions",
                        ALIAS,
                        &format!("{prompt} (ticket {n})"),
                        n.is_multiple_of(3),
                    );
                    let headers = [("content-type", "application/json")];
                    match try_send(Method::POST, &url, &headers, body.to_string()).await {
                        Ok((200, _)) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
        });
        Traffic {
            stop,
            sent,
            failed,
            task,
        }
    }

    /// Stops it: (requests sent, requests that did not get a 200).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

async fn try_get(url: &str) -> Result<(u16, String), String> {
    try_send(Method::GET, url, &[], String::new()).await
}

/// One HTTP request; an error instead of a panic when the server is not there (yet).
async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<(u16, String), String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client().request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The value of the route's sample of gauge `name` in an exposition, if present: the only gauge
/// read here, `understudy_quality`, exists only while a candidate has been judged.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    metric_value_or_absent(exposition, &format!(r#"{name}{{route="{ROUTE}"}}"#))
}

/// The sum of `name`'s samples whose labels contain `integration="INTEGRATION"`.
fn sum_samples(exposition: &str, name: &str, integration: &str) -> f64 {
    let label = format!(r#"integration="{integration}""#);
    exposition
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?.strip_prefix('{')?;
            labels.contains(&label).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The route's rollback events.
fn rollbacks(route: &Value) -> Vec<Value> {
    route["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "rolled_back")
        .cloned()
        .collect()
}
