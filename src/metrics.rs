//! Prometheus metrics and the events that feed them. "One event, one place": each function here
//! both logs the event (key/value `tracing`) and updates the metrics, so a log line and a metric
//! can never disagree. Label values come from the configuration and the store (route names,
//! release numbers, fixed kinds), never from raw request data.

use std::time::Duration;

use crate::domain::{Phase, Prices, RolloutWait, Trigger};

mod indexes;

pub use indexes::{IndexGauge, IndexMetrics};

use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The scorers whose own quality is tracked (`understudy_scorer_quality{scorer}`).
pub const TRACKED_SCORERS: [&str; 8] = [
    "lexical",
    "length",
    "structure",
    "refusal",
    "semantic",
    "judge",
    "neighbourhood",
    "knn",
];

/// Route label for requests that match no route and go to the default upstream untouched.
pub const UNROUTED: &str = "_unrouted";
/// Release label for requests that no release served (unrouted, or refused before routing).
pub const NO_RELEASE: &str = "none";

/// Every metric of the contract, registered in a registry of its own (one per server, so tests
/// can run many servers in one process).
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttfb: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub shadow_requests: IntCounterVec,
    pub shadow_score: HistogramVec,
    pub shadow_duration: HistogramVec,
    pub quality: GaugeVec,
    pub noise_floor: GaugeVec,
    pub samples: IntGaugeVec,
    pub rollbacks: IntCounterVec,
    pub route_phase: IntGaugeVec,
    pub serving_release: IntGaugeVec,
    pub threshold: GaugeVec,
    pub scorer_quality: GaugeVec,
    pub scorer_calls: IntCounterVec,
    pub check_failures: IntCounterVec,
    pub store_errors: IntCounterVec,
    pub store_healthy: IntGauge,
    pub store_pending: IntGauge,
    pub fleet_leader: IntGauge,
    pub fleet_state_lag: IntGauge,
    pub proxy_connections: IntGauge,
    pub connections_closed: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    /// Embedding routes' vector indexes.
    pub indexes: IndexMetrics,
    pub rollout_step: IntGaugeVec,
    pub rollout_waiting: IntGaugeVec,
}

/// Why the proxy closed a client connection itself (`understudy_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A request head was not complete within `header_read_timeout_secs` of its first byte.
    HeaderTimeout,
    /// No request in flight for `idle_timeout_secs`.
    IdleTimeout,
    /// Refused at accept: `max_connections` were open.
    OverCapacity,
    /// Still open when the shutdown grace period ran out.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::OverCapacity,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::OverCapacity => "over_capacity",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Why a request was answered by the proxy without reaching an upstream
/// (`understudy_requests_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_concurrent_requests` were in flight: 503.
    Overloaded,
    /// The request body sent nothing for `body_timeout_secs`: 408.
    BodyTimeout,
}

impl RejectReason {
    pub const ALL: [RejectReason; 2] = [RejectReason::Overloaded, RejectReason::BodyTimeout];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Overloaded => "overloaded",
            RejectReason::BodyTimeout => "body_timeout",
        }
    }
}

