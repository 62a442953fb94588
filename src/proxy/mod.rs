//! The proxy listener's request path, as named phases over one per-request [`Ctx`] (in the
//! manner of pingora's proxy phases). [`Proxy::handle`] runs them in this order:
//!
//! 1. [`request_filter`]: health endpoints; which API the request speaks (by method and path).
//! 2. [`read_body`]: the body, bounded by `max_body_bytes`, parsed once as JSON.
//! 3. [`Proxy::route`]: the route (by `x-understudy-route` or the `model` alias) and the
//!    [`Plan`]: which release serves, which is mirrored.
//! 4. [`upstream_request`]: the serving release's request (body rewrite, headers, credentials).
//! 5. [`Proxy::mirror`]: the mirrored request handed to [`crate::shadow`], off the client's path.
//! 6. [`Proxy::forward`]: the request sent on the pooled client, with a deadline on the head.
//! 7. [`Proxy::response_filter`]: headers added, the body wrapped in a [`RelayBody`] that streams
//!    it through, puts the alias back, observes it and records the request when it ends.
//!
//! Anything that is not one of the four managed APIs is passed through to the default upstream
//! as it is, streamed both ways (phases 1, 6 and 7 only).
//!
//! Every request is recorded once (`Metrics::request_finished`): by [`Proxy::fail`] when it
//! ends in an error, by its [`RelayBody`] when a response was relayed, and otherwise by the
//! [`Ctx`] when it is dropped: the client went away before the response head (the connection
//! closed, so hyper dropped the request's future), recorded as `cancelled` with its duration.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::domain::{full, Body};
use crate::metrics::{Metrics, RejectReason, RequestRecord, NO_RELEASE, UNROUTED};
use crate::observe::{ApiShape, Observation, Observer};
use crate::shadow::{ClientTap, MirrorRequest, Shadow};
use crate::state::Snapshot;
use crate::state::{Release, Route, Upstream};
use crate::telemetry::{LlmSpan, Telemetry};
use crate::upstream::{
    bad_uri, build_request, number_header, outbound_headers, rewrite_request, strip_hop_by_hop,
    ModelRewriter, RequestBody, UpstreamBody, UpstreamClient, ROUTE_HEADER,
};

mod error;
mod progress;
mod relay;
mod routing;

pub use error::error_response;
use error::ProxyError;
use progress::ProgressBody;
use relay::{Completion, RelayBody};
use routing::{plan, sample_point, sticky_value, Plan};

const RELEASE_HEADER: HeaderName = HeaderName::from_static("x-understudy-release");
/// Embedding routes: the vector index built with the model that made the response's vectors.
const INDEX_HEADER: HeaderName = HeaderName::from_static("x-understudy-index");

/// Limits that apply to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Longest wait for the next chunk of a request body (a body that stalls is cut: 408).
    pub body_timeout: Duration,
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
    /// The tracer when tracing is on; None costs the request path nothing.
    pub telemetry: Option<Telemetry>,
}

/// What the phases learn about one request, carried from one to the next. Dropped before the
/// request was recorded, it records it as cancelled.
struct Ctx {
    /// Where a request cancelled before its response head is recorded.
    metrics: Arc<Metrics>,
    /// Set once the request is recorded, or its recording handed to the response body.
    recorded: bool,
    started: Instant,
    method: Method,
    path: String,
    /// The managed API the request speaks; None for pass-through.
    shape: Option<ApiShape>,
    /// The route, once found; None for unrouted requests.
    route: Option<Arc<Route>>,
    /// The release that serves, once chosen.
    release: Option<Arc<Release>>,
    /// The `model` the client sent, put back into the response.
    client_model: Option<String>,
    /// Where the mirror takes the client's answer, when one was started.
    paired: Option<ClientTap>,
    /// The request's span, when tracing is on; handed to the response body with the recording.
    span: Option<LlmSpan>,
}

impl Ctx {
    fn new<B>(req: &Request<B>, metrics: &Arc<Metrics>) -> Self {
        Ctx {
            metrics: Arc::clone(metrics),
            recorded: false,
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            shape: None,
            route: None,
            release: None,
            client_model: None,
            paired: None,
            span: None,
        }
    }

