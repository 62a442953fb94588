//! JSON logs on the real binary: with `[log] format = "json"` (or `UNDERSTUDY_LOG_FORMAT=json`)
//! every line on stderr is one JSON object with its timestamp, level and message, and no
//! secret (upstream key, admin token, a client's credentials) appears in any line, at debug
//! level, through requests, mirrors, streams, admin calls, a refused token and a refused reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::path::Path;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use binary::{serve_command, Binary};
use support::{post, request_for, Sim, TOKEN};
use understudy_sim::Behavior;

const UPSTREAM_KEY: &str = "sk-upstream-SECRET-7f3a9c";
const CLIENT_KEY: &str = "sk-client-SECRET-91be04";

fn config_text(dir: &Path, sim: &str, log: &str) -> String {
    let routes = format!(
        r#"
[upstreams.keyed]
base_url = "{sim}"
api_key_env = "SIM_API_KEY"

[routes.bot]
model = "support-bot"
phase = "shadow"
share = 1.0

[routes.bot.stable]
upstream = "keyed"
model = "sim-stable-2024-08-06"

[routes.bot.candidate]
upstream = "keyed"
model = "sim-candidate-2024-11-20"
{log}"#
    );
    support::config()
        .default_upstream("sim")
        .routes(&routes)
        .replace("{SIM}", sim)
        .replace("{DIR}", dir.to_str().unwrap())
}

/// Every line is a JSON object with the fields log shippers index on.
fn assert_json_lines(lines: &[String]) {
    assert!(!lines.is_empty());
    for line in lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(obj.contains_key(key), "no {key}: {line}");
        }
    }
}

fn assert_no_secret(lines: &[String]) {
    for line in lines {
        for secret in [UPSTREAM_KEY, CLIENT_KEY, TOKEN] {
            assert!(!line.contains(secret), "a secret reached the log: {line}");
        }
    }
}

#[tokio::test]
async fn json_lines_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Behavior::default()).await;
    let path = dir.path().join("understudy.toml");
    std::fs::write(
        &path,
        config_text(dir.path(), &sim.url, "\n[log]\nformat = \"json\"\n"),
    )
    .unwrap();
    let server = Binary::start(serve_command(
        &path,
        &[("SIM_API_KEY", UPSTREAM_KEY), ("RUST_LOG", "debug")],
    ))
    .await;
    let chat = format!("{}/v1/chat/completions", server.proxy);
    let bearer = format!("Bearer {CLIENT_KEY}");
    for stream in [false, true] {
        let reply = post(
            &chat,
            &request_for("/v1/chat/completions", "support-bot", "hello", stream),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // Forwarded as is, to the default upstream, with the client's credentials.
    let models = support::send(
        Method::GET,
        &format!("{}/v1/models", server.proxy),
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert!(models.status.as_u16() < 500, "{}", models.text());
    // A wrong token, then the right one.
    let wrong = post(
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &json!({}),
        &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = post(
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &json!({"reason": "log test"}),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(right.status, 200, "{}", right.text());
    // A refused reload logs its problems.
    std::fs::write(
        &path,
        format!("[log]\nformat = \"json\"\nwhat = \"{CLIENT_KEY}x\"\n"),
    )
    .unwrap();
    let refused = support::send(
        Method::POST,
        &format!("{}/admin/reload", server.admin),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());

    let lines = server.stop().await;
    assert_json_lines(&lines);
    assert_no_secret(&lines);
    let messages: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            Some(v.get("message")?.as_str()?.to_string())
        })
        .collect();
    for expected in [
        "understudy serving",
        "release change",
        "configuration reload refused",
        "stopped",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "no {expected:?} line in:\n{}",
            lines.join("\n")
        );
    }
    // The event's fields are top-level keys, e.g. the serving line's addresses.
    let serving: Value = lines
        .iter()
        .find(|l| l.contains("understudy serving"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(serving["level"], "INFO");
    assert!(serving["proxy"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(Behavior::default()).await;
    let path = dir.path().join("understudy.toml");
    std::fs::write(&path, config_text(dir.path(), &sim.url, "")).unwrap();
    let server = Binary::start(serve_command(
        &path,
        &[
            ("SIM_API_KEY", UPSTREAM_KEY),
            ("UNDERSTUDY_LOG_FORMAT", "json"),
        ],
    ))
    .await;
    let lines = server.stop().await;
    assert_json_lines(&lines);

    let out = serve_command(
        &path,
        &[
            ("SIM_API_KEY", UPSTREAM_KEY),
            ("UNDERSTUDY_LOG_FORMAT", "xml"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "UNDERSTUDY_LOG_FORMAT: unknown log format \"xml\", expected one of text, json"
        ),
        "{stderr}"
    );
}
