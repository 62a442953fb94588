//! Simulated LLM upstream: an HTTP server speaking the OpenAI (chat completions, completions,
//! responses) and Anthropic (messages) APIs, streaming and not, with adjustable latency and
//! injected faults. It is the only fake in the project: integration tests, the SDK tests and
//! `understudy demo` run Understudy against it.
//!
//! Answers come from small built-in corpora picked by a hash of the last user message, so two
//! models with the same [`Style`] answer a request identically. A model's [`Behavior`] can be
//! overridden per request with the headers `x-sim-fault` (`500`, `429`, any 4xx/5xx, `reset`,
//! `hang`, `stall`, `broken-sse`) and `x-sim-latency-ms`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// How the simulated model words its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A deterministic answer derived from the request's last user message: 3-6 sentences of a
    /// built-in support-assistant corpus picked by a hash of the prompt, so two models with
    /// `Style::Echo` give identical output for the same request.
    Echo,
    /// Echo's answer with benign randomness: each word after the first two that has a synonym in
    /// a small built-in table is swapped for it with probability 0.1.
    Benign,
    /// A different, unrelated answer of similar length (another corpus).
    Unrelated,
    /// "I'm sorry, but I can't help with that request."
    Refuse,
    /// The Echo answer cut at about a third, with finish reason length / `max_tokens`.
    Truncate,
    /// When the request asks for JSON (OpenAI `response_format` / `text.format` of type
    /// `json_object` or `json_schema`, or the prompt mentions the word JSON) Echo answers with a
    /// small JSON object; `BrokenJson` answers with that object missing its closing brace.
    /// Otherwise like Echo.
    BrokenJson,
}

/// A failure injected into a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and the API's error JSON body.
    Status(u16),
    /// Send headers and part of the body, then drop the connection (streaming: after 2 events).
    ResetMidStream,
    /// Never answer (hold the connection open until shutdown).
    Hang,
    /// Send headers and part of the body (streaming: 2 events), then nothing more, with the
    /// connection held open until shutdown.
    StallMidStream,
    /// Streaming: send 2 good events, then broken non-JSON data lines, then end without the
    /// terminal event. Non-streaming: a 200 with the JSON body cut in half.
    BrokenSse,
}

/// How the simulated upstream treats the requests for one model.
///
/// Tool requests (a `tools` list, unless `tool_choice` is none or the last message is a tool
/// result) call the first tool for every style but `Refuse`; `Unrelated` picks other argument
/// values, the other styles only shape text answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    /// How the answer is worded.
    pub style: Style,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Delay between streamed events.
    pub chunk_delay: Duration,
    /// The fault to inject, if any.
    pub fault: Option<Fault>,
    /// Probability that the fault applies to a request (1.0 = always).
    pub fault_rate: f64,
}

impl Default for Behavior {
    /// Echo, no latency, no fault, fault rate 1.0.
    fn default() -> Self {
        Self {
            style: Style::Echo,
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fault: None,
            fault_rate: 1.0,
        }
    }
}

/// A request as the simulated upstream received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request path, without the query.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

/// How many received requests [`SimUpstream::requests`] keeps.
const RECENT_LIMIT: usize = 256;

/// The simulated upstream: per-model behaviours, call counters and the recent requests. Share it
/// through the `Arc` that [`SimUpstream::new`] returns.
#[derive(Debug)]
pub struct SimUpstream {
    default: Behavior,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    behaviors: HashMap<String, Behavior>,
    calls: u64,
    calls_by_model: HashMap<String, u64>,
    recent: VecDeque<RecordedRequest>,
}

impl SimUpstream {
    /// A simulated upstream answering every model with `default` until told otherwise.
    pub fn new(default: Behavior) -> Arc<Self> {
        Arc::new(Self {
            default,
            state: Mutex::default(),
        })
    }

    /// Behaviour for requests whose JSON `model` equals `model` (others get the default). Takes
    /// effect for the next request, also while serving.
    pub fn set_behavior(&self, model: &str, behavior: Behavior) {
        self.state().behaviors.insert(model.to_owned(), behavior);
    }

    /// How many requests were received, on any path.
    pub fn calls(&self) -> u64 {
        self.state().calls
    }

    /// How many API requests named `model`.
    pub fn calls_for(&self, model: &str) -> u64 {
        self.state().calls_by_model.get(model).copied().unwrap_or(0)
    }

    /// The last 256 requests received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().recent.iter().cloned().collect()
    }

    /// Like [`SimUpstream::requests`], and forgets them.
    pub fn take_requests(&self) -> Vec<RecordedRequest> {
        self.state().recent.drain(..).collect()
    }

    /// Serve HTTP/1.1 (keep-alive) and h2c on `listener` until `shutdown` resolves, then release
    /// hanging requests, cut running streams, close the connections and wait for their tasks.
    ///
    /// Returns the listener's error if accepting fails for a reason other than one connection.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TrackedExecutor(tracker.clone()));
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            let stream = tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) if is_connection_error(&error) => continue,
                    Err(error) => break Err(error),
                },
            };
            let sim = Arc::clone(&self);
            let request_cancel = cancel.clone();
            let service =
                service_fn(move |request| Arc::clone(&sim).handle(request, request_cancel.clone()));
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tracker.spawn(async move {
                // A connection's own failure (client gone, injected reset) ends only that connection.
                let _ = connection.await;
            });
        };
        drop(listener);
        cancel.cancel();
        graceful.shutdown().await;
        tracker.close();
        tracker.wait().await;
        result
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and keeps the request; returns the behaviour for its model.
    fn record(&self, parts: &Parts, body: &Bytes, model: Option<&str>) -> Behavior {
        let request = RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        let mut state = self.state();
        state.calls += 1;
        if state.recent.len() == RECENT_LIMIT {
            state.recent.pop_front();
        }
        state.recent.push_back(request);
        let Some(model) = model else {
            return self.default.clone();
        };
        match state.calls_by_model.get_mut(model) {
            Some(calls) => *calls += 1,
            None => {
                state.calls_by_model.insert(model.to_owned(), 1);
            }
        }
        state.behaviors.get(model).unwrap_or(&self.default).clone()
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        cancel: CancellationToken,
    ) -> Result<Response<SimBody>, SimError> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let api = if parts.method == Method::POST {
            Api::from_path(parts.uri.path())
        } else {
            None
        };
        let Some(api) = api else {
            self.record(&parts, &body, None);
            return Ok(self.other_endpoint(&parts, &body));
        };
        let prompt = parse_request(api, &body);
        let behavior = self.record(
            &parts,
            &body,
            prompt.as_ref().ok().map(|p| p.model.as_str()),
        );
        match prompt {
            Ok(prompt) => simulate(api, &prompt, &behavior, &parts.headers, &cancel).await,
            Err(message) => Ok(error_response(
                api.is_anthropic(),
                StatusCode::BAD_REQUEST,
                &message,
            )),
        }
    }

    /// `GET /v1/models`, `ANY /echo/...` and 404 for the rest.
    fn other_endpoint(&self, parts: &Parts, body: &Bytes) -> Response<SimBody> {
        let path = parts.uri.path();
        if path == "/echo" || path.starts_with("/echo/") {
            return json_response(&echo_body(parts, body));
        }
        if parts.method == Method::GET && path == "/v1/models" {
            let mut ids: Vec<String> = self.state().behaviors.keys().cloned().collect();
            ids.sort_unstable();
            let data: Vec<Value> = ids
                .into_iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "understudy-sim"}))
                .collect();
            return json_response(&json!({"object": "list", "data": data}));
        }
        let message = format!("Invalid URL ({} {path})", parts.method);
        error_response(false, StatusCode::NOT_FOUND, &message)
    }
}

