//! Embedding routes' mirrors: the two releases' vectors for the same inputs go into the route's
//! rolling windows (`score::Windows`), and the candidate's score is how well its arrangement of
//! the window's inputs agrees with stable's (`score/neighbourhood.rs`); stable's second answer,
//! when asked for, gives the noise floor the same way.

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
