//! Reload without restart, on the real binary: `POST /admin/reload` and SIGHUP re-read the
//! config file; a new candidate definition takes effect, a rolled-back candidate stays rolled
//! back, a broken file is refused with every problem named while the old configuration keeps
//! serving, settings that need a restart are named, and a stream in flight across a reload
//! completes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use binary::{serve_command, Binary};
use support::{eventually, post, request_for, Sim, TOKEN};
use understudy_sim::Behavior;

const STABLE: &str = "sim-stable-2024-08-06";
const CANDIDATE: &str = "sim-candidate-2024-11-20";
const NEXT: &str = "sim-candidate-2025-02-01";

/// The config file with route `bot` (alias `support-bot`) on the simulator; `candidate` is the
/// candidate's model (promoted, so it serves every request), if any; `extra` is appended.
fn config_text(dir: &Path, sim: &str, candidate: Option<&str>, extra: &str) -> String {
    let mut routes = format!(
        r#"
[routes.bot]
model = "support-bot"
phase = "{}"
share = 0.0

[routes.bot.stable]
upstream = "sim"
model = "{STABLE}"

[routes.bot.rollback]
auto = false
"#,
        if candidate.is_some() {
            "promoted"
        } else {
            "stable"
        }
    );
    if let Some(model) = candidate {
        routes.push_str(&format!(
            "\n[routes.bot.candidate]\nupstream = \"sim\"\nmodel = \"{model}\"\n"
        ));
    }
    routes.push_str(extra);
    support::config()
        .default_upstream("sim")
        .routes(&routes)
        .replace("{SIM}", sim)
        .replace("{DIR}", dir.to_str().unwrap())
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sim: Sim,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("understudy.toml");
        Setup {
            _dir: dir,
            path,
            sim: Sim::start(Behavior::default()).await,
        }
    }

    fn write(&self, candidate: Option<&str>, extra: &str) {
        let text = config_text(self.path.parent().unwrap(), &self.sim.url, candidate, extra);
        std::fs::write(&self.path, text).unwrap();
    }
}

/// The release that served one chat request to `support-bot`.
async fn served_by(server: &Binary) -> String {
    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &request_for("/v1/chat/completions", "support-bot", "hello", false),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.header("x-understudy-release").unwrap().to_string()
}

