//! `understudy replay ROUTE --cases FILE [--release N]`: scores a release on saved cases before
//! it meets live traffic, so it can gate a deploy. Each case (a line of `understudy export`, or
//! a bare API request per line) goes to the server's `POST /admin/routes/{route}/replay`, which
//! sends it to the release and twice to stable through the route's upstreams and scores it with
//! the route's scorers (the second stable answer is the noise floor). This command runs the
//! cases `--concurrency` at a time within `--max-cases` and `--max-tokens`, shows a progress
//! bar, prints a per-case and a summary table, writes a JSON report, and asks the route's judge
//! (`control::Judge`, the one that rolls back live candidates) for the verdict over all the
//! cases as one window.
//!
//! Exit codes: 0 the judge keeps the release; 1 the judge would roll it back (the failing cases
//! are listed); 2 the replay could not run (bad file or flags, admin API refused or
//! unreachable); 3 too few cases were scored to judge; 130 interrupted (Ctrl-C: what was done
//! is printed and written first).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use super::{say, table};
use crate::admin::{AdminClient, ClientError};
use crate::config::RollbackConfig;
use crate::control::Judge;

/// One replayed case may take this long (three upstream calls and the remote scorers).
const CASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The judge's per-scorer windows take these names (those of `Score::tracked`).
const TRACKED: [&str; 6] = [
    "lexical",
    "length",
    "structure",
    "refusal",
    "semantic",
    "judge",
];
/// Characters of a prompt shown in the table.
const PROMPT_SHOWN: usize = 48;

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub route: String,
    pub cases: PathBuf,
    pub release: Option<u32>,
    pub concurrency: usize,
    pub max_cases: Option<usize>,
    pub max_tokens: Option<u64>,
    pub report: Option<PathBuf>,
}

/// How the replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Keep,
    RollBack,
    Failed,
    Undecided,
    Interrupted,
}

impl Ending {
    pub fn code(self) -> u8 {
        match self {
            Ending::Keep => 0,
            Ending::RollBack => 1,
            Ending::Failed => 2,
            Ending::Undecided => 3,
            Ending::Interrupted => 130,
        }
    }
}

/// One case of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Its line in the file (1-based).
    pub line: usize,
    pub api: Option<String>,
    pub request: Map<String, Value>,
}

/// The cases of a JSON Lines file: each line an exported case (`request`, `api`) or a bare
/// request. Blank lines are skipped; a case whose request was redacted is skipped and said.
pub fn read_cases(text: &str) -> Result<(Vec<Case>, Vec<String>), String> {
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(raw).map_err(|e| format!("line {line}: not JSON: {e}"))?;
        let Value::Object(mut obj) = v else {
            return Err(format!("line {line}: a case must be a JSON object"));
        };
        let api = obj.get("api").and_then(Value::as_str).map(str::to_owned);
        let request = match obj.remove("request") {
            Some(Value::Object(r)) => r,
            Some(Value::Null) => {
                skipped.push(format!(
                    "line {line}: request redacted (the route keeps no requests)"
                ));
                continue;
            }
            Some(_) => return Err(format!("line {line}: \"request\" must be a JSON object")),
            None if ["messages", "input", "prompt"]
                .iter()
                .any(|k| obj.contains_key(*k)) =>
            {
                obj
            }
            None => {
                return Err(format!(
                    "line {line}: no \"request\" (an exported case) and not an API request"
                ))
            }
        };
        cases.push(Case { line, api, request });
    }
    Ok((cases, skipped))
}

/// What one case gave: the server's answer, or why there is none.
#[derive(Debug, Clone)]
struct Outcome {
    case: Case,
    answer: Result<Value, String>,
}

