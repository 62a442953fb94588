//! Typed errors of the proxy listener: each knows its HTTP status, its metric label and how to
//! render itself as the client's API expects (OpenAI's error JSON, or Anthropic's on
//! `/v1/messages`). Messages never include credentials: they name upstreams, not URLs with keys.

use http::{header, Response, StatusCode};

use crate::domain::{full, Body};
use crate::observe::ApiShape;
use crate::upstream::UpstreamError;

/// Everything that can go wrong between accepting a request and relaying the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("the request body sent nothing for {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("no route named {0:?} (from the x-understudy-route header)")]
    UnknownRoute(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(_)
            | ProxyError::InvalidJson(_)
            | ProxyError::UnknownRoute(_) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(UpstreamError::Connect { .. }) => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Low-cardinality label for `understudy_upstream_errors_total{kind}` (upstream errors only).
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::Upstream(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The error's code in the client's error body; also the span's `error.type`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::ClientBody(_) => "invalid_body",
            ProxyError::BodyTimeout { .. } => "request_timeout",
            ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::UnknownRoute(_) => "unknown_route",
            ProxyError::Upstream(UpstreamError::Connect { .. }) => "upstream_unreachable",
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => "upstream_timeout",
        }
    }

    /// The error as the client's API shapes errors.
    pub fn into_response(self, shape: Option<ApiShape>) -> Response<Body> {
        error_response(self.status(), self.code(), &self.to_string(), shape)
    }
}

/// An error body in the shape the client's SDK parses: Anthropic's for `/v1/messages`, OpenAI's
/// everywhere else.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    shape: Option<ApiShape>,
) -> Response<Body> {
    let body = if shape == Some(ApiShape::Messages) {
        let kind = match status.as_u16() {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            408 | 504 => "timeout_error",
            _ => "api_error",
        };
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        let kind = if status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(resp: Response<Body>) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = futures_executor(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn statuses_and_shapes() {
        let cases: Vec<(ProxyError, u16)> = vec![
            (ProxyError::BodyTooLarge { limit: 10 }, 413),
            (ProxyError::InvalidJson("eof".into()), 400),
            (ProxyError::BodyTimeout { secs: 30 }, 408),
            (
                ProxyError::Upstream(UpstreamError::Connect {
                    upstream: "u".into(),
                    reason: "reset".into(),
                }),
                502,
            ),
            (
                ProxyError::Upstream(UpstreamError::Timeout {
                    upstream: "u".into(),
                    secs: 3,
                }),
                504,
            ),
        ];
        for (err, status) in cases {
            let msg = err.to_string();
            let openai = err.into_response(Some(ApiShape::ChatCompletions));
            assert_eq!(openai.status().as_u16(), status);
            let v = body_json(openai);
            assert_eq!(v["error"]["message"], msg);
            assert!(v["error"]["type"].is_string());
        }
        let anthropic =
            ProxyError::BodyTooLarge { limit: 1 }.into_response(Some(ApiShape::Messages));
        let v = body_json(anthropic);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
    }
}
