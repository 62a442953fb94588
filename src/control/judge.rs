//! The judge: a route's rolling window of candidate scores and noise-floor scores, the quality
//! they give, and the rollback decision. Pure data and arithmetic; the controller owns one per
//! route and feeds it.
//!
//! Quality is the candidate's mean score divided by the noise floor (stable's mean score against
//! itself), so a candidate exactly as random as stable reads ~1. The decision is made on a
//! one-sided 95 % upper confidence bound of that ratio (in the spirit of Kayenta's judge, not a
//! bare mean): a rollback needs evidence that quality is below the threshold, so a benign
//! candidate's noise does not trip it.

use std::collections::{BTreeMap, VecDeque};

use crate::config::RollbackConfig;
use crate::domain::Trigger;
use crate::metrics::JudgeFigures;

/// Fewest noise-floor samples before the floor is trusted; until then quality is not judged.
pub const MIN_NOISE_SAMPLES: usize = 5;
/// z for a one-sided 95 % bound.
const Z_95: f64 = 1.645;

/// Rolling windows for one route's current candidate.
#[derive(Debug, Clone, Default)]
pub struct Judge {
    /// (combined score, candidate errored), newest last, at most `window`.
    candidate: VecDeque<(f64, bool)>,
    /// Stable-vs-stable scores, newest last, at most `window`. Kept across candidates: the
    /// noise floor is a property of stable.
    noise: VecDeque<f64>,
    /// Each tracked scorer's own windows: (candidate values, noise values), kept the same way.
    scorers: BTreeMap<&'static str, (VecDeque<f64>, VecDeque<f64>)>,
}

/// A scorer's own quality and what it rests on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScorerQuality {
    pub scorer: &'static str,
    /// Candidate mean over the scorer's noise floor, in [0, 1].
    pub quality: f64,
    pub noise_floor: f64,
    /// Candidate samples the scorer gave a value for.
    pub samples: usize,
    /// For the judge: how many of those the candidate lost.
    pub lost: usize,
}

/// Mean and standard error of the mean.
fn mean_se(xs: impl ExactSizeIterator<Item = f64> + Clone) -> (f64, f64) {
    let n = xs.len() as f64;
    if n == 0.0 {
        return (0.0, 0.0);
    }
    let mean = xs.clone().sum::<f64>() / n;
    let var = if n > 1.0 {
        xs.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, (var / n).sqrt())
}

impl Judge {
    /// The figures the gauges show.
    pub fn figures(&self) -> JudgeFigures {
        JudgeFigures {
            scorers: self
                .scorer_qualities()
                .iter()
                .map(|q| (q.scorer, q.quality))
                .collect(),
            quality: self.quality(),
            noise_floor: self.noise_floor(),
            samples: self.samples(),
        }
    }

    /// Why the judge decided `trigger`, in words, for the event log and the logs.
    pub fn explain(&self, trigger: Trigger, cfg: &RollbackConfig) -> String {
        match trigger {
            Trigger::Errors => format!(
                "candidate error rate {:.3} above {} over {} samples",
                self.error_rate(),
                cfg.max_error_rate,
                self.samples()
            ),
            _ => {
                let mut reason = format!(
                    "quality {:.3} below {} over {} samples (noise floor {:.3})",
                    self.quality().unwrap_or(0.0),
                    cfg.threshold,
                    self.samples(),
                    self.noise_floor().unwrap_or(0.0)
                );
                // The scorers that drove it: each below the threshold on its own, worst first.
                let mut low: Vec<ScorerQuality> = self
                    .scorer_qualities()
                    .into_iter()
                    .filter(|q| q.quality < cfg.threshold)
                    .collect();
                low.sort_by(|a, b| a.quality.total_cmp(&b.quality));
                for q in low {
                    reason.push_str("; ");
                    reason.push_str(&q.explain());
                }
                reason
            }
        }
    }

