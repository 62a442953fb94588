//! The admin listener: `/metrics`, health, the route API of the contract and the Alertmanager
//! webhook. Reads and changes both go to the controller, which commits every change to the
//! store before it answers. Mutating calls (and the review samples, which hold user prompts)
//! need the bearer token, compared in constant time.
//!
//! While the store is failing, this listener's `/readyz` answers 503 with the reason (the
//! proxy listener's stays 200: it serves correctly from memory, and a probe failing there would
//! take the traffic away); a rollback answers 202 with `"durable": false` (in effect, not yet
//! written); the Alertmanager webhook answers 503 until its rollbacks are durable, so
//! Alertmanager retries; publish, promote and finalize answer 503.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, watch};

use crate::control::{
    AlertEffect, Change, ChangeError, Command, Refused, SampleOrder, StoreStatus,
};
use crate::domain::{full, Body, Phase, Prices, ReleaseSpec, Trigger};
use crate::metrics::Metrics;
use crate::proxy::{error_response, text_response};

mod alertmanager;
mod client;

pub use client::AdminClient;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1 << 20;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Commands for the controller, the one owner of change.
    pub control: mpsc::Sender<Command>,
    /// The store's health, published by the controller; read by `/readyz` without a round trip
    /// to the controller (which may be waiting on the disk).
    pub store: watch::Receiver<StoreStatus>,
    /// The admin bearer token.
    pub token: Option<String>,
}