/// Runs hyper's HTTP/2 stream tasks on the server's tracker so that shutdown drains them too.
#[derive(Clone)]
struct TrackedExecutor(TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Accept errors that concern one connection, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Why a response was not (fully) sent.
#[derive(Debug, thiserror::Error)]
enum SimError {
    #[error("simulated connection reset")]
    Reset,
    #[error("simulated upstream shutting down")]
    Shutdown,
    #[error("reading the request body: {0}")]
    Body(#[from] hyper::Error),
}

/// Latency, faults and the answer for one API request.
async fn simulate(
    api: Api,
    prompt: &Prompt,
    behavior: &Behavior,
    headers: &HeaderMap,
    cancel: &CancellationToken,
) -> Result<Response<SimBody>, SimError> {
    let fault = header_fault(headers).or_else(|| {
        behavior
            .fault
            .filter(|_| rand::random::<f64>() < behavior.fault_rate)
    });
    if fault == Some(Fault::Hang) {
        cancel.cancelled().await;
        return Err(SimError::Shutdown);
    }
    let latency = header_latency(headers).unwrap_or(behavior.latency);
    if !latency.is_zero()
        && cancel
            .run_until_cancelled(tokio::time::sleep(latency))
            .await
            .is_none()
    {
        return Err(SimError::Shutdown);
    }
    if let Some(Fault::Status(code)) = fault {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = format!("Simulated upstream failure ({status})");
        return Ok(error_response(api.is_anthropic(), status, &message));
    }
    let answer = compose(behavior.style, prompt, &mut rand::rng());
    if !prompt.stream {
        let full = Bytes::from(render_full(api, prompt, &answer).to_string());
        let half = full.slice(..full.len() / 2);
        let body = match fault {
            Some(Fault::ResetMidStream) => {
                SimBody::stream(vec![half], Duration::ZERO, Ending::Reset, cancel)
            }
            Some(Fault::StallMidStream) => {
                SimBody::stream(vec![half], Duration::ZERO, Ending::Stall, cancel)
            }
            Some(Fault::BrokenSse) => SimBody::full(half),
            _ => SimBody::full(full),
        };
        return Ok(respond(StatusCode::OK, JSON_TYPE, body));
    }
    let mut events = render_stream(api, prompt, &answer);
    let ending = match fault {
        Some(Fault::ResetMidStream) => {
            events.truncate(2);
            Ending::Reset
        }
        Some(Fault::StallMidStream) => {
            events.truncate(2);
            Ending::Stall
        }
        Some(Fault::BrokenSse) => {
            events.truncate(2);
            events.extend(
                BROKEN_EVENTS
                    .iter()
                    .map(|e| Bytes::from_static(e.as_bytes())),
            );
            Ending::Clean
        }
        _ => Ending::Clean,
    };
    let body = SimBody::stream(events, behavior.chunk_delay, ending, cancel);
    Ok(respond(StatusCode::OK, SSE_TYPE, body))
}

/// What a `broken-sse` stream sends after its first two events.
const BROKEN_EVENTS: [&str; 2] = [
    "data: {\"id\": \"broken\", \"choices\": [{\"delta\": {\"content\": \"unterminated\n\n",
    "data: <html><body>502 Bad Gateway</body></html>\n\n",
];

fn header_fault(headers: &HeaderMap) -> Option<Fault> {
    parse_fault(headers.get("x-sim-fault")?.to_str().ok()?.trim())
}

/// `x-sim-fault` values: a 4xx/5xx status, `reset`, `hang`, `stall` or `broken-sse`.
fn parse_fault(value: &str) -> Option<Fault> {
    match value {
        "reset" => Some(Fault::ResetMidStream),
        "hang" => Some(Fault::Hang),
        "stall" => Some(Fault::StallMidStream),
        "broken-sse" => Some(Fault::BrokenSse),
        code => code
            .parse()
            .ok()
            .filter(|code| (400..=599).contains(code))
            .map(Fault::Status),
    }
}

fn header_latency(headers: &HeaderMap) -> Option<Duration> {
    let millis = headers
        .get("x-sim-latency-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse();
    millis.ok().map(Duration::from_millis)
}

// ---------------------------------------------------------------------------------------------
// Requests

/// The simulated API endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Responses,
    Messages,
}

impl Api {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/completions" => Some(Self::Completions),
            "/v1/responses" => Some(Self::Responses),
            "/v1/messages" => Some(Self::Messages),
            _ => None,
        }
    }

    fn is_anthropic(self) -> bool {
        self == Self::Messages
    }
}

/// What the simulation needs from an API request.
#[derive(Debug)]
struct Prompt {
    model: String,
    stream: bool,
    include_usage: bool,
    /// Hash of the last user message; picks the answer.
    seed: u64,
    /// Words in all the prompt's text.
    prompt_tokens: u64,
    /// `max_tokens` and its variants.
    max_words: Option<usize>,
    wants_json: bool,
    /// The tool to call, if the model should call one.
    tool: Option<ToolSpec>,
}

#[derive(Debug)]
struct ToolSpec {
    name: String,
    /// The JSON-schema `properties` of the tool's parameters.
    properties: Map<String, Value>,
}

static NULL: Value = Value::Null;

/// Reads an API request body; the error is the message for a 400.
fn parse_request(api: Api, body: &[u8]) -> Result<Prompt, String> {
    let mut request: Value = serde_json::from_slice(body)
        .map_err(|error| format!("We could not parse the JSON body of your request: {error}"))?;
    let model = match request.get_mut("model").map(Value::take) {
        Some(Value::String(model)) => model,
        _ => return Err("you must provide a model parameter".to_owned()),
    };
    let mut text = PromptText::default();
    let seed = match api {
        Api::Chat => text.messages(as_slice(&request["messages"])),
        Api::Messages => {
            for_each_text(&request["system"], &mut |s| text.add(s));
            text.messages(as_slice(&request["messages"]))
        }
        Api::Responses => {
            for_each_text(&request["instructions"], &mut |s| text.add(s));
            match &request["input"] {
                Value::String(input) => {
                    text.add(input);
                    fnv(FNV_OFFSET, input)
                }
                items => text.messages(as_slice(items)),
            }
        }
        Api::Completions => {
            let mut seed = FNV_OFFSET;
            for_each_text(&request["prompt"], &mut |s| {
                text.add(s);
                seed = fnv(seed, s);
            });
            seed
        }
    };
    let format = match api {
        Api::Chat => &request["response_format"]["type"],
        Api::Responses => &request["text"]["format"]["type"],
        Api::Completions | Api::Messages => &NULL,
    };
    let wants_json = *format == "json_object" || *format == "json_schema" || text.mentions_json;
    let max_words = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|key| request[key].as_u64())
        .map(|max| usize::try_from(max).unwrap_or(usize::MAX));
    let tool = if tool_result_last(api, &request) {
        None
    } else {
        first_tool(api, &mut request)
    };
    Ok(Prompt {
        model,
        stream: request["stream"].as_bool() == Some(true),
        include_usage: request["stream_options"]["include_usage"].as_bool() == Some(true),
        seed,
        prompt_tokens: text.words,
        max_words,
        wants_json,
        tool,
    })
}

