//! Plain-HTTP upstream connections (HTTP/1.1), pooled per worker and driven by the request that
//! holds them.
//!
//! hyper's pooled client gives every connection a task of its own: each response frame is read
//! by that task, handed over a channel and picked up by the client connection's task one turn of
//! the worker's queue later, and every request spawns one more task to put the connection back
//! when it is ready again. Here a connection has no task: the request that checked it out polls
//! it while it waits for the response head ([`Pool::send`]), and the response body polls it while
//! it is read ([`UpstreamBody`]), so the upstream's bytes are read exactly when the proxy can
//! pass them on, by the task that passes them on. When the body has been read to its end the
//! connection goes back to the pool; a body dropped before its end closes it (what is left of
//! that response would otherwise be read as the next one).
//!
//! An idle connection is polled by nobody: one the upstream closed meanwhile is found out at
//! checkout (one poll sees its end), and a request the connection could not take (closed as it
//! was sent, before any byte went out) is sent again once on a new connection, as hyper-util's
//! pool does. Connections idle longer than the idle timeout are closed when met, and all of
//! them whenever one is put back half an idle timeout after the last such sweep.
//!
//! A pool belongs to one worker: its sockets are registered with that worker's runtime, and only
//! that runtime's tasks use them.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::domain::Body;

type Io = TokioIo<TcpStream>;

/// Why a request got no response head from a plain-HTTP upstream.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect failed ({0})")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// One upstream connection: its sending half and the connection itself, which makes progress
/// only while it is polled.
struct Leg {
    tx: http1::SendRequest<Body>,
    /// None once the connection has ended.
    conn: Option<http1::Connection<Io, Body>>,
    /// The waker the connection and its response are polled with.
    wakes: Coalesced,
}

impl Leg {
    /// Whether the connection can take a request now (polled once, so an end the upstream
    /// announced is seen).
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        drive(&mut self.conn, &mut cx) && self.tx.is_ready()
    }

    /// Sends `req` and drives the connection until the response head (or its failure). The
    /// request comes back with the error when none of it was written.
    async fn round_trip(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut sent = pin!(self.tx.try_send_request(req));
        let (conn, wakes) = (&mut self.conn, &self.wakes);
        poll_fn(|cx| {
            wakes.poll(cx, |cx| loop {
                if let Poll::Ready(result) = sent.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                match conn {
                    Some(c) => match Pin::new(&mut *c).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // Ended: the request's callback now holds the reason; poll it again.
                        Poll::Ready(_) => *conn = None,
                    },
                    // hyper answers every request of a connection that has ended.
                    None => return Poll::Pending,
                }
            })
        })
        .await
    }
}

/// Polls the connection in `slot` once (it reads what the upstream sent and writes what is
/// queued); false (and the slot emptied) once it has ended.
fn drive(slot: &mut Option<http1::Connection<Io, Body>>, cx: &mut Context<'_>) -> bool {
    match slot {
        Some(conn) => match Pin::new(conn).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                *slot = None;
                false
            }
        },
        None => false,
    }
}

/// A connection's waker, folding the wakes its own polling causes into the poll in progress.
///
/// hyper wakes the task polling a connection when the connection hands over the response head
/// or a body frame, and again when that task takes the frame (the connection may read on). Here
/// that task is the one polling, in the middle of its poll: each such wake would have the
/// runtime poll the whole client connection once more, for nothing, when this poll is over (on
/// a paced stream, once per event). So the connection and its response are polled with this
/// waker: a wake during the poll is noted and the poll looks again before it returns Pending;
/// only a wake between polls (the upstream's socket, from the runtime's driver) reaches the task.
struct Coalesced {
    wakes: Arc<Wakes>,
    /// `wakes` as a waker, made once so that hyper and the runtime see the same one each poll.
    waker: Waker,
}

struct Wakes {
    state: AtomicU8,
    /// The task's own waker, for wakes between polls.
    task: Mutex<Option<Waker>>,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// Rounds a poll looks again for wakes noted meanwhile before it leaves them to the task.
const MAX_ROUNDS: usize = 8;

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                if let Some(task) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
                    task.wake_by_ref();
                }
            }
        }
    }
}

impl Coalesced {
    fn new() -> Coalesced {
        let wakes = Arc::new(Wakes {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&wakes));
        Coalesced { wakes, waker }
    }

