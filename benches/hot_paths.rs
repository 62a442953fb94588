//! Criterion benches of the pure functions on the request path, through the library's public
//! API: the SSE reader and the observer fed realistic OpenAI and Anthropic streams, the request
//! body parse + rewrite for a small and a 1 MB chat request, and the response `model` rewriter.
//!
//! Streams are fed three ways: in one piece, one SSE event per piece (how a token-streaming
//! upstream's writes usually arrive) and in 1,460-byte pieces (one TCP segment each, cut
//! anywhere, so events and lines straddle pieces).
//!
//! `cargo bench --bench hot_paths` runs them all in about a minute; `cargo test --all-targets`
//! runs each once as a smoke test. See benches/README.md for figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use serde_json::{json, Value};
use understudy::hot_paths::{
    rewrite_request, ApiShape, ModelRewriter, Observer, Release, RequestBody, SseReader, StreamEnd,
    Upstream,
};
use understudy::{ApiFlavor, ReleaseSpec};

/// The proxy's bound on output kept per observation (`OBSERVE_MAX_BYTES` in src/server.rs).
const OBSERVE_MAX_BYTES: usize = 256 * 1024;
/// The SSE event bound the observer derives from it.
const MAX_EVENT_BYTES: usize = 2 * OBSERVE_MAX_BYTES;
/// One TCP segment's payload on a 1,500-byte MTU.
const SEGMENT: usize = 1460;
/// Content deltas in each stream.
const DELTAS: usize = 100;
/// The alias clients send, and the pinned model the upstream answers with.
const ALIAS: &str = "support-bot";
const MODEL: &str = "gpt-4o-2024-08-06";
const CLAUDE: &str = "claude-sonnet-4-20250514";

/// Words of the streamed answers: a few per delta, with punctuation, a quote, a newline and
/// non-ASCII text so that the JSON strings carry escapes.
const WORDS: &[&str] = &[
    "Thanks",
    "for",
    "reaching",
    "out!",
    "Your",
    "order",
    "#1234",
    "shipped",
    "on",
    "Monday",
    "and",
    "should",
    "arrive",
    "within",
    "two",
    "days.",
    "\"Express\"",
    "upgrades",
    "are",
    "free.\n",
    "Merci",
    "—",
    "à",
    "bientôt",
    "🙂",
];

/// The text of the `i`th delta: one to three words and their trailing space.
fn delta_text(i: usize) -> String {
    let n = 1 + i % 3;
    (0..n)
        .map(|k| format!("{} ", WORDS[(i * 3 + k) % WORDS.len()]))
        .collect()
}

/// The whole answer the streams spell out.
fn answer_text() -> String {
    (0..DELTAS).map(delta_text).collect()
}

