//! Embedding routes' mirrors: the two releases' vectors for the same inputs go into the route's
//! rolling windows (`score::Windows`), and the candidate's score is how well its arrangement of
//! the window's inputs agrees with stable's (`score/neighbourhood.rs`); stable's second answer,
//! when asked for, gives the noise floor the same way.

use std::sync::Arc;

use super::{MirrorTask, Sample};
use crate::domain::Role;
use crate::observe::Observation;
use crate::score::{Agreement, Score};
use crate::state::RoutePolicy;

/// The scores of one embedding mirror: the candidate's (None while the window fills) and the
/// noise floor's (None when stable was not asked twice, or the window is filling).
pub struct EmbeddingScores {
    pub candidate: Option<Score>,
    pub noise: Option<Score>,
}

/// Adds one mirrored request's vectors to the route's windows and scores them. None when
/// stable's own answer has no vectors: there is nothing to compare against.
pub fn score(
    policy: &RoutePolicy,
    versions: (u32, u32),
    reference: &Observation,
    candidate: &Observation,
    second: Option<&Observation>,
) -> Option<EmbeddingScores> {
    let reference_vectors = &reference.embeddings.vectors;
    // An answer cut at the observer's bound cannot be read: not comparable, never a failure.
    if reference.failure.is_some() || reference_vectors.is_empty() || candidate.truncated {
        return None;
    }
    let whole = |o: &Observation| {
        o.failure.is_none() && o.embeddings.vectors.len() == reference_vectors.len()
    };
    // A candidate that failed, or answered another number of vectors than inputs, fails hard.
    let candidate_failed = !whole(candidate);
    let second = second.filter(|s| whole(s) && !s.truncated);
    let mut windows = policy
        .neighbourhood
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let windows = windows.of(versions.0, versions.1);
    if !candidate_failed {
        windows
            .candidate_pairs
            .push(reference_vectors, &candidate.embeddings.vectors);
    }
    let noise = second.and_then(|s| {
        windows.noise.push(reference_vectors, &s.embeddings.vectors);
        windows.noise.agreement()
    });
    let candidate = if candidate_failed {
        let none = Agreement {
            spearman: 0.0,
            knn: 0.0,
        };
        Some(Score::of_agreement(none, true))
    } else {
        windows
            .candidate_pairs
            .agreement()
            .map(|a| Score::of_agreement(a, false))
    };
    Some(EmbeddingScores {
        candidate,
        noise: noise.map(|a| Score::of_agreement(a, false)),
    })
}

impl MirrorTask {
    /// An embedding route's mirror: scored by neighbourhood agreement over the route's window
    /// (on the blocking pool: a few milliseconds of arithmetic), then sent like any sample.
    pub(super) async fn embeddings(
        &self,
        reference: Observation,
        candidate: Observation,
        second: Option<Observation>,
    ) {
        let req = &self.req;
        let candidate_release = match req.served_role {
            Role::Stable => Arc::clone(&req.mirror),
            Role::Candidate => Arc::clone(&req.served),
        };
        let versions = (req.route.stable.version, candidate_release.version);
        let route = Arc::clone(&req.route);
        let scored = tokio::task::spawn_blocking(move || {
            let scores = score(
                &route.policy,
                versions,
                &reference,
                &candidate,
                second.as_ref(),
            );
            (reference, candidate, scores)
        })
        .await;
        let Ok((reference, candidate, Some(scores))) = scored else {
            self.outcome(&req.mirror, "unpaired");
            return;
        };
        let Some(score) = scores.candidate else {
            // The window is still filling: the inputs are kept, nothing is judged yet.
            self.outcome(&req.mirror, "collected");
            return;
        };
        let errored = score.hard_failure.is_some();
        self.outcome(&req.mirror, if errored { "error" } else { "scored" });
        for (name, value) in score.by_scorer() {
            self.metrics
                .shadow_score
                .with_label_values(&[&req.route.name, name])
                .observe(value);
        }
        let sample = Sample {
            route: req.route.name.clone(),
            candidate_version: candidate_release.version,
            stable_version: req.route.stable.version,
            shape: req.shape,
            judge_reason: None,
            score,
            candidate_error: errored,
            noise: scores.noise,
            request: if req.route.policy.scoring.redact_requests {
                None
            } else {
                Some(req.body.clone())
            },
            stable_output: reference,
            candidate_output: candidate,
        };
        if self.samples.try_send(sample).is_err() {
            tracing::warn!(route = %req.route.name, "controller busy: scored sample dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Failure;

    fn policy() -> RoutePolicy {
        let text = "[upstreams.u]\nbase_url = \"http://127.0.0.1:1\"\n[routes.e]\nmodel = \"e\"\n\
                    [routes.e.stable]\nupstream = \"u\"\nmodel = \"m-1\"\nindex = \"i\"\n";
        let config = crate::config::Config::parse(text, std::path::Path::new(".")).unwrap();
        RoutePolicy::new(&config.routes["e"], &std::collections::HashMap::new())
    }

    /// An answer of one vector per input `i` in `inputs`: a point on the circle at angle i.
    fn answer(inputs: &[usize], turn: f32) -> Observation {
        let vectors = inputs
            .iter()
            .map(|i| {
                let a = *i as f32 * 0.7 + turn;
                vec![a.cos(), a.sin()]
            })
            .collect();
        let mut answer = Observation {
            status: 200,
            ..Observation::default()
        };
        answer.embeddings.vectors = vectors;
        answer
    }

    #[test]
    fn the_window_fills_then_scores_and_failures_score_zero() {
        let p = policy();
        let mut scored = None;
        for i in 0..4 {
            let inputs = [2 * i, 2 * i + 1];
            // The candidate: the same arrangement turned by 1 radian (another space).
            let s = score(
                &p,
                (1, 2),
                &answer(&inputs, 0.0),
                &answer(&inputs, 1.0),
                None,
            )
            .unwrap();
            assert_eq!(s.candidate.is_some(), i == 3, "8 inputs are needed, at {i}");
            scored = s.candidate;
        }
        let scored = scored.unwrap();
        assert!(scored.combined > 0.99, "{scored:?}");
        // Stable asked twice: the noise floor.
        let s = score(
            &p,
            (1, 2),
            &answer(&[9], 0.0),
            &answer(&[9], 1.0),
            Some(&answer(&[9], 0.0)),
        )
        .unwrap();
        assert!(s.noise.is_none(), "the noise window starts empty");
        // A failed candidate, or one vector short, is a hard failure at once.
        let failed = Observation::failed(Failure::Status(500));
        let s = score(&p, (1, 2), &answer(&[1], 0.0), &failed, None).unwrap();
        assert_eq!(s.candidate.unwrap().combined, 0.0);
        let s = score(&p, (1, 2), &answer(&[1, 2], 0.0), &answer(&[1], 0.0), None).unwrap();
        assert!(s.candidate.unwrap().hard_failure.is_some());
        // Nothing to compare: stable failed, or an answer was cut at the bound.
        assert!(score(&p, (1, 2), &failed, &answer(&[1], 0.0), None).is_none());
        let mut cut = answer(&[1], 0.0);
        cut.truncated = true;
        assert!(score(&p, (1, 2), &answer(&[1], 0.0), &cut, None).is_none());
        // A new candidate starts a new window.
        let s = score(&p, (1, 3), &answer(&[1], 0.0), &answer(&[1], 0.0), None).unwrap();
        assert!(s.candidate.is_none());
    }
}
