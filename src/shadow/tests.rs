//! The tap: the mirror's reading of the client's answer.

use super::*;
use crate::observe::FinishReason;

const MAX: usize = 64 * 1024;

/// A chat answer streamed in four events (text, tool-less), usage, and the end.
fn chat_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for word in ["Your ", "order ", "ships ", "today."] {
        let event = serde_json::json!({"object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]});
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
    }
    let last = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4}});
    out.extend_from_slice(format!("data: {last}\n\ndata: [DONE]\n\n").as_bytes());
    out
}

fn chat_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Your order ships today."},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4}}))
    .unwrap()
}

/// The mirror reads the client's answer from the tap exactly as an observer fed the body during
/// the relay reads it: whatever the pieces, with the relay's own failure put over what the
/// body shows, and the relay's timings.
#[tokio::test]
async fn the_tap_reads_the_answer_as_the_relay_would_have() {
    for (body, streaming) in [(chat_stream(), true), (chat_body(), false)] {
        for failure in [None, Some(Failure::Timeout), Some(Failure::Transport)] {
            for size in [1, 7, 100, body.len()] {
                let (tx, rx) = mpsc::unbounded_channel();
                let tap = ClientTap(tx);
                tap.head(streaming);
                let mut during = Observer::new(ApiShape::ChatCompletions, streaming, MAX);
                for piece in body.chunks(size) {
                    tap.data(&Bytes::copy_from_slice(piece));
                    during.feed(piece);
                }
                let end = ClientEnd {
                    status: 200,
                    failure: failure.clone(),
                    latency: Duration::from_millis(40),
                    ttfb: Some(Duration::from_millis(3)),
                };
                tap.end(end.clone());
                let got = client_answer(rx, ApiShape::ChatCompletions, MAX)
                    .await
                    .expect("an answer that ended is paired");
                let mut want = during.finish(200, failure.is_none());
                if let Some(f) = failure.clone() {
                    want.failure = Some(f);
                }
                want.latency = end.latency;
                want.ttfb = end.ttfb;
                assert_eq!(got, want, "streaming {streaming}, pieces of {size}");
                assert_eq!(got.text, "Your order ships today.");
                assert_eq!(got.finish_reason, Some(FinishReason::Stop));
                assert_eq!(got.usage.completion_tokens, Some(4));
                assert_eq!(got.failure, failure);
            }
        }
    }
}

/// A tap dropped before the end (the client went away) pairs nothing, even with the whole
/// body passed.
#[tokio::test]
async fn a_tap_dropped_before_the_end_pairs_nothing() {
    let (tx, rx) = mpsc::unbounded_channel();
    let tap = ClientTap(tx);
    tap.head(true);
    tap.data(&Bytes::from(chat_stream()));
    drop(tap);
    assert_eq!(
        client_answer(rx, ApiShape::ChatCompletions, MAX).await,
        None
    );
}
