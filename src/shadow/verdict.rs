//! The blind pairwise LLM judge: a judge model gets the client's request, the route's rubric
//! and the two answers as A and B in random order (the contract's layout), and answers
//! `{"verdict": "A" | "B" | "tie"}`. The subject's score is 0 when it lost, 1 otherwise. When
//! the judge's budget allows, the pair is asked in both orders and a disagreement counts as a
//! tie (position bias). A verdict that does not parse is dropped, never held against anyone.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::remote::{bounded, post_json, ScorerFailure};
use crate::config::{ApiFlavor, JudgeConfig};
use crate::domain::{cut, MAX_REASON_BYTES};
use crate::observe::{ApiShape, Observer, Usage};
use crate::state::RemoteScorer;
use crate::upstream::UpstreamClient;

/// What the judge is told before the comparison.
const SYSTEM: &str = "You are an impartial judge. You compare two answers to the same request \
                      under a rubric, without regard to their order or length. Reply with JSON only.";
/// Room for the verdict and a short reason.
const MAX_VERDICT_TOKENS: u32 = 300;
/// Bound on the judge's answer kept for parsing.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Which answer the judge preferred, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    A,
    B,
    Tie,
}

/// The judge's decision on one pair, in terms of the subject (the candidate, or stable's second
/// answer for the noise floor).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The judge preferred the reference.
    pub subject_lost: bool,
    /// Both orders were asked and they disagreed (counted as a tie).
    pub disagreed: bool,
    /// Tokens the judge spent on the pair.
    pub usage: Usage,
    /// The judge's `reason` for its (first) verdict, cut to [`MAX_REASON_BYTES`], for review.
    pub reason: Option<String>,
    /// Whether the subject was answer A in that first order (the reason names A and B).
    pub subject_was_a: bool,
}

impl Judged {
    /// The subject's judge score: 0 when it lost, 1 otherwise.
    pub fn score(&self) -> f64 {
        if self.subject_lost {
            0.0
        } else {
            1.0
        }
    }
}

/// The judge's message, laid out exactly as the contract says.
pub fn prompt(rubric: &str, request: &str, a: &str, b: &str) -> String {
    format!(
        "<rubric>\n{rubric}\n</rubric>\n<request>\n{request}\n</request>\n\
         <answer id=\"A\">\n{a}\n</answer>\n<answer id=\"B\">\n{b}\n</answer>\n\
         Which answer is better under the rubric? Reply with JSON only: \
         {{\"verdict\": \"A\" | \"B\" | \"tie\", \"reason\": \"...\"}}"
    )
}

/// The verdict in the judge's text: the first JSON object in it with a `verdict` of A, B or tie
/// (any case). None when there is none.
pub fn parse_verdict(text: &str) -> Option<Verdict> {
    #[derive(Deserialize)]
    struct Answer {
        verdict: String,
    }
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let answer: Answer = serde_json::from_str(text.get(start..=end)?).ok()?;
    match answer.verdict.trim().to_ascii_lowercase().as_str() {
        "a" => Some(Verdict::A),
        "b" => Some(Verdict::B),
        "tie" => Some(Verdict::Tie),
        _ => None,
    }
}

/// The `reason` of the judge's JSON answer, when it gave one (cut to [`MAX_REASON_BYTES`]).
pub fn parse_reason(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Answer {
        reason: Option<String>,
    }
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let answer: Answer = serde_json::from_str(text.get(start..=end)?).ok()?;
    answer
        .reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| cut(r.trim(), MAX_REASON_BYTES))
}

/// The client's last user message (or the completions prompt), as text: what the judge is told
/// the answers answer.
pub fn last_user_message(shape: ApiShape, body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let text_of = |content: &Value| -> String {
        match content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str).or(p.as_str()))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    };
    let last_user = |items: &Value| -> String {
        items
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            })
            .and_then(|m| m.get("content"))
            .map(text_of)
            .unwrap_or_default()
    };
    match shape {
        ApiShape::ChatCompletions | ApiShape::Messages => last_user(&v["messages"]),
        ApiShape::Responses => match &v["input"] {
            Value::String(s) => s.clone(),
            items => last_user(items),
        },
        ApiShape::Completions => text_of(&v["prompt"]),
        ApiShape::Embeddings => text_of(&v["input"]),
    }
}

/// Asks the judge about `reference` against `subject` for `request`. `subject_first` decides
/// the first order (draw it at random per sample).
pub async fn judge(
    client: &UpstreamClient,
    scorer: &RemoteScorer<JudgeConfig>,
    request: &str,
    reference: &str,
    subject: &str,
    subject_first: bool,
    timeout: Duration,
) -> Result<Judged, ScorerFailure> {
    let both = scorer.cfg.both_orders && scorer.admit(2);
    if !both && !scorer.admit(1) {
        return Err(ScorerFailure::Budget);
    }
    let max = scorer.cfg.max_input_chars;
    let (request, reference, subject) = (
        bounded(request, max),
        bounded(reference, max),
        bounded(subject, max),
    );
    let mut usage = Usage::default();
    // The winner of each order, in terms of the subject: Some(true) subject won, Some(false)
    // reference won, None a tie.
    let ask = |subject_is_a: bool| {
        let (a, b) = if subject_is_a {
            (subject, reference)
        } else {
            (reference, subject)
        };
        let text = prompt(&scorer.cfg.rubric, request, a, b);
        async move {
            let (verdict, spent, reason) = ask_once(client, scorer, &text, timeout).await?;
            let subject_won = match verdict {
                Verdict::Tie => None,
                Verdict::A => Some(subject_is_a),
                Verdict::B => Some(!subject_is_a),
            };
            Ok::<_, ScorerFailure>((subject_won, spent, reason))
        }
    };
    let (first, spent, reason) = ask(subject_first).await?;
    add(&mut usage, spent);
    let (winner, disagreed) = if both {
        let (second, spent, _) = ask(!subject_first).await?;
        add(&mut usage, spent);
        if first == second {
            (first, false)
        } else {
            (None, true)
        }
    } else {
        (first, false)
    };
    Ok(Judged {
        subject_lost: winner == Some(false),
        disagreed,
        usage,
        reason,
        subject_was_a: subject_first,
    })
}

