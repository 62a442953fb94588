//! Property tests over the parsers on the request path, with random and mutated inputs: the
//! request-body rewrite, the SSE reader, the response observers, the response `model` rewriter
//! and the config checker never panic, keep memory bounded, and do not depend on how the bytes
//! were cut into chunks; what reaches the client is the upstream's bytes but for the `model`
//! value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};
use understudy::hot_paths::{
    rewrite_request, ApiShape, ModelRewriter, Observer, Release, RequestBody, SseReader, Upstream,
};
use understudy::{ApiFlavor, Config, ReleaseSpec};

const MAX_OBSERVED: usize = 4096;
const SHAPES: [ApiShape; 4] = [
    ApiShape::ChatCompletions,
    ApiShape::Completions,
    ApiShape::Responses,
    ApiShape::Messages,
];

fn release(prompt: Option<&str>) -> Release {
    let upstream = Arc::new(Upstream {
        name: "u".into(),
        scheme: http::uri::Scheme::HTTP,
        authority: http::uri::Authority::from_static("127.0.0.1:9"),
        path_prefix: String::new(),
        api: ApiFlavor::OpenAi,
        credential: None,
    });
    let spec = ReleaseSpec {
        label: None,
        upstream: "u".into(),
        model: "real-model-2024".into(),
        system_prompt: prompt.map(str::to_owned),
        params: json!({"temperature": 0.2}).as_object().cloned().unwrap(),
        prices: None,
        index: None,
    };
    Release::new(1, &spec, upstream)
}

/// Arbitrary JSON values of bounded depth and size.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 \\n\"\\\\é🙂]{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: the fields clients send, with arbitrary values and extra fields.
fn request_body() -> impl Strategy<Value = Value> {
    (
        prop::option::of("[a-z-]{1,12}"),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
    )
        .prop_map(|(model, messages, system, extra)| {
            let mut body: serde_json::Map<String, Value> = extra.into_iter().collect();
            if let Some(m) = model {
                body.insert("model".into(), Value::from(m));
            }
            if let Some(m) = messages {
                body.insert("messages".into(), m);
            }
            if let Some(s) = system {
                body.insert("system".into(), s);
            }
            Value::Object(body)
        })
}

/// Cuts `bytes` at the given points (taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(Bytes::copy_from_slice(&bytes[start..p]));
        start = p;
    }
    out.push(Bytes::copy_from_slice(&bytes[start..]));
    out
}

