//! Observing an LLM response on the side: while the proxy streams a response
//! body through to the client, an [`Observer`] is fed the same chunks and
//! assembles an [`Observation`] of what the model said (text, tool calls),
//! why it stopped, the token usage, and whether the answer was whole.
//!
//! Pure logic over bytes: no I/O, no clock. Memory stays bounded by the
//! observer's byte budget whatever the input.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

mod sse;

pub use sse::{SseReader, StreamEnd};

/// Which API a request speaks; decides how its body and output are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiShape {
    /// OpenAI `/v1/chat/completions`.
    ChatCompletions,
    /// OpenAI legacy `/v1/completions`.
    Completions,
    /// OpenAI `/v1/responses`.
    Responses,
    /// Anthropic `/v1/messages`.
    Messages,
}

impl ApiShape {
    /// `/v1/chat/completions` -> ChatCompletions, `/v1/completions`,
    /// `/v1/responses`, `/v1/messages`; else None. Ignores a trailing slash;
    /// exact paths otherwise.
    pub fn from_path(path: &str) -> Option<ApiShape> {
        match path.strip_suffix('/').unwrap_or(path) {
            "/v1/chat/completions" => Some(ApiShape::ChatCompletions),
            "/v1/completions" => Some(ApiShape::Completions),
            "/v1/responses" => Some(ApiShape::Responses),
            "/v1/messages" => Some(ApiShape::Messages),
            _ => None,
        }
    }

    /// Short label: "chat", "completions", "responses", "messages".
    pub fn as_str(self) -> &'static str {
        match self {
            ApiShape::ChatCompletions => "chat",
            ApiShape::Completions => "completions",
            ApiShape::Responses => "responses",
            ApiShape::Messages => "messages",
        }
    }
}

/// Why the model stopped, normalised across APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural stop or a stop sequence.
    Stop,
    /// The output token limit.
    Length,
    /// The model called tools.
    ToolCalls,
    /// A content filter or a refusal.
    ContentFilter,
    /// Any other reason, as the API named it.
    Other(String),
}

impl FinishReason {
    /// The reason's name: OpenAI's spelling for the four known ones, the API's own otherwise.
    pub fn name(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(other) => other,
        }
    }

    /// Reads an OpenAI chat or completions `finish_reason`.
    fn from_openai(reason: &str) -> Self {
        match reason {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }

    /// Reads an Anthropic `stop_reason`.
    fn from_anthropic(reason: &str) -> Self {
        match reason {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "tool_use" => FinishReason::ToolCalls,
            "refusal" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }
}

/// One tool call the model made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Raw JSON text as the model produced it: the concatenated deltas when
    /// streaming; for an Anthropic non-streaming `tool_use`, its `input`
    /// object serialized.
    pub arguments: String,
}

/// Token counts reported by the API, when it reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub prompt_tokens: Option<u64>,
    /// Output tokens.
    pub completion_tokens: Option<u64>,
}

/// A hard failure seen while reading the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The upstream answered with an HTTP error status.
    Status(u16),
    /// No (complete) answer within the deadline.
    Timeout,
    /// The connection failed or was reset.
    Transport,
    /// The body could not be read as the API's format: invalid JSON, broken
    /// SSE, a stream that ended without its terminal event, an `error` event
    /// in the stream.
    Malformed,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "status {status}"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Transport => f.write_str("transport"),
            Failure::Malformed => f.write_str("malformed"),
        }
    }
}

/// What a response said and how it went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// HTTP status of the response (0 when there was none).
    pub status: u16,
    /// All output text concatenated: `choices[0]` only for OpenAI, all text
    /// blocks for Anthropic, all `output_text` for the Responses API.
    pub text: String,
    /// Tool calls, in the order the model opened them.
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped, when the response said.
    pub finish_reason: Option<FinishReason>,
    /// Token usage, when the response reported it.
    pub usage: Usage,
    /// Time to the end of the body; set by the caller.
    pub latency: Duration,
    /// Time to the first body byte; set by the caller.
    pub ttfb: Option<Duration>,
    /// Text or tool arguments hit the observer's bound and were cut.
    pub truncated: bool,
    /// The hard failure, if any.
    pub failure: Option<Failure>,
}

impl Observation {
    /// An observation for a request that failed before any body was read.
    pub fn failed(failure: Failure) -> Self {
        let status = match failure {
            Failure::Status(code) => code,
            _ => 0,
        };
        Observation {
            status,
            failure: Some(failure),
            ..Observation::default()
        }
    }

    /// No text (after trimming whitespace) and no tool calls.
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty() && self.tool_calls.is_empty()
    }
}

/// Budget bytes charged for each tool call kept, on top of its name and
/// arguments, so that a flood of empty calls stays bounded too.
const TOOL_CALL_COST: usize = std::mem::size_of::<ToolCall>();

/// Smallest bound on one SSE event, however small the observer's budget.
const MIN_EVENT_BYTES: usize = 64 * 1024;

/// Assembles an [`Observation`] from a response body fed chunk by chunk.
#[derive(Debug)]
pub struct Observer {
    shape: ApiShape,
    input: Input,
    out: Assembly,
    /// Only usage and failures are wanted (nobody compares this answer): a JSON body is checked
    /// and its usage read, but its text and tool calls are not assembled.
    usage_only: bool,
}

/// How the body is taken in.
#[derive(Debug)]
enum Input {
    /// An SSE body, read event by event as it arrives.
    Stream(Box<SseReader>),
    /// A JSON body, kept up to `limit` bytes and parsed whole at the end;
    /// `cut` when bytes past the limit were dropped.
    Body {
        bytes: Vec<u8>,
        limit: usize,
        cut: bool,
    },
}

/// What has been read of the answer so far.
#[derive(Debug, Default)]
struct Assembly {
    text: String,
    tool_calls: Vec<ToolCall>,
    /// The API's key for each entry of `tool_calls`: the tool call index
    /// (OpenAI chat), content block index (Anthropic) or output index
    /// (Responses API).
    tool_keys: Vec<u64>,
    /// The answer called a tool, whether or not the call was kept.
    called_tool: bool,
    finish_reason: Option<FinishReason>,
    usage: Usage,
    /// Budget bytes left for text, tool names, arguments and calls.
    room: usize,
    truncated: bool,
    /// The stream reached its terminal event (`[DONE]`, `message_stop`,
    /// `response.completed` or `response.incomplete`).
    ended: bool,
    malformed: bool,
}

impl Observer {
    /// `streaming`: the response is SSE (decided by the caller from the
    /// response content-type). `max_bytes`: bound on text + tool-argument
    /// bytes kept (and on buffered non-streaming body bytes); past it the
    /// observation is marked `truncated` and stops growing.
    pub fn new(shape: ApiShape, streaming: bool, max_bytes: usize) -> Self {
        let input = if streaming {
            // An event can carry more than the output it adds (the Responses
            // API repeats the whole response in `response.completed`).
            Input::Stream(Box::new(SseReader::new(
                max_bytes.max(MIN_EVENT_BYTES).saturating_mul(2),
            )))
        } else {
            Input::Body {
                bytes: Vec::new(),
                limit: max_bytes,
                cut: false,
            }
        };
        Observer {
            shape,
            input,
            out: Assembly {
                room: max_bytes,
                ..Assembly::default()
            },
            usage_only: false,
        }
    }

