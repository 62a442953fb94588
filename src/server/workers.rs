//! Proxy workers, one per core: each is a thread with a single-threaded runtime, its own
//! upstream connection pool and its own mirror client. The acceptor (on the main runtime) hands
//! each accepted connection to the next worker in turn, and the connection lives on that worker
//! from then on: the client's connection, its upstream connection and the response between them
//! are polled by one thread, with no cross-thread wake-ups or work stealing on the hot path.
//! Route state, metrics, mirror budgets and the controller's queues are shared by all workers.

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

use super::conn::{AdmissionLayer, ConnPermit, ConnState, Timeouts, Watched};
use crate::metrics::CloseReason;
use crate::proxy::Proxy;

/// Connections waiting for a worker; past it the acceptor waits (backpressure, not loss).
const HANDOFF_QUEUE: usize = 1024;

/// A connection handed to a worker, with the graceful-shutdown watcher taken when it was
/// accepted (so a shutdown that starts while it is queued still waits for it).
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub watcher: Watcher,
    /// The connection's slot of `max_connections`, freed when its task ends.
    pub permit: ConnPermit,
}

/// What every proxy connection is held to, shared by the workers.
#[derive(Clone)]
pub struct Hygiene {
    pub timeouts: Timeouts,
    /// `max_concurrent_requests` permits, one global pool across the workers (a per-worker
    /// share would shed on one busy worker while another idles).
    pub permits: Arc<Semaphore>,
    /// Cancelled when the shutdown grace period is over: every connection still open is cut.
    pub cut: CancellationToken,
    /// Cancelled when shutdown begins: a connection whose client has not spoken yet is closed.
    pub stopping: CancellationToken,
}

/// The running workers.
pub struct Workers {
    senders: Vec<mpsc::Sender<Handoff>>,
    next: usize,
    threads: Vec<JoinHandle<()>>,
    /// Cancelled once every connection and mirror has finished (or the grace period ran out):
    /// the workers' runtimes then stop.
    release: CancellationToken,
}

impl Workers {
    /// Starts `count` workers; `make_proxy` builds each worker's proxy inside its runtime (so its
    /// connection pool's tasks run there). Connections are spawned on `connections`.
    pub fn start<F>(
        count: usize,
        connections: &TaskTracker,
        hygiene: &Hygiene,
        make_proxy: F,
    ) -> std::io::Result<Workers>
    where
        F: Fn() -> Proxy + Send + Sync + 'static,
    {
        let make_proxy = Arc::new(make_proxy);
        let mut workers = Workers {
            senders: Vec::with_capacity(count),
            next: 0,
            threads: Vec::with_capacity(count),
            release: CancellationToken::new(),
        };
        for i in 0..count {
            let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
            let make_proxy = Arc::clone(&make_proxy);
            let connections = connections.clone();
            let hygiene = hygiene.clone();
            let release = workers.release.clone();
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    std::thread::Builder::new()
                        .name(format!("understudy-proxy-{i}"))
                        .spawn(move || {
                            runtime.block_on(async move {
                                let proxy = Arc::new(make_proxy());
                                serve(rx, proxy, &connections, hygiene).await;
                                // Accepting is over; this runtime keeps polling its connections
                                // and mirrors until the server has waited for them.
                                release.cancelled().await;
                            });
                        })
                });
            match started {
                Ok(thread) => {
                    workers.senders.push(tx);
                    workers.threads.push(thread);
                }
                Err(e) => {
                    // The workers already running have no connection yet: stop them now.
                    workers.close();
                    workers.release.cancel();
                    for t in workers.threads.drain(..) {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// Hands `conn` to the next worker in turn. A worker that has gone (it can only stop after
    /// shutdown began) leaves the connection to be closed.
    pub async fn dispatch(&mut self, conn: Handoff) {
        let i = self.next;
        self.next = (i + 1) % self.senders.len();
        if self.senders[i].send(conn).await.is_err() {
            tracing::warn!(worker = i, "proxy worker is gone; connection closed");
        }
    }

    /// Stops handing out connections: each worker's queue drains and its accept side ends.
    pub fn close(&mut self) {
        self.senders.clear();
    }

    /// Stops the workers' runtimes and waits for their threads to end.
    pub async fn stop(self) {
        self.release.cancel();
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a proxy worker panicked");
                }
            }
        });
        let _ = joined.await;
    }
}

