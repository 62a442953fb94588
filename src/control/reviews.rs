//! Review samples: the worst-N pairs by score and a uniform reservoir of M, per route, kept in
//! memory by the controller and written to the store every few seconds. Pure data; the caller
//! passes the random source, so the reservoir is testable.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::observe::Observation;

/// A request/output pair kept for review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewSample {
    pub at_unix: u64,
    pub candidate_version: u32,
    /// Stable's version when the pair was made (absent in samples kept before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<u32>,
    /// The API the request spoke: chat, completions, responses or messages (absent likewise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    pub score: f64,
    pub scores: BTreeMap<String, f64>,
    pub hard_failure: Option<String>,
    /// The check the candidate failed where stable passed, when that was the hard failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_check: Option<String>,
    /// The LLM judge's reason for its verdict, when it judged the pair and gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_reason: Option<String>,
    /// The request body as JSON (null when redacted).
    pub request: Option<Value>,
    pub stable: OutputView,
    pub candidate: OutputView,
}

/// One side's answer, as shown for review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputView {
    pub status: u16,
    pub text: String,
    pub tool_calls: Vec<(String, String)>,
    pub finish_reason: Option<String>,
    pub latency_ms: f64,
    pub failure: Option<String>,
}

impl From<&Observation> for OutputView {
    fn from(o: &Observation) -> Self {
        OutputView {
            status: o.status,
            text: o.text.clone(),
            tool_calls: o
                .tool_calls
                .iter()
                .map(|t| (t.name.clone(), t.arguments.clone()))
                .collect(),
            finish_reason: o.finish_reason.as_ref().map(|f| f.name().to_owned()),
            latency_ms: o.latency.as_secs_f64() * 1e3,
            failure: o.failure.as_ref().map(ToString::to_string),
        }
    }
}

/// Worst-N and a uniform reservoir of M review samples.
#[derive(Debug, Default)]
pub struct Reviews {
    /// Ascending by score, at most `keep_worst`.
    pub worst: Vec<ReviewSample>,
    /// A uniform sample of every sample seen, at most `keep_random`.
    pub reservoir: Vec<ReviewSample>,
    /// Samples offered to the reservoir, across restarts.
    seen: u64,
    /// Changed since last written to the store.
    pub dirty: bool,
}

impl Reviews {
    /// The lists as the store kept them. Without a stored count (a store written before it was
    /// kept), the reservoir counts as having seen only what it holds.
    pub fn restore(
        worst: Vec<ReviewSample>,
        reservoir: Vec<ReviewSample>,
        seen: Option<u64>,
    ) -> Self {
        let held = reservoir.len() as u64;
        Reviews {
            worst,
            reservoir,
            seen: seen.unwrap_or(held).max(held),
            dirty: false,
        }
    }

    /// How many samples the reservoir has been offered.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Offers `s` to both lists (Algorithm R for the reservoir).
    pub fn add(
        &mut self,
        s: ReviewSample,
        keep_worst: usize,
        keep_random: usize,
        rng: &mut impl Rng,
    ) {
        self.seen += 1;
        self.dirty = true;
        if keep_random > 0 {
            if self.reservoir.len() < keep_random {
                self.reservoir.push(s.clone());
            } else {
                let j = rng.random_range(0..self.seen);
                if let Some(slot) = self.reservoir.get_mut(j as usize) {
                    *slot = s.clone();
                }
            }
        }
        if keep_worst > 0 {
            let pos = self.worst.partition_point(|w| w.score <= s.score);
            if pos < keep_worst {
                self.worst.insert(pos, s);
                self.worst.truncate(keep_worst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn sample(n: u32) -> ReviewSample {
        let out = OutputView {
            status: 200,
            text: String::new(),
            tool_calls: Vec::new(),
            finish_reason: None,
            latency_ms: 0.0,
            failure: None,
        };
        ReviewSample {
            at_unix: 0,
            candidate_version: n,
            stable_version: None,
            api: None,
            score: f64::from(n % 100) / 100.0,
            scores: BTreeMap::new(),
            hard_failure: None,
            failed_check: None,
            judge_reason: None,
            request: None,
            stable: out.clone(),
            candidate: out,
        }
    }

    #[test]
    fn worst_keeps_the_lowest_scores_in_order() {
        let mut r = Reviews::default();
        let mut rng = StdRng::seed_from_u64(1);
        for n in [50, 10, 90, 30, 20, 70] {
            r.add(sample(n), 3, 0, &mut rng);
        }
        let scores: Vec<f64> = r.worst.iter().map(|s| s.score).collect();
        assert_eq!(scores, [0.1, 0.2, 0.3]);
        assert!(r.reservoir.is_empty());
        assert!(r.dirty);
    }

    /// Share of the reservoir that holds samples numbered below `old` (the ones offered before
    /// a restart), averaged over many seeds.
    fn old_share_after_restart(seen_kept: bool) -> f64 {
        let (keep, before, after) = (10, 1000_u32, 1000_u32);
        let trials = 400;
        let mut old = 0;
        for seed in 0..trials {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut r = Reviews::default();
            for n in 0..before {
                r.add(sample(n), 0, keep, &mut rng);
            }
            let seen = seen_kept.then(|| r.seen());
            let mut r = Reviews::restore(Vec::new(), r.reservoir, seen);
            for n in before..before + after {
                r.add(sample(n), 0, keep, &mut rng);
            }
            old += r
                .reservoir
                .iter()
                .filter(|s| s.candidate_version < before)
                .count();
        }
        old as f64 / (trials as f64 * keep as f64)
    }

    #[test]
    fn reservoir_stays_uniform_across_a_restart() {
        // Half the samples came before the restart: a uniform reservoir holds ~half of them.
        let share = old_share_after_restart(true);
        assert!((0.45..0.55).contains(&share), "old share {share}");
        // Without the count the old samples are swept out (the bias this guards against).
        let biased = old_share_after_restart(false);
        assert!(biased < 0.05, "old share without the count {biased}");
    }

    #[test]
    fn restore_never_counts_fewer_than_it_holds() {
        let r = Reviews::restore(Vec::new(), vec![sample(1), sample(2)], Some(1));
        assert_eq!(r.seen(), 2);
        assert!(!r.dirty);
    }
}
