//! The admin listener: `/metrics`, health, the route API of the contract and the Alertmanager
//! webhook. Reads and changes both go to the controller, which commits every change to the
//! store before it answers. Mutating calls (and the review samples, which hold user prompts)
//! need the bearer token, compared in constant time; route reads without it leave out the
//! releases' system prompts and parameters.
//!
//! Every input is checked here, at the edge, with the checks the configuration file uses
//! (`crate::domain`): a body over [`MAX_ADMIN_BODY`] is a 413, a share that is not a number in
//! [0, 1] (or an explicit `null`) a 400, a release through [`ReleaseSpec::problems`] in the
//! controller; a rollback's reason is cut to [`MAX_REASON_BYTES`].
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
    AlertEffect, Change, ChangeError, Command, Refused, ReloadRequest, RolloutAction, RouteView,
    SampleOrder, StoreStatus,
};
use crate::domain::{
    cut, full, index_name_problem, share_problem, Body, Phase, Prices, ReleaseSpec, Trigger,
    MAX_REASON_BYTES,
};
use crate::metrics::Metrics;
use crate::proxy::{error_response, text_response};
pub use listing::Listings;

mod alertmanager;
mod client;
mod listing;
mod reload;
mod replay;
mod ui;

pub use client::{AdminClient, ClientError};
pub use replay::Replayer;