    /// An observer for an answer nobody compares: the same usage and failures as [`Observer::new`]
    /// gives, without text or tool calls for a JSON body (a stream is read whole either way: its
    /// end is only known from its events).
    pub fn usage_only(shape: ApiShape, streaming: bool, max_bytes: usize) -> Self {
        Observer {
            usage_only: true,
            ..Observer::new(shape, streaming, max_bytes)
        }
    }

    /// Feeds the next chunk of response body exactly as it arrived on the
    /// wire (arbitrary split points).
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.input {
            Input::Stream(reader) => {
                reader.feed(chunk);
                while let Some(event) = reader.next_event() {
                    self.out.event(self.shape, &event.event, &event.data);
                }
            }
            Input::Body { bytes, limit, cut } => {
                let (kept, dropped) =
                    chunk.split_at(chunk.len().min(limit.saturating_sub(bytes.len())));
                bytes.extend_from_slice(kept);
                *cut |= !dropped.is_empty();
            }
        }
    }

    /// The body has ended (or was cut: pass `complete = false` when the body
    /// ended with an error). `status` is the HTTP status.
    pub fn finish(self, status: u16, complete: bool) -> Observation {
        let Observer {
            shape,
            input,
            mut out,
            usage_only,
        } = self;
        let failure = if status >= 400 {
            Some(Failure::Status(status))
        } else {
            match input {
                Input::Stream(mut reader) => out.end_stream(shape, &mut reader),
                Input::Body { bytes, cut, .. } if usage_only => out.body_usage(shape, &bytes, cut),
                Input::Body { bytes, cut, .. } => out.body(shape, &bytes, cut),
            }
            if !complete {
                Some(Failure::Transport)
            } else if out.malformed {
                Some(Failure::Malformed)
            } else {
                None
            }
        };
        Observation {
            status,
            text: out.text,
            tool_calls: out.tool_calls,
            finish_reason: out.finish_reason,
            usage: out.usage,
            truncated: out.truncated,
            failure,
            ..Observation::default()
        }
    }
}

impl Assembly {
    /// Reads one SSE event.
    fn event(&mut self, shape: ApiShape, name: &str, data: &str) {
        if data == "[DONE]" {
            self.ended |= matches!(shape, ApiShape::ChatCompletions | ApiShape::Completions);
            return;
        }
        let read = match shape {
            ApiShape::ChatCompletions | ApiShape::Completions => {
                serde_json::from_str(data).map(|chunk| self.openai(chunk))
            }
            ApiShape::Responses => self.responses_event(name, data),
            ApiShape::Messages => self.messages_event(name, data),
        };
        self.malformed |= read.is_err();
    }

    /// Checks, once the stream has ended, that it was a whole answer.
    fn end_stream(&mut self, shape: ApiShape, reader: &mut SseReader) {
        let cut = reader.finish() == StreamEnd::Partial;
        let oversized = reader.dropped_oversized();
        let needs_reason = matches!(shape, ApiShape::ChatCompletions | ApiShape::Completions);
        let whole = self.ended && (self.finish_reason.is_some() || !needs_reason);
        // A dropped oversized event may have been the terminal one.
        self.truncated |= oversized;
        self.malformed |= cut || !(whole || oversized);
    }

    /// Parses a whole non-streaming body.
    fn body(&mut self, shape: ApiShape, bytes: &[u8], cut: bool) {
        let read = match shape {
            ApiShape::ChatCompletions | ApiShape::Completions => {
                serde_json::from_slice(bytes).map(|body| self.openai(body))
            }
            ApiShape::Responses => {
                serde_json::from_slice(bytes).map(|body| self.response_body(body))
            }
            ApiShape::Messages => serde_json::from_slice(bytes).map(|body| self.message_body(body)),
        };
        // A body cut at the bound cannot be expected to parse.
        self.truncated |= cut;
        self.malformed |= read.is_err() && !cut;
    }

