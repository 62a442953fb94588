//! One release definition and its one validation, shared by the configuration file and the
//! admin API, so the two cannot disagree about what a valid release is.

use serde_json::{Map, Value};

/// Request fields the proxy writes itself when it rewrites a request for a release (the model,
/// the system prompt in each API's place for it, `store: false` on mirrors) or that only the
/// client decides (`stream`). A release parameter may not name one: it would be written twice.
pub const RESERVED_PARAMS: [&str; 6] = [
    "model",
    "messages",
    "system",
    "instructions",
    "store",
    "stream",
];

/// The highest accepted token price, USD per million tokens: far above any model's, low
/// enough that a cost counter never overflows to infinity.
pub const MAX_PRICE_PER_MTOK: f64 = 1_000_000.0;

/// How a route's requests are served by one release.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSpec {
    /// `label`, e.g. "v3".
    pub label: Option<String>,
    /// `upstream`: the name of an upstream.
    pub upstream: String,
    /// `model`: the real, pinned model name.
    pub model: String,
    /// `system_prompt`, or the contents of `system_prompt_file` (trailing whitespace removed).
    pub system_prompt: Option<String>,
    /// `params`: request parameters to override, as JSON.
    pub params: Map<String, Value>,
    /// `prices`, USD per million tokens.
    pub prices: Option<Prices>,
    /// `index`: the vector index built with this (embedding) release's model; set on the
    /// releases of an embedding route, named in every response's `x-understudy-index`.
    pub index: Option<String>,
}

/// Token prices of a release, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// `prompt_per_mtok`.
    pub prompt_per_mtok: f64,
    /// `completion_per_mtok`.
    pub completion_per_mtok: f64,
}

/// One problem with a release definition: the key inside the release (`model`,
/// `prices.prompt_per_mtok`, `params.store`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseProblem {
    /// Key path inside the release table or JSON body.
    pub key: Vec<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl ReleaseProblem {
    pub(super) fn new(key: &[&str], message: impl Into<String>) -> Self {
        ReleaseProblem {
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ReleaseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key.join("."), self.message)
    }
}

impl ReleaseSpec {
    /// Every problem with this definition, given the names of the configured upstreams.
    /// Empty when the release is valid.
    pub fn problems<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a str>,
    ) -> Vec<ReleaseProblem> {
        let mut out = Vec::new();
        let known: Vec<&str> = upstreams.into_iter().collect();
        if !known.contains(&self.upstream.as_str()) {
            out.push(ReleaseProblem::new(
                &["upstream"],
                format!(
                    "unknown upstream {:?} (configured: {})",
                    self.upstream,
                    known.join(", ")
                ),
            ));
        }
        out.extend(model_problem(&self.model));
        for name in self.params.keys() {
            if RESERVED_PARAMS.contains(&name.as_str()) {
                out.push(ReleaseProblem::new(
                    &["params", name],
                    "is set by the proxy and cannot be a release parameter",
                ));
            }
        }
        if let Some(prices) = self.prices {
            out.extend(prices.problems());
        }
        out.extend(super::index::index_problems(self));
        out
    }
}

/// Why `model` cannot be a release's model, if it cannot: a release must always mean the same
/// model, so a moving alias (anything with "latest" in it, in any case) is refused.
pub fn model_problem(model: &str) -> Option<ReleaseProblem> {
    if model.trim().is_empty() {
        return Some(ReleaseProblem::new(&["model"], "must not be empty"));
    }
    model.to_ascii_lowercase().contains("latest").then(|| {
        ReleaseProblem::new(
            &["model"],
            format!(
                "{model:?} is not pinned: use a dated version (e.g. gpt-4o-2024-08-06) \
                 so that a release always means the same model"
            ),
        )
    })
}

impl Prices {
    /// Every price that is not a finite number in [0, [`MAX_PRICE_PER_MTOK`]].
    pub fn problems(&self) -> Vec<ReleaseProblem> {
        let mut out = Vec::new();
        for (name, price) in [
            ("prompt_per_mtok", self.prompt_per_mtok),
            ("completion_per_mtok", self.completion_per_mtok),
        ] {
            let message = if !(price.is_finite() && price >= 0.0) {
                format!("must be a number >= 0, got {price}")
            } else if price > MAX_PRICE_PER_MTOK {
                format!("must be at most {MAX_PRICE_PER_MTOK} USD per million tokens, got {price}")
            } else {
                continue;
            };
            out.push(ReleaseProblem::new(&["prices", name], message));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str, params: Value, prices: Option<(f64, f64)>) -> ReleaseSpec {
        ReleaseSpec {
            label: None,
            upstream: "openai".into(),
            model: model.into(),
            system_prompt: None,
            params: params.as_object().cloned().unwrap_or_default(),
            prices: prices.map(|(p, c)| Prices {
                prompt_per_mtok: p,
                completion_per_mtok: c,
            }),
            index: None,
        }
    }

    fn check(s: &ReleaseSpec, expected: &[&str]) {
        let got: Vec<String> = s
            .problems(["openai", "azure"])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, expected, "{s:?}");
    }

    #[test]
    fn one_validation() {
        check(
            &spec(
                "gpt-4o-2024-08-06",
                serde_json::json!({"temperature": 0.2}),
                Some((2.5, 10.0)),
            ),
            &[],
        );
        check(
            &spec("gpt-4o-LATEST", serde_json::json!({}), None),
            &["model: \"gpt-4o-LATEST\" is not pinned: use a dated version (e.g. gpt-4o-2024-08-06) so that a release always means the same model"],
        );
        check(
            &spec(" ", serde_json::json!({}), None),
            &["model: must not be empty"],
        );
        for reserved in RESERVED_PARAMS {
            check(
                &spec("m-1", serde_json::json!({ reserved: 1 }), None),
                &[&format!(
                    "params.{reserved}: is set by the proxy and cannot be a release parameter"
                )],
            );
        }
        check(
            &spec("m-1", serde_json::json!({}), Some((-5.0, f64::NAN))),
            &[
                "prices.prompt_per_mtok: must be a number >= 0, got -5",
                "prices.completion_per_mtok: must be a number >= 0, got NaN",
            ],
        );
        check(
            &spec("m-1", serde_json::json!({}), Some((2e6, 0.0))),
            &["prices.prompt_per_mtok: must be at most 1000000 USD per million tokens, got 2000000"],
        );
        let mut s = spec("m-1", serde_json::json!({}), None);
        s.upstream = "nope".into();
        check(
            &s,
            &["upstream: unknown upstream \"nope\" (configured: openai, azure)"],
        );
    }
}