/// The store operations `understudy_store_errors_total{op}` counts.
pub const STORE_OPS: [&str; 5] = ["commit", "samples", "probe", "check", "read"];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
const SCORE_BUCKETS: &[f64] = &[
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let rr = &["route", "release"];
        let m = Metrics {
            requests: register(r, IntCounterVec::new(Opts::new("understudy_requests_total", "Client requests answered, by route, serving release and HTTP status."), &["route", "release", "status"])?)?,
            duration: register(r, HistogramVec::new(histogram("understudy_request_duration_seconds", "Time from receiving a client request to the end of its response body.", LATENCY_BUCKETS), rr)?)?,
            ttfb: register(r, HistogramVec::new(histogram("understudy_time_to_first_byte_seconds", "Time from receiving a client request to the first byte of the upstream's response body.", LATENCY_BUCKETS), rr)?)?,
            upstream_errors: register(r, IntCounterVec::new(Opts::new("understudy_upstream_errors_total", "Upstream failures on the client's path, by kind (connect, timeout, status, reset, malformed)."), &["route", "release", "kind"])?)?,
            tokens: register(r, IntCounterVec::new(Opts::new("understudy_tokens_total", "Tokens reported by the upstream's usage, by kind (prompt, completion); mirrored requests included."), &["route", "release", "kind"])?)?,
            cost: register(r, CounterVec::new(Opts::new("understudy_cost_usd_total", "Spend in US dollars from token usage and the release's configured prices."), rr)?)?,
            shadow_requests: register(r, IntCounterVec::new(Opts::new("understudy_shadow_requests_total", "Mirrored requests by outcome (scored, error, dropped_busy, dropped_budget, unpaired)."), &["route", "release", "outcome"])?)?,
            shadow_score: register(r, HistogramVec::new(histogram("understudy_shadow_score", "Per-sample scores of the candidate against stable, by scorer (1 = same as stable).", SCORE_BUCKETS), &["route", "scorer"])?)?,
            shadow_duration: register(r, HistogramVec::new(histogram("understudy_shadow_duration_seconds", "Latency of mirrored requests, by the release they went to.", LATENCY_BUCKETS), rr)?)?,
            quality: register(r, GaugeVec::new(Opts::new("understudy_quality", "Rolling candidate score normalised by the noise floor (1 = as close to stable as stable is to itself)."), &["route"])?)?,
            noise_floor: register(r, GaugeVec::new(Opts::new("understudy_noise_floor", "Rolling score of stable against itself for the same request."), &["route"])?)?,
            samples: register(r, IntGaugeVec::new(Opts::new("understudy_samples", "Scored samples in the route's current judging window."), &["route"])?)?,
            rollbacks: register(r, IntCounterVec::new(Opts::new("understudy_rollbacks_total", "Rollbacks by trigger (quality, errors, alert, manual)."), &["route", "trigger"])?)?,
            route_phase: register(r, IntGaugeVec::new(Opts::new("understudy_route_phase", "1 for the route's current phase, 0 for the others."), &["route", "phase"])?)?,
            serving_release: register(r, IntGaugeVec::new(Opts::new("understudy_serving_release", "Release number that serves the route's traffic (the candidate once promoted)."), &["route"])?)?,
            threshold: register(r, GaugeVec::new(Opts::new("understudy_rollback_threshold", "The route's configured quality threshold (rollback.threshold), for alert rules and dashboards."), &["route"])?)?,
            scorer_quality: register(r, GaugeVec::new(Opts::new("understudy_scorer_quality", "Each scorer's own rolling candidate score over its own noise floor (1 = as close to stable as stable is to itself)."), &["route", "scorer"])?)?,
            scorer_calls: register(r, IntCounterVec::new(Opts::new("understudy_scorer_calls_total", "Calls of the remote scorers (semantic, judge) by outcome (ok, skipped_budget, failed, unparseable); a failure drops the scorer for that sample, never fails the candidate."), &["route", "scorer", "outcome"])?)?,
            check_failures: register(r, IntCounterVec::new(Opts::new("understudy_check_failures_total", "Samples where the candidate failed one of the route's checks that stable passed (a hard failure)."), &["route", "check"])?)?,
            store_errors: register(r, IntCounterVec::new(Opts::new("understudy_store_errors_total", "Failed store operations, by op (commit: a change or a queued rollback; samples: review samples; probe: the retry timer's test write; check: the store file removed or replaced; read)."), &["op"])?)?,
            store_healthy: register(r, IntGauge::with_opts(Opts::new("understudy_store_healthy", "1 while the store takes writes and every change is durable; 0 while it is failing (rollbacks still take effect, in memory; other changes are refused)."))?)?,
            store_pending: register(r, IntGauge::with_opts(Opts::new("understudy_store_pending_changes", "Changes in effect (rollbacks) but not yet written to the store, retried every second."))?)?,
            fleet_leader: register(r, IntGauge::with_opts(Opts::new("understudy_fleet_leader", "1 on the replica of a fleet (shared PostgreSQL store) that runs the judge, 0 on the others and outside a fleet."))?)?,
            fleet_state_lag: register(r, IntGauge::with_opts(Opts::new("understudy_fleet_state_lag", "State versions the shared store has that this replica does not serve yet (0 when current)."))?)?,
            proxy_connections: register(r, IntGauge::new("understudy_proxy_connections", "Client connections open on the proxy listener.")?)?,
            connections_closed: register(r, IntCounterVec::new(Opts::new("understudy_connections_closed_total", "Client connections the proxy closed itself, by reason (header_timeout, idle_timeout, over_capacity, shutdown)."), &["reason"])?)?,
            rollout_step: register(r, IntGaugeVec::new(Opts::new("understudy_rollout_step", "The automatic rollout's current step, 1-based; 0 when no rollout runs (no candidate, finished or rolled back)."), &["route"])?)?,
            rollout_waiting: register(r, IntGaugeVec::new(Opts::new("understudy_rollout_waiting", "1 for what the rollout's current step waits for first (ready, paused, duration, samples, noise_floor, quality, errors, store, done), 0 for the others."), &["route", "reason"])?)?,
            requests_rejected: register(r, IntCounterVec::new(Opts::new("understudy_requests_rejected_total", "Requests answered by the proxy itself before any upstream, by reason (overloaded: 503, body_timeout: 408)."), &["reason"])?)?,
            indexes: IndexMetrics::new(r)?,
            registry,
        };
        // Every op's and reason's series exists from the start, at 0, so the first error is an
        // increase and rates and alerts see zeros.
        for op in STORE_OPS {
            m.store_errors.with_label_values(&[op]).inc_by(0);
        }
        m.store_healthy.set(1);
        for reason in CloseReason::ALL {
            m.connections_closed.with_label_values(&[reason.as_str()]);
        }
        for reason in RejectReason::ALL {
            m.requests_rejected.with_label_values(&[reason.as_str()]);
        }
        Ok(m)
    }

    /// The proxy closed a client connection itself.
    pub fn connection_closed(&self, reason: CloseReason) {
        tracing::debug!(reason = reason.as_str(), "closed a client connection");
        self.connections_closed
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A request answered by the proxy itself (503 overloaded, 408 body timeout).
    pub fn request_rejected(&self, reason: RejectReason) {
        tracing::debug!(reason = reason.as_str(), "request rejected");
        self.requests_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// One route release's request series, looked up once. A label lookup hashes every label value
/// and takes a lock: the request path uses these handles instead (see `Release::series`).
pub struct ReleaseSeries {
    ok: IntCounter,
    duration: Histogram,
    ttfb: Histogram,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    /// Only for releases with prices: a release without them has no cost series.
    cost: Option<Counter>,
}

impl std::fmt::Debug for ReleaseSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseSeries").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The request series of `release` on `route`.
    pub fn release_series(&self, route: &str, release: &str, priced: bool) -> ReleaseSeries {
        ReleaseSeries {
            ok: self.requests.with_label_values(&[route, release, "200"]),
            duration: self.duration.with_label_values(&[route, release]),
            ttfb: self.ttfb.with_label_values(&[route, release]),
            prompt_tokens: self.tokens.with_label_values(&[route, release, "prompt"]),
            completion_tokens: self
                .tokens
                .with_label_values(&[route, release, "completion"]),
            cost: priced.then(|| self.cost.with_label_values(&[route, release])),
        }
    }
}

/// What the proxy knows about one finished client request.
pub struct RequestRecord<'a> {
    /// The series of `route` and `release`, when already looked up.
    pub series: Option<&'a ReleaseSeries>,
    pub route: &'a str,
    pub release: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
    /// Upstream failure kind on the client's path, if any.
    pub error_kind: Option<&'static str>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub prices: Option<Prices>,
    /// The client went away before the response ended.
    pub cancelled: bool,
}

