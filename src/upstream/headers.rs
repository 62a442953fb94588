//! Header hygiene for both directions: RFC 9110 hop-by-hop fields, the proxy's own
//! `x-understudy-*` fields, and the upstream's credential in place of the client's.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::ApiFlavor;
use crate::state::Upstream;

/// Request header that names a route explicitly; consumed by the proxy, never forwarded.
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-understudy-route");
/// Marks requests the proxy mirrored, so upstream logs can tell them apart.
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-understudy-shadow");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The prefix of the proxy's own fields. A client's are never forwarded: upstreams (and their
/// logs) must be able to trust them, e.g. `x-understudy-shadow` to tell mirrored traffic.
const INTERNAL_PREFIX: &str = "x-understudy-";

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

/// Removes every `x-understudy-*` field (the proxy's own, which clients may not set upstream).
fn strip_internal(headers: &mut HeaderMap) {
    // Names are lowercase; most requests carry none, and only then is anything allocated.
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(INTERNAL_PREFIX))
        .cloned()
        .collect();
    for name in &internal {
        headers.remove(name);
    }
}

/// Headers for a request to `upstream`: the client's, minus hop-by-hop fields, `Host` and every
/// `x-understudy-*` field (the proxy sets its own afterwards), with the upstream's own credential in place of the client's when one is configured. `managed`
/// requests (rewritten bodies) also lose `Content-Length` (set from the new body) and
/// `Accept-Encoding` (the proxy reads the response to observe it).
pub fn outbound_headers(mut headers: HeaderMap, upstream: &Upstream, managed: bool) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    strip_internal(&mut headers);
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
            ("x-understudy-shadow", "1"),
            ("x-understudy-release", "2"),
            ("x-understudy-anything", "x"),
            ("x-understudyish", "kept"),
            ("content-length", "10"),
            ("accept-encoding", "gzip"),
        ]);
        let out = outbound_headers(h.clone(), &upstream(ApiFlavor::OpenAi, None), true);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-understudyish", "x-user-id"]);
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
