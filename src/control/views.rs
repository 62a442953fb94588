//! What the admin API shows of the control plane, as typed `Serialize` views: the JSON of
//! `GET /admin/routes`, `GET /admin/routes/{route}`, change answers and Alertmanager outcomes.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::durability::StoreStatus;
use super::indexes::{self, IndexView};
use super::judge::ScorerQuality;
use super::lifecycle::RouteHistory;
use super::rollout::RolloutView;
use super::store::{EventRecord, ReleaseRecord};
use super::trend::TrendPoint;
use crate::domain::{EventKind, Phase, ReleaseState, Trigger};
use crate::metrics::JudgeFigures;

/// A route, with its releases and events when asked for its detail.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub name: String,
    /// The alias applications send.
    pub model: String,
    pub phase: Phase,
    pub share: f64,
    /// Version of the release that serves the route's traffic.
    pub serving: u32,
    /// Embedding routes: the vector index of the serving release, as in `x-understudy-index`
    /// (a canary's share of requests names the candidate's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Embedding routes: every index the releases name, with its state and retention.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexView>,
    pub stable: Option<ReleaseView>,
    pub candidate: Option<ReleaseView>,
    pub quality: Option<f64>,
    pub noise_floor: Option<f64>,
    pub samples: usize,
    pub error_rate: f64,
    /// Each scorer's own quality, once it can be judged.
    pub scorers: Vec<ScorerView>,
    /// The store's health; `pending` counts this route's changes in effect but not yet durable.
    pub store: StoreStatus,
    /// Where the automatic rollout stands and what its step waits for, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// In the answer to a change: whether it is durable already (false: in effect, and written
    /// as soon as the store can take it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<bool>,
    /// Every release, oldest first (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub releases: Option<Vec<ReleaseView>>,
    /// The newest events, oldest first (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
    /// Quality and noise floor over the recent past, oldest first (detail only; in memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend: Option<Vec<TrendPoint>>,
}

impl RouteView {
    /// The view of `h`, judged by `judge`.
    pub fn new(
        alias: &str,
        h: &RouteHistory,
        judge: JudgeFigures,
        error_rate: f64,
        scorers: Vec<ScorerView>,
        store: StoreStatus,
    ) -> Self {
        let view = |v: u32| h.release(v).map(|r| ReleaseView::new(r, h.state_of(r)));
        RouteView {
            name: h.record.route.clone(),
            model: alias.to_owned(),
            phase: h.record.phase,
            share: h.record.share,
            serving: h.serving(),
            index: indexes::serving_index(h).map(str::to_owned),
            indexes: indexes::views(h, now_ms()),
            stable: view(h.record.stable),
            candidate: h.record.candidate.and_then(view),
            quality: judge.quality,
            noise_floor: judge.noise_floor,
            samples: judge.samples,
            error_rate,
            scorers,
            store,
            rollout: None,
            durable: None,
            releases: None,
            events: None,
            trend: None,
        }
    }

    /// Without the releases' definitions (system prompts and parameters): what the admin API
    /// shows a caller without the admin token.
    pub fn redacted(mut self) -> Self {
        let releases = self.stable.iter_mut().chain(self.candidate.iter_mut());
        for r in releases.chain(self.releases.iter_mut().flatten()) {
            r.definition = None;
        }
        self
    }

    /// With every release and the given events.
    pub fn with_detail(mut self, h: &RouteHistory, events: &[EventRecord]) -> Self {
        self.releases = Some(
            h.releases
                .iter()
                .map(|r| ReleaseView::new(r, h.state_of(r)))
                .collect(),
        );
        self.events = Some(events.iter().map(EventView::from).collect());
        self
    }

    /// With the route's trend.
    pub fn with_trend(mut self, points: Vec<TrendPoint>) -> Self {
        self.trend = Some(points);
        self
    }
}

/// One scorer's own quality.
#[derive(Debug, Clone, Serialize)]
pub struct ScorerView {
    pub scorer: &'static str,
    pub quality: f64,
    pub noise_floor: f64,
    pub samples: usize,
}

impl From<ScorerQuality> for ScorerView {
    fn from(q: ScorerQuality) -> Self {
        ScorerView {
            scorer: q.scorer,
            quality: q.quality,
            noise_floor: q.noise_floor,
            samples: q.samples,
        }
    }
}

