//! Mirroring: a sampled request is sent again to the other release (the candidate, or stable
//! when the candidate serves), off the client's path, and the two answers are scored once the
//! client's response has completed. Every mirror runs on a `TaskTracker` that shutdown drains,
//! under a per-route budget (concurrency, requests/s, tokens/min) that drops rather than queues.
//!
//! The client's answer reaches the mirror through a [`ClientTap`]: the relay hands over each
//! piece of the body as it passes, and the mirror's task reads the answer whole. The client's
//! path reads only the answer's outcome, as for a request nobody mirrors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::task::TaskTracker;

use crate::domain::Role;
use crate::metrics::Metrics;
use crate::observe::{ApiShape, Failure, Observation, Observer, Usage};
use crate::score::{regression, score, Score};

mod neighbourhood;
mod remote;
mod replay;
mod semantic;
#[cfg(test)]
mod tests;
mod verdict;

pub use replay::{replay, shape_path, Replayed};

use crate::state::{Release, Route};
use crate::telemetry::{LlmSpan, ScorerKind, TraceParent};
use crate::upstream::{
    build_request, outbound_headers, rewrite_request, RequestBody, UpstreamClient, UpstreamError,
    SHADOW_HEADER,
};
use remote::ScorerFailure;

/// One scored comparison from a mirror, for the controller.
pub struct Sample {
    pub route: String,
    pub candidate_version: u32,
    /// Stable's version when the pair was made, and the API the request spoke (for export).
    pub stable_version: u32,
    pub shape: ApiShape,
    pub score: Score,
    /// The LLM judge's reason for its verdict on the candidate, when it judged and gave one.
    pub judge_reason: Option<String>,
    pub candidate_error: bool,
    /// Stable-vs-stable scores, when this request was also used for the noise floor.
    pub noise: Option<Score>,
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
    /// The client request's span when tracing is on: the mirror's and scorers' spans are its
    /// children.
    pub trace: Option<TraceParent>,
}

/// The relay's end of a mirrored request's pairing: the client's answer, passed on as it is
/// relayed. Dropped without [`ClientTap::end`] (the client went away, or its request failed
/// before an answer), it leaves the mirror with nothing to compare: `unpaired`.
pub struct ClientTap(mpsc::UnboundedSender<Tapped>);

/// What a [`ClientTap`] carries, in order: one `Head`, the body's pieces, one `End`.
enum Tapped {
    /// The response head came: the body is SSE (`true`) or JSON.
    Head {
        streaming: bool,
    },
    /// The next piece of the body, as the upstream sent it (a shared, uncopied slice).
    Data(Bytes),
    End(ClientEnd),
}

/// How the client's answer ended, as the relay saw it.
#[derive(Debug, Clone)]
pub struct ClientEnd {
    pub status: u16,
    /// The relay's own failure (the upstream went idle, or reset): it overrides what the body
    /// shows.
    pub failure: Option<Failure>,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
}

impl ClientTap {
    /// The response head came; `streaming`: the body is SSE.
    pub fn head(&self, streaming: bool) {
        // A send fails only when the mirror has ended (shutdown): nothing is waiting.
        let _ = self.0.send(Tapped::Head { streaming });
    }

    /// The next piece of the body, before any rewrite.
    pub fn data(&self, bytes: &Bytes) {
        let _ = self.0.send(Tapped::Data(bytes.clone()));
    }

    /// The body ended (whole, or with the relay's `failure`).
    pub fn end(self, end: ClientEnd) {
        let _ = self.0.send(Tapped::End(end));
    }
}

/// Reads the client's answer whole, as the relay passes it on: what an [`Observer`] fed the body
/// during the relay would have given. None when the tap was dropped before the end.
async fn client_answer(
    mut parts: mpsc::UnboundedReceiver<Tapped>,
    shape: ApiShape,
    max_bytes: usize,
) -> Option<Observation> {
    let mut observer = None;
    while let Some(part) = parts.recv().await {
        match part {
            Tapped::Head { streaming } => {
                observer = Some(Observer::new(shape, streaming, max_bytes));
            }
            Tapped::Data(bytes) => {
                if let Some(observer) = observer.as_mut() {
                    observer.feed(&bytes);
                }
            }
            Tapped::End(end) => {
                let mut obs = observer?.finish(end.status, end.failure.is_none());
                if let Some(failure) = end.failure {
                    obs.failure = Some(failure);
                }
                obs.latency = end.latency;
                obs.ttfb = end.ttfb;
                return Some(obs);
            }
        }
    }
    None
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

    /// Starts mirroring `req` if the route's budget allows. Returns the tap through which the
    /// client's answer reaches the mirror; None when the mirror was dropped.
    pub fn start(&self, req: MirrorRequest) -> Option<ClientTap> {
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
        let (tx, rx) = mpsc::unbounded_channel();
        let task = MirrorTask {
            client: self.client.clone(),
            metrics: Arc::clone(&self.metrics),
            samples: self.samples.clone(),
            observe_max_bytes: self.observe_max_bytes,
            req,
            _permit: Some(permit),
        };
        self.tracker.spawn(task.run(rx));
        Some(ClientTap(tx))
    }
}

