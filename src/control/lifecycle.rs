//! A route's release lifecycle as pure functions: publish, promote, roll back, finalize, and the
//! reconciliation of the configuration with the store at start. Each takes the route's history
//! and returns the [`Transition`] to commit (or why not); the controller commits it, then
//! publishes the new snapshot. No I/O here.

use super::store::{EventRecord, ReleaseKey, ReleaseRecord, RolledBack, RouteRecord, Transition};
use crate::config::RouteConfig;
use crate::domain::{share_problem, EventKind, Phase, ReleaseSpec, ReleaseState, Trigger};

/// A route's state and every release it ever had (ordered by version).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteHistory {
    pub record: RouteRecord,
    pub releases: Vec<ReleaseRecord>,
}

/// Why a change was refused. Each maps to an HTTP status in the admin API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

impl RouteHistory {
    pub fn release(&self, version: u32) -> Option<&ReleaseRecord> {
        self.releases.iter().find(|r| r.version == version)
    }

    fn next_version(&self) -> u32 {
        self.releases.iter().map(|r| r.version).max().unwrap_or(0) + 1
    }

    /// The release that serves when the candidate is not chosen.
    pub fn serving(&self) -> u32 {
        self.record
            .phase
            .serving(self.record.stable, self.record.candidate)
    }

    /// A release's state for history listings.
    pub fn state_of(&self, r: &ReleaseRecord) -> ReleaseState {
        if Some(r.version) == self.record.candidate {
            ReleaseState::Candidate
        } else if r.version == self.record.stable {
            ReleaseState::Stable
        } else if r.rolled_back.is_some() {
            ReleaseState::RolledBack
        } else {
            ReleaseState::Retired
        }
    }
}

/// A release record for `spec`, numbered `version`.
pub fn record_of(route: &str, version: u32, spec: &ReleaseSpec, now_ms: i64) -> ReleaseRecord {
    ReleaseRecord {
        route: route.to_string(),
        version,
        label: spec.label.clone(),
        upstream: spec.upstream.clone(),
        model: spec.model.clone(),
        system_prompt: spec.system_prompt.clone(),
        params: spec.params.clone(),
        prices: spec.prices,
        created_at_ms: now_ms,
        rolled_back: None,
    }
}

pub(super) fn event(route: &str, now_ms: i64, kind: EventKind) -> EventRecord {
    EventRecord {
        id: 0,
        route: route.to_string(),
        at_ms: now_ms,
        kind,
        from_version: None,
        to_version: None,
        phase: None,
        share: None,
        trigger: None,
        reason: None,
    }
}

/// A new release becomes the candidate, in phase shadow. A previous candidate is superseded
/// (it keeps its history and can be published again or rolled back to).
pub fn publish(h: &RouteHistory, spec: &ReleaseSpec, now_ms: i64) -> Transition {
    let route = &h.record.route;
    let version = h.next_version();
    let mut t = Transition::default();
    let mut rec = h.record.clone();
    if let Some(old) = rec.candidate {
        t.events.push(EventRecord {
            from_version: Some(old),
            to_version: Some(version),
            ..event(route, now_ms, EventKind::Superseded)
        });
    }
    rec.candidate = Some(version);
    rec.phase = Phase::Shadow;
    rec.updated_at_ms = now_ms;
    t.new_releases.push(record_of(route, version, spec, now_ms));
    t.events.push(EventRecord {
        to_version: Some(version),
        phase: Some(rec.phase),
        share: Some(rec.share),
        ..event(route, now_ms, EventKind::Published)
    });
    t.route = Some(rec);
    t
}

