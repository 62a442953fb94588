//! The proxy listener's request path, as named phases over one per-request context:
//!
//! 1. `request_filter`: health endpoints; which API the request speaks (by method and path).
//! 2. `read_body`: the body, bounded by `max_body_bytes`, parsed once as JSON.
//! 3. `route`: the route (by `x-understudy-route` or the `model` alias) and the [`Plan`]:
//!    which release serves, which is mirrored.
//! 4. `upstream_request`: the serving release's request (body rewrite, headers, credentials).
//! 5. `mirror`: the mirrored request handed to [`crate::shadow`], off the client's path.
//! 6. `response_filter`: headers added, the body wrapped in a [`RelayBody`] that streams it
//!    through, puts the alias back, observes it and records the request when it ends.
//!
//! Anything that is not one of the four managed APIs is passed through to the default upstream
//! as it is, streamed both ways.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::metrics::{Metrics, RequestRecord, NO_RELEASE, UNROUTED};
use crate::observe::{ApiShape, Observer};
use crate::relay::{Completion, RelayBody};
use crate::rewrite::{rewrite_request, ModelRewriter, RequestBody};
use crate::routing::{plan, sample_point, Plan};
use crate::shadow::{MirrorRequest, Shadow};
use crate::state::{Release, Route, Snapshot, Upstream};
use crate::upstream::{
    full, number_header, outbound_headers, strip_hop_by_hop, Body, UpstreamClient, ROUTE_HEADER,
};

const RELEASE_HEADER: HeaderName = HeaderName::from_static("x-understudy-release");

/// Limits that apply to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Deadline for the upstream's response head, and for each gap between body frames.
    pub upstream_timeout: Duration,
    /// Bound on output kept per observation (text and buffered JSON).
    pub observe_max_bytes: usize,
}

/// Shared state of the proxy listener.
pub struct Proxy {
    /// The routes as they are right now; swapped whole by the controller, never locked here.
    pub state: Arc<ArcSwap<Snapshot>>,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub shadow: Arc<Shadow>,
    pub limits: Limits,
}

/// What the phases learn about one request, carried from one to the next.
struct Ctx {
    started: Instant,
    method: Method,
    path: String,
    shape: Option<ApiShape>,
    route: Option<Arc<Route>>,
}

impl Ctx {
    fn route_label(&self) -> &str {
        self.route.as_ref().map_or(UNROUTED, |r| r.name.as_str())
    }
}

