//! The rollback drill's way back: a candidate the drill rolled back is put back in the phase
//! and share it had. A rolled-back release is otherwise never revived (only by publishing it
//! again or rolling back *to* it), so this path is narrow on purpose: it undoes only a manual
//! rollback whose reason is the drill's ([`DRILL_REASON`]), only while nothing else changed on
//! the route since (no candidate, no newer release, no later change), and it is logged as its
//! own event (`restored`). Pure: history in, [`Transition`] out.

use super::lifecycle::{Refused, RouteHistory};
use super::store::{EventRecord, ReleaseKey, Transition};
use crate::domain::{share_problem, EventKind, Phase, Trigger};

/// The reason `understudy drill` gives its rollback; [`restore`] undoes only those.
pub const DRILL_REASON: &str = "rollback drill (understudy drill): the candidate is restored next";

/// Puts release `version`, rolled back by a drill, back as the candidate in `phase` and `share`.
pub fn restore(
    h: &RouteHistory,
    version: u32,
    phase: Phase,
    share: f64,
    now_ms: i64,
) -> Result<Transition, Refused> {
    let route = &h.record.route;
    if phase == Phase::Stable {
        return Err(Refused::Invalid(
            "phase must be shadow, canary or promoted".into(),
        ));
    }
    if let Some(problem) = share_problem(share) {
        return Err(Refused::Invalid(format!("share {problem}")));
    }
    let Some(release) = h.release(version) else {
        return Err(Refused::NotFound(format!(
            "route {route} has no release #{version}"
        )));
    };
    let drilled = release
        .rolled_back
        .as_ref()
        .filter(|rb| rb.trigger == Trigger::Manual && rb.reason == DRILL_REASON);
    let Some(rolled_back) = drilled else {
        return Err(Refused::Conflict(format!(
            "route {route}: release #{version} was not rolled back by a drill; only a drill's \
             rollback can be restored (publish the release again instead)"
        )));
    };
    let newest = h.releases.iter().map(|r| r.version).max() == Some(version);
    if h.record.candidate.is_some() || !newest || h.record.updated_at_ms > rolled_back.at_ms {
        return Err(Refused::Conflict(format!(
            "route {route} changed since the drill rolled release #{version} back; not restored"
        )));
    }
    let mut rec = h.record.clone();
    rec.candidate = Some(version);
    rec.phase = phase;
    rec.share = share;
    rec.updated_at_ms = now_ms;
    let key = ReleaseKey {
        route: route.clone(),
        version,
    };
    Ok(Transition {
        route: Some(rec),
        revived: vec![key],
        events: vec![EventRecord {
            id: 0,
            route: route.clone(),
            at_ms: now_ms,
            kind: EventKind::Restored,
            from_version: Some(h.record.stable),
            to_version: Some(version),
            phase: Some(phase),
            share: Some(share),
            trigger: Some(Trigger::Manual),
            reason: Some("rollback drill: candidate restored to its phase and share".into()),
        }],
        ..Transition::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::lifecycle;
    use crate::control::store::{ReleaseRecord, RouteRecord};

    fn history() -> RouteHistory {
        let release = |version: u32| ReleaseRecord {
            route: "bot".into(),
            version,
            label: None,
            upstream: "u".into(),
            model: format!("m-{version}"),
            system_prompt: None,
            params: serde_json::Map::new(),
            prices: None,
            created_at_ms: 0,
            rolled_back: None,
            index: None,
        };
        RouteHistory {
            record: RouteRecord {
                route: "bot".into(),
                phase: Phase::Canary,
                share: 0.25,
                stable: 1,
                candidate: Some(2),
                updated_at_ms: 10,
            },
            releases: vec![release(1), release(2)],
            indexes: Vec::new(),
        }
    }

    fn rolled_back(reason: &str, at: i64) -> RouteHistory {
        let mut h = history();
        let t = lifecycle::rollback(&h, None, Trigger::Manual, reason, at)
            .unwrap()
            .unwrap();
        h.apply(&t);
        h
    }

    #[test]
    fn a_drills_rollback_is_undone_to_the_same_phase_and_share() {
        let mut h = rolled_back(DRILL_REASON, 100);
        let t = restore(&h, 2, Phase::Canary, 0.25, 200).unwrap();
        h.apply(&t);
        assert_eq!(h.record.candidate, Some(2));
        assert_eq!((h.record.phase, h.record.share), (Phase::Canary, 0.25));
        assert!(h.release(2).unwrap().rolled_back.is_none(), "revived");
        assert_eq!(t.events[0].kind, EventKind::Restored);
        // Done once: the candidate is back, so a second restore is refused.
        assert!(matches!(
            restore(&h, 2, Phase::Canary, 0.25, 300),
            Err(Refused::Conflict(_))
        ));
    }

    #[test]
    fn anything_but_an_untouched_drill_rollback_is_refused() {
        // Another manual rollback, or the judge's.
        let other = rolled_back("tone regression", 100);
        assert!(matches!(
            restore(&other, 2, Phase::Canary, 0.25, 200),
            Err(Refused::Conflict(_))
        ));
        // The route changed after the drill (a later change moved updated_at).
        let mut later = rolled_back(DRILL_REASON, 100);
        later.record.updated_at_ms = 150;
        assert!(restore(&later, 2, Phase::Canary, 0.25, 200).is_err());
        // Not the phase of a candidate, a bad share, no such release.
        let h = rolled_back(DRILL_REASON, 100);
        assert!(matches!(
            restore(&h, 2, Phase::Stable, 0.25, 200),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            restore(&h, 2, Phase::Canary, 1.5, 200),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            restore(&h, 9, Phase::Canary, 0.25, 200),
            Err(Refused::NotFound(_))
        ));
        // Stable itself was never rolled back.
        assert!(restore(&h, 1, Phase::Canary, 0.25, 200).is_err());
    }
}