    /// Reads only the usage and the failure of a whole non-streaming body: the body must be JSON
    /// with the API's required top-level fields (`choices`, `status`, `content`), as for
    /// [`Assembly::body`], but what those fields hold is skipped unread.
    fn body_usage(&mut self, shape: ApiShape, bytes: &[u8], cut: bool) {
        let read = match shape {
            ApiShape::ChatCompletions | ApiShape::Completions => {
                serde_json::from_slice(bytes).map(|b: ChatUsage| b.usage)
            }
            ApiShape::Responses => {
                serde_json::from_slice(bytes).map(|b: ResponseObject<'_, IgnoredAny>| {
                    self.response_outcome(&b);
                    b.usage
                })
            }
            ApiShape::Messages => serde_json::from_slice(bytes).map(|b: MessageUsage| b.usage),
        };
        if let Ok(Some(usage)) = read {
            self.usage = usage.into();
        }
        self.truncated |= cut;
        self.malformed |= read.is_err() && !cut;
    }

    /// Reads an OpenAI chat or completions body or stream chunk.
    fn openai(&mut self, body: OpenAiBody<'_>) {
        if let Some(choice) = body.choices {
            if let Some(text) = &choice.text {
                self.push_text(text);
            }
            if let Some(message) = choice.message {
                if let Some(content) = &message.content {
                    self.push_text(content);
                }
                for (position, call) in message.tool_calls.iter().flatten().enumerate() {
                    let function = call.function.as_ref();
                    self.tool_call(
                        call.index.unwrap_or(position as u64),
                        function.and_then(|f| f.name.as_deref()),
                        function.and_then(|f| f.arguments.as_deref()).unwrap_or(""),
                    );
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(FinishReason::from_openai(&reason));
            }
        }
        if let Some(usage) = body.usage {
            self.usage = usage.into();
        }
    }

    /// Reads one Responses API stream event.
    fn responses_event(&mut self, name: &str, data: &str) -> serde_json::Result<()> {
        match &*event_kind(name, data)? {
            "response.output_text.delta" => {
                let event: Delta<'_> = serde_json::from_str(data)?;
                self.push_text(&event.delta);
            }
            "response.function_call_arguments.delta" => {
                let event: Delta<'_> = serde_json::from_str(data)?;
                self.tool_call(event.output_index, None, &event.delta);
            }
            "response.output_item.added" | "response.output_item.done" => {
                let event: ItemEvent<'_> = serde_json::from_str(data)?;
                if event.item.kind == "function_call" {
                    // `done` repeats the arguments the deltas already gave.
                    let has_arguments = self
                        .tool_call_index(event.output_index)
                        .and_then(|i| self.tool_calls.get(i))
                        .is_some_and(|c| !c.arguments.is_empty());
                    let arguments = match &event.item.arguments {
                        Some(arguments) if !has_arguments => arguments,
                        _ => "",
                    };
                    self.tool_call(event.output_index, event.item.name.as_deref(), arguments);
                }
            }
            "response.completed" | "response.incomplete" => {
                let event: ResponseEvent<'_> = serde_json::from_str(data)?;
                self.response_outcome(&event.response);
                self.ended = true;
            }
            "error" | "response.failed" => self.malformed = true,
            _ => {
                serde_json::from_str::<IgnoredAny>(data)?;
            }
        }
        Ok(())
    }

    /// Reads a whole Responses API body.
    fn response_body(&mut self, response: ResponseBody<'_>) {
        for (index, item) in response.output.iter().enumerate() {
            match &*item.kind {
                "message" => {
                    for part in item.content.iter().filter(|p| p.kind == "output_text") {
                        self.push_text(part.text.as_deref().unwrap_or(""));
                    }
                }
                "function_call" => self.tool_call(
                    index as u64,
                    item.name.as_deref(),
                    item.arguments.as_deref().unwrap_or(""),
                ),
                _ => {}
            }
        }
        self.response_outcome(&response);
    }

    /// Reads the status and usage of a Responses API response object.
    fn response_outcome<O>(&mut self, response: &ResponseObject<'_, O>) {
        let reason = response
            .incomplete_details
            .as_ref()
            .and_then(|d| d.reason.as_deref());
        self.finish_reason = match (&*response.status, reason) {
            ("completed", _) if self.called_tool => Some(FinishReason::ToolCalls),
            ("completed", _) => Some(FinishReason::Stop),
            ("incomplete", Some("max_output_tokens")) => Some(FinishReason::Length),
            ("incomplete", Some("content_filter")) => Some(FinishReason::ContentFilter),
            ("incomplete", Some(other)) => Some(FinishReason::Other(other.to_owned())),
            ("failed", _) => {
                self.malformed = true;
                None
            }
            (status, _) => Some(FinishReason::Other(status.to_owned())),
        };
        if let Some(usage) = response.usage {
            self.usage = usage.into();
        }
    }

    /// Reads one Anthropic Messages stream event.
    fn messages_event(&mut self, name: &str, data: &str) -> serde_json::Result<()> {
        match &*event_kind(name, data)? {
            "message_start" => {
                let event: MessageStart = serde_json::from_str(data)?;
                if let Some(usage) = event.message.usage {
                    self.usage.prompt_tokens = usage.prompt_tokens;
                }
            }
            "content_block_start" => {
                let event: BlockStart<'_> = serde_json::from_str(data)?;
                let block = event.content_block;
                match &*block.kind {
                    "text" => self.push_text(block.text.as_deref().unwrap_or("")),
                    "tool_use" => self.tool_call(event.index, block.name.as_deref(), ""),
                    _ => {}
                }
            }
            "content_block_delta" => {
                let event: BlockDelta<'_> = serde_json::from_str(data)?;
                let delta = event.delta;
                match &*delta.kind {
                    "text_delta" => self.push_text(delta.text.as_deref().unwrap_or("")),
                    "input_json_delta" => {
                        self.tool_call(
                            event.index,
                            None,
                            delta.partial_json.as_deref().unwrap_or(""),
                        );
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                let event: MessageDelta<'_> = serde_json::from_str(data)?;
                if let Some(reason) = event.delta.stop_reason {
                    self.finish_reason = Some(FinishReason::from_anthropic(&reason));
                }
                if let Some(tokens) = event.usage.and_then(|u| u.completion_tokens) {
                    self.usage.completion_tokens = Some(tokens);
                }
            }
            "message_stop" => {
                serde_json::from_str::<IgnoredAny>(data)?;
                self.ended = true;
            }
            "error" => self.malformed = true,
            _ => {
                serde_json::from_str::<IgnoredAny>(data)?;
            }
        }
        Ok(())
    }

    /// Reads a whole Anthropic Messages body.
    fn message_body(&mut self, message: MessageBody<'_>) {
        for (index, block) in message.content.iter().enumerate() {
            match &*block.kind {
                "text" => self.push_text(block.text.as_deref().unwrap_or("")),
                "tool_use" => {
                    let input = block
                        .input
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    self.tool_call(index as u64, block.name.as_deref(), &input);
                }
                _ => {}
            }
        }
        if let Some(reason) = message.stop_reason {
            self.finish_reason = Some(FinishReason::from_anthropic(&reason));
        }
        if let Some(usage) = message.usage {
            self.usage = usage.into();
        }
    }

    /// Appends output text, within the budget.
    fn push_text(&mut self, text: &str) {
        let text = self.fit(text);
        self.text.push_str(text);
    }

    /// Adds to the tool call keyed `key`, opening it if it is new and the
    /// budget has room: `name` when it has none yet, and `arguments` at the
    /// end of its arguments.
    fn tool_call(&mut self, key: u64, name: Option<&str>, arguments: &str) {
        self.called_tool = true;
        let index = match self.tool_call_index(key) {
            Some(index) => index,
            None if self.room >= TOOL_CALL_COST => {
                self.room -= TOOL_CALL_COST;
                self.tool_keys.push(key);
                self.tool_calls.push(ToolCall::default());
                self.tool_calls.len() - 1
            }
            None => {
                self.truncated = true;
                return;
            }
        };
        let unnamed = self
            .tool_calls
            .get(index)
            .is_some_and(|c| c.name.is_empty());
        let name = match name {
            Some(name) if unnamed => self.fit(name),
            _ => "",
        };
        let arguments = self.fit(arguments);
        if let Some(call) = self.tool_calls.get_mut(index) {
            call.name.push_str(name);
            call.arguments.push_str(arguments);
        }
    }

    /// Where the tool call keyed `key` is in `tool_calls`, if it was kept.
    fn tool_call_index(&self, key: u64) -> Option<usize> {
        self.tool_keys.iter().rposition(|&k| k == key)
    }

    /// The longest prefix of `s` (on a character boundary) that fits in the
    /// budget, taken out of it; marks the observation truncated when that is
    /// not all of `s`.
    fn fit<'s>(&mut self, s: &'s str) -> &'s str {
        let mut end = s.len().min(self.room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.truncated |= end < s.len();
        self.room -= end;
        s.get(..end).unwrap_or_default()
    }
}

/// The event's type: its SSE `event` name, or the `type` field of its data
/// when the stream does not name its events.
fn event_kind<'d>(name: &'d str, data: &'d str) -> serde_json::Result<Cow<'d, str>> {
    if name != "message" {
        return Ok(Cow::Borrowed(name));
    }
    serde_json::from_str::<Tagged<'d>>(data).map(|tagged| tagged.kind)
}

/// Token counts under either naming: OpenAI chat/completions
/// (`prompt_tokens`) or Responses API and Anthropic (`input_tokens`).
#[derive(Deserialize, Clone, Copy)]
struct WireUsage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }
    }
}

/// An OpenAI chat or completions body, or one stream chunk of either.
#[derive(Deserialize)]
struct OpenAiBody<'a> {
    #[serde(borrow, deserialize_with = "choice_zero")]
    choices: Option<Choice<'a>>,
    usage: Option<WireUsage>,
}

/// One choice: `text` for completions, `message` (or `delta` when
/// streaming) for chat.
#[derive(Deserialize)]
struct Choice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "delta")]
    message: Option<ChatMessage<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ChatToolCall<'a>>>,
}

/// A chat tool call, whole or as a stream delta (which carries `index`).
#[derive(Deserialize)]
struct ChatToolCall<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    function: Option<ChatFunction<'a>>,
}

#[derive(Deserialize)]
struct ChatFunction<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// Reads a `choices` array keeping only choice 0 (the first choice whose
/// `index` is 0 or absent), without collecting the others.
fn choice_zero<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Choice<'de>>, D::Error> {
    struct ChoiceZero;
    impl<'de> Visitor<'de> for ChoiceZero {
        type Value = Option<Choice<'de>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of choices")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut zero = None;
            while let Some(choice) = seq.next_element::<Choice<'de>>()? {
                if zero.is_none() && choice.index.unwrap_or(0) == 0 {
                    zero = Some(choice);
                }
            }
            Ok(zero)
        }
    }
    deserializer.deserialize_seq(ChoiceZero)
}

