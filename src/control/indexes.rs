//! The vector indexes of an embedding route over its history, as pure functions: which ones
//! serve, which stopped serving and stay a rollback target for `index_retention`, which an
//! operator dropped; the guard at publish (a release's space against every release the route
//! has had) and the refusal to roll back onto an index that is gone. The controller calls
//! these and commits what they return; no I/O here.

use std::time::Duration;

use serde::Serialize;

use super::lifecycle::{event, Refused, RouteHistory};
use super::store::{IndexRecord, RouteRecord, Transition};
use super::views::rfc3339;
use crate::domain::{space_problems, EventKind, ReleaseSpec};
use crate::metrics::IndexGauge;

/// Where an index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// Stable's or the candidate's: queries are sent to it.
    Serving,
    /// Stopped serving; a rollback target until its retention ends.
    Retained,
    /// Its retention is over: a rollback to it is refused (it may be deleted).
    Expired,
    /// An operator dropped it: a rollback to it is refused.
    Dropped,
}

/// One index of a route, for the admin view and `understudy status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexView {
    pub name: String,
    pub state: IndexState,
    /// The releases that embed into it.
    pub releases: Vec<u32>,
    /// RFC 3339: until when it stays a rollback target (retained and expired ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<String>,
    /// Seconds of retention left (retained ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_left_secs: Option<u64>,
    /// RFC 3339, for dropped ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_at: Option<String>,
}

/// The index of release `version` of `h`, looking at `extra` (releases about to be added) too.
fn index_of<'a>(h: &'a RouteHistory, t: Option<&'a Transition>, version: u32) -> Option<&'a str> {
    h.release(version)
        .or_else(|| t?.new_releases.iter().find(|r| r.version == version))
        .and_then(|r| r.index.as_deref())
}

/// The indexes stable and the candidate of `rec` embed into.
fn in_use<'a>(h: &'a RouteHistory, t: Option<&'a Transition>, rec: &RouteRecord) -> Vec<&'a str> {
    [Some(rec.stable), rec.candidate]
        .into_iter()
        .flatten()
        .filter_map(|v| index_of(h, t, v))
        .collect()
}