    fn route_label(&self) -> &str {
        self.route.as_ref().map_or(UNROUTED, |r| r.name.as_str())
    }

    fn release_label(&self) -> &str {
        self.release
            .as_ref()
            .map_or(NO_RELEASE, |r| r.version_label.as_str())
    }
}

/// The status a request cancelled by its client is recorded with (nginx's "client closed
/// request"); its metric label and log say `cancelled`.
const CLIENT_CLOSED: u16 = 499;

impl Drop for Ctx {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        // Dropped unrecorded: the client went away before the response head.
        let span = self.span.take();
        let traced = span.as_ref().map(LlmSpan::enter);
        let series = match (&self.route, &self.release) {
            (Some(route), Some(release)) => Some(release.series(&self.metrics, &route.name)),
            _ => None,
        };
        self.metrics.request_finished(&RequestRecord {
            series,
            route: self.route_label(),
            release: self.release_label(),
            method: &self.method,
            path: &self.path,
            status: CLIENT_CLOSED,
            duration: self.started.elapsed(),
            ttfb: None,
            error_kind: None,
            prompt_tokens: None,
            completion_tokens: None,
            prices: None,
            cancelled: true,
        });
        drop(traced);
        if let Some(span) = span {
            span.finish(&Observation::default(), true);
        }
    }
}

