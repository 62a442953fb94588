//! A route's quality and noise floor over time, for the review page's sparklines: a bounded
//! ring of points, at most one every [`SPACING_MS`], in memory only (the page shows the recent
//! past; a restart starts it again, as it starts the judge's window again). Pure data.

use std::collections::VecDeque;

use serde::Serialize;

use crate::domain::Phase;
use crate::metrics::JudgeFigures;

/// Fewest milliseconds between two kept points.
pub const SPACING_MS: i64 = 2_000;
/// Points kept per route: at one every 2 s, the last half hour.
pub const MAX_POINTS: usize = 900;

/// One point of a route's trend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub quality: Option<f64>,
    pub noise_floor: Option<f64>,
    pub samples: usize,
    pub phase: Phase,
    pub share: f64,
}

/// The ring of points.
#[derive(Debug, Default)]
pub struct Trend {
    points: VecDeque<TrendPoint>,
}

impl Trend {
    /// Keeps `point` unless the last one is younger than [`SPACING_MS`] (then it replaces the
    /// last, so the newest figures are always shown); the oldest goes past [`MAX_POINTS`].
    pub fn record(&mut self, at_ms: i64, figures: &JudgeFigures, phase: Phase, share: f64) {
        let point = TrendPoint {
            at_ms,
            quality: figures.quality,
            noise_floor: figures.noise_floor,
            samples: figures.samples,
            phase,
            share,
        };
        match self.points.back_mut() {
            Some(last) if at_ms - last.at_ms < SPACING_MS && last.phase == phase => {
                // Same slot: the newest figures, at the slot's first time.
                let at = last.at_ms;
                *last = TrendPoint { at_ms: at, ..point };
            }
            _ => {
                if self.points.len() >= MAX_POINTS {
                    self.points.pop_front();
                }
                self.points.push_back(point);
            }
        }
    }

    /// Every kept point, oldest first.
    pub fn points(&self) -> Vec<TrendPoint> {
        self.points.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(quality: f64) -> JudgeFigures {
        JudgeFigures {
            scorers: Vec::new(),
            quality: Some(quality),
            noise_floor: Some(0.8),
            samples: 1,
        }
    }

    #[test]
    fn one_point_per_slot_the_newest_figures_and_bounded() {
        let mut t = Trend::default();
        t.record(0, &figures(0.1), Phase::Shadow, 0.1);
        t.record(500, &figures(0.2), Phase::Shadow, 0.1);
        t.record(SPACING_MS, &figures(0.3), Phase::Shadow, 0.1);
        let q: Vec<(i64, Option<f64>)> = t.points().iter().map(|p| (p.at_ms, p.quality)).collect();
        assert_eq!(q, [(0, Some(0.2)), (SPACING_MS, Some(0.3))]);
        // A phase change is a point of its own, however soon.
        t.record(SPACING_MS + 1, &figures(0.4), Phase::Canary, 0.5);
        assert_eq!(t.points().len(), 3);
        for i in 0..(MAX_POINTS as i64 * 2) {
            t.record(SPACING_MS * (i + 3), &figures(0.5), Phase::Canary, 0.5);
        }
        assert_eq!(t.points().len(), MAX_POINTS);
        assert_eq!(
            t.points().last().map(|p| p.at_ms),
            Some(SPACING_MS * (MAX_POINTS as i64 * 2 + 2))
        );
    }
}