/// Moves the candidate to `phase` (shadow, canary or promoted), optionally with a new share.
pub fn promote(
    h: &RouteHistory,
    phase: Phase,
    share: Option<f64>,
    now_ms: i64,
) -> Result<Transition, Refused> {
    let Some(candidate) = h.record.candidate else {
        return Err(Refused::Conflict(format!(
            "route {} has no candidate to promote",
            h.record.route
        )));
    };
    if phase == Phase::Stable {
        return Err(Refused::Invalid(
            "phase must be shadow, canary or promoted (finalize makes a candidate stable)".into(),
        ));
    }
    if let Some(problem) = share.and_then(share_problem) {
        return Err(Refused::Invalid(format!("share {problem}")));
    }
    let mut rec = h.record.clone();
    rec.phase = phase;
    rec.share = share.unwrap_or(rec.share);
    rec.updated_at_ms = now_ms;
    let mut t = Transition::default();
    t.events.push(EventRecord {
        from_version: Some(h.serving()),
        to_version: Some(candidate),
        phase: Some(rec.phase),
        share: Some(rec.share),
        ..event(&rec.route, now_ms, EventKind::Promoted)
    });
    t.route = Some(rec);
    Ok(t)
}

/// Rolls back: without `to`, the candidate is rolled back and stable serves everything; with
/// `to`, that release becomes stable (reviving it if it had been rolled back) and any candidate
/// is rolled back. None when there is nothing to change (a repeated call).
pub fn rollback(
    h: &RouteHistory,
    to: Option<u32>,
    trigger: Trigger,
    reason: &str,
    now_ms: i64,
) -> Result<Option<Transition>, Refused> {
    let route = &h.record.route;
    let target = match to {
        Some(v) => {
            if h.release(v).is_none() {
                return Err(Refused::NotFound(format!(
                    "route {route} has no release #{v}"
                )));
            }
            v
        }
        None => h.record.stable,
    };
    if h.record.candidate.is_none() && target == h.record.stable {
        return match to {
            Some(_) => Ok(None),
            None => Err(Refused::Conflict(format!(
                "route {route} has no candidate to roll back"
            ))),
        };
    }
    let mut t = Transition::default();
    let mut rec = h.record.clone();
    if let Some(c) = rec.candidate.filter(|c| *c != target) {
        t.rolled_back.push((
            ReleaseKey {
                route: route.clone(),
                version: c,
            },
            RolledBack {
                at_ms: now_ms,
                trigger,
                reason: reason.to_string(),
            },
        ));
    }
    if h.release(target).is_some_and(|r| r.rolled_back.is_some()) {
        t.revived.push(ReleaseKey {
            route: route.clone(),
            version: target,
        });
    }
    rec.stable = target;
    rec.candidate = None;
    rec.phase = Phase::Stable;
    rec.updated_at_ms = now_ms;
    t.events.push(EventRecord {
        from_version: Some(h.serving()),
        to_version: Some(target),
        phase: Some(rec.phase),
        trigger: Some(trigger),
        reason: Some(reason.to_string()),
        ..event(route, now_ms, EventKind::RolledBack)
    });
    t.route = Some(rec);
    Ok(Some(t))
}

/// Whether a firing alert that started at `starts_at_ms` may roll back the route's candidate:
/// Ok when it may, else why not. An alert that started before the current candidate was
/// published is about an earlier one (a late repeat), so it leaves the new candidate alone.
pub fn alert_applies(h: &RouteHistory, starts_at_ms: i64) -> Result<(), AlertBlocked> {
    match h.record.candidate.and_then(|c| h.release(c)) {
        None => Err(AlertBlocked::NoCandidate),
        Some(c) if c.created_at_ms > starts_at_ms => Err(AlertBlocked::Stale),
        Some(_) => Ok(()),
    }
}

/// Why an alert rolls nothing back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertBlocked {
    /// The route has no candidate (a repeat of an alert already acted on, or nothing to do).
    NoCandidate,
    /// The alert began before the current candidate existed.
    Stale,
}

/// A promoted candidate becomes the new stable.
pub fn finalize(h: &RouteHistory, now_ms: i64) -> Result<Transition, Refused> {
    let route = &h.record.route;
    let (Some(candidate), Phase::Promoted) = (h.record.candidate, h.record.phase) else {
        return Err(Refused::Conflict(format!(
            "route {route} has no promoted candidate (phase {}); promote it first",
            h.record.phase
        )));
    };
    let mut rec = h.record.clone();
    rec.stable = candidate;
    rec.candidate = None;
    rec.phase = Phase::Stable;
    rec.updated_at_ms = now_ms;
    let mut t = Transition::default();
    t.events.push(EventRecord {
        from_version: Some(h.record.stable),
        to_version: Some(candidate),
        phase: Some(rec.phase),
        ..event(route, now_ms, EventKind::Finalized)
    });
    t.route = Some(rec);
    Ok(t)
}

