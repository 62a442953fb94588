//! The controller: the one owner of change. It receives scored samples from the mirrors and
//! commands from the admin API, keeps each route's judge and review samples, decides rollbacks,
//! and publishes each new [`Snapshot`] by swapping it in whole. The request path only ever reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::judge::{Judge, Trigger};
use crate::metrics::Metrics;
use crate::observe::Observation;
use crate::score::Score;
use crate::state::Snapshot;

/// One scored comparison from a mirror.
pub struct Sample {
    pub route: String,
    pub candidate_version: u32,
    pub score: Score,
    pub candidate_error: bool,
    /// Stable-vs-stable combined score, when this request was also used for the noise floor.
    pub noise: Option<f64>,
    /// The client's request body (None when the route redacts requests).
    pub request: Option<Bytes>,
    pub stable_output: Observation,
    pub candidate_output: Observation,
    pub second_stable: Option<Observation>,
}

/// What the admin API asks the controller.
pub enum Command {
    Sample(Box<Sample>),
    Samples {
        route: String,
        order: SampleOrder,
        limit: usize,
        reply: oneshot::Sender<Option<Vec<ReviewSample>>>,
    },
    Stats {
        reply: oneshot::Sender<HashMap<String, RouteStats>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOrder {
    Worst,
    Random,
}

/// Judge figures of a route, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStats {
    pub quality: Option<f64>,
    pub noise_floor: Option<f64>,
    pub samples: usize,
    pub error_rate: f64,
}

/// A request/output pair kept for review.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewSample {
    pub at_unix: u64,
    pub candidate_version: u32,
    pub score: f64,
    pub scores: HashMap<&'static str, f64>,
    pub hard_failure: Option<&'static str>,
    /// The request body as JSON (null when redacted).
    pub request: Option<serde_json::Value>,
    pub stable: OutputView,
    pub candidate: OutputView,
}

#[derive(Debug, Clone, Serialize)]
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
            finish_reason: o.finish_reason.as_ref().map(|f| format!("{f:?}")),
            latency_ms: o.latency.as_secs_f64() * 1e3,
            failure: o.failure.as_ref().map(|f| format!("{f:?}")),
        }
    }
}

/// Worst-N and a uniform reservoir of M review samples.
#[derive(Default)]
struct Reviews {
    worst: Vec<ReviewSample>,
    reservoir: Vec<ReviewSample>,
    seen: u64,
}

impl Reviews {
    fn add(&mut self, s: ReviewSample, keep_worst: usize, keep_random: usize) {
        self.seen += 1;
        if keep_random > 0 {
            if self.reservoir.len() < keep_random {
                self.reservoir.push(s.clone());
            } else {
                let j = rand::rng().random_range(0..self.seen);
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

#[derive(Default)]
struct RouteRuntime {
    judge: Judge,
    reviews: Reviews,
    /// Candidate version the judge's window belongs to.
    judged_version: Option<u32>,
}

pub struct Controller {
    state: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    routes: HashMap<String, RouteRuntime>,
}

impl Controller {
    pub fn new(state: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Self {
        Controller {
            state,
            metrics,
            routes: HashMap::new(),
        }
    }

    /// Applies commands until `shutdown` fires or every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                () = shutdown.cancelled() => None,
            };
            match cmd {
                Some(cmd) => self.apply(cmd),
                None => break,
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Sample(s) => self.sample(*s),
            Command::Samples {
                route,
                order,
                limit,
                reply,
            } => {
                let out = self.routes.get(&route).map(|r| {
                    let list = match order {
                        SampleOrder::Worst => &r.reviews.worst,
                        SampleOrder::Random => &r.reviews.reservoir,
                    };
                    list.iter().take(limit).cloned().collect()
                });
                let _ = reply.send(out);
            }
            Command::Stats { reply } => {
                let stats = self
                    .routes
                    .iter()
                    .map(|(name, r)| {
                        let j = &r.judge;
                        let s = RouteStats {
                            quality: j.quality(),
                            noise_floor: j.noise_floor(),
                            samples: j.samples(),
                            error_rate: j.error_rate(),
                        };
                        (name.clone(), s)
                    })
                    .collect();
                let _ = reply.send(stats);
            }
        }
    }

    fn sample(&mut self, s: Sample) {
        let snapshot = self.state.load();
        let Some(route) = snapshot.route(&s.route) else {
            return;
        };
        let policy = &route.policy;
        let rt = self.routes.entry(s.route.clone()).or_default();
        let window = policy.rollback.window;
        if let Some(noise) = s.noise {
            rt.judge.record_noise(noise, window);
        }
        // A sample for a candidate that is no longer live (rolled back meanwhile) is not judged.
        let live = route
            .candidate
            .as_ref()
            .is_some_and(|c| c.version == s.candidate_version);
        if live {
            if rt.judged_version != Some(s.candidate_version) {
                rt.judge.reset_candidate();
                rt.judged_version = Some(s.candidate_version);
            }
            rt.judge.record(s.score.combined, s.candidate_error, window);
        }
        let review = ReviewSample {
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            candidate_version: s.candidate_version,
            score: s.score.combined,
            scores: s.score.by_scorer().into_iter().collect(),
            hard_failure: s.score.hard_failure.map(|h| h.as_str()),
            request: s
                .request
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok()),
            stable: OutputView::from(&s.stable_output),
            candidate: OutputView::from(&s.candidate_output),
        };
        rt.reviews.add(
            review,
            policy.scoring.keep_worst,
            policy.scoring.keep_random,
        );

        let j = &rt.judge;
        let m = &self.metrics;
        if let Some(q) = j.quality() {
            m.quality.with_label_values(&[&s.route]).set(q);
        }
        if let Some(f) = j.noise_floor() {
            m.noise_floor.with_label_values(&[&s.route]).set(f);
        }
        m.samples
            .with_label_values(&[&s.route])
            .set(j.samples() as i64);
        if live && policy.rollback.auto {
            if let Some(trigger) = j.decide(&policy.rollback) {
                tracing::warn!(route = %s.route, trigger = trigger.as_str(), quality = ?j.quality(), error_rate = j.error_rate(), "judge: rollback due");
                let _: Trigger = trigger;
            }
        }
    }
}
