//! The admin API's HTTP client, used by the command line's admin commands and by the demo.
//! It speaks the API of this module's server: JSON in and out, the bearer token, errors read
//! from the API's error JSON.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an admin call failed, said as the command line prints it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad admin URL {base:?}: {reason}")]
    BadUrl { base: String, reason: String },
    #[error("admin API at {base} did not answer within {secs} s")]
    Timeout { base: String, secs: u64 },
    #[error("cannot reach the admin API at {base}: {reason} (set UNDERSTUDY_ADMIN_URL)")]
    Unreachable { base: String, reason: String },
    #[error("reading the admin API's answer: {0}")]
    Read(String),
    #[error("401 unauthorized: {0} (set UNDERSTUDY_ADMIN_TOKEN)")]
    Unauthorized(String),
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// A client of one admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    /// How long one call may take.
    timeout: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// A client of the admin API at `base` (`http://host:port`), authenticating with `token`.
    pub fn new(base: &str, token: Option<&str>) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            timeout: CALL_TIMEOUT,
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// The same client, with calls allowed `timeout` (a replayed case waits on the upstreams).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /admin/routes/{route}/samples?order=ORDER&limit=N`.
    pub async fn samples(
        &self,
        route: &str,
        order: &str,
        limit: usize,
    ) -> Result<Value, ClientError> {
        let path = format!(
            "/admin/routes/{}/samples?order={}&limit={limit}",
            percent_encode(route),
            percent_encode(order)
        );
        self.call(Method::GET, &path, None).await
    }

    /// `GET /admin/routes`.
    pub async fn routes(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/admin/routes", None).await
    }

    /// `GET /admin/fleet`.
    pub async fn fleet(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/admin/fleet", None).await
    }

    /// `GET /admin/routes/{route}`.
    pub async fn route(&self, route: &str) -> Result<Value, ClientError> {
        let path = format!("/admin/routes/{}", percent_encode(route));
        self.call(Method::GET, &path, None).await
    }

    /// `POST /admin/routes/{route}/{action}` with `body`.
    pub async fn change(
        &self,
        route: &str,
        action: &str,
        body: Value,
    ) -> Result<Value, ClientError> {
        let path = format!("/admin/routes/{}/{action}", percent_encode(route));
        self.call(Method::POST, &path, Some(body)).await
    }

    /// One admin API call: the JSON answer, or the API's error message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let base = &self.base;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::BadUrl {
                base: base.clone(),
                reason: e.to_string(),
            })?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| ClientError::Timeout {
                base: base.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|e| ClientError::Unreachable {
                base: base.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Read(e.to_string()))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized(message),
            status => ClientError::Refused { status, message },
        })
    }
}

/// Everything but RFC 3986's unreserved characters, so a route name is one path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` as one URL path segment.
fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_names_are_one_segment() {
        assert_eq!(
            super::percent_encode("support-bot_2.x~"),
            "support-bot_2.x~"
        );
        assert_eq!(super::percent_encode("a/b c"), "a%2Fb%20c");
        assert_eq!(super::percent_encode("é"), "%C3%A9");
    }
}