/// Whether an admin API error refuses the replay as a whole (no other case would do better),
/// rather than this one case.
fn refuses_all(e: &ClientError) -> bool {
    match e {
        ClientError::BadUrl { .. }
        | ClientError::Unreachable { .. }
        | ClientError::Unauthorized(_) => true,
        ClientError::Refused { status, .. } => {
            matches!(status.as_u16(), 400 | 404)
        }
        ClientError::Timeout { .. } | ClientError::Read(_) => false,
    }
}

/// Runs the replay; the exit code per [`Ending::code`].
pub async fn replay(
    client: AdminClient,
    args: &ReplayArgs,
    interrupt: impl std::future::Future<Output = ()>,
) -> Ending {
    match run(client, args, interrupt).await {
        Ok(ending) => ending,
        Err(e) => {
            super::complain(&e);
            Ending::Failed
        }
    }
}

async fn run(
    client: AdminClient,
    args: &ReplayArgs,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Ending, String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let text = std::fs::read_to_string(&args.cases)
        .map_err(|e| format!("{}: {e}", args.cases.display()))?;
    let (mut cases, skipped) =
        read_cases(&text).map_err(|e| format!("{}: {e}", args.cases.display()))?;
    for s in &skipped {
        super::complain(&format!("{}: skipped {s}", args.cases.display()));
    }
    if let Some(max) = args.max_cases {
        cases.truncate(max);
    }
    if cases.is_empty() {
        return Err(format!("{}: no case to replay", args.cases.display()));
    }
    let client = Arc::new(client.with_timeout(CASE_TIMEOUT));
    let started = Instant::now();
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} cases {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(cases.len());
    let mut pending = cases.into_iter();
    let mut running: JoinSet<(Outcome, Option<ClientError>)> = JoinSet::new();
    let mut tokens = 0u64;
    let mut stopped = None;
    tokio::pin!(interrupt);
    loop {
        while running.len() < args.concurrency && stopped.is_none() {
            if args.max_tokens.is_some_and(|max| tokens >= max) {
                stopped = Some(format!("token budget of {} spent", tokens));
                break;
            }
            let Some(case) = pending.next() else { break };
            let client = Arc::clone(&client);
            let route = args.route.clone();
            let release = args.release;
            running.spawn(async move {
                let mut body = json!({ "request": case.request, "release": release });
                if let Some(api) = &case.api {
                    body["api"] = json!(api);
                }
                let answer = client.change(&route, "replay", body).await;
                (
                    Outcome {
                        case,
                        answer: answer
                            .as_ref()
                            .map(Value::clone)
                            .map_err(ToString::to_string),
                    },
                    answer.err().filter(refuses_all),
                )
            });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            () = &mut interrupt => {
                running.abort_all();
                bar.abandon_with_message("interrupted");
                return finish(args, outcomes, started, Some("interrupted (Ctrl-C)".into()), true);
            }
            done = running.join_next() => match done {
                Some(Ok((outcome, fatal))) => {
                    if let Some(e) = fatal {
                        // The server refused the replay itself: no case will do better.
                        running.abort_all();
                        bar.abandon();
                        return Err(format!("replay refused: {e}"));
                    }
                    if let Ok(a) = &outcome.answer {
                        tokens += a["tokens"].as_u64().unwrap_or(0);
                    }
                    outcomes.push(outcome);
                    bar.inc(1);
                }
                Some(Err(e)) => return Err(format!("a replay task failed: {e}")),
                None => break,
            },
        }
    }
    bar.finish_and_clear();
    if stopped.is_none() && pending.len() > 0 {
        stopped = Some("stopped early".into());
    }
    finish(args, outcomes, started, stopped, false)
}

/// The verdict and the failing cases, from every case scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    pub quality: Option<f64>,
    pub noise_floor: Option<f64>,
    pub error_rate: f64,
    pub scored: usize,
    /// Lines of the cases that failed: a hard failure, an error, or a score below the threshold
    /// once normalised by the noise floor.
    pub failing: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Keep,
    RollBack { trigger: String, reason: String },
    Undecided(String),
}

