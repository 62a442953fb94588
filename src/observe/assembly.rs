//! The answer as assembled so far ([`Assembly`]), and what every API family uses to add to it:
//! text and tool calls within the observer's byte budget, the token counts under either naming
//! ([`WireUsage`]), and the event type of an SSE event ([`event_kind`]).
//!
//! Above `types`, below the family files (`chat`, `responses`, `messages`), which each add their
//! own `impl Assembly` block for reading their API.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use serde::Deserialize;

use super::types::{Embeddings, FinishReason, ToolCall, Usage};

/// Budget bytes charged for each tool call kept, on top of its name and
/// arguments, so that a flood of empty calls stays bounded too.
pub(super) const TOOL_CALL_COST: usize = std::mem::size_of::<ToolCall>();

/// What has been read of the answer so far.
#[derive(Debug, Default)]
pub(super) struct Assembly {
    pub(super) text: String,
    pub(super) tool_calls: Vec<ToolCall>,
    /// The API's key for each entry of `tool_calls`: the tool call index
    /// (OpenAI chat), content block index (Anthropic) or output index
    /// (Responses API).
    tool_keys: Vec<u64>,
    /// The answer called a tool, whether or not the call was kept.
    pub(super) called_tool: bool,
    pub(super) finish_reason: Option<FinishReason>,
    pub(super) usage: Usage,
    /// Budget bytes left for text, tool names, arguments and calls.
    room: usize,
    pub(super) truncated: bool,
    /// The stream reached its terminal event (`[DONE]`, `message_stop`,
    /// `response.completed` or `response.incomplete`).
    pub(super) ended: bool,
    pub(super) malformed: bool,
    /// The vectors of an embeddings answer.
    pub(super) embeddings: Embeddings,
}

impl Assembly {
    /// An empty answer with `room` budget bytes.
    pub(super) fn new(room: usize) -> Self {
        Assembly {
            room,
            ..Assembly::default()
        }
    }

    /// Appends output text, within the budget.
    pub(super) fn push_text(&mut self, text: &str) {
        let text = self.fit(text);
        self.text.push_str(text);
    }

    /// Adds to the tool call keyed `key`, opening it if it is new and the
    /// budget has room: `name` when it has none yet, and `arguments` at the
    /// end of its arguments.
    pub(super) fn tool_call(&mut self, key: u64, name: Option<&str>, arguments: &str) {
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
    pub(super) fn tool_call_index(&self, key: u64) -> Option<usize> {
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
pub(super) fn event_kind<'d>(name: &'d str, data: &'d str) -> serde_json::Result<Cow<'d, str>> {
    if name != "message" {
        return Ok(Cow::Borrowed(name));
    }
    serde_json::from_str::<Tagged<'d>>(data).map(|tagged| tagged.kind)
}

/// Token counts under either naming: OpenAI chat/completions
/// (`prompt_tokens`) or Responses API and Anthropic (`input_tokens`).
#[derive(Deserialize, Clone, Copy)]
pub(super) struct WireUsage {
    #[serde(alias = "input_tokens")]
    pub(super) prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    pub(super) completion_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }
    }
}

/// Just the `type` of an event's data.
#[derive(Deserialize)]
struct Tagged<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// The cheap check of an event read for its outcome only: its data is a JSON object (starts with
/// `{` and ends with `}`). Catches the failures seen in the wild (an HTML error page, an event
/// cut in the middle) without the cost of parsing it.
pub(super) fn object_shaped(data: &str) -> serde_json::Result<()> {
    let data = data.trim_ascii();
    if data.starts_with('{') && data.ends_with('}') {
        Ok(())
    } else {
        Err(serde::de::Error::custom("not a JSON object"))
    }
}

/// The keys the outcome of an OpenAI chat or completions stream is in; built once per process
/// (building a finder costs more than a search through an event).
pub(super) static FINISH_REASON: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"finish_reason\""));
pub(super) static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
/// A function call item of the Responses API (its `type` value).
pub(super) static FUNCTION_CALL: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"function_call\""));

/// Whether `data` has the key `key` finds (quotes included) with a value other than `null`: a
/// targeted scan that tells which events are worth parsing. It may say yes for the key's text
/// inside a string (the event is then parsed for nothing), never no for a real key.
pub(super) fn has_value(data: &str, key: &Finder<'_>) -> bool {
    let bytes = data.as_bytes();
    let len = key.needle().len();
    key.find_iter(bytes).any(|at| {
        let rest = bytes[at + len..].trim_ascii_start();
        match rest.strip_prefix(b":") {
            Some(value) => !value.trim_ascii_start().starts_with(b"null"),
            None => false,
        }
    })
}