impl Proxy {
    /// Answers one client request. Never fails: errors become API-shaped error responses.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let mut ctx = Ctx::new(&req, &self.metrics);
        if let Some(resp) = request_filter(&mut ctx, &req) {
            // Health checks are not client requests: not recorded.
            ctx.recorded = true;
            return Ok(resp);
        }
        if let Some(telemetry) = &self.telemetry {
            let span = telemetry.client_request(req.method(), &ctx.path, req.headers(), ctx.shape);
            ctx.span = Some(span);
        }
        let result = match ctx.shape {
            Some(shape) => self.managed(&mut ctx, shape, req).await,
            None => self.passthrough(&mut ctx, req).await,
        };
        Ok(result.unwrap_or_else(|err| self.fail(&mut ctx, err)))
    }

    /// A request of one of the four managed APIs: every phase.
    async fn managed(
        &self,
        ctx: &mut Ctx,
        shape: ApiShape,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body, &self.limits).await?;
        let json =
            RequestBody::parse(&bytes).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
        let Some(plan) = self.route(ctx, &parts, &json)? else {
            // No route: the default upstream gets the request as the client sent it.
            let upstream = Arc::clone(&self.state.load().default_upstream);
            let mut headers = outbound_headers(parts.headers, &upstream, false);
            if let Some(span) = &ctx.span {
                span.inject(&mut headers);
            }
            let req = build_request(&upstream, &parts.uri, headers, bytes)?;
            let resp = self.forward(&upstream, req).await?;
            return Ok(self.response_filter(ctx, resp));
        };
        ctx.release = Some(Arc::clone(&plan.serve));
        ctx.client_model = json.model().map(|m| m.into_owned());
        // The mirror needs the client's own headers; the serving request takes them over.
        let mirror_headers = plan.mirror.as_ref().map(|_| parts.headers.clone());
        let mut upstream_req =
            upstream_request(shape, &json, &plan.serve, parts.headers, &parts.uri)?;
        if let (Some(span), Some(route)) = (&mut ctx.span, &ctx.route) {
            span.routed(shape, route, &plan.serve, plan.served_role);
            span.inject(upstream_req.headers_mut());
        }
        if let (Some(mirror), Some(headers)) = (&plan.mirror, mirror_headers) {
            ctx.paired = self.mirror(ctx, shape, &plan, mirror, &parts.uri, headers, &bytes);
        }
        // The client's body and URI are slices of the connection's read buffer (and so are its
        // headers, now in the upstream request, which is written before this first waits). Let
        // them go before waiting for the answer: the connection's next read then reuses that
        // buffer instead of allocating another for every request in flight.
        drop(json);
        drop(bytes);
        drop(parts.uri);
        let resp = self.forward(&plan.serve.upstream, upstream_req).await?;
        Ok(self.response_filter(ctx, resp))
    }

    /// Any other request: to the default upstream as it is, its body streamed.
    async fn passthrough(
        &self,
        ctx: &mut Ctx,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let upstream = Arc::clone(&self.state.load().default_upstream);
        let (parts, body) = req.into_parts();
        let limit = self.limits.max_body_bytes;
        if content_length(&parts.headers).is_some_and(|n| n > limit as u64) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let stalled = Arc::new(AtomicBool::new(false));
        let body = Limited::new(
            ProgressBody::new(body, self.limits.body_timeout, Arc::clone(&stalled)),
            limit,
        )
        .boxed();
        let mut headers = outbound_headers(parts.headers, &upstream, false);
        if let Some(span) = &ctx.span {
            span.inject(&mut headers);
        }
        let uri = upstream
            .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .map_err(|e| bad_uri(&upstream, &e))?;
        let mut out = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(body)
            .map_err(|e| bad_uri(&upstream, &e))?;
        *out.headers_mut() = headers;
        let resp = self.forward(&upstream, out).await.map_err(|e| {
            // The upstream leg failed because the client's body stalled: the client's fault.
            if stalled.load(Ordering::Relaxed) {
                body_timeout(&self.limits)
            } else {
                e
            }
        })?;
        Ok(self.response_filter(ctx, resp))
    }

    /// Phase 3: the route (by header, else by the `model` alias) and what to do with the
    /// request. None when no route matches.
    fn route(
        &self,
        ctx: &mut Ctx,
        parts: &Parts,
        json: &RequestBody<'_>,
    ) -> Result<Option<Plan>, ProxyError> {
        let snapshot = self.state.load();
        let route = match parts.headers.get(&ROUTE_HEADER) {
            Some(name) => {
                let name = String::from_utf8_lossy(name.as_bytes());
                let route = snapshot.route(&name).cloned();
                Some(route.ok_or_else(|| ProxyError::UnknownRoute(name.into_owned()))?)
            }
            None => json
                .model()
                .and_then(|m| snapshot.route_by_alias(&m).cloned()),
        };
        let Some(route) = route else { return Ok(None) };
        let sticky = sticky_value(&route, &parts.headers, json);
        let point = sample_point(
            &route.name,
            sticky.as_deref().map(str::as_bytes),
            rand::random,
        );
        let plan = plan(&route, point);
        ctx.route = Some(route);
        Ok(Some(plan))
    }

    /// Phase 5: hands the request to the shadow for `mirror`, off the client's path. Returns
    /// where the mirror waits for the client's observation; None when its budget dropped it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one phase's inputs, each used once"
    )]
    fn mirror(
        &self,
        ctx: &Ctx,
        shape: ApiShape,
        plan: &Plan,
        mirror: &Arc<Release>,
        uri: &http::Uri,
        headers: http::HeaderMap,
        bytes: &Bytes,
    ) -> Option<ClientTap> {
        let route = Arc::clone(ctx.route.as_ref()?);
        self.shadow.start(MirrorRequest {
            route,
            shape,
            served: Arc::clone(&plan.serve),
            served_role: plan.served_role,
            mirror: Arc::clone(mirror),
            uri: uri.clone(),
            headers,
            body: bytes.clone(),
            trace: self
                .telemetry
                .as_ref()
                .zip(ctx.span.as_ref())
                .map(|(t, s)| t.parent(s)),
        })
    }

    /// Phase 6: sends the request and waits for the response head (bounded).
    async fn forward(
        &self,
        upstream: &Upstream,
        req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        Ok(self
            .client
            .send(upstream, req, self.limits.upstream_timeout)
            .await?)
    }

    /// Phase 7: the client's response: hop-by-hop headers out, the proxy's headers in, the body
    /// relayed through the model rewriter and the observer.
    fn response_filter(&self, ctx: &mut Ctx, resp: Response<UpstreamBody>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut rewriter = None;
        if let Some(release) = &ctx.release {
            if let (Some(route), Some(alias)) = (&ctx.route, &ctx.client_model) {
                if *alias != release.model {
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
                .insert(RELEASE_HEADER, number_header(release.version));
            if let Some(index) = &release.index {
                parts.headers.insert(INDEX_HEADER, index.clone());
            }
        }
        // The answer is read for its outcome only: a mirror waiting to compare it reads it whole
        // from the tap, in its own task, off the client's path.
        let paired = ctx.paired.take();
        if let Some(tap) = &paired {
            tap.head(sse);
        }
        let max = self.limits.observe_max_bytes;
        let observer = ctx.shape.map(|s| Observer::usage_only(s, sse, max));
        let completion = Completion {
            metrics: Arc::clone(&self.metrics),
            route: ctx.route.clone(),
            release: ctx.release.clone(),
            method: ctx.method.clone(),
            path: std::mem::take(&mut ctx.path),
            status: parts.status.as_u16(),
            started: ctx.started,
            paired,
            span: ctx.span.take(),
        };
        // From here the response body records the request, once, when it ends.
        ctx.recorded = true;
        let body = RelayBody::new(
            body,
            rewriter,
            observer,
            self.limits.upstream_timeout,
            completion,
        );
        Response::from_parts(parts, BodyExt::boxed(body))
    }

    /// A request that ends in an error before any upstream body: recorded, then answered in
    /// the client API's error shape.
    fn fail(&self, ctx: &mut Ctx, err: ProxyError) -> Response<Body> {
        let status = err.status().as_u16();
        ctx.recorded = true;
        if let ProxyError::BodyTimeout { .. } = err {
            self.metrics.request_rejected(RejectReason::BodyTimeout);
        }
        let span = ctx.span.take();
        let traced = span.as_ref().map(LlmSpan::enter);
        self.metrics.request_finished(&RequestRecord {
            series: None,
            route: ctx.route_label(),
            release: ctx.release_label(),
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
        drop(traced);
        if let Some(span) = span {
            span.failed(status, err.code());
        }
        let mut resp = err.into_response(ctx.shape);
        // An embedding route's answer names its index, errors included: the caller must
        // never search another space than the one its release embeds into.
        if let Some(index) = ctx.release.as_ref().and_then(|r| r.index.clone()) {
            resp.headers_mut().insert(INDEX_HEADER, index);
        }
        resp
    }
}

/// Phase 4: the request the serving release receives: its model, prompt and parameters in the
/// body, the client's headers cleaned, the upstream's credential.
fn upstream_request(
    shape: ApiShape,
    json: &RequestBody<'_>,
    release: &Release,
    headers: http::HeaderMap,
    uri: &http::Uri,
) -> Result<Request<Body>, ProxyError> {
    let body = rewrite_request(shape, json, release, false)
        .map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    let headers = outbound_headers(headers, &release.upstream, true);
    Ok(build_request(
        &release.upstream,
        uri,
        headers,
        Bytes::from(body),
    )?)
}

/// Phase 1: health endpoints and the request's API shape.
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

/// Phase 2: the whole request body, refused early when its declared length is over the limit,
/// cut when it sends nothing for `body_timeout`.
async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    limits: &Limits,
) -> Result<Bytes, ProxyError> {
    let limit = limits.max_body_bytes;
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let stalled = Arc::new(AtomicBool::new(false));
    let body = ProgressBody::new(body, limits.body_timeout, Arc::clone(&stalled));
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(_) if stalled.load(Ordering::Relaxed) => Err(body_timeout(limits)),
        Err(e) => Err(ProxyError::ClientBody(e.to_string())),
    }
}

fn body_timeout(limits: &Limits) -> ProxyError {
    ProxyError::BodyTimeout {
        secs: limits.body_timeout.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancelled(metrics: &Metrics) -> u64 {
        metrics
            .requests
            .with_label_values(&[UNROUTED, NO_RELEASE, "cancelled"])
            .get()
    }

    #[test]
    fn a_request_dropped_unrecorded_counts_as_cancelled_once() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let req = Request::post("/v1/chat/completions").body(()).unwrap();
        drop(Ctx::new(&req, &metrics));
        assert_eq!(cancelled(&metrics), 1);
        // Recorded elsewhere (an error answered, or the body took it over): not again.
        let mut ctx = Ctx::new(&req, &metrics);
        ctx.recorded = true;
        drop(ctx);
        assert_eq!(cancelled(&metrics), 1);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"understudy_request_duration_seconds_count{release="none",route="_unrouted"} 1"#
            ),
            "{text}"
        );
    }
}
