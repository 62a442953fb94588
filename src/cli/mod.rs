//! The command line's work: `serve` (config, logging, signals), the admin commands (HTTP calls
//! to the admin API, printed as tables or JSON), and the small helpers around them. The only
//! module that prints to the terminal.
#![expect(clippy::print_stdout, reason = "the command line's output")]

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::admin::AdminClient;
use crate::config::Config;
use crate::domain::{index_name_problem, route_name_problem, share_problem};
use crate::server::{run_reloading, Listeners, ReloadFrom};

#[cfg(feature = "sim")]
mod demo;
mod drill;
mod export;
mod indexes;
mod replay;

pub use export::Pick;
pub use replay::ReplayArgs;
mod logging;

use indexes::index_notes;

fn say(msg: &str) {
    println!("{msg}");
}

fn complain(msg: &str) {
    eprintln!("understudy: {msg}");
}

/// Success, or the error said on stderr and exit code 1.
fn exit_code(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain(&e);
            ExitCode::from(1)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Logs as key=value lines on stderr (JSON with `UNDERSTUDY_LOG_FORMAT=json`); `RUST_LOG`
/// filters (default `info`). For the commands without a config file.
fn init_logging() {
    let text = crate::config::LogFormat::Text;
    logging::init(logging::format(text).unwrap_or(text));
}

/// A future that resolves when the process gets Ctrl-C (SIGINT) or SIGTERM.
///
/// The handlers are installed by this call, not when the future is first polled: a caller that
/// announces it is serving after calling this cannot lose a signal sent on that announcement.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // A signal whose handler cannot be installed never resolves (the other still can).
        async fn received(signal: Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                () = received(int) => {}
                () = received(term) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `understudy check-config FILE`: every problem with its key and line, exit code 2 if any.
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            say(&format!(
                "{}: ok ({} upstreams, {} routes)",
                path.display(),
                cfg.upstreams.len(),
                cfg.routes.len()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain(&e.to_string());
            ExitCode::from(2)
        }
    }
}

pub fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            complain(&e.to_string());
            return ExitCode::from(2);
        }
    };
    let format = match logging::format(config.log.format) {
        Ok(f) => f,
        Err(e) => {
            complain(&e);
            return ExitCode::from(2);
        }
    };
    logging::init(format);
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let listeners = Listeners::bind(&config)
                .await
                .map_err(|e| format!("bind: {e}"))?;
            let reload = ReloadFrom {
                path: path.to_owned(),
                on_sighup: true,
            };
            run_reloading(
                config,
                Some(reload),
                listeners,
                |k| std::env::var(k).ok(),
                shutdown_signal(),
            )
            .await
            .map_err(|e| e.to_string())
        })
    });
    exit_code(result)
}

/// `understudy demo`: see the `demo` module.
#[cfg(feature = "sim")]
pub fn demo(port: u16, exit: bool) -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging();
    }
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async { demo::demo(port, exit, shutdown_signal(), say).await })
            .map_err(|e| e.to_string())
    });
    exit_code(result)
}

/// Serves the simulated upstream (every model answers with the default behaviour) until Ctrl-C.
/// Prints `listening on ADDR` once bound, for scripts that start it on port 0.
#[cfg(feature = "sim")]
pub fn mock_upstream(
    listen: &str,
    fault: Option<understudy_sim::Fault>,
    fault_rate: f64,
) -> ExitCode {
    init_logging();
    if !(0.0..=1.0).contains(&fault_rate) {
        complain(&format!(
            "--fault-rate must be between 0 and 1, got {fault_rate}"
        ));
        return ExitCode::from(2);
    }
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("bind {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            say(&format!("listening on {addr}"));
            let sim = understudy_sim::SimUpstream::new(understudy_sim::Behavior {
                fault,
                fault_rate,
                ..understudy_sim::Behavior::default()
            });
            sim.serve(listener, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        })
    });
    exit_code(result)
}

/// The admin API client of `UNDERSTUDY_ADMIN_URL` and `UNDERSTUDY_ADMIN_TOKEN`.
fn admin_client() -> AdminClient {
    let base =
        std::env::var("UNDERSTUDY_ADMIN_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let token = std::env::var("UNDERSTUDY_ADMIN_TOKEN").ok();
    AdminClient::new(&base, token.as_deref())
}

/// `understudy export ROUTE`: the route's captured pairs as JSON Lines on stdout.
pub fn export_command(route: &str, pick: Pick, format: &str) -> ExitCode {
    if let Some(problem) = route_name_problem(route) {
        return exit_code(Err(problem));
    }
    if format != "jsonl" {
        return exit_code(Err(format!("--format must be jsonl, not {format:?}")));
    }
    let result = runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(async { export::export(&admin_client(), route, pick).await }));
    exit_code(result.map(|lines| {
        for line in lines {
            say(&line);
        }
    }))
}

