//! The spans of a request and of the calls it causes, with their attributes: the GenAI semantic
//! conventions (`gen_ai.*`) and Understudy's own (`understudy.route`, `.release`, `.phase`,
//! `.role`). Attributes are only built for spans the sampler keeps (`is_recording`).

use std::borrow::Cow;

use http::{HeaderMap, Method};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Array, Context, ContextGuard, KeyValue, StringValue, Value};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::Telemetry;
use crate::config::ApiFlavor;
use crate::domain::Role;
use crate::observe::{ApiShape, Observation, Usage};
use crate::state::{Release, Route, Upstream};

/// How many response frames are searched for the `model` field before giving up.
const SNIFF_FRAMES: u8 = 4;

/// A span of a client request (server kind) or of a call it caused (client kind).
pub struct LlmSpan {
    /// The span, as a context: what children and the `traceparent` header are made from.
    cx: Context,
    /// The sampler kept it: attributes are worth building.
    recording: bool,
    /// Response frames still to search for the upstream's `model` (0 once found).
    sniff: u8,
}

/// What a mirrored request carries to start its spans under the client request's span.
pub struct TraceParent {
    telemetry: Telemetry,
    cx: Context,
}

/// Which remote scorer a call is for.
#[derive(Debug, Clone, Copy)]
pub enum ScorerKind {
    /// The pairwise LLM judge (chat).
    Judge,
    /// Embeddings for the semantic similarity.
    Semantic,
}

impl ScorerKind {
    fn as_str(self) -> &'static str {
        match self {
            ScorerKind::Judge => "judge",
            ScorerKind::Semantic => "semantic",
        }
    }

    fn operation(self) -> &'static str {
        match self {
            ScorerKind::Judge => "chat",
            ScorerKind::Semantic => "embeddings",
        }
    }
}

/// `gen_ai.operation.name` of an API.
fn operation(shape: ApiShape) -> &'static str {
    match shape {
        ApiShape::Completions => "text_completion",
        ApiShape::ChatCompletions | ApiShape::Responses | ApiShape::Messages => "chat",
    }
}

/// `gen_ai.provider.name` of an upstream (the API it speaks).
fn provider(upstream: &Upstream) -> &'static str {
    match upstream.api {
        ApiFlavor::OpenAi => "openai",
        ApiFlavor::Anthropic => "anthropic",
    }
}

fn model_attributes(upstream: &Upstream, model: &str) -> [KeyValue; 4] {
    let provider = provider(upstream);
    [
        KeyValue::new("gen_ai.provider.name", provider),
        // The name before semantic conventions 1.37, still what many tools read.
        KeyValue::new("gen_ai.system", provider),
        KeyValue::new("gen_ai.request.model", model.to_string()),
        KeyValue::new("understudy.upstream", upstream.name.clone()),
    ]
}

fn route_attributes(route: &Route, release: &Release, role: Role) -> [KeyValue; 4] {
    [
        KeyValue::new("understudy.route", route.name.clone()),
        KeyValue::new("understudy.release", i64::from(release.version)),
        KeyValue::new("understudy.phase", route.phase.as_str()),
        KeyValue::new("understudy.role", role.as_str()),
    ]
}

impl Telemetry {
    /// The span of a client request: a child of the client's `traceparent` when it sent one
    /// (else a new trace).
    pub fn client_request(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        shape: Option<ApiShape>,
    ) -> LlmSpan {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let name: Cow<'static, str> = match shape {
            Some(shape) => operation(shape).into(),
            None => method.to_string().into(),
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        let mut span = LlmSpan::new(parent.with_span(span));
        if span.recording {
            let s = span.cx.span();
            s.set_attribute(KeyValue::new("http.request.method", method.to_string()));
            s.set_attribute(KeyValue::new("url.path", path.to_string()));
            if let Some(shape) = shape {
                s.set_attribute(KeyValue::new("gen_ai.operation.name", operation(shape)));
            }
        }
        if shape.is_none() {
            span.sniff = 0;
        }
        span
    }

    /// What a mirror of the request of `span` needs to start its own spans under it.
    pub fn parent(&self, span: &LlmSpan) -> TraceParent {
        TraceParent {
            telemetry: self.clone(),
            cx: span.cx.clone(),
        }
    }

    fn call(&self, parent: &Context, name: String) -> LlmSpan {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, parent);
        LlmSpan::new(parent.with_span(span))
    }
}

impl TraceParent {
    /// The span of one mirrored call of `release` (the other release, or stable again for
    /// the noise floor).
    pub fn mirror_call(
        &self,
        shape: ApiShape,
        route: &Route,
        release: &Release,
        role: Role,
    ) -> LlmSpan {
        let op = operation(shape);
        let span = self
            .telemetry
            .call(&self.cx, format!("{op} {}", release.model));
        if span.recording {
            let s = span.cx.span();
            s.set_attribute(KeyValue::new("gen_ai.operation.name", op));
            s.set_attributes(model_attributes(&release.upstream, &release.model));
            s.set_attributes(route_attributes(route, release, role));
            s.set_attribute(KeyValue::new("understudy.mirror", true));
        }
        span
    }

    /// The span of one remote scorer's work for a sample (the judge's one or two questions,
    /// or one embeddings call).
    pub fn scorer_call(
        &self,
        kind: ScorerKind,
        route: &Route,
        upstream: &Upstream,
        model: &str,
    ) -> LlmSpan {
        let op = kind.operation();
        let mut span = self.telemetry.call(&self.cx, format!("{op} {model}"));
        span.sniff = 0;
        if span.recording {
            let s = span.cx.span();
            s.set_attribute(KeyValue::new("gen_ai.operation.name", op));
            s.set_attributes(model_attributes(upstream, model));
            s.set_attribute(KeyValue::new("understudy.route", route.name.clone()));
            s.set_attribute(KeyValue::new("understudy.phase", route.phase.as_str()));
            s.set_attribute(KeyValue::new("understudy.scorer", kind.as_str()));
        }
        span
    }
}

