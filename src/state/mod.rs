//! The runtime view of routes, releases and upstreams that the request path reads: an
//! immutable [`Snapshot`] behind an `ArcSwap`. Nothing here is locked on the request path; the
//! controller builds a new snapshot and swaps it in whole.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use serde_json::value::RawValue;

use crate::config::{ApiFlavor, StickyKey, UpstreamConfig};
use crate::domain::{Phase, Prices, ReleaseSpec};
use crate::metrics::{Metrics, ReleaseSeries};

mod policy;

pub use policy::{RemoteScorer, RoutePolicy};

/// An upstream LLM API, resolved once at start (its credentials read from the environment).
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of `base_url` (for example `/openai` behind a gateway), without trailing slash.
    pub path_prefix: String,
    pub api: ApiFlavor,
    /// The credential that replaces the client's, already formatted for the API's header
    /// (`Bearer ...` or the bare key) and marked sensitive so it never prints.
    pub credential: Option<HeaderValue>,
}

impl Upstream {
    /// Resolves `cfg`; `secret` looks up an environment variable.
    pub fn from_config(
        cfg: &UpstreamConfig,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let parts = cfg.base_url.clone().into_parts();
        let scheme = parts
            .scheme
            .ok_or_else(|| format!("upstreams.{}.base_url: no scheme", cfg.name))?;
        let authority = parts
            .authority
            .ok_or_else(|| format!("upstreams.{}.base_url: no host", cfg.name))?;
        let path_prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let credential = match &cfg.api_key_env {
            None => None,
            Some(var) => {
                let key = secret(var).filter(|k| !k.is_empty()).ok_or_else(|| {
                    format!(
                        "upstreams.{}.api_key_env: environment variable {var} is not set",
                        cfg.name
                    )
                })?;
                let text = match cfg.api {
                    ApiFlavor::OpenAi => format!("Bearer {key}"),
                    ApiFlavor::Anthropic => key,
                };
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    format!(
                        "upstreams.{}.api_key_env: {var} holds characters not allowed in a header",
                        cfg.name
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Upstream {
            name: cfg.name.clone(),
            scheme,
            authority,
            path_prefix,
            api: cfg.api,
            credential,
        })
    }

    /// The upstream URI for a client's path and query.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.path_prefix.len() + path_and_query.len());
        pq.push_str(&self.path_prefix);
        pq.push_str(path_and_query);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// One immutable release of a route: how its requests are served.
#[derive(Debug)]
pub struct Release {
    /// 1, 2, 3, ... in publication order within the route.
    pub version: u32,
    /// `version` as text, for metric labels and response headers.
    pub version_label: String,
    pub label: Option<String>,
    pub upstream: Arc<Upstream>,
    pub model: String,
    pub system_prompt: Option<String>,
    /// Parameter overrides, each value pre-serialised once.
    pub params: Vec<(String, Box<RawValue>)>,
    pub prices: Option<Prices>,
    /// Embedding routes: the vector index built with this release's model, ready as the
    /// `x-understudy-index` header value of every response it produces.
    pub index: Option<HeaderValue>,
    /// This release's request metric series, looked up on first use.
    series: OnceLock<ReleaseSeries>,
}

impl Release {
    /// The release's request series on `route` (a release belongs to one route).
    pub fn series(&self, metrics: &Metrics, route: &str) -> &ReleaseSeries {
        self.series.get_or_init(|| {
            metrics.release_series(route, &self.version_label, self.prices.is_some())
        })
    }

    pub fn new(version: u32, spec: &ReleaseSpec, upstream: Arc<Upstream>) -> Self {
        let params = spec
            .params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::value::to_raw_value(v).ok()?)))
            .collect();
        Release {
            version,
            version_label: version.to_string(),
            label: spec.label.clone(),
            upstream,
            model: spec.model.clone(),
            system_prompt: spec.system_prompt.clone(),
            params,
            prices: spec.prices,
            // Index names are checked (letters, digits, `-_.:`): always a valid header value.
            index: spec
                .index
                .as_deref()
                .and_then(|i| HeaderValue::from_str(i).ok()),
            series: OnceLock::new(),
        }
    }
}

/// A route as the request path sees it right now.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// The `model` value applications send for this route.
    pub alias: String,
    pub phase: Phase,
    pub share: f64,
    pub sticky_key: Option<StickyKey>,
    pub stable: Arc<Release>,
    pub candidate: Option<Arc<Release>>,
    /// Mirroring budget, scoring and rollback settings; shared by every snapshot of the route
    /// (the budget's counters survive snapshot swaps).
    pub policy: Arc<RoutePolicy>,
}

impl Route {
    /// The release that serves requests the candidate is not chosen for.
    pub fn serving(&self) -> &Arc<Release> {
        self.phase.serving(&self.stable, self.candidate.as_ref())
    }
}

/// Everything the request path needs, swapped whole.
#[derive(Debug)]
pub struct Snapshot {
    routes: HashMap<String, Arc<Route>>,
    /// Route name by alias.
    aliases: HashMap<String, String>,
    pub default_upstream: Arc<Upstream>,
}

impl Snapshot {
    pub fn new(
        routes: impl IntoIterator<Item = Arc<Route>>,
        default_upstream: Arc<Upstream>,
    ) -> Self {
        let routes: HashMap<String, Arc<Route>> =
            routes.into_iter().map(|r| (r.name.clone(), r)).collect();
        let aliases = routes
            .values()
            .map(|r| (r.alias.clone(), r.name.clone()))
            .collect();
        Snapshot {
            routes,
            aliases,
            default_upstream,
        }
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.get(name)
    }

    pub fn route_by_alias(&self, alias: &str) -> Option<&Arc<Route>> {
        self.aliases
            .get(alias)
            .and_then(|name| self.routes.get(name))
    }
}
