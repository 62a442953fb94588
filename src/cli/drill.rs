//! `understudy drill ROUTE`: the rollback drill of the operations checklist, on a running server,
//! ending where it began. It rolls the route's candidate back (a manual rollback with the
//! drill's reason, `control::DRILL_REASON`), sends one probe request through the proxy listener
//! (`--proxy-url`, `UNDERSTUDY_PROXY_URL`) and checks from `x-understudy-release` that stable
//! served it, then restores the candidate to the phase and share it had
//! (`POST .../restore`, which undoes only a drill's rollback, and only while nothing else
//! changed), checks the route is as before, and prints each step's time. The rollback and the
//! restore are both in the route's event log. A route with no candidate is refused before
//! anything changes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::table;
use crate::admin::AdminClient;
use crate::control::DRILL_REASON;

/// How long the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// One timed step.
struct Step {
    name: &'static str,
    took: Duration,
    said: String,
}

/// Runs the drill; the lines to print, or why it failed (with what was done, and whether the
/// candidate is back).
pub async fn drill(client: &AdminClient, route: &str, proxy_url: &str) -> Result<String, String> {
    let started = Instant::now();
    let mut steps = Vec::new();
    let t = Instant::now();
    let before = client.route(route).await.map_err(|e| e.to_string())?;
    let Some(candidate) = before["candidate"]["version"].as_u64() else {
        return Err(format!(
            "route {route} has no candidate: there is nothing to roll back, so no drill (phase {})",
            before["phase"].as_str().unwrap_or("?")
        ));
    };
    // The way back is a change the store must take: with the store failing the rollback would
    // hold and the restore be refused, so the drill does not start.
    if let Some(state) = before["store"]["state"].as_str().filter(|s| *s != "ok") {
        return Err(format!(
            "route {route}: the store is {state} ({}): the candidate could not be restored \
             after the rollback, so no drill",
            before["store"]["reason"].as_str().unwrap_or("unknown")
        ));
    }
    let phase = before["phase"].as_str().unwrap_or("").to_owned();
    let share = before["share"].as_f64().unwrap_or(0.0);
    let stable = before["stable"]["version"].as_u64().unwrap_or(0);
    let alias = before["model"].as_str().unwrap_or(route).to_owned();
    steps.push(Step {
        name: "read",
        took: t.elapsed(),
        said: format!("candidate #{candidate} in {phase} at share {share}, stable #{stable}"),
    });

    let t = Instant::now();
    let rolled = client
        .change(route, "rollback", json!({ "reason": DRILL_REASON }))
        .await
        .map_err(|e| format!("rollback refused, nothing changed: {e}"))?;
    steps.push(Step {
        name: "rollback",
        took: t.elapsed(),
        said: format!(
            "candidate #{candidate} rolled back; serving #{}{}",
            rolled["serving"],
            if rolled["durable"] == Value::Bool(false) {
                " (in effect, NOT yet durable)"
            } else {
                ""
            }
        ),
    });

    let t = Instant::now();
    let probe = probe(proxy_url, route, &alias).await;
    let probe_ok = matches!(&probe, Ok((_, Some(v))) if *v == stable);
    steps.push(Step {
        name: "probe",
        took: t.elapsed(),
        said: match &probe {
            Ok((status, Some(v))) if *v == stable => {
                format!("HTTP {status}, x-understudy-release: {v} (stable)")
            }
            Ok((status, Some(v))) => {
                format!("HTTP {status}, x-understudy-release: {v}: NOT stable #{stable}")
            }
            Ok((status, None)) => format!("HTTP {status} without x-understudy-release"),
            Err(e) => format!("failed: {e}"),
        },
    });

    let t = Instant::now();
    let restored = client
        .change(
            route,
            "restore",
            json!({ "version": candidate, "phase": phase, "share": share }),
        )
        .await;
    if let Err(e) = restored {
        return Err(format!(
            "{}\ncandidate #{candidate} was NOT restored: {e}. It stays rolled back; publish it \
             again to restore it",
            steps_table(&steps, started.elapsed())
        ));
    }
    steps.push(Step {
        name: "restore",
        took: t.elapsed(),
        said: format!("candidate #{candidate} back in {phase} at share {share}"),
    });

    let t = Instant::now();
    let after = client.route(route).await.map_err(|e| e.to_string())?;
    let same = after["candidate"]["version"].as_u64() == Some(candidate)
        && after["phase"].as_str() == Some(phase.as_str())
        && after["share"].as_f64() == Some(share)
        && after["stable"]["version"].as_u64() == Some(stable);
    steps.push(Step {
        name: "verify",
        took: t.elapsed(),
        said: if same {
            "route as before the drill".into()
        } else {
            format!(
                "route differs: phase {}, share {}, candidate {}",
                after["phase"], after["share"], after["candidate"]["version"]
            )
        },
    });
    let out = steps_table(&steps, started.elapsed());
    match (probe_ok, same) {
        (true, true) => Ok(out),
        (false, _) => Err(format!(
            "{out}\nthe probe did not show stable serving after the rollback (check --proxy-url / UNDERSTUDY_PROXY_URL)"
        )),
        (true, false) => Err(format!("{out}\nthe route is not as it was before the drill")),
    }
}

fn steps_table(steps: &[Step], total: Duration) -> String {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let mut rows = vec![["STEP", "TOOK", ""].map(String::from).to_vec()];
    for s in steps {
        rows.push(vec![s.name.into(), ms(s.took), s.said.clone()]);
    }
    rows.push(vec!["total".into(), ms(total), String::new()]);
    table(&rows)
}

/// One chat request for the route through the proxy: its status and `x-understudy-release`.
async fn probe(proxy_url: &str, route: &str, alias: &str) -> Result<(u16, Option<u64>), String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let body = json!({
        "model": alias,
        "messages": [{ "role": "user", "content": "Rollback drill probe: reply with one word." }],
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{}/v1/chat/completions",
            proxy_url.trim_end_matches('/')
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-understudy-route", route)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("bad proxy URL {proxy_url:?}: {e}"))?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("the proxy at {proxy_url} did not answer within 60 s"))?
        .map_err(|e| format!("cannot reach the proxy at {proxy_url}: {e}"))?;
    let status = resp.status().as_u16();
    let release = resp
        .headers()
        .get("x-understudy-release")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // Read the answer to its end, as a client would.
    let _ = resp.into_body().collect().await;
    Ok((status, release))
}