impl Metrics {
    /// A client request ended: one log line and its metrics.
    pub fn request_finished(&self, r: &RequestRecord<'_>) {
        let status: std::borrow::Cow<'static, str> = match (r.cancelled, r.status) {
            (true, _) => "cancelled".into(),
            (false, 200) => "200".into(),
            (false, s) => s.to_string().into(),
        };
        match r.series {
            Some(series) => {
                if r.status == 200 && !r.cancelled {
                    series.ok.inc();
                } else {
                    self.requests
                        .with_label_values(&[r.route, r.release, &status])
                        .inc();
                }
                series.duration.observe(r.duration.as_secs_f64());
                if let Some(ttfb) = r.ttfb {
                    series.ttfb.observe(ttfb.as_secs_f64());
                }
                if let Some(n) = r.prompt_tokens {
                    series.prompt_tokens.inc_by(n);
                }
                if let Some(n) = r.completion_tokens {
                    series.completion_tokens.inc_by(n);
                }
                if let (Some(cost), Some(usd)) = (
                    &series.cost,
                    cost_usd(r.prompt_tokens, r.completion_tokens, r.prices),
                ) {
                    cost.inc_by(usd);
                }
            }
            None => {
                self.requests
                    .with_label_values(&[r.route, r.release, &status])
                    .inc();
                self.duration
                    .with_label_values(&[r.route, r.release])
                    .observe(r.duration.as_secs_f64());
                if let Some(ttfb) = r.ttfb {
                    self.ttfb
                        .with_label_values(&[r.route, r.release])
                        .observe(ttfb.as_secs_f64());
                }
                self.count_tokens(
                    r.route,
                    r.release,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.prices,
                );
            }
        }
        if let Some(kind) = r.error_kind {
            self.upstream_errors
                .with_label_values(&[r.route, r.release, kind])
                .inc();
        }
        tracing::info!(
            route = r.route,
            release = r.release,
            method = %r.method,
            path = r.path,
            status = %status,
            latency_ms = r.duration.as_secs_f64() * 1e3,
            ttfb_ms = r.ttfb.map(|t| t.as_secs_f64() * 1e3),
            error = r.error_kind,
            "request"
        );
    }

    /// Token usage (and its cost when the release has prices) for a served or mirrored request.
    pub fn count_tokens(
        &self,
        route: &str,
        release: &str,
        prompt: Option<u64>,
        completion: Option<u64>,
        prices: Option<Prices>,
    ) {
        if let Some(n) = prompt {
            self.tokens
                .with_label_values(&[route, release, "prompt"])
                .inc_by(n);
        }
        if let Some(n) = completion {
            self.tokens
                .with_label_values(&[route, release, "completion"])
                .inc_by(n);
        }
        if let Some(usd) = cost_usd(prompt, completion, prices) {
            self.cost.with_label_values(&[route, release]).inc_by(usd);
        }
    }
}

