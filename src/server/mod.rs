//! Assembly and lifecycle: builds the runtime state from the configuration, starts the
//! controller, serves the proxy and admin listeners, and shuts down in order: stop accepting,
//! let in-flight responses finish within the grace period, drain the mirrors, stop the
//! controller, all within the grace period (connections still open when it ends are cut).
//! `run` takes bound listeners and a shutdown future, so tests run it on port 0.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod conn;
mod reload;
mod workers;

use conn::{ConnPermit, Timeouts, OVER_CAPACITY_RESPONSE};
pub use reload::ReloadFrom;
use reload::{Reloader, RELOAD_QUEUE};
use workers::{log_end, Handoff, Hygiene, Workers};

use crate::admin::{Admin, Listings, Replayer};
use crate::config::Config;
use crate::control::{Controller, PgStore, Replica, SqliteStore, Store};
use crate::metrics::Metrics;
use crate::proxy::{Limits, Proxy};
use crate::shadow::Shadow;
use crate::state::Upstream;
use crate::telemetry::Exporter;
use crate::upstream::{self, UpstreamClient};

/// Bound on output text kept per observation.
const OBSERVE_MAX_BYTES: usize = 256 * 1024;
/// Admin commands waiting for the controller.
const CONTROL_QUEUE: usize = 64;
/// Scored samples waiting for the controller; past it, samples are dropped (and logged).
const SAMPLE_QUEUE: usize = 4096;
/// File descriptors kept out of the proxy's caps: the admin listener and its connections, the
/// store (database, WAL, shared memory), stdio, the runtimes' epoll and wake-up descriptors.
/// Mirrors' upstream connections (each route's `shadow.max_inflight`) are reserved on top.
const FD_RESERVE: usize = 128;
/// After the grace period, how long cut connections get to drop their sockets.
const CUT_WAIT: Duration = Duration::from_millis(200);
/// Longest pause between accept attempts while accepting fails (out of descriptors).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Setup(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// The two bound listeners.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of the configuration.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Listeners {
            proxy: TcpListener::bind(config.server.listen).await?,
            admin: TcpListener::bind(config.admin.listen).await?,
        })
    }
}