fn as_slice(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// Calls `f` with each piece of text of a message content: a string, or parts with `text` (and
/// Anthropic `tool_result` parts with their own `content`).
fn for_each_text<'v>(content: &'v Value, f: &mut impl FnMut(&'v str)) {
    match content {
        Value::String(text) => f(text),
        Value::Array(parts) => {
            for part in parts {
                match part {
                    Value::String(text) => f(text),
                    _ => {
                        if let Some(text) = part["text"].as_str() {
                            f(text);
                        }
                        for_each_text(&part["content"], f);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Word count and JSON mention over the prompt's text.
#[derive(Default)]
struct PromptText {
    words: u64,
    mentions_json: bool,
}

impl PromptText {
    fn add(&mut self, text: &str) {
        self.words += count_words(text);
        self.mentions_json |= text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word.eq_ignore_ascii_case("json"));
    }

    /// Adds all messages' text; returns the hash of the last user message.
    fn messages(&mut self, messages: &[Value]) -> u64 {
        for message in messages {
            for_each_text(&message["content"], &mut |s| self.add(s));
        }
        let mut seed = FNV_OFFSET;
        if let Some(last_user) = messages.iter().rev().find(|m| m["role"] == "user") {
            for_each_text(&last_user["content"], &mut |s| seed = fnv(seed, s));
        }
        seed
    }
}

/// Whether the conversation ends with a tool result (then the model answers in text).
fn tool_result_last(api: Api, request: &Value) -> bool {
    fn last(list: &Value) -> &Value {
        as_slice(list).last().unwrap_or(&NULL)
    }
    match api {
        Api::Chat => last(&request["messages"])["role"] == "tool",
        Api::Responses => last(&request["input"])["type"] == "function_call_output",
        Api::Messages => as_slice(&last(&request["messages"])["content"])
            .iter()
            .any(|part| part["type"] == "tool_result"),
        Api::Completions => false,
    }
}

/// The first (function) tool of the request, unless `tool_choice` is none.
fn first_tool(api: Api, request: &mut Value) -> Option<ToolSpec> {
    let choice = &request["tool_choice"];
    if *choice == "none" || choice["type"] == "none" {
        return None;
    }
    let (tool, schema) = match api {
        Api::Chat => (request.pointer_mut("/tools/0/function")?, "parameters"),
        Api::Responses => (
            request
                .get_mut("tools")?
                .as_array_mut()?
                .iter_mut()
                .find(|tool| tool["type"] == "function")?,
            "parameters",
        ),
        Api::Messages => (request.pointer_mut("/tools/0")?, "input_schema"),
        Api::Completions => return None,
    };
    let Some(Value::String(name)) = tool.get_mut("name").map(Value::take) else {
        return None;
    };
    let properties = match tool
        .pointer_mut(&format!("/{schema}/properties"))
        .map(Value::take)
    {
        Some(Value::Object(properties)) => properties,
        _ => Map::new(),
    };
    Some(ToolSpec { name, properties })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `text`, continuing from `seed` (start with [`FNV_OFFSET`]); stable across runs.
fn fnv(seed: u64, text: &str) -> u64 {
    text.bytes().fold(seed, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

// ---------------------------------------------------------------------------------------------
// Answers

/// What the simulated model says.
#[derive(Debug)]
struct Answer {
    output: Output,
    finish: Finish,
    /// Completion tokens: words of a text, alphanumeric runs of tool arguments.
    tokens: u64,
}

#[derive(Debug)]
enum Output {
    Text(String),
    Tool { name: String, arguments: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    Tool,
}

impl Answer {
    fn text(text: String, finish: Finish) -> Self {
        let tokens = count_words(&text);
        Self {
            output: Output::Text(text),
            finish,
            tokens,
        }
    }

    /// The text, or the tool arguments.
    fn content(&self) -> &str {
        match &self.output {
            Output::Text(text) => text,
            Output::Tool { arguments, .. } => arguments,
        }
    }
}

const REFUSAL: &str = "I'm sorry, but I can't help with that request.";
/// Mixed into the seed of `Style::Unrelated`.
const UNRELATED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// The answer of a model with `style` to `prompt`; `rng` drives `Style::Benign`.
fn compose(style: Style, prompt: &Prompt, rng: &mut impl Rng) -> Answer {
    if style == Style::Refuse {
        return limit(Answer::text(REFUSAL.to_owned(), Finish::Stop), prompt);
    }
    let (corpus, seed) = match style {
        Style::Unrelated => (UNRELATED, prompt.seed ^ UNRELATED_SALT),
        _ => (SUPPORT, prompt.seed),
    };
    let sentences = pick(corpus, seed);
    if let Some(tool) = &prompt.tool {
        let arguments = tool_arguments(tool, &sentences, seed);
        let tokens = arguments
            .split(|c: char| !c.is_alphanumeric())
            .filter(|run| !run.is_empty())
            .count() as u64;
        let output = Output::Tool {
            name: tool.name.clone(),
            arguments,
        };
        return Answer {
            output,
            finish: Finish::Tool,
            tokens,
        };
    }
    let mut prose = sentences.join(" ");
    if style == Style::Benign {
        prose = vary(&prose, rng);
    }
    let mut text = if prompt.wants_json {
        json_answer(prose, seed)
    } else {
        prose
    };
    let mut finish = Finish::Stop;
    match style {
        Style::BrokenJson if prompt.wants_json => {
            text.pop();
        }
        Style::Truncate => {
            let words = text.split_whitespace().count();
            cut_words(&mut text, words.div_ceil(3));
            finish = Finish::Length;
        }
        _ => {}
    }
    limit(Answer::text(text, finish), prompt)
}

/// Cuts a text answer at the request's `max_tokens` words.
fn limit(mut answer: Answer, prompt: &Prompt) -> Answer {
    if let (Output::Text(text), Some(max)) = (&mut answer.output, prompt.max_words) {
        if cut_words(text, max) {
            answer.finish = Finish::Length;
            answer.tokens = count_words(text);
        }
    }
    answer
}

/// 3-6 distinct sentences of `corpus` chosen by `seed`.
fn pick(corpus: &'static [&'static str], seed: u64) -> Vec<&'static str> {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = rng.random_range(3..=6).min(corpus.len());
    rand::seq::index::sample(&mut rng, corpus.len(), count)
        .into_iter()
        .filter_map(|index| corpus.get(index).copied())
        .collect()
}

/// Keeps the first `max` words of `text` (dropping what follows); true if it cut.
fn cut_words(text: &mut String, max: usize) -> bool {
    let mut words = 0;
    let mut end = 0;
    let mut in_word = false;
    for (index, c) in text.char_indices() {
        if c.is_whitespace() {
            in_word = false;
            continue;
        }
        if !in_word {
            if words == max {
                text.truncate(end);
                return true;
            }
            in_word = true;
            words += 1;
        }
        end = index + c.len_utf8();
    }
    false
}

/// `text` with each word after the first two that has a synonym swapped with probability 0.1.
fn vary(text: &str, rng: &mut impl Rng) -> String {
    let mut varied = String::with_capacity(text.len() + 32);
    for (index, word) in text.split(' ').enumerate() {
        if index > 0 {
            varied.push(' ');
        }
        let (core, punctuation) = word.split_at(
            word.trim_end_matches(|c: char| c.is_ascii_punctuation())
                .len(),
        );
        match synonym(core) {
            Some(synonym) if index >= 2 && rng.random_bool(0.1) => {
                let mut letters = synonym.chars();
                if core.starts_with(|c: char| c.is_uppercase()) {
                    varied.extend(letters.next().map(|c| c.to_ascii_uppercase()));
                }
                varied.push_str(letters.as_str());
                varied.push_str(punctuation);
            }
            _ => varied.push_str(word),
        }
    }
    varied
}

fn synonym(word: &str) -> Option<&'static str> {
    SYNONYMS
        .iter()
        .find(|(from, _)| from.eq_ignore_ascii_case(word))
        .map(|(_, to)| *to)
}

/// The JSON-mode answer: `{"answer": prose, "order_id": n, "status": s}`.
fn json_answer(prose: String, seed: u64) -> String {
    let status = ["shipped", "processing", "delivered", "pending"][(seed % 4) as usize];
    json!({"answer": prose, "order_id": 1000 + seed % 9000, "status": status}).to_string()
}

/// Arguments for `tool`: a value per parameter property, by its schema type.
fn tool_arguments(tool: &ToolSpec, sentences: &[&str], seed: u64) -> String {
    let mut phrase = sentences.first().copied().unwrap_or("example").to_owned();
    cut_words(&mut phrase, 4);
    let phrase = phrase.trim_end_matches(|c: char| c.is_ascii_punctuation());
    let arguments: Map<String, Value> = tool
        .properties
        .iter()
        .zip(0u32..)
        .map(|((name, schema), index)| {
            let seed = seed.rotate_left(index * 7);
            (name.clone(), argument_value(schema, phrase, seed))
        })
        .collect();
    Value::Object(arguments).to_string()
}

fn argument_value(schema: &Value, phrase: &str, seed: u64) -> Value {
    let choices = as_slice(&schema["enum"]);
    if let Some(choice) = choices.get((seed % choices.len().max(1) as u64) as usize) {
        return choice.clone();
    }
    match schema["type"].as_str() {
        Some("integer" | "number") => json!(1000 + seed % 9000),
        Some("boolean") => Value::Bool(seed % 2 == 1),
        Some("array") => json!([]),
        Some("object") => json!({}),
        _ => Value::String(phrase.to_owned()),
    }
}

/// Streamed text deltas: a few words each, with the whitespace that follows them.
fn text_pieces(text: &str) -> impl Iterator<Item = &str> {
    const WORDS: usize = 3;
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut words = 0;
        let mut in_word = false;
        let mut cut = rest.len();
        for (index, c) in rest.char_indices() {
            if c.is_whitespace() {
                in_word = false;
            } else if !in_word {
                if words == WORDS {
                    cut = index;
                    break;
                }
                in_word = true;
                words += 1;
            }
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// Streamed tool-argument fragments: cut after each `:` and `,` and at spaces inside strings, so
/// every prefix is a clean partial JSON (never inside a literal or number).
fn json_pieces(json: &str) -> impl Iterator<Item = &str> {
    let mut rest = json;
    let mut in_string = false;
    let mut escaped = false;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len();
        for (index, c) in rest.char_indices() {
            let boundary = if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                c == ' '
            } else {
                in_string = c == '"';
                c == ':' || c == ','
            };
            if boundary {
                cut = index + c.len_utf8();
                break;
            }
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

// ---------------------------------------------------------------------------------------------
// Wire formats

const JSON_TYPE: &str = "application/json";
const SSE_TYPE: &str = "text/event-stream; charset=utf-8";
const FINGERPRINT: &str = "fp_understudy_sim";

fn render_full(api: Api, prompt: &Prompt, answer: &Answer) -> Value {
    match api {
        Api::Chat => chat_full(prompt, answer),
        Api::Completions => completion_full(prompt, answer),
        Api::Responses => {
            let item_ids = ResponseIds::new(answer);
            let output = json!([response_item(answer, &item_ids)]);
            let usage = response_usage(prompt, answer);
            let status = response_status(answer);
            response_object(prompt, &new_id("resp_"), now(), status, output, usage)
        }
        Api::Messages => messages_full(prompt, answer),
    }
}

fn render_stream(api: Api, prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    match api {
        Api::Chat => chat_stream(prompt, answer),
        Api::Completions => completion_stream(prompt, answer),
        Api::Responses => responses_stream(prompt, answer),
        Api::Messages => messages_stream(prompt, answer),
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}sim{:016x}", rand::random::<u64>())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One SSE event.
fn sse(event: Option<&str>, data: &Value) -> Bytes {
    Bytes::from(match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    })
}

/// An SSE event whose data carries its `type` (and the Responses API's `sequence_number`).
fn typed_event(kind: &str, mut data: Value, sequence_number: Option<u64>) -> Bytes {
    if let Value::Object(fields) = &mut data {
        fields.insert("type".to_owned(), Value::from(kind));
        if let Some(number) = sequence_number {
            fields.insert("sequence_number".to_owned(), Value::from(number));
        }
    }
    sse(Some(kind), &data)
}

fn openai_usage(prompt: &Prompt, answer: &Answer) -> Value {
    json!({
        "prompt_tokens": prompt.prompt_tokens,
        "completion_tokens": answer.tokens,
        "total_tokens": prompt.prompt_tokens + answer.tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn openai_finish(api: Api, finish: Finish) -> &'static str {
    match (api, finish) {
        (_, Finish::Length) => "length",
        (Api::Chat, Finish::Tool) => "tool_calls",
        _ => "stop",
    }
}

/// The chunks of an OpenAI chat or completions stream.
struct OpenAiStream<'a> {
    prompt: &'a Prompt,
    id: String,
    created: u64,
    object: &'static str,
    events: Vec<Bytes>,
}

impl<'a> OpenAiStream<'a> {
    fn new(prompt: &'a Prompt, id_prefix: &str, object: &'static str) -> Self {
        Self {
            prompt,
            id: new_id(id_prefix),
            created: now(),
            object,
            events: Vec::new(),
        }
    }

    fn chunk(&mut self, choices: Value, usage: Option<Value>) {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.prompt.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if let (true, Value::Object(fields)) = (self.prompt.include_usage, &mut chunk) {
            fields.insert("usage".to_owned(), usage.unwrap_or(Value::Null));
        }
        self.events.push(sse(None, &chunk));
    }

    /// The usage chunk (if asked for) and `[DONE]`.
    fn finish(mut self, answer: &Answer) -> Vec<Bytes> {
        if self.prompt.include_usage {
            self.chunk(json!([]), Some(openai_usage(self.prompt, answer)));
        }
        self.events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        self.events
    }
}

fn chat_full(prompt: &Prompt, answer: &Answer) -> Value {
    let message = match &answer.output {
        Output::Text(text) => {
            json!({"role": "assistant", "content": text, "refusal": null, "annotations": []})
        }
        Output::Tool { name, arguments } => json!({
            "role": "assistant",
            "content": null,
            "refusal": null,
            "annotations": [],
            "tool_calls": [{
                "id": new_id("call_"),
                "type": "function",
                "function": {"name": name, "arguments": arguments}
            }]
        }),
    };
    json!({
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now(),
        "model": prompt.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": openai_finish(Api::Chat, answer.finish)
        }],
        "usage": openai_usage(prompt, answer),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT
    })
}

fn chat_stream(prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut stream = OpenAiStream::new(prompt, "chatcmpl-", "chat.completion.chunk");
    match &answer.output {
        Output::Text(text) => {
            let role = json!({"role": "assistant", "content": "", "refusal": null});
            stream.chunk(choice(role, Value::Null), None);
            for piece in text_pieces(text) {
                stream.chunk(choice(json!({"content": piece}), Value::Null), None);
            }
        }
        Output::Tool { name, arguments } => {
            let role = json!({"role": "assistant", "content": null, "refusal": null});
            stream.chunk(choice(role, Value::Null), None);
            let call = json!({"tool_calls": [{
                "index": 0,
                "id": new_id("call_"),
                "type": "function",
                "function": {"name": name, "arguments": ""}
            }]});
            stream.chunk(choice(call, Value::Null), None);
            for piece in json_pieces(arguments) {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                stream.chunk(choice(delta, Value::Null), None);
            }
        }
    }
    let finish = openai_finish(Api::Chat, answer.finish);
    stream.chunk(choice(json!({}), json!(finish)), None);
    stream.finish(answer)
}

fn completion_full(prompt: &Prompt, answer: &Answer) -> Value {
    json!({
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": now(),
        "model": prompt.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{
            "text": answer.content(),
            "index": 0,
            "logprobs": null,
            "finish_reason": openai_finish(Api::Completions, answer.finish)
        }],
        "usage": openai_usage(prompt, answer)
    })
}

fn completion_stream(prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    let choice = |text: &str, finish: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
    let mut stream = OpenAiStream::new(prompt, "cmpl-", "text_completion");
    for piece in text_pieces(answer.content()) {
        stream.chunk(choice(piece, Value::Null), None);
    }
    let finish = openai_finish(Api::Completions, answer.finish);
    stream.chunk(choice("", json!(finish)), None);
    stream.finish(answer)
}

/// Ids of the Responses API output item (and of its function call).
struct ResponseIds {
    item: String,
    call: String,
}

impl ResponseIds {
    fn new(answer: &Answer) -> Self {
        match answer.output {
            Output::Text(_) => Self {
                item: new_id("msg_"),
                call: String::new(),
            },
            Output::Tool { .. } => Self {
                item: new_id("fc_"),
                call: new_id("call_"),
            },
        }
    }
}

fn response_status(answer: &Answer) -> &'static str {
    match answer.finish {
        Finish::Length => "incomplete",
        Finish::Stop | Finish::Tool => "completed",
    }
}

fn response_usage(prompt: &Prompt, answer: &Answer) -> Value {
    json!({
        "input_tokens": prompt.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt.prompt_tokens + answer.tokens
    })
}

fn response_object(
    prompt: &Prompt,
    id: &str,
    created: u64,
    status: &str,
    output: Value,
    usage: Value,
) -> Value {
    let incomplete = match status {
        "incomplete" => json!({"reason": "max_output_tokens"}),
        _ => Value::Null,
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": prompt.max_words,
        "model": prompt.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "store": true,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": {}
    })
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The finished output item.
fn response_item(answer: &Answer, ids: &ResponseIds) -> Value {
    match &answer.output {
        Output::Text(text) => json!({
            "id": ids.item,
            "type": "message",
            "status": response_status(answer),
            "role": "assistant",
            "content": [output_text_part(text)]
        }),
        Output::Tool { name, arguments } => json!({
            "id": ids.item,
            "type": "function_call",
            "status": "completed",
            "arguments": arguments,
            "call_id": ids.call,
            "name": name
        }),
    }
}

fn responses_stream(prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    let id = new_id("resp_");
    let created = now();
    let ids = ResponseIds::new(answer);
    let status = response_status(answer);
    let mut events = Vec::new();
    let mut push = |kind: &str, data: Value| {
        let number = events.len() as u64;
        events.push(typed_event(kind, data, Some(number)));
    };
    let started = response_object(prompt, &id, created, "in_progress", json!([]), Value::Null);
    push("response.created", json!({"response": started}));
    push("response.in_progress", json!({"response": started}));
    let item_id = &ids.item;
    match &answer.output {
        Output::Text(text) => {
            let item = json!({
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": []
            });
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            );
            let part = |data: Value| {
                let mut fields = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
                if let (Value::Object(fields), Value::Object(data)) = (&mut fields, data) {
                    fields.extend(data);
                }
                fields
            };
            let empty = output_text_part("");
            push("response.content_part.added", part(json!({"part": empty})));
            for piece in text_pieces(text) {
                let delta = part(json!({"delta": piece, "logprobs": []}));
                push("response.output_text.delta", delta);
            }
            let done = part(json!({"text": text, "logprobs": []}));
            push("response.output_text.done", done);
            let full = output_text_part(text);
            push("response.content_part.done", part(json!({"part": full})));
        }
        Output::Tool { name, arguments } => {
            let item = json!({
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": ids.call,
                "name": name
            });
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            );
            for piece in json_pieces(arguments) {
                let delta = json!({"item_id": item_id, "output_index": 0, "delta": piece});
                push("response.function_call_arguments.delta", delta);
            }
            let done = json!({
                "item_id": item_id,
                "output_index": 0,
                "name": name,
                "arguments": arguments
            });
            push("response.function_call_arguments.done", done);
        }
    }
    let item = response_item(answer, &ids);
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    let usage = response_usage(prompt, answer);
    let finished = response_object(prompt, &id, created, status, json!([item]), usage);
    let kind = match status {
        "incomplete" => "response.incomplete",
        _ => "response.completed",
    };
    push(kind, json!({"response": finished}));
    events
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::Tool => "tool_use",
    }
}

fn messages_usage(prompt: &Prompt, output_tokens: u64) -> Value {
    json!({
        "input_tokens": prompt.prompt_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard"
    })
}

fn messages_full(prompt: &Prompt, answer: &Answer) -> Value {
    let block = match &answer.output {
        Output::Text(text) => json!({"type": "text", "text": text}),
        Output::Tool { name, arguments } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            json!({"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": input})
        }
    };
    json!({
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [block],
        "stop_reason": stop_reason(answer.finish),
        "stop_sequence": null,
        "usage": messages_usage(prompt, answer.tokens)
    })
}

fn messages_stream(prompt: &Prompt, answer: &Answer) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut push = |kind: &str, data: Value| events.push(typed_event(kind, data, None));
    let message = json!({
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
        "usage": messages_usage(prompt, 1)
    });
    push("message_start", json!({"message": message}));
    let block = match &answer.output {
        Output::Text(_) => json!({"type": "text", "text": ""}),
        Output::Tool { name, .. } => {
            json!({"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": {}})
        }
    };
    push(
        "content_block_start",
        json!({"index": 0, "content_block": block}),
    );
    push("ping", json!({}));
    match &answer.output {
        Output::Text(text) => {
            for piece in text_pieces(text) {
                let delta = json!({"type": "text_delta", "text": piece});
                push("content_block_delta", json!({"index": 0, "delta": delta}));
            }
        }
        Output::Tool { arguments, .. } => {
            for piece in json_pieces(arguments) {
                let delta = json!({"type": "input_json_delta", "partial_json": piece});
                push("content_block_delta", json!({"index": 0, "delta": delta}));
            }
        }
    }
    push("content_block_stop", json!({"index": 0}));
    let delta = json!({"stop_reason": stop_reason(answer.finish), "stop_sequence": null});
    push(
        "message_delta",
        json!({"delta": delta, "usage": {"output_tokens": answer.tokens}}),
    );
    push("message_stop", json!({}));
    events
}

/// An error in the API's shape: OpenAI `{"error": {...}}` or Anthropic `{"type": "error", ...}`.
fn error_response(anthropic: bool, status: StatusCode, message: &str) -> Response<SimBody> {
    let body = if anthropic {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        let (kind, code) = match status.as_u16() {
            401 => ("invalid_request_error", Some("invalid_api_key")),
            429 => ("requests", Some("rate_limit_exceeded")),
            500..=599 => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    };
    respond(
        status,
        JSON_TYPE,
        SimBody::full(Bytes::from(body.to_string())),
    )
}

fn json_response(body: &Value) -> Response<SimBody> {
    let body = SimBody::full(Bytes::from(body.to_string()));
    respond(StatusCode::OK, JSON_TYPE, body)
}

fn respond(status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let streaming = content_type == SSE_TYPE;
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if streaming {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// `{"method", "path", "query", "headers": {name: value}, "body"}` of the request.
fn echo_body(parts: &Parts, body: &Bytes) -> Value {
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::from(value.into_owned()));
            }
        }
    }
    json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    })
}