/// The remote scorers' values for one sample: (candidate, stable's second answer).
#[derive(Debug, Default)]
struct Remote {
    semantic: (Option<f64>, Option<f64>),
    judge: (Option<f64>, Option<f64>),
    /// The judge's reason for its verdict on the candidate.
    judge_reason: Option<String>,
}

struct MirrorTask {
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    samples: mpsc::Sender<Sample>,
    observe_max_bytes: usize,
    req: MirrorRequest,
    /// Held for the task's life: one slot of the route's `max_inflight` (None for a replayed
    /// case, which is outside the mirror budget: `replay.rs`).
    _permit: Option<OwnedSemaphorePermit>,
}

impl MirrorTask {
    async fn run(self, client_parts: mpsc::UnboundedReceiver<Tapped>) {
        let req = &self.req;
        let policy = &req.route.policy;
        let noise = policy.wants_noise(rand::random::<f64>());
        let stable = &req.route.stable;
        let mirror_role = match req.served_role {
            Role::Stable => Role::Candidate,
            Role::Candidate => Role::Stable,
        };
        // The calls and the remote scorers are boxed: each holds an upstream request's whole
        // state, and inline they made this task's future ~9 KiB, copied whole at every move of
        // the spawn (~70k instructions of memcpy per mirror, benches/README.md). The client's
        // answer is read as it comes, beside them.
        let (mirrored, second_stable, client) = tokio::join!(
            Box::pin(self.call(&req.mirror, mirror_role)),
            async {
                if noise {
                    Some(Box::pin(self.call(stable, Role::Stable)).await)
                } else {
                    None
                }
            },
            client_answer(client_parts, req.shape, self.observe_max_bytes)
        );
        let Some(client) = client else {
            // The client went away or its request failed before an answer: nothing to compare.
            self.outcome(&req.mirror, "unpaired");
            return;
        };
        let (reference, candidate) = match req.served_role {
            Role::Stable => (client, mirrored),
            Role::Candidate => (mirrored, client),
        };
        if req.shape == ApiShape::Embeddings {
            return Box::pin(self.embeddings(reference, candidate, second_stable)).await;
        }
        // The local scorers and the checks: pure, on the blocking pool.
        let weights = policy.scoring.weights;
        let route = Arc::clone(&req.route);
        let local = tokio::task::spawn_blocking(move || {
            let checked = |subject: &Observation| {
                let s = score(&reference, subject, &weights)?;
                let failed = regression(&route.policy.checks, &reference, subject);
                Some((s, failed.map(|c| c.name.clone())))
            };
            let c = checked(&candidate);
            let n = second_stable.as_ref().and_then(checked);
            (reference, candidate, second_stable, c, n)
        })
        .await;
        let Ok((reference, candidate, second_stable, candidate_score, noise_score)) = local else {
            return;
        };
        let Some((candidate_score, failed_check)) = candidate_score else {
            self.outcome(&req.mirror, "unpaired");
            return;
        };
        // The remote scorers, off the client's path: the client's answer is complete.
        let remote = Box::pin(self.remote(
            &reference,
            &candidate,
            second_stable.as_ref(),
            &candidate_score,
        ))
        .await;
        let judge_reason = remote.judge_reason.clone();
        let candidate_score = candidate_score.with_remote(
            remote.semantic.0,
            remote.judge.0,
            failed_check.as_deref(),
            &weights,
        );
        let noise_score = noise_score.map(|(n, failed)| {
            n.with_remote(
                remote.semantic.1,
                remote.judge.1,
                failed.as_deref(),
                &weights,
            )
        });
        if let Some(check) = &candidate_score.failed_check {
            self.metrics
                .check_failures
                .with_label_values(&[&req.route.name, check])
                .inc();
        }
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
            stable_version: req.route.stable.version,
            shape: req.shape,
            score: candidate_score,
            judge_reason,
            candidate_error: errored,
            noise: noise_score,
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

    /// The semantic similarity and the judge's score of the candidate (`.0`) and of stable's
    /// second answer (`.1`, the noise floor), each None when not configured, not applicable
    /// (an answer failed, or has no text) or failed: a scorer's failure is counted, never the
    /// candidate's.
    async fn remote(
        &self,
        reference: &Observation,
        candidate: &Observation,
        second: Option<&Observation>,
        local: &Score,
    ) -> Remote {
        let mut out = Remote::default();
        let policy = &self.req.route.policy;
        if reference.text.is_empty() {
            return out;
        }
        // A candidate that already failed hard scores 0 whatever the scorers say.
        let candidate = (local.hard_failure.is_none() && !candidate.text.is_empty())
            .then_some(candidate.text.as_str());
        let second = second
            .filter(|s| s.failure.is_none() && !s.text.is_empty())
            .map(|s| s.text.as_str());
        let timeout = policy.shadow.timeout;
        if let Some(scorer) = &policy.semantic {
            let subjects: Vec<&str> = candidate.iter().chain(second.iter()).copied().collect();
            if !subjects.is_empty() {
                let span =
                    self.scorer_span(ScorerKind::Semantic, &scorer.upstream, &scorer.cfg.model);
                let result = semantic::similarities(
                    &self.client,
                    scorer,
                    &reference.text,
                    &subjects,
                    timeout,
                )
                .await;
                if let Some(span) = span {
                    let error = result.as_ref().err().map(|e| e.outcome());
                    span.finish_scorer(Usage::default(), error);
                }
                self.scorer_outcome("semantic", result.as_ref().err().copied());
                if let Ok(values) = result {
                    let mut values = values.into_iter();
                    out.semantic.0 = candidate.and_then(|_| values.next());
                    out.semantic.1 = second.and_then(|_| values.next());
                }
            }
        }
        if let Some(scorer) = &policy.judge {
            let request = verdict::last_user_message(self.req.shape, &self.req.body);
            for (is_candidate, subject) in [(true, candidate), (false, second)] {
                let Some(subject) = subject else { continue };
                let subject_first = rand::random::<bool>();
                let span = self.scorer_span(ScorerKind::Judge, &scorer.upstream, &scorer.cfg.model);
                let result = verdict::judge(
                    &self.client,
                    scorer,
                    &request,
                    &reference.text,
                    subject,
                    subject_first,
                    timeout,
                )
                .await;
                if let Some(span) = span {
                    match &result {
                        Ok(judged) => span.finish_scorer(judged.usage, None),
                        Err(e) => span.finish_scorer(Usage::default(), Some(e.outcome())),
                    }
                }
                self.scorer_outcome("judge", result.as_ref().err().copied());
                if let Ok(judged) = result {
                    self.metrics.count_tokens(
                        &self.req.route.name,
                        "judge",
                        judged.usage.prompt_tokens,
                        judged.usage.completion_tokens,
                        scorer.cfg.prices,
                    );
                    if is_candidate {
                        out.judge.0 = Some(judged.score());
                        // The reason names the answers by position: say which was which.
                        let (a, b) = if judged.subject_was_a {
                            ("candidate", "stable")
                        } else {
                            ("stable", "candidate")
                        };
                        out.judge_reason = judged.reason.map(|r| format!("(A = {a}, B = {b}) {r}"));
                    } else {
                        out.judge.1 = Some(judged.score());
                    }
                }
            }
        }
        out
    }

    /// A span for one remote scorer's work, when tracing is on.
    fn scorer_span(
        &self,
        kind: ScorerKind,
        upstream: &crate::state::Upstream,
        model: &str,
    ) -> Option<LlmSpan> {
        let trace = self.req.trace.as_ref()?;
        Some(trace.scorer_call(kind, &self.req.route, upstream, model))
    }

    fn scorer_outcome(&self, scorer: &str, failure: Option<ScorerFailure>) {
        let outcome = failure.map_or("ok", ScorerFailure::outcome);
        self.metrics
            .scorer_calls
            .with_label_values(&[&self.req.route.name, scorer, outcome])
            .inc();
    }

    fn outcome(&self, release: &Release, outcome: &str) {
        self.metrics
            .shadow_requests
            .with_label_values(&[&self.req.route.name, &release.version_label, outcome])
            .inc();
    }

    /// Sends the request to `release` and reads the whole answer into an observation.
    async fn call(&self, release: &Release, role: Role) -> Observation {
        let started = Instant::now();
        let req = &self.req;
        let mut span = req
            .trace
            .as_ref()
            .map(|t| t.mirror_call(req.shape, &req.route, release, role));
        let obs = self
            .try_call(release, started, span.as_mut())
            .await
            .unwrap_or_else(Observation::failed);
        if let Some(span) = span {
            span.finish(&obs, false);
        }
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

    async fn try_call(
        &self,
        release: &Release,
        started: Instant,
        mut span: Option<&mut LlmSpan>,
    ) -> Result<Observation, Failure> {
        let req = &self.req;
        let timeout = req.route.policy.shadow.timeout;
        let parsed = RequestBody::parse(&req.body).map_err(|_| Failure::Malformed)?;
        let body =
            rewrite_request(req.shape, &parsed, release, true).map_err(|_| Failure::Malformed)?;
        let mut headers = outbound_headers(req.headers.clone(), &release.upstream, true);
        headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
        if let Some(span) = span.as_deref() {
            span.inject(&mut headers);
        }
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
                        if let Some(span) = span.as_deref_mut() {
                            span.saw(data);
                        }
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