/// Just the `type` of an event's data.
#[derive(Deserialize)]
struct Tagged<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// `response.output_text.delta` or `response.function_call_arguments.delta`.
#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default)]
    output_index: u64,
    #[serde(borrow)]
    delta: Cow<'a, str>,
}

/// `response.output_item.added` or `response.output_item.done`.
#[derive(Deserialize)]
struct ItemEvent<'a> {
    output_index: u64,
    #[serde(borrow)]
    item: OutputItem<'a, IgnoredAny>,
}

/// An item of a Responses API `output`; `C` is how its `content` is read
/// (skipped when streaming, where text comes as deltas).
#[derive(Deserialize)]
struct OutputItem<'a, C> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
    #[serde(default)]
    content: C,
}

/// A content part of a Responses API message item.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// `response.completed` or `response.incomplete`.
#[derive(Deserialize)]
struct ResponseEvent<'a> {
    #[serde(borrow)]
    response: ResponseObject<'a, IgnoredAny>,
}

/// A Responses API response object; `O` is how its `output` is read.
#[derive(Deserialize)]
struct ResponseObject<'a, O> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(default)]
    output: O,
}

/// A whole Responses API body.
type ResponseBody<'a> = ResponseObject<'a, Vec<OutputItem<'a, Vec<Part<'a>>>>>;

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
}

/// Anthropic `message_start`.
#[derive(Deserialize)]
struct MessageStart {
    message: UsageHolder,
}

#[derive(Deserialize)]
struct UsageHolder {
    usage: Option<WireUsage>,
}

/// A whole OpenAI chat or completions body read for its usage only (`choices` must be there).
#[derive(Deserialize)]
struct ChatUsage {
    #[serde(rename = "choices")]
    _choices: IgnoredAny,
    usage: Option<WireUsage>,
}

/// A whole Anthropic message read for its usage only (`content` must be there, as for
/// [`MessageBody`]).
#[derive(Deserialize)]
struct MessageUsage {
    #[serde(rename = "content")]
    _content: IgnoredAny,
    usage: Option<WireUsage>,
}

/// Anthropic `content_block_start`.
#[derive(Deserialize)]
struct BlockStart<'a> {
    index: u64,
    #[serde(borrow)]
    content_block: ContentBlock<'a>,
}

/// An Anthropic content block: `text`, `tool_use` or one we do not read.
#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    input: Option<serde_json::Value>,
}

/// Anthropic `content_block_delta`.
#[derive(Deserialize)]
struct BlockDelta<'a> {
    index: u64,
    #[serde(borrow)]
    delta: ContentDelta<'a>,
}

#[derive(Deserialize)]
struct ContentDelta<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
}

/// Anthropic `message_delta`.
#[derive(Deserialize)]
struct MessageDelta<'a> {
    #[serde(borrow)]
    delta: StopDelta<'a>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StopDelta<'a> {
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// A whole Anthropic Messages body.
#[derive(Deserialize)]
struct MessageBody<'a> {
    #[serde(borrow)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<WireUsage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT_STREAM_TEXT: &str = r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"! Comment ça"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":" va?\n\"Bien\""},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}

data: [DONE]

"#;

    const CHAT_STREAM_TOOLS: &str = r#"data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"location\":\"Paris, France\"}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_7xh3Yt1qpQ2Hc0oWkbUoRRaZ","type":"function","function":{"name":"get_time","arguments":""}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"tz\":\"CET\"}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}

data: [DONE]

"#;

    const CHAT_BODY_TEXT: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    },
    {
      "index": 1,
      "message": {"role": "assistant", "content": "Second choice", "refusal": null, "annotations": []},
      "logprobs": null,
      "finish_reason": "length"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_f9f4fb6dbf"
}"#;

    const CHAT_BODY_TOOLS: &str = r#"{
  "id": "chatcmpl-abc123",
  "object": "chat.completion",
  "created": 1699896916,
  "model": "gpt-4o-mini",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": null,
        "tool_calls": [
          {"id": "call_abc123", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\n\"location\": \"Boston, MA\"\n}"}},
          {"id": "call_def456", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ],
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99, "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
  "service_tier": "default",
  "system_fingerprint": "fp_44709d6fcb"
}"#;

    const COMPLETIONS_STREAM: &str = r#"data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":"This","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb"}

data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":" is a test","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb"}

data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":".","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb"}

data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}

data: [DONE]

"#;

    const COMPLETIONS_BODY: &str = r#"{
  "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
  "object": "text_completion",
  "created": 1589478378,
  "model": "gpt-3.5-turbo-instruct",
  "system_fingerprint": "fp_44709d6fcb",
  "choices": [
    {
      "text": "\n\nThis is indeed a test",
      "index": 0,
      "logprobs": null,
      "finish_reason": "length"
    }
  ],
  "usage": {
    "prompt_tokens": 5,
    "completion_tokens": 7,
    "total_tokens": 12
  }
}"#;

    const RESPONSES_STREAM_TEXT: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"Hi","logprobs":[]}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":" there! How can I assist you today?","logprobs":[]}

event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"text":"Hi there! How can I assist you today?","logprobs":[]}

event: response.content_part.done
data: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hi there! How can I assist you today?","annotations":[]}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I assist you today?","annotations":[]}]}}

event: response.completed
data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"completed","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I assist you today?","annotations":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48},"user":null,"metadata":{}}}

"#;

    const RESPONSES_STREAM_TOOLS: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_68a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5","object":"response","created_at":1755430000,"status":"in_progress","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[{"type":"function","description":"Get the weather","name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"],"additionalProperties":false},"strict":true}],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"fc_68a1b2c3d4e5f6a7","type":"function_call","status":"in_progress","arguments":"","call_id":"call_pQ2h7Yt1xa9XTPNJ32zg2hcA","name":"get_weather"}}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","sequence_number":2,"item_id":"fc_68a1b2c3d4e5f6a7","output_index":0,"delta":"{\"location\":"}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","sequence_number":3,"item_id":"fc_68a1b2c3d4e5f6a7","output_index":0,"delta":"\"Paris, France\"}"}

event: response.function_call_arguments.done
data: {"type":"response.function_call_arguments.done","sequence_number":4,"item_id":"fc_68a1b2c3d4e5f6a7","output_index":0,"arguments":"{\"location\":\"Paris, France\"}"}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":5,"output_index":0,"item":{"id":"fc_68a1b2c3d4e5f6a7","type":"function_call","status":"completed","arguments":"{\"location\":\"Paris, France\"}","call_id":"call_pQ2h7Yt1xa9XTPNJ32zg2hcA","name":"get_weather"}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":6,"output_index":1,"item":{"id":"fc_68a1b2c3d4e5f6a8","type":"function_call","status":"completed","arguments":"{\"tz\":\"CET\"}","call_id":"call_Zk81Yt1xa9XTPNJ32zg2hcB","name":"get_time"}}

