//! The response leg: the upstream's body passed to the client as it arrives (what one poll finds
//! already read goes out as one frame, nothing waits for more), with the `model` alias put
//! back, observed on the side, and an idle deadline between frames.
//! When the body ends (or the client goes away) the request is recorded exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

use crate::domain::BoxError;
use crate::metrics::{Metrics, RequestRecord, NO_RELEASE, UNROUTED};
use crate::observe::{Failure, Observation, Observer};
use crate::shadow::{ClientEnd, ClientTap};
use crate::state::{Release, Route};
use crate::telemetry::LlmSpan;
use crate::upstream::{ModelRewriter, UpstreamBody};

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
    /// The mirror reading the client's answer to score against, fed each piece as it is relayed.
    /// Dropped unended when the client disconnects early: no sample.
    pub paired: Option<ClientTap>,
    /// The request's span when tracing is on; ended with the recording.
    pub span: Option<LlmSpan>,
}

/// The body of a response relayed from an upstream.
pub struct RelayBody {
    inner: UpstreamBody,
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
    /// Frames read and not yet returned: see `poll_frame`.
    batch: Batch,
    /// Turns yielded since the last frame came, waiting for the upstream connection to hand
    /// over what it already holds (at most `YIELDS`, then the batch goes out).
    yields: u8,
    /// What comes after the frame just returned (an error or trailers read in the same poll as
    /// data), returned by the next poll.
    held: Option<Result<Frame<Bytes>, BoxError>>,
    /// A turn has been yielded before returning a held error: see `poll_frame`.
    flushed_before_error: bool,
}

/// The upstream went quiet for longer than the deadline in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct IdleTimeout(Duration);

impl RelayBody {
    pub fn new(
        inner: UpstreamBody,
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
            batch: Batch::default(),
            yields: 0,
            held: None,
            flushed_before_error: false,
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
        if let Some(f) = &failure {
            obs.failure = Some(f.clone());
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
        if let (Some(tap), false) = (done.paired, cancelled) {
            tap.end(ClientEnd {
                status: done.status,
                failure,
                latency,
                ttfb: self.ttfb,
            });
        }
    }
}

/// Turns of the worker's queue a gathered batch waits for hyper-util's connection task to hand
/// over a frame it already holds: it takes two (measured: one turn never sees it).
const YIELDS: u8 = 2;

/// A frame closer than this to the previous one is taken as part of a burst, worth looking for
/// more behind it; models space their tokens by milliseconds.
const BURST_GAP: Duration = Duration::from_millis(1);

/// Most bytes gathered into one frame from frames the upstream had already delivered.
const MAX_BATCH: usize = 64 * 1024;

/// Frames read and not yet returned, joined into one for the client (one chunk, one write).
#[derive(Default)]
struct Batch {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Batch {
    fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        match (&mut self.first, &mut self.more) {
            (None, _) => self.first = Some(bytes),
            (Some(first), None) => {
                let mut more = BytesMut::with_capacity(first.len() + bytes.len());
                more.extend_from_slice(first);
                more.extend_from_slice(&bytes);
                self.more = Some(more);
            }
            (Some(_), Some(more)) => more.extend_from_slice(&bytes),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn len(&self) -> usize {
        match (&self.first, &self.more) {
            (_, Some(more)) => more.len(),
            (Some(first), None) => first.len(),
            (None, None) => 0,
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        let first = self.first.take();
        match self.more.take() {
            Some(more) => Some(more.freeze()),
            None => first,
        }
    }
}

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    /// Relays what the upstream has delivered, gathering what is already read into one frame
    /// (one chunk, one write to the client, however many events the upstream's read held).
    ///
    /// A body from a plain-HTTP upstream drives its own connection (`upstream/pool.rs`): a
    /// pending poll means the socket had nothing more, so the batch goes out at once. hyper-util's
    /// pooled client (https) hands a body over one frame at a time from a task of its own, which
    /// must run to hand over the next one. So for those, when a frame came within `BURST_GAP` of
    /// the previous one (or of the response head) and the next is not there yet, this yields
    /// (waking itself, behind that task) and looks again, at most `YIELDS` times: a frame the
    /// upstream connection already holds joins the batch, and when nothing more is there the
    /// batch goes out. Nothing waits for the upstream to send more: the cost is at most two turns
    /// of the worker's queue, and none for a frame that came after a pause (a paced stream's
    /// next token).
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            // hyper writes what it was given (the head, the frames before) only once the body
            // yields, and drops it when the body fails: one turn first, so that the client gets
            // all the upstream sent before the failure.
            if held.is_err() && !this.flushed_before_error {
                this.flushed_before_error = true;
                this.held = Some(held);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(held));
        }
        let mut now = None;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            if this.batch.len() >= MAX_BATCH {
                return Poll::Ready(this.batch.take().map(|b| Ok(Frame::data(b))));
            }
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let frame = match polled {
                Poll::Pending if !this.batch.is_empty() => {
                    // A body that drives its own connection has read everything there was.
                    if this.yields < YIELDS && !this.inner.drives_connection() {
                        this.yields += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.yields = 0;
                    return Poll::Ready(this.batch.take().map(|b| Ok(Frame::data(b))));
                }
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
                    if let Some(rest) = this.rewriter.as_mut().and_then(ModelRewriter::finish) {
                        this.batch.push(rest);
                    }
                    this.complete(None, false);
                    return Poll::Ready(this.batch.take().map(|b| Ok(Frame::data(b))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.complete(Some(Failure::Transport), false);
                    this.held = Some(Err(Box::new(e)));
                    if let Some(out) = this.batch.take() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    this.flushed_before_error = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // The clock is read once per poll: the frames one poll gathers arrived together.
            let now = *now.get_or_insert_with(tokio::time::Instant::now);
            // A frame right behind the last one is part of a burst (a read that held several
            // events): look for more before sending. One after a pause (a model's next token)
            // goes out as soon as it is read, with no turn spent looking.
            this.yields = if now - this.last_frame < BURST_GAP {
                0
            } else {
                YIELDS
            };
            this.last_frame = now;
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => {
                    return Poll::Ready(Some(Ok(match this.batch.take() {
                        Some(out) => {
                            this.held = Some(Ok(trailers));
                            Frame::data(out)
                        }
                        None => trailers,
                    })));
                }
            };
            if this.ttfb.is_none() {
                if let Some(done) = &this.completion {
                    this.ttfb = Some(done.started.elapsed());
                }
            }
            if let Some(obs) = &mut this.observer {
                obs.feed(&data);
            }
            if let Some(done) = &mut this.completion {
                if let Some(tap) = &done.paired {
                    tap.data(&data);
                }
                if let Some(span) = &mut done.span {
                    span.saw(&data);
                }
            }
            match &mut this.rewriter {
                Some(rw) => {
                    if let Some(out) = rw.push(data) {
                        this.batch.push(out);
                    }
                }
                None => this.batch.push(data),
            }
            // A body of known length is not polled again once it is all read: end it here.
            if this.inner.is_end_stream() {
                this.ended = true;
                if let Some(rest) = this.rewriter.as_mut().and_then(ModelRewriter::finish) {
                    this.batch.push(rest);
                }
                this.complete(None, false);
                return Poll::Ready(this.batch.take().map(|b| Ok(Frame::data(b))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_none()
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
