//! Mirroring: a sampled request is sent again to the other release (the candidate, or stable
//! when the candidate serves), off the client's path, and the two answers are scored once the
//! client's response has completed. Every mirror runs on a `TaskTracker` that shutdown drains,
//! under a per-route budget (concurrency, requests/s, tokens/min) that drops rather than queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::config::{RollbackConfig, ScoringConfig, ShadowConfig, StickyKey};
use crate::control::Sample;
use crate::metrics::Metrics;
use crate::observe::{ApiShape, Failure, Observation, Observer};
use crate::rewrite::{rewrite_request, RequestBody};
use crate::routing::Role;
use crate::score::score;
use crate::state::{Release, Route};
use crate::upstream::{outbound_headers, UpstreamClient, SHADOW_HEADER};

/// A route's mirroring budget and its scoring and rollback settings. Shared by every snapshot of
/// the route, so the budget's counters survive snapshot swaps.
#[derive(Debug)]
pub struct RoutePolicy {
    pub shadow: ShadowConfig,
    pub scoring: ScoringConfig,
    pub rollback: RollbackConfig,
    /// Mirrors in flight, at most `max_inflight`; taken without waiting, so past it a mirror is
    /// dropped (`dropped_busy`), never queued.
    inflight: Arc<Semaphore>,
    /// Mirrors per second (`max_rps`); past it: `dropped_budget`.
    rate: Gcra,
    /// Mirror tokens per minute (`max_tokens_per_min`), charged when each answer's usage is known.
    tokens: Option<Gcra>,
}

impl RoutePolicy {
    pub fn new(shadow: ShadowConfig, scoring: ScoringConfig, rollback: RollbackConfig) -> Self {
        let rate = Gcra::new(shadow.max_rps, shadow.max_rps.max(1.0));
        let tokens = shadow
            .max_tokens_per_min
            .map(|t| Gcra::new(t as f64 / 60.0, t as f64));
        RoutePolicy {
            inflight: Arc::new(Semaphore::new(shadow.max_inflight)),
            rate,
            tokens,
            shadow,
            scoring,
            rollback,
        }
    }
}

/// A lock-free rate limiter (the generic cell rate algorithm): `rate` units per second with a
/// burst of `burst` units.
#[derive(Debug)]
struct Gcra {
    /// Theoretical arrival time, in nanoseconds since `epoch`.
    tat: AtomicU64,
    epoch: Instant,
    /// Nanoseconds one unit costs.
    unit_ns: f64,
    /// How far ahead of now the arrival time may run.
    tolerance_ns: u64,
}