// ---------------------------------------------------------------------------------------------
// Response body

/// How a body ends after its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Clean,
    /// Abort the connection (after one pending poll, so that hyper flushes what was sent).
    Reset,
    ResetNow,
    /// Send nothing more and never end (until shutdown).
    Stall,
    Done,
}

/// A response body: frames sent with a delay between them, then a clean end or a reset; cut
/// short by shutdown.
struct SimBody {
    frames: std::vec::IntoIter<Bytes>,
    delay: Duration,
    pause: Option<Pin<Box<Sleep>>>,
    ending: Ending,
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    exact_len: Option<u64>,
}

impl SimBody {
    /// A whole body, sent with its content-length.
    fn full(bytes: Bytes) -> Self {
        Self {
            exact_len: Some(bytes.len() as u64),
            frames: vec![bytes].into_iter(),
            delay: Duration::ZERO,
            pause: None,
            ending: Ending::Clean,
            shutdown: None,
        }
    }

    fn stream(
        frames: Vec<Bytes>,
        delay: Duration,
        ending: Ending,
        cancel: &CancellationToken,
    ) -> Self {
        Self {
            frames: frames.into_iter(),
            delay,
            pause: None,
            ending,
            shutdown: Some(Box::pin(cancel.clone().cancelled_owned())),
            exact_len: None,
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = SimError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SimError>>> {
        let this = &mut *self;
        if let Some(shutdown) = this.shutdown.as_mut() {
            if shutdown.as_mut().poll(cx).is_ready() {
                this.shutdown = None;
                this.frames = Vec::new().into_iter();
                this.ending = Ending::Done;
                return Poll::Ready(Some(Err(SimError::Shutdown)));
            }
        }
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        if let Some(frame) = this.frames.next() {
            if !this.delay.is_zero() && (this.frames.len() > 0 || this.ending != Ending::Clean) {
                this.pause = Some(Box::pin(tokio::time::sleep(this.delay)));
            }
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        match this.ending {
            Ending::Reset => {
                this.ending = Ending::ResetNow;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Ending::ResetNow => {
                this.ending = Ending::Done;
                Poll::Ready(Some(Err(SimError::Reset)))
            }
            // The shutdown future above was polled, so shutdown still wakes this body.
            Ending::Stall => Poll::Pending,
            Ending::Clean | Ending::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0 && matches!(self.ending, Ending::Clean | Ending::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.exact_len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

// ---------------------------------------------------------------------------------------------
// Corpora

/// Plausible support-assistant sentences: what the simulated models say.
const SUPPORT: &[&str] = &[
    "Thanks for reaching out to our support team.",
    "I have checked your account and everything looks in order.",
    "Your order has been shipped and should arrive within three business days.",
    "You can track your package from the orders page in your account.",
    "A refund usually takes five to seven business days to appear on your statement.",
    "I have sent a confirmation email to the address on file.",
    "Please make sure the app is updated to the latest version.",
    "Restarting the device often fixes this kind of issue.",
    "You can change your password from the security settings page.",
    "Our team is available every day from nine in the morning until six in the evening.",
    "If the problem continues, please reply with a screenshot of the error.",
    "I have escalated your request to our billing specialists.",
    "The discount code can only be applied once per customer.",
    "Your subscription will renew automatically at the end of the month.",
    "You can cancel your subscription at any time without extra fees.",
    "The item you asked about is currently back in stock.",
    "Standard shipping is free on orders over fifty dollars.",
    "Returns are accepted within thirty days of delivery.",
    "Please keep the original packaging when sending an item back.",
    "I have updated the shipping address on your order.",
    "The invoice for your last payment is available in the billing section.",
    "We are sorry for the delay and appreciate your patience.",
    "Your warranty covers repairs for two years from the purchase date.",
    "A replacement part has been reserved for you.",
    "Clearing the browser cache usually resolves loading problems.",
    "Two-factor authentication adds an extra layer of protection to your account.",
    "I can see that the payment was declined by your bank.",
    "Please try another card or contact your bank for details.",
    "Your ticket number is listed at the top of this message.",
    "We will notify you by email as soon as the status changes.",
    "The feature you mentioned is planned for a future release.",
    "You can export your data as a spreadsheet from the settings menu.",
    "Our help center has a detailed guide on this topic.",
    "I have applied a credit to your account for the inconvenience.",
    "The courier will attempt delivery again tomorrow.",
    "Please check your spam folder if the email has not arrived.",
    "Your account has been verified and is ready to use.",
    "Let me know if there is anything else I can help with.",
    "Have a great day and thank you for your patience.",
    "The store pickup option is available at most of our locations.",
];

/// Sentences unrelated to support: what `Style::Unrelated` says.
const UNRELATED: &[&str] = &[
    "The mitochondria is often described as the powerhouse of the cell.",
    "Mount Everest grows a few millimetres taller every year.",
    "A good sourdough starter needs flour, water and patience.",
    "The eastern Roman Empire lasted for almost a thousand years.",
    "Octopuses have three hearts and blue blood.",
    "Jazz emerged in New Orleans in the early twentieth century.",
    "Light travels about three hundred thousand kilometres every second.",
    "Tomatoes grow best with plenty of sun and regular watering.",
    "Chess was played in Persia long before it reached Europe.",
    "The Pacific is the largest and deepest of the oceans.",
    "Honey never spoils when it is stored in a sealed jar.",
    "Saturn is less dense than water.",
    "The violin has four strings tuned in perfect fifths.",
    "Some bamboo species can grow almost a metre in a single day.",
    "The first photograph needed several hours of exposure.",
    "Penguins live almost exclusively in the southern hemisphere.",
    "A marathon is a little over forty-two kilometres long.",
    "Volcanic soil is among the most fertile on the planet.",
    "The Great Wall is not visible from orbit with the naked eye.",
    "Coffee was first cultivated on the Arabian peninsula.",
];

/// Single-word synonyms for words of [`SUPPORT`], used by `Style::Benign`.
const SYNONYMS: &[(&str, &str)] = &[
    ("checked", "reviewed"),
    ("looks", "seems"),
    ("order", "purchase"),
    ("shipped", "dispatched"),
    ("arrive", "land"),
    ("track", "follow"),
    ("package", "parcel"),
    ("usually", "typically"),
    ("appear", "show"),
    ("statement", "bill"),
    ("sent", "emailed"),
    ("latest", "newest"),
    ("often", "frequently"),
    ("fixes", "solves"),
    ("issue", "problem"),
    ("change", "update"),
    ("team", "staff"),
    ("problem", "issue"),
    ("continues", "persists"),
    ("escalated", "forwarded"),
    ("request", "query"),
    ("specialists", "experts"),
    ("customer", "client"),
    ("time", "moment"),
    ("extra", "additional"),
    ("fees", "charges"),
    ("item", "product"),
    ("currently", "presently"),
    ("free", "complimentary"),
    ("accepted", "allowed"),
    ("original", "initial"),
    ("delay", "wait"),
    ("appreciate", "value"),
    ("covers", "includes"),
    ("reserved", "held"),
    ("resolves", "fixes"),
    ("problems", "issues"),
    ("protection", "security"),
    ("account", "profile"),
    ("payment", "charge"),
    ("declined", "rejected"),
    ("details", "information"),
    ("notify", "inform"),
    ("planned", "scheduled"),
    ("detailed", "thorough"),
    ("guide", "article"),
    ("inconvenience", "trouble"),
    ("courier", "driver"),
    ("attempt", "try"),
    ("verified", "confirmed"),
    ("help", "assist"),
    ("great", "wonderful"),
    ("option", "choice"),
    ("locations", "stores"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::net::SocketAddr;
    use tokio::sync::oneshot;
    use tokio::task::JoinSet;

    const APIS: [Api; 4] = [Api::Chat, Api::Completions, Api::Responses, Api::Messages];

    /// A running simulated upstream and a client for it.
    struct Harness {
        sim: Arc<SimUpstream>,
        addr: SocketAddr,
        client: Client<HttpConnector, Full<Bytes>>,
        stop: oneshot::Sender<()>,
        server: JoinSet<io::Result<()>>,
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Result<Bytes, String>,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_slice(self.body.as_ref().unwrap()).unwrap()
        }

        fn events(&self) -> Vec<Event> {
            parse_sse(self.body.as_ref().unwrap())
        }
    }

    async fn start(default: Behavior) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = SimUpstream::new(default);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = JoinSet::new();
        server.spawn(Arc::clone(&sim).serve(listener, async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            sim,
            addr,
            client,
            stop,
            server,
        }
    }

    impl Harness {
        async fn send(
            &self,
            method: Method,
            path: &str,
            body: &str,
            headers: &[(&str, &str)],
        ) -> Reply {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let body = Full::new(Bytes::from(body.to_owned()));
            let response = self
                .client
                .request(request.body(body).unwrap())
                .await
                .unwrap();
            let (parts, body) = response.into_parts();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body: body
                    .collect()
                    .await
                    .map(|collected| collected.to_bytes())
                    .map_err(|error| error.to_string()),
            }
        }

        async fn call(&self, api: Api, body: &Value, headers: &[(&str, &str)]) -> Reply {
            self.send(Method::POST, path(api), &body.to_string(), headers)
                .await
        }

        /// Stops the server; it must drain promptly.
        async fn shutdown(self) {
            let Harness {
                stop, mut server, ..
            } = self;
            stop.send(()).unwrap();
            let joined = tokio::time::timeout(Duration::from_secs(1), server.join_next()).await;
            joined.unwrap().unwrap().unwrap().unwrap();
        }
    }

    fn path(api: Api) -> &'static str {
        match api {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }

    /// A request of `api` asking `prompt`, with `extra` fields merged in.
    fn request(api: Api, model: &str, prompt: &str, extra: Value) -> Value {
        let mut body = match api {
            Api::Chat => json!({"model": model, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": prompt}
            ]}),
            Api::Completions => json!({"model": model, "prompt": prompt}),
            Api::Responses => json!({"model": model, "input": [
                {"role": "user", "content": [{"type": "input_text", "text": prompt}]}
            ]}),
            Api::Messages => json!({"model": model, "max_tokens": 1024, "messages": [
                {"role": "user", "content": [{"type": "text", "text": prompt}]}
            ]}),
        };
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        body
    }

    fn stop_finish(api: Api) -> &'static str {
        match api {
            Api::Chat | Api::Completions => "stop",
            Api::Responses => "completed",
            Api::Messages => "end_turn",
        }
    }

    fn length_finish(api: Api) -> &'static str {
        match api {
            Api::Chat | Api::Completions => "length",
            Api::Responses => "incomplete",
            Api::Messages => "max_tokens",
        }
    }

    /// (text, finish, completion tokens) of a non-streamed answer.
    fn full_answer(api: Api, body: &Value) -> (String, String, u64) {
        let (text, finish, tokens) = match api {
            Api::Chat => (
                &body["choices"][0]["message"]["content"],
                &body["choices"][0]["finish_reason"],
                &body["usage"]["completion_tokens"],
            ),
            Api::Completions => (
                &body["choices"][0]["text"],
                &body["choices"][0]["finish_reason"],
                &body["usage"]["completion_tokens"],
            ),
            Api::Responses => (
                &body["output"][0]["content"][0]["text"],
                &body["status"],
                &body["usage"]["output_tokens"],
            ),
            Api::Messages => (
                &body["content"][0]["text"],
                &body["stop_reason"],
                &body["usage"]["output_tokens"],
            ),
        };
        (
            text.as_str().unwrap().to_owned(),
            finish.as_str().unwrap().to_owned(),
            tokens.as_u64().unwrap(),
        )
    }

    #[derive(Debug)]
    struct Event {
        name: Option<String>,
        data: String,
    }

    impl Event {
        fn json(&self) -> Value {
            serde_json::from_str(&self.data).unwrap()
        }
    }

    fn parse_sse(body: &[u8]) -> Vec<Event> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with("\n\n"), "unterminated SSE: {text:?}");
        text.split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut event = Event {
                    name: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event.name = Some(name.to_owned());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data.push_str(data);
                    } else {
                        panic!("not an SSE line: {line:?}");
                    }
                }
                event
            })
            .collect()
    }

    /// Checks the framing of a stream (chunk objects, `[DONE]`, event names = data types,
    /// sequence numbers) and returns its event kinds with repeats collapsed.
    fn stream_kinds(api: Api, events: &[Event]) -> Vec<String> {
        let mut kinds: Vec<String> = Vec::new();
        for (number, event) in events.iter().enumerate() {
            let kind = match api {
                Api::Chat | Api::Completions => {
                    assert_eq!(event.name, None);
                    if event.data == "[DONE]" {
                        assert_eq!(number, events.len() - 1, "[DONE] must come last");
                        "[DONE]".to_owned()
                    } else {
                        event.json()["object"].as_str().unwrap().to_owned()
                    }
                }
                Api::Responses | Api::Messages => {
                    let data = event.json();
                    let name = event.name.clone().unwrap();
                    assert_eq!(data["type"], name.as_str());
                    if api == Api::Responses {
                        assert_eq!(data["sequence_number"], number as u64);
                    }
                    name
                }
            };
            if kinds.last() != Some(&kind) {
                kinds.push(kind);
            }
        }
        kinds
    }

    fn expected_kinds(api: Api, tool: bool) -> Vec<&'static str> {
        match (api, tool) {
            (Api::Chat, _) => vec!["chat.completion.chunk", "[DONE]"],
            (Api::Completions, _) => vec!["text_completion", "[DONE]"],
            (Api::Responses, false) => vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
            (Api::Responses, true) => vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ],
            (Api::Messages, _) => vec![
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ],
        }
    }

    /// (text, finish) of a streamed answer.
    fn streamed_answer(api: Api, events: &[Event]) -> (String, String) {
        let mut text = String::new();
        let mut finish = String::new();
        for event in events.iter().filter(|event| event.data != "[DONE]") {
            let data = event.json();
            let (piece, end) = match api {
                Api::Chat => (
                    &data["choices"][0]["delta"]["content"],
                    &data["choices"][0]["finish_reason"],
                ),
                Api::Completions => (
                    &data["choices"][0]["text"],
                    &data["choices"][0]["finish_reason"],
                ),
                Api::Responses => match data["type"].as_str().unwrap() {
                    "response.output_text.delta" => (&data["delta"], &NULL),
                    "response.completed" | "response.incomplete" => {
                        (&NULL, &data["response"]["status"])
                    }
                    _ => (&NULL, &NULL),
                },
                Api::Messages => (&data["delta"]["text"], &data["delta"]["stop_reason"]),
            };
            text.push_str(piece.as_str().unwrap_or(""));
            if let Some(end) = end.as_str() {
                finish = end.to_owned();
            }
        }
        (text, finish)
    }

    #[tokio::test]
    async fn every_api_answers_the_same_text_streaming_and_not() {
        let harness = start(Behavior::default()).await;
        let prompt = "Where is my order 1234?";
        for api in APIS {
            let plain = harness
                .call(api, &request(api, "sim-a", prompt, json!({})), &[])
                .await;
            assert_eq!(plain.status, StatusCode::OK, "{api:?}");
            assert_eq!(plain.headers[CONTENT_TYPE], JSON_TYPE);
            let body = plain.json();
            assert_eq!(body["model"], "sim-a", "{api:?}");
            let (text, finish, tokens) = full_answer(api, &body);
            assert_eq!(finish, stop_finish(api), "{api:?}");
            assert!(count_words(&text) >= 15, "{api:?}: {text}");
            assert_eq!(tokens, count_words(&text), "{api:?}");

            let streamed = request(api, "sim-b", prompt, json!({"stream": true}));
            let streamed = harness.call(api, &streamed, &[]).await;
            assert_eq!(streamed.status, StatusCode::OK);
            assert!(streamed.headers[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"));
            let events = streamed.events();
            assert_eq!(
                stream_kinds(api, &events),
                expected_kinds(api, false),
                "{api:?}"
            );
            let (streamed_text, streamed_finish) = streamed_answer(api, &events);
            assert_eq!(
                streamed_text, text,
                "{api:?}: another model, streamed, same answer"
            );
            assert_eq!(streamed_finish, finish, "{api:?}");
            assert!(events.len() > 8, "{api:?}: text comes in several deltas");
        }
        let other = request(Api::Chat, "sim-a", "How do I reset my password?", json!({}));
        let other = full_answer(
            Api::Chat,
            &harness.call(Api::Chat, &other, &[]).await.json(),
        );
        let same = request(Api::Chat, "sim-a", prompt, json!({}));
        let same = full_answer(Api::Chat, &harness.call(Api::Chat, &same, &[]).await.json());
        assert_ne!(other.0, same.0, "another prompt, another answer");
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn streams_report_usage_when_asked() {
        let harness = start(Behavior::default()).await;
        for api in [Api::Chat, Api::Completions] {
            let options = json!({"stream": true, "stream_options": {"include_usage": true}});
            let reply = harness
                .call(api, &request(api, "m", "Hello there", options), &[])
                .await;
            let events = reply.events();
            let (text, _) = streamed_answer(api, &events);
            let usage = events[events.len() - 2].json();
            assert_eq!(usage["choices"], json!([]), "{api:?}");
            assert_eq!(usage["usage"]["completion_tokens"], count_words(&text));
            let prompt_words = if api == Api::Chat { 4 } else { 2 }; // with the system message
            assert_eq!(usage["usage"]["prompt_tokens"], prompt_words);
            assert!(
                events[0].json()["usage"].is_null(),
                "{api:?}: other chunks carry null"
            );
        }
        let plain = request(Api::Chat, "m", "Hello there", json!({"stream": true}));
        let events = harness.call(Api::Chat, &plain, &[]).await.events();
        assert!(events.iter().all(|e| !e.data.contains("usage")));
        harness.shutdown().await;
    }

    /// (tool name, arguments, finish) of a tool call answer.
    fn tool_call(api: Api, reply: &Reply, stream: bool) -> (String, String, String) {
        let text = |value: &Value| value.as_str().unwrap().to_owned();
        if !stream {
            let body = reply.json();
            return match api {
                Api::Chat => {
                    let call = &body["choices"][0]["message"]["tool_calls"][0];
                    assert!(body["choices"][0]["message"]["content"].is_null());
                    assert!(text(&call["id"]).starts_with("call_"));
                    assert_eq!(call["type"], "function");
                    let finish = text(&body["choices"][0]["finish_reason"]);
                    (
                        text(&call["function"]["name"]),
                        text(&call["function"]["arguments"]),
                        finish,
                    )
                }
                Api::Responses => {
                    let item = &body["output"][0];
                    assert_eq!(item["type"], "function_call");
                    assert!(text(&item["call_id"]).starts_with("call_"));
                    (
                        text(&item["name"]),
                        text(&item["arguments"]),
                        text(&body["status"]),
                    )
                }
                Api::Messages => {
                    let block = &body["content"][0];
                    assert_eq!(block["type"], "tool_use");
                    let arguments = block["input"].to_string();
                    (text(&block["name"]), arguments, text(&body["stop_reason"]))
                }
                Api::Completions => unreachable!(),
            };
        }
        let events = reply.events();
        assert_eq!(
            stream_kinds(api, &events),
            expected_kinds(api, true),
            "{api:?}"
        );
        let mut name = String::new();
        let mut arguments = String::new();
        let mut finish = String::new();
        for data in events
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(Event::json)
        {
            match api {
                Api::Chat => {
                    let call = &data["choices"][0]["delta"]["tool_calls"][0];
                    if let Some(called) = call["function"]["name"].as_str() {
                        assert!(name.is_empty() && arguments.is_empty(), "name comes first");
                        assert_eq!(call["type"], "function");
                        assert!(text(&call["id"]).starts_with("call_"));
                        name = called.to_owned();
                    }
                    arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                    if let Some(end) = data["choices"][0]["finish_reason"].as_str() {
                        finish = end.to_owned();
                    }
                }
                Api::Responses => match data["type"].as_str().unwrap() {
                    "response.output_item.added" => name = text(&data["item"]["name"]),
                    "response.function_call_arguments.delta" => {
                        arguments.push_str(&text(&data["delta"]))
                    }
                    "response.function_call_arguments.done" => {
                        assert_eq!(text(&data["arguments"]), arguments)
                    }
                    "response.completed" => finish = text(&data["response"]["status"]),
                    _ => {}
                },
                Api::Messages => match data["type"].as_str().unwrap() {
                    "content_block_start" => {
                        assert_eq!(data["content_block"]["type"], "tool_use");
                        name = text(&data["content_block"]["name"]);
                    }
                    "content_block_delta" => {
                        assert_eq!(data["delta"]["type"], "input_json_delta");
                        arguments.push_str(&text(&data["delta"]["partial_json"]));
                    }
                    "message_delta" => finish = text(&data["delta"]["stop_reason"]),
                    _ => {}
                },
                Api::Completions => unreachable!(),
            }
        }
        (name, arguments, finish)
    }

    #[tokio::test]
    async fn tool_requests_call_the_first_tool() {
        let harness = start(Behavior::default()).await;
        let parameters = json!({"type": "object", "properties": {
            "order_id": {"type": "integer"},
            "reason": {"type": "string"},
            "urgency": {"type": "string", "enum": ["low", "high"]}
        }});
        let second = json!({"type": "object", "properties": {"x": {"type": "string"}}});
        let tools = |api: Api| match api {
            Api::Chat => json!([
                {"type": "function", "function": {"name": "lookup_order", "parameters": parameters}},
                {"type": "function", "function": {"name": "other", "parameters": second}}
            ]),
            Api::Responses => json!([
                {"type": "web_search"},
                {"type": "function", "name": "lookup_order", "parameters": parameters}
            ]),
            _ => json!([{"name": "lookup_order", "input_schema": parameters}]),
        };
        let cases = [
            (Api::Chat, "tool_calls"),
            (Api::Responses, "completed"),
            (Api::Messages, "tool_use"),
        ];
        for (api, finish) in cases {
            let mut answers = Vec::new();
            for stream in [false, true] {
                let extra = json!({"tools": tools(api), "stream": stream});
                let reply = harness
                    .call(api, &request(api, "m", "Where is my order?", extra), &[])
                    .await;
                let (name, arguments, end) = tool_call(api, &reply, stream);
                assert_eq!(
                    (name.as_str(), end.as_str()),
                    ("lookup_order", finish),
                    "{api:?}"
                );
                let arguments: Value = serde_json::from_str(&arguments).unwrap();
                let keys: Vec<&String> = arguments.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["order_id", "reason", "urgency"], "{api:?}");
                assert!(arguments["order_id"].is_u64());
                assert!(["low", "high"].contains(&arguments["urgency"].as_str().unwrap()));
                answers.push(arguments);
            }
            assert_eq!(answers[0], answers[1], "{api:?}: deterministic arguments");
        }
        // After the tool result the model answers in text.
        let after = json!({"model": "m", "tools": tools(Api::Chat), "messages": [
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "shipped"}
        ]});
        let reply = harness.call(Api::Chat, &after, &[]).await.json();
        assert_eq!(full_answer(Api::Chat, &reply).1, "stop");
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn max_tokens_cuts_the_answer() {
        let harness = start(Behavior::default()).await;
        let cases = [
            (Api::Chat, json!({"max_completion_tokens": 4})),
            (Api::Chat, json!({"max_tokens": 4})),
            (Api::Completions, json!({"max_tokens": 4})),
            (Api::Responses, json!({"max_output_tokens": 4})),
            (Api::Messages, json!({"max_tokens": 4})),
        ];
        for (api, limit) in cases {
            let body = request(api, "m", "Cancel my subscription", limit.clone());
            let (text, finish, tokens) =
                full_answer(api, &harness.call(api, &body, &[]).await.json());
            assert_eq!((count_words(&text), tokens), (4, 4), "{api:?} {limit}");
            assert_eq!(finish, length_finish(api), "{api:?}");
            let mut body = body;
            body["stream"] = json!(true);
            let events = harness.call(api, &body, &[]).await.events();
            let last = stream_kinds(api, &events);
            let (streamed, finish) = streamed_answer(api, &events);
            assert_eq!(
                (streamed, finish.as_str()),
                (text, length_finish(api)),
                "{api:?}"
            );
            if api == Api::Responses {
                assert_eq!(last.last().unwrap(), "response.incomplete");
            }
        }
        harness.shutdown().await;
    }

    fn prompt(text: &str, wants_json: bool) -> Prompt {
        Prompt {
            model: "m".to_owned(),
            stream: false,
            include_usage: false,
            seed: fnv(FNV_OFFSET, text),
            prompt_tokens: count_words(text),
            max_words: None,
            wants_json,
            tool: None,
        }
    }

    fn text_of(answer: &Answer) -> &str {
        match &answer.output {
            Output::Text(text) => text,
            Output::Tool { .. } => panic!("expected text"),
        }
    }

    #[test]
    fn styles_shape_the_answer() {
        let mut rng = StdRng::seed_from_u64(7);
        for question in [
            "Where is my parcel?",
            "I was charged twice",
            "How do I export data?",
        ] {
            let plain = prompt(question, false);
            let echo = compose(Style::Echo, &plain, &mut rng);
            let echo_text = text_of(&echo).to_owned();
            let sentences = echo_text.matches(". ").count() + 1;
            assert!((3..=6).contains(&sentences), "{echo_text}");
            assert!(SUPPORT.iter().any(|s| echo_text.starts_with(s)));
            assert_eq!(text_of(&compose(Style::Echo, &plain, &mut rng)), echo_text);
            assert_eq!(
                text_of(&compose(Style::BrokenJson, &plain, &mut rng)),
                echo_text
            );

            let unrelated = compose(Style::Unrelated, &plain, &mut rng);
            let unrelated = text_of(&unrelated);
            assert!(
                UNRELATED.iter().any(|s| unrelated.starts_with(s)),
                "{unrelated}"
            );

            assert_eq!(text_of(&compose(Style::Refuse, &plain, &mut rng)), REFUSAL);

            let truncated = compose(Style::Truncate, &plain, &mut rng);
            let words = count_words(&echo_text);
            assert_eq!(truncated.finish, Finish::Length);
            assert_eq!(count_words(text_of(&truncated)), words.div_ceil(3));
            assert!(echo_text.starts_with(text_of(&truncated)));

            let json_prompt = prompt(question, true);
            let json_answer = compose(Style::Echo, &json_prompt, &mut rng);
            let parsed: Value = serde_json::from_str(text_of(&json_answer)).unwrap();
            assert_eq!(parsed["answer"], echo_text.as_str());
            assert!(parsed["order_id"].is_u64() && parsed["status"].is_string());
            let broken = compose(Style::BrokenJson, &json_prompt, &mut rng);
            assert!(serde_json::from_str::<Value>(text_of(&broken)).is_err());
            assert!(text_of(&json_answer).starts_with(text_of(&broken)));
        }
    }

    #[test]
    fn benign_varies_some_words_but_not_most() {
        let plain = prompt("My package has not arrived yet", false);
        let echo = compose(Style::Echo, &plain, &mut StdRng::seed_from_u64(0));
        let echo: Vec<&str> = text_of(&echo).split(' ').collect();
        let mut varied_answers = 0;
        for seed in 0..40 {
            let benign = compose(Style::Benign, &plain, &mut StdRng::seed_from_u64(seed));
            let benign: Vec<&str> = text_of(&benign).split(' ').collect();
            assert_eq!(benign.len(), echo.len());
            assert_eq!(benign[..2], echo[..2], "the first two words stay");
            let changed = benign.iter().zip(&echo).filter(|(a, b)| a != b).count();
            assert!(changed * 3 < echo.len(), "most words stay: {benign:?}");
            varied_answers += usize::from(changed > 0);
        }
        assert!(
            varied_answers >= 10,
            "only {varied_answers} of 40 answers varied"
        );
        let mut rng = StdRng::seed_from_u64(1);
        let always = (0..200).map(|_| vary("Hello there, your order.", &mut rng));
        let swapped = always
            .filter(|v| v == "Hello there, your purchase.")
            .count();
        assert!((5..50).contains(&swapped), "about one in ten: {swapped}");
    }

    #[test]
    fn cut_words_keeps_the_first_words() {
        let check = |text: &str, max: usize, expected: &str, cut: bool| {
            let mut text = text.to_owned();
            assert_eq!(cut_words(&mut text, max), cut, "{text:?} {max}");
            assert_eq!(text, expected);
        };
        check("one two three", 2, "one two", true);
        check("one two three", 3, "one two three", false);
        check("one two three", 9, "one two three", false);
        check("one  two\nthree ", 1, "one", true);
        check("héllo wörld", 1, "héllo", true);
        check("a b", 0, "", true);
        check("", 0, "", false);
    }

    #[test]
    fn pieces_rebuild_the_whole() {
        for text in [
            "",
            "one",
            "one two three four five six seven",
            "a  b\nc d ",
            "é è ê ë ē ė ę",
        ] {
            let pieces: Vec<&str> = text_pieces(text).collect();
            assert_eq!(pieces.concat(), text);
            assert!(
                pieces.iter().all(|p| p.split_whitespace().count() <= 3),
                "{pieces:?}"
            );
        }
        let json = r#"{"a":1,"b":"two words \" here","c":[true,false]}"#;
        let pieces: Vec<&str> = json_pieces(json).collect();
        assert_eq!(pieces.concat(), json);
        assert_eq!(
            pieces,
            [
                r#"{"a":"#,
                "1,",
                r#""b":"#,
                r#""two "#,
                r#"words "#,
                r#"\" "#,
                r#"here","#,
                r#""c":"#,
                "[true,",
                "false]}"
            ]
        );
    }

    #[test]
    fn fault_header_values() {
        let cases = [
            ("500", Some(Fault::Status(500))),
            ("429", Some(Fault::Status(429))),
            ("reset", Some(Fault::ResetMidStream)),
            ("hang", Some(Fault::Hang)),
            ("stall", Some(Fault::StallMidStream)),
            ("broken-sse", Some(Fault::BrokenSse)),
            ("200", None),
            ("70000", None),
            ("explode", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_fault(value), expected, "{value}");
        }
    }

    #[tokio::test]
    async fn faults_are_injected() {
        let harness = start(Behavior::default()).await;
        let chat = request(Api::Chat, "m", "Hi", json!({}));
        let chat_stream = request(Api::Chat, "m", "Hi", json!({"stream": true}));

        let reply = harness
            .call(Api::Chat, &chat, &[("x-sim-fault", "500")])
            .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        let error = reply.json();
        assert_eq!(error["error"]["type"], "server_error");
        assert!(error["error"]["message"].is_string() && error["error"]["param"].is_null());

        let messages = request(Api::Messages, "m", "Hi", json!({"stream": true}));
        let reply = harness
            .call(Api::Messages, &messages, &[("x-sim-fault", "429")])
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.json()["type"], "error");
        assert_eq!(reply.json()["error"]["type"], "rate_limit_error");

        for body in [&chat, &chat_stream] {
            let reply = harness
                .call(Api::Chat, body, &[("x-sim-fault", "reset")])
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(reply.body.is_err(), "the body breaks off");
        }

        let reply = harness
            .call(Api::Chat, &chat_stream, &[("x-sim-fault", "broken-sse")])
            .await;
        let events = reply.events();
        assert!(events[0].json()["choices"].is_array(), "starts well");
        assert!(events
            .iter()
            .any(|e| serde_json::from_str::<Value>(&e.data).is_err()));
        assert!(events.iter().all(|e| e.data != "[DONE]"));
        let reply = harness
            .call(Api::Chat, &chat, &[("x-sim-fault", "broken-sse")])
            .await;
        assert!(serde_json::from_slice::<Value>(reply.body.as_ref().unwrap()).is_err());

        let started = tokio::time::Instant::now();
        let reply = harness
            .call(Api::Chat, &chat, &[("x-sim-latency-ms", "120")])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(120));

        let hang = harness.call(Api::Chat, &chat, &[("x-sim-fault", "hang")]);
        assert!(tokio::time::timeout(Duration::from_millis(150), hang)
            .await
            .is_err());

        let sometimes = |rate| Behavior {
            fault: Some(Fault::Status(503)),
            fault_rate: rate,
            ..Behavior::default()
        };
        harness.sim.set_behavior("never", sometimes(0.0));
        harness.sim.set_behavior("always", sometimes(1.0));
        for (model, status) in [
            ("never", StatusCode::OK),
            ("always", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            for _ in 0..3 {
                let body = request(Api::Responses, model, "Hi", json!({}));
                assert_eq!(
                    harness.call(Api::Responses, &body, &[]).await.status,
                    status
                );
            }
        }
        // Shutdown releases the hanging request and drains.
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn streams_wait_between_events() {
        let harness = start(Behavior {
            chunk_delay: Duration::from_millis(5),
            ..Behavior::default()
        })
        .await;
        let started = tokio::time::Instant::now();
        let body = request(Api::Messages, "m", "Hi", json!({"stream": true}));
        let events = harness.call(Api::Messages, &body, &[]).await.events();
        assert!(started.elapsed() >= Duration::from_millis(5) * (events.len() as u32 - 1));
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn counts_and_records_requests() {
        let harness = start(Behavior::default()).await;
        for model in ["a", "a", "b"] {
            let body = request(Api::Chat, model, "Hi", json!({}));
            harness.call(Api::Chat, &body, &[("x-trace", model)]).await;
        }
        harness.send(Method::GET, "/v1/models", "", &[]).await;
        assert_eq!(harness.sim.calls(), 4);
        assert_eq!(
            (harness.sim.calls_for("a"), harness.sim.calls_for("b")),
            (2, 1)
        );
        assert_eq!(harness.sim.calls_for("c"), 0);
        let requests = harness.sim.requests();
        let seen: Vec<(&Method, &str)> = requests
            .iter()
            .map(|r| (&r.method, r.path.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (&Method::POST, "/v1/chat/completions"),
                (&Method::POST, "/v1/chat/completions"),
                (&Method::POST, "/v1/chat/completions"),
                (&Method::GET, "/v1/models"),
            ]
        );
        assert_eq!(requests[2].headers["x-trace"], "b");
        let sent: Value = serde_json::from_slice(&requests[2].body).unwrap();
        assert_eq!(sent["model"], "b");
        assert_eq!(harness.sim.take_requests().len(), 4);
        assert!(harness.sim.requests().is_empty());
        assert_eq!(harness.sim.calls(), 4);
        harness.shutdown().await;
    }

    #[test]
    fn keeps_the_last_256_requests() {
        let sim = SimUpstream::new(Behavior::default());
        let (parts, ()) = Request::post("/v1/completions")
            .body(())
            .unwrap()
            .into_parts();
        for number in 0..300 {
            sim.record(&parts, &Bytes::from(number.to_string()), Some("m"));
        }
        let requests = sim.requests();
        assert_eq!(requests.len(), RECENT_LIMIT);
        assert_eq!(requests[0].body, "44");
        assert_eq!(requests[RECENT_LIMIT - 1].body, "299");
        assert_eq!((sim.calls(), sim.calls_for("m")), (300, 300));
    }

    #[tokio::test]
    async fn behaviour_follows_the_model() {
        let harness = start(Behavior::default()).await;
        harness.sim.set_behavior(
            "candidate",
            Behavior {
                style: Style::Refuse,
                ..Behavior::default()
            },
        );
        let ask = |model: &str| request(Api::Chat, model, "Can I return shoes?", json!({}));
        let answer = |reply: Reply| full_answer(Api::Chat, &reply.json()).0;
        let stable = answer(harness.call(Api::Chat, &ask("stable"), &[]).await);
        assert_ne!(stable, REFUSAL);
        assert_eq!(
            answer(harness.call(Api::Chat, &ask("candidate"), &[]).await),
            REFUSAL
        );
        harness.sim.set_behavior(
            "candidate",
            Behavior {
                style: Style::Unrelated,
                ..Behavior::default()
            },
        );
        let unrelated = answer(harness.call(Api::Chat, &ask("candidate"), &[]).await);
        assert!(unrelated != stable && unrelated != REFUSAL);
        assert_eq!(
            answer(harness.call(Api::Chat, &ask("stable"), &[]).await),
            stable
        );
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn other_endpoints() {
        let harness = start(Behavior::default()).await;
        harness.sim.set_behavior("stable", Behavior::default());
        let models = harness
            .send(Method::GET, "/v1/models", "", &[])
            .await
            .json();
        assert_eq!(models["object"], "list");
        assert_eq!(models["data"][0]["id"], "stable");

        let headers = [("x-one", "1"), ("x-two", "a"), ("x-two", "b")];
        let echo = harness
            .send(Method::PUT, "/echo/some/where?q=1&r=2", "hé", &headers)
            .await
            .json();
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["path"], "/echo/some/where");
        assert_eq!(echo["query"], "q=1&r=2");
        assert_eq!(echo["headers"]["x-one"], "1");
        assert_eq!(echo["headers"]["x-two"], "a, b");
        assert_eq!(echo["body"], "hé");

        let missing = harness.send(Method::GET, "/v2/nothing", "", &[]).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json()["error"]["type"], "invalid_request_error");

        let cases = [
            (Api::Chat, "{not json", "error"),
            (Api::Messages, "{not json", "type"),
            (Api::Responses, r#"{"input": "no model"}"#, "error"),
            (Api::Completions, "[1, 2]", "error"),
        ];
        for (api, body, key) in cases {
            let reply = harness.send(Method::POST, path(api), body, &[]).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{api:?} {body}");
            assert!(
                reply.json()[key].is_object() || reply.json()[key] == "error",
                "{api:?}"
            );
            assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
        }
        harness.shutdown().await;
    }

    #[tokio::test]
    async fn serves_h2c() {
        let harness = start(Behavior::default()).await;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let body = request(Api::Messages, "m", "Hi", json!({"stream": true}));
        let request = Request::post(format!("http://{}/v1/messages", harness.addr))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let kinds = stream_kinds(Api::Messages, &parse_sse(&bytes));
        assert_eq!(kinds, expected_kinds(Api::Messages, false));
        harness.shutdown().await;
    }
}
