//! One replayed case (`understudy replay`, through the admin API): the saved request is sent to
//! the release under test and twice to stable, through the route's upstreams, and scored exactly
//! as a mirror's pair is, with the route's local scorers, checks and remote scorers: the
//! candidate against stable's first answer, and stable's second answer against its first (the
//! noise floor). It runs as a [`MirrorTask`] of its own, so the request is rebuilt and read the
//! same way; it is not admitted through the route's mirror budget (the replay's own concurrency
//! bounds it) and sends no sample to the controller, so live judging is untouched.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::MirrorTask;
use super::{MirrorRequest, Sample};
use crate::domain::Role;
use crate::metrics::Metrics;
use crate::observe::{ApiShape, Observation};
use crate::score::{regression, score, Score};
use crate::state::{Release, Route};
use crate::upstream::UpstreamClient;

/// What one case gave.
pub struct Replayed {
    /// Stable's answer: the reference.
    pub reference: Observation,
    /// The release under test's answer.
    pub candidate: Observation,
    /// Stable's second answer to the same request.
    pub second: Observation,
    /// The candidate's score; None when stable's answer failed (nothing to compare with).
    pub score: Option<Score>,
    /// Stable's second answer scored against its first; None when either failed.
    pub noise: Option<Score>,
    /// The LLM judge's reason for its verdict on the candidate.
    pub judge_reason: Option<String>,
}

/// Sends `body` (an API request of `shape`) to `release` and twice to the route's stable, and
/// scores the answers.
pub async fn replay(
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    observe_max_bytes: usize,
    route: Arc<Route>,
    release: Arc<Release>,
    shape: ApiShape,
    body: Bytes,
) -> Replayed {
    // No sample is sent (the receiver is gone at once) and no mirror slot is held: a replay is
    // outside the route's mirror budget.
    let (samples, _) = mpsc::channel::<Sample>(1);
    let stable = Arc::clone(&route.stable);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let uri = http::Uri::from_static(shape_path(shape));
    let task = MirrorTask {
        client,
        metrics,
        samples,
        observe_max_bytes,
        req: MirrorRequest {
            route: Arc::clone(&route),
            shape,
            served: Arc::clone(&stable),
            served_role: Role::Stable,
            mirror: Arc::clone(&release),
            uri,
            headers,
            body,
            // A replay is not a client request: no span to hang its calls on.
            trace: None,
        },
        _permit: None,
    };
    let (candidate, reference, second) = tokio::join!(
        task.call(&release, Role::Candidate),
        task.call(&stable, Role::Stable),
        task.call(&stable, Role::Stable)
    );
    let weights = route.policy.scoring.weights;
    let checked = |subject: &Observation| {
        let s = score(&reference, subject, &weights)?;
        let failed = regression(&route.policy.checks, &reference, subject);
        Some((s, failed.map(|c| c.name.clone())))
    };
    let local = checked(&candidate);
    let local_noise = checked(&second);
    let (score, noise, judge_reason) = match local {
        None => (None, None, None),
        Some((candidate_score, failed_check)) => {
            let remote = task
                .remote(&reference, &candidate, Some(&second), &candidate_score)
                .await;
            let score = candidate_score.with_remote(
                remote.semantic.0,
                remote.judge.0,
                failed_check.as_deref(),
                &weights,
            );
            let noise = local_noise.map(|(n, failed)| {
                n.with_remote(
                    remote.semantic.1,
                    remote.judge.1,
                    failed.as_deref(),
                    &weights,
                )
            });
            (Some(score), noise, remote.judge_reason)
        }
    };
    Replayed {
        reference,
        candidate,
        second,
        score,
        noise,
        judge_reason,
    }
}

/// The API path of `shape` on the upstream.
pub fn shape_path(shape: ApiShape) -> &'static str {
    match shape {
        ApiShape::ChatCompletions => "/v1/chat/completions",
        ApiShape::Completions => "/v1/completions",
        ApiShape::Responses => "/v1/responses",
        ApiShape::Messages => "/v1/messages",
        ApiShape::Embeddings => "/v1/embeddings",
    }
}
