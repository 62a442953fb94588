//! The upstream leg: one pooled keep-alive HTTP client (HTTP/1.1 and HTTP/2, `http://` and
//! `https://` through rustls), header hygiene for both directions (RFC 9110 hop-by-hop fields,
//! credentials), and the deadline for the upstream's response head. TLS trusts the webpki roots
//! and the configured `ca_file` certificates.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::ApiFlavor;
use crate::error::ProxyError;
use crate::state::Upstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of every request and response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Request header that names a route explicitly; consumed by the proxy, never forwarded.
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-understudy-route");
/// Marks requests the proxy mirrored, so upstream logs can tell them apart.
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-understudy-shadow");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

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

/// The shared upstream client. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
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
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(https);
        UpstreamClient { client }
    }

    /// Sends `req` and waits at most `timeout` for the response head.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ProxyError::UpstreamConnect {
                upstream: upstream.name.clone(),
                reason: describe(&e),
            }),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                upstream: upstream.name.clone(),
                secs: timeout.as_secs(),
            }),
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

/// The fields that never cross a proxy (RFC 9110 section 7.6.1, plus the classic ones).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop fields of RFC 9110 section 7.6.1: `Connection` and every field it
/// names, plus the classic ones that must not cross a proxy.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap comparisons) to see which are present: most messages carry
    // none, or only `Connection: keep-alive`.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Fields named by `Connection` other than the usual `keep-alive`/`close` (rare: only then
    // is anything allocated).
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Headers for a request to `upstream`: the client's, minus hop-by-hop fields and `Host`, with
/// the upstream's own credential in place of the client's when one is configured. `managed`
/// requests (rewritten bodies) also lose `Content-Length` (set from the new body) and
/// `Accept-Encoding` (the proxy reads the response to observe it).
pub fn outbound_headers(mut headers: HeaderMap, upstream: &Upstream, managed: bool) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(ROUTE_HEADER);
    if managed {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_ENCODING);
    }
    if let Some(cred) = &upstream.credential {
        headers.remove(header::AUTHORIZATION);
        headers.remove(X_API_KEY);
        let name = match upstream.api {
            ApiFlavor::OpenAi => header::AUTHORIZATION,
            ApiFlavor::Anthropic => X_API_KEY,
        };
        headers.insert(name, cred.clone());
    }
    headers
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A `HeaderValue` for a small decimal number (release versions).
pub fn number_header(n: u32) -> HeaderValue {
    HeaderValue::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::{Authority, Scheme};

    fn upstream(api: ApiFlavor, key: Option<&'static str>) -> Upstream {
        Upstream {
            name: "u".into(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static("example:80"),
            path_prefix: String::new(),
            api,
            credential: key.map(HeaderValue::from_static),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn hop_by_hop_and_credentials() {
        let h = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("host", "proxy"),
            ("authorization", "Bearer client"),
            ("x-user-id", "u1"),
            ("x-understudy-route", "bot"),
            ("content-length", "10"),
            ("accept-encoding", "gzip"),
        ]);
        let out = outbound_headers(h.clone(), &upstream(ApiFlavor::OpenAi, None), true);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-user-id"]);
        assert_eq!(out["authorization"], "Bearer client");

        let out = outbound_headers(
            h.clone(),
            &upstream(ApiFlavor::OpenAi, Some("Bearer up")),
            false,
        );
        assert_eq!(out["authorization"], "Bearer up");
        assert_eq!(out["content-length"], "10");

        let out = outbound_headers(h, &upstream(ApiFlavor::Anthropic, Some("key")), false);
        assert_eq!(out["x-api-key"], "key");
        assert!(out.get("authorization").is_none());
    }
}