/// `understudy replay ROUTE --cases FILE`: see `replay.rs` for the exit codes.
pub fn replay_command(args: &ReplayArgs) -> ExitCode {
    if let Some(problem) = route_name_problem(&args.route) {
        complain(&problem);
        return ExitCode::from(2);
    }
    match runtime() {
        Ok(rt) => {
            let ending = rt.block_on(replay::replay(admin_client(), args, async {
                let _ = tokio::signal::ctrl_c().await;
            }));
            ExitCode::from(ending.code())
        }
        Err(e) => {
            complain(&e.to_string());
            ExitCode::from(2)
        }
    }
}

/// `understudy drill ROUTE`: see `drill.rs`.
pub fn drill_command(route: &str, proxy_url: &str) -> ExitCode {
    if let Some(problem) = route_name_problem(route) {
        return exit_code(Err(problem));
    }
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async { drill::drill(&admin_client(), route, proxy_url).await })
    });
    exit_code(result.map(|out| say(&out)))
}

/// An admin command of the command line.
pub enum AdminCall {
    Status {
        route: Option<String>,
        json: bool,
    },
    History {
        route: String,
        json: bool,
    },
    Promote {
        route: String,
        phase: String,
        share: Option<f64>,
    },
    Rollback {
        route: String,
        to: Option<u32>,
        reason: Option<String>,
    },
    Finalize {
        route: String,
    },
    /// `understudy rollout ROUTE pause|resume|skip`.
    Rollout {
        route: String,
        action: String,
    },
    /// Marks an embedding route's vector index dropped.
    DropIndex {
        route: String,
        index: String,
    },
}

impl AdminCall {
    /// The route the call is about, if one.
    fn route(&self) -> Option<&str> {
        match self {
            AdminCall::Status { route, .. } => route.as_deref(),
            AdminCall::History { route, .. }
            | AdminCall::Promote { route, .. }
            | AdminCall::Rollback { route, .. }
            | AdminCall::Finalize { route }
            | AdminCall::DropIndex { route, .. }
            | AdminCall::Rollout { route, .. } => Some(route),
        }
    }

    /// Why the call cannot be made, if it cannot: the checks the configuration file and the
    /// admin API make of the same values, before anything is sent.
    fn problem(&self) -> Option<String> {
        if let Some(problem) = self.route().and_then(route_name_problem) {
            return Some(problem);
        }
        match self {
            AdminCall::Promote {
                share: Some(share), ..
            } => share_problem(*share).map(|p| format!("--share {p}")),
            AdminCall::Rollout { action, .. }
                if !["pause", "resume", "skip"].contains(&action.as_str()) =>
            {
                Some(format!(
                    "rollout action must be pause, resume or skip, not {action:?}"
                ))
            }
            AdminCall::DropIndex { index, .. } => {
                index_name_problem(index).map(|p| format!("index {p}"))
            }
            _ => None,
        }
    }
}

/// Runs an admin command against `UNDERSTUDY_ADMIN_URL` with `UNDERSTUDY_ADMIN_TOKEN`. A call
/// with an invalid value (an empty route name, a share that is not a number in [0, 1]) exits 1
/// without calling the API.
pub fn admin_command(call: AdminCall) -> ExitCode {
    if let Some(problem) = call.problem() {
        return exit_code(Err(problem));
    }
    let base =
        std::env::var("UNDERSTUDY_ADMIN_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let token = std::env::var("UNDERSTUDY_ADMIN_TOKEN").ok();
    let result = runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(admin_call(&base, token.as_deref(), call)));
    exit_code(result.map(|out| say(&out)))
}

