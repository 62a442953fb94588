//! Neighbourhood agreement of two embedding models: pure arithmetic over vectors.
//!
//! Vectors of two models live in different spaces (other dimensions, other axes), so they
//! cannot be compared with each other. What can be compared is how each model *arranges the
//! same inputs*: which inputs it puts close together and which far apart. A retrieval system
//! only ever uses that arrangement (it returns the documents nearest to the query), so two
//! models that order the pairs of a sample of real inputs the same way return the same results
//! for them; a model that scrambles the order (truncated input, a meaning lost) returns other
//! documents, whatever its vectors look like.
//!
//! Over a rolling [`Window`] of recent inputs embedded by both releases, [`agreement`] gives:
//! - `spearman`: Spearman's rank correlation between the pairwise cosine similarities of the
//!   inputs under one model and under the other (1: the same order of every pair);
//! - `knn`: for each input, the share of its k nearest neighbours under one model that are
//!   also among its k nearest under the other (nearest-neighbour overlap at k, what top-k
//!   retrieval sees).
//!
//! A model compared with itself (stable against stable: the noise floor) gives 1 for both when
//! it is deterministic.

use std::collections::VecDeque;

use super::{HardFailure, Score};

/// Fewest inputs in a window before agreement is measured: below it there are too few pairs
/// to rank (8 inputs give 28 pairs).
pub const MIN_POINTS: usize = 8;
/// Inputs kept per window: 64 give 2016 pairs, a few milliseconds of arithmetic per sample.
pub const WINDOW_POINTS: usize = 64;
/// The k of the nearest-neighbour overlap.
pub const K: usize = 5;

/// Cosine similarity of two unit vectors (their dot product), 0 for mismatched lengths.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// `v` scaled to unit length (all zeros stays all zeros).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "f32 is the vectors' precision"
        )]
        v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
    } else {
        vec![0.0; v.len()]
    }
}

/// The cosine similarity of every pair (i < j) of unit vectors, row by row.
pub fn pairwise(points: &[&[f32]]) -> Vec<f64> {
    let mut out = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            out.push(dot(a, b));
        }
    }
    out
}

/// Ranks of `xs` (1-based), ties given their average rank.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|a, b| xs[*a].total_cmp(&xs[*b]));
    let mut out = vec![0.0; xs.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && xs[order[end]] == xs[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) share the mean of ranks start+1..=end.
        let rank = (start + end + 1) as f64 / 2.0;
        for i in &order[start..end] {
            out[*i] = rank;
        }
        start = end;
    }
    out
}

/// Spearman's rank correlation of two equally long series: Pearson's correlation of their
/// ranks, in [-1, 1]. 0 when either series is constant (its order says nothing) or they are
/// shorter than 2.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() || x.len() < 2 {
        return 0.0;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return 0.0;
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// The similarity of points `i` and `j` in a [`pairwise`] list of `n` points.
fn pair(sims: &[f64], n: usize, i: usize, j: usize) -> f64 {
    let (a, b) = if i < j { (i, j) } else { (j, i) };
    // Row a starts after the rows 0..a, each of n-1-r entries.
    let row = a * (2 * n - a - 1) / 2;
    sims[row + (b - a - 1)]
}

/// The `k` nearest neighbours of point `i` (most similar first; ties by position).
fn neighbours(sims: &[f64], n: usize, i: usize, k: usize) -> Vec<usize> {
    let mut others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
    others.sort_by(|a, b| pair(sims, n, i, *b).total_cmp(&pair(sims, n, i, *a)));
    others.truncate(k);
    others
}

/// Mean share of each point's `k` nearest neighbours under `a` that are also among its `k`
/// nearest under `b`, both [`pairwise`] lists of `n` points; in [0, 1]. `k` is capped at n-1.
pub fn knn_overlap(a: &[f64], b: &[f64], n: usize, k: usize) -> f64 {
    let k = k.min(n.saturating_sub(1));
    if k == 0 || a.len() != n * (n - 1) / 2 || b.len() != a.len() {
        return 0.0;
    }
    let total: usize = (0..n)
        .map(|i| {
            let near_b = neighbours(b, n, i, k);
            neighbours(a, n, i, k)
                .iter()
                .filter(|j| near_b.contains(j))
                .count()
        })
        .sum();
    total as f64 / (n * k) as f64
}

/// How much two models agree on a window of inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Spearman's rank correlation of the pairwise similarities, in [-1, 1].
    pub spearman: f64,
    /// Nearest-neighbour overlap at [`K`], in [0, 1].
    pub knn: f64,
}

