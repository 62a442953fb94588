//! Mirroring: a sampled request is sent again to the other release (the candidate, or stable
//! when the candidate serves), off the client's path, and the two answers are scored once the
//! client's response has completed. Every mirror runs on a `TaskTracker` that shutdown drains,
//! under a per-route budget (concurrency, requests/s, tokens/min) that drops rather than queues.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::task::TaskTracker;

use crate::domain::Role;
use crate::metrics::Metrics;
use crate::observe::{ApiShape, Failure, Observation, Observer};
use crate::score::{score, Score};
use crate::state::{Release, Route};
use crate::upstream::{
    build_request, outbound_headers, rewrite_request, RequestBody, UpstreamClient, UpstreamError,
    SHADOW_HEADER,
};

/// One scored comparison from a mirror, for the controller.
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
        let permit = match req.route.policy.admit() {
            Ok(permit) => permit,
            Err(refusal) => {
                self.metrics
                    .shadow_requests
                    .with_label_values(&[
                        &req.route.name,
                        &req.mirror.version_label,
                        refusal.outcome(),
                    ])
                    .inc();
                return None;
            }
        };
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
        let (reference, candidate, scored) = match tokio::task::spawn_blocking(move || {
            let s = score(&reference, &candidate, &weights);
            let n = second_stable
                .as_ref()
                .and_then(|o| score(&reference, o, &weights));
            (reference, candidate, (s, n))
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
        let spent = obs.usage.prompt_tokens.unwrap_or(0) + obs.usage.completion_tokens.unwrap_or(0);
        route.policy.charge_tokens(spent);
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
        let upstream_req = build_request(&release.upstream, &req.uri, headers, Bytes::from(body))
            .map_err(|_| Failure::Transport)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let resp = match tokio::time::timeout_at(
            deadline,
            self.client.send(&release.upstream, upstream_req, timeout),
        )
        .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(UpstreamError::Timeout { .. })) => return Err(Failure::Timeout),
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