    /// Drops the task's waker (a wake until the next poll reaches nobody).
    fn forget_task(&self) {
        *self.wakes.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Polls `f` with this waker until it is ready, or pending with no wake noted meanwhile.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self.wakes.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(&self.waker);
        let state = &self.wakes.state;
        for _ in 0..MAX_ROUNDS {
            state.store(POLLING, Ordering::Release);
            let polled = f(&mut inner);
            // Ready: the caller polls again before it waits for a wake.
            if polled.is_ready() {
                state.store(IDLE, Ordering::Release);
                return polled;
            }
            if state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

struct Idle {
    leg: Leg,
    since: Instant,
}

#[derive(Default)]
struct Idles {
    by_authority: HashMap<Authority, VecDeque<Idle>>,
    /// When every list was last cleared of expired connections.
    swept: Option<Instant>,
}

/// Idle plain-HTTP connections by upstream authority.
pub struct Pool {
    idle: Mutex<Idles>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Idles::default()),
            connect_timeout,
            idle_timeout,
            max_idle,
        })
    }

    /// Sends `req` (absolute URI, `http` scheme) to `authority` and returns the response whose
    /// body drives the connection.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        origin_form(&mut req, authority);
        // Connecting is boxed: it is rare, and its state would otherwise be part of every
        // request's future while that waits for its answer.
        let (mut leg, mut reused) = match self.checkout(authority) {
            Some(leg) => (leg, true),
            None => (Box::pin(self.connect(authority)).await?, false),
        };
        loop {
            match leg.round_trip(req).await {
                Ok(resp) => {
                    let checked = Checked {
                        leg,
                        pool: Arc::clone(self),
                        authority: authority.clone(),
                    };
                    return Ok(resp.map(|inner| UpstreamBody {
                        inner,
                        leg: Some(checked),
                    }));
                }
                Err(mut e) => match (reused, e.take_message()) {
                    // The idle connection was closed under the request before any of it was
                    // written: once more, on a new connection.
                    (true, Some(again)) => {
                        req = again;
                        leg = Box::pin(self.connect(authority)).await?;
                        reused = false;
                    }
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that can take a request.
    fn checkout(&self, authority: &Authority) -> Option<Leg> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_authority.get_mut(authority)?;
        while let Some(Idle { mut leg, since }) = list.pop_back() {
            if since.elapsed() < self.idle_timeout && leg.reusable() {
                return Some(leg);
            }
        }
        None
    }

    async fn connect(&self, authority: &Authority) -> Result<Leg, PoolError> {
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PoolError::Connect(e)),
            Err(_) => {
                return Err(PoolError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection timed out",
                )))
            }
        };
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Leg {
            tx,
            conn: Some(conn),
            wakes: Coalesced::new(),
        })
    }

    /// Puts a connection whose response has been read to its end back, if it can take another.
    fn put(&self, authority: Authority, mut leg: Leg) {
        if !leg.reusable() {
            return;
        }
        // The task that last polled it may end while the connection waits here: its waker
        // would keep that task's memory alive.
        leg.wakes.forget_task();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Now and then every upstream's expired connections are closed, so that one no request
        // goes to any more does not keep its sockets.
        if idle
            .swept
            .is_none_or(|t| now.duration_since(t) >= self.idle_timeout / 2)
        {
            idle.swept = Some(now);
            let timeout = self.idle_timeout;
            idle.by_authority.retain(|_, list| {
                list.retain(|i| now.duration_since(i.since) < timeout);
                !list.is_empty()
            });
        }
        let list = idle.by_authority.entry(authority).or_default();
        while list
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout)
        {
            list.pop_front();
        }
        if list.len() >= self.max_idle {
            list.pop_front();
        }
        list.push_back(Idle { leg, since: now });
    }
}