type Reply = Result<Response<Body>, Infallible>;

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        // Each segment percent-decoded, so a route name the client encoded is found as named.
        let decoded: Vec<String> = req
            .uri()
            .path()
            .trim_matches('/')
            .split('/')
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let method = req.method().clone();
        let mutating =
            method == Method::POST || matches!(segments.as_slice(), [_, _, _, "samples"]);
        if mutating && !self.authorized(&req) {
            return Ok(unauthorized());
        }
        let resp = match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => {
                let mut r = Response::new(full(self.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::GET, ["healthz"]) => text_response(StatusCode::OK, "ok\n"),
            (&Method::GET, ["readyz"]) => self.readyz(),
            (&Method::GET, ["admin", "routes"]) => {
                let (reply, rx) = oneshot::channel();
                match self.ask(Command::Routes { reply }, rx).await {
                    Some(routes) => json_response(StatusCode::OK, &json!({ "routes": routes })),
                    None => unavailable(),
                }
            }
            (&Method::GET, ["admin", "routes", name]) => {
                let (reply, rx) = oneshot::channel();
                match self
                    .ask(
                        Command::Detail {
                            route: name.to_string(),
                            reply,
                        },
                        rx,
                    )
                    .await
                {
                    Some(Some(v)) => json_response(StatusCode::OK, &v),
                    Some(None) => not_found(name),
                    None => unavailable(),
                }
            }
            (&Method::GET, ["admin", "routes", name, "samples"]) => {
                self.samples(name, req.uri().query()).await
            }
            (&Method::POST, ["admin", "routes", name, action]) => {
                let name = name.to_string();
                let action = action.to_string();
                match read_json(req)
                    .await
                    .and_then(|body| parse_change(&action, body))
                {
                    Ok(change) => self.change(name, change).await,
                    Err(e) => e.into_response(),
                }
            }
            (&Method::POST, ["admin", "alertmanager"]) => match read_json(req).await {
                Ok(body) => self.alertmanager(body).await,
                Err(e) => e.into_response(),
            },
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint",
                None,
            ),
        };
        Ok(resp)
    }

    /// Ready while the store takes writes and every change is durable; else 503 and why.
    fn readyz(&self) -> Response<Body> {
        let status = self.store.borrow().clone();
        if status.ok() {
            return text_response(StatusCode::OK, "ready\n");
        }
        let mut text = format!(
            "not ready: store failing: {}",
            status.reason.as_deref().unwrap_or("unknown")
        );
        if status.pending > 0 {
            text.push_str(&format!(
                "; {} change(s) in effect but not yet durable",
                status.pending
            ));
        }
        text.push('\n');
        let mut r = Response::new(full(text));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
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

    async fn change(&self, route: String, change: Change) -> Response<Body> {
        let (reply, rx) = oneshot::channel();
        match self
            .ask(
                Command::Change {
                    route,
                    change,
                    reply,
                },
                rx,
            )
            .await
        {
            // 202: in effect, but not yet durable (the store is failing; it is retried).
            Some(Ok(v)) if v.durable == Some(false) => json_response(StatusCode::ACCEPTED, &v),
            Some(Ok(v)) => json_response(StatusCode::OK, &v),
            Some(Err(e)) => {
                let (status, code) = match &e {
                    ChangeError::UnknownRoute(_) | ChangeError::Refused(Refused::NotFound(_)) => {
                        (StatusCode::NOT_FOUND, "not_found")
                    }
                    ChangeError::Refused(Refused::Invalid(_)) => {
                        (StatusCode::BAD_REQUEST, "invalid_request")
                    }
                    ChangeError::Refused(Refused::Conflict(_)) => {
                        (StatusCode::CONFLICT, "conflict")
                    }
                    ChangeError::Store(_) | ChangeError::StoreUnavailable(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                    }
                };
                error_response(status, code, &e.to_string(), None)
            }
            None => unavailable(),
        }
    }

    async fn samples(&self, name: &str, query: Option<&str>) -> Response<Body> {
        let param = |k: &str| {
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .find_map(|(key, value)| (key == k).then_some(value))
        };
        let order = match param("order").as_deref() {
            None | Some("worst") => SampleOrder::Worst,
            Some("random") => SampleOrder::Random,
            Some(other) => {
                return bad_request(&format!("order must be worst or random, not {other:?}"))
            }
        };
        let limit = match param("limit").map(|l| l.parse::<usize>()) {
            None => 20,
            Some(Ok(n)) => n,
            Some(Err(_)) => return bad_request("limit must be a whole number"),
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
            Some(None) => not_found(name),
            None => unavailable(),
        }
    }

    /// Alertmanager's webhook (payload version 4): each firing alert labelled with
    /// `understudy_route` rolls that route's candidate back.
    async fn alertmanager(&self, body: Value) -> Response<Body> {
        let alerts = match alertmanager::firing(body) {
            Ok(alerts) => alerts,
            Err(message) => return bad_request(&message),
        };
        let (reply, rx) = oneshot::channel();
        match self.ask(Command::Alerts { alerts, reply }, rx).await {
            Some(outcomes) => {
                // A 5xx makes Alertmanager send the batch again: until every rollback it asked
                // for is durable. A repeat finds no candidate, so retrying is harmless.
                let durable = outcomes
                    .iter()
                    .all(|o| o.durable && o.outcome != AlertEffect::Failed);
                if durable {
                    json_response(StatusCode::OK, &json!({ "alerts": outcomes }))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({
                            "alerts": outcomes,
                            "error": {
                                "message": "rollback in effect but not yet durable: the store is failing; retry",
                                "type": "store_unavailable",
                                "code": "store_unavailable",
                            }
                        }),
                    )
                }
            }
            None => unavailable(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    label: Option<String>,
    upstream: String,
    model: String,
    system_prompt: Option<String>,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    prices: Option<PricesBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesBody {
    prompt_per_mtok: f64,
    completion_per_mtok: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    phase: String,
    share: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<u32>,
    reason: Option<String>,
}

/// A refused admin request, before it reaches the controller.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn into_response(self) -> Response<Body> {
        let code = if self.status == StatusCode::NOT_FOUND {
            "not_found"
        } else {
            "invalid_request"
        };
        error_response(self.status, code, &self.message, None)
    }
}

/// The change an admin POST asks for, or why not.
fn parse_change(action: &str, body: Value) -> Result<Change, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::bad(format!("{action}: {e}"));
    match action {
        "releases" => {
            let b: PublishBody = serde_json::from_value(body).map_err(invalid)?;
            let prices = b.prices.map(|p| Prices {
                prompt_per_mtok: p.prompt_per_mtok,
                completion_per_mtok: p.completion_per_mtok,
            });
            Ok(Change::Publish(ReleaseSpec {
                label: b.label,
                upstream: b.upstream,
                model: b.model,
                system_prompt: b.system_prompt,
                params: b.params,
                prices,
            }))
        }
        "promote" => {
            let b: PromoteBody = serde_json::from_value(body).map_err(invalid)?;
            let phase = b.phase.parse::<Phase>().map_err(|_| {
                ApiError::bad(format!(
                    "phase must be shadow, canary or promoted, not {:?}",
                    b.phase
                ))
            })?;
            Ok(Change::Promote {
                phase,
                share: b.share,
            })
        }
        "rollback" => {
            let b: RollbackBody = if body.is_null() {
                RollbackBody::default()
            } else {
                serde_json::from_value(body).map_err(invalid)?
            };
            let reason = b.reason.unwrap_or_else(|| "manual rollback".into());
            Ok(Change::Rollback {
                to: b.to,
                trigger: Trigger::Manual,
                reason,
            })
        }
        "finalize" => Ok(Change::Finalize),
        _ => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: "no such admin endpoint".into(),
        }),
    }
}

/// The request's JSON body (null when empty), or a 400.
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => return Err(ApiError::bad(format!("could not read the body: {e}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("body is not valid JSON: {e}")))
}

fn json_response(status: StatusCode, v: &impl Serialize) -> Response<Body> {
    // Serializing the views cannot fail: strings, numbers and JSON maps with string keys.
    let mut r = Response::new(full(serde_json::to_string(v).unwrap_or_default()));
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