async fn reload(server: &Binary, token: Option<&str>) -> support::Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    support::send(
        Method::POST,
        &format!("{}/admin/reload", server.admin),
        &headers,
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn a_new_candidate_takes_effect_and_a_broken_file_is_refused() {
    let setup = Setup::new().await;
    setup.write(None, "");
    let server = Binary::start(serve_command(&setup.path, &[])).await;
    assert_eq!(served_by(&server).await, "1");

    // A new candidate definition: published and, promoted, it serves.
    setup.write(Some(CANDIDATE), "");
    let refused = reload(&server, None).await;
    assert_eq!(refused.status, 401, "reload needs the admin token");
    assert_eq!(
        served_by(&server).await,
        "1",
        "nothing changed without the token"
    );
    let ok = reload(&server, Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let body = ok.json();
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["changes"], json!(["bot: published #2"]), "{body}");
    assert_eq!(body["restart_required"], json!([]));
    assert_eq!(served_by(&server).await, "2");

    // A broken file: every problem named with its key, nothing changes.
    std::fs::write(
        &setup.path,
        config_text(
            setup.path.parent().unwrap(),
            &setup.sim.url,
            Some(NEXT),
            "\n[routes.bot.shadow]\nmax_rps = -1.0\n\n[bogus]\nkey = 1\n",
        )
        .replace("share = 0.0", "share = 7.5"),
    )
    .unwrap();
    let bad = reload(&server, Some(TOKEN)).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let body = bad.json();
    assert_eq!(body["reloaded"], false);
    let problems: Vec<String> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for key in ["routes.bot.share", "routes.bot.shadow.max_rps", "bogus"] {
        assert!(
            problems.iter().any(|p| p.contains(key)),
            "{key} not named in {problems:?}"
        );
    }
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("running configuration is kept"),
        "{message}"
    );
    assert_eq!(
        served_by(&server).await,
        "2",
        "the old configuration keeps serving"
    );

    // A rolled-back candidate stays rolled back when the same file is read again.
    setup.write(Some(CANDIDATE), "");
    let rollback = post(
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &json!({"reason": "test"}),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(rollback.status, 200, "{}", rollback.text());
    assert_eq!(served_by(&server).await, "1");
    let again = reload(&server, Some(TOKEN)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["changes"], json!([]));
    assert_eq!(
        served_by(&server).await,
        "1",
        "the rolled-back candidate was revived"
    );

    // Settings that need a restart are named, their running values kept; the rest applies.
    let text = config_text(setup.path.parent().unwrap(), &setup.sim.url, Some(NEXT), "")
        .replace("[server]\n", "[server]\nmax_body_bytes = 12345\n");
    std::fs::write(&setup.path, text).unwrap();
    let partly = reload(&server, Some(TOKEN)).await;
    assert_eq!(partly.status, 200, "{}", partly.text());
    let body = partly.json();
    assert_eq!(body["restart_required"], json!(["[server]"]), "{body}");
    assert!(body["message"].as_str().unwrap().contains("need a restart"));
    assert_eq!(served_by(&server).await, "3");
    let big = "x".repeat(20_000);
    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &request_for("/v1/chat/completions", "support-bot", &big, false),
        &[],
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "max_body_bytes is still the running value"
    );

    let lines = server.stop().await;
    assert!(lines.iter().any(|l| l.contains("configuration reloaded")));
    assert!(lines
        .iter()
        .any(|l| l.contains("configuration reload refused")));
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let setup = Setup::new().await;
    setup.write(None, "");
    let server = Binary::start(serve_command(&setup.path, &[])).await;
    assert_eq!(served_by(&server).await, "1");
    setup.write(Some(CANDIDATE), "");
    server.signal("-HUP");
    eventually(10, "SIGHUP applied the new candidate", || async {
        served_by(&server).await == "2"
    })
    .await;
    // A broken file on SIGHUP: refused, logged, the server keeps serving (and running).
    std::fs::write(&setup.path, "[server\n").unwrap();
    server.signal("-HUP");
    eventually(10, "the refusal is logged", || async {
        server
            .lines()
            .iter()
            .any(|l| l.contains("configuration reload refused"))
    })
    .await;
    assert_eq!(served_by(&server).await, "2");
    let lines = server.stop().await;
    assert!(lines.iter().any(|l| l.contains("SIGHUP")));
}

#[tokio::test]
async fn a_stream_in_flight_completes_across_a_reload() {
    let setup = Setup::new().await;
    setup.write(None, "");
    setup.sim.sim.set_behavior(
        STABLE,
        Behavior {
            chunk_delay: Duration::from_millis(100),
            ..Behavior::default()
        },
    );
    let server = Binary::start(serve_command(&setup.path, &[])).await;
    let body = request_for(
        "/v1/chat/completions",
        "support-bot",
        &"reload ".repeat(60),
        true,
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/v1/chat/completions", server.proxy))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = support::client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-understudy-release"], "1");
    let mut stream = resp.into_body();
    let first = stream.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty());

    // Mid-stream: a new candidate that serves every new request, and the route's settings.
    setup.write(Some(CANDIDATE), "\n[routes.bot.shadow]\nmax_inflight = 3\n");
    let ok = reload(&server, Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["updated"], json!(["bot"]));
    assert_eq!(served_by(&server).await, "2");

    let mut rest = Vec::new();
    while let Some(frame) = stream.frame().await {
        let frame = frame.expect("the stream was cut by the reload");
        if let Ok(data) = frame.into_data() {
            rest.extend_from_slice(&data);
        }
    }
    let rest = String::from_utf8(rest).unwrap();
    // The reload happened mid-stream: content still came after it.
    let events_after = rest.matches("\"content\"").count();
    eprintln!("events after the reload: {events_after}");
    assert!(
        events_after > 0,
        "the stream ended before the reload: {rest}"
    );
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "stream did not complete: {rest}"
    );
    assert!(rest.contains("\"model\":\"support-bot\""), "{rest}");
    server.stop().await;
}