/// The request as HTTP/1.1 sends it: the path and query in the request line, the authority in
/// `Host` (its port only when not 80).
fn origin_form(req: &mut Request<Body>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST) {
        let host = match authority.port_u16() {
            Some(80) | None => HeaderValue::from_str(authority.host()),
            Some(_) => HeaderValue::from_str(authority.as_str()),
        };
        if let Ok(host) = host {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    *req.uri_mut() = path;
}

/// A connection checked out of its pool, going back when its response has been read.
struct Checked {
    leg: Leg,
    pool: Arc<Pool>,
    authority: Authority,
}

/// A response body from an upstream. From a plain-HTTP upstream it polls its own connection
/// (see the module's documentation); from hyper-util's pool (HTTPS) it is that pool's body.
pub struct UpstreamBody {
    inner: Incoming,
    /// The connection to drive; None for hyper-util's bodies and once it is back in the pool.
    leg: Option<Checked>,
}

impl UpstreamBody {
    /// A body whose connection a task of hyper-util's pool drives.
    pub fn pooled(inner: Incoming) -> UpstreamBody {
        UpstreamBody { inner, leg: None }
    }

    /// Whether a frame this body does not return yet is one the upstream has not sent: true when
    /// it drives its own connection (a pending poll read the socket), false when the connection's
    /// own task may hold frames not handed over yet.
    pub fn drives_connection(&self) -> bool {
        self.leg.is_some()
    }

    /// Read to its end: the connection goes back to its pool.
    fn release(&mut self) {
        if let Some(Checked {
            leg,
            pool,
            authority,
        }) = self.leg.take()
        {
            pool.put(authority, leg);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    /// A frame the connection has already handed over, else the connection polled once (it hands
    /// over at most one frame a poll) and the body looked at again.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(checked) = &mut this.leg else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        let inner = &mut this.inner;
        let Leg { conn, wakes, .. } = &mut checked.leg;
        let polled = wakes.poll(cx, |cx| {
            let mut driven = false;
            loop {
                match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Pending if !driven => {
                        driven = true;
                        drive(conn, cx);
                    }
                    polled => return polled,
                }
            }
        });
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.leg = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Read to its end without a last poll (a body of known length): still reusable.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A task's waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (Arc::clone(&count), Waker::from(count))
    }

    #[test]
    fn a_wake_during_the_poll_is_a_second_look_not_a_second_poll() {
        let (count, waker) = task();
        let coalesced = Coalesced::new();
        let mut cx = Context::from_waker(&waker);
        let mut looks = 0;
        // The first look wakes itself (as hyper does when a frame is handed over) and finds
        // nothing yet; the second finds it.
        let polled = coalesced.poll(&mut cx, |cx| {
            looks += 1;
            if looks == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(7)
            }
        });
        assert_eq!(polled, Poll::Ready(7));
        assert_eq!(looks, 2);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "the task was woken for nothing"
        );
    }

    #[test]
    fn a_wake_between_polls_reaches_the_task() {
        let (count, waker) = task();
        let coalesced = Coalesced::new();
        let mut cx = Context::from_waker(&waker);
        let mut registered = None;
        let polled: Poll<()> = coalesced.poll(&mut cx, |cx| {
            registered = Some(cx.waker().clone());
            Poll::Pending
        });
        assert_eq!(polled, Poll::Pending);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // The socket becomes readable after the poll returned: the task must hear of it.
        registered.unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_poll_that_keeps_waking_itself_hands_over_to_the_task() {
        let (count, waker) = task();
        let coalesced = Coalesced::new();
        let mut cx = Context::from_waker(&waker);
        let mut looks = 0;
        let polled: Poll<()> = coalesced.poll(&mut cx, |cx| {
            looks += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(polled, Poll::Pending);
        assert_eq!(looks, MAX_ROUNDS);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the task must be polled again"
        );
    }

    #[test]
    fn a_forgotten_task_is_not_kept_alive_nor_woken() {
        let (count, waker) = task();
        let coalesced = Coalesced::new();
        let mut registered = None;
        let mut cx = Context::from_waker(&waker);
        let _: Poll<()> = coalesced.poll(&mut cx, |cx| {
            registered = Some(cx.waker().clone());
            Poll::Pending
        });
        drop(waker);
        coalesced.forget_task();
        assert_eq!(
            Arc::strong_count(&count),
            1,
            "the pool would keep the task's memory"
        );
        registered.unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_latest_task_waker_is_the_one_woken() {
        let (first, first_waker) = task();
        let (second, second_waker) = task();
        let coalesced = Coalesced::new();
        let mut registered = None;
        for waker in [&first_waker, &second_waker] {
            let mut cx = Context::from_waker(waker);
            let _: Poll<()> = coalesced.poll(&mut cx, |cx| {
                registered = Some(cx.waker().clone());
                Poll::Pending
            });
        }
        registered.unwrap().wake_by_ref();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }
}
