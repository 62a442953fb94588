//! The upstream client and the deadline for the upstream's response head. `http://` upstreams
//! go through this worker's own HTTP/1.1 pool, whose connections are driven by the requests that
//! use them (`pool.rs`); `https://` upstreams through hyper-util's pool (HTTP/1.1, or HTTP/2 when
//! the upstream offers it by ALPN) over rustls, trusting the webpki roots and the configured
//! `ca_file` certificates.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::pool::{Pool, UpstreamBody};
use crate::domain::Body;
use crate::state::Upstream;

/// How long an upstream connection may stay idle in a pool before it is closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per upstream (per worker).
const POOL_MAX_IDLE: usize = 1024;

/// Why the upstream gave no response head. Messages name the upstream, never its URL (which
/// could carry credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} could not be reached: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {secs} s")]
    Timeout { upstream: String, secs: u64 },
}

impl UpstreamError {
    /// Low-cardinality label for `understudy_upstream_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
        }
    }
}

/// The TLS settings of every upstream connection: the webpki (Mozilla) roots plus
/// `extra_roots`, the certificates of every upstream's `ca_file`. The extra CAs are trusted for
/// every https upstream of the process, not only the one whose `ca_file` named them: each worker
/// has one connection pool for all upstreams. Built once, shared by the workers' clients.
pub fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Each was checked as a trust anchor when the configuration was loaded.
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    // Named rather than the process default, which is ambiguous if another is compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The upstream client. Cloning is cheap and shares the connection pools.
#[derive(Clone)]
pub struct UpstreamClient {
    /// `https://` upstreams.
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    /// `http://` upstreams.
    plain: Arc<Pool>,
}

impl UpstreamClient {
    /// A client with its own connection pool; `tls` from [`tls_config`].
    pub fn new(connect_timeout: Duration, tls: ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(https);
        UpstreamClient {
            client,
            plain: Pool::new(connect_timeout, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE),
        }
    }

    /// Sends `req` and waits at most `timeout` for the response head.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let sent = async {
            if upstream.scheme == http::uri::Scheme::HTTP {
                self.plain
                    .send(&upstream.authority, req)
                    .await
                    .map_err(|e| describe_plain(&e))
            } else {
                match self.client.request(req).await {
                    Ok(resp) => Ok(resp.map(UpstreamBody::pooled)),
                    Err(e) => Err(describe(&e)),
                }
            }
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(reason)) => Err(UpstreamError::Connect {
                upstream: upstream.name.clone(),
                reason,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: upstream.name.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }
}

/// A short cause for a plain-HTTP pool's error.
fn describe_plain(e: &super::pool::PoolError) -> String {
    use std::error::Error;
    match e {
        super::pool::PoolError::Connect(_) => e.to_string(),
        super::pool::PoolError::Http(h) => {
            let mut cause: &dyn Error = h;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        }
    }
}

/// A short cause for a client error, without URLs (which could carry credentials).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut cause: &dyn Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() {
        format!("connect failed ({cause})")
    } else {
        cause.to_string()
    }
}
