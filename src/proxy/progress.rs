//! The request leg's progress deadline: a client body that sends nothing for `body_timeout` ends
//! with an error (and says so through a flag), so a trickled or abandoned upload cannot hold a
//! request, its worker's memory and a concurrency permit forever. The deadline is between
//! frames, not on the whole body: a large upload that keeps moving is never cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::domain::BoxError;

/// A client body with a deadline between its frames.
pub struct ProgressBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// When the last frame arrived; the timer is re-armed from it only when it fires, so a fast
    /// body does not touch the timer wheel on every frame.
    last_frame: Instant,
    /// Set when the deadline cut the body: the caller tells a stall from other body errors.
    stalled: Arc<AtomicBool>,
}

/// The client's body sent nothing for longer than the deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body sent nothing for {0:?}")]
pub struct BodyStalled(Duration);

impl ProgressBody {
    pub fn new(inner: Incoming, timeout: Duration, stalled: Arc<AtomicBool>) -> Self {
        ProgressBody {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            last_frame: Instant::now(),
            stalled,
        }
    }
}

impl HttpBody for ProgressBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.last_frame = Instant::now();
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        loop {
            if this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last_frame + this.timeout;
            if Instant::now() >= due {
                this.stalled.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BodyStalled(this.timeout).into())));
            }
            this.deadline.as_mut().reset(due);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
