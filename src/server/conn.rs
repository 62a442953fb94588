//! Connection hygiene and admission for the proxy listener: what a client connection may hold
//! and for how long, kept apart from the request path (which only sees requests).
//!
//! - [`ConnPermit`]: one of `max_connections`, taken at accept and held by the connection's task.
//! - [`ConnState`] and [`Watched`]: per connection, whether a request is in flight and when its
//!   first byte arrived; [`ConnState::expired`] closes a connection whose request head is slower
//!   than `header_read_timeout` (slowloris) or which has had no request for `idle_timeout`.
//!   Neither runs while a request is in flight, so a long stream making progress is never cut.
//! - [`AdmissionLayer`]: the tower layer in front of the proxy's service. It marks requests in
//!   flight on their connection and takes one of `max_concurrent_requests` permits, shared by all
//!   workers; with none left the request is shed at once with an API-shaped 503. The permit
//!   travels in the response body ([`GuardedBody`]), so a streamed answer holds it to its end.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::domain::{Body, BoxError};
use crate::metrics::{CloseReason, Metrics, RejectReason};
use crate::observe::ApiShape;
use crate::proxy::error_response;

/// The per-connection deadlines (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// One of the `max_connections` slots, held for the connection's life; counts it in
/// `understudy_proxy_connections` meanwhile.
pub struct ConnPermit {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl ConnPermit {
    /// A slot, or None when `max_connections` are open.
    pub fn try_take(slots: &Arc<Semaphore>, metrics: &Arc<Metrics>) -> Option<ConnPermit> {
        let permit = Arc::clone(slots).try_acquire_owned().ok()?;
        metrics.proxy_connections.inc();
        Some(ConnPermit {
            _permit: permit,
            metrics: Arc::clone(metrics),
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.metrics.proxy_connections.dec();
    }
}

/// What is written to a connection refused at accept before it is closed (the client's
/// request is never read, so its API is unknown: OpenAI's shape).
pub static OVER_CAPACITY_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = serde_json::json!({"error": {
        "message": "the proxy is at its connection limit; retry shortly",
        "type": "server_error", "param": null, "code": "overloaded"}})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// One connection's activity, shared by its IO ([`Watched`]), its requests ([`Admission`]) and
/// its watchdog ([`ConnState::expired`]). Times are milliseconds since the connection opened.
/// Plain atomics, no wake-ups: the request path only stores; the watchdog looks when it wakes.
pub struct ConnState {
    opened: Instant,
    /// Requests begun and not yet answered to the end of their body.
    in_flight: AtomicU32,
    /// When the connection last had no request in flight.
    idle_since: AtomicU64,
    /// 1 + when the first byte of the next request head arrived; 0 while none has.
    head_since: AtomicU64,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Release);
        }
    }

