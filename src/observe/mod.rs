//! Observing an LLM response on the side: while the proxy streams a response
//! body through to the client, an [`Observer`] is fed the same chunks and
//! assembles an [`Observation`] of what the model said (text, tool calls),
//! why it stopped, the token usage, and whether the answer was whole.
//!
//! Pure logic over bytes: no I/O, no clock. Memory stays bounded by the
//! observer's byte budget whatever the input.
//!
//! Layout, from the bottom up (a file imports only from files below it): `types` holds the
//! public vocabulary ([`ApiShape`], [`Observation`], ...); `assembly` the answer being built and
//! the budgeted helpers every API uses; `chat` (chat and legacy completions), `responses` and
//! `messages` each read one API family's wire format; `sse` splits a stream into events. This
//! file wires them: the [`Observer`] takes the body in and sends each event or whole body to the
//! family its [`ApiShape`] names.

use assembly::Assembly;

mod assembly;
mod chat;
mod embeddings;
mod messages;
mod responses;
mod sse;
#[cfg(test)]
mod tests;
mod types;

pub use sse::{SseEvent, SseReader, StreamEnd};
pub use types::{ApiShape, Failure, FinishReason, Observation, ToolCall, Usage};

/// Smallest bound on one SSE event, however small the observer's budget.
const MIN_EVENT_BYTES: usize = 64 * 1024;

/// Assembles an [`Observation`] from a response body fed chunk by chunk.
#[derive(Debug)]
pub struct Observer {
    shape: ApiShape,
    input: Input,
    out: Assembly,
    /// Only the outcome is wanted (nobody compares this answer): a JSON body is checked and its
    /// usage and finish reason read, but its text and tool calls are not assembled.
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
            out: Assembly::new(max_bytes),
            usage_only: false,
        }
    }

    /// An observer for an answer nobody compares: the usage, finish reason and failures
    /// [`Observer::new`] gives, without text or tool calls. A JSON body is checked and its usage
    /// and finish reason read; a stream is split into events (its end is only known from them),
    /// and only the events that can carry usage, the finish reason, the end or an error are
    /// parsed, found by a targeted scan; the others are only checked to be a JSON object
    /// (`{` .. `}`), not parsed (that is most of the cost of observing a stream).
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
                let (out, shape) = (&mut self.out, self.shape);
                if self.usage_only {
                    reader.feed_with(chunk, &mut |name, data| {
                        out.event_outcome(shape, name, data)
                    });
                } else {
                    reader.feed_with(chunk, &mut |name, data| out.event(shape, name, data));
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
                Input::Body { bytes, cut, .. } if usage_only => {
                    out.body_outcome(shape, &bytes, cut)
                }
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
            embeddings: out.embeddings,
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
            ApiShape::ChatCompletions | ApiShape::Completions => self.chat_event(data),
            ApiShape::Responses => self.responses_event(name, data),
            ApiShape::Messages => self.messages_event(name, data),
            // The embeddings API does not stream.
            ApiShape::Embeddings => Err(serde::de::Error::custom("embeddings do not stream")),
        };
        self.malformed |= read.is_err();
    }

    /// Reads one SSE event for its outcome only (usage, finish reason, end, errors): see
    /// [`Observer::usage_only`].
    fn event_outcome(&mut self, shape: ApiShape, name: &str, data: &str) {
        if data == "[DONE]" {
            self.ended |= matches!(shape, ApiShape::ChatCompletions | ApiShape::Completions);
            return;
        }
        let read = match shape {
            ApiShape::ChatCompletions | ApiShape::Completions => self.chat_event_outcome(data),
            ApiShape::Responses => self.responses_event_outcome(name, data),
            ApiShape::Messages => self.messages_event_outcome(name, data),
            ApiShape::Embeddings => Err(serde::de::Error::custom("embeddings do not stream")),
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
            ApiShape::ChatCompletions | ApiShape::Completions => self.chat_body(bytes),
            ApiShape::Responses => self.responses_body(bytes),
            ApiShape::Messages => self.messages_body(bytes),
            ApiShape::Embeddings => self.embeddings_body(bytes),
        };
        // A body cut at the bound cannot be expected to parse.
        self.truncated |= cut;
        self.malformed |= read.is_err() && !cut;
    }

    /// Reads only the outcome of a whole non-streaming body (usage, finish reason, failure): the
    /// body must be JSON with the API's required top-level fields (`choices`, `status`,
    /// `content`), as for [`Assembly::body`], but the text and tool calls are skipped unread.
    fn body_outcome(&mut self, shape: ApiShape, bytes: &[u8], cut: bool) {
        let read = match shape {
            ApiShape::ChatCompletions | ApiShape::Completions => self.chat_body_outcome(bytes),
            ApiShape::Responses => self.responses_body_outcome(bytes),
            ApiShape::Messages => self.messages_body_outcome(bytes),
            ApiShape::Embeddings => Assembly::embeddings_usage(bytes),
        };
        if let Ok(Some(usage)) = read {
            self.usage = usage.into();
        }
        self.truncated |= cut;
        self.malformed |= read.is_err() && !cut;
    }
}