/// Feeds the answers to the route's judge, all cases as one window.
fn judge(answers: &[(usize, &Value)]) -> Verdict {
    let settings = answers.first().map(|(_, a)| &a["rollback"]);
    let scored: Vec<&(usize, &Value)> = answers
        .iter()
        .filter(|(_, a)| a["score"].is_object())
        .collect();
    let n = scored.len();
    let get = |k: &str| settings.and_then(|s| s[k].as_f64());
    let cfg = RollbackConfig {
        threshold: get("threshold").unwrap_or(0.8),
        window: n.max(1),
        // The replay judges the evidence it has: at most the route's min_samples.
        min_samples: (get("min_samples").unwrap_or(30.0) as usize).min(n).max(1),
        max_error_rate: get("max_error_rate").unwrap_or(0.05),
        auto: true,
    };
    let tracked = |v: &Value| -> Vec<(&'static str, f64)> {
        TRACKED
            .iter()
            .filter_map(|name| v["tracked"][*name].as_f64().map(|x| (*name, x)))
            .collect()
    };
    let mut j = Judge::default();
    for (_, a) in &scored {
        let noise = &a["noise"];
        if noise.is_object() {
            j.record_noise(
                noise["combined"].as_f64().unwrap_or(0.0),
                &tracked(noise),
                cfg.window,
            );
        }
        let s = &a["score"];
        let errored = a["candidate_error"].as_bool().unwrap_or(false);
        j.record(
            s["combined"].as_f64().unwrap_or(0.0),
            errored,
            &tracked(s),
            cfg.window,
        );
    }
    let floor = j.noise_floor();
    let failing = scored
        .iter()
        .filter(|(_, a)| {
            let s = &a["score"];
            let combined = s["combined"].as_f64().unwrap_or(0.0);
            !s["hard_failure"].is_null()
                || a["candidate_error"].as_bool().unwrap_or(false)
                || floor.is_some_and(|f| (combined / f) < cfg.threshold)
        })
        .map(|(line, _)| *line)
        .collect();
    let decision = if n == 0 {
        Decision::Undecided("no case was scored (stable's answers failed)".into())
    } else {
        match j.decide(&cfg) {
            Some(trigger) => Decision::RollBack {
                trigger: trigger.as_str().to_owned(),
                reason: j.explain(trigger, &cfg),
            },
            None if floor.is_none() => Decision::Undecided(format!(
                "{n} case(s) scored, the noise floor needs at least 5 stable-vs-stable pairs"
            )),
            None => Decision::Keep,
        }
    };
    Verdict {
        decision,
        quality: j.quality(),
        noise_floor: floor,
        error_rate: j.error_rate(),
        scored: n,
        failing,
    }
}

/// The last user message of a request, for the table.
fn prompt_of(request: &Map<String, Value>) -> String {
    let text = |c: &Value| match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let items = request.get("messages").or(request.get("input"));
    match items {
        Some(Value::Array(items)) => items
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| text(&m["content"]))
            .unwrap_or_default(),
        Some(other) => text(other),
        None => request.get("prompt").map(text).unwrap_or_default(),
    }
}

