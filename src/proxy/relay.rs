//! The response leg: the upstream's body passed to the client frame by frame as it arrives,
//! with the `model` alias put back, observed on the side, and an idle deadline between frames.
//! When the body ends (or the client goes away) the request is recorded exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::domain::BoxError;
use crate::metrics::{Metrics, RequestRecord, NO_RELEASE, UNROUTED};
use crate::observe::{Failure, Observation, Observer};
use crate::state::{Release, Route};
use crate::telemetry::LlmSpan;
use crate::upstream::ModelRewriter;

/// Who the finished request is reported to.
pub struct Completion {
    pub metrics: Arc<Metrics>,
    /// None for requests that match no route.
    pub route: Option<Arc<Route>>,
    /// None for requests no release served.
    pub release: Option<Arc<Release>>,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    /// The mirrored request waits here for the client's observation to score against.
    /// Dropped unsent when the client disconnects early: no sample.
    pub paired: Option<oneshot::Sender<Observation>>,
    /// The request's span when tracing is on; ended with the recording.
    pub span: Option<LlmSpan>,
}

/// The body of a response relayed from an upstream.
pub struct RelayBody {
    inner: Incoming,
    rewriter: Option<ModelRewriter>,
    observer: Option<Observer>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// When the last frame arrived. The timer is re-armed from it only when it fires, so a
    /// busy stream does not touch the timer wheel on every frame.
    last_frame: tokio::time::Instant,
    ttfb: Option<Duration>,
    /// Set until the request has been recorded; taken by the first ending.
    completion: Option<Completion>,
    ended: bool,
}

/// The upstream went quiet for longer than the deadline in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct IdleTimeout(Duration);

impl RelayBody {
    pub fn new(
        inner: Incoming,
        rewriter: Option<ModelRewriter>,
        observer: Option<Observer>,
        idle_timeout: Duration,
        completion: Completion,
    ) -> Self {
        RelayBody {
            inner,
            rewriter,
            observer,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            last_frame: tokio::time::Instant::now(),
            ttfb: None,
            completion: Some(completion),
            ended: false,
        }
    }

    fn complete(&mut self, failure: Option<Failure>, cancelled: bool) {
        let Some(done) = self.completion.take() else {
            return;
        };
        let latency = done.started.elapsed();
        let mut obs = match self.observer.take() {
            Some(o) => o.finish(done.status, failure.is_none() && !cancelled),
            None => Observation {
                status: done.status,
                ..Default::default()
            },
        };
        if let Some(f) = failure {
            obs.failure = Some(f);
        }
        obs.latency = latency;
        obs.ttfb = self.ttfb;
        let error_kind = match &obs.failure {
            _ if cancelled => None,
            Some(Failure::Timeout) => Some("timeout"),
            Some(Failure::Transport) => Some("reset"),
            Some(Failure::Malformed) => Some("malformed"),
            Some(Failure::Status(s)) if *s >= 500 => Some("status"),
            _ => None,
        };
        let series = match (&done.route, &done.release) {
            (Some(route), Some(release)) => Some(release.series(&done.metrics, &route.name)),
            _ => None,
        };
        let traced = done.span.as_ref().map(LlmSpan::enter);
        done.metrics.request_finished(&RequestRecord {
            series,
            route: done.route.as_ref().map_or(UNROUTED, |r| r.name.as_str()),
            release: done
                .release
                .as_ref()
                .map_or(NO_RELEASE, |r| r.version_label.as_str()),
            method: &done.method,
            path: &done.path,
            status: done.status,
            duration: latency,
            ttfb: self.ttfb,
            error_kind,
            prompt_tokens: obs.usage.prompt_tokens,
            completion_tokens: obs.usage.completion_tokens,
            prices: done.release.as_ref().and_then(|r| r.prices),
            cancelled,
        });
        drop(traced);
        if let Some(span) = done.span {
            span.finish(&obs, cancelled);
        }
        if let (Some(tx), false) = (done.paired, cancelled) {
            let _ = tx.send(obs);
        }
    }
}

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let frame = match polled {
                Poll::Pending => {
                    ready!(this.idle.as_mut().poll(cx));
                    let deadline = this.last_frame + this.idle_timeout;
                    if deadline > tokio::time::Instant::now() {
                        this.idle.as_mut().reset(deadline);
                        continue;
                    }
                    this.ended = true;
                    this.complete(Some(Failure::Timeout), false);
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(this.idle_timeout)))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let rest = this.rewriter.as_mut().and_then(ModelRewriter::finish);
                    this.complete(None, false);
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.complete(Some(Failure::Transport), false);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            this.last_frame = tokio::time::Instant::now();
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            if this.ttfb.is_none() {
                if let Some(done) = &this.completion {
                    this.ttfb = Some(done.started.elapsed());
                }
            }
            if let Some(obs) = &mut this.observer {
                obs.feed(&data);
            }
            if let Some(span) = this.completion.as_mut().and_then(|c| c.span.as_mut()) {
                span.saw(&data);
            }
            let mut out = match &mut this.rewriter {
                Some(rw) => rw.push(data),
                None => Some(data),
            };
            // A body of known length is not polled again once it is all read: end it here.
            if this.inner.is_end_stream() {
                this.ended = true;
                if let Some(rest) = this.rewriter.as_mut().and_then(ModelRewriter::finish) {
                    out = Some(match out {
                        Some(head) => [head, rest].concat().into(),
                        None => rest,
                    });
                }
                this.complete(None, false);
                return Poll::Ready(out.map(|b| Ok(Frame::data(b))));
            }
            if let Some(out) = out {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.rewriter {
            // A rewritten body's length is not known in advance.
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the server shut down).
        self.complete(None, true);
    }
}