/// Agreement of two models over the same inputs (`a[i]` and `b[i]` embed input i), unit
/// vectors each. None with fewer than [`MIN_POINTS`] inputs.
pub fn agreement(a: &[&[f32]], b: &[&[f32]]) -> Option<Agreement> {
    let n = a.len();
    if n < MIN_POINTS || b.len() != n {
        return None;
    }
    let (sa, sb) = (pairwise(a), pairwise(b));
    Some(Agreement {
        spearman: spearman(&sa, &sb),
        knn: knn_overlap(&sa, &sb, n, K),
    })
}

/// A rolling window of inputs embedded by two releases: (reference vector, subject vector) per
/// input, unit length, newest last, at most [`WINDOW_POINTS`].
#[derive(Debug, Clone, Default)]
pub struct Window {
    points: VecDeque<(Vec<f32>, Vec<f32>)>,
}

impl Window {
    /// Adds the inputs of one request (`reference[i]` and `subject[i]` embed its input i).
    /// Nothing is added when the two answers do not have one vector per input each.
    pub fn push(&mut self, reference: &[Vec<f32>], subject: &[Vec<f32>]) {
        if reference.len() != subject.len() {
            return;
        }
        for (r, s) in reference.iter().zip(subject) {
            if self.points.len() == WINDOW_POINTS {
                self.points.pop_front();
            }
            self.points.push_back((normalized(r), normalized(s)));
        }
    }

    /// Inputs held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The two models' agreement over the window, once it holds [`MIN_POINTS`] inputs.
    pub fn agreement(&self) -> Option<Agreement> {
        let a: Vec<&[f32]> = self.points.iter().map(|p| p.0.as_slice()).collect();
        let b: Vec<&[f32]> = self.points.iter().map(|p| p.1.as_slice()).collect();
        agreement(&a, &b)
    }

    /// Forget every input.
    pub fn clear(&mut self) {
        self.points.clear();
    }
}

/// A route's two windows, each tied to the releases whose inputs it holds: stable against the
/// candidate, and stable against itself (the noise floor).
#[derive(Debug, Default)]
pub struct Windows {
    stable: u32,
    candidate: u32,
    /// (stable's vector, the candidate's vector) per input.
    pub candidate_pairs: Window,
    /// (stable's vector, stable's second vector) per input.
    pub noise: Window,
}

impl Windows {
    /// The windows for `stable` and `candidate`: the candidate's pairs are forgotten when the
    /// candidate changed, both windows when stable did.
    pub fn of(&mut self, stable: u32, candidate: u32) -> &mut Self {
        if self.stable != stable {
            self.noise.clear();
            self.candidate_pairs.clear();
        } else if self.candidate != candidate {
            self.candidate_pairs.clear();
        }
        self.stable = stable;
        self.candidate = candidate;
        self
    }
}

