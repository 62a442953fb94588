//! Simulated LLM upstream: an HTTP server speaking the OpenAI (chat completions, completions,
//! responses, embeddings) and Anthropic (messages) APIs, streaming and not, with adjustable
//! latency and injected faults. It is the only fake in the project: integration tests, the SDK
//! tests and `understudy demo` run Understudy against it.
//!
//! Answers come from small built-in corpora picked by a hash of the last user message, so two
//! models with the same [`Style`] answer a request identically. A model's [`Behavior`] can be
//! overridden per request with the headers `x-sim-fault` (`500`, `429`, any 4xx/5xx, `reset`,
//! `hang`, `stall`, `broken-sse`), `x-sim-latency-ms` and `x-sim-chunk-delay-ms` (the time between
//! streamed events, as a model spaces its tokens). With `x-sim-stamp: 1`, each streamed event's
//! `id` ends in the time the event was sent ([`stamp`]), so that a benchmark can tell how long a
//! proxy held each event.
//!
//! For semantic scoring: `POST /v1/embeddings` answers [`embed`] vectors (similar meaning,
//! similar vectors), the styles [`Style::Paraphrase`], [`Style::Pirate`] and
//! [`Style::WrongFacts`] give answers whose wording and meaning drift apart in known ways, and a
//! [`Style::Judge`] model answers the product's pairwise judge prompt ([`judge_prompt`]) with a
//! noisy verdict. The pure [`answer_text`], [`judge_verdict`] and [`embed`] give the same without
//! HTTP.

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

mod judge;
mod meaning;
mod spaces;

pub use judge::{judge_prompt, judge_verdict, Judge, Verdict};
pub use meaning::{cosine, embed};
pub use spaces::{embed_in, EmbeddingSpace};

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
    /// Echo's answer reworded as far as the simulator's tables allow: every word or phrase with
    /// a paraphrase or synonym replaced ("You can track your package" -> "You are able to follow
    /// your parcel"), including a few function words ("I have" -> "I've", "until" -> "till"),
    /// while numbers and the other facts stay. The words change (word-level Jaccard similarity
    /// with Echo below 0.5) but their meaning classes do not, so [`embed`] keeps it above 0.9
    /// cosine with Echo and the judge finds it as good as Echo.
    Paraphrase,
    /// Echo's content in an unacceptable tone: "Arr, matey! " before, " Yo ho!" after, and
    /// "you" -> "ye", "your" -> "yer", "is"/"are" -> "be", "my" -> "me" in between; most words
    /// stay (at least 0.7 of Echo's distinct words). The judge prefers a normal answer.
    Pirate,
    /// Echo's words with some facts wrong: one or two of the support corpus's facts (every
    /// sentence has one) replaced by a false version ("within thirty days" -> "within three
    /// days", "You can export" -> "You cannot export", "for two years" -> "for two months",
    /// "shipping is free" -> "shipping is paid"...), as many as keep the word-level Jaccard
    /// similarity with Echo at 0.85 or more (at least one). Lexically and in [`embed`] it stays
    /// close to Echo; the judge knows the true facts and prefers Echo.
    WrongFacts,
    /// A judge model: the last user message of a chat, messages, responses or completions
    /// request in the layout of [`judge_prompt`] gets a JSON text answer
    /// `{"verdict": "A" | "B" | "tie", "reason": "..."}` decided like [`judge_verdict`] with the
    /// behaviour's [`Judge`] (streamed too if asked). Tools and JSON mode are ignored for those;
    /// other requests are answered like Echo.
    Judge,
    /// A judge model whose verdicts cannot be parsed: judge prompts get one of "I think the first
    /// one is better.", a sentence without a verdict, or JSON with the verdict "maybe". Other
    /// requests are answered like Echo.
    JudgeGarbled,
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
    /// How a `Style::Judge` model decides (ignored by the other styles).
    pub judge: Judge,
}