/// The HTTP/2 connection preface: what a client speaking HTTP/2 over plain TCP (h2c, prior
/// knowledge) sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The builders a connection is served with: one per protocol, chosen from the client's first
/// bytes, and the one that reads them itself when they do not tell yet.
struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    detect: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Builders {
        Builders {
            h1: auto::Builder::new(TokioExecutor::new()).http1_only(),
            h2: auto::Builder::new(TokioExecutor::new()).http2_only(),
            detect: auto::Builder::new(TokioExecutor::new()),
        }
    }

    /// The builder for `stream`, from its first bytes, peeked (left in the socket). The detecting
    /// builder would read them into a buffer of its own and hand them back to HTTP/1 first, on
    /// their own: the request head then arrives in two reads, and the connection's read buffer
    /// grows to twice its size for as long as the connection lives.
    async fn pick(&self, stream: &tokio::net::TcpStream) -> &auto::Builder<TokioExecutor> {
        let mut first = [0u8; H2_PREFACE.len()];
        match stream.peek(&mut first).await {
            Ok(n) if n > 0 && !H2_PREFACE.starts_with(&first[..n]) => &self.h1,
            Ok(n) if n == H2_PREFACE.len() => &self.h2,
            // A part of the preface, the end of the stream or an error: the detecting builder
            // reads what comes (and meets the end or the error itself).
            _ => &self.detect,
        }
    }
}

/// Serves every connection handed to this worker, until the acceptor closes its queue.
async fn serve(
    mut rx: mpsc::Receiver<Handoff>,
    proxy: Arc<Proxy>,
    connections: &TaskTracker,
    hygiene: Hygiene,
) {
    let builders = Arc::new(Builders::new());
    while let Some(Handoff {
        stream,
        watcher,
        permit,
    }) = rx.recv().await
    {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not register a connection");
                continue;
            }
        };
        let state = ConnState::new();
        let service = ServiceBuilder::new()
            .layer(AdmissionLayer {
                conn: Arc::clone(&state),
                permits: Arc::clone(&hygiene.permits),
                metrics: Arc::clone(&proxy.metrics),
            })
            .service(tower::service_fn({
                let proxy = Arc::clone(&proxy);
                move |req| Arc::clone(&proxy).handle(req)
            }));
        let metrics = Arc::clone(&proxy.metrics);
        let (timeouts, cut) = (hygiene.timeouts, hygiene.cut.clone());
        let mut task = connections.spawn({
            let (builders, state) = (Arc::clone(&builders), Arc::clone(&state));
            let stopping = hygiene.stopping.clone();
            async move {
                // The graceful-shutdown watcher only reaches a connection once it is served.
                let builder = tokio::select! {
                    builder = builders.pick(&stream) => builder,
                    () = stopping.cancelled() => return,
                };
                let conn = builder
                    .serve_connection(
                        TokioIo::new(Watched::new(stream, state)),
                        TowerToHyperService::new(service),
                    )
                    .into_owned();
                log_end(watcher.watch(conn)).await;
                drop(permit);
            }
        });
        // The connection's watchdog, a task of its own so that the connection's task polls
        // nothing else: it wakes only at deadlines, and cuts the connection when one passes or
        // when shutdown's grace is over.
        connections.spawn(async move {
            let reason = tokio::select! {
                _ = &mut task => return,
                reason = state.expired(timeouts) => reason,
                () = cut.cancelled() => CloseReason::Shutdown,
            };
            task.abort();
            metrics.connection_closed(reason);
        });
    }
}

/// Runs a connection to its end, logging (at debug) how it failed, if it did.
pub(crate) async fn log_end<E: std::fmt::Display>(conn: impl Future<Output = Result<(), E>>) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