impl Score {
    /// An embedding route's score for one sample: the window's agreement (its Spearman's rank
    /// correlation, clamped to [0, 1], is the combined score), or 0 when the subject `failed`
    /// (an error, or not one vector per input).
    pub fn of_agreement(agreement: Agreement, failed: bool) -> Score {
        let neighbourhood = agreement.spearman.clamp(0.0, 1.0);
        Score {
            lexical: 0.0,
            structure: 0.0,
            length: 0.0,
            refusal: 0.0,
            finish: 1.0,
            semantic: None,
            judge: None,
            combined: if failed { 0.0 } else { neighbourhood },
            hard_failure: failed.then_some(HardFailure::Error),
            failed_check: None,
            neighbourhood: Some(neighbourhood),
            knn: Some(agreement.knn.clamp(0.0, 1.0)),
            structure_applies: false,
            refusal_applies: false,
            embedding: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random unit vector.
    fn vector(seed: u64, dims: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..dims)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        normalized(&v)
    }

    /// `v` rotated: a fixed signed permutation into `dims` >= len dimensions (padding zeros).
    fn rotated(v: &[f32], dims: usize) -> Vec<f32> {
        let mut out = vec![0.0; dims];
        for (i, x) in v.iter().enumerate() {
            let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
            out[(i * 7 + 3) % dims] = sign * x;
        }
        out
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), [1.5, 3.0, 1.5, 4.0]);
    }

    #[test]
    fn spearman_known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((spearman(&x, &[2.0, 4.0, 6.0, 8.0, 100.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Textbook example: d² = 0+1+1+0+0... ρ = 1 - 6Σd²/(n(n²-1)).
        let y = [1.0, 3.0, 2.0, 4.0, 5.0];
        assert!((spearman(&x, &y) - (1.0 - 6.0 * 2.0 / 120.0)).abs() < 1e-12);
        assert_eq!(spearman(&x, &[7.0; 5]), 0.0);
        assert_eq!(spearman(&[1.0], &[1.0]), 0.0);
    }

    #[test]
    fn pair_indexing_matches_pairwise() {
        let points: Vec<Vec<f32>> = (0..6).map(|i| vector(i, 8)).collect();
        let refs: Vec<&[f32]> = points.iter().map(Vec::as_slice).collect();
        let sims = pairwise(&refs);
        assert_eq!(sims.len(), 15);
        for i in 0..6 {
            for j in 0..6 {
                if i != j {
                    let want = dot(&points[i], &points[j]);
                    assert!((pair(&sims, 6, i, j) - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn a_rotation_into_another_space_agrees_fully() {
        let base: Vec<Vec<f32>> = (0..20).map(|i| vector(i, 16)).collect();
        let other: Vec<Vec<f32>> = base.iter().map(|v| rotated(v, 24)).collect();
        let a: Vec<&[f32]> = base.iter().map(Vec::as_slice).collect();
        let b: Vec<&[f32]> = other.iter().map(Vec::as_slice).collect();
        // The two spaces cannot be compared directly...
        assert_eq!(dot(&base[0], &other[0]), 0.0);
        // ...but they arrange the inputs the same way.
        let got = agreement(&a, &b).unwrap();
        assert!((got.spearman - 1.0).abs() < 1e-9, "{got:?}");
        assert!((got.knn - 1.0).abs() < 1e-12, "{got:?}");
        // A model against itself: the noise floor of a deterministic model is 1.
        assert_eq!(agreement(&a, &a).unwrap().spearman, 1.0);
    }

    #[test]
    fn unrelated_vectors_disagree() {
        let base: Vec<Vec<f32>> = (0..40).map(|i| vector(i, 16)).collect();
        let shuffled: Vec<Vec<f32>> = (0..40).map(|i| vector(1000 + i, 16)).collect();
        let a: Vec<&[f32]> = base.iter().map(Vec::as_slice).collect();
        let b: Vec<&[f32]> = shuffled.iter().map(Vec::as_slice).collect();
        let got = agreement(&a, &b).unwrap();
        assert!(got.spearman.abs() < 0.2, "{got:?}");
        assert!(got.knn < 0.3, "{got:?}");
        // Everything collapsed to one vector (truncated input): no order at all.
        let same: Vec<&[f32]> = (0..40).map(|_| base[0].as_slice()).collect();
        assert_eq!(agreement(&a, &same).unwrap().spearman, 0.0);
    }

    #[test]
    fn a_score_is_the_clamped_rank_correlation() {
        let s = Score::of_agreement(
            Agreement {
                spearman: -0.3,
                knn: 0.1,
            },
            false,
        );
        assert_eq!(
            (s.combined, s.neighbourhood, s.knn),
            (0.0, Some(0.0), Some(0.1))
        );
        let s = Score::of_agreement(
            Agreement {
                spearman: 0.9,
                knn: 0.8,
            },
            false,
        );
        assert_eq!(s.combined, 0.9);
        assert_eq!(s.tracked(), [("neighbourhood", 0.9), ("knn", 0.8)]);
        assert_eq!(s.by_scorer()[0], ("combined", 0.9));
        let failed = Score::of_agreement(
            Agreement {
                spearman: 1.0,
                knn: 1.0,
            },
            true,
        );
        assert_eq!(failed.combined, 0.0);
        assert_eq!(failed.hard_failure, Some(HardFailure::Error));
    }

    #[test]
    fn the_window_rolls_and_waits_for_enough_inputs() {
        let mut w = Window::default();
        let v: Vec<Vec<f32>> = (0..100).map(|i| vector(i, 8)).collect();
        w.push(&v[..MIN_POINTS - 1], &v[..MIN_POINTS - 1]);
        assert!(w.agreement().is_none());
        w.push(&v[..1], &v[..2]);
        assert_eq!(w.len(), MIN_POINTS - 1, "mismatched answers are not added");
        w.push(&v[MIN_POINTS..], &v[MIN_POINTS..]);
        assert_eq!(w.len(), WINDOW_POINTS);
        assert_eq!(w.agreement().unwrap().knn, 1.0);
        w.clear();
        assert_eq!(w.len(), 0);
    }
}
