//! Embedding releases and the vector index built with each: which space a release embeds into
//! (its model and `dimensions`), and the one guard that keeps two spaces from sharing an index
//! name, shared by the configuration checker and the admin API's publish.
//!
//! Vectors made by two embedding models (or by one model at two `dimensions`) cannot be
//! compared: a query embedded by one searched against documents embedded by the other returns
//! nonsense, silently. So an index name stands for exactly one space, and a release that embeds
//! into another space must name another index.

use serde_json::Value;

use super::release::{ReleaseProblem, ReleaseSpec};

/// Longest accepted index name (it is a metric label and a response header value).
pub const MAX_INDEX_NAME: usize = 128;

/// The space a release embeds into: what decides whether two releases' vectors compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Space<'a> {
    /// The pinned embedding model.
    pub model: &'a str,
    /// `params.dimensions`, when the release sets it.
    pub dimensions: Option<&'a Value>,
}

impl ReleaseSpec {
    /// The space this release's vectors are in.
    pub fn space(&self) -> Space<'_> {
        Space {
            model: &self.model,
            dimensions: self.params.get("dimensions"),
        }
    }
}

impl std::fmt::Display for Space<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dimensions {
            Some(d) => write!(f, "{} at {d} dimensions", self.model),
            None => write!(f, "{} at its default dimensions", self.model),
        }
    }
}

/// Why `name` cannot be an index name, if it cannot: 1 to 128 characters out of letters,
/// digits, `-`, `_`, `.` and `:`, so that it is a valid header value and a tidy metric label.
pub fn index_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_INDEX_NAME {
        return Some(format!(
            "must be 1 to {MAX_INDEX_NAME} characters, got {}",
            name.len()
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!name.chars().all(ok))
        .then(|| format!("{name:?} may only hold letters, digits, '-', '_', '.' and ':'"))
}

/// The problems of an embedding release's own fields: its index name, and `params.dimensions`
/// (a positive integer when set).
pub fn index_problems(spec: &ReleaseSpec) -> Vec<ReleaseProblem> {
    let mut out = Vec::new();
    let Some(index) = &spec.index else {
        return out;
    };
    if let Some(problem) = index_name_problem(index) {
        out.push(ReleaseProblem::new(&["index"], problem));
    }
    if let Some(d) = spec.params.get("dimensions") {
        if d.as_u64().is_none_or(|n| n < 1) {
            out.push(ReleaseProblem::new(
                &["params", "dimensions"],
                format!("must be a positive integer, got {d}"),
            ));
        }
    }
    out
}

/// The guard: every problem with `spec` given the route's other releases (`(name, release)`,
/// the stable one first, then any other the route has had). A release that embeds into another
/// space than one of them must name another index, one naming the same index must embed into
/// the same space, and on a route whose releases name indexes every release names one.
pub fn space_problems<'a>(
    spec: &ReleaseSpec,
    others: impl IntoIterator<Item = (&'a str, &'a ReleaseSpec)>,
) -> Vec<ReleaseProblem> {
    let mut out = Vec::new();
    for (name, other) in others {
        match (&spec.index, &other.index) {
            (None, Some(theirs)) => {
                out.push(ReleaseProblem::new(
                    &["index"],
                    format!(
                        "is required: {name} embeds into index {theirs:?}, so this route is an \
                         embedding route; name the vector index built with {}",
                        spec.space()
                    ),
                ));
                break;
            }
            (Some(_), None) => {
                out.push(ReleaseProblem::new(
                    &["index"],
                    format!(
                        "{name} names no index: on one route either every release names the \
                         vector index built with its model, or none does"
                    ),
                ));
                break;
            }
            (Some(ours), Some(theirs)) if ours == theirs && spec.space() != other.space() => {
                out.push(ReleaseProblem::new(
                    &["index"],
                    format!(
                        "index {ours:?} holds vectors of {} ({name}); this release embeds with \
                         {}: vectors of two spaces in one index make searches return nonsense. \
                         Build a new index with this model and name it here",
                        other.space(),
                        spec.space()
                    ),
                ));
                break;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str, dims: Option<u64>, index: Option<&str>) -> ReleaseSpec {
        let mut params = serde_json::Map::new();
        if let Some(d) = dims {
            params.insert("dimensions".into(), d.into());
        }
        ReleaseSpec {
            label: None,
            upstream: "openai".into(),
            model: model.into(),
            system_prompt: None,
            params,
            prices: None,
            index: index.map(str::to_owned),
        }
    }

    fn said(problems: &[ReleaseProblem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_new_model_needs_a_new_index() {
        let stable = spec("embed-small-1", None, Some("docs-small"));
        // New model, new index: fine. Same model, another index (a re-index): fine.
        for ok in [
            spec("embed-large-1", Some(1024), Some("docs-large")),
            spec("embed-small-1", None, Some("docs-small-v2")),
            spec("embed-small-1", None, Some("docs-small")),
        ] {
            assert!(space_problems(&ok, [("stable", &stable)]).is_empty());
        }
        let got = said(&space_problems(
            &spec("embed-large-1", None, Some("docs-small")),
            [("stable", &stable)],
        ));
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("index: index \"docs-small\" holds vectors of embed-small-1 at its default dimensions (stable); this release embeds with embed-large-1"), "{got:?}");
        // Same model at other dimensions is another space too.
        let got = said(&space_problems(
            &spec("embed-small-1", Some(256), Some("docs-small")),
            [("stable", &stable)],
        ));
        assert!(
            got[0].contains("embed-small-1 at 256 dimensions"),
            "{got:?}"
        );
        // An older release's index binds as well.
        let old = spec("embed-old-1", None, Some("docs-old"));
        assert_eq!(
            space_problems(
                &spec("embed-new-1", None, Some("docs-old")),
                [("stable", &stable), ("release #1", &old)]
            )
            .len(),
            1
        );
    }

    #[test]
    fn an_embedding_route_names_an_index_everywhere() {
        let stable = spec("embed-small-1", None, Some("docs-small"));
        let got = said(&space_problems(
            &spec("embed-large-1", None, None),
            [("stable", &stable)],
        ));
        assert!(got[0].starts_with("index: is required: stable embeds into index \"docs-small\""));
        let plain = spec("gpt-4o-2024-08-06", None, None);
        let got = said(&space_problems(
            &spec("embed-large-1", None, Some("x")),
            [("stable", &plain)],
        ));
        assert!(got[0].contains("stable names no index"), "{got:?}");
        assert!(space_problems(&plain, [("stable", &plain)]).is_empty());
    }

    #[test]
    fn names_and_dimensions() {
        assert!(index_name_problem("docs-3small-2026-11").is_none());
        assert!(index_name_problem("a:b.c_d").is_none());
        assert!(index_name_problem("").is_some());
        assert!(index_name_problem("has space").is_some());
        assert!(index_name_problem(&"x".repeat(129)).is_some());
        let mut s = spec("m-1", None, Some("i"));
        s.params
            .insert("dimensions".into(), serde_json::json!("big"));
        assert_eq!(
            said(&index_problems(&s)),
            ["params.dimensions: must be a positive integer, got \"big\""]
        );
    }
}