/// Brings the configuration into the store at start. The store's state wins; only release
/// definitions the route has never had take effect:
///
/// - a route new to the store is created from the configuration (stable #1, candidate #2,
///   phase and share as configured);
/// - a stable definition never seen before is published and becomes stable (the operator
///   changed the known-good release in the file);
/// - a candidate definition never seen before is published and becomes the candidate in the
///   configured phase and share (superseding any other candidate);
/// - a definition the route already had changes nothing: a candidate rolled back in the store
///   stays rolled back, a finalized or rolled-back-to stable stays, whatever the file says.
///
/// None when the store already agrees.
pub fn reconcile(cfg: &RouteConfig, h: Option<&RouteHistory>, now_ms: i64) -> Option<Transition> {
    let route = &cfg.name;
    let Some(h) = h else {
        let mut t = Transition::default();
        t.new_releases
            .push(record_of(route, 1, &cfg.stable, now_ms));
        t.events.push(EventRecord {
            to_version: Some(1),
            ..event(route, now_ms, EventKind::Configured)
        });
        let candidate = cfg.candidate.as_ref().map(|c| {
            t.new_releases.push(record_of(route, 2, c, now_ms));
            t.events.push(EventRecord {
                to_version: Some(2),
                phase: Some(cfg.phase),
                share: Some(cfg.share),
                ..event(route, now_ms, EventKind::Published)
            });
            2
        });
        t.route = Some(RouteRecord {
            route: route.clone(),
            phase: if candidate.is_some() {
                cfg.phase
            } else {
                Phase::Stable
            },
            share: cfg.share,
            stable: 1,
            candidate,
            updated_at_ms: now_ms,
        });
        return Some(t);
    };
    let known = |spec: &ReleaseSpec| {
        let def = record_of(route, 0, spec, 0).definition();
        h.releases.iter().any(|r| r.definition() == def)
    };
    let mut t = Transition::default();
    let mut rec = h.record.clone();
    let mut next = h.next_version();
    if !known(&cfg.stable) {
        t.new_releases
            .push(record_of(route, next, &cfg.stable, now_ms));
        t.events.push(EventRecord {
            from_version: Some(rec.stable),
            to_version: Some(next),
            reason: Some("stable definition changed in the configuration".into()),
            ..event(route, now_ms, EventKind::Configured)
        });
        rec.stable = next;
        next += 1;
    }
    if let Some(c) = cfg.candidate.as_ref().filter(|c| !known(c)) {
        if let Some(old) = rec.candidate {
            t.events.push(EventRecord {
                from_version: Some(old),
                to_version: Some(next),
                ..event(route, now_ms, EventKind::Superseded)
            });
        }
        t.new_releases.push(record_of(route, next, c, now_ms));
        t.events.push(EventRecord {
            to_version: Some(next),
            phase: Some(cfg.phase),
            share: Some(cfg.share),
            reason: Some("candidate definition from the configuration".into()),
            ..event(route, now_ms, EventKind::Published)
        });
        rec.candidate = Some(next);
        rec.phase = cfg.phase;
        rec.share = cfg.share;
    }
    if t.new_releases.is_empty() {
        return None;
    }
    rec.updated_at_ms = now_ms;
    t.route = Some(rec);
    Some(t)
}

impl RouteHistory {
    /// A route's history from the transition that created it.
    pub fn created(t: &Transition) -> Option<RouteHistory> {
        let mut h = RouteHistory {
            record: t.route.clone()?,
            releases: Vec::new(),
        };
        h.apply(t);
        Some(h)
    }