/// Largest admin request body; a larger one is answered 413.
const MAX_ADMIN_BODY: usize = 1 << 20;
/// Most review samples one `GET .../samples` lists, whatever `limit` asks for.
const MAX_SAMPLES_LISTED: usize = 200;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Commands for the controller, the one owner of change.
    pub control: mpsc::Sender<Command>,
    /// The store's health, published by the controller; read by `/readyz` without a round trip
    /// to the controller (which may be waiting on the disk).
    pub store: watch::Receiver<StoreStatus>,
    /// The admin bearer token.
    pub token: Option<String>,
    /// Listings answered at once, each until its body is sent: bounds what slow readers hold.
    pub listings: Listings,
    /// Runs `POST .../replay` cases through the upstreams.
    pub replayer: Replayer,
    /// Reload requests for the server's reloader; None when not started from a file.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
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
        let authorized = self.authorized(&req);
        let mutating =
            method == Method::POST || matches!(segments.as_slice(), [_, _, _, "samples"]);
        if mutating && !authorized {
            return Ok(unauthorized());
        }
        // Without the token, releases are shown without their prompts and parameters.
        let shown = |view: RouteView| if authorized { view } else { view.redacted() };
        // The listings can be large: a bounded number at once, each until it is sent.
        let listing =
            method == Method::GET && matches!(segments.as_slice(), ["admin", "routes", ..]);
        let permit = if listing {
            match self.listings.try_acquire() {
                Some(permit) => Some(permit),
                None => return Ok(busy()),
            }
        } else {
            None
        };
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
            (&Method::GET, ["ui"]) => ui::page(authorized),
            (&Method::GET, ["ui", asset]) => ui::asset(asset).unwrap_or_else(|| {
                error_response(StatusCode::NOT_FOUND, "not_found", "no such asset", None)
            }),
            (&Method::GET, ["admin", "routes"]) => {
                let (reply, rx) = oneshot::channel();
                match self.ask(Command::Routes { reply }, rx).await {
                    Some(routes) => {
                        let routes: Vec<RouteView> = routes.into_iter().map(shown).collect();
                        json_response(StatusCode::OK, &json!({ "routes": routes }))
                    }
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
                    Some(Some(v)) => json_response(StatusCode::OK, &shown(v)),
                    Some(None) => not_found(name),
                    None => unavailable(),
                }
            }
            (&Method::GET, ["admin", "fleet"]) => {
                let (reply, rx) = oneshot::channel();
                match self.ask(Command::Fleet { reply }, rx).await {
                    Some(Ok(view)) => json_response(StatusCode::OK, &view),
                    Some(Err(e)) => error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        &e.to_string(),
                        None,
                    ),
                    None => unavailable(),
                }
            }
            (&Method::GET, ["admin", "routes", name, "samples"]) => {
                self.samples(name, req.uri().query()).await
            }
            (&Method::POST, ["admin", "routes", name, "indexes", index, "drop"]) => {
                // Embedding routes: rollbacks onto a dropped index are refused from now on.
                match index_name_problem(index) {
                    Some(problem) => bad_request(&format!("index {problem}")),
                    None => {
                        let change = Change::DropIndex((*index).to_owned());
                        self.change(name.to_string(), change).await
                    }
                }
            }
            (&Method::POST, ["admin", "routes", name, "replay"]) => match read_json(req).await {
                Ok(body) => self.replay(name, body).await,
                Err(e) => e.into_response(),
            },
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
            (&Method::POST, ["admin", "reload"]) => reload::reload(self.reload.as_ref()).await,
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
        Ok(match permit {
            Some(permit) => listing::held(resp, permit).await,
            None => resp,
        })
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

    /// One replayed case: see `replay.rs`.
    async fn replay(&self, name: &str, body: Value) -> Response<Body> {
        let (case, shape) = match replay::CaseBody::parse(body) {
            Ok(parsed) => parsed,
            Err(e) => return e.into_response(),
        };
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Release {
            route: name.to_string(),
            version: case.release,
            reply,
        };
        match self.ask(cmd, rx).await {
            Some(Some((route, release))) => {
                self.replayer.run(route, release, shape, case.request).await
            }
            Some(None) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &match case.release {
                    Some(v) => format!("route {name:?} has no release #{v}"),
                    None => format!("no route {name:?} with a candidate (name a release)"),
                },
                None,
            ),
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
            Some(Ok(n)) => n.min(MAX_SAMPLES_LISTED),
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
    /// `understudy_route` rolls that route's candidate back. The valid alerts of a batch are
    /// applied and the invalid ones listed under `invalid`; a batch with nothing but invalid
    /// alerts is a 400, so the sender sees that nothing was applied.
    async fn alertmanager(&self, body: Value) -> Response<Body> {
        let alertmanager::Batch { alerts, invalid } = match alertmanager::firing(body) {
            Ok(batch) => batch,
            Err(message) => return bad_request(&message),
        };
        for bad in &invalid {
            tracing::warn!(index = bad.index, route = bad.route, error = %bad.error, "invalid alert ignored");
        }
        if alerts.is_empty() && !invalid.is_empty() {
            let said: Vec<String> = invalid.iter().map(ToString::to_string).collect();
            return bad_request(&format!("no valid alert: {}", said.join("; ")));
        }
        let (reply, rx) = oneshot::channel();
        match self.ask(Command::Alerts { alerts, reply }, rx).await {
            Some(outcomes) => {
                // A 5xx makes Alertmanager send the batch again: until every rollback it asked
                // for is durable. A repeat finds no candidate, so retrying is harmless.
                let durable = outcomes
                    .iter()
                    .all(|o| o.durable && o.outcome != AlertEffect::Failed);
                if durable {
                    json_response(
                        StatusCode::OK,
                        &json!({ "alerts": outcomes, "invalid": invalid }),
                    )
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({
                            "alerts": outcomes,
                            "invalid": invalid,
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
    /// Embedding routes: the vector index built with this release's model.
    index: Option<String>,
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
    /// Absent: the share is kept. Present, it must be a number in [0, 1]: an explicit `null`
    /// (which is what a NaN or an infinity becomes in JSON) is refused, never read as "keep".
    #[serde(default, deserialize_with = "present")]
    share: Option<Value>,
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<u32>,
    reason: Option<String>,
}

/// `POST /admin/routes/{route}/rollout`: `{"action": "pause" | "resume" | "skip"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    action: RolloutAction,
}

/// A refused admin request, before it reaches the controller.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("no such admin endpoint")]
    NoEndpoint,
}

impl ApiError {
    fn bad(message: String) -> Self {
        ApiError::Invalid(message)
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NoEndpoint => StatusCode::NOT_FOUND,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::TooLarge { .. } => "request_too_large",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::NoEndpoint => "not_found",
        }
    }

    fn into_response(self) -> Response<Body> {
        error_response(self.status(), self.code(), &self.to_string(), None)
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
                index: b.index,
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
            let share = match &b.share {
                None => None,
                Some(v) => Some(share_value(v).map_err(|p| ApiError::bad(format!("share {p}")))?),
            };
            Ok(Change::Promote { phase, share })
        }
        "rollback" => {
            let b: RollbackBody = if body.is_null() {
                RollbackBody::default()
            } else {
                serde_json::from_value(body).map_err(invalid)?
            };
            let reason = b
                .reason
                .map_or_else(|| "manual rollback".into(), |r| cut(&r, MAX_REASON_BYTES));
            Ok(Change::Rollback {
                to: b.to,
                trigger: Trigger::Manual,
                reason,
            })
        }
        "finalize" => Ok(Change::Finalize),
        "rollout" => {
            let b: RolloutBody = serde_json::from_value(body).map_err(invalid)?;
            Ok(Change::Rollout(b.action))
        }
        "restore" => replay::restore_change(body),
        _ => Err(ApiError::NoEndpoint),
    }
}

/// A share given in JSON: a number in [0, 1], or why not.
fn share_value(v: &Value) -> Result<f64, String> {
    let kind = match v {
        Value::Number(n) => match n.as_f64() {
            Some(s) => return share_problem(s).map_or(Ok(s), Err),
            None => "a number out of range",
        },
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Err(format!("must be a number between 0 and 1, got {kind}"))
}

/// The request's JSON body (null when empty); a 413 over [`MAX_ADMIN_BODY`] (refused from its
/// declared length before reading, when it has one), a 400 when it is not JSON.
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let too_large = ApiError::TooLarge {
        limit: MAX_ADMIN_BODY,
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return Err(too_large);
    }
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large),
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

/// Every listing slot is taken by answers still being sent.
fn busy() -> Response<Body> {
    let mut r = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "too many admin listings are being sent; retry shortly",
        None,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn promote_share(body: Value) -> Result<Option<f64>, String> {
        match parse_change("promote", body) {
            Ok(Change::Promote { share, .. }) => Ok(share),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(format!("{} {e}", e.status().as_u16())),
        }
    }

    #[test]
    fn shares_absent_kept_present_checked() {
        assert_eq!(promote_share(json!({"phase": "canary"})), Ok(None));
        assert_eq!(
            promote_share(json!({"phase": "canary", "share": 0.25})),
            Ok(Some(0.25))
        );
        assert_eq!(
            promote_share(json!({"phase": "canary", "share": 1})),
            Ok(Some(1.0))
        );
        for (share, said) in [
            (
                json!(null),
                "400 share must be a number between 0 and 1, got null",
            ),
            (
                json!("0.5"),
                "400 share must be a number between 0 and 1, got a string",
            ),
            (json!(-1), "400 share must be between 0 and 1, got -1"),
            (json!(2.5), "400 share must be between 0 and 1, got 2.5"),
        ] {
            let body = json!({"phase": "canary", "share": share});
            assert_eq!(promote_share(body).err().as_deref(), Some(said));
        }
    }

    #[test]
    fn rollback_reasons_are_cut() {
        let body = json!({"reason": "r".repeat(MAX_REASON_BYTES * 100)});
        let Ok(Change::Rollback { reason, .. }) = parse_change("rollback", body) else {
            panic!("refused");
        };
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        let Ok(Change::Rollback { reason, .. }) = parse_change("rollback", Value::Null) else {
            panic!("refused");
        };
        assert_eq!(reason, "manual rollback");
    }

    #[test]
    fn errors_know_their_status() {
        let cases = [
            (ApiError::TooLarge { limit: 10 }, 413, "request_too_large"),
            (ApiError::bad("x".into()), 400, "invalid_request"),
            (ApiError::NoEndpoint, 404, "not_found"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e}");
        }
        assert!(matches!(
            parse_change("nope", Value::Null),
            Err(ApiError::NoEndpoint)
        ));
    }
}