/// An OpenAI chat stream with arbitrary text deltas.
fn chat_stream(deltas: &[String]) -> Vec<u8> {
    let mut s = String::new();
    for d in deltas {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "real-model-2024",
            "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]});
        s.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "c", "object": "chat.completion.chunk", "model": "real-model-2024",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    s.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    s.into_bytes()
}

/// A stream of `shape`'s API with these text deltas, its model named `real-model-2024`, with its
/// usage and finish, as each API sends them.
fn api_stream(shape: ApiShape, deltas: &[String]) -> Vec<u8> {
    let model = "real-model-2024";
    let event = |name: Option<&str>, data: Value| match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    };
    let mut s = String::new();
    match shape {
        ApiShape::ChatCompletions | ApiShape::Completions => {
            let text_chunk = |d: &str| match shape {
                ApiShape::Completions => {
                    json!({"id": "c", "object": "text_completion", "model": model,
                    "choices": [{"index": 0, "text": d, "finish_reason": null}], "usage": null})
                }
                _ => json!({"id": "c", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}], "usage": null}),
            };
            for d in deltas {
                s.push_str(&event(None, text_chunk(d)));
            }
            let mut last = text_chunk("");
            last["choices"][0]["finish_reason"] = json!("stop");
            s.push_str(&event(None, last));
            s.push_str(&event(
                None,
                json!({"id": "c", "model": model, "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": deltas.len()}}),
            ));
            s.push_str("data: [DONE]\n\n");
        }
        ApiShape::Messages => {
            s.push_str(&event(
                Some("message_start"),
                json!({"type": "message_start", "message":
                {"id": "m", "type": "message", "role": "assistant", "model": model, "content": [],
                 "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            ));
            s.push_str(&event(
                Some("content_block_start"),
                json!({"type": "content_block_start",
                "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            s.push_str(&event(Some("ping"), json!({"type": "ping"})));
            for d in deltas {
                s.push_str(&event(
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": d}}),
                ));
            }
            s.push_str(&event(
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            ));
            s.push_str(&event(
                Some("message_delta"),
                json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": deltas.len()}}),
            ));
            s.push_str(&event(
                Some("message_stop"),
                json!({"type": "message_stop"}),
            ));
        }
        ApiShape::Responses => {
            s.push_str(&event(
                Some("response.created"),
                json!({"type": "response.created",
                "response": {"id": "r", "status": "in_progress", "model": model, "output": []}}),
            ));
            for d in deltas {
                s.push_str(&event(
                    Some("response.output_text.delta"),
                    json!({"type":
                    "response.output_text.delta", "output_index": 0, "delta": d}),
                ));
            }
            s.push_str(&event(
                Some("response.completed"),
                json!({"type": "response.completed",
                "response": {"id": "r", "status": "completed", "model": model, "output": [],
                "usage": {"input_tokens": 12, "output_tokens": deltas.len()}}}),
            ));
        }
        ApiShape::Embeddings => unreachable!("embeddings do not stream: not in SHAPES"),
    }
    s.into_bytes()
}

/// The top-level keys of a JSON object in the order written, repeats included.
fn top_level_keys(bytes: &[u8]) -> Vec<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    use serde::Deserializer;
    serde_json::Deserializer::from_slice(bytes)
        .deserialize_map(Keys)
        .expect("an object")
}

fn observe(shape: ApiShape, sse: bool, pieces: &[Bytes]) -> understudy::hot_paths::Observation {
    let mut o = Observer::new(shape, sse, MAX_OBSERVED);
    for p in pieces {
        o.feed(p);
    }
    o.finish(200, true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any bytes: parsing either fails cleanly or the rewrite gives JSON with the release's
    /// model, the client's other fields unchanged, and no field twice.
    #[test]
    fn request_rewrite_keeps_the_clients_fields(body in request_body(), prompt in prop::option::of("[a-z ]{0,20}"), shape_i in 0..4usize) {
        let text = body.to_string();
        let parsed = RequestBody::parse(text.as_bytes()).unwrap();
        let release = release(prompt.as_deref());
        let shape = SHAPES[shape_i];
        let Ok(bytes) = rewrite_request(shape, &parsed, &release, true) else { return Ok(()) };
        let keys = top_level_keys(&bytes);
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), keys.len(), "a field written twice: {:?}", keys);
        let out: Value = serde_json::from_slice(&bytes).expect("the rewrite is JSON");
        prop_assert_eq!(&out["model"], "real-model-2024");
        prop_assert_eq!(&out["temperature"], 0.2);
        let sent = body.as_object().unwrap();
        for (key, value) in sent {
            let owned = ["model", "temperature", "store", "messages", "system", "instructions"];
            if !owned.contains(&key.as_str()) {
                prop_assert_eq!(&out[key], value, "client field {} changed", key);
            }
        }
    }

    #[test]
    fn request_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = RequestBody::parse(&bytes);
    }

    /// However a stream is cut into chunks, the reader yields the same events; random bytes
    /// never make it panic or hold more than its bound.
    #[test]
    fn sse_reader_is_chunking_blind(deltas in prop::collection::vec("[ -~é\\n]{0,30}", 0..12), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let stream = chat_stream(&deltas);
        let read = |pieces: &[Bytes]| {
            let mut r = SseReader::new(1 << 16);
            let mut events = Vec::new();
            for p in pieces {
                r.feed(p);
                while let Some(e) = r.next_event() {
                    events.push(format!("{e:?}"));
                }
            }
            let end = format!("{:?}", r.finish());
            while let Some(e) = r.next_event() {
                events.push(format!("{e:?}"));
            }
            (events, end)
        };
        let whole = read(&[Bytes::from(stream.clone())]);
        prop_assert_eq!(read(&chunks(&stream, &cuts)), whole.clone());
        prop_assert_eq!(whole.0.len(), deltas.len() + 2);
    }

    #[test]
    fn sse_reader_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let mut r = SseReader::new(256);
        for p in chunks(&bytes, &cuts) {
            r.feed(&p);
            while let Some(e) = r.next_event() {
                prop_assert!(e.data.len() <= 256 * 2, "an event over the bound was kept");
            }
        }
        let _ = r.finish();
    }

    /// The observers: chunking never changes the observation; text stays within the bound;
    /// any bytes in any shape are survived.
    #[test]
    fn observers_are_chunking_blind_and_bounded(deltas in prop::collection::vec("[ -~é]{0,300}", 0..30), cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let stream = chat_stream(&deltas);
        let whole = observe(ApiShape::ChatCompletions, true, &[Bytes::from(stream.clone())]);
        let cut = observe(ApiShape::ChatCompletions, true, &chunks(&stream, &cuts));
        prop_assert_eq!(&whole, &cut);
        prop_assert!(whole.text.len() <= MAX_OBSERVED);
        if deltas.concat().len() <= MAX_OBSERVED {
            prop_assert_eq!(whole.text, deltas.concat());
        }
    }

    #[test]
    fn observers_survive_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), shape_i in 0..4usize, sse in any::<bool>(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let o = observe(SHAPES[shape_i], sse, &chunks(&bytes, &cuts));
        prop_assert!(o.text.len() <= MAX_OBSERVED);
    }

    /// What the client receives is the upstream's bytes, except the `model` value, however the
    /// body was cut.
    #[test]
    fn model_rewrite_changes_only_the_model(deltas in prop::collection::vec("[ -~]{0,30}", 0..8), cuts in prop::collection::vec(any::<usize>(), 0..12), sse in any::<bool>()) {
        let upstream: Vec<u8> = if sse {
            chat_stream(&deltas)
        } else {
            json!({"id": "x", "model": "real-model-2024", "choices": [{"message": {"content": deltas.concat()}}]}).to_string().into_bytes()
        };
        let mut rewriter = ModelRewriter::new("support-bot", sse);
        let mut out = Vec::new();
        for p in chunks(&upstream, &cuts) {
            if let Some(b) = rewriter.push(p) {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = rewriter.finish() {
            out.extend_from_slice(&b);
        }
        let expected = String::from_utf8(upstream).unwrap().replace("\"model\":\"real-model-2024\"", "\"model\":\"support-bot\"");
        prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    /// A stream of any of the four APIs, cut anywhere, reaches the client as the upstream's
    /// bytes with only the `model` value changed, and is observed as the uncut stream is: the
    /// whole answer (a mirror waits) and the outcome only (usage, finish, failures) alike.
    #[test]
    fn streams_cut_anywhere_are_relayed_and_observed_the_same(deltas in prop::collection::vec("[ -~é\n]{0,40}", 0..12), cuts in prop::collection::vec(any::<usize>(), 0..24), shape_i in 0..4usize, crlf in any::<bool>()) {
        let shape = SHAPES[shape_i];
        let mut upstream = api_stream(shape, &deltas);
        if crlf {
            upstream = String::from_utf8(upstream).unwrap().replace('\n', "\r\n").into_bytes();
        }
        let relay = |pieces: &[Bytes]| {
            let mut rewriter = ModelRewriter::new("support-bot", true);
            let mut full = Observer::new(shape, true, 1 << 20);
            let mut outcome = Observer::usage_only(shape, true, 1 << 20);
            let mut out = Vec::new();
            for p in pieces {
                full.feed(p);
                outcome.feed(p);
                if let Some(b) = rewriter.push(p.clone()) {
                    out.extend_from_slice(&b);
                }
            }
            if let Some(b) = rewriter.finish() {
                out.extend_from_slice(&b);
            }
            (out, full.finish(200, true), outcome.finish(200, true))
        };
        let whole = relay(&[Bytes::from(upstream.clone())]);
        let cut = relay(&chunks(&upstream, &cuts));
        let expected = String::from_utf8(upstream).unwrap().replace("\"model\":\"real-model-2024\"", "\"model\":\"support-bot\"");
        prop_assert_eq!(String::from_utf8(cut.0).unwrap(), expected);
        prop_assert_eq!(&cut.1, &whole.1);
        prop_assert_eq!(&cut.2, &whole.2);
        prop_assert_eq!(whole.1.failure, None);
        prop_assert_eq!(whole.1.text, deltas.concat());
        prop_assert_eq!(whole.2.failure, None);
        prop_assert_eq!(whole.2.usage, whole.1.usage);
        prop_assert!(whole.2.usage.completion_tokens.is_some());
    }

    /// The config checker: any mutation of the example file is parsed or refused with problems
    /// whose lines exist, never a panic.
    #[test]
    fn config_checker_never_panics(edits in prop::collection::vec((any::<usize>(), 0..4u8, "[ -~]{0,12}"), 1..6)) {
        let example = include_str!("../config/understudy.toml");
        let mut lines: Vec<String> = example.lines().map(str::to_owned).collect();
        for (at, op, text) in edits {
            let i = at % lines.len().max(1);
            match op {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(i, l); }
                2 => lines[i].push_str(&text),
                _ => lines.insert(i, text),
            }
            if lines.is_empty() {
                lines.push(String::new());
            }
        }
        let text = lines.join("\n");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        if let Err(problems) = Config::parse(&text, &dir) {
            prop_assert!(!problems.is_empty());
            for p in problems {
                if let Some(line) = p.line {
                    prop_assert!(line >= 1 && line <= lines.len() + 1, "line {} of {}", line, lines.len());
                }
            }
        }
    }
}
