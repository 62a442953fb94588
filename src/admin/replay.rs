//! `POST /admin/routes/{route}/replay`: one saved case sent to a release (default: the
//! candidate) and twice to stable through the server's upstreams, scored by the route's scorers
//! (`shadow::replay`), answered with both answers, the scores and the route's rollback settings.
//! `understudy replay` drives it case by case (concurrency, progress, budget, report) and feeds
//! the scores to the judge (`control::Judge`) for the verdict. Needs the admin token: it spends
//! the upstreams' tokens and shows their answers.
//!
//! Also the drill's restore body (`POST /admin/routes/{route}/restore`, see `control::drill`).

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::ApiError;
use crate::control::{Change, OutputView};
use crate::domain::{Body, Phase};
use crate::metrics::Metrics;
use crate::observe::ApiShape;
use crate::score::Score;
use crate::shadow::{replay, shape_path, Replayed};
use crate::state::{Release, Route};
use crate::upstream::UpstreamClient;

/// What a replay needs from the server: its upstream client and metrics.
pub struct Replayer {
    /// The admin runtime's own pool (the workers' pools are polled by their threads).
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub observe_max_bytes: usize,
}

/// One case to replay.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseBody {
    /// The API request body, as the client sent it (`model` may be the route's alias).
    pub request: Map<String, Value>,
    /// chat (default), completions, responses or messages.
    pub api: Option<String>,
    /// The release to test; default the candidate.
    pub release: Option<u32>,
}

impl CaseBody {
    pub fn parse(body: Value) -> Result<(CaseBody, ApiShape), ApiError> {
        let case: CaseBody =
            serde_json::from_value(body).map_err(|e| ApiError::Invalid(format!("replay: {e}")))?;
        let shape = match case.api.as_deref().unwrap_or("chat") {
            "chat" => ApiShape::ChatCompletions,
            "completions" => ApiShape::Completions,
            "responses" => ApiShape::Responses,
            "messages" => ApiShape::Messages,
            other => {
                return Err(ApiError::Invalid(format!(
                    "api must be chat, completions, responses or messages, not {other:?}"
                )))
            }
        };
        Ok((case, shape))
    }
}

impl Replayer {
    /// Runs the case against `release` of `route` and answers what it gave.
    pub async fn run(
        &self,
        route: Arc<Route>,
        release: Arc<Release>,
        shape: ApiShape,
        request: Map<String, Value>,
    ) -> Response<Body> {
        let body = Bytes::from(Value::Object(request).to_string());
        let stable = route.stable.version;
        let rollback = &route.policy.rollback;
        let settings = json!({
            "threshold": rollback.threshold,
            "window": rollback.window,
            "min_samples": rollback.min_samples,
            "max_error_rate": rollback.max_error_rate,
        });
        let name = route.name.clone();
        let version = release.version;
        let Replayed {
            reference,
            candidate,
            second,
            score,
            noise,
            judge_reason,
        } = replay(
            self.client.clone(),
            Arc::clone(&self.metrics),
            self.observe_max_bytes,
            route,
            release,
            shape,
            body,
        )
        .await;
        let tokens: u64 = [&reference, &candidate, &second]
            .iter()
            .map(|o| o.usage.prompt_tokens.unwrap_or(0) + o.usage.completion_tokens.unwrap_or(0))
            .sum();
        let answer = json!({
            "route": name,
            "api": shape.as_str(),
            "path": shape_path(shape),
            "release": version,
            "stable": stable,
            "candidate_error": candidate.failure.is_some(),
            "score": score.as_ref().map(score_view),
            "noise": noise.as_ref().map(score_view),
            "judge_reason": judge_reason,
            "reference": OutputView::from(&reference),
            "candidate": OutputView::from(&candidate),
            "rollback": settings,
            "tokens": tokens,
        });
        super::json_response(StatusCode::OK, &answer)
    }
}

/// A score as JSON: combined, every scorer, the ones the judge tracks, the hard failure.
fn score_view(s: &Score) -> Value {
    let map = |pairs: Vec<(&'static str, f64)>| -> Map<String, Value> {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect()
    };
    json!({
        "combined": s.combined,
        "scores": map(s.by_scorer()),
        "tracked": map(s.tracked()),
        "hard_failure": s.hard_failure.map(|h| h.as_str()),
        "failed_check": s.failed_check,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: u32,
    phase: String,
    share: f64,
}

/// The drill's restore: `{"version": N, "phase": "canary", "share": 0.25}`.
pub fn restore_change(body: Value) -> Result<Change, ApiError> {
    let b: RestoreBody =
        serde_json::from_value(body).map_err(|e| ApiError::Invalid(format!("restore: {e}")))?;
    let phase = b.phase.parse::<Phase>().map_err(|_| {
        ApiError::Invalid(format!(
            "phase must be shadow, canary or promoted, not {:?}",
            b.phase
        ))
    })?;
    Ok(Change::Restore {
        version: b.version,
        phase,
        share: b.share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_name_a_known_api() {
        let ok = CaseBody::parse(json!({"request": {"messages": []}}));
        assert!(matches!(ok, Ok((_, ApiShape::ChatCompletions))));
        let messages = CaseBody::parse(json!({"request": {}, "api": "messages", "release": 3}));
        assert!(matches!(
            messages,
            Ok((
                CaseBody {
                    release: Some(3),
                    ..
                },
                ApiShape::Messages
            ))
        ));
        for bad in [
            json!({"request": {}, "api": "grpc"}),
            json!({"request": "hi"}),
            json!({"request": {}, "extra": 1}),
        ] {
            assert!(CaseBody::parse(bad).is_err());
        }
        assert!(restore_change(json!({"version": 2, "phase": "canary", "share": 0.5})).is_ok());
        assert!(restore_change(json!({"version": 2, "phase": "bogus", "share": 0.5})).is_err());
    }
}