    fn bytes_read(&self) {
        if self.head_since.load(Ordering::Acquire) == 0
            && self.in_flight.load(Ordering::Acquire) == 0
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
        }
    }

    /// Resolves when the connection has outstayed its welcome: a request head begun more than
    /// `header_read` ago and still not complete, or no request at all for `idle`. Never while a
    /// request is in flight. It looks at least every `header_read` (nothing wakes it), so a
    /// head is cut between one and two `header_read` after its first byte, an idle connection
    /// at most one `header_read` late.
    pub async fn expired(&self, timeouts: Timeouts) -> CloseReason {
        let step = timeouts.header_read.min(timeouts.idle);
        loop {
            let now = Instant::now();
            let next = if self.in_flight.load(Ordering::Acquire) > 0 {
                now + step
            } else {
                let head = self.head_since.load(Ordering::Acquire);
                let (due, reason) = if head > 0 {
                    (
                        Duration::from_millis(head - 1) + timeouts.header_read,
                        CloseReason::HeaderTimeout,
                    )
                } else {
                    let idle = self.idle_since.load(Ordering::Acquire);
                    (
                        Duration::from_millis(idle) + timeouts.idle,
                        CloseReason::IdleTimeout,
                    )
                };
                let due = self.opened + due;
                if now >= due {
                    return reason;
                }
                due.min(now + step)
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A connection's socket, telling its [`ConnState`] when bytes arrive.
pub struct Watched<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        Watched { inner, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The tower layer of [`Admission`].
#[derive(Clone)]
pub struct AdmissionLayer {
    pub conn: Arc<ConnState>,
    /// `max_concurrent_requests` permits shared by every worker: a request takes one without
    /// waiting (or is shed) and its response body gives it back at its end.
    pub permits: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// Admits a request (in flight on its connection, one concurrency permit) or sheds it with a
/// 503 in the client's API shape. Health endpoints are never shed: a busy proxy is not a dead one.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

/// Marks a request finished on its connection, and frees its concurrency permit, when dropped.
struct RequestGuard {
    conn: Arc<ConnState>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.request_ended();
    }
}

impl<S, B> tower::Service<Request<B>> for Admission<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = AdmissionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let layer = &self.layer;
        layer.conn.request_started();
        let health =
            req.method() == Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz");
        let permit = Arc::clone(&layer.permits).try_acquire_owned().ok();
        if permit.is_none() && !health {
            layer.metrics.request_rejected(RejectReason::Overloaded);
            let shape = (req.method() == Method::POST)
                .then(|| ApiShape::from_path(req.uri().path()))
                .flatten();
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the proxy is at its limit of concurrent requests; retry shortly",
                shape,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return AdmissionFuture {
                inner: None,
                shed: Some(resp),
                guard: Some(RequestGuard {
                    conn: Arc::clone(&layer.conn),
                    _permit: None,
                }),
            };
        }
        AdmissionFuture {
            guard: Some(RequestGuard {
                conn: Arc::clone(&layer.conn),
                _permit: permit,
            }),
            shed: None,
            inner: Some(self.inner.call(req)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an admitted request (its guard moved into the body), or the 503.
    pub struct AdmissionFuture<F> {
        #[pin]
        inner: Option<F>,
        shed: Option<Response<Body>>,
        guard: Option<RequestGuard>,
    }
}

impl<F> Future for AdmissionFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<GuardedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.as_pin_mut() {
            Some(inner) => match inner.poll(cx) {
                Poll::Ready(Ok(resp)) => resp,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            None => match this.shed.take() {
                Some(resp) => resp,
                None => return Poll::Pending,
            },
        };
        let guard = this.guard.take();
        Poll::Ready(Ok(resp.map(|inner| GuardedBody {
            inner,
            _guard: guard,
        })))
    }
}

/// A response body holding its request's guard: the request stays in flight (and keeps its
/// permit) until the body has been sent to its end or dropped.
pub struct GuardedBody {
    inner: Body,
    _guard: Option<RequestGuard>,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn idle_connection_expires_after_the_idle_timeout() {
        let state = ConnState::new();
        let started = Instant::now();
        assert_eq!(state.expired(T).await, CloseReason::IdleTimeout);
        assert_eq!(started.elapsed(), T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_head_has_the_header_timeout() {
        let state = ConnState::new();
        let watch = state.expired(T);
        tokio::pin!(watch);
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut watch)
            .await
            .is_err());
        state.bytes_read();
        let started = Instant::now();
        assert_eq!(watch.await, CloseReason::HeaderTimeout);
        // Seen at the watchdog's next look (every header_read), at most twice the timeout.
        assert!(started.elapsed() >= T.header_read && started.elapsed() <= 2 * T.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_is_in_flight() {
        let state = ConnState::new();
        state.bytes_read();
        state.request_started();
        let watch = state.expired(T);
        tokio::pin!(watch);
        let waited = tokio::time::timeout(Duration::from_secs(3600), &mut watch).await;
        assert!(waited.is_err(), "expired with a request in flight");
        state.request_ended();
        let ended = Instant::now();
        assert_eq!(watch.await, CloseReason::IdleTimeout);
        assert!(ended.elapsed() >= T.idle && ended.elapsed() <= T.idle + T.header_read);
    }
}