    /// A candidate sample: its combined score, whether it failed, and the tracked scorers'
    /// values.
    pub fn record(
        &mut self,
        combined: f64,
        errored: bool,
        scorers: &[(&'static str, f64)],
        window: usize,
    ) {
        push_bounded(&mut self.candidate, (combined, errored), window);
        for (name, value) in scorers {
            push_bounded(&mut self.scorers.entry(name).or_default().0, *value, window);
        }
    }

    /// A stable-vs-stable sample, the same way.
    pub fn record_noise(&mut self, combined: f64, scorers: &[(&'static str, f64)], window: usize) {
        push_bounded(&mut self.noise, combined, window);
        for (name, value) in scorers {
            push_bounded(&mut self.scorers.entry(name).or_default().1, *value, window);
        }
    }

    /// Forget the candidate's samples (a new candidate, or after a rollback).
    pub fn reset_candidate(&mut self) {
        self.candidate.clear();
        for (candidate, _) in self.scorers.values_mut() {
            candidate.clear();
        }
    }

    /// Forget the noise floor too (stable changed).
    pub fn reset_all(&mut self) {
        self.candidate.clear();
        self.noise.clear();
        self.scorers.clear();
    }

    /// Stable-vs-stable samples held: the warm-up counts these.
    pub fn noise_samples(&self) -> usize {
        self.noise.len()
    }

    /// Each tracked scorer's own quality, for those with candidate samples and a trusted floor.
    pub fn scorer_qualities(&self) -> Vec<ScorerQuality> {
        self.scorers
            .iter()
            .filter_map(|(scorer, (candidate, noise))| {
                if candidate.is_empty() || noise.len() < MIN_NOISE_SAMPLES {
                    return None;
                }
                let floor = mean_se(noise.iter().copied()).0;
                let mean = mean_se(candidate.iter().copied()).0;
                let quality = if floor > 0.0 {
                    (mean / floor).clamp(0.0, 1.0)
                } else {
                    // Stable never scores on this scorer: the candidate cannot do worse.
                    1.0
                };
                Some(ScorerQuality {
                    scorer,
                    quality,
                    noise_floor: floor,
                    samples: candidate.len(),
                    lost: candidate.iter().filter(|v| **v == 0.0).count(),
                })
            })
            .collect()
    }

    pub fn samples(&self) -> usize {
        self.candidate.len()
    }

    /// Stable's mean score against itself, once enough samples exist.
    pub fn noise_floor(&self) -> Option<f64> {
        (self.noise.len() >= MIN_NOISE_SAMPLES)
            .then(|| mean_se(self.noise.iter().copied()).0)
            .filter(|m| *m > 0.0)
    }

    /// Candidate mean over the noise floor, in [0, 1].
    pub fn quality(&self) -> Option<f64> {
        let floor = self.noise_floor()?;
        if self.candidate.is_empty() {
            return None;
        }
        let (mean, _) = mean_se(self.candidate.iter().map(|c| c.0));
        Some((mean / floor).clamp(0.0, 1.0))
    }

    pub fn error_rate(&self) -> f64 {
        if self.candidate.is_empty() {
            return 0.0;
        }
        self.candidate.iter().filter(|c| c.1).count() as f64 / self.candidate.len() as f64
    }

    /// The one-sided 95 % *lower* bound of quality: the candidate mean's lower bound over the
    /// noise floor's upper bound, clamped to [0, 1]. The evidence that the candidate is good
    /// (an automatic rollout advances on it), where [`Judge::decide`] looks for evidence that
    /// it is bad. None before the floor is trusted or without candidate samples.
    pub fn quality_lower(&self) -> Option<f64> {
        if self.noise.len() < MIN_NOISE_SAMPLES || self.candidate.is_empty() {
            return None;
        }
        let (c_mean, c_se) = mean_se(self.candidate.iter().map(|c| c.0));
        let (n_mean, n_se) = mean_se(self.noise.iter().copied());
        let floor_upper = n_mean + Z_95 * n_se;
        if floor_upper <= 0.0 {
            // Stable never scores against itself: the candidate cannot do worse.
            return Some(1.0);
        }
        Some(((c_mean - Z_95 * c_se) / floor_upper).clamp(0.0, 1.0))
    }

    /// The one-sided 95 % upper bound of the candidate's error share (0 without samples).
    pub fn error_upper(&self) -> f64 {
        let n = self.candidate.len() as f64;
        if n == 0.0 {
            return 0.0;
        }
        let p = self.error_rate();
        (p + Z_95 * (p * (1.0 - p) / n).sqrt()).min(1.0)
    }

    /// Whether the evidence says to roll back. Nothing is decided before `min_samples`.
    pub fn decide(&self, cfg: &RollbackConfig) -> Option<Trigger> {
        let n = self.candidate.len();
        if n < cfg.min_samples {
            return None;
        }
        // Errors: the share of failed candidate answers, with the same one-sided caution.
        let p = self.error_rate();
        let p_lower = p - Z_95 * (p * (1.0 - p) / n as f64).sqrt();
        if p > cfg.max_error_rate && p_lower > cfg.max_error_rate * 0.5 {
            return Some(Trigger::Errors);
        }
        // Quality: upper bound of candidate mean over lower bound of the floor.
        if self.noise.len() < MIN_NOISE_SAMPLES {
            return None;
        }
        let (c_mean, c_se) = mean_se(self.candidate.iter().map(|c| c.0));
        let (n_mean, n_se) = mean_se(self.noise.iter().copied());
        let floor_lower = (n_mean - Z_95 * n_se).max(1e-6);
        let quality_upper = (c_mean + Z_95 * c_se) / floor_lower;
        (quality_upper < cfg.threshold).then_some(Trigger::Quality)
    }
}

impl ScorerQuality {
    /// The scorer's part of a rollback reason.
    pub fn explain(&self) -> String {
        if self.scorer == "judge" {
            format!(
                "judge: candidate lost {} of {}, noise floor {:.2}",
                self.lost, self.samples, self.noise_floor
            )
        } else {
            format!(
                "{}: quality {:.2} over {} samples, noise floor {:.2}",
                self.scorer, self.quality, self.samples, self.noise_floor
            )
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, x: T, cap: usize) {
    if q.len() >= cap.max(1) {
        q.pop_front();
    }
    q.push_back(x);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn cfg() -> RollbackConfig {
        RollbackConfig {
            threshold: 0.8,
            window: 200,
            min_samples: 30,
            max_error_rate: 0.05,
            auto: true,
        }
    }

    #[test]
    fn explains_with_the_figures_it_judged_on() {
        let mut j = Judge::default();
        for i in 0..10 {
            j.record_noise(0.8, &[("judge", 1.0), ("lexical", 0.8)], 200);
            let judge = if i < 7 { 0.0 } else { 1.0 };
            j.record(0.4, false, &[("judge", judge), ("lexical", 0.76)], 200);
        }
        j.record(0.0, true, &[], 200);
        assert_eq!(
            j.explain(Trigger::Quality, &cfg()),
            format!(
                "quality {:.3} below 0.8 over 11 samples (noise floor 0.800); \
                 judge: candidate lost 7 of 10, noise floor 1.00",
                j.quality().unwrap()
            )
        );
        assert_eq!(
            j.explain(Trigger::Errors, &cfg()),
            "candidate error rate 0.091 above 0.05 over 11 samples"
        );
    }

    /// Feeds `n` candidate scores drawn around `mean` and noise scores around `floor`.
    fn run(
        mean: f64,
        floor: f64,
        err_rate: f64,
        n: usize,
        seed: u64,
    ) -> (Judge, Vec<Option<Trigger>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut j = Judge::default();
        let c = cfg();
        let mut decisions = Vec::new();
        for i in 0..n {
            let jitter = |rng: &mut rand::rngs::StdRng| rng.random_range(-0.1..0.1);
            if i.is_multiple_of(5) {
                j.record_noise((floor + jitter(&mut rng)).clamp(0.0, 1.0), &[], c.window);
            }
            let errored = rng.random::<f64>() < err_rate;
            let s = if errored {
                0.0
            } else {
                (mean + jitter(&mut rng)).clamp(0.0, 1.0)
            };
            j.record(s, errored, &[], c.window);
            decisions.push(j.decide(&c));
        }
        (j, decisions)
    }

    #[test]
    fn decisions() {
        // (candidate mean, noise floor, error rate, expected first trigger)
        let cases = [
            (0.85, 0.85, 0.0, None),                   // as random as stable
            (0.80, 0.85, 0.0, None),                   // quality 0.94
            (0.30, 0.85, 0.0, Some(Trigger::Quality)), // unrelated answers
            (0.85, 0.85, 0.30, Some(Trigger::Errors)), // failing candidate
        ];
        for (mean, floor, err, want) in cases {
            for seed in 0..20 {
                let (_, d) = run(mean, floor, err, 2_000, seed);
                assert!(
                    d[..29].iter().all(Option::is_none),
                    "decided before min_samples"
                );
                let first = d.iter().flatten().next().copied();
                assert_eq!(
                    first, want,
                    "mean {mean} floor {floor} err {err} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn the_lower_bound_needs_evidence_of_good() {
        // As random as stable, enough samples: the lower bound clears 0.8.
        let (j, _) = run(0.85, 0.85, 0.0, 300, 3);
        let lower = j.quality_lower().unwrap();
        assert!(lower > 0.8 && lower <= j.quality().unwrap(), "{lower}");
        // Few samples: the same mean, but not yet evidence.
        let mut few = Judge::default();
        for s in [0.95, 0.6, 0.9, 0.55, 1.0, 0.7] {
            few.record_noise(0.8, &[], 200);
            few.record(s, false, &[], 200);
        }
        let lower = few.quality_lower().unwrap();
        assert!(lower < few.quality().unwrap() - 0.1, "{lower}");
        // Unrelated answers: far below.
        let (bad, _) = run(0.3, 0.85, 0.0, 300, 4);
        assert!(bad.quality_lower().unwrap() < 0.4);
        // No floor, no bound.
        assert_eq!(Judge::default().quality_lower(), None);
        // Errors: the upper bound is above the observed share, and 0 without errors.
        let (e, _) = run(0.85, 0.85, 0.1, 200, 5);
        assert!(e.error_upper() > e.error_rate());
        assert_eq!(j.error_upper(), 0.0);
    }

    #[test]
    fn quality_is_normalised_by_noise_floor() {
        let (j, _) = run(0.7, 0.7, 0.0, 500, 1);
        let q = j.quality().unwrap();
        assert!(q > 0.95, "quality {q}");
        let floor = j.noise_floor().unwrap();
        assert!((floor - 0.7).abs() < 0.03, "floor {floor}");
        assert_eq!(Judge::default().quality(), None);
    }

    #[test]
    fn each_scorer_has_its_own_quality() {
        let mut j = Judge::default();
        for i in 0..10 {
            // Lexical as random as stable; semantic far from it.
            j.record_noise(0.8, &[("lexical", 0.6), ("semantic", 0.9)], 200);
            j.record(
                0.5,
                false,
                &[("lexical", 0.6), ("semantic", 0.3 + f64::from(i % 2) * 0.1)],
                200,
            );
        }
        let q: Vec<(&str, f64)> = j
            .scorer_qualities()
            .iter()
            .map(|q| (q.scorer, q.quality))
            .collect();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].0, "lexical");
        assert!((q[0].1 - 1.0).abs() < 1e-9);
        assert_eq!(q[1].0, "semantic");
        assert!((q[1].1 - 0.35 / 0.9).abs() < 1e-9, "{q:?}");
        j.reset_candidate();
        assert!(j.scorer_qualities().is_empty(), "no candidate samples");
        assert_eq!(j.noise_samples(), 10, "the floor is stable's");
        j.reset_all();
        assert_eq!(j.noise_samples(), 0);
    }
}