/// One release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    pub version: u32,
    pub label: Option<String>,
    pub upstream: String,
    pub model: String,
    /// The system prompt and parameters; left out of the JSON when redacted (no admin token).
    #[serde(flatten)]
    pub definition: Option<DefinitionView>,
    /// RFC 3339.
    pub created_at: String,
    pub state: ReleaseState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBackView>,
    /// Embedding routes: the vector index built with its model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
}

impl ReleaseView {
    fn new(r: &ReleaseRecord, state: ReleaseState) -> Self {
        ReleaseView {
            version: r.version,
            label: r.label.clone(),
            upstream: r.upstream.clone(),
            model: r.model.clone(),
            definition: Some(DefinitionView {
                system_prompt: r.system_prompt.clone(),
                params: r.params.clone(),
            }),
            created_at: rfc3339(r.created_at_ms),
            state,
            rolled_back: r.rolled_back.as_ref().map(|rb| RolledBackView {
                at: rfc3339(rb.at_ms),
                trigger: rb.trigger,
                reason: rb.reason.clone(),
            }),
            index: r.index.clone(),
        }
    }
}

/// What a release sends beyond its model: shown only with the admin token (prompts are often
/// the product's own work, and may hold more than their authors meant to publish).
#[derive(Debug, Clone, Serialize)]
pub struct DefinitionView {
    pub system_prompt: Option<String>,
    pub params: Map<String, Value>,
}

/// When and why a release was rolled back.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBackView {
    /// RFC 3339.
    pub at: String,
    pub trigger: Trigger,
    pub reason: String,
}

/// One entry of the event log.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// RFC 3339.
    pub at: String,
    pub kind: EventKind,
    pub from: Option<u32>,
    pub to: Option<u32>,
    pub phase: Option<Phase>,
    pub share: Option<f64>,
    pub trigger: Option<Trigger>,
    pub reason: Option<String>,
}

impl From<&EventRecord> for EventView {
    fn from(e: &EventRecord) -> Self {
        EventView {
            at: rfc3339(e.at_ms),
            kind: e.kind,
            from: e.from_version,
            to: e.to_version,
            phase: e.phase,
            share: e.share,
            trigger: e.trigger,
            reason: e.reason.clone(),
        }
    }
}

/// What one Alertmanager alert did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertOutcome {
    pub route: String,
    pub outcome: AlertEffect,
    /// False while a rollback of the route is in effect but not yet written to the store.
    pub durable: bool,
}

/// The effect of one firing alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEffect {
    /// The route's candidate was rolled back.
    RolledBack,
    /// The route has no candidate (a repeat, or nothing to do).
    NoCandidate,
    /// The alert began before the current candidate was published: about an earlier one.
    Stale,
    /// No route of that name.
    UnknownRoute,
    /// The rollback could not be committed.
    Failed,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds as RFC 3339 with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_release_shows_no_prompt_or_params() {
        let release = ReleaseView {
            version: 2,
            label: Some("v2".into()),
            upstream: "openai".into(),
            model: "m-1".into(),
            definition: Some(DefinitionView {
                system_prompt: Some("secret".into()),
                params: serde_json::json!({"temperature": 0.2})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            }),
            created_at: rfc3339(0),
            state: ReleaseState::Candidate,
            rolled_back: None,
            index: None,
        };
        let full = serde_json::to_value(&release).unwrap_or_default();
        assert_eq!(full["system_prompt"], "secret");
        assert_eq!(full["params"]["temperature"], 0.2);
        let route = RouteView {
            name: "bot".into(),
            model: "bot".into(),
            phase: Phase::Shadow,
            share: 0.1,
            serving: 1,
            index: None,
            indexes: Vec::new(),
            stable: None,
            candidate: Some(release.clone()),
            quality: None,
            noise_floor: None,
            samples: 0,
            error_rate: 0.0,
            scorers: Vec::new(),
            store: super::super::durability::StoreStatus {
                state: "ok",
                reason: None,
                pending: 0,
            },
            rollout: None,
            durable: None,
            releases: Some(vec![release]),
            events: None,
            trend: None,
        }
        .redacted();
        let v = serde_json::to_value(&route).unwrap_or_default();
        for r in [&v["candidate"], &v["releases"][0]] {
            let keys: Vec<&str> = r
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            assert_eq!(
                keys,
                [
                    "created_at",
                    "label",
                    "model",
                    "state",
                    "upstream",
                    "version"
                ],
                "{v}"
            );
        }
    }
}
