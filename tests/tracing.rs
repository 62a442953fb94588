//! OpenTelemetry traces end to end: the real binary, started with the standard `OTEL_*`
//! variables pointing at an OTLP/HTTP receiver in this test (protobuf bodies decoded with the
//! official `opentelemetry-proto` types), serves a request that carries a client `traceparent`
//! and is mirrored and judged. The spans it exports, the attributes on them and the
//! `traceparent` the simulated upstream received are checked; and with tracing off, nothing is
//! invented.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is the test failing"
)]
#![allow(clippy::disallowed_methods)] // the receiver runs on plain tasks

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use binary::{serve_command, Binary};
use support::{post, Sim, TOKEN};
use understudy_sim::{Behavior, Style};

const STABLE: &str = "stable-2024-08-06";
const CANDIDATE: &str = "candidate-2024-11-20";
const JUDGE: &str = "judge-2024-07-18";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A span as exported, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attr(&self, key: &str) -> Option<Any> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }
    fn str(&self, key: &str) -> String {
        match self.attr(key) {
            Some(Any::StringValue(s)) => s,
            other => panic!("{key} is {other:?} on {}", self.span.name),
        }
    }
    fn int(&self, key: &str) -> i64 {
        match self.attr(key) {
            Some(Any::IntValue(n)) => n,
            other => panic!("{key} is {other:?} on {}", self.span.name),
        }
    }
    fn strings(&self, key: &str) -> Vec<String> {
        match self.attr(key) {
            Some(Any::ArrayValue(a)) => a
                .values
                .into_iter()
                .map(|v| match v.value {
                    Some(Any::StringValue(s)) => s,
                    other => panic!("{key} holds {other:?}"),
                })
                .collect(),
            other => panic!("{key} is {other:?} on {}", self.span.name),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP traces receiver on 127.0.0.1:0: decodes each export, keeps its spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Exported>>>,
    /// Requests that were not a decodable export to `/v1/traces`.
    bad: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (spans, bad) = (Arc::clone(&spans), Arc::clone(&bad));
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (spans, bad) = (Arc::clone(&spans), Arc::clone(&bad));
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (spans, bad) = (Arc::clone(&spans), Arc::clone(&bad));
                        async move {
                            let ok = export(req, &spans).await;
                            if let Err(e) = &ok {
                                bad.lock().unwrap().push(e.clone());
                            }
                            let status = if ok.is_ok() { 200 } else { 400 };
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Receiver {
            url,
            spans,
            bad,
            task,
        }
    }

    fn spans(&self) -> Vec<Exported> {
        assert!(
            self.bad.lock().unwrap().is_empty(),
            "{:?}",
            self.bad.lock().unwrap()
        );
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(req: Request<Incoming>, spans: &Mutex<Vec<Exported>>) -> Result<(), String> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() != "/v1/traces" {
        return Err(format!("export to {}", parts.uri.path()));
    }
    let ctype = parts.headers.get("content-type").map(|v| v.as_bytes());
    if ctype != Some(b"application/x-protobuf") {
        return Err(format!("content-type {ctype:?}"));
    }
    if parts.headers.get("x-collector-key").map(|v| v.as_bytes()) != Some(b"k1") {
        return Err("OTEL_EXPORTER_OTLP_HEADERS not sent".into());
    }
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let export = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let mut out = spans.lock().unwrap();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.clone()?.value {
                Some(Any::StringValue(s)) => Some(s),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(Exported {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    Ok(())
}

/// The real binary on `config_toml`, with only the `OTEL_*` variables of `env` (none inherited
/// from the test's environment).
async fn start(sim_url: &str, env: &[(&str, &str)]) -> (Binary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("understudy.toml");
    std::fs::write(&config, config_toml(sim_url, dir.path())).unwrap();
    let mut cmd = serve_command(&config, env);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") && !env.iter().any(|(n, _)| *n == name) {
            cmd.env_remove(name);
        }
    }
    (Binary::start(cmd).await, dir)
}

fn config_toml(sim: &str, dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[admin]
listen = "127.0.0.1:0"
[store]
path = "{dir}/u.db"
[upstreams.sim]
base_url = "{sim}"
default = true
[routes.bot]
model = "support-bot"
phase = "shadow"
share = 1.0
[routes.bot.stable]
upstream = "sim"
model = "{STABLE}"
[routes.bot.candidate]
upstream = "sim"
model = "{CANDIDATE}"
[routes.bot.shadow]
max_rps = 10000
[routes.bot.scoring.judge]
upstream = "sim"
model = "{JUDGE}"
rubric = "The answer helps the customer."
max_rps = 10000
"#,
        dir = dir.display()
    )
}

async fn sim() -> Sim {
    let sim = Sim::start(Behavior::default()).await;
    let style = |style| Behavior {
        style,
        ..Behavior::default()
    };
    sim.sim.set_behavior(STABLE, style(Style::Benign));
    sim.sim.set_behavior(CANDIDATE, style(Style::Benign));
    sim.sim.set_behavior(JUDGE, style(Style::Judge));
    sim
}

fn chat(prompt: &str) -> Value {
    json!({
        "model": "support-bot",
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// The `traceparent` each model was sent, by model; mirrored calls (`x-understudy-shadow`) as
/// `mirror MODEL` (the last request of each).
fn upstream_traceparents(sim: &Sim) -> HashMap<String, Option<String>> {
    sim.sim
        .requests()
        .into_iter()
        .filter_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).ok()?;
            let model = body["model"].as_str()?;
            let key = match r.headers.contains_key("x-understudy-shadow") {
                true => format!("mirror {model}"),
                false => model.to_owned(),
            };
            let tp = r
                .headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            Some((key, tp))
        })
        .collect()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_mirror_and_its_judge_are_one_trace_exported_at_shutdown() {
    let receiver = Receiver::start().await;
    let sim = sim().await;
    let (binary, _dir) = start(
        &sim.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k1"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            // Nothing is exported before shutdown: what arrives was flushed by it.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("UNDERSTUDY_LOG_FORMAT", "json"),
        ],
    )
    .await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = post(
        &format!("{}/v1/chat/completions", binary.proxy),
        &chat("Where is my order"),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    // The mirror and its judge are done when the judge has been asked.
    wait_for("the judge call", || {
        let sent = upstream_traceparents(&sim);
        sent.contains_key(JUDGE) || sent.contains_key(&format!("mirror {JUDGE}"))
    })
    .await;
    assert!(receiver.spans().is_empty(), "exported before shutdown");
    let log = binary.stop().await;
    let spans = receiver.spans();

    // The request's JSON log line carries its trace id; lines outside a request do not.
    let lines: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request")
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(request["trace_id"], CLIENT_TRACE, "{request}");
    let serving = lines
        .iter()
        .find(|l| l["message"] == "understudy serving")
        .unwrap();
    assert!(serving.get("trace_id").is_none(), "{serving}");
    let names: Vec<_> = spans.iter().map(|s| s.span.name.clone()).collect();

    // The client's span: continues the client's trace, a child of the client's span.
    let server: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1, "{names:?}");
    let server = server[0];
    assert_eq!(server.service, "understudy");
    assert_eq!(server.trace_id(), CLIENT_TRACE);
    assert_eq!(server.parent_id(), CLIENT_SPAN);
    assert_eq!(server.span.name, format!("chat {STABLE}"));
    assert_eq!(server.str("gen_ai.operation.name"), "chat");
    assert_eq!(server.str("gen_ai.provider.name"), "openai");
    assert_eq!(server.str("gen_ai.system"), "openai");
    assert_eq!(server.str("gen_ai.request.model"), STABLE);
    // The model as the upstream answered it (the client got its alias back instead).
    assert_eq!(answer["model"], "support-bot");
    assert_eq!(server.str("gen_ai.response.model"), STABLE);
    let usage = &answer["usage"];
    assert!(usage["prompt_tokens"].as_i64().unwrap() > 0, "{answer}");
    assert_eq!(
        server.int("gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        server.int("gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        server.strings("gen_ai.response.finish_reasons"),
        [answer["choices"][0]["finish_reason"].as_str().unwrap()]
    );
    assert_eq!(server.str("understudy.route"), "bot");
    assert_eq!(server.int("understudy.release"), 1);
    assert_eq!(server.str("understudy.phase"), "shadow");
    assert_eq!(server.str("understudy.role"), "stable");
    assert_eq!(server.int("http.response.status_code"), 200);

    // The mirror's span: a client span, child of the client request's span.
    let mirror = spans
        .iter()
        .find(|s| s.attr("gen_ai.request.model") == Some(Any::StringValue(CANDIDATE.into())))
        .unwrap_or_else(|| panic!("no mirror span in {names:?}"));
    assert_eq!(mirror.span.kind, SpanKind::Client as i32);
    assert_eq!(mirror.trace_id(), CLIENT_TRACE);
    assert_eq!(mirror.parent_id(), server.span_id());
    assert_eq!(mirror.span.name, format!("chat {CANDIDATE}"));
    assert_eq!(mirror.str("gen_ai.response.model"), CANDIDATE);
    assert!(mirror.int("gen_ai.usage.input_tokens") > 0);
    assert!(mirror.int("gen_ai.usage.output_tokens") > 0);
    assert_eq!(mirror.int("understudy.release"), 2);
    assert_eq!(mirror.str("understudy.role"), "candidate");
    assert_eq!(mirror.str("understudy.phase"), "shadow");
    assert_eq!(mirror.attr("understudy.mirror"), Some(Any::BoolValue(true)));

    // The judge's span: in the same trace, with the judge's tokens.
    let judge = spans
        .iter()
        .find(|s| s.attr("understudy.scorer").is_some())
        .unwrap_or_else(|| panic!("no judge span in {names:?}"));
    assert_eq!(judge.span.kind, SpanKind::Client as i32);
    assert_eq!(judge.trace_id(), CLIENT_TRACE);
    assert_eq!(judge.parent_id(), server.span_id());
    assert_eq!(judge.str("understudy.scorer"), "judge");
    assert_eq!(judge.str("gen_ai.request.model"), JUDGE);
    assert!(judge.int("gen_ai.usage.input_tokens") > 0);

    // What the upstream was told: the served call is a child of the request's span, the
    // mirrored one of the mirror's span; the client's own span id never leaks through.
    let sent = upstream_traceparents(&sim);
    assert_eq!(
        sent[STABLE].as_deref(),
        Some(format!("00-{CLIENT_TRACE}-{}-01", server.span_id()).as_str()),
        "{sent:?}"
    );
    assert_eq!(
        sent[&format!("mirror {CANDIDATE}")].as_deref(),
        Some(format!("00-{CLIENT_TRACE}-{}-01", mirror.span_id()).as_str()),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_no_traceparent_is_invented() {
    let sim = sim().await;
    let (binary, _dir) = start(&sim.url, &[]).await;
    let reply = post(
        &format!("{}/v1/chat/completions", binary.proxy),
        &chat("Do you ship to Canada"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_for("the mirror", || {
        upstream_traceparents(&sim).contains_key(&format!("mirror {CANDIDATE}"))
    })
    .await;
    let sent = upstream_traceparents(&sim);
    assert_eq!(sent[STABLE], None, "{sent:?}");
    assert_eq!(sent[&format!("mirror {CANDIDATE}")], None, "{sent:?}");
    binary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_on_a_streamed_request_without_traceparent_starts_a_trace() {
    let receiver = Receiver::start().await;
    let sim = sim().await;
    let (binary, _dir) = start(
        &sim.url,
        &[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &format!("{}/v1/traces", receiver.url),
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k1"),
            ("OTEL_SERVICE_NAME", "llm-gateway"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    // Streamed, with the usage in its last event.
    let mut request = chat("Can I cancel my subscription online");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let reply = post(
        &format!("{}/v1/chat/completions", binary.proxy),
        &request,
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let events: Vec<Value> = reply
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let usage = events
        .iter()
        .find(|e| e["usage"].is_object())
        .map(|e| e["usage"].clone())
        .expect("a usage event");
    let finish = events
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str())
        .expect("a finish reason");
    // Exported on the schedule, without waiting for shutdown.
    wait_for("the request's span", || {
        receiver
            .spans()
            .iter()
            .any(|s| s.span.kind == SpanKind::Server as i32)
    })
    .await;
    let spans = receiver.spans();
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(server.service, "llm-gateway");
    assert!(server.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(server.str("gen_ai.response.model"), STABLE);
    assert_eq!(
        server.int("gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        server.int("gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(server.strings("gen_ai.response.finish_reasons"), [finish]);
    let sent = upstream_traceparents(&sim);
    assert_eq!(
        sent[STABLE].as_deref(),
        Some(format!("00-{}-{}-01", server.trace_id(), server.span_id()).as_str()),
        "{sent:?}"
    );
    binary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_logged_and_fails_no_request() {
    // A port nothing listens on (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sim = sim().await;
    let (binary, _dir) = start(
        &sim.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ],
    )
    .await;
    let reply = post(
        &format!("{}/v1/chat/completions", binary.proxy),
        &chat("Why was my card declined"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let log = binary.stop().await;
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("spans not exported at shutdown")),
        "{log:#?}"
    );
}

#[test]
fn a_protocol_other_than_http_protobuf_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("understudy.toml");
    std::fs::write(&config, config_toml("http://127.0.0.1:9", dir.path())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\"") && err.contains("http/protobuf"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_the_sampler_drops_is_still_propagated_and_not_exported() {
    let receiver = Receiver::start().await;
    let sim = sim().await;
    let (binary, _dir) = start(
        &sim.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k1"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    let reply = post(
        &format!("{}/v1/chat/completions", binary.proxy),
        &chat("Where is my order"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_for("the mirror", || {
        upstream_traceparents(&sim).contains_key(&format!("mirror {CANDIDATE}"))
    })
    .await;
    binary.stop().await;
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
    // The upstream still learns the trace, marked not sampled, from one span to the next.
    let sent = upstream_traceparents(&sim);
    let parse = |key: &str| {
        let tp = sent[key].clone().unwrap_or_else(|| panic!("{sent:?}"));
        let parts: Vec<String> = tp.split('-').map(str::to_owned).collect();
        assert_eq!(
            (parts.len(), parts[0].as_str(), parts[3].as_str()),
            (4, "00", "00"),
            "{tp}"
        );
        (parts[1].clone(), parts[2].clone())
    };
    let (served_trace, served_span) = parse(STABLE);
    let (mirror_trace, mirror_span) = parse(&format!("mirror {CANDIDATE}"));
    assert_eq!(served_trace, mirror_trace);
    assert_ne!(served_span, mirror_span);
}