/// The configured upstreams, their credentials read through `secret`.
pub fn upstreams(
    config: &Config,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Arc<Upstream>>, ServerError> {
    config
        .upstreams
        .iter()
        .map(|(name, cfg)| {
            let u = Upstream::from_config(cfg, secret).map_err(ServerError::Setup)?;
            Ok((name.clone(), Arc::new(u)))
        })
        .collect()
}

/// Runs the server on the store of `config.store` until `shutdown` resolves, then shuts down in
/// order. A store another server holds (one writer per file) is refused before anything starts.
pub async fn run(
    config: Config,
    listeners: Listeners,
    secret: impl Fn(&str) -> Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_reloading(config, None, listeners, secret, shutdown).await
}

/// [`run`], and with `reload`, re-reads that file on SIGHUP and `POST /admin/reload`
/// (`reload.rs`); without it, `POST /admin/reload` answers 409.
pub async fn run_reloading(
    config: Config,
    reload: Option<ReloadFrom>,
    listeners: Listeners,
    secret: impl Fn(&str) -> Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = open_store(&config, &listeners, &secret).await?;
    serve(config, listeners, secret, shutdown, store, reload).await
}

/// The store of `config.store`: the SQLite file, or PostgreSQL (`url`) shared by a fleet.
async fn open_store(
    config: &Config,
    listeners: &Listeners,
    secret: &impl Fn(&str) -> Option<String>,
) -> Result<Box<dyn Store>, ServerError> {
    Ok(match &config.store.postgres {
        None => Box::new(
            SqliteStore::open(&config.store.path).map_err(|e| ServerError::Setup(e.to_string()))?,
        ),
        Some(pg) => {
            let password = match &pg.password_env {
                Some(name) => Some(secret(name).ok_or_else(|| {
                    ServerError::Setup(format!(
                        "store.password_env: environment variable {name} is not set"
                    ))
                })?),
                None => None,
            };
            let admin = listeners
                .admin
                .local_addr()
                .map_err(|e| ServerError::Setup(format!("admin listener: {e}")))?;
            let replica = Replica {
                id: format!("{}:{}", host_name(), admin.port()),
                address: admin.to_string(),
            };
            // Connecting and migrating wait on the network: off the async workers.
            let url = pg.url.clone();
            let store = tokio::task::spawn_blocking(move || PgStore::open(&url, password, replica))
                .await
                .map_err(|e| ServerError::Setup(format!("store: {e}")))?
                .map_err(|e| ServerError::Setup(e.to_string()))?;
            Box::new(store)
        }
    })
}

/// This machine's name, for the replica's id in a fleet.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// [`run`] on an already opened store (`config.store` is not opened): the seam for another
/// backend, and for tests that inject store faults.
pub async fn run_with_store(
    config: Config,
    listeners: Listeners,
    secret: impl Fn(&str) -> Option<String>,
    shutdown: impl Future<Output = ()>,
    store: Box<dyn Store>,
) -> Result<(), ServerError> {
    serve(config, listeners, secret, shutdown, store, None).await
}

/// The server on `store` until `shutdown`: what [`run`], [`run_reloading`] and
/// [`run_with_store`] share; with `reload`, the reloader runs beside the listeners.
async fn serve(
    config: Config,
    listeners: Listeners,
    secret: impl Fn(&str) -> Option<String>,
    shutdown: impl Future<Output = ()>,
    store: Box<dyn Store>,
    reload: Option<ReloadFrom>,
) -> Result<(), ServerError> {
    let hangups = reload::hangups(reload.as_ref());
    let token = secret(&config.admin.token_env).filter(|t| !t.is_empty());
    if token.is_none() {
        return Err(ServerError::Setup(format!(
            "admin.token_env: environment variable {} is not set (the admin API needs a token)",
            config.admin.token_env
        )));
    }
    let upstreams = upstreams(&config, &secret)?;
    let default_upstream = upstreams
        .get(&config.default_upstream)
        .cloned()
        .ok_or_else(|| {
            ServerError::Setup(format!(
                "unknown default upstream {:?}",
                config.default_upstream
            ))
        })?;
    let extra_roots: Vec<_> = config
        .upstreams
        .values()
        .filter_map(|u| u.ca_file.as_ref())
        .flat_map(|ca| ca.certs.iter().cloned())
        .collect();
    let tls = upstream::tls_config(&extra_roots)
        .map_err(|e| ServerError::Setup(format!("upstream TLS: {e}")))?;
    // Traces, when the OTEL_* variables ask for them: exported with the upstreams' TLS roots.
    let (telemetry, exporter) = Exporter::from_env(tls.clone())
        .map_err(|e| ServerError::Setup(e.to_string()))?
        .unzip();
    let metrics =
        Arc::new(Metrics::new().map_err(|e| ServerError::Setup(format!("metrics: {e}")))?);
    let running_upstreams = upstreams.clone();
    let controller = Controller::start(
        &config,
        store,
        upstreams,
        default_upstream,
        Arc::clone(&metrics),
    )
    .map_err(|e| ServerError::Setup(e.to_string()))?;
    let state = controller.state();
    let store_status = controller.store_status();
    let mirrors = TaskTracker::new();
    let stop = CancellationToken::new();

    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (samples_tx, samples_rx) = mpsc::channel(SAMPLE_QUEUE);
    let controller_stop = CancellationToken::new();
    // The controller does blocking store I/O: it gets a thread of its own.
    let controller_task = tokio::task::spawn_blocking({
        let stop = controller_stop.clone();
        let handle = tokio::runtime::Handle::current();
        move || handle.block_on(controller.run(control_rx, samples_rx, stop))
    });

    let limits = Limits {
        max_body_bytes: config.server.max_body_bytes,
        body_timeout: config.server.body_timeout,
        upstream_timeout: config.server.upstream_timeout,
        observe_max_bytes: OBSERVE_MAX_BYTES,
    };
    let connect_timeout = config.server.connect_timeout;
    let caps = Caps::fit(
        config.server.max_connections,
        config.server.max_concurrent_requests,
        FD_RESERVE
            + config
                .routes
                .values()
                .map(|r| r.shadow.max_inflight)
                .sum::<usize>(),
        nofile_limit(),
    );
    let hygiene = Hygiene {
        timeouts: Timeouts {
            header_read: config.server.header_read_timeout,
            idle: config.server.idle_timeout,
        },
        permits: Arc::new(Semaphore::new(caps.requests)),
        cut: CancellationToken::new(),
        stopping: stop.clone(),
    };
    let replayer = Replayer {
        client: UpstreamClient::new(connect_timeout, tls.clone()),
        metrics: Arc::clone(&metrics),
        observe_max_bytes: OBSERVE_MAX_BYTES,
    };
    let slots = Arc::new(Semaphore::new(caps.connections));
    let connections = TaskTracker::new();
    let workers = Workers::start(config.server.workers(), &connections, &hygiene, {
        let state = Arc::clone(&state);
        let metrics = Arc::clone(&metrics);
        let mirrors = mirrors.clone();
        let telemetry = telemetry.clone();
        move || {
            // Each worker's own pool: its upstream connections are polled by its thread.
            let client = UpstreamClient::new(connect_timeout, tls.clone());
            let shadow = Arc::new(Shadow::new(
                client.clone(),
                Arc::clone(&metrics),
                mirrors.clone(),
                samples_tx.clone(),
                OBSERVE_MAX_BYTES,
            ));
            Proxy {
                state: Arc::clone(&state),
                client,
                metrics: Arc::clone(&metrics),
                shadow,
                limits,
                telemetry: telemetry.clone(),
            }
        }
    })?;
    let proxy_metrics = Arc::clone(&metrics);
    let (reload_tx, reload_rx) = mpsc::channel(RELOAD_QUEUE);
    let reloader = reload.map(|from| Reloader {
        from,
        hangups,
        running: config.clone(),
        upstreams: running_upstreams,
        secret: &secret,
        control: control_tx.clone(),
    });
    let admin = Arc::new(Admin {
        reload: reloader.is_some().then_some(reload_tx),
        metrics,
        control: control_tx,
        store: store_status,
        token,
        listings: Listings::default(),
        replayer,
    });

    tracing::info!(
        proxy = %listeners.proxy.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        routes = config.routes.len(),
        workers = config.server.workers(),
        max_connections = caps.connections,
        max_concurrent_requests = caps.requests,
        fd_limit = caps.fd_limit,
        tracing = telemetry.is_some(),
        "understudy serving"
    );
    let graceful = GracefulShutdown::new();
    let (workers, (), (), ()) = tokio::join!(
        proxy_accept_loop(
            listeners.proxy,
            workers,
            &slots,
            &proxy_metrics,
            &graceful,
            &stop
        ),
        accept_loop(
            listeners.admin,
            &connections,
            &graceful,
            (&stop, &hygiene.cut),
            move |req| { Arc::clone(&admin).handle(req) }
        ),
        async {
            shutdown.await;
            stop.cancel();
        },
        async {
            if let Some(reloader) = reloader {
                reloader.serve(reload_rx, &stop).await;
            }
        },
    );
    tracing::info!("shutting down: no new connections; waiting for in-flight responses");
    // One deadline for everything: in-flight responses, then mirrors, end within the grace.
    let grace = config.server.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; cutting remaining connections");
    }
    // Dropping hyper's graceful future cuts nothing: each connection's task selects on this.
    hygiene.cut.cancel();
    connections.close();
    mirrors.close();
    let _ = tokio::time::timeout(CUT_WAIT, connections.wait()).await;
    let _ = tokio::time::timeout_at(deadline, mirrors.wait()).await;
    workers.stop().await;
    controller_stop.cancel();
    let _ = controller_task.await;
    // After the mirrors: their spans are queued by now; exported within the exporter's timeout.
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepts proxy connections until `stop`, handing each to the next worker with one of the
/// `max_connections` slots; past the cap a connection gets a 503 and is closed at once (never
/// queued, so it holds no descriptor). Returns the workers with their queues closed.
async fn proxy_accept_loop(
    listener: TcpListener,
    mut workers: Workers,
    slots: &Arc<Semaphore>,
    metrics: &Arc<crate::metrics::Metrics>,
    graceful: &GracefulShutdown,
    stop: &CancellationToken,
) -> Workers {
    let mut acceptor = Acceptor::new(listener, "proxy");
    let mut refused = 0u64;
    loop {
        let Some(stream) = acceptor.accept(stop).await else {
            workers.close();
            return workers;
        };
        let Some(permit) = ConnPermit::try_take(slots, metrics) else {
            // Best effort, without waiting: the socket's buffer takes it or the client sees a
            // plain close.
            let _ = stream.try_write(&OVER_CAPACITY_RESPONSE);
            drop(stream);
            metrics.connection_closed(crate::metrics::CloseReason::OverCapacity);
            if refused == 0 {
                tracing::warn!("proxy connection limit reached; refusing new connections");
            }
            refused += 1;
            continue;
        };
        if refused > 0 {
            tracing::info!(refused, "proxy accepting connections again");
            refused = 0;
        }
        // Deregistered from this runtime, registered again by the worker's.
        match stream.into_std() {
            Ok(stream) => {
                let watcher = graceful.watcher();
                workers
                    .dispatch(Handoff {
                        stream,
                        watcher,
                        permit,
                    })
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "could not hand a connection over"),
        }
    }
}

/// A listener that backs off while accepting fails and logs once per burst of failures.
struct Acceptor {
    listener: TcpListener,
    name: &'static str,
    /// Failures in a row; 0 while accepting works.
    failures: u32,
}

impl Acceptor {
    fn new(listener: TcpListener, name: &'static str) -> Self {
        Acceptor {
            listener,
            name,
            failures: 0,
        }
    }

    /// The next accepted connection (with `TCP_NODELAY`), or None once `stop` is cancelled.
    async fn accept(&mut self, stop: &CancellationToken) -> Option<TcpStream> {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = stop.cancelled() => return None,
            };
            match accepted {
                Ok((stream, _)) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.name,
                            failures = self.failures,
                            "accepting again"
                        );
                        self.failures = 0;
                    }
                    let _ = stream.set_nodelay(true);
                    return Some(stream);
                }
                Err(e) => {
                    // Out of file descriptors and the like: the pending connection stays in
                    // the backlog, so retrying at once would spin. Back off, doubling.
                    if self.failures == 0 {
                        tracing::warn!(listener = self.name, error = %e, "accept failed; backing off");
                    }
                    self.failures = self.failures.saturating_add(1);
                    let backoff = accept_backoff(self.failures);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// The pause after the `failures`-th failed accept in a row: 10 ms, doubling, at most 1 s.
fn accept_backoff(failures: u32) -> Duration {
    let ms = 10u64.saturating_mul(1 << failures.saturating_sub(1).min(16));
    Duration::from_millis(ms).min(ACCEPT_BACKOFF_MAX)
}

/// Accepts admin connections until `stop`, serving each on a task of `connections` until it
/// ends or `cut` (the end of the shutdown grace period).
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    connections: &TaskTracker,
    graceful: &GracefulShutdown,
    (stop, cut): (&CancellationToken, &CancellationToken),
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<crate::domain::Body>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut acceptor = Acceptor::new(listener, "admin");
    while let Some(stream) = acceptor.accept(stop).await {
        let handler = handler.clone();
        let conn = builder
            .serve_connection(TokioIo::new(stream), service_fn(handler))
            .into_owned();
        let conn = graceful.watch(conn);
        let cut = cut.clone();
        connections.spawn(async move {
            tokio::select! {
                () = log_end(conn) => {}
                () = cut.cancelled() => {}
            }
        });
    }
}