event: response.completed
data: {"type":"response.completed","sequence_number":7,"response":{"id":"resp_68a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5","object":"response","created_at":1755430000,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"fc_68a1b2c3d4e5f6a7","type":"function_call","status":"completed","arguments":"{\"location\":\"Paris, France\"}","call_id":"call_pQ2h7Yt1xa9XTPNJ32zg2hcA","name":"get_weather"},{"id":"fc_68a1b2c3d4e5f6a8","type":"function_call","status":"completed","arguments":"{\"tz\":\"CET\"}","call_id":"call_Zk81Yt1xa9XTPNJ32zg2hcB","name":"get_time"}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":291,"input_tokens_details":{"cached_tokens":0},"output_tokens":23,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":314},"user":null,"metadata":{}}}

"#;

    const RESPONSES_STREAM_INCOMPLETE: &str = r#"event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67ca","output_index":0,"content_index":0,"delta":"Once upon","logprobs":[]}

event: response.incomplete
data: {"type":"response.incomplete","sequence_number":5,"response":{"id":"resp_67ca","object":"response","created_at":1741290958,"status":"incomplete","error":null,"incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-4.1-2025-04-14","output":[],"usage":{"input_tokens":12,"output_tokens":2,"total_tokens":14},"metadata":{}}}

"#;

    const RESPONSES_BODY_TEXT: &str = r#"{
  "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
  "object": "response",
  "created_at": 1741476777,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4o-2024-08-06",
  "output": [
    {
      "type": "reasoning",
      "id": "rs_67ccd3a9da748190",
      "summary": []
    },
    {
      "type": "message",
      "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
      "status": "completed",
      "role": "assistant",
      "content": [
        {"type": "output_text", "text": "The image depicts a scenic landscape.", "annotations": []},
        {"type": "refusal", "refusal": "not this part"},
        {"type": "output_text", "text": " With a wooden boardwalk.", "annotations": []}
      ]
    }
  ],
  "parallel_tool_calls": true,
  "previous_response_id": null,
  "reasoning": {"effort": null, "summary": null},
  "store": true,
  "temperature": 1.0,
  "text": {"format": {"type": "text"}},
  "tool_choice": "auto",
  "tools": [],
  "top_p": 1.0,
  "truncation": "disabled",
  "usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 52, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 380},
  "user": null,
  "metadata": {}
}"#;

    const RESPONSES_BODY_TOOLS: &str = r#"{
  "id": "resp_67ca09c5efe0819096d0511c92b8c890096610f474011cc0",
  "object": "response",
  "created_at": 1741294021,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4.1-2025-04-14",
  "output": [
    {
      "type": "function_call",
      "id": "fc_67ca09c6bedc8190a7abfec07b1a1332096610f474011cc0",
      "call_id": "call_unLAR8MvFNptuiZK6K6HCy5k",
      "name": "get_current_weather",
      "arguments": "{\"location\":\"Boston, MA\",\"unit\":\"celsius\"}",
      "status": "completed"
    }
  ],
  "parallel_tool_calls": true,
  "previous_response_id": null,
  "reasoning": {"effort": null, "summary": null},
  "store": true,
  "temperature": 1.0,
  "text": {"format": {"type": "text"}},
  "tool_choice": "auto",
  "tools": [{"type": "function", "description": "Get the current weather in a given location", "name": "get_current_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "additionalProperties": false, "required": ["location", "unit"]}, "strict": true}],
  "top_p": 1.0,
  "truncation": "disabled",
  "usage": {"input_tokens": 291, "output_tokens": 23, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 314},
  "user": null,
  "metadata": {}
}"#;

    const MESSAGES_STREAM_TEXT: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", world — ünïcode\n"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"#;

    const MESSAGES_STREAM_TOOLS: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants the weather."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Okay, let me check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: ping
data: {"type": "ping"}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

    const MESSAGES_BODY_TEXT: &str = r#"{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-20250514",
  "content": [
    {"type": "text", "text": "Hi! My name is Claude."},
    {"type": "text", "text": " Nice to meet you.", "citations": null}
  ],
  "stop_reason": "max_tokens",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 503,
    "service_tier": "standard"
  }
}"#;

    const MESSAGES_BODY_TOOLS: &str = r#"{
  "id": "msg_01Aq9w938a90dw8q",
  "type": "message",
  "role": "assistant",
  "model": "claude-opus-4-1-20250805",
  "content": [
    {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {"input_tokens": 384, "output_tokens": 92}
}"#;

    /// Observes `body` fed in pieces of `piece` bytes.
    fn observe(
        shape: ApiShape,
        streaming: bool,
        body: &[u8],
        piece: usize,
        max: usize,
    ) -> Observation {
        let mut observer = Observer::new(shape, streaming, max);
        for chunk in body.chunks(piece.max(1)) {
            observer.feed(chunk);
        }
        observer.finish(200, true)
    }

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        }
    }

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
        }
    }

    struct Case {
        name: &'static str,
        shape: ApiShape,
        streaming: bool,
        body: &'static str,
        text: &'static str,
        tool_calls: Vec<ToolCall>,
        finish: FinishReason,
        usage: Usage,
    }

    fn cases() -> Vec<Case> {
        use ApiShape::*;
        vec![
            Case {
                name: "chat stream text",
                shape: ChatCompletions,
                streaming: true,
                body: CHAT_STREAM_TEXT,
                text: "Hello! Comment ça va?\n\"Bien\"",
                tool_calls: vec![],
                finish: FinishReason::Stop,
                usage: usage(19, 10),
            },
            Case {
                name: "chat stream tools",
                shape: ChatCompletions,
                streaming: true,
                body: CHAT_STREAM_TOOLS,
                text: "",
                tool_calls: vec![
                    call("get_weather", r#"{"location":"Paris, France"}"#),
                    call("get_time", r#"{"tz":"CET"}"#),
                ],
                finish: FinishReason::ToolCalls,
                usage: Usage::default(),
            },
            Case {
                name: "chat body text",
                shape: ChatCompletions,
                streaming: false,
                body: CHAT_BODY_TEXT,
                text: "Hello! How can I assist you today?",
                tool_calls: vec![],
                finish: FinishReason::Stop,
                usage: usage(19, 10),
            },
            Case {
                name: "chat body tools",
                shape: ChatCompletions,
                streaming: false,
                body: CHAT_BODY_TOOLS,
                text: "",
                tool_calls: vec![
                    call("get_current_weather", "{\n\"location\": \"Boston, MA\"\n}"),
                    call("get_time", "{}"),
                ],
                finish: FinishReason::ToolCalls,
                usage: usage(82, 17),
            },
            Case {
                name: "completions stream",
                shape: Completions,
                streaming: true,
                body: COMPLETIONS_STREAM,
                text: "This is a test.",
                tool_calls: vec![],
                finish: FinishReason::Length,
                usage: usage(5, 7),
            },
            Case {
                name: "completions body",
                shape: Completions,
                streaming: false,
                body: COMPLETIONS_BODY,
                text: "\n\nThis is indeed a test",
                tool_calls: vec![],
                finish: FinishReason::Length,
                usage: usage(5, 7),
            },
            Case {
                name: "responses stream text",
                shape: Responses,
                streaming: true,
                body: RESPONSES_STREAM_TEXT,
                text: "Hi there! How can I assist you today?",
                tool_calls: vec![],
                finish: FinishReason::Stop,
                usage: usage(37, 11),
            },
            Case {
                name: "responses stream tools",
                shape: Responses,
                streaming: true,
                body: RESPONSES_STREAM_TOOLS,
                text: "",
                tool_calls: vec![
                    call("get_weather", r#"{"location":"Paris, France"}"#),
                    call("get_time", r#"{"tz":"CET"}"#),
                ],
                finish: FinishReason::ToolCalls,
                usage: usage(291, 23),
            },
            Case {
                name: "responses stream incomplete",
                shape: Responses,
                streaming: true,
                body: RESPONSES_STREAM_INCOMPLETE,
                text: "Once upon",
                tool_calls: vec![],
                finish: FinishReason::Length,
                usage: usage(12, 2),
            },
            Case {
                name: "responses body text",
                shape: Responses,
                streaming: false,
                body: RESPONSES_BODY_TEXT,
                text: "The image depicts a scenic landscape. With a wooden boardwalk.",
                tool_calls: vec![],
                finish: FinishReason::Stop,
                usage: usage(328, 52),
            },
            Case {
                name: "responses body tools",
                shape: Responses,
                streaming: false,
                body: RESPONSES_BODY_TOOLS,
                text: "",
                tool_calls: vec![call(
                    "get_current_weather",
                    r#"{"location":"Boston, MA","unit":"celsius"}"#,
                )],
                finish: FinishReason::ToolCalls,
                usage: usage(291, 23),
            },
            Case {
                name: "messages stream text",
                shape: Messages,
                streaming: true,
                body: MESSAGES_STREAM_TEXT,
                text: "Hello, world — ünïcode\n",
                tool_calls: vec![],
                finish: FinishReason::Stop,
                usage: usage(25, 15),
            },
            Case {
                name: "messages stream tools",
                shape: Messages,
                streaming: true,
                body: MESSAGES_STREAM_TOOLS,
                text: "Okay, let me check.",
                tool_calls: vec![call("get_weather", r#"{"location": "San Francisco, CA"}"#)],
                finish: FinishReason::ToolCalls,
                usage: usage(472, 89),
            },
            Case {
                name: "messages body text",
                shape: Messages,
                streaming: false,
                body: MESSAGES_BODY_TEXT,
                text: "Hi! My name is Claude. Nice to meet you.",
                tool_calls: vec![],
                finish: FinishReason::Length,
                usage: usage(2095, 503),
            },
            Case {
                name: "messages body tools",
                shape: Messages,
                streaming: false,
                body: MESSAGES_BODY_TOOLS,
                text: "I'll check the current weather in San Francisco for you.",
                tool_calls: vec![call(
                    "get_weather",
                    r#"{"location":"San Francisco, CA","unit":"celsius"}"#,
                )],
                finish: FinishReason::ToolCalls,
                usage: usage(384, 92),
            },
        ]
    }

    #[test]
    fn reads_every_api_whatever_the_chunking() {
        for case in cases() {
            let body = case.body.as_bytes();
            let whole = observe(case.shape, case.streaming, body, body.len(), 1 << 20);
            assert_eq!(whole.failure, None, "{}", case.name);
            assert_eq!(whole.status, 200, "{}", case.name);
            assert_eq!(whole.text, case.text, "{}", case.name);
            assert_eq!(whole.tool_calls, case.tool_calls, "{}", case.name);
            assert_eq!(whole.finish_reason, Some(case.finish), "{}", case.name);
            assert_eq!(whole.usage, case.usage, "{}", case.name);
            assert!(!whole.truncated, "{}", case.name);
            for piece in [1, 2, 3, 7, 64, 1000] {
                let split = observe(case.shape, case.streaming, body, piece, 1 << 20);
                assert_eq!(split, whole, "{} in pieces of {piece}", case.name);
            }
        }
    }

    #[test]
    fn reads_crlf_streams() {
        for case in cases().into_iter().filter(|c| c.streaming) {
            let crlf = case.body.replace('\n', "\r\n");
            // JSON escapes are untouched: only the raw line breaks changed.
            let got = observe(case.shape, true, crlf.as_bytes(), 5, 1 << 20);
            assert_eq!(
                got,
                observe(case.shape, true, case.body.as_bytes(), 5, 1 << 20),
                "{}",
                case.name
            );
        }
    }

    /// Where each streaming fixture's terminal event starts.
    fn terminal(body: &str) -> usize {
        [
            "data: [DONE]",
            "event: message_stop",
            "event: response.completed",
            "event: response.incomplete",
        ]
        .iter()
        .find_map(|marker| body.rfind(marker))
        .unwrap_or(body.len())
    }

    #[test]
    fn stream_cut_short_is_malformed() {
        for case in cases().into_iter().filter(|c| c.streaming) {
            let end = terminal(case.body);
            assert!(end < case.body.len(), "{}", case.name);
            let cut = &case.body.as_bytes()[..end];
            let got = observe(case.shape, true, cut, 3, 1 << 20);
            assert_eq!(
                got.failure,
                Some(Failure::Malformed),
                "{} without its terminal event",
                case.name
            );
            // Inside the terminal event.
            let inside = &case.body.as_bytes()[..end + 8];
            let got = observe(case.shape, true, inside, 3, 1 << 20);
            assert_eq!(
                got.failure,
                Some(Failure::Malformed),
                "{} cut inside its terminal event",
                case.name
            );
            // The same cut, reported as a transport error.
            let mut observer = Observer::new(case.shape, true, 1 << 20);
            observer.feed(cut);
            let got = observer.finish(200, false);
            assert_eq!(got.failure, Some(Failure::Transport), "{}", case.name);
            assert!(
                case.text.starts_with(&got.text),
                "{} keeps the text read",
                case.name
            );
        }
    }

    #[test]
    fn chat_stream_needs_done_and_a_finish_reason() {
        let without_reason =
            CHAT_STREAM_TEXT.replace(r#""finish_reason":"stop""#, r#""finish_reason":null"#);
        let got = observe(
            ApiShape::ChatCompletions,
            true,
            without_reason.as_bytes(),
            10,
            1 << 20,
        );
        assert_eq!(got.failure, Some(Failure::Malformed));
        assert_eq!(got.text, "Hello! Comment ça va?\n\"Bien\"");
    }

    #[test]
    fn reads_choice_zero_only() {
        let stream = r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":1,"delta":{"role":"assistant","content":"other"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"mine"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":1,"delta":{},"logprobs":null,"finish_reason":"length"},{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: [DONE]

"#;
        let got = observe(
            ApiShape::ChatCompletions,
            true,
            stream.as_bytes(),
            13,
            1 << 20,
        );
        assert_eq!(got.text, "mine");
        assert_eq!(got.finish_reason, Some(FinishReason::Stop));
        assert_eq!(got.failure, None);
    }

    #[test]
    fn oversized_event_is_truncation_not_malformed() {
        let huge = "x".repeat(300 * 1024);
        let stream = RESPONSES_STREAM_TEXT.replace(
            r#""status":"completed","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.""#,
            &format!(r#""status":"completed","error":null,"incomplete_details":null,"instructions":"{huge}""#),
        );
        assert!(
            stream.len() > huge.len(),
            "the fixture holds the huge event"
        );
        let got = observe(ApiShape::Responses, true, stream.as_bytes(), 4096, 1000);
        assert_eq!(got.text, "Hi there! How can I assist you today?");
        assert!(got.truncated);
        assert_eq!(got.failure, None);
        assert_eq!(got.finish_reason, None);
        // With a larger bound the same event fits.
        let got = observe(
            ApiShape::Responses,
            true,
            stream.as_bytes(),
            4096,
            200 * 1024,
        );
        assert!(!got.truncated);
        assert_eq!(got.finish_reason, Some(FinishReason::Stop));
    }

    #[test]
    fn broken_or_error_events_are_malformed() {
        use ApiShape::*;
        let broken = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"\n\n";
        let cases: &[(&str, ApiShape, String)] = &[
            ("chat broken json", ChatCompletions, format!("{broken}{CHAT_STREAM_TEXT}")),
            ("completions broken json", Completions, format!("{broken}{COMPLETIONS_STREAM}")),
            (
                "chat error object",
                ChatCompletions,
                format!("data: {{\"error\":{{\"message\":\"The server had an error\",\"type\":\"server_error\"}}}}\n\n{CHAT_STREAM_TEXT}"),
            ),
            (
                "messages error event",
                Messages,
                MESSAGES_STREAM_TEXT.replace(
                    "event: message_delta",
                    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\nevent: message_delta",
                ),
            ),
            (
                "messages broken json",
                Messages,
                MESSAGES_STREAM_TEXT.replace("data: {\"type\": \"ping\"}", "data: {\"type\": \"ping\""),
            ),
            (
                "messages unnamed broken json",
                Messages,
                format!("data: not json\n\n{MESSAGES_STREAM_TEXT}"),
            ),
            (
                "responses failed",
                Responses,
                RESPONSES_STREAM_TEXT.replace(
                    "event: response.completed",
                    "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\nevent: response.completed",
                ),
            ),
            (
                "responses error",
                Responses,
                format!("event: error\ndata: {{\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":1}}\n\n{RESPONSES_STREAM_TEXT}"),
            ),
            (
                "responses broken json",
                Responses,
                RESPONSES_STREAM_TEXT.replace("\"sequence_number\":7,", "\"sequence_number\":7,,"),
            ),
        ];
        for (name, shape, body) in cases {
            for piece in [1, 9, body.len()] {
                let got = observe(*shape, true, body.as_bytes(), piece, 1 << 20);
                assert_eq!(got.failure, Some(Failure::Malformed), "{name}");
            }
        }
    }

    #[test]
    fn unnamed_events_are_read_by_their_type() {
        for case in cases()
            .into_iter()
            .filter(|c| c.streaming && c.shape == ApiShape::Messages)
        {
            let unnamed: String = case
                .body
                .lines()
                .filter(|l| !l.starts_with("event:"))
                .map(|l| format!("{l}\n"))
                .collect();
            let named = observe(case.shape, true, case.body.as_bytes(), 4, 1 << 20);
            assert_eq!(
                observe(case.shape, true, unnamed.as_bytes(), 4, 1 << 20),
                named,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn invalid_bodies_are_malformed() {
        use ApiShape::*;
        let cases: &[(ApiShape, &str)] = &[
            (ChatCompletions, ""),
            (ChatCompletions, "{\"choices\":[{\"index\":0,\"message\":{\"content\":\"hi\"}"),
            (ChatCompletions, "<html>Bad gateway</html>"),
            (ChatCompletions, "{\"error\":{\"message\":\"oops\"}}"),
            (Completions, "{\"choices\":[{\"text\":3}]}"),
            (Responses, "{\"output\":[]}"),
            (Messages, "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"),
            (Responses, r#"{"status":"failed","output":[],"error":{"code":"server_error"}}"#),
        ];
        for (shape, body) in cases {
            let got = observe(*shape, false, body.as_bytes(), 4, 1 << 20);
            assert_eq!(got.failure, Some(Failure::Malformed), "{shape:?} {body:?}");
            assert!(!got.truncated);
        }
    }

    #[test]
    fn usage_only_reads_the_same_usage_and_failures() {
        use ApiShape::*;
        let usage_only = |shape, body: &str| {
            let mut observer = Observer::usage_only(shape, false, 1 << 20);
            observer.feed(body.as_bytes());
            observer.finish(200, true)
        };
        for case in cases().into_iter().filter(|c| !c.streaming) {
            let got = usage_only(case.shape, case.body);
            assert_eq!(got.failure, None, "{}", case.name);
            assert_eq!(got.usage, case.usage, "{}", case.name);
            assert_eq!(
                (got.text.as_str(), got.tool_calls.len()),
                ("", 0),
                "{}",
                case.name
            );
        }
        let invalid: &[(ApiShape, &str)] = &[
            (ChatCompletions, ""),
            (
                ChatCompletions,
                "{\"choices\":[{\"index\":0,\"message\":{\"content\":\"hi\"}",
            ),
            (ChatCompletions, "<html>Bad gateway</html>"),
            (ChatCompletions, "{\"error\":{\"message\":\"oops\"}}"),
            (Responses, "{\"output\":[]}"),
            (
                Messages,
                "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}",
            ),
            (
                Responses,
                r#"{"status":"failed","output":[],"error":{"code":"server_error"}}"#,
            ),
        ];
        for (shape, body) in invalid {
            let got = usage_only(*shape, body);
            assert_eq!(got.failure, Some(Failure::Malformed), "{shape:?} {body:?}");
        }
        // Nothing inside `choices` is read: a wrong type there goes unnoticed.
        let odd = usage_only(Completions, "{\"choices\":[{\"text\":3}]}");
        assert_eq!(odd.failure, None);
    }

    #[test]
    fn finish_reasons_are_normalised() {
        use ApiShape::*;
        use FinishReason::*;
        let chat = |reason: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"message":{{"content":"x"}},"finish_reason":"{reason}"}}]}}"#
            )
        };
        let messages = |reason: &str| format!(r#"{{"content":[],"stop_reason":"{reason}"}}"#);
        let responses = |status: &str, details: &str| {
            format!(r#"{{"status":"{status}","incomplete_details":{details},"output":[]}}"#)
        };
        let cases: Vec<(ApiShape, String, FinishReason)> = vec![
            (ChatCompletions, chat("stop"), Stop),
            (ChatCompletions, chat("length"), Length),
            (ChatCompletions, chat("tool_calls"), ToolCalls),
            (ChatCompletions, chat("function_call"), ToolCalls),
            (ChatCompletions, chat("content_filter"), ContentFilter),
            (Completions, chat("eos"), Other("eos".to_owned())),
            (Messages, messages("end_turn"), Stop),
            (Messages, messages("stop_sequence"), Stop),
            (Messages, messages("max_tokens"), Length),
            (Messages, messages("tool_use"), ToolCalls),
            (Messages, messages("refusal"), ContentFilter),
            (
                Messages,
                messages("pause_turn"),
                Other("pause_turn".to_owned()),
            ),
            (Responses, responses("completed", "null"), Stop),
            (
                Responses,
                responses("incomplete", r#"{"reason":"max_output_tokens"}"#),
                Length,
            ),
            (
                Responses,
                responses("incomplete", r#"{"reason":"content_filter"}"#),
                ContentFilter,
            ),
            (
                Responses,
                responses("incomplete", r#"{"reason":"other"}"#),
                Other("other".to_owned()),
            ),
            (
                Responses,
                responses("cancelled", "null"),
                Other("cancelled".to_owned()),
            ),
        ];
        for (shape, body, expected) in cases {
            let got = observe(shape, false, body.as_bytes(), body.len(), 1 << 20);
            assert_eq!(got.failure, None, "{body}");
            assert_eq!(got.finish_reason, Some(expected), "{body}");
        }
    }

    #[test]
    fn error_status_is_a_failure() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        for (status, streaming, complete) in [
            (429, false, true),
            (500, true, true),
            (503, false, false),
            (400, true, false),
        ] {
            let mut observer = Observer::new(ApiShape::ChatCompletions, streaming, 1 << 20);
            observer.feed(body);
            let got = observer.finish(status, complete);
            assert_eq!(got.failure, Some(Failure::Status(status)));
            assert_eq!(got.status, status);
            assert!(got.is_empty());
        }
    }

    #[test]
    fn cut_body_is_a_transport_failure() {
        let body = CHAT_BODY_TEXT.as_bytes();
        let mut observer = Observer::new(ApiShape::ChatCompletions, false, 1 << 20);
        observer.feed(&body[..body.len() / 2]);
        let got = observer.finish(200, false);
        assert_eq!(got.failure, Some(Failure::Transport));
        assert_eq!(got.text, "");
    }

    #[test]
    fn stream_text_stays_within_the_bound() {
        let chunk = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789 héllo \"},\"finish_reason\":null}]}\n\n";
        let last = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        let max = 1001;
        let mut observer = Observer::new(ApiShape::ChatCompletions, true, max);
        let mut fed = 0;
        while fed < 10 << 20 {
            observer.feed(chunk.as_bytes());
            fed += chunk.len();
        }
        observer.feed(last.as_bytes());
        let got = observer.finish(200, true);
        assert!(
            got.text.len() <= max && got.text.len() > max - 4,
            "{}",
            got.text.len()
        );
        assert!(got.text.starts_with("0123456789 héllo 0123"));
        assert!(got.truncated);
        assert_eq!(got.failure, None);
        assert_eq!(got.finish_reason, Some(FinishReason::Length));
        assert_eq!(got.usage, usage(3, 4));
    }

    #[test]
    fn tool_arguments_and_calls_stay_within_the_bound() {
        let start = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"write\",\"input\":{}}}\n\n";
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"aaaaaaaaaaaaaaaa\"}}\n\n";
        let mut observer = Observer::new(ApiShape::Messages, true, 500);
        observer.feed(start.as_bytes());
        for _ in 0..100_000 {
            observer.feed(delta.as_bytes());
        }
        let got = observer.finish(200, true);
        assert_eq!(got.tool_calls.len(), 1);
        assert_eq!(got.tool_calls[0].name, "write");
        assert!(got.tool_calls[0].arguments.len() + "write".len() + TOOL_CALL_COST <= 500);
        assert!(got.tool_calls[0].arguments.len() > 400);
        assert!(got.truncated);
        // Without message_stop the stream is still not whole.
        assert_eq!(got.failure, Some(Failure::Malformed));

        // A flood of empty tool calls is bounded too.
        let mut observer = Observer::new(ApiShape::ChatCompletions, true, 1000);
        for i in 0..100_000 {
            let chunk = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{i}}}]}}}}]}}\n\n");
            observer.feed(chunk.as_bytes());
        }
        let got = observer.finish(200, true);
        assert!(got.tool_calls.len() * TOOL_CALL_COST <= 1000);
        assert!(got.truncated);
    }

    #[test]
    fn body_stays_within_the_bound() {
        let text = "x".repeat(10 << 20);
        let body = format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}]}}"#
        );
        for max in [0, 1000, 1 << 20] {
            let got = observe(
                ApiShape::ChatCompletions,
                false,
                body.as_bytes(),
                64 * 1024,
                max,
            );
            assert!(got.text.len() <= max);
            assert!(got.truncated);
            assert_eq!(got.failure, None);
        }
        // A body that fits, whose text does not.
        let got = observe(
            ApiShape::Completions,
            false,
            COMPLETIONS_BODY.as_bytes(),
            7,
            COMPLETIONS_BODY.len(),
        );
        assert_eq!(got.failure, None);
        assert!(!got.truncated);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        // "Hello, world " is 13 bytes, then "—" takes 3.
        let cases = [
            (13, "Hello, world "),
            (14, "Hello, world "),
            (15, "Hello, world "),
            (16, "Hello, world —"),
            (0, ""),
        ];
        for (max, text) in cases {
            let got = observe(
                ApiShape::Messages,
                true,
                MESSAGES_STREAM_TEXT.as_bytes(),
                11,
                max,
            );
            assert_eq!(got.text, text, "{max}");
            assert!(got.truncated);
            assert_eq!(got.failure, None);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const MUTATIONS: &[u8] = b"{}[]\":,\n\\x0 \xff";
        let fixtures: Vec<Case> = cases();
        for round in 0..400 {
            let case = &fixtures[round % fixtures.len()];
            let mut bytes = case.body.as_bytes().to_vec();
            if round % 5 == 0 {
                let len = (next() % 2000) as usize;
                bytes = (0..len).map(|_| next() as u8).collect();
            } else {
                for _ in 0..(next() % 8) {
                    let at = (next() as usize) % bytes.len().max(1);
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte = MUTATIONS[(next() % MUTATIONS.len() as u64) as usize];
                    }
                }
            }
            for streaming in [true, false] {
                let max = (next() % 300) as usize;
                let piece = (next() % 50) as usize + 1;
                let got = observe(case.shape, streaming, &bytes, piece, max);
                let total: usize = got.text.len()
                    + got
                        .tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>();
                assert!(total <= max);
                assert_eq!(
                    got,
                    observe(case.shape, streaming, &bytes, bytes.len(), max)
                );
            }
        }
    }

    #[test]
    fn shapes_from_paths() {
        let cases = [
            ("/v1/chat/completions", Some(ApiShape::ChatCompletions)),
            ("/v1/chat/completions/", Some(ApiShape::ChatCompletions)),
            ("/v1/completions", Some(ApiShape::Completions)),
            ("/v1/responses", Some(ApiShape::Responses)),
            ("/v1/responses/", Some(ApiShape::Responses)),
            ("/v1/messages", Some(ApiShape::Messages)),
            ("/v1/messages//", None),
            ("/v1/messages/count_tokens", None),
            ("/v1/models", None),
            ("/chat/completions", None),
            ("", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            assert_eq!(ApiShape::from_path(path), expected, "{path}");
        }
        let labels: Vec<&str> = [
            ApiShape::ChatCompletions,
            ApiShape::Completions,
            ApiShape::Responses,
            ApiShape::Messages,
        ]
        .into_iter()
        .map(ApiShape::as_str)
        .collect();
        assert_eq!(labels, ["chat", "completions", "responses", "messages"]);
    }

    #[test]
    fn failed_and_empty_observations() {
        let got = Observation::failed(Failure::Timeout);
        assert_eq!(got.failure, Some(Failure::Timeout));
        assert_eq!(got.status, 0);
        assert!(got.is_empty());
        assert_eq!(Observation::failed(Failure::Status(502)).status, 502);
        let mut obs = Observation {
            text: " \n\t".to_owned(),
            ..Observation::default()
        };
        assert!(obs.is_empty());
        obs.tool_calls.push(call("f", "{}"));
        assert!(!obs.is_empty());
        obs.tool_calls.clear();
        obs.text.push('x');
        assert!(!obs.is_empty());
    }
}