    /// The history after `t` (already committed to the store).
    pub fn apply(&mut self, t: &Transition) {
        self.releases.extend(t.new_releases.iter().cloned());
        self.releases.sort_by_key(|r| r.version);
        if let Some(rec) = &t.route {
            self.record = rec.clone();
        }
        for (key, rolled_back) in &t.rolled_back {
            if let Some(r) = self.releases.iter_mut().find(|r| r.version == key.version) {
                r.rolled_back = Some(rolled_back.clone());
            }
        }
        for key in &t.revived {
            if let Some(r) = self.releases.iter_mut().find(|r| r.version == key.version) {
                r.rolled_back = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route(candidate_prompt: Option<&str>, stable_prompt: &str) -> RouteConfig {
        let candidate = candidate_prompt
            .map(|p| format!("[routes.r.candidate]\nupstream = \"u\"\nmodel = \"m-2\"\nsystem_prompt = \"{p}\"\n"))
            .unwrap_or_default();
        let phase = if candidate_prompt.is_some() {
            "shadow"
        } else {
            "stable"
        };
        let text = format!(
            "[upstreams.u]\nbase_url = \"http://127.0.0.1:1\"\n[routes.r]\nmodel = \"bot\"\nphase = \"{phase}\"\nshare = 0.5\n\
             [routes.r.stable]\nupstream = \"u\"\nmodel = \"m-1\"\nsystem_prompt = \"{stable_prompt}\"\n{candidate}"
        );
        let cfg = Config::parse(&text, std::path::Path::new(".")).unwrap();
        cfg.routes["r"].clone()
    }

    fn start(cfg: &RouteConfig) -> RouteHistory {
        RouteHistory::created(&reconcile(cfg, None, 1).unwrap()).unwrap()
    }

    fn state(h: &RouteHistory) -> (String, u32, Option<u32>, Vec<&'static str>) {
        let states = h.releases.iter().map(|r| h.state_of(r).as_str()).collect();
        (
            h.record.phase.to_string(),
            h.record.stable,
            h.record.candidate,
            states,
        )
    }

    fn st(
        phase: &str,
        stable: u32,
        candidate: Option<u32>,
        states: &[&'static str],
    ) -> (String, u32, Option<u32>, Vec<&'static str>) {
        (phase.to_string(), stable, candidate, states.to_vec())
    }

    #[test]
    fn alerts_roll_back_only_the_candidate_they_are_about() {
        let h = start(&route(Some("new"), "old"));
        let published = h.release(2).unwrap().created_at_ms;
        assert_eq!(alert_applies(&h, published), Ok(()));
        assert_eq!(alert_applies(&h, published + 60_000), Ok(()));
        assert_eq!(alert_applies(&h, published - 1), Err(AlertBlocked::Stale));
        let t = rollback(&h, None, Trigger::Alert, "firing", published + 1)
            .unwrap()
            .unwrap();
        let mut after = h.clone();
        after.apply(&t);
        assert_eq!(
            alert_applies(&after, published + 1),
            Err(AlertBlocked::NoCandidate)
        );
    }

    #[test]
    fn new_route_from_config() {
        let h = start(&route(Some("new"), "old"));
        assert_eq!(
            state(&h),
            st("shadow", 1, Some(2), &["stable", "candidate"])
        );
        assert_eq!(h.record.share, 0.5);
        let h = start(&route(None, "old"));
        assert_eq!(state(&h), st("stable", 1, None, &["stable"]));
    }

    #[test]
    fn rolled_back_candidate_is_never_revived_by_the_config() {
        let cfg = route(Some("new"), "old");
        let mut h = start(&cfg);
        let t = rollback(&h, None, Trigger::Quality, "quality 0.41", 2)
            .unwrap()
            .unwrap();
        h.apply(&t);
        assert_eq!(state(&h), st("stable", 1, None, &["stable", "rolled_back"]));
        assert_eq!(
            h.releases[1].rolled_back.as_ref().unwrap().trigger,
            Trigger::Quality
        );
        assert!(
            reconcile(&cfg, Some(&h), 3).is_none(),
            "restart with the same config revived it"
        );
        // A different candidate in the file is a new release.
        let t = reconcile(&route(Some("newer"), "old"), Some(&h), 3).unwrap();
        h.apply(&t);
        assert_eq!(
            state(&h),
            st(
                "shadow",
                1,
                Some(3),
                &["stable", "rolled_back", "candidate"]
            )
        );
    }

    #[test]
    fn store_wins_over_a_stale_config_after_finalize() {
        let cfg = route(Some("new"), "old");
        let mut h = start(&cfg);
        h.apply(&promote(&h, Phase::Canary, Some(0.2), 2).unwrap());
        assert_eq!((h.record.phase.as_str(), h.record.share), ("canary", 0.2));
        assert!(finalize(&h, 3).is_err(), "finalize from canary");
        h.apply(&promote(&h, Phase::Promoted, None, 3).unwrap());
        assert_eq!(h.serving(), 2);
        h.apply(&finalize(&h, 4).unwrap());
        assert_eq!(state(&h), st("stable", 2, None, &["retired", "stable"]));
        assert!(reconcile(&cfg, Some(&h), 5).is_none());
        // Editing the stable definition in the file publishes it as the new stable.
        let t = reconcile(&route(Some("new"), "edited"), Some(&h), 6).unwrap();
        h.apply(&t);
        assert_eq!(
            state(&h),
            st("stable", 3, None, &["retired", "retired", "stable"])
        );
    }

    #[test]
    fn rollback_to_any_version() {
        let mut h = start(&route(Some("new"), "old"));
        h.apply(&promote(&h, Phase::Promoted, None, 2).unwrap());
        h.apply(&finalize(&h, 3).unwrap());
        h.apply(&publish(
            &h,
            &route(Some("third"), "old").candidate.unwrap(),
            4,
        ));
        assert_eq!(
            state(&h),
            st("shadow", 2, Some(3), &["retired", "stable", "candidate"])
        );
        // Back to #1: the candidate is rolled back, #1 is stable again.
        let t = rollback(&h, Some(1), Trigger::Manual, "bad week", 5)
            .unwrap()
            .unwrap();
        h.apply(&t);
        assert_eq!(
            state(&h),
            st("stable", 1, None, &["stable", "retired", "rolled_back"])
        );
        // Again: nothing to do.
        assert_eq!(
            rollback(&h, Some(1), Trigger::Manual, "again", 6)
                .unwrap()
                .map(|t| t.events.len()),
            None
        );
        // No candidate and no target: refused.
        assert!(matches!(
            rollback(&h, None, Trigger::Alert, "x", 6),
            Err(Refused::Conflict(_))
        ));
        assert!(matches!(
            rollback(&h, Some(9), Trigger::Manual, "x", 6),
            Err(Refused::NotFound(_))
        ));
        // Explicitly back to the rolled-back #3: revived.
        let t = rollback(&h, Some(3), Trigger::Manual, "it was fine", 7)
            .unwrap()
            .unwrap();
        assert_eq!(
            t.revived,
            vec![ReleaseKey {
                route: "r".into(),
                version: 3
            }]
        );
        h.apply(&t);
        assert_eq!(
            state(&h),
            st("stable", 3, None, &["retired", "retired", "stable"])
        );
    }

    #[test]
    fn refusals() {
        let h = start(&route(None, "old"));
        assert!(matches!(
            promote(&h, Phase::Shadow, None, 1),
            Err(Refused::Conflict(_))
        ));
        let h = start(&route(Some("new"), "old"));
        assert!(matches!(
            promote(&h, Phase::Canary, Some(1.5), 1),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            promote(&h, Phase::Stable, None, 1),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(finalize(&h, 1), Err(Refused::Conflict(_))));
    }

    #[test]
    fn publishing_supersedes_the_candidate() {
        let mut h = start(&route(Some("new"), "old"));
        let t = publish(&h, &route(Some("newer"), "old").candidate.unwrap(), 2);
        assert_eq!(
            t.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["superseded", "published"]
        );
        h.apply(&t);
        assert_eq!(
            state(&h),
            st("shadow", 1, Some(3), &["stable", "retired", "candidate"])
        );
    }
}