fn sse_event(name: Option<&str>, data: &Value) -> String {
    match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// An OpenAI chat completion stream with usage, as the API sends it: the role chunk,
/// `DELTAS` content chunks, the finish chunk, the usage chunk and `[DONE]`. One entry per event.
fn openai_stream() -> Vec<String> {
    let chunk = |choices: Value, usage: Value| {
        sse_event(
            None,
            &json!({
                "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                "object": "chat.completion.chunk",
                "created": 1_741_569_952,
                "model": MODEL,
                "service_tier": "default",
                "system_fingerprint": "fp_eb9dce56a8",
                "choices": choices,
                "usage": usage,
            }),
        )
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let role = json!({"role": "assistant", "content": "", "refusal": null});
    let mut events = vec![chunk(choice(role, Value::Null), Value::Null)];
    events.extend((0..DELTAS).map(|i| {
        let delta = json!({"content": delta_text(i)});
        chunk(choice(delta, Value::Null), Value::Null)
    }));
    events.push(chunk(choice(json!({}), json!("stop")), Value::Null));
    let usage = json!({"prompt_tokens": 412, "completion_tokens": 187, "total_tokens": 599,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}});
    events.push(chunk(json!([]), usage));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// An Anthropic Messages stream: `message_start`, a text block of `DELTAS` deltas (after a
/// `ping`), `message_delta` with the usage, `message_stop`. One entry per event.
fn anthropic_stream() -> Vec<String> {
    let typed = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        sse_event(Some(name), &data)
    };
    let mut events = vec![
        typed(
            "message_start",
            json!({"message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message",
                "role": "assistant", "model": CLAUDE, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 412, "output_tokens": 1,
                    "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "service_tier": "standard"}}}),
        ),
        typed(
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        typed("ping", json!({})),
    ];
    events.extend((0..DELTAS).map(|i| {
        typed(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": delta_text(i)}}),
        )
    }));
    events.push(typed("content_block_stop", json!({"index": 0})));
    events.push(typed(
        "message_delta",
        json!({"delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 187}}),
    ));
    events.push(typed("message_stop", json!({})));
    events
}

/// A stream and the three ways its bytes are cut into pieces.
struct Stream {
    name: &'static str,
    shape: ApiShape,
    /// The model the upstream names in the stream.
    model: &'static str,
    /// How many events the stream holds.
    events: usize,
    whole: Bytes,
    /// `(label, pieces)`: in one piece, one event per piece, one TCP segment per piece.
    cuts: Vec<(&'static str, Vec<Bytes>)>,
}

impl Stream {
    fn new(name: &'static str, shape: ApiShape, model: &'static str, events: Vec<String>) -> Self {
        let count = events.len();
        let whole = Bytes::from(events.concat());
        let per_event = events.into_iter().map(Bytes::from).collect();
        let segments = (0..whole.len())
            .step_by(SEGMENT)
            .map(|at| whole.slice(at..(at + SEGMENT).min(whole.len())))
            .collect();
        Stream {
            name,
            shape,
            model,
            events: count,
            cuts: vec![
                ("whole", vec![whole.clone()]),
                ("per_event", per_event),
                ("1460B", segments),
            ],
            whole,
        }
    }
}

fn streams() -> [Stream; 2] {
    [
        Stream::new(
            "openai_chat",
            ApiShape::ChatCompletions,
            MODEL,
            openai_stream(),
        ),
        Stream::new("anthropic", ApiShape::Messages, CLAUDE, anthropic_stream()),
    ]
}

/// Short runs: every bench here takes microseconds, so a few seconds gives tight intervals.
fn configure<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
}

fn sse_reader(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_reader");
    configure(&mut group);
    for stream in streams() {
        group.throughput(Throughput::Bytes(stream.whole.len() as u64));
        for (cut, pieces) in &stream.cuts {
            let read = || {
                let mut reader = SseReader::new(MAX_EVENT_BYTES);
                let mut events = 0;
                for piece in pieces {
                    reader.feed(black_box(piece));
                    while let Some(event) = reader.next_event() {
                        events += usize::from(!event.data.is_empty());
                    }
                }
                (events, reader.finish())
            };
            assert_eq!(read(), (stream.events, StreamEnd::Clean), "{}", stream.name);
            group.bench_function(format!("{}/{cut}", stream.name), |b| b.iter(read));
        }
    }
    group.finish();
}

fn observer(c: &mut Criterion) {
    let mut group = c.benchmark_group("observer");
    configure(&mut group);
    for stream in streams() {
        group.throughput(Throughput::Bytes(stream.whole.len() as u64));
        for (cut, pieces) in &stream.cuts {
            let observe = || {
                let mut observer = Observer::new(stream.shape, true, OBSERVE_MAX_BYTES);
                for piece in pieces {
                    observer.feed(black_box(piece));
                }
                observer.finish(200, true)
            };
            let seen = observe();
            assert!(
                seen.failure.is_none() && seen.text == answer_text(),
                "{}: {seen:?}",
                stream.name
            );
            group.bench_function(format!("{}/{cut}", stream.name), |b| b.iter(observe));
        }
    }
    group.finish();
}

/// The observer of a stream nobody compares (no mirror waits): usage, finish and failures only.
fn observer_outcome(c: &mut Criterion) {
    let mut group = c.benchmark_group("observer_outcome");
    configure(&mut group);
    for stream in streams() {
        group.throughput(Throughput::Bytes(stream.whole.len() as u64));
        let full = {
            let mut observer = Observer::new(stream.shape, true, OBSERVE_MAX_BYTES);
            observer.feed(&stream.whole);
            observer.finish(200, true)
        };
        for (cut, pieces) in &stream.cuts {
            let observe = || {
                let mut observer = Observer::usage_only(stream.shape, true, OBSERVE_MAX_BYTES);
                for piece in pieces {
                    observer.feed(black_box(piece));
                }
                observer.finish(200, true)
            };
            let seen = observe();
            assert!(
                seen.failure.is_none()
                    && seen.usage == full.usage
                    && seen.usage.completion_tokens.is_some(),
                "{}: {seen:?}",
                stream.name
            );
            group.bench_function(format!("{}/{cut}", stream.name), |b| b.iter(observe));
        }
    }
    group.finish();
}

/// What the relay does to each piece of an unmirrored stream: observe it for its outcome and
/// put the client's `model` back.
fn relay_per_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_per_event");
    configure(&mut group);
    for stream in streams() {
        group.throughput(Throughput::Bytes(stream.whole.len() as u64));
        for (cut, pieces) in &stream.cuts {
            let relay = || {
                let mut observer = Observer::usage_only(stream.shape, true, OBSERVE_MAX_BYTES);
                let mut rewriter = ModelRewriter::new("support-bot", true);
                let mut sent = 0;
                for piece in pieces {
                    observer.feed(black_box(piece));
                    sent += rewriter.push(piece.clone()).map_or(0, |b| b.len());
                }
                sent += rewriter.finish().map_or(0, |b| b.len());
                (observer.finish(200, true), sent)
            };
            let (seen, sent) = relay();
            assert!(
                seen.failure.is_none() && sent > 0,
                "{}: {seen:?}",
                stream.name
            );
            group.bench_function(format!("{}/{cut}", stream.name), |b| b.iter(relay));
        }
    }
    group.finish();
}

/// A chat request of at least `bytes` bytes: a system message, then user and assistant turns.
fn chat_request(bytes: usize) -> Vec<u8> {
    let turn = |i: usize| {
        let role = if i.is_multiple_of(2) {
            "user"
        } else {
            "assistant"
        };
        let text: String = (i..i + 40).map(delta_text).collect();
        json!({"role": role, "content": text})
    };
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    let mut size = 0;
    while size < bytes {
        let message = turn(messages.len());
        size += message.to_string().len() + 1;
        messages.push(message);
    }
    let body = json!({
        "model": ALIAS,
        "messages": messages,
        "temperature": 0.7,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-8f14e45f",
        "tools": [{"type": "function", "function": {"name": "lookup_order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}],
    });
    body.to_string().into_bytes()
}

/// A release like the configuration's example: pinned model, system prompt, one override.
fn release(system_prompt: Option<&str>) -> Release {
    let upstream = Arc::new(Upstream {
        name: "openai".into(),
        scheme: http::uri::Scheme::HTTP,
        authority: http::uri::Authority::from_static("127.0.0.1:9"),
        path_prefix: String::new(),
        api: ApiFlavor::OpenAi,
        credential: None,
    });
    let spec = ReleaseSpec {
        label: Some("v3".into()),
        upstream: "openai".into(),
        model: MODEL.into(),
        system_prompt: system_prompt.map(str::to_owned),
        params: json!({"temperature": 0.2})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        prices: None,
        index: None,
    };
    Release::new(1, &spec, upstream)
}

fn request_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_rewrite");
    configure(&mut group);
    let releases = [
        ("params", release(None)),
        (
            "params+prompt",
            release(Some("You are a concise support assistant.")),
        ),
    ];
    for (size, body) in [
        ("1KB", chat_request(1 << 10)),
        ("1MB", chat_request(1 << 20)),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        // A 1 MB rewrite takes milliseconds: fewer samples fit the same measurement time.
        group.sample_size(if body.len() > 1 << 16 { 20 } else { 50 });
        for (kind, release) in &releases {
            let rewrite = || {
                RequestBody::parse(black_box(&body))
                    .and_then(|parsed| {
                        rewrite_request(ApiShape::ChatCompletions, &parsed, release, false)
                    })
                    .map(|out| out.len())
            };
            // Checked once so that a broken fixture cannot bench an early error.
            assert!(rewrite().is_ok(), "the {size} request does not rewrite");
            group.bench_function(format!("{size}/{kind}"), |b| b.iter(rewrite));
        }
    }
    group.finish();
}

/// Passes `pieces` through a rewriter as the relay does, handing each output to `send`.
fn rewrite_pieces(pieces: &[Bytes], mut send: impl FnMut(Bytes)) {
    let mut rewriter = ModelRewriter::new(ALIAS, true);
    for piece in pieces {
        if let Some(out) = rewriter.push(black_box(piece.clone())) {
            send(out);
        }
    }
    if let Some(out) = rewriter.finish() {
        send(out);
    }
}

fn model_rewriter(c: &mut Criterion) {
    let mut group = c.benchmark_group("model_rewriter");
    configure(&mut group);
    for stream in streams() {
        group.throughput(Throughput::Bytes(stream.whole.len() as u64));
        let expected = String::from_utf8_lossy(&stream.whole)
            .replace(&format!("\"{}\"", stream.model), &format!("\"{ALIAS}\""))
            .into_bytes();
        for (cut, pieces) in &stream.cuts {
            let mut whole = Vec::new();
            rewrite_pieces(pieces, |out| whole.extend_from_slice(&out));
            assert_eq!(whole, expected, "{}/{cut}", stream.name);
            let rewrite = || {
                let mut sent = 0;
                rewrite_pieces(pieces, |out| sent += out.len());
                sent
            };
            group.bench_function(format!("{}/{cut}", stream.name), |b| b.iter(rewrite));
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    sse_reader,
    observer,
    observer_outcome,
    relay_per_event,
    request_rewrite,
    model_rewriter
);
criterion_main!(benches);