impl LlmSpan {
    fn new(cx: Context) -> Self {
        let recording = cx.span().is_recording();
        LlmSpan {
            cx,
            recording,
            sniff: SNIFF_FRAMES,
        }
    }

    /// The request was routed: `release` serves it in `role`.
    pub fn routed(&mut self, shape: ApiShape, route: &Route, release: &Release, role: Role) {
        if !self.recording {
            return;
        }
        let s = self.cx.span();
        s.update_name(format!("{} {}", operation(shape), release.model));
        s.set_attributes(model_attributes(&release.upstream, &release.model));
        s.set_attributes(route_attributes(route, release, role));
    }

    /// Puts this span's `traceparent` (and the client's `tracestate`) on a request to an
    /// upstream, replacing any the client sent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        TraceContextPropagator::new().inject_context(&self.cx, &mut HeaderInjector(headers));
    }

    /// Makes this span current on this thread until the guard drops: log lines written
    /// meanwhile carry its trace id (`telemetry::current_trace_id`).
    pub fn enter(&self) -> ContextGuard {
        self.cx.clone().attach()
    }

    /// A frame of the response body as the upstream sent it: searched for the upstream's
    /// `model` (`gen_ai.response.model`) in the first few frames.
    pub fn saw(&mut self, frame: &[u8]) {
        if self.sniff == 0 || !self.recording {
            return;
        }
        self.sniff -= 1;
        if let Some(model) = sniff_model(frame) {
            self.sniff = 0;
            self.cx
                .span()
                .set_attribute(KeyValue::new("gen_ai.response.model", model));
        }
    }

    /// The call or request ended with `obs` (`cancelled`: the client went away first).
    pub fn finish(self, obs: &Observation, cancelled: bool) {
        let s = self.cx.span();
        if self.recording {
            if obs.status != 0 {
                s.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(obs.status),
                ));
            }
            s.set_attributes(usage_attributes(obs.usage));
            if let Some(reason) = &obs.finish_reason {
                let reasons = vec![StringValue::from(reason.name().to_string())];
                s.set_attribute(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(reasons)),
                ));
            }
            let error = match &obs.failure {
                _ if cancelled => Some(Cow::Borrowed("cancelled")),
                Some(failure) => Some(Cow::Owned(failure.to_string())),
                None => None,
            };
            if let Some(error) = error {
                s.set_attribute(KeyValue::new("error.type", error.clone()));
                s.set_status(Status::error(error));
            }
        }
        s.end();
    }

    /// A remote scorer's call ended: its tokens, or why it gave no value.
    pub fn finish_scorer(self, usage: Usage, error: Option<&'static str>) {
        let s = self.cx.span();
        if self.recording {
            s.set_attributes(usage_attributes(usage));
            if let Some(error) = error {
                s.set_attribute(KeyValue::new("error.type", error));
                s.set_status(Status::error(error));
            }
        }
        s.end();
    }

    /// The request failed before any response body: answered with `status`.
    pub fn failed(self, status: u16, error: &'static str) {
        let s = self.cx.span();
        if self.recording {
            s.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            s.set_attribute(KeyValue::new("error.type", error));
            s.set_status(Status::error(error));
        }
        s.end();
    }
}

fn usage_attributes(usage: Usage) -> impl Iterator<Item = KeyValue> {
    let count = |key: &'static str, n: Option<u64>| {
        n.map(|n| KeyValue::new(key, i64::try_from(n).unwrap_or(i64::MAX)))
    };
    [
        count("gen_ai.usage.input_tokens", usage.prompt_tokens),
        count("gen_ai.usage.output_tokens", usage.completion_tokens),
    ]
    .into_iter()
    .flatten()
}

/// The first `"model": "..."` string value in `chunk` (a JSON body or SSE events), unescaped.
fn sniff_model(chunk: &[u8]) -> Option<String> {
    fn skip_ws(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
        &b[n..]
    }
    for at in memchr::memmem::find_iter(chunk, b"\"model\"") {
        let rest = skip_ws(&chunk[at + 7..]);
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let value = skip_ws(rest);
        if value.first() != Some(&b'"') {
            continue;
        }
        let mut escaped = false;
        for (i, &c) in value.iter().enumerate().skip(1) {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return serde_json::from_slice(&value[..=i]).ok(),
                _ => {}
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::sniff_model;

    #[test]
    fn the_response_model_is_found_in_bodies_and_events() {
        let check = |chunk: &str, want: Option<&str>| {
            assert_eq!(sniff_model(chunk.as_bytes()).as_deref(), want, "{chunk}");
        };
        check(
            r#"{"id":"x","model":"gpt-4o-2024-08-06","choices":[]}"#,
            Some("gpt-4o-2024-08-06"),
        );
        check(
            "data: {\"type\":\"message_start\",\"message\":{\"model\" : \"claude-x\"}}\n\n",
            Some("claude-x"),
        );
        check(r#"{"model":"a\"b"}"#, Some("a\"b"));
        // An escaped quote inside text is not a key; a key cut at the chunk's end is no value.
        check(
            r#"{"text":"say \"model\": \"no\"","model":"yes"}"#,
            Some("yes"),
        );
        check(r#"{"model":"cut"#, None);
        check(r#"{"model":null}"#, None);
        check("", None);
    }
}
