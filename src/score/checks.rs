//! The user's own checks on an answer (`[[routes.NAME.checks]]`): a JSON Schema on the answer's
//! text or on each tool call's arguments, a regular expression that must or must not match, a
//! word limit. Pure: a check is compiled once when the configuration is loaded, then run on
//! both answers of a sample; a check the candidate fails where stable passed is the candidate's
//! hard failure.

use std::fmt;
use std::sync::Arc;

use regex::Regex;
use serde_json::Value;

use crate::observe::Observation;

/// One named check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// `name`: the metric label and what the sample shows.
    pub name: String,
    pub rule: CheckRule,
}

/// What a check asserts.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckRule {
    /// `json_schema` / `json_schema_file`: the text (or each tool call's arguments) is JSON that
    /// validates against the schema.
    JsonSchema { schema: Schema, on: CheckTarget },
    /// `must_match`: the text matches.
    MustMatch(Pattern),
    /// `must_not_match`: the text does not match.
    MustNotMatch(Pattern),
    /// `max_words`: the text has at most this many words.
    MaxWords(usize),
}

/// What a JSON Schema check validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTarget {
    /// `on = "text"` (default): the answer's text.
    Text,
    /// `on = "tool_arguments"`: each tool call's arguments.
    ToolArguments,
}

/// A compiled regular expression, equal to another with the same source.
#[derive(Clone)]
pub struct Pattern(Regex);

impl Pattern {
    /// Compiles `source`, or says why it is not a valid expression.
    pub fn new(source: &str) -> Result<Self, String> {
        Regex::new(source).map(Pattern).map_err(|e| e.to_string())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.0.as_str())
    }
}

/// A compiled JSON Schema, equal to another with the same document.
#[derive(Clone)]
pub struct Schema {
    document: Value,
    validator: Arc<jsonschema::Validator>,
}

impl Schema {
    /// Compiles `document` (any draft jsonschema knows; no remote references are fetched), or
    /// says why it is not a valid schema.
    pub fn new(document: Value) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&document).map_err(|e| e.to_string())?;
        Ok(Schema {
            document,
            validator: Arc::new(validator),
        })
    }

    fn accepts(&self, text: &str) -> bool {
        serde_json::from_str::<Value>(text.trim()).is_ok_and(|v| self.validator.is_valid(&v))
    }
}

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.document)
    }
}

impl Check {
    /// Whether `answer` passes.
    pub fn passes(&self, answer: &Observation) -> bool {
        match &self.rule {
            CheckRule::JsonSchema {
                schema,
                on: CheckTarget::Text,
            } => schema.accepts(&answer.text),
            CheckRule::JsonSchema {
                schema,
                on: CheckTarget::ToolArguments,
            } => answer
                .tool_calls
                .iter()
                .all(|call| schema.accepts(&call.arguments)),
            CheckRule::MustMatch(p) => p.0.is_match(&answer.text),
            CheckRule::MustNotMatch(p) => !p.0.is_match(&answer.text),
            CheckRule::MaxWords(max) => answer.text.split_whitespace().count() <= *max,
        }
    }
}

/// The first check the subject fails where the reference passes: a regression of the subject's
/// own making. A check both fail is not held against the subject.
pub fn regression<'c>(
    checks: &'c [Check],
    reference: &Observation,
    subject: &Observation,
) -> Option<&'c Check> {
    checks
        .iter()
        .find(|c| !c.passes(subject) && c.passes(reference))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::ToolCall;
    use serde_json::json;

    fn answer(text: &str) -> Observation {
        Observation {
            status: 200,
            text: text.into(),
            ..Observation::default()
        }
    }

    fn check(name: &str, rule: CheckRule) -> Check {
        Check {
            name: name.into(),
            rule,
        }
    }

    #[test]
    fn each_rule() {
        let schema = Schema::new(json!({"type": "object", "required": ["reply"]})).unwrap();
        let json_text = check(
            "schema",
            CheckRule::JsonSchema {
                schema: schema.clone(),
                on: CheckTarget::Text,
            },
        );
        assert!(json_text.passes(&answer(r#" {"reply": "hi"} "#)));
        assert!(!json_text.passes(&answer(r#"{"other": 1}"#)));
        assert!(!json_text.passes(&answer("not json")));

        let args = check(
            "args",
            CheckRule::JsonSchema {
                schema,
                on: CheckTarget::ToolArguments,
            },
        );
        let mut with_calls = answer("");
        with_calls.tool_calls = vec![ToolCall {
            name: "f".into(),
            arguments: r#"{"reply": 1}"#.into(),
        }];
        assert!(args.passes(&with_calls));
        with_calls.tool_calls[0].arguments = r#"{"reply": 1"#.into();
        assert!(!args.passes(&with_calls));

        let must = check(
            "order",
            CheckRule::MustMatch(Pattern::new(r"#\d{4,}").unwrap()),
        );
        assert!(must.passes(&answer("Order #12345 ships today")));
        assert!(!must.passes(&answer("Your order ships today")));
        let must_not = check(
            "acme",
            CheckRule::MustNotMatch(Pattern::new("(?i)acme corp").unwrap()),
        );
        assert!(!must_not.passes(&answer("Try ACME Corp instead")));
        let short = check("short", CheckRule::MaxWords(3));
        assert!(short.passes(&answer("one two  three")));
        assert!(!short.passes(&answer("one two three four")));
    }

    #[test]
    fn only_the_subjects_own_failures_count() {
        let checks = [
            check(
                "acme",
                CheckRule::MustNotMatch(Pattern::new("acme").unwrap()),
            ),
            check("short", CheckRule::MaxWords(3)),
        ];
        let good = answer("all fine here");
        let long = answer("this answer is far too long");
        let both = answer("acme is far too long");
        assert_eq!(
            regression(&checks, &good, &long).map(|c| c.name.as_str()),
            Some("short")
        );
        assert_eq!(
            regression(&checks, &long, &long),
            None,
            "both fail: not the subject's fault"
        );
        assert_eq!(
            regression(&checks, &long, &both).map(|c| c.name.as_str()),
            Some("acme")
        );
        assert_eq!(regression(&checks, &good, &good), None);
    }

    #[test]
    fn invalid_sources_are_refused() {
        assert!(Pattern::new("(unclosed").is_err());
        assert!(Schema::new(json!({"type": 12})).is_err());
    }
}
