//! `understudy export ROUTE [--worst N | --random N] [--format jsonl]`: the route's captured
//! pairs as JSON Lines on stdout, one case a line, in a shape evaluation tools read: the
//! request's `messages` (and the whole `request`), stable's answer as the `reference`, the
//! candidate's answer as `output`, the scores, and both release numbers. Redacted as the route
//! is configured: a route with `scoring.redact_requests` keeps no request, so its cases carry
//! `"request": null` (and `replay` skips them).

use serde_json::{json, Value};

use crate::admin::AdminClient;

/// Which captured pairs to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Worst(usize),
    Random(usize),
}

/// The lines to print, or why not.
pub async fn export(client: &AdminClient, route: &str, pick: Pick) -> Result<Vec<String>, String> {
    let (order, limit) = match pick {
        Pick::Worst(n) => ("worst", n),
        Pick::Random(n) => ("random", n),
    };
    let v = client
        .samples(route, order, limit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(v["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| case_line(route, order, s).to_string())
        .collect())
}

/// One captured pair as one exported case.
pub fn case_line(route: &str, order: &str, s: &Value) -> Value {
    let request = &s["request"];
    let messages = match (&request["messages"], &request["input"]) {
        (Value::Array(m), _) => Value::Array(m.clone()),
        (_, Value::Array(m)) => Value::Array(m.clone()),
        (_, Value::String(text)) => json!([{ "role": "user", "content": text }]),
        _ => match &request["prompt"] {
            Value::Null => Value::Null,
            prompt => json!([{ "role": "user", "content": prompt }]),
        },
    };
    json!({
        "route": route,
        "order": order,
        "api": s["api"].as_str().unwrap_or("chat"),
        "captured_at_unix": s["at_unix"],
        "stable_version": s["stable_version"],
        "candidate_version": s["candidate_version"],
        "request": request,
        "messages": messages,
        "system": request.get("system").cloned().unwrap_or(Value::Null),
        "reference": answer_text(&s["stable"]),
        "output": answer_text(&s["candidate"]),
        "score": s["score"],
        "scores": s["scores"],
        "hard_failure": s["hard_failure"],
        "failed_check": s.get("failed_check").cloned().unwrap_or(Value::Null),
        "judge_reason": s.get("judge_reason").cloned().unwrap_or(Value::Null),
        "stable_answer": s["stable"],
        "candidate_answer": s["candidate"],
    })
}

/// An answer's text, then its tool calls as `name(arguments)` lines.
pub fn answer_text(side: &Value) -> String {
    let mut text = side["text"].as_str().unwrap_or("").to_owned();
    for call in side["tool_calls"].as_array().into_iter().flatten() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!(
            "{}({})",
            call[0].as_str().unwrap_or(""),
            call[1].as_str().unwrap_or("")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_becomes_a_case() {
        let sample = json!({
            "at_unix": 1, "candidate_version": 2, "stable_version": 1, "api": "chat",
            "score": 0.25, "scores": {"lexical": 0.2}, "hard_failure": null,
            "request": {"model": "bot", "messages": [{"role": "user", "content": "hi"}]},
            "stable": {"text": "hello", "tool_calls": []},
            "candidate": {"text": "", "tool_calls": [["lookup", "{\"id\":1}"]]},
        });
        let line = case_line("bot", "worst", &sample);
        assert_eq!(line["messages"][0]["content"], "hi");
        assert_eq!(line["reference"], "hello");
        assert_eq!(line["output"], "lookup({\"id\":1})");
        assert_eq!(
            (
                line["stable_version"].as_u64(),
                line["candidate_version"].as_u64()
            ),
            (Some(1), Some(2))
        );
        // A redacted request stays redacted.
        let redacted = case_line(
            "bot",
            "worst",
            &json!({"request": null, "stable": {}, "candidate": {}}),
        );
        assert!(redacted["request"].is_null() && redacted["messages"].is_null());
        // The legacy completions prompt and the Responses API's input read as messages too.
        let prompt = case_line("bot", "random", &json!({"request": {"prompt": "p"}}));
        assert_eq!(prompt["messages"][0]["content"], "p");
        let input = case_line("bot", "random", &json!({"request": {"input": "q"}}));
        assert_eq!(input["messages"][0]["content"], "q");
    }
}