impl Gcra {
    fn new(rate: f64, burst: f64) -> Self {
        let unit_ns = 1e9 / rate.max(1e-9);
        Gcra {
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
            unit_ns,
            tolerance_ns: (unit_ns * burst.max(1.0)) as u64,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Admits `cost` units now, or refuses without changing anything.
    fn try_acquire(&self, cost: f64) -> bool {
        let now = self.now();
        let step = (cost * self.unit_ns) as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + step;
            if next - now > self.tolerance_ns {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether the budget has room left right now (used before spending of unknown size).
    fn has_room(&self) -> bool {
        self.tat.load(Ordering::Relaxed) <= self.now() + self.tolerance_ns
    }

    /// Charges `cost` units spent already, even past the budget (it then refuses for a while).
    fn charge(&self, cost: f64) {
        let now = self.now();
        let step = (cost * self.unit_ns) as u64;
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                Some(t.max(now) + step)
            });
    }
}

/// The sticky sampling key of a request, if the route has one and the request carries it.
pub fn sticky_value(
    route: &Route,
    headers: &http::HeaderMap,
    body: &RequestBody<'_>,
) -> Option<String> {
    match route.sticky_key.as_ref()? {
        StickyKey::Header(name) => headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        StickyKey::Body(field) => body.sticky_value(field).map(|v| v.into_owned()),
    }
}

/// One request to mirror, with what is needed to rebuild it for the other release.
pub struct MirrorRequest {
    pub route: Arc<Route>,
    pub shape: ApiShape,
    pub served: Arc<Release>,
    pub served_role: Role,
    pub mirror: Arc<Release>,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    /// The client's original body (shared, not copied).
    pub body: Bytes,
    pub stream: bool,
}

/// Runs mirrored requests and hands their scores to the controller.
pub struct Shadow {
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    /// Every mirror task; shutdown closes it and waits for them (bounded by their timeouts).
    tracker: TaskTracker,
    /// Scored samples for the controller; bounded, a full channel drops the sample.
    samples: mpsc::Sender<Sample>,
    observe_max_bytes: usize,
}

impl Shadow {
    pub fn new(
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
        samples: mpsc::Sender<Sample>,
        observe_max_bytes: usize,
    ) -> Self {
        Shadow {
            client,
            metrics,
            tracker,
            samples,
            observe_max_bytes,
        }
    }

    /// Starts mirroring `req` if the route's budget allows. Returns the sender through which the
    /// client's observation is paired with the mirror's; None when the mirror was dropped.
    pub fn start(&self, req: MirrorRequest) -> Option<oneshot::Sender<Observation>> {
        let policy = &req.route.policy;
        let outcome = |o: &str| {
            self.metrics
                .shadow_requests
                .with_label_values(&[&req.route.name, &req.mirror.version_label, o])
                .inc();
        };
        let Ok(permit) = Arc::clone(&policy.inflight).try_acquire_owned() else {
            outcome("dropped_busy");
            return None;
        };
        let tokens_ok = policy.tokens.as_ref().is_none_or(Gcra::has_room);
        if !tokens_ok || !policy.rate.try_acquire(1.0) {
            outcome("dropped_budget");
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let task = MirrorTask {
            client: self.client.clone(),
            metrics: Arc::clone(&self.metrics),
            samples: self.samples.clone(),
            observe_max_bytes: self.observe_max_bytes,
            req,
            _permit: permit,
        };
        self.tracker.spawn(task.run(rx));
        Some(tx)
    }
}

struct MirrorTask {
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    samples: mpsc::Sender<Sample>,
    observe_max_bytes: usize,
    req: MirrorRequest,
    /// Held for the task's life: one slot of the route's `max_inflight`.
    _permit: OwnedSemaphorePermit,
}

impl MirrorTask {
    async fn run(self, client_obs: oneshot::Receiver<Observation>) {
        let req = &self.req;
        let policy = &req.route.policy;
        let noise = rand::random::<f64>() < policy.scoring.noise_floor_share;
        let stable = &req.route.stable;
        let (mirrored, second_stable) = tokio::join!(self.call(&req.mirror), async {
            if noise {
                Some(self.call(stable).await)
            } else {
                None
            }
        });
        let Ok(client) = client_obs.await else {
            // The client went away or its request failed before an answer: nothing to compare.
            self.outcome(&req.mirror, "unpaired");
            return;
        };
        let (reference, candidate) = match req.served_role {
            Role::Stable => (client, mirrored),
            Role::Candidate => (mirrored, client),
        };
        let weights = policy.scoring.weights;
        let (reference, candidate, second_stable, scored) =
            match tokio::task::spawn_blocking(move || {
                let s = score(&reference, &candidate, &weights);
                let n = second_stable
                    .as_ref()
                    .and_then(|o| score(&reference, o, &weights));
                (reference, candidate, second_stable, (s, n))
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
        let (candidate_score, noise_score) = scored;
        let Some(candidate_score) = candidate_score else {
            self.outcome(&req.mirror, "unpaired");
            return;
        };
        let candidate_release = match req.served_role {
            Role::Stable => &req.mirror,
            Role::Candidate => &req.served,
        };
        let errored = candidate.failure.is_some();
        self.outcome(&req.mirror, if errored { "error" } else { "scored" });
        for (name, value) in candidate_score.by_scorer() {
            self.metrics
                .shadow_score
                .with_label_values(&[&req.route.name, name])
                .observe(value);
        }
        let sample = Sample {
            route: req.route.name.clone(),
            candidate_version: candidate_release.version,
            score: candidate_score,
            candidate_error: errored,
            noise: noise_score.map(|s| s.combined),
            request: if policy.scoring.redact_requests {
                None
            } else {
                Some(req.body.clone())
            },
            stable_output: reference,
            candidate_output: candidate,
            second_stable,
        };
        if self.samples.try_send(sample).is_err() {
            tracing::warn!(route = %req.route.name, "controller busy: scored sample dropped");
        }
    }

    fn outcome(&self, release: &Release, outcome: &str) {
        self.metrics
            .shadow_requests
            .with_label_values(&[&self.req.route.name, &release.version_label, outcome])
            .inc();
    }

    /// Sends the request to `release` and reads the whole answer into an observation.
    async fn call(&self, release: &Release) -> Observation {
        let started = Instant::now();
        let obs = self
            .try_call(release, started)
            .await
            .unwrap_or_else(Observation::failed);
        let route = &self.req.route;
        self.metrics
            .shadow_duration
            .with_label_values(&[&route.name, &release.version_label])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.count_tokens(
            &route.name,
            &release.version_label,
            obs.usage.prompt_tokens,
            obs.usage.completion_tokens,
            release.prices,
        );
        if let Some(tokens) = &route.policy.tokens {
            let spent =
                obs.usage.prompt_tokens.unwrap_or(0) + obs.usage.completion_tokens.unwrap_or(0);
            tokens.charge(spent as f64);
        }
        obs
    }

    async fn try_call(&self, release: &Release, started: Instant) -> Result<Observation, Failure> {
        let req = &self.req;
        let timeout = req.route.policy.shadow.timeout;
        let parsed = RequestBody::parse(&req.body).map_err(|_| Failure::Malformed)?;
        let body =
            rewrite_request(req.shape, &parsed, release, true).map_err(|_| Failure::Malformed)?;
        let mut headers = outbound_headers(req.headers.clone(), &release.upstream, true);
        headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
        let upstream_req =
            crate::proxy::build_request(&release.upstream, &req.uri, headers, Bytes::from(body))
                .map_err(|_| Failure::Transport)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let resp = match tokio::time::timeout_at(
            deadline,
            self.client.send(&release.upstream, upstream_req, timeout),
        )
        .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) if e.upstream_kind() == Some("timeout") => return Err(Failure::Timeout),
            Ok(Err(_)) => return Err(Failure::Transport),
            Err(_) => return Err(Failure::Timeout),
        };
        let status = resp.status().as_u16();
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let mut observer = Observer::new(req.shape, sse, self.observe_max_bytes);
        let mut body = resp.into_body();
        let mut ttfb = None;
        let complete = loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(None) => break true,
                Ok(Some(Err(_))) => break false,
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        ttfb.get_or_insert_with(|| started.elapsed());
                        observer.feed(data);
                    }
                }
            }
        };
        let mut obs = observer.finish(status, complete);
        obs.latency = started.elapsed();
        obs.ttfb = ttfb;
        Ok(obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gcra_admits_rate_with_burst() {
        let g = Gcra::new(10.0, 10.0);
        let admitted = (0..100).filter(|_| g.try_acquire(1.0)).count();
        assert!(
            (10..=11).contains(&admitted),
            "burst of 10 admitted {admitted}"
        );
        std::thread::sleep(Duration::from_millis(250));
        let more = (0..100).filter(|_| g.try_acquire(1.0)).count();
        assert!(
            (2..=4).contains(&more),
            "~2.5 refilled in 250 ms, admitted {more}"
        );
    }

    #[test]
    fn gcra_charge_goes_into_debt() {
        let g = Gcra::new(1000.0 / 60.0, 1000.0);
        assert!(g.has_room());
        g.charge(5000.0);
        assert!(!g.has_room());
    }
}