impl Default for Behavior {
    /// Echo, no latency, no fault, fault rate 1.0, the default [`Judge`].
    fn default() -> Self {
        Self {
            style: Style::Echo,
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fault: None,
            fault_rate: 1.0,
            judge: Judge::default(),
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
    /// Embedding space per model ([`EmbeddingSpace::Base`] for the others).
    spaces: HashMap<String, EmbeddingSpace>,
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

    /// The embedding space of `model` for `POST /v1/embeddings` (default
    /// [`EmbeddingSpace::Base`]). Takes effect for the next request.
    pub fn set_embedding_space(&self, model: &str, space: EmbeddingSpace) {
        self.state().spaces.insert(model.to_owned(), space);
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
            // As real model servers do (asyncio sets it on every TCP socket): without it, the
            // second event of a paced stream waits for the client's delayed ACK of the first.
            let _ = stream.set_nodelay(true);
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
        if parts.method == Method::POST && parts.uri.path() == EMBEDDINGS_PATH {
            return self.embeddings(&parts, &body, &cancel).await;
        }
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
        let judge_message = match behavior.style {
            Style::Judge | Style::JudgeGarbled => last_user_text(api, &body),
            _ => None,
        };
        let request = Exchange {
            api,
            behavior: &behavior,
            judge_message: judge_message.as_deref(),
            headers: &parts.headers,
            cancel: &cancel,
        };
        match prompt {
            Ok(prompt) => simulate(&request, &prompt).await,
            Err(message) => Ok(error_response(
                api.is_anthropic(),
                StatusCode::BAD_REQUEST,
                &message,
            )),
        }
    }

    /// `POST /v1/embeddings`: counted and recorded, with the model's latency and faults.
    async fn embeddings(
        &self,
        parts: &Parts,
        body: &Bytes,
        cancel: &CancellationToken,
    ) -> Result<Response<SimBody>, SimError> {
        let request = parse_embeddings(body);
        let model = request.as_ref().ok().map(|r| r.model.as_str());
        let behavior = self.record(parts, body, model);
        let request = match request {
            Ok(request) => request,
            Err(message) => {
                return Ok(error_response(false, StatusCode::BAD_REQUEST, &message));
            }
        };
        let fault = prelude(&behavior, &parts.headers, cancel).await?;
        if let Some(Fault::Status(code)) = fault {
            return Ok(status_error(false, code));
        }
        let space = self
            .state()
            .spaces
            .get(&request.model)
            .copied()
            .unwrap_or_default();
        let full = Bytes::from(embeddings_body(&request, space).to_string());
        Ok(full_reply(full, fault, cancel))
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

/// One API request's surroundings: the endpoint, the model's behaviour, the judge prompt (the last
/// user message, read only for judge styles), the headers and the shutdown signal.
struct Exchange<'a> {
    api: Api,
    behavior: &'a Behavior,
    judge_message: Option<&'a str>,
    headers: &'a HeaderMap,
    cancel: &'a CancellationToken,
}

/// Picks the fault (the `x-sim-fault` header, else the behaviour's at its rate), hangs for
/// `hang` and waits out the latency; `Err` when shutdown comes first.
async fn prelude(
    behavior: &Behavior,
    headers: &HeaderMap,
    cancel: &CancellationToken,
) -> Result<Option<Fault>, SimError> {
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
    Ok(fault)
}

/// The API's error answer for an injected status.
fn status_error(anthropic: bool, code: u16) -> Response<SimBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = format!("Simulated upstream failure ({status})");
    error_response(anthropic, status, &message)
}

/// A 200 JSON answer, or its first half then a reset, a stall or the end (broken JSON).
fn full_reply(full: Bytes, fault: Option<Fault>, cancel: &CancellationToken) -> Response<SimBody> {
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
    respond(StatusCode::OK, JSON_TYPE, body)
}

/// Latency, faults and the answer for one API request.
async fn simulate(request: &Exchange<'_>, prompt: &Prompt) -> Result<Response<SimBody>, SimError> {
    let Exchange {
        api,
        behavior,
        judge_message,
        headers,
        cancel,
    } = *request;
    let fault = prelude(behavior, headers, cancel).await?;
    if let Some(Fault::Status(code)) = fault {
        return Ok(status_error(api.is_anthropic(), code));
    }
    let mut rng = rand::rng();
    let answer = judge_answer(behavior, judge_message, prompt, &mut rng)
        .unwrap_or_else(|| compose(behavior.style, prompt, &mut rng));
    if !prompt.stream {
        let full = Bytes::from(render_full(api, prompt, &answer).to_string());
        return Ok(full_reply(full, fault, cancel));
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
    let delay = header_millis(headers, "x-sim-chunk-delay-ms").unwrap_or(behavior.chunk_delay);
    let mut body = SimBody::stream(events, delay, ending, cancel);
    body.stamp = headers.get("x-sim-stamp").is_some_and(|v| v == "1");
    Ok(respond(StatusCode::OK, SSE_TYPE, body))
}

/// What a `broken-sse` stream sends after its first two events.
const BROKEN_EVENTS: [&str; 2] = [
    "data: {\"id\": \"broken\", \"choices\": [{\"delta\": {\"content\": \"unterminated\n\n",
    "data: <html><body>502 Bad Gateway</body></html>\n\n",
];

impl std::str::FromStr for Fault {
    type Err = String;

    /// The `x-sim-fault` spellings: a 4xx/5xx status, `reset`, `hang`, `stall`, `broken-sse`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_fault(s.trim()).ok_or_else(|| {
            format!("unknown fault {s:?}: a 4xx/5xx status, reset, hang, stall or broken-sse")
        })
    }
}

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
    header_millis(headers, "x-sim-latency-ms")
}