/// The proxy's caps after fitting them to the file-descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    connections: usize,
    requests: usize,
    /// The soft RLIMIT_NOFILE read at start, when it could be read.
    fd_limit: Option<usize>,
}

impl Caps {
    /// Fits the configured caps under `fd_limit` less `reserve`: each admitted request may hold
    /// an upstream connection besides its client's, so requests get at most half of what is
    /// left and connections the rest. Lowered caps are logged; without a known limit the
    /// configured ones stand.
    fn fit(connections: usize, requests: usize, reserve: usize, fd_limit: Option<usize>) -> Caps {
        let Some(limit) = fd_limit else {
            return Caps {
                connections,
                requests,
                fd_limit,
            };
        };
        let usable = limit.saturating_sub(reserve).max(2);
        let fitted_requests = requests.min(usable / 2).max(1);
        let fitted_connections = connections.min(usable - fitted_requests).max(1);
        if (fitted_connections, fitted_requests) != (connections, requests) {
            tracing::warn!(
                fd_limit = limit,
                reserve,
                max_connections = fitted_connections,
                max_concurrent_requests = fitted_requests,
                configured_connections = connections,
                configured_requests = requests,
                "lowered the proxy's caps to fit the file-descriptor limit (raise it with ulimit -n)"
            );
        }
        Caps {
            connections: fitted_connections,
            requests: fitted_requests,
            fd_limit,
        }
    }
}

/// The process's soft limit on open files (RLIMIT_NOFILE), from /proc (Linux); None elsewhere.
fn nofile_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_nofile(&limits)
}

fn parse_nofile(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_descriptor_limit() {
        let check = |limit, expected: (usize, usize)| {
            let caps = Caps::fit(4096, 1024, 128, limit);
            assert_eq!((caps.connections, caps.requests), expected, "{limit:?}");
        };
        check(None, (4096, 1024));
        check(Some(1_048_576), (4096, 1024));
        // 1024 - 128 = 896: 448 requests, 448 connections.
        check(Some(1024), (448, 448));
        check(Some(100), (1, 1));
    }

    #[test]
    fn reads_the_soft_nofile_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 1048576              files\n";
        assert_eq!(parse_nofile(limits), Some(1024));
        assert_eq!(parse_nofile("nothing"), None);
    }

    #[test]
    fn accept_backs_off_up_to_a_second() {
        let ms: Vec<u128> = [1, 2, 3, 8, 30]
            .map(|n| accept_backoff(n).as_millis())
            .to_vec();
        assert_eq!(ms, vec![10, 20, 40, 1000, 1000]);
    }
}
