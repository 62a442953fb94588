//! The body type of every request and response the proxy sends, and its boxed error.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

/// The error of a body or a connection, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of every request and response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
