//! Anthropic Messages API (`/v1/messages`): its wire structs and how its bodies and stream
//! events add to the [`Assembly`].

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::assembly::{event_kind, object_shaped, Assembly, WireUsage};
use super::types::FinishReason;

impl Assembly {
    /// Parses and reads a whole Anthropic Messages body.
    pub(super) fn messages_body(&mut self, bytes: &[u8]) -> serde_json::Result<()> {
        serde_json::from_slice(bytes).map(|body| self.read_message(body))
    }

    /// Reads only the outcome of a whole Anthropic Messages body: its stop reason and usage.
    pub(super) fn messages_body_outcome(
        &mut self,
        bytes: &[u8],
    ) -> serde_json::Result<Option<WireUsage>> {
        let body: MessageOutcome<'_> = serde_json::from_slice(bytes)?;
        if let Some(reason) = body.stop_reason {
            self.finish_reason = Some(FinishReason::from_anthropic(&reason));
        }
        Ok(body.usage)
    }

    /// Reads one Anthropic Messages stream event.
    pub(super) fn messages_event(&mut self, name: &str, data: &str) -> serde_json::Result<()> {
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

    /// Reads one Anthropic Messages stream event for its outcome only: the events that carry
    /// usage, the stop reason, the end or an error are read as by [`Assembly::messages_event`];
    /// content events are only checked to be objects.
    pub(super) fn messages_event_outcome(
        &mut self,
        name: &str,
        data: &str,
    ) -> serde_json::Result<()> {
        match &*event_kind(name, data)? {
            "content_block_start" | "content_block_delta" | "content_block_stop" | "ping" => {
                object_shaped(data)
            }
            _ => self.messages_event(name, data),
        }
    }

    /// Reads a whole Anthropic Messages body.
    fn read_message(&mut self, message: MessageBody<'_>) {
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
}

impl FinishReason {
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

/// Anthropic `message_start`.
#[derive(Deserialize)]
struct MessageStart {
    message: UsageHolder,
}

#[derive(Deserialize)]
struct UsageHolder {
    usage: Option<WireUsage>,
}

/// A whole Anthropic message read for its outcome only (`content` must be there, as for
/// [`MessageBody`]).
#[derive(Deserialize)]
struct MessageOutcome<'a> {
    #[serde(rename = "content")]
    _content: IgnoredAny,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
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
