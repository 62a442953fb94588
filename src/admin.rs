//! The admin listener: `/metrics`, health, and the route API of the contract. Reads come from
//! the current snapshot and the controller; changes go to the controller, which persists them
//! before answering. Mutating calls (and the review samples, which hold user prompts) need the
//! bearer token, compared in constant time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::control::{Command, RouteStats, SampleOrder};
use crate::error::error_response;
use crate::metrics::Metrics;
use crate::proxy::text_response;
use crate::state::{Release, Route, Snapshot};
use crate::upstream::{full, Body};

pub struct Admin {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Commands for the controller, the one owner of change.
    pub control: mpsc::Sender<Command>,
    /// The admin bearer token; None refuses every authenticated call.
    pub token: Option<String>,
}

type Reply = Result<Response<Body>, Infallible>;

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let resp = match (req.method(), segments.as_slice()) {
            (&Method::GET, ["metrics"]) => {
                let mut r = Response::new(full(self.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::GET, ["healthz"]) => text_response(StatusCode::OK, "ok\n"),
            (&Method::GET, ["readyz"]) => text_response(StatusCode::OK, "ready\n"),
            (&Method::GET, ["admin", "routes"]) => {
                let stats = self.stats().await;
                let snapshot = self.state.load();
                let mut routes: Vec<&Arc<Route>> = snapshot.routes().collect();
                routes.sort_by(|a, b| a.name.cmp(&b.name));
                let list: Vec<Value> = routes
                    .iter()
                    .map(|r| route_json(r, stats.get(&r.name)))
                    .collect();
                json_response(StatusCode::OK, &json!({ "routes": list }))
            }
            (&Method::GET, ["admin", "routes", name]) => {
                let stats = self.stats().await;
                match self.state.load().route(name) {
                    Some(r) => json_response(StatusCode::OK, &route_json(r, stats.get(*name))),
                    None => not_found(name),
                }
            }
            (&Method::GET, ["admin", "routes", name, "samples"]) => {
                if !self.authorized(&req) {
                    return Ok(unauthorized());
                }
                let query = req.uri().query().unwrap_or("");
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                };
                let order = match param("order") {
                    None | Some("worst") => SampleOrder::Worst,
                    Some("random") => SampleOrder::Random,
                    Some(other) => {
                        return Ok(bad_request(&format!(
                            "order must be worst or random, not {other:?}"
                        )))
                    }
                };
                let limit = match param("limit").map(str::parse::<usize>) {
                    None => 20,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => return Ok(bad_request("limit must be a whole number")),
                };
                let (reply, rx) = oneshot::channel();
                let cmd = Command::Samples {
                    route: name.to_string(),
                    order,
                    limit,
                    reply,
                };
                match self.ask(cmd, rx).await {
                    Some(Some(samples)) => json_response(
                        StatusCode::OK,
                        &json!({ "route": name, "samples": samples }),
                    ),
                    Some(None) if self.state.load().route(name).is_some() => {
                        json_response(StatusCode::OK, &json!({ "route": name, "samples": [] }))
                    }
                    Some(None) => not_found(name),
                    None => unavailable(),
                }
            }
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint",
                None,
            ),
        };
        Ok(resp)
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        given.as_bytes().ct_eq(token.as_bytes()).into()
    }

    async fn ask<T>(&self, cmd: Command, rx: oneshot::Receiver<T>) -> Option<T> {
        self.control.send(cmd).await.ok()?;
        rx.await.ok()
    }

    async fn stats(&self) -> HashMap<String, RouteStats> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::Stats { reply }, rx)
            .await
            .unwrap_or_default()
    }
}

pub fn release_json(r: &Release) -> Value {
    json!({
        "version": r.version,
        "label": r.label,
        "upstream": r.upstream.name,
        "model": r.model,
        "system_prompt": r.system_prompt,
        "params": r.params.iter().map(|(k, v)| (k.clone(), serde_json::from_str::<Value>(v.get()).unwrap_or(Value::Null))).collect::<serde_json::Map<_, _>>(),
    })
}

fn route_json(r: &Route, stats: Option<&RouteStats>) -> Value {
    json!({
        "name": r.name,
        "model": r.alias,
        "phase": r.phase.as_str(),
        "share": r.share,
        "serving": r.serving().version,
        "stable": release_json(&r.stable),
        "candidate": r.candidate.as_deref().map(release_json),
        "quality": stats.and_then(|s| s.quality),
        "noise_floor": stats.and_then(|s| s.noise_floor),
        "samples": stats.map_or(0, |s| s.samples),
        "error_rate": stats.map_or(0.0, |s| s.error_rate),
    })
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn not_found(route: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "unknown_route",
        &format!("no route named {route:?}"),
        None,
    )
}

fn bad_request(msg: &str) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, "invalid_request", msg, None)
}

fn unauthorized() -> Response<Body> {
    let mut r = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong admin bearer token",
        None,
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn unavailable() -> Response<Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "controller is not running",
        None,
    )
}