fn add(total: &mut Usage, spent: Usage) {
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    total.prompt_tokens = sum(total.prompt_tokens, spent.prompt_tokens);
    total.completion_tokens = sum(total.completion_tokens, spent.completion_tokens);
}

/// One chat request to the judge model, in its upstream's API.
async fn ask_once(
    client: &UpstreamClient,
    scorer: &RemoteScorer<JudgeConfig>,
    text: &str,
    timeout: Duration,
) -> Result<(Verdict, Usage, Option<String>), ScorerFailure> {
    let model = &scorer.cfg.model;
    let (path, shape, extra, body) = match scorer.upstream.api {
        ApiFlavor::OpenAi => (
            "/v1/chat/completions",
            ApiShape::ChatCompletions,
            &[][..],
            json!({
                "model": model,
                "temperature": 0,
                "max_tokens": MAX_VERDICT_TOKENS,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                ],
            }),
        ),
        ApiFlavor::Anthropic => (
            "/v1/messages",
            ApiShape::Messages,
            &[("anthropic-version", "2023-06-01")][..],
            json!({
                "model": model,
                "temperature": 0,
                "max_tokens": MAX_VERDICT_TOKENS,
                "system": SYSTEM,
                "messages": [{"role": "user", "content": text}],
            }),
        ),
    };
    let answer = post_json(
        client,
        &scorer.upstream,
        path,
        extra,
        body.to_string().into_bytes(),
        timeout,
    )
    .await?;
    let mut observer = Observer::new(shape, false, MAX_ANSWER_BYTES);
    observer.feed(&answer);
    let observation = observer.finish(200, true);
    let spent = observation.usage;
    scorer.charge_tokens(spent.prompt_tokens.unwrap_or(0) + spent.completion_tokens.unwrap_or(0));
    let verdict = parse_verdict(&observation.text).ok_or(ScorerFailure::Unparseable)?;
    Ok((verdict, spent, parse_reason(&observation.text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_the_contracts_layout() {
        assert_eq!(
            prompt("Be kind.", "Where is my order?", "one", "two"),
            "<rubric>\nBe kind.\n</rubric>\n<request>\nWhere is my order?\n</request>\n\
             <answer id=\"A\">\none\n</answer>\n<answer id=\"B\">\ntwo\n</answer>\n\
             Which answer is better under the rubric? Reply with JSON only: \
             {\"verdict\": \"A\" | \"B\" | \"tie\", \"reason\": \"...\"}"
        );
    }

    #[test]
    fn verdicts_parse_or_are_dropped() {
        let cases = [
            (r#"{"verdict": "A", "reason": "kinder"}"#, Some(Verdict::A)),
            ("```json\n{\"verdict\":\"b\"}\n```", Some(Verdict::B)),
            (r#"{"verdict": "tie"}"#, Some(Verdict::Tie)),
            (r#"{"verdict": "both"}"#, None),
            ("I think the first one is better.", None),
            (r#"{"reason": "no verdict"}"#, None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_verdict(text), expected, "{text:?}");
        }
        assert_eq!(parse_reason(cases[0].0).as_deref(), Some("kinder"));
        assert_eq!(parse_reason(cases[1].0), None);
        let long = format!(
            "{{\"verdict\": \"A\", \"reason\": \"{}\"}}",
            "r".repeat(5000)
        );
        assert_eq!(parse_reason(&long).map(|r| r.len()), Some(MAX_REASON_BYTES));
    }

    #[test]
    fn the_request_is_the_last_user_message() {
        let chat = br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"first"},{"role":"assistant","content":"a"},{"role":"user","content":[{"type":"text","text":"second"}]}]}"#;
        assert_eq!(last_user_message(ApiShape::ChatCompletions, chat), "second");
        let messages = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
        assert_eq!(last_user_message(ApiShape::Messages, messages), "hello");
        let responses = br#"{"input":"just text"}"#;
        assert_eq!(
            last_user_message(ApiShape::Responses, responses),
            "just text"
        );
        let items =
            br#"{"input":[{"role":"user","content":[{"type":"input_text","text":"item"}]}]}"#;
        assert_eq!(last_user_message(ApiShape::Responses, items), "item");
        assert_eq!(
            last_user_message(ApiShape::Completions, br#"{"prompt":"p"}"#),
            "p"
        );
        assert_eq!(last_user_message(ApiShape::Completions, b"not json"), "");
    }

    #[test]
    fn only_a_loss_scores_zero() {
        let j = |subject_lost| Judged {
            subject_lost,
            disagreed: false,
            usage: Usage::default(),
            reason: None,
            subject_was_a: true,
        };
        assert_eq!(j(true).score(), 0.0);
        assert_eq!(j(false).score(), 1.0);
    }
}