fn shorten(s: &str, n: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= n {
        flat
    } else {
        flat.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn f3(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

/// Prints the tables, writes the report, and says how it ended.
fn finish(
    args: &ReplayArgs,
    mut outcomes: Vec<Outcome>,
    started: Instant,
    stopped: Option<String>,
    interrupted: bool,
) -> Result<Ending, String> {
    outcomes.sort_by_key(|o| o.case.line);
    let answers: Vec<(usize, &Value)> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().ok().map(|a| (o.case.line, a)))
        .collect();
    let verdict = judge(&answers);
    let mut rows = vec![["LINE", "SCORE", "NOISE", "RESULT", "PROMPT"]
        .map(String::from)
        .to_vec()];
    let mut cases = Vec::new();
    for o in &outcomes {
        let failing = verdict.failing.contains(&o.case.line);
        let (score, noise, result) = match &o.answer {
            Err(e) => ("-".into(), "-".into(), format!("error: {e}")),
            Ok(a) if !a["score"].is_object() => {
                ("-".into(), "-".into(), "not scored: stable failed".into())
            }
            Ok(a) => {
                let s = &a["score"];
                let result = match (s["hard_failure"].as_str(), failing) {
                    (Some(h), _) => format!("FAIL {h}"),
                    (None, true) => "FAIL low score".into(),
                    (None, false) => "ok".into(),
                };
                (f3(&s["combined"]), f3(&a["noise"]["combined"]), result)
            }
        };
        let prompt = prompt_of(&o.case.request);
        rows.push(vec![
            o.case.line.to_string(),
            score,
            noise,
            result.clone(),
            shorten(&prompt, PROMPT_SHOWN),
        ]);
        let answer = o.answer.as_ref().ok();
        cases.push(json!({
            "line": o.case.line,
            "prompt": prompt,
            "result": result,
            "failing": failing,
            "error": o.answer.as_ref().err(),
            "score": answer.map(|a| &a["score"]),
            "noise": answer.map(|a| &a["noise"]),
            "candidate_error": answer.map(|a| &a["candidate_error"]),
            "judge_reason": answer.map(|a| &a["judge_reason"]),
            "reference": answer.map(|a| super::export::answer_text(&a["reference"])),
            "output": answer.map(|a| super::export::answer_text(&a["candidate"])),
            "release": answer.map(|a| &a["release"]),
            "stable": answer.map(|a| &a["stable"]),
        }));
    }
    say(&table(&rows));
    let errors = outcomes.iter().filter(|o| o.answer.is_err()).count();
    let release = answers.first().map(|(_, a)| a["release"].clone());
    let stable = answers.first().map(|(_, a)| a["stable"].clone());
    let (verdict_name, reason) = match &verdict.decision {
        Decision::Keep => ("keep", String::new()),
        Decision::RollBack { reason, .. } => ("rollback", reason.clone()),
        Decision::Undecided(why) => ("undecided", why.clone()),
    };
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
    let mut summary = vec![
        vec!["route".into(), args.route.clone()],
        vec![
            "release".into(),
            format!(
                "#{} against stable #{}",
                release.as_ref().map_or("-".into(), ToString::to_string),
                stable.as_ref().map_or("-".into(), ToString::to_string)
            ),
        ],
        vec![
            "cases".into(),
            format!(
                "{} replayed, {} scored, {} failing, {} errors",
                outcomes.len(),
                verdict.scored,
                verdict.failing.len(),
                errors
            ),
        ],
        vec!["quality".into(), fmt(verdict.quality)],
        vec!["noise floor".into(), fmt(verdict.noise_floor)],
        vec!["error rate".into(), format!("{:.3}", verdict.error_rate)],
        vec!["verdict".into(), verdict_name.into()],
    ];
    if !reason.is_empty() {
        summary.push(vec!["reason".into(), reason.clone()]);
    }
    summary.push(vec![
        "took".into(),
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    ]);
    if let Some(s) = &stopped {
        summary.push(vec!["stopped".into(), s.clone()]);
    }
    say(&format!("\n{}", table(&summary)));
    if !verdict.failing.is_empty() {
        let listed: Vec<String> = verdict.failing.iter().map(ToString::to_string).collect();
        say(&format!(
            "\nfailing cases (lines of {}): {}",
            args.cases.display(),
            listed.join(", ")
        ));
    }
    let report = json!({
        "route": args.route,
        "cases_file": args.cases.display().to_string(),
        "release": release,
        "stable": stable,
        "verdict": verdict_name,
        "trigger": match &verdict.decision { Decision::RollBack { trigger, .. } => json!(trigger), _ => Value::Null },
        "reason": reason,
        "quality": verdict.quality,
        "noise_floor": verdict.noise_floor,
        "error_rate": verdict.error_rate,
        "replayed": outcomes.len(),
        "scored": verdict.scored,
        "errors": errors,
        "failing": verdict.failing,
        "stopped": stopped,
        "interrupted": interrupted,
        "seconds": started.elapsed().as_secs_f64(),
        "cases": cases,
    });
    if let Some(path) = &args.report {
        write_report(path, &report)?;
        say(&format!("report written to {}", path.display()));
    }
    Ok(if interrupted {
        Ending::Interrupted
    } else {
        match verdict.decision {
            Decision::RollBack { .. } => Ending::RollBack,
            Decision::Undecided(_) => Ending::Undecided,
            Decision::Keep => Ending::Keep,
        }
    })
}

fn write_report(path: &Path, report: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's answer for one case, as far as the verdict reads it.
    fn answer(score: f64, noise: f64, hard: Option<&str>) -> Value {
        json!({
            "release": 2, "stable": 1, "candidate_error": hard == Some("error"),
            "score": {"combined": score, "tracked": {"lexical": score}, "hard_failure": hard},
            "noise": {"combined": noise, "tracked": {"lexical": noise}},
            "rollback": {"threshold": 0.8, "window": 200, "min_samples": 30, "max_error_rate": 0.05},
        })
    }

    #[test]
    fn cases_are_exported_lines_or_bare_requests() {
        let text = "{\"request\": {\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}, \"api\": \"chat\"}\n\
                    \n\
                    {\"model\": \"m\", \"messages\": []}\n\
                    {\"request\": null}\n";
        let (cases, skipped) = read_cases(text).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!((cases[0].line, cases[1].line), (1, 3));
        assert_eq!(cases[0].api.as_deref(), Some("chat"));
        assert_eq!(prompt_of(&cases[0].request), "a");
        assert_eq!(skipped.len(), 1, "the redacted case is said");
        for bad in ["nope", "[1]", "{\"request\": 3}", "{\"x\": 1}"] {
            assert!(read_cases(bad).unwrap_err().starts_with("line 1:"), "{bad}");
        }
    }

    #[test]
    fn the_routes_judge_decides() {
        let good: Vec<Value> = (0..10)
            .map(|i| answer(0.8 + f64::from(i % 3) * 0.05, 0.85, None))
            .collect();
        let v = judge(
            &good
                .iter()
                .enumerate()
                .map(|(i, a)| (i + 1, a))
                .collect::<Vec<_>>(),
        );
        assert_eq!(v.decision, Decision::Keep);
        assert!(v.failing.is_empty(), "{v:?}");
        let bad: Vec<Value> = (0..10)
            .map(|i| answer(0.2 + f64::from(i % 3) * 0.05, 0.85, None))
            .collect();
        let v = judge(
            &bad.iter()
                .enumerate()
                .map(|(i, a)| (i + 1, a))
                .collect::<Vec<_>>(),
        );
        assert!(
            matches!(&v.decision, Decision::RollBack { trigger, .. } if trigger == "quality"),
            "{v:?}"
        );
        assert_eq!(v.failing.len(), 10);
        let few: Vec<Value> = (0..3).map(|_| answer(0.9, 0.9, None)).collect();
        let v = judge(
            &few.iter()
                .enumerate()
                .map(|(i, a)| (i + 1, a))
                .collect::<Vec<_>>(),
        );
        assert!(matches!(v.decision, Decision::Undecided(_)), "{v:?}");
        // One hard failure among good cases is listed, without rolling back.
        let mut mixed = good.clone();
        mixed.push(answer(0.0, 0.85, Some("refusal")));
        let v = judge(
            &mixed
                .iter()
                .enumerate()
                .map(|(i, a)| (i + 1, a))
                .collect::<Vec<_>>(),
        );
        assert_eq!(v.failing, [11]);
    }
}