/// A header holding a whole number of milliseconds.
fn header_millis(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let millis = headers.get(name)?.to_str().ok()?.trim().parse();
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

/// The text of the last user message (Responses: or the input string; completions: the
/// prompt), its parts joined by newlines; `None` if there is none.
fn last_user_text(api: Api, body: &[u8]) -> Option<String> {
    fn last_user(messages: &Value) -> Option<&Value> {
        as_slice(messages)
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
    }
    let request: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut add = |piece: &str| {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(piece);
    };
    match api {
        Api::Chat | Api::Messages => {
            for_each_text(&last_user(&request["messages"])?["content"], &mut add);
        }
        Api::Responses => match &request["input"] {
            Value::String(input) => add(input),
            items => for_each_text(&last_user(items)?["content"], &mut add),
        },
        Api::Completions => for_each_text(&request["prompt"], &mut add),
    }
    Some(text)
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
    match style {
        Style::Benign => prose = vary(&prose, rng),
        Style::Paraphrase => prose = meaning::paraphrase(&prose),
        Style::Pirate => prose = meaning::pirate(&prose),
        Style::WrongFacts => prose = meaning::wrong_facts(&prose),
        _ => {}
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

/// The answer of a judge style to a judge prompt (`None` for other styles and messages).
fn judge_answer(
    behavior: &Behavior,
    message: Option<&str>,
    prompt: &Prompt,
    rng: &mut impl Rng,
) -> Option<Answer> {
    let garbled = match behavior.style {
        Style::Judge => false,
        Style::JudgeGarbled => true,
        _ => return None,
    };
    let text = judge::reply(&behavior.judge, garbled, message?, rng)?;
    Some(limit(Answer::text(text, Finish::Stop), prompt))
}

/// The text a model with `style` (and the default [`Judge`]) answers to a chat request whose
/// only user message is `prompt`, without tools, `max_tokens` or `response_format` (a prompt
/// that mentions JSON still gets a JSON answer, as over HTTP). `rng` drives the random styles
/// (`Benign`, the judges). For benchmarks that need labelled answers without a server.
pub fn answer_text(style: Style, prompt: &str, rng: &mut impl Rng) -> String {
    let behavior = Behavior {
        style,
        ..Behavior::default()
    };
    let mut text = PromptText::default();
    text.add(prompt);
    let request = Prompt {
        model: String::new(),
        stream: false,
        include_usage: false,
        seed: fnv(FNV_OFFSET, prompt),
        prompt_tokens: text.words,
        max_words: None,
        wants_json: text.mentions_json,
        tool: None,
    };
    let answer = judge_answer(&behavior, Some(prompt), &request, rng)
        .unwrap_or_else(|| compose(style, &request, rng));
    answer.content().to_owned()
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
// Embeddings

const EMBEDDINGS_PATH: &str = "/v1/embeddings";
/// Vector size when the request has no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 64;
const MAX_DIMENSIONS: u64 = 4096;

/// What the simulation needs from an embeddings request.
#[derive(Debug)]
struct EmbeddingsRequest {
    model: String,
    inputs: Vec<String>,
    dimensions: usize,
    /// `encoding_format: "base64"`: little-endian f32 bytes in base64 (the OpenAI SDKs' default).
    base64: bool,
}

/// Reads an embeddings request body; the error is the message for a 400.
fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, String> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|error| format!("We could not parse the JSON body of your request: {error}"))?;
    let model = match &request["model"] {
        Value::String(model) => model.clone(),
        _ => return Err("you must provide a model parameter".to_owned()),
    };
    let bad_input = || "'input' must be a string or a non-empty array of strings".to_owned();
    let inputs = match &request["input"] {
        Value::String(input) => vec![input.clone()],
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(bad_input)?,
        _ => return Err(bad_input()),
    };
    let dimensions = match &request["dimensions"] {
        Value::Null => DEFAULT_DIMENSIONS,
        value => value
            .as_u64()
            .filter(|n| (1..=MAX_DIMENSIONS).contains(n))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}"))?,
    };
    let base64 = match &request["encoding_format"] {
        Value::Null => false,
        format if *format == "float" => false,
        format if *format == "base64" => true,
        _ => return Err("'encoding_format' must be \"float\" or \"base64\"".to_owned()),
    };
    Ok(EmbeddingsRequest {
        model,
        inputs,
        dimensions,
        base64,
    })
}

/// `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}`
/// with the [`embed`] vector of each input.
fn embeddings_body(request: &EmbeddingsRequest, space: EmbeddingSpace) -> Value {
    let data: Vec<Value> = request
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embed_in(space, input, request.dimensions);
            let embedding = if request.base64 {
                Value::String(base64_f32(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = request.inputs.iter().map(|input| count_words(input)).sum();
    json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    })
}

/// Standard padded base64 of the little-endian bytes of `vector`.
fn base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (position, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if position <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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
    /// Each event's id ends in the time it is sent (`x-sim-stamp`).
    stamp: bool,
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
            stamp: false,
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
            stamp: false,
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
        if let Some(mut frame) = this.frames.next() {
            if this.stamp {
                frame = stamp(&frame, SystemTime::now());
            }
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

/// `event` with the 16 hex digits of its first `"id":"<prefix>sim…"` (see [`new_id`]) replaced by
/// `at` in nanoseconds since the Unix epoch, in hex: the same length, still a valid id. An event
/// without such an id is returned as it is.
pub fn stamp(event: &[u8], at: SystemTime) -> Bytes {
    let nanos = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let digits = format!("{:016x}", u64::try_from(nanos).unwrap_or(u64::MAX));
    let mut out = event.to_vec();
    let start = find(event, b"\"id\":\"").map(|at| at + 6);
    let hex = start.and_then(|start| {
        let sim = start + find(&event[start..], b"sim")? + 3;
        let id_end = start + find(&event[start..], b"\"")?;
        (id_end == sim + 16 && event[sim..id_end].iter().all(u8::is_ascii_hexdigit)).then_some(sim)
    });
    if let Some(at) = hex {
        out[at..at + 16].copy_from_slice(digits.as_bytes());
    }
    Bytes::from(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

/// The rewrites of `Style::Paraphrase`, tried before [`SYNONYMS`]: a lowercase word or phrase of
/// [`SUPPORT`] and its replacement in natural case. The words of both sides that are not stop
/// words share a meaning class (as do the two words of a synonym pair), which is what
/// [`embed`] and the judge's topic check see. Phrases come first so that they win over their words.
const PARAPHRASES: &[(&str, &str)] = &[
    ("reaching out to", "contacting"),
    ("make sure", "ensure"),
    ("let me know", "tell me"),
    ("i can see", "I notice"),
    ("we are sorry", "we apologize"),
    ("help center", "support hub"),
    ("as soon as", "the moment"),
    ("thank you", "many thanks"),
    ("you can", "you are able to"),
    ("i can", "I am able to"),
    ("i have", "I've"),
    ("we will", "we'll"),
    ("has been", "was"),
    ("asked about", "inquired about"),
    ("address", "location"),
    ("adds", "provides"),
    ("again", "anew"),
    ("another", "a different"),
    ("anything", "something"),
    ("app", "application"),
    ("applied", "added"),
    ("arrived", "landed"),
    ("authentication", "verification"),
    ("automatically", "by default"),
    ("available", "accessible"),
    ("bank", "lender"),
    ("billing", "invoicing"),
    ("business", "working"),
    ("cancel", "terminate"),
    ("changes", "updates"),
    ("check", "inspect"),
    ("clearing", "emptying"),
    ("code", "voucher"),
    ("confirmation", "notification"),
    ("contact", "reach"),
    ("data", "records"),
    ("delivery", "drop-off"),
    ("device", "gadget"),
    ("discount", "promo"),
    ("email", "mail"),
    ("end", "close"),
    ("error", "fault"),
    ("every", "each"),
    ("everything", "all"),
    ("export", "download"),
    ("feature", "capability"),
    ("file", "record"),
    ("future", "later"),
    ("invoice", "receipt"),
    ("keep", "retain"),
    ("kind", "sort"),
    ("last", "recent"),
    ("layer", "level"),
    ("listed", "shown"),
    ("mentioned", "described"),
    ("menu", "panel"),
    ("number", "reference"),
    ("only", "just"),
    ("orders", "purchases"),
    ("our", "the"),
    ("packaging", "box"),
    ("page", "screen"),
    ("part", "component"),
    ("password", "passcode"),
    ("patience", "understanding"),
    ("pickup", "collection"),
    ("please", "kindly"),
    ("purchase", "order"),
    ("ready", "prepared"),
    ("refund", "reimbursement"),
    ("release", "launch"),
    ("renew", "extend"),
    ("repairs", "servicing"),
    ("replacement", "substitute"),
    ("reply", "respond"),
    ("restarting", "rebooting"),
    ("screenshot", "screengrab"),
    ("section", "area"),
    ("security", "safety"),
    ("see", "notice"),
    ("sending", "mailing"),
    ("settings", "preferences"),
    ("shipping", "delivery"),
    ("spam", "junk"),
    ("spreadsheet", "worksheet"),
    ("standard", "regular"),
    ("status", "state"),
    ("stock", "inventory"),
    ("store", "shop"),
    ("subscription", "membership"),
    ("support", "service"),
    ("sure", "certain"),
    ("takes", "requires"),
    ("ticket", "case"),
    ("top", "start"),
    ("topic", "subject"),
    ("try", "attempt"),
    ("until", "till"),
    ("updated", "refreshed"),
    ("version", "edition"),
    ("warranty", "guarantee"),
    ("within", "inside"),
];

/// The words `Style::Pirate` swaps (between "Arr, matey! " and " Yo ho!").
const PIRATE_WORDS: &[(&str, &str)] = &[
    ("you", "ye"),
    ("your", "yer"),
    ("is", "be"),
    ("are", "be"),
    ("my", "me"),
    ("hello", "ahoy"),
    ("yes", "aye"),
];

/// The facts of [`SUPPORT`]: a phrase of exactly one sentence (every sentence has one) and its
/// wrong version, which `Style::WrongFacts` says instead and which the judge recognises as false.
const FACTS: &[(&str, &str)] = &[
    ("our support team", "our sales team"),
    ("everything looks in order", "nothing looks in order"),
    (
        "within three business days",
        "within thirteen business days",
    ),
    ("You can track", "You cannot track"),
    (
        "five to seven business days",
        "five to seven business months",
    ),
    ("a confirmation email", "a cancellation email"),
    ("the latest version", "the oldest version"),
    ("often fixes", "never fixes"),
    ("You can change", "You cannot change"),
    ("from nine in the morning", "from eleven in the morning"),
    ("reply with a screenshot", "reply without a screenshot"),
    ("our billing specialists", "our marketing specialists"),
    ("applied once per customer", "applied twice per customer"),
    ("the end of the month", "the end of the year"),
    ("without extra fees", "with extra fees"),
    ("currently back in stock", "currently out of stock"),
    ("shipping is free", "shipping is paid"),
    ("within thirty days", "within three days"),
    (
        "keep the original packaging",
        "discard the original packaging",
    ),
    (
        "updated the shipping address",
        "deleted the shipping address",
    ),
    ("your last payment", "your first payment"),
    ("sorry for the delay", "glad for the delay"),
    ("for two years", "for two months"),
    ("has been reserved", "has been cancelled"),
    ("usually resolves", "never resolves"),
    ("adds an extra layer", "removes an extra layer"),
    ("was declined by", "was approved by"),
    ("try another card", "try the same card"),
    ("at the top of", "at the bottom of"),
    ("notify you by email", "notify you by phone"),
    ("is planned for", "is not planned for"),
    ("You can export", "You cannot export"),
    ("has a detailed guide", "has no detailed guide"),
    ("applied a credit", "applied a charge"),
    ("again tomorrow", "again next month"),
    ("check your spam folder", "empty your spam folder"),
    ("has been verified", "has been suspended"),
    ("anything else I can help", "nothing else I can help"),
    ("Have a great day", "Have a terrible day"),
    ("at most of our locations", "at none of our locations"),
];

#[cfg(test)]
mod tests;