/// What the tokens cost at the release's prices; None when nothing was spent.
fn cost_usd(prompt: Option<u64>, completion: Option<u64>, prices: Option<Prices>) -> Option<f64> {
    let p = prices?;
    let usd = prompt.unwrap_or(0) as f64 * p.prompt_per_mtok / 1e6
        + completion.unwrap_or(0) as f64 * p.completion_per_mtok / 1e6;
    (usd > 0.0).then_some(usd)
}

impl Metrics {
    /// A route was rolled back: one warning line and the rollback counter.
    pub fn rolled_back(
        &self,
        route: &str,
        trigger: Trigger,
        reason: &str,
        from: Option<u32>,
        to: Option<u32>,
    ) {
        self.rollbacks
            .with_label_values(&[route, trigger.as_str()])
            .inc();
        // The candidate is gone: its quality is no longer a live figure.
        self.forget_quality(route);
        tracing::warn!(route, trigger = trigger.as_str(), reason, from = ?from, to = ?to, "rolled back");
    }

    /// A store operation failed: counted; logged as an error when it turns the store failing,
    /// at debug level while it stays failing (the retry timer tries every second).
    pub fn store_error(&self, op: &'static str, error: &dyn std::fmt::Display, first: bool) {
        self.store_errors.with_label_values(&[op]).inc();
        if first {
            tracing::error!(op, %error, "store failing: rollbacks stay in effect in memory and are written when it recovers; other changes are refused");
        } else {
            tracing::debug!(op, %error, "store still failing");
        }
    }

    /// The store's health after an operation; `recovered` when it just became healthy.
    pub fn store_state(&self, healthy: bool, pending: usize, recovered: bool) {
        self.store_healthy.set(i64::from(healthy));
        self.store_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if recovered {
            tracing::info!("store recovered: every change is durable");
        }
    }

