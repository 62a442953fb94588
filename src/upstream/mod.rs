//! The upstream leg, shared by the client's path (`proxy`) and the mirrors (`shadow`): the
//! pooled client with its deadline, header hygiene, and the request a release should receive
//! (body rewrite, URI, headers).

mod client;
mod headers;
mod pool;
mod request;
mod rewrite;

pub use client::{tls_config, UpstreamClient, UpstreamError};
pub use headers::{number_header, outbound_headers, strip_hop_by_hop, ROUTE_HEADER, SHADOW_HEADER};
pub use pool::UpstreamBody;
pub use request::{bad_uri, build_request};
pub use rewrite::{rewrite_request, ModelRewriter, RequestBody};
