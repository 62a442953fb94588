//! OpenAI Responses API (`/v1/responses`): its wire structs and how its bodies and stream
//! events add to the [`Assembly`].

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::assembly::{event_kind, object_shaped, Assembly, WireUsage, FUNCTION_CALL};
use super::types::FinishReason;

impl Assembly {
    /// Parses and reads a whole Responses API body.
    pub(super) fn responses_body(&mut self, bytes: &[u8]) -> serde_json::Result<()> {
        serde_json::from_slice(bytes).map(|body| self.read_response(body))
    }

    /// Reads only the outcome of a whole Responses API body: its status, usage, and whether an
    /// output item is a function call (the finish reason is then `ToolCalls`, as when read
    /// whole); the items themselves are skipped unread.
    pub(super) fn responses_body_outcome(
        &mut self,
        bytes: &[u8],
    ) -> serde_json::Result<Option<WireUsage>> {
        serde_json::from_slice(bytes).map(|b: ResponseObject<'_, Vec<ItemKind<'_>>>| {
            self.called_tool |= b.output.iter().any(|item| item.kind == "function_call");
            self.response_outcome(&b);
            b.usage
        })
    }

    /// Reads one Responses API stream event.
    pub(super) fn responses_event(&mut self, name: &str, data: &str) -> serde_json::Result<()> {
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

    /// Reads one Responses API stream event for its outcome only: the terminal and error events
    /// are read as by [`Assembly::responses_event`]; the others are only checked to be objects
    /// (an added function call is noted by a scan, for the finish reason).
    pub(super) fn responses_event_outcome(
        &mut self,
        name: &str,
        data: &str,
    ) -> serde_json::Result<()> {
        match &*event_kind(name, data)? {
            "response.completed" | "response.incomplete" | "error" | "response.failed" => {
                self.responses_event(name, data)
            }
            "response.output_item.added" => {
                self.called_tool |= FUNCTION_CALL.find(data.as_bytes()).is_some();
                object_shaped(data)
            }
            _ => object_shaped(data),
        }
    }

    /// Reads a whole Responses API body.
    fn read_response(&mut self, response: ResponseBody<'_>) {
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

/// An output item read for its type only.
#[derive(Deserialize)]
struct ItemKind<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// A whole Responses API body.
type ResponseBody<'a> = ResponseObject<'a, Vec<OutputItem<'a, Vec<Part<'a>>>>>;

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
}
