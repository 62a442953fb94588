//! A request to an upstream with a complete (rewritten) body.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request};

use super::UpstreamError;
use crate::domain::{full, Body};
use crate::state::Upstream;

/// A POST to `upstream` at the client's path and query, with `body` and `headers` (its
/// `Content-Length` set from the body; `Content-Type` JSON unless the client said otherwise).
pub fn build_request(
    upstream: &Upstream,
    client_uri: &http::Uri,
    mut headers: http::HeaderMap,
    body: Bytes,
) -> Result<Request<Body>, UpstreamError> {
    let uri = upstream
        .uri(client_uri.path_and_query().map_or("/", |p| p.as_str()))
        .map_err(|e| bad_uri(upstream, &e))?;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    let mut req = Request::new(full(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The client's path and query did not make a valid URI on `upstream`.
pub fn bad_uri(upstream: &Upstream, e: &http::Error) -> UpstreamError {
    UpstreamError::Connect {
        upstream: upstream.name.clone(),
        reason: format!("bad URI: {e}"),
    }
}
