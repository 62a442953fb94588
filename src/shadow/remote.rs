//! The one HTTP exchange the remote scorers make: a JSON POST to a scorer's upstream with its
//! credential, the whole answer read under a deadline. Off the client's path, on the mirror's
//! task; a failure is the scorer's, never the candidate's.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use http_body_util::BodyExt;

use crate::state::Upstream;
use crate::upstream::{build_request, outbound_headers, UpstreamClient};

/// Largest answer a scorer reads.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a remote scorer gave no value for a sample (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorerFailure {
    /// Its own budget was spent: skipped.
    Budget,
    /// The call failed: connection, status, timeout, oversized answer.
    Error,
    /// The answer could not be read as the expected shape (a verdict, embeddings).
    Unparseable,
}

impl ScorerFailure {
    pub fn outcome(self) -> &'static str {
        match self {
            ScorerFailure::Budget => "skipped_budget",
            ScorerFailure::Error => "failed",
            ScorerFailure::Unparseable => "unparseable",
        }
    }
}

/// POSTs `body` to `path` on `upstream` and returns the answer's body when the status is 2xx.
pub async fn post_json(
    client: &UpstreamClient,
    upstream: &Upstream,
    path: &'static str,
    extra: &[(&'static str, &'static str)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, ScorerFailure> {
    let mut headers = outbound_headers(HeaderMap::new(), upstream, true);
    for (name, value) in extra {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    let uri = Uri::from_static(path);
    let req = build_request(upstream, &uri, headers, Bytes::from(body))
        .map_err(|_| ScorerFailure::Error)?;
    let exchange = async {
        let resp = client
            .send(upstream, req, timeout)
            .await
            .map_err(|_| ScorerFailure::Error)?;
        if !resp.status().is_success() {
            return Err(ScorerFailure::Error);
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES);
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|_| ScorerFailure::Error)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ScorerFailure::Error)?
}

/// `text` cut to at most `max` characters, on a character boundary.
pub fn bounded(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_cuts_on_characters() {
        assert_eq!(super::bounded("héllo", 2), "hé");
        assert_eq!(super::bounded("hi", 5), "hi");
    }
}