    /// In a fleet: whether this replica runs the judge, and how many state versions behind
    /// the shared store it serves.
    pub fn fleet_state(&self, leader: bool, lag: i64) {
        self.fleet_leader.set(i64::from(leader));
        self.fleet_state_lag.set(lag);
    }

    /// The judge took a sample: its figures as gauges.
    pub fn judged(&self, route: &str, figures: &JudgeFigures) {
        for (scorer, quality) in &figures.scorers {
            self.scorer_quality
                .with_label_values(&[route, scorer])
                .set(*quality);
        }
        if let Some(q) = figures.quality {
            self.quality.with_label_values(&[route]).set(q);
        }
        if let Some(f) = figures.noise_floor {
            self.noise_floor.with_label_values(&[route]).set(f);
        }
        self.samples
            .with_label_values(&[route])
            .set(figures.samples as i64);
    }

    /// A route's phase, serving release and threshold, after every published change.
    pub fn route_state(&self, route: &RouteGauges<'_>) {
        for phase in Phase::ALL {
            let on = i64::from(*phase == route.phase);
            self.route_phase
                .with_label_values(&[route.name, phase.as_str()])
                .set(on);
        }
        self.serving_release
            .with_label_values(&[route.name])
            .set(i64::from(route.serving));
        self.threshold
            .with_label_values(&[route.name])
            .set(route.threshold);
        // Every rollback counter exists from the start, at 0, so that a route's first rollback is
        // an increase Prometheus sees (a series born at 1 is no change to increase/changes).
        for trigger in Trigger::ALL {
            self.rollbacks
                .with_label_values(&[route.name, trigger.as_str()])
                .inc_by(0);
        }
        if !route.has_candidate {
            self.forget_quality(route.name);
        }
    }

    /// Where a route's rollout stands: its step (0: none runs) and what it waits for first
    /// (None: nothing, or no rollout).
    pub fn rollout_state(&self, route: &str, step: usize, waiting: Option<RolloutWait>) {
        self.rollout_step
            .with_label_values(&[route])
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        for w in RolloutWait::ALL {
            self.rollout_waiting
                .with_label_values(&[route, w.as_str()])
                .set(i64::from(waiting == Some(*w)));
        }
    }

    /// A rollout moved its candidate to the next step on its evidence: one info line and the
    /// step gauge.
    pub fn rollout_advanced(&self, route: &str, step: usize, evidence: &str) {
        self.rollout_step
            .with_label_values(&[route])
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        tracing::info!(route, step, evidence, "rollout advanced");
    }

    /// A route no longer configured (a reload removed it): its gauges go, so no rule keeps
    /// judging it; its counters stay (they are history).
    pub fn route_removed(&self, route: &str) {
        self.forget_quality(route);
        let _ = self.noise_floor.remove_label_values(&[route]);
        let _ = self.serving_release.remove_label_values(&[route]);
        let _ = self.threshold.remove_label_values(&[route]);
        for phase in Phase::ALL {
            let _ = self
                .route_phase
                .remove_label_values(&[route, phase.as_str()]);
        }
        let _ = self.rollout_step.remove_label_values(&[route]);
        for w in RolloutWait::ALL {
            let _ = self
                .rollout_waiting
                .remove_label_values(&[route, w.as_str()]);
        }
    }

    /// The route's quality gauges, removed (no candidate to judge).
    fn forget_quality(&self, route: &str) {
        let _ = self.quality.remove_label_values(&[route]);
        let _ = self.samples.remove_label_values(&[route]);
        for scorer in TRACKED_SCORERS {
            let _ = self.scorer_quality.remove_label_values(&[route, scorer]);
        }
    }
}

/// A judge's figures for the gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeFigures {
    /// Each tracked scorer's own quality, once it can be judged.
    pub scorers: Vec<(&'static str, f64)>,
    /// Candidate quality, once it can be judged.
    pub quality: Option<f64>,
    /// The noise floor, once it is trusted.
    pub noise_floor: Option<f64>,
    /// Candidate samples in the window.
    pub samples: usize,
}

/// A route's state for the gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteGauges<'a> {
    pub name: &'a str,
    pub phase: Phase,
    /// Version of the release that serves the route's traffic.
    pub serving: u32,
    /// `rollback.threshold`.
    pub threshold: f64,
    pub has_candidate: bool,
}