/// The index records `t` must also write: each index that served before `t` and does not after
/// it stays a rollback target for `retention` from `now_ms`.
pub fn retired(
    h: &RouteHistory,
    t: &Transition,
    now_ms: i64,
    retention: Duration,
) -> Vec<IndexRecord> {
    let Some(after) = &t.route else {
        return Vec::new();
    };
    let after = in_use(h, Some(t), after);
    let mut out: Vec<IndexRecord> = Vec::new();
    for name in in_use(h, None, &h.record) {
        if after.contains(&name) || out.iter().any(|r| r.name == name) {
            continue;
        }
        let until = now_ms.saturating_add(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        out.push(IndexRecord {
            route: h.record.route.clone(),
            name: name.to_owned(),
            retained_until_ms: Some(until),
            dropped_at_ms: None,
        });
    }
    out
}

/// Why a rollback to release `to` is refused, if it is: its index was dropped, or its
/// retention is over.
pub fn rollback_refusal(h: &RouteHistory, to: u32, now_ms: i64) -> Option<Refused> {
    let name = index_of(h, None, to)?;
    if in_use(h, None, &h.record).contains(&name) {
        return None;
    }
    let record = h.indexes.iter().find(|r| r.name == name)?;
    let route = &h.record.route;
    if let Some(at) = record.dropped_at_ms {
        return Some(Refused::Conflict(format!(
            "route {route}: release #{to} embeds into index {name:?}, which was dropped at {}: \
             its vectors are gone, so queries embedded by release #{to} would search nothing. \
             Build the index again with its model under a new name and publish a release \
             naming it",
            rfc3339(at)
        )));
    }
    match record.retained_until_ms {
        Some(until) if until <= now_ms => Some(Refused::Conflict(format!(
            "route {route}: release #{to} embeds into index {name:?}, whose retention \
             (index_retention) ended at {}: it may have been deleted. If it is still whole, \
             publish release #{to}'s definition again to evaluate it",
            rfc3339(until)
        ))),
        _ => None,
    }
}

/// Every problem with publishing `spec` on the route: the guard against stable and every
/// release the route has had, and an index that was dropped.
pub fn publish_problems(h: &RouteHistory, spec: &ReleaseSpec) -> Vec<String> {
    let specs: Vec<(String, ReleaseSpec)> = h
        .release(h.record.stable)
        .into_iter()
        .map(|r| (format!("stable release #{}", r.version), r.spec()))
        .chain(
            h.releases
                .iter()
                .filter(|r| r.version != h.record.stable)
                .map(|r| (format!("release #{}", r.version), r.spec())),
        )
        .collect();
    let mut out: Vec<String> = space_problems(spec, specs.iter().map(|(n, s)| (n.as_str(), s)))
        .iter()
        .map(ToString::to_string)
        .collect();
    let dropped = spec.index.as_deref().and_then(|name| {
        h.indexes
            .iter()
            .find(|r| r.name == name && r.dropped_at_ms.is_some())
    });
    if let Some(r) = dropped {
        out.push(format!(
            "index: {:?} was dropped at {}: name the index you built for this release",
            r.name,
            rfc3339(r.dropped_at_ms.unwrap_or(0))
        ));
    }
    out
}

/// Marks index `name` dropped. None when it already is (a repeat).
pub fn drop_index(
    h: &RouteHistory,
    name: &str,
    now_ms: i64,
) -> Result<Option<Transition>, Refused> {
    let route = &h.record.route;
    if !h.releases.iter().any(|r| r.index.as_deref() == Some(name)) {
        return Err(Refused::NotFound(format!(
            "route {route} has no index named {name:?}"
        )));
    }
    for (role, version) in [
        ("stable", Some(h.record.stable)),
        ("candidate", h.record.candidate),
    ] {
        let Some(v) = version else { continue };
        if index_of(h, None, v) == Some(name) {
            return Err(Refused::Conflict(format!(
                "index {name:?} is in use by the {role} release #{v} of route {route}: \
                 queries are embedded for it now, so it cannot be dropped"
            )));
        }
    }
    let kept = h.indexes.iter().find(|r| r.name == name);
    if kept.is_some_and(|r| r.dropped_at_ms.is_some()) {
        return Ok(None);
    }
    let mut t = Transition::default();
    t.indexes.push(IndexRecord {
        route: route.clone(),
        name: name.to_owned(),
        retained_until_ms: kept.and_then(|r| r.retained_until_ms),
        dropped_at_ms: Some(now_ms),
    });
    t.events.push(super::store::EventRecord {
        reason: Some(format!("index {name:?} dropped")),
        ..event(route, now_ms, EventKind::IndexDropped)
    });
    Ok(Some(t))
}

/// The index of the release that serves the route's traffic (the candidate's once promoted).
pub fn serving_index(h: &RouteHistory) -> Option<&str> {
    index_of(h, None, h.serving())
}

/// The gauges of the route's indexes (`understudy_serving_index`, retention).
pub fn publish_gauges(h: &RouteHistory, metrics: &crate::metrics::Metrics) {
    let serving = serving_index(h);
    let kept: Vec<(String, Option<f64>)> = views(h, 0)
        .into_iter()
        .map(|v| {
            let record = h.indexes.iter().find(|r| r.name == v.name);
            let until = record
                .filter(|r| r.dropped_at_ms.is_none() && v.state != IndexState::Serving)
                .and_then(|r| r.retained_until_ms)
                .map(|ms| ms as f64 / 1000.0);
            (v.name, until)
        })
        .collect();
    let gauges: Vec<IndexGauge<'_>> = kept
        .iter()
        .map(|(name, until)| IndexGauge {
            name,
            serving: serving == Some(name.as_str()),
            retained_until: *until,
        })
        .collect();
    metrics.indexes.route_indexes(&h.record.route, &gauges);
}

/// Every index the route's releases name, in order of first use.
pub fn views(h: &RouteHistory, now_ms: i64) -> Vec<IndexView> {
    let serving = in_use(h, None, &h.record);
    let mut out: Vec<IndexView> = Vec::new();
    for r in &h.releases {
        let Some(name) = r.index.as_deref() else {
            continue;
        };
        if let Some(v) = out.iter_mut().find(|v| v.name == name) {
            v.releases.push(r.version);
            continue;
        }
        let record = h.indexes.iter().find(|k| k.name == name);
        let until = record.and_then(|k| k.retained_until_ms);
        let dropped = record.and_then(|k| k.dropped_at_ms);
        let state = if serving.contains(&name) {
            IndexState::Serving
        } else if dropped.is_some() {
            IndexState::Dropped
        } else if until.is_some_and(|u| u <= now_ms) {
            IndexState::Expired
        } else {
            IndexState::Retained
        };
        let left = until
            .filter(|_| state == IndexState::Retained)
            .map(|u| u64::try_from((u - now_ms).max(0) / 1000).unwrap_or(0));
        out.push(IndexView {
            name: name.to_owned(),
            state,
            releases: vec![r.version],
            retained_until: until.filter(|_| state != IndexState::Serving).map(rfc3339),
            retention_left_secs: left,
            dropped_at: dropped.map(rfc3339),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::lifecycle::{finalize, promote, publish, rollback, RouteHistory};
    use crate::control::store::{ReleaseRecord, RouteRecord};
    use crate::domain::{Phase, Trigger};

    const HOUR: i64 = 3_600_000;

    fn spec(model: &str, index: &str) -> ReleaseSpec {
        ReleaseSpec {
            label: None,
            upstream: "u".into(),
            model: model.into(),
            system_prompt: None,
            params: serde_json::Map::new(),
            prices: None,
            index: Some(index.into()),
        }
    }

    fn history() -> RouteHistory {
        let mut h = RouteHistory {
            record: RouteRecord {
                route: "docs".into(),
                phase: Phase::Stable,
                share: 0.1,
                stable: 1,
                candidate: None,
                updated_at_ms: 0,
            },
            releases: vec![ReleaseRecord {
                route: "docs".into(),
                version: 1,
                label: None,
                upstream: "u".into(),
                model: "small-1".into(),
                system_prompt: None,
                params: serde_json::Map::new(),
                prices: None,
                created_at_ms: 0,
                rolled_back: None,
                index: Some("docs-small".into()),
            }],
            indexes: Vec::new(),
        };
        let step = |h: &mut RouteHistory, t: Transition, now: i64| {
            let mut t = t;
            t.indexes = retired(h, &t, now, Duration::from_secs(24 * 3600));
            h.apply(&t);
        };
        let t = publish(&h, &spec("large-1", "docs-large"), 1);
        step(&mut h, t, 1);
        let t = promote(&h, Phase::Promoted, None, 2).unwrap();
        step(&mut h, t, 2);
        let t = finalize(&h, 10).unwrap();
        step(&mut h, t, 10);
        h
    }

    #[test]
    fn a_finalize_keeps_the_old_index_for_its_retention() {
        let h = history();
        assert_eq!(h.indexes.len(), 1);
        assert_eq!(h.indexes[0].name, "docs-small");
        assert_eq!(h.indexes[0].retained_until_ms, Some(10 + 24 * HOUR));
        let v = views(&h, 10 + HOUR);
        assert_eq!(v[0].state, IndexState::Retained);
        assert_eq!(v[0].retention_left_secs, Some(23 * 3600));
        assert_eq!(v[1].state, IndexState::Serving);
        assert_eq!(serving_index(&h), Some("docs-large"));
        // Within retention a rollback to #1 is allowed; after it, refused with the reason.
        assert!(rollback_refusal(&h, 1, 10 + HOUR).is_none());
        let refused = rollback_refusal(&h, 1, 11 + 24 * HOUR).unwrap().to_string();
        assert!(
            refused.contains("retention (index_retention) ended"),
            "{refused}"
        );
        assert_eq!(views(&h, 11 + 24 * HOUR)[0].state, IndexState::Expired);
    }

    #[test]
    fn a_dropped_index_is_no_rollback_target() {
        let mut h = history();
        let err = drop_index(&h, "docs-large", 20).unwrap_err().to_string();
        assert!(err.contains("in use by the stable release #2"), "{err}");
        assert!(matches!(
            drop_index(&h, "nope", 20),
            Err(Refused::NotFound(_))
        ));
        let t = drop_index(&h, "docs-small", 20).unwrap().unwrap();
        assert_eq!(t.events[0].kind, EventKind::IndexDropped);
        h.apply(&t);
        assert!(drop_index(&h, "docs-small", 21).unwrap().is_none());
        let refused = rollback_refusal(&h, 1, 30).unwrap().to_string();
        assert!(refused.contains("which was dropped at"), "{refused}");
        assert_eq!(views(&h, 30)[0].state, IndexState::Dropped);
        // Publishing onto it again is refused too.
        let said = publish_problems(&h, &spec("small-1", "docs-small"));
        assert!(said.iter().any(|s| s.contains("was dropped")), "{said:?}");
        // The guard looks at every release the route had: a third model on an old index.
        let said = publish_problems(&h, &spec("other-1", "docs-small"));
        assert!(said.iter().any(|s| s.contains("(release #1)")), "{said:?}");
    }

    #[test]
    fn rolling_back_to_the_old_stable_retires_the_new_index() {
        let h = history();
        let mut t = rollback(&h, Some(1), Trigger::Manual, "back", 50)
            .unwrap()
            .unwrap();
        t.indexes = retired(&h, &t, 50, Duration::from_secs(60));
        assert_eq!(t.indexes.len(), 1);
        assert_eq!(t.indexes[0].name, "docs-large");
        assert_eq!(t.indexes[0].retained_until_ms, Some(60_050));
    }
}
