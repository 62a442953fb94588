//! OpenAI chat completions (`/v1/chat/completions`) and legacy completions (`/v1/completions`):
//! their wire structs and how their bodies and stream chunks add to the [`Assembly`].
//!
//! The two APIs share one wire shape (a `choices` array, of which only choice 0 is read, and
//! `usage`); a choice carries `text` for completions and `message` (`delta` when streaming) for
//! chat, and both are read by the same code, so legacy completions has no file of its own.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::assembly::{has_value, object_shaped, Assembly, WireUsage, FINISH_REASON, USAGE};
use super::types::FinishReason;

impl Assembly {
    /// Reads one chat or completions stream event (other than `[DONE]`).
    pub(super) fn chat_event(&mut self, data: &str) -> serde_json::Result<()> {
        serde_json::from_str(data).map(|chunk| self.openai(chunk))
    }

    /// Reads one chat or completions stream event (other than `[DONE]`) for its outcome only:
    /// parsed for choice 0's finish reason and the usage (the delta skipped unread) when a scan
    /// finds either in it (the last one or two chunks), else only checked to be an object.
    pub(super) fn chat_event_outcome(&mut self, data: &str) -> serde_json::Result<()> {
        if !(has_value(data, &FINISH_REASON) || has_value(data, &USAGE)) {
            return object_shaped(data);
        }
        let chunk: ChatOutcome<'_> = serde_json::from_str(data)?;
        if let Some(reason) = chunk.choices.and_then(|c| c.finish_reason) {
            self.finish_reason = Some(FinishReason::from_openai(&reason));
        }
        if let Some(usage) = chunk.usage {
            self.usage = usage.into();
        }
        Ok(())
    }

    /// Parses and reads a whole chat or completions body.
    pub(super) fn chat_body(&mut self, bytes: &[u8]) -> serde_json::Result<()> {
        serde_json::from_slice(bytes).map(|body| self.openai(body))
    }

    /// Reads only the outcome of a whole chat or completions body: choice 0's finish reason and
    /// the usage.
    pub(super) fn chat_body_outcome(
        &mut self,
        bytes: &[u8],
    ) -> serde_json::Result<Option<WireUsage>> {
        let body: ChatOutcome<'_> = serde_json::from_slice(bytes)?;
        if let Some(reason) = body.choices.and_then(|c| c.finish_reason) {
            self.finish_reason = Some(FinishReason::from_openai(&reason));
        }
        Ok(body.usage)
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
}

impl FinishReason {
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
}

/// An OpenAI chat or completions body, or one stream chunk of either.
#[derive(Deserialize)]
struct OpenAiBody<'a> {
    #[serde(borrow, deserialize_with = "choice_zero")]
    choices: Option<Choice<'a>>,
    usage: Option<WireUsage>,
}

/// A choice's `index`, by which choice 0 is found.
trait Indexed {
    fn index(&self) -> Option<u64>;
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

impl Indexed for Choice<'_> {
    fn index(&self) -> Option<u64> {
        self.index
    }
}

/// One choice read for its outcome: the message or text is skipped unread.
#[derive(Deserialize)]
struct ChoiceOutcome<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

impl Indexed for ChoiceOutcome<'_> {
    fn index(&self) -> Option<u64> {
        self.index
    }
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
fn choice_zero<'de, D, C>(deserializer: D) -> Result<Option<C>, D::Error>
where
    D: Deserializer<'de>,
    C: Deserialize<'de> + Indexed,
{
    struct ChoiceZero<C>(PhantomData<C>);
    impl<'de, C: Deserialize<'de> + Indexed> Visitor<'de> for ChoiceZero<C> {
        type Value = Option<C>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of choices")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut zero = None;
            while let Some(choice) = seq.next_element::<C>()? {
                if zero.is_none() && choice.index().unwrap_or(0) == 0 {
                    zero = Some(choice);
                }
            }
            Ok(zero)
        }
    }
    deserializer.deserialize_seq(ChoiceZero(PhantomData))
}

/// A whole OpenAI chat or completions body, or one stream chunk, read for its outcome only
/// (`choices` must be there).
#[derive(Deserialize)]
struct ChatOutcome<'a> {
    #[serde(borrow, deserialize_with = "choice_zero")]
    choices: Option<ChoiceOutcome<'a>>,
    usage: Option<WireUsage>,
}
