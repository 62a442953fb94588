//! The vocabulary of an observation, shared by every API family: which API a request speaks
//! ([`ApiShape`]), what the answer said and how it went ([`Observation`] with its
//! [`FinishReason`], [`ToolCall`]s, [`Usage`] and [`Failure`]).
//!
//! The bottom of `observe`: imports nothing from its siblings. How each API's wire names map to
//! these types is the family files' business (`chat`, `responses`, `messages`).

use std::fmt;
use std::time::Duration;

pub use super::embeddings::Embeddings;

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
    /// OpenAI `/v1/embeddings` (embedding routes).
    Embeddings,
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
            "/v1/embeddings" => Some(ApiShape::Embeddings),
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
            ApiShape::Embeddings => "embeddings",
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
    /// The vectors of an embeddings answer (empty for the other APIs).
    pub embeddings: Embeddings,
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
