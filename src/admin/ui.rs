//! The review page, `GET /ui` on the admin listener: one HTML page, its stylesheet and its
//! script (plain JavaScript, no framework), compiled into the binary from `ui/`, nothing fetched
//! from anywhere else (the content security policy allows only this origin). The page holds no
//! data: everything it shows comes from the admin API, called with the admin token.
//!
//! A request that carries the admin token (`Authorization: Bearer`, as an authenticating proxy
//! in front of the admin listener adds it) gets the page at once; any other gets it with a 401
//! and the page opens on a token form. The token typed there stays in the tab's
//! `sessionStorage` and goes with every API call as the same bearer header. The assets are the
//! page's code, public like the binary, so they are served without the token.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::domain::{full, Body};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Only this origin: no CDN, no inline script, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                      base-uri 'none'; frame-ancestors 'none'";

/// The page: with the token at once (`authorized`), else with a 401 and the token form first.
pub fn page(authorized: bool) -> Response<Body> {
    let (status, mode) = if authorized {
        (StatusCode::OK, "header")
    } else {
        (StatusCode::UNAUTHORIZED, "form")
    };
    let html = PAGE.replace("{{AUTH}}", mode);
    let mut r = asset_response(Bytes::from(html), "text/html; charset=utf-8");
    *r.status_mut() = status;
    if !authorized {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// `GET /ui/{name}`: the script or the stylesheet; None for any other name.
pub fn asset(name: &str) -> Option<Response<Body>> {
    let (text, kind) = match name {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(asset_response(Bytes::from_static(text.as_bytes()), kind))
}

fn asset_response(body: Bytes, kind: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_assets() {
        for text in [PAGE, SCRIPT, STYLE] {
            // SVG's namespace is a name, not a fetch.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for remote in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(remote), "{remote} in a UI asset");
            }
        }
        assert!(PAGE.contains("src=\"/ui/app.js\"") && PAGE.contains("href=\"/ui/style.css\""));
        assert_eq!(page(true).status(), StatusCode::OK);
        assert_eq!(page(false).status(), StatusCode::UNAUTHORIZED);
        assert!(asset("app.js").is_some() && asset("../mod.rs").is_none());
    }
}