impl Proxy {
    /// Answers one client request. Never fails: errors become API-shaped error responses.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let mut ctx = Ctx {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            shape: None,
            route: None,
        };
        if let Some(resp) = request_filter(&mut ctx, &req) {
            return Ok(resp);
        }
        let result = match ctx.shape {
            Some(shape) => self.managed(&mut ctx, shape, req).await,
            None => self.passthrough(&mut ctx, req).await,
        };
        Ok(result.unwrap_or_else(|(err, release)| self.fail(&ctx, err, release.as_deref())))
    }

    fn fail(&self, ctx: &Ctx, err: ProxyError, release: Option<&Release>) -> Response<Body> {
        let status = err.status().as_u16();
        self.metrics.request_finished(&RequestRecord {
            series: None,
            route: ctx.route_label(),
            release: release.map_or(NO_RELEASE, |r| r.version_label.as_str()),
            method: &ctx.method,
            path: &ctx.path,
            status,
            duration: ctx.started.elapsed(),
            ttfb: None,
            error_kind: err.upstream_kind(),
            prompt_tokens: None,
            completion_tokens: None,
            prices: None,
            cancelled: false,
        });
        err.into_response(ctx.shape)
    }

    async fn managed(
        &self,
        ctx: &mut Ctx,
        shape: ApiShape,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, (ProxyError, Option<Arc<Release>>)> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body, self.limits.max_body_bytes)
            .await
            .map_err(|e| (e, None))?;
        let json = RequestBody::parse(&bytes)
            .map_err(|e| (ProxyError::InvalidJson(e.to_string()), None))?;
        let snapshot = self.state.load();
        let client_model = json.model();
        let route = match parts.headers.get(&ROUTE_HEADER) {
            Some(name) => {
                let name = String::from_utf8_lossy(name.as_bytes());
                let route = snapshot.route(&name).cloned();
                Some(route.ok_or_else(|| (ProxyError::UnknownRoute(name.into_owned()), None))?)
            }
            None => client_model
                .as_deref()
                .and_then(|m| snapshot.route_by_alias(m).cloned()),
        };
        let Some(route) = route else {
            // No route: the default upstream gets the request as the client sent it.
            let upstream = Arc::clone(&snapshot.default_upstream);
            let headers = outbound_headers(parts.headers, &upstream, false);
            let req =
                build_request(&upstream, &parts.uri, headers, bytes).map_err(|e| (e, None))?;
            return self.forward(ctx, &upstream, req, None, Some(shape)).await;
        };
        ctx.route = Some(Arc::clone(&route));

        let sticky = crate::shadow::sticky_value(&route, &parts.headers, &json);
        let point = sample_point(
            &route.name,
            sticky.as_deref().map(str::as_bytes),
            rand::random,
        );
        let plan: Plan = plan(&route, point);
        let release = Arc::clone(&plan.serve);
        let err = |e| (e, Some(Arc::clone(&release)));

        let body = rewrite_request(shape, &json, &release, false)
            .map_err(|e| err(ProxyError::InvalidJson(e.to_string())))?;
        // The mirror needs the client's own headers; the serving request takes them over.
        let mirror_headers = plan.mirror.as_ref().map(|_| parts.headers.clone());
        let headers = outbound_headers(parts.headers, &release.upstream, true);
        let upstream_req = build_request(&release.upstream, &parts.uri, headers, Bytes::from(body))
            .map_err(err)?;

        let paired = plan
            .mirror
            .as_ref()
            .zip(mirror_headers)
            .and_then(|(mirror, headers)| {
                self.shadow.start(MirrorRequest {
                    route: Arc::clone(&route),
                    shape,
                    served: Arc::clone(&release),
                    served_role: plan.served_role,
                    mirror: Arc::clone(mirror),
                    uri: parts.uri.clone(),
                    headers,
                    body: bytes.clone(),
                    stream: json.stream(),
                })
            });
        let client_model = client_model.map(|m| m.into_owned());
        let served = Served {
            release: Arc::clone(&release),
            client_model,
            paired,
        };
        self.forward(
            ctx,
            &release.upstream,
            upstream_req,
            Some(served),
            Some(shape),
        )
        .await
    }

    async fn passthrough(
        &self,
        ctx: &mut Ctx,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, (ProxyError, Option<Arc<Release>>)> {
        let upstream = Arc::clone(&self.state.load().default_upstream);
        let (parts, body) = req.into_parts();
        if content_length(&parts.headers).is_some_and(|n| n > self.limits.max_body_bytes as u64) {
            return Err((
                ProxyError::BodyTooLarge {
                    limit: self.limits.max_body_bytes,
                },
                None,
            ));
        }
        let body = Limited::new(body, self.limits.max_body_bytes).boxed();
        let headers = outbound_headers(parts.headers, &upstream, false);
        let uri = upstream
            .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .map_err(|e| (upstream_uri_error(&upstream, e), None))?;
        let mut out = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(body)
            .map_err(|e| (upstream_uri_error(&upstream, e), None))?;
        *out.headers_mut() = headers;
        self.forward(ctx, &upstream, out, None, None).await
    }

    /// Sends the upstream request and wraps its response for the client.
    async fn forward(
        &self,
        ctx: &mut Ctx,
        upstream: &Upstream,
        req: Request<Body>,
        served: Option<Served>,
        shape: Option<ApiShape>,
    ) -> Result<Response<Body>, (ProxyError, Option<Arc<Release>>)> {
        let release = served.as_ref().map(|s| Arc::clone(&s.release));
        let resp = self
            .client
            .send(upstream, req, self.limits.upstream_timeout)
            .await
            .map_err(|e| (e, release.clone()))?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let status = parts.status.as_u16();

        let mut rewriter = None;
        let mut paired = None;
        if let Some(served) = served {
            if let (Some(route), Some(alias)) = (&ctx.route, &served.client_model) {
                if *alias != served.release.model {
                    rewriter = Some(ModelRewriter::new(alias, sse));
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                parts.headers.insert(
                    ROUTE_HEADER,
                    HeaderValue::from_str(&route.name).unwrap_or(HeaderValue::from_static("")),
                );
            }
            parts
                .headers
                .insert(RELEASE_HEADER, number_header(served.release.version));
            paired = served.paired;
        }
        // The whole answer is assembled only when a mirror waits to compare it.
        let max = self.limits.observe_max_bytes;
        let observer = shape.map(|s| match paired {
            Some(_) => Observer::new(s, sse, max),
            None => Observer::usage_only(s, sse, max),
        });
        let completion = Completion {
            metrics: Arc::clone(&self.metrics),
            route: ctx.route.clone(),
            release: release.clone(),
            method: ctx.method.clone(),
            path: std::mem::take(&mut ctx.path),
            status,
            started: ctx.started,
            paired,
        };
        let body = RelayBody::new(
            body,
            rewriter,
            observer,
            self.limits.upstream_timeout,
            completion,
        );
        Ok(Response::from_parts(parts, BodyExt::boxed(body)))
    }
}

/// What the serving release needs to finish the response.
struct Served {
    release: Arc<Release>,
    /// The `model` the client sent, put back into the response.
    client_model: Option<String>,
    paired: Option<tokio::sync::oneshot::Sender<crate::observe::Observation>>,
}

/// Health endpoints and the request's API shape.
fn request_filter(ctx: &mut Ctx, req: &Request<Incoming>) -> Option<Response<Body>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Some(text_response(StatusCode::OK, "ok\n")),
        (&Method::GET, "/readyz") => return Some(text_response(StatusCode::OK, "ready\n")),
        _ => {}
    }
    if req.method() == Method::POST {
        ctx.shape = ApiShape::from_path(req.uri().path());
    }
    None
}

pub fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The whole request body, refused early when its declared length is over the limit.
async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(e) => Err(ProxyError::ClientBody(e.to_string())),
    }
}

/// A request to `upstream` with a complete body.
pub fn build_request(
    upstream: &Upstream,
    client_uri: &http::Uri,
    mut headers: http::HeaderMap,
    body: Bytes,
) -> Result<Request<Body>, ProxyError> {
    let uri = upstream
        .uri(client_uri.path_and_query().map_or("/", |p| p.as_str()))
        .map_err(|e| upstream_uri_error(upstream, e))?;
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

fn upstream_uri_error(upstream: &Upstream, e: http::Error) -> ProxyError {
    ProxyError::UpstreamConnect {
        upstream: upstream.name.clone(),
        reason: format!("bad URI: {e}"),
    }
}