async fn admin_call(base: &str, token: Option<&str>, call: AdminCall) -> Result<String, String> {
    let client = AdminClient::new(base, token);
    let v = match &call {
        AdminCall::Status { route: None, .. } => match client.routes().await {
            // The replicas sharing the store, when there are (a server without the endpoint
            // or with a failing store shows the routes alone).
            Ok(mut v) => {
                if let Ok(fleet) = client.fleet().await {
                    v["fleet"] = fleet;
                }
                Ok(v)
            }
            Err(e) => Err(e),
        },
        AdminCall::Status { route: Some(r), .. } | AdminCall::History { route: r, .. } => {
            client.route(r).await
        }
        AdminCall::Promote {
            route,
            phase,
            share,
        } => {
            let mut body = json!({ "phase": phase });
            if let Some(s) = share {
                body["share"] = json!(s);
            }
            client.change(route, "promote", body).await
        }
        AdminCall::Rollback { route, to, reason } => {
            let body = json!({ "to": to, "reason": reason });
            client.change(route, "rollback", body).await
        }
        AdminCall::Finalize { route } => client.change(route, "finalize", json!({})).await,
        AdminCall::Rollout { route, action } => {
            client
                .change(route, "rollout", json!({ "action": action }))
                .await
        }
        // Index names hold only characters that need no escaping in a path.
        AdminCall::DropIndex { route, index } => {
            let action = format!("indexes/{index}/drop");
            client.change(route, &action, json!({})).await
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(match call {
        AdminCall::Status { route: None, json } => {
            if json {
                pretty(&v)
            } else {
                let routes = v["routes"].as_array().map_or(&[][..], Vec::as_slice);
                status_table(routes)
                    + &rollout_notes(routes)
                    + &store_notes(routes)
                    + &index_notes(routes)
                    + &fleet_table(&v["fleet"])
            }
        }
        AdminCall::Status { json: true, .. } | AdminCall::History { json: true, .. } => pretty(&v),
        AdminCall::History { .. } => history_table(&v),
        _ => {
            let one = std::slice::from_ref(&v);
            status_table(one) + &rollout_notes(one) + &store_notes(one) + &index_notes(one)
        }
    })
}

/// Where each route's automatic rollout stands and what its step waits for:
/// "support-bot: rollout step 2/5 (canary 0.05), running 4m 10s: waiting: 143/200 samples in
/// this step; ...". Empty for routes without a rollout.
fn rollout_notes(routes: &[Value]) -> String {
    let mut out = String::new();
    for r in routes {
        let ro = &r["rollout"];
        if ro.is_null() {
            continue;
        }
        let name = r["name"].as_str().unwrap_or("");
        let state = ro["state"].as_str().unwrap_or("");
        let mut line = format!("\n{name}: rollout ");
        if state == "idle" {
            line.push_str("idle: the next published candidate starts at step 1");
            out.push_str(&line);
            continue;
        }
        line.push_str(&format!("step {}/{}", ro["step"], ro["steps"]));
        if let (Some(phase), Some(share)) = (ro["phase"].as_str(), ro["share"].as_f64()) {
            line.push_str(&format!(" ({phase} {share})"));
        }
        line.push_str(&format!(", {state}"));
        if let Some(secs) = ro["step_elapsed_secs"].as_u64() {
            let took = humantime::format_duration(std::time::Duration::from_secs(secs));
            line.push_str(&format!(" {took} in the step"));
        }
        if let Some(n) = ro["step_samples"].as_u64() {
            line.push_str(&format!(", {n} samples in the step"));
        }
        let waiting: Vec<&str> = ro["waiting"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !waiting.is_empty() {
            line.push_str(": ");
            line.push_str(&waiting.join("; "));
        } else if state == "running" {
            line.push_str(": ready, advancing");
        }
        out.push_str(&line);
    }
    out
}

/// A warning for each route whose store is failing, and for a change that is in effect but not
/// yet durable; empty when all is well.
fn store_notes(routes: &[Value]) -> String {
    let mut out = String::new();
    for r in routes {
        let name = r["name"].as_str().unwrap_or("");
        if r["durable"] == Value::Bool(false) {
            out.push_str(&format!(
                "\n{name}: in effect now, but NOT yet durable: the store is failing; it is written as soon as the store recovers (a restart before then loses it)"
            ));
        }
        let store = &r["store"];
        if store["state"].as_str().is_some_and(|s| s != "ok") {
            out.push_str(&format!(
                "\n{name}: store {}: {} ({} change(s) of this route not yet durable)",
                store["state"].as_str().unwrap_or(""),
                store["reason"].as_str().unwrap_or("unknown"),
                store["pending"]
            ));
        }
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn fmt_opt(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn release_cell(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let label = v["label"]
        .as_str()
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    format!(
        "#{}{} {}",
        v["version"],
        label,
        v["model"].as_str().unwrap_or("")
    )
}

/// Routes as an aligned table.
/// The replicas of a fleet (a shared PostgreSQL store), after the routes; empty otherwise.
fn fleet_table(fleet: &Value) -> String {
    let Some(replicas) = fleet["replicas"].as_array().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut rows = vec![
        ["REPLICA", "ADDRESS", "LAST SEEN", "LEADER", "STATE VERSION"]
            .map(String::from)
            .to_vec(),
    ];
    for r in replicas {
        let seen = match (r["alive"].as_bool(), r["last_seen_seconds_ago"].as_f64()) {
            (Some(false), Some(s)) => format!("{s:.1}s ago (gone)"),
            (_, Some(s)) => format!("{s:.1}s ago"),
            _ => "-".into(),
        };
        let mut id = r["id"].as_str().unwrap_or("").to_string();
        if r["this"] == Value::Bool(true) {
            id.push_str(" (this)");
        }
        rows.push(vec![
            id,
            r["address"].as_str().unwrap_or("").into(),
            seen,
            if r["leader"] == Value::Bool(true) {
                "yes"
            } else {
                ""
            }
            .into(),
            format!("{} of {}", r["state_version"], fleet["state_version"]),
        ]);
    }
    format!(
        "\n\nfleet (store {}):\n{}",
        fleet["store"].as_str().unwrap_or(""),
        table(&rows)
    )
}

fn status_table(routes: &[Value]) -> String {
    let mut rows = vec![[
        "ROUTE",
        "PHASE",
        "SHARE",
        "SERVING",
        "STABLE",
        "CANDIDATE",
        "QUALITY",
        "NOISE",
        "SAMPLES",
        "SCORERS",
    ]
    .map(String::from)
    .to_vec()];
    for r in routes {
        rows.push(vec![
            r["name"].as_str().unwrap_or("").into(),
            r["phase"].as_str().unwrap_or("").into(),
            fmt_opt(&r["share"], 2),
            format!("#{}", r["serving"]),
            release_cell(&r["stable"]),
            release_cell(&r["candidate"]),
            fmt_opt(&r["quality"], 3),
            fmt_opt(&r["noise_floor"], 3),
            r["samples"].to_string(),
            scorers_cell(&r["scorers"]),
        ]);
    }
    table(&rows)
}

/// Each scorer's own quality, "semantic 0.98 judge 0.41", or "-".
fn scorers_cell(v: &Value) -> String {
    let cells: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} {}",
                s["scorer"].as_str().unwrap_or("?"),
                fmt_opt(&s["quality"], 2)
            )
        })
        .collect();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(" ")
    }
}

fn history_table(route: &Value) -> String {
    let mut rows = vec![["VERSION", "LABEL", "UPSTREAM", "MODEL", "STATE"]
        .map(String::from)
        .to_vec()];
    for r in route["releases"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("#{}", r["version"]),
            r["label"].as_str().unwrap_or("-").into(),
            r["upstream"].as_str().unwrap_or("").into(),
            r["model"].as_str().unwrap_or("").into(),
            r["state"].as_str().unwrap_or("").into(),
        ]);
    }
    let mut out = table(&rows);
    let mut events = vec![["AT", "EVENT", "FROM", "TO", "TRIGGER", "REASON"]
        .map(String::from)
        .to_vec()];
    for e in route["events"].as_array().into_iter().flatten() {
        events.push(vec![
            e["at"].as_str().unwrap_or("").into(),
            e["kind"].as_str().unwrap_or("").into(),
            e["from"].as_u64().map_or("-".into(), |v| format!("#{v}")),
            e["to"].as_u64().map_or("-".into(), |v| format!("#{v}")),
            e["trigger"].as_str().unwrap_or("-").into(),
            e["reason"].as_str().unwrap_or("").into(),
        ]);
    }
    if events.len() > 1 {
        out.push_str("\n\n");
        out.push_str(&table(&events));
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_calls_are_refused_before_sending() {
        let promote = |route: &str, share: Option<f64>| AdminCall::Promote {
            route: route.into(),
            phase: "canary".into(),
            share,
        };
        let cases = [
            (promote("bot", Some(0.3)), None),
            (promote("bot", None), None),
            (AdminCall::Status { route: None, json: false }, None),
            (promote("bot", Some(f64::NAN)), Some("--share must be between 0 and 1, got NaN")),
            (promote("bot", Some(f64::INFINITY)), Some("--share must be between 0 and 1, got inf")),
            (promote("bot", Some(-1.0)), Some("--share must be between 0 and 1, got -1")),
            (promote("bot", Some(2.0)), Some("--share must be between 0 and 1, got 2")),
            (
                AdminCall::Status { route: Some(String::new()), json: false },
                Some("route name \"\" must be non-empty and use only letters, digits, '_', '.' and '-' (it becomes a metric label)"),
            ),
            (
                AdminCall::Finalize { route: "a b".into() },
                Some("route name \"a b\" must be non-empty and use only letters, digits, '_', '.' and '-' (it becomes a metric label)"),
            ),
            (
                AdminCall::DropIndex { route: "docs".into(), index: "docs-small".into() },
                None,
            ),
            (
                AdminCall::DropIndex { route: "docs".into(), index: "../x".into() },
                Some("index \"../x\" may only hold letters, digits, '-', '_', '.' and ':'"),
            ),
        ];
        for (call, expected) in cases {
            assert_eq!(call.problem().as_deref(), expected);
        }
        for call in [
            AdminCall::History {
                route: String::new(),
                json: true,
            },
            AdminCall::Rollback {
                route: String::new(),
                to: None,
                reason: None,
            },
            promote("", Some(0.5)),
        ] {
            assert!(call.problem().is_some());
        }
    }

    #[test]
    fn status_shows_each_scorers_quality() {
        let route = json!({
            "name": "bot", "phase": "shadow", "share": 0.05, "serving": 1,
            "stable": {"version": 1, "label": "v3", "model": "m-1"},
            "candidate": {"version": 2, "label": null, "model": "m-2"},
            "quality": 0.41, "noise_floor": 0.8, "samples": 40,
            "scorers": [
                {"scorer": "lexical", "quality": 0.97},
                {"scorer": "judge", "quality": 0.312},
            ],
        });
        let table = status_table(&[route]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("SCORERS"), "{table}");
        assert!(lines[1].ends_with("lexical 0.97 judge 0.31"), "{table}");
        assert!(
            lines[1].contains("#1 (v3) m-1") && lines[1].contains("0.410"),
            "{table}"
        );
        let bare = status_table(&[json!({"name": "r", "scorers": []})]);
        assert!(bare.lines().nth(1).unwrap().ends_with('-'), "{bare}");
    }

    #[test]
    fn the_fleet_is_listed_after_the_routes() {
        assert_eq!(fleet_table(&json!({"store": "sqlite", "replicas": []})), "");
        let fleet = json!({"store": "postgres", "state_version": 7, "replicas": [
            {"id": "a:8081", "address": "10.0.0.1:8081", "last_seen_seconds_ago": 0.4,
             "alive": true, "leader": true, "state_version": 7, "this": true},
            {"id": "b:8081", "address": "10.0.0.2:8081", "last_seen_seconds_ago": 12.0,
             "alive": false, "leader": false, "state_version": 5, "this": false}]});
        let text = fleet_table(&fleet);
        assert!(text.contains("fleet (store postgres)"), "{text}");
        let a = text
            .lines()
            .find(|l| l.starts_with("a:8081 (this)"))
            .unwrap();
        assert!(a.contains("yes") && a.contains("7 of 7"), "{a}");
        let b = text.lines().find(|l| l.starts_with("b:8081")).unwrap();
        assert!(
            b.contains("12.0s ago (gone)") && b.contains("5 of 7"),
            "{b}"
        );
    }

    #[test]
    fn a_failing_store_and_a_change_not_yet_durable_are_said() {
        let ok = json!({"name": "bot", "store": {"state": "ok", "pending": 0}, "durable": true});
        assert_eq!(store_notes(&[ok]), "");
        let failing = json!({"name": "bot", "durable": false,
            "store": {"state": "failing", "reason": "store x: disk full", "pending": 1}});
        let notes = store_notes(&[failing]);
        let lines: Vec<&str> = notes.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2, "{notes}");
        assert!(
            lines[0].starts_with("bot: in effect now, but NOT yet durable"),
            "{notes}"
        );
        assert_eq!(
            lines[1],
            "bot: store failing: store x: disk full (1 change(s) of this route not yet durable)"
        );
    }
}