/// The store's state must be servable by the new file: a candidate the store keeps (the file
/// no longer names it, which does not retire it) on an upstream the file removes is named, and
/// nothing changes.
#[tokio::test]
async fn a_reload_that_strands_a_live_release_is_refused() {
    let setup = Setup::new().await;
    let dir = setup.path.parent().unwrap().to_str().unwrap().to_string();
    let with_other = support::config()
        .default_upstream("sim")
        .upstream("other", "base_url = \"{SIM}\"")
        .routes(&format!(
            "[routes.bot]\nmodel = \"support-bot\"\nphase = \"promoted\"\nshare = 0.0\n\n\
             [routes.bot.stable]\nupstream = \"sim\"\nmodel = \"{STABLE}\"\n\n\
             [routes.bot.candidate]\nupstream = \"other\"\nmodel = \"{CANDIDATE}\"\n"
        ))
        .replace("{SIM}", &setup.sim.url)
        .replace("{DIR}", &dir);
    std::fs::write(&setup.path, with_other).unwrap();
    let server = Binary::start(serve_command(&setup.path, &[])).await;
    assert_eq!(served_by(&server).await, "2");

    setup.write(None, "");
    let refused = reload(&server, Some(TOKEN)).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let problems = refused.json()["problems"].to_string();
    assert!(
        problems.contains("routes.bot: release #2") && problems.contains("\\\"other\\\""),
        "{problems}"
    );
    assert_eq!(served_by(&server).await, "2");
    server.stop().await;
}

/// A route the file no longer has: no longer served (its alias goes to the default upstream
/// untouched) and its gauges are gone, so no alert rule keeps judging it; added again, it
/// comes back with the state the store kept.
#[tokio::test]
async fn a_removed_route_is_no_longer_served_and_comes_back_as_it_was() {
    let setup = Setup::new().await;
    setup.write(Some(CANDIDATE), "");
    let server = Binary::start(serve_command(&setup.path, &[])).await;
    assert_eq!(served_by(&server).await, "2");
    let metrics_url = format!("{}/metrics", server.admin);
    let phase = "understudy_route_phase{phase=\"promoted\",route=\"bot\"}";
    let metrics = support::send(Method::GET, &metrics_url, &[], Bytes::new()).await;
    assert_eq!(support::metric_value(&metrics.text(), phase), 1.0);

    let path = setup.path.clone();
    let text = std::fs::read_to_string(&path).unwrap();
    let without = &text[..text.find("[routes.bot]").unwrap()];
    std::fs::write(&path, without).unwrap();
    let ok = reload(&server, Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["removed"], json!(["bot"]));
    let reply = post(
        &format!("{}/v1/chat/completions", server.proxy),
        &request_for("/v1/chat/completions", "support-bot", "hello", false),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-understudy-route"), None, "still routed");
    let metrics = support::send(Method::GET, &metrics_url, &[], Bytes::new()).await;
    assert_eq!(
        support::metric_value_or_absent(&metrics.text(), phase),
        None,
        "the removed route's gauges stayed"
    );

    std::fs::write(&path, text).unwrap();
    let back = reload(&server, Some(TOKEN)).await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(back.json()["added"], json!(["bot"]));
    assert_eq!(
        back.json()["changes"],
        json!([]),
        "the store's state, unchanged"
    );
    assert_eq!(served_by(&server).await, "2");
    server.stop().await;
}
