//! Assembly and lifecycle: builds the runtime state from the configuration, starts the
//! controller, serves the proxy and admin listeners, and shuts down in order: stop accepting,
//! let in-flight responses finish within the grace period, drain the mirrors, stop the
//! controller. `run` takes bound listeners and a shutdown future, so tests run it on port 0.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod workers;

use workers::{log_end, Handoff, Workers};

use crate::admin::Admin;
use crate::config::Config;
use crate::control::{Controller, SqliteStore, Store};
use crate::metrics::Metrics;
use crate::proxy::{Limits, Proxy};
use crate::shadow::Shadow;
use crate::state::Upstream;
use crate::upstream::{self, UpstreamClient};

/// Bound on output text kept per observation.
const OBSERVE_MAX_BYTES: usize = 256 * 1024;
/// Admin commands waiting for the controller.
const CONTROL_QUEUE: usize = 64;
/// Scored samples waiting for the controller; past it, samples are dropped (and logged).
const SAMPLE_QUEUE: usize = 4096;

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
    let store =
        SqliteStore::open(&config.store.path).map_err(|e| ServerError::Setup(e.to_string()))?;
    run_with_store(config, listeners, secret, shutdown, Box::new(store)).await
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
    let metrics =
        Arc::new(Metrics::new().map_err(|e| ServerError::Setup(format!("metrics: {e}")))?);
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
        upstream_timeout: config.server.upstream_timeout,
        observe_max_bytes: OBSERVE_MAX_BYTES,
    };
    let connect_timeout = config.server.connect_timeout;
    let extra_roots: Vec<_> = config
        .upstreams
        .values()
        .filter_map(|u| u.ca_file.as_ref())
        .flat_map(|ca| ca.certs.iter().cloned())
        .collect();
    let tls = upstream::tls_config(&extra_roots)
        .map_err(|e| ServerError::Setup(format!("upstream TLS: {e}")))?;
    let connections = TaskTracker::new();
    let workers = Workers::start(config.server.workers(), &connections, {
        let state = Arc::clone(&state);
        let metrics = Arc::clone(&metrics);
        let mirrors = mirrors.clone();
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
            }
        }
    })?;
    let admin = Arc::new(Admin {
        metrics,
        control: control_tx,
        store: store_status,
        token,
    });

    tracing::info!(
        proxy = %listeners.proxy.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        routes = config.routes.len(),
        workers = config.server.workers(),
        "understudy serving"
    );
    let graceful = GracefulShutdown::new();
    let (workers, (), ()) = tokio::join!(
        proxy_accept_loop(listeners.proxy, workers, &graceful, &stop),
        accept_loop(
            listeners.admin,
            &connections,
            &graceful,
            &stop,
            move |req| { Arc::clone(&admin).handle(req) }
        ),
        async {
            shutdown.await;
            stop.cancel();
        },
    );
    tracing::info!("shutting down: no new connections; waiting for in-flight responses");
    let grace = config.server.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; cutting remaining connections");
    }
    connections.close();
    mirrors.close();
    let _ = tokio::time::timeout(grace, async {
        tokio::join!(connections.wait(), mirrors.wait())
    })
    .await;
    workers.stop().await;
    controller_stop.cancel();
    let _ = controller_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts proxy connections until `stop`, handing each to the next worker; returns the
/// workers with their queues closed.
async fn proxy_accept_loop(
    listener: TcpListener,
    mut workers: Workers,
    graceful: &GracefulShutdown,
    stop: &CancellationToken,
) -> Workers {
    loop {
        let Some(stream) = accept(&listener, stop).await else {
            workers.close();
            return workers;
        };
        // Deregistered from this runtime, registered again by the worker's.
        match stream.into_std() {
            Ok(stream) => {
                let watcher = graceful.watcher();
                workers.dispatch(Handoff { stream, watcher }).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not hand a connection over"),
        }
    }
}

/// The next accepted connection (with `TCP_NODELAY`), or None once `stop` is cancelled.
async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<TcpStream> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return None,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts connections until `stop`, serving each on a task of `connections`.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    connections: &TaskTracker,
    graceful: &GracefulShutdown,
    stop: &CancellationToken,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<crate::domain::Body>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Some(stream) = accept(&listener, stop).await {
        let handler = handler.clone();
        let conn = builder
            .serve_connection(TokioIo::new(stream), service_fn(handler))
            .into_owned();
        connections.spawn(log_end(graceful.watch(conn)));
    }
}
