use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::*;
use crate::control::lifecycle::record_of;
use crate::control::store::RouteRecord;
use crate::domain::ReleaseSpec;

const SEC: i64 = 1000;

fn rollback() -> RollbackConfig {
    RollbackConfig {
        threshold: 0.8,
        window: 200,
        min_samples: 30,
        max_error_rate: 0.05,
        auto: true,
    }
}

fn hold(phase: Phase, share: f64, secs: u64, min_samples: usize) -> RolloutStep {
    RolloutStep::Hold {
        phase,
        share,
        min_duration: Duration::from_secs(secs),
        min_samples,
    }
}

/// The contract's example, in seconds instead of minutes.
fn steps() -> Vec<RolloutStep> {
    vec![
        hold(Phase::Shadow, 0.05, 0, 200),
        hold(Phase::Canary, 0.05, 10, 100),
        hold(Phase::Canary, 0.25, 30, 30),
        hold(Phase::Promoted, 0.10, 60, 30),
        RolloutStep::Finalize,
    ]
}

/// Route "r": stable #1, candidate #2 in shadow.
fn history() -> RouteHistory {
    let spec = |model: &str| ReleaseSpec {
        label: None,
        upstream: "u".into(),
        model: model.into(),
        system_prompt: None,
        params: serde_json::Map::new(),
        prices: None,
        index: None,
    };
    RouteHistory {
        record: RouteRecord {
            route: "r".into(),
            phase: Phase::Shadow,
            share: 0.5,
            stable: 1,
            candidate: Some(2),
            updated_at_ms: 0,
        },
        releases: vec![
            record_of("r", 1, &spec("m-1"), 0),
            record_of("r", 2, &spec("m-2"), 0),
        ],
        indexes: Vec::new(),
    }
}

/// Evidence that is good on every count.
fn good(step_samples: usize) -> Evidence {
    Evidence {
        step_samples,
        window_samples: 200,
        noise_samples: 20,
        quality_lower: Some(0.93),
        error_upper: 0.0,
    }
}

fn record(step: u32, since: i64) -> RolloutRecord {
    RolloutRecord {
        route: "r".into(),
        candidate: 2,
        step,
        step_since_ms: since,
        paused_at_ms: None,
        updated_at_ms: since,
    }
}

fn waits(d: &Decision) -> Vec<RolloutWait> {
    match d {
        Decision::Advance => Vec::new(),
        Decision::Wait(w) => w.iter().map(|w| w.kind()).collect(),
    }
}

#[test]
fn a_step_waits_for_each_missing_piece_of_evidence() {
    use RolloutWait as W;
    let rb = rollback();
    let s = steps();
    // (step, seconds in the step, evidence, expected unmet conditions)
    let cases: Vec<(u32, i64, Evidence, Vec<RolloutWait>)> = vec![
        (0, 0, good(200), vec![]),
        (0, 0, good(143), vec![W::Samples]),
        (1, 9, good(100), vec![W::Duration]),
        (1, 10, good(100), vec![]),
        (
            1,
            10,
            Evidence {
                window_samples: 12,
                ..good(100)
            },
            vec![W::Samples],
        ),
        (
            1,
            10,
            Evidence {
                noise_samples: 3,
                ..good(100)
            },
            vec![W::NoiseFloor],
        ),
        // Not merely the absence of bad evidence: no quality yet is a wait.
        (
            1,
            10,
            Evidence {
                quality_lower: None,
                ..good(100)
            },
            vec![W::Quality],
        ),
        (
            1,
            10,
            Evidence {
                quality_lower: Some(0.79),
                ..good(100)
            },
            vec![W::Quality],
        ),
        (
            1,
            10,
            Evidence {
                quality_lower: Some(0.8),
                ..good(100)
            },
            vec![],
        ),
        (
            1,
            10,
            Evidence {
                error_upper: 0.07,
                ..good(100)
            },
            vec![W::Errors],
        ),
        (
            1,
            2,
            Evidence {
                step_samples: 5,
                quality_lower: Some(0.5),
                ..good(0)
            },
            vec![W::Duration, W::Samples, W::Quality],
        ),
    ];
    for (step, secs, ev, want) in cases {
        let d = evaluate(&s, &rb, &record(step, 0), &ev, secs * SEC);
        assert_eq!(waits(&d), want, "step {step} at {secs}s with {ev:?}");
        if want.is_empty() {
            assert_eq!(d, Decision::Advance);
        }
    }
    // Paused: nothing else matters.
    let mut paused = record(0, 0);
    paused.paused_at_ms = Some(0);
    assert_eq!(
        waits(&evaluate(&s, &rb, &paused, &good(500), 99 * SEC)),
        vec![W::Paused]
    );
    // The last step of a rollout without finalize holds once it is met.
    let no_finalize = &s[..4];
    assert_eq!(
        waits(&evaluate(
            no_finalize,
            &rb,
            &record(3, 0),
            &good(30),
            60 * SEC
        )),
        vec![W::Done]
    );
}

#[test]
fn the_reasons_read_as_the_operator_needs_them() {
    let said = |w: Waiting| w.to_string();
    assert_eq!(
        said(Waiting::StepSamples {
            have: 143,
            need: 200
        }),
        "waiting: 143/200 samples in this step"
    );
    assert_eq!(
        said(Waiting::Quality {
            lower: Some(0.8123),
            threshold: 0.85
        }),
        "waiting: quality lower bound 0.81 < 0.85"
    );
    assert_eq!(
        said(Waiting::Duration {
            elapsed: Duration::from_millis(250_900),
            needed: Duration::from_secs(600)
        }),
        "waiting: 4m 10s of 10m in this step"
    );
    assert_eq!(
        said(Waiting::Errors {
            upper: 0.0712,
            max: 0.05
        }),
        "waiting: error rate upper bound 0.071 > 0.05"
    );
}

/// Property: over random evidence and times, a step advances exactly when every condition
/// holds; more evidence never turns an advance into a wait; a paused rollout never advances.
#[test]
fn advances_exactly_when_every_condition_holds() {
    let rb = rollback();
    let s = steps();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for _ in 0..5_000 {
        let step = rng.random_range(0..4u32);
        let since = rng.random_range(0..1_000_000i64);
        let now = since + rng.random_range(0..120 * SEC);
        let ev = Evidence {
            step_samples: rng.random_range(0..300),
            window_samples: rng.random_range(0..250),
            noise_samples: rng.random_range(0..10),
            quality_lower: rng.random_bool(0.9).then(|| rng.random_range(0.6..1.0)),
            error_upper: rng.random_range(0.0..0.1),
        };
        let r = record(step, since);
        let RolloutStep::Hold {
            min_duration,
            min_samples,
            ..
        } = s[step as usize]
        else {
            unreachable!()
        };
        let all = now - since >= i64::try_from(min_duration.as_millis()).unwrap()
            && ev.step_samples >= min_samples
            && ev.window_samples >= rb.min_samples
            && ev.noise_samples >= 5
            && ev.quality_lower.is_some_and(|q| q >= rb.threshold)
            && ev.error_upper <= rb.max_error_rate;
        let d = evaluate(&s, &rb, &r, &ev, now);
        assert_eq!(d == Decision::Advance, all, "{r:?} {ev:?} at {now}");
        if let Decision::Wait(w) = &d {
            assert!(!w.is_empty());
        }
        if all {
            let more = Evidence {
                step_samples: ev.step_samples + 10,
                window_samples: ev.window_samples + 10,
                noise_samples: ev.noise_samples + 1,
                quality_lower: ev.quality_lower.map(|q| (q + 0.01).min(1.0)),
                error_upper: ev.error_upper / 2.0,
            };
            assert_eq!(evaluate(&s, &rb, &r, &more, now + SEC), Decision::Advance);
            let paused = RolloutRecord {
                paused_at_ms: Some(now),
                ..r
            };
            assert_eq!(
                waits(&evaluate(&s, &rb, &paused, &more, now)),
                vec![RolloutWait::Paused]
            );
        }
    }
}

#[test]
fn a_benign_candidate_walks_every_step_to_finalize() {
    let s = steps();
    let rb = rollback();
    let mut h = history();
    let mut t = Transition {
        route: Some(h.record.clone()),
        ..Transition::default()
    };
    start(&mut t, &s, 0);
    h.apply(&t);
    let mut r = t.rollout.clone().unwrap();
    assert_eq!(
        (h.record.phase, h.record.share, r.step),
        (Phase::Shadow, 0.05, 0)
    );
    let mut now = 0;
    let mut walked = vec![(h.record.phase, h.record.share)];
    while h.record.candidate.is_some() {
        now += 61 * SEC;
        let ev = good(200);
        assert_eq!(evaluate(&s, &rb, &r, &ev, now), Decision::Advance, "{r:?}");
        let t = advance(
            &h,
            &r,
            &s,
            &evidence_said(&ev, &rb, Duration::from_secs(61)),
            now,
        )
        .unwrap();
        assert_eq!(t.events.len(), 1);
        h.apply(&t);
        r = t.rollout.clone().unwrap();
        assert_eq!(r.step_since_ms, now, "a new step's clock starts");
        walked.push((h.record.phase, h.record.share));
    }
    assert_eq!(
        walked,
        vec![
            (Phase::Shadow, 0.05),
            (Phase::Canary, 0.05),
            (Phase::Canary, 0.25),
            (Phase::Promoted, 0.10),
            (Phase::Stable, 0.10),
        ]
    );
    assert_eq!((h.record.stable, r.step), (2, 4));
    let view = RolloutView::new(&h, &s, &rb, Some(&r), &good(0), now);
    assert_eq!(view.state, "finished");
    // Past the end there is nothing to skip to.
    assert!(matches!(
        advance(&h, &r, &s, "skipped", now),
        Err(Refused::Conflict(_))
    ));
}

#[test]
fn pause_holds_the_clock_resume_restores_the_step_skip_moves_on() {
    let s = steps();
    let rb = rollback();
    let mut h = history();
    let r = record(1, 0);
    h.record.phase = Phase::Canary;
    h.record.share = 0.05;
    // Paused 5 s into the 10 s step, for 100 s.
    let t = pause(&r, "paused by an operator", 5 * SEC).unwrap();
    let paused = t.rollout.clone().unwrap();
    assert!(
        pause(&paused, "again", 6 * SEC).is_none(),
        "a repeat changes nothing"
    );
    assert_eq!(t.events[0].kind, EventKind::RolloutPaused);
    let view = RolloutView::new(&h, &s, &rb, Some(&paused), &good(100), 50 * SEC);
    assert_eq!((view.state, view.step_elapsed_secs), ("paused", Some(5)));
    assert_eq!(view.reason, Some(RolloutWait::Paused));
    // A manual promote meanwhile moved the candidate; resume puts it back at its step.
    h.record.phase = Phase::Promoted;
    h.record.share = 0.5;
    let t = resume(&h, &paused, &s, 105 * SEC).unwrap();
    let resumed = t.rollout.clone().unwrap();
    assert_eq!(resumed.step_since_ms, 100 * SEC, "the pause does not count");
    assert_eq!(resumed.paused_at_ms, None);
    let rec = t.route.clone().unwrap();
    assert_eq!((rec.phase, rec.share), (Phase::Canary, 0.05));
    h.apply(&t);
    assert!(resume(&h, &resumed, &s, 106 * SEC).is_none());
    assert_eq!(
        waits(&evaluate(&s, &rb, &resumed, &good(100), 109 * SEC)),
        vec![RolloutWait::Duration]
    );
    assert_eq!(
        evaluate(&s, &rb, &resumed, &good(100), 110 * SEC),
        Decision::Advance
    );
    // Skip, while paused: the next step, still paused, its clock from now.
    let t = advance(&h, &paused, &s, "skipped by an operator", 200 * SEC).unwrap();
    let skipped = t.rollout.clone().unwrap();
    assert_eq!((skipped.step, skipped.paused_at_ms), (2, Some(200 * SEC)));
    assert_eq!(
        t.events[0].reason.as_deref(),
        Some("step 3/5 (canary 0.25): skipped by an operator")
    );
    let rec = t.route.clone().unwrap();
    assert_eq!((rec.phase, rec.share), (Phase::Canary, 0.25));
}

#[test]
fn a_rollout_concerns_one_candidate() {
    let s = steps();
    let rb = rollback();
    let mut h = history();
    let r = record(2, 0);
    assert!(active(&h, Some(&r)).is_some());
    // Rolled back: no longer the candidate.
    let t = lifecycle::rollback(&h, None, crate::domain::Trigger::Quality, "q", 5)
        .unwrap()
        .unwrap();
    h.apply(&t);
    assert!(active(&h, Some(&r)).is_none());
    let view = RolloutView::new(&h, &s, &rb, Some(&r), &good(0), 10);
    assert_eq!((view.state, view.step), ("rolled_back", 3));
    // A new candidate starts at step 1.
    let spec = h.release(2).unwrap().spec();
    let mut t = lifecycle::publish(&h, &spec, 20);
    start(&mut t, &s, 20);
    let started = t.rollout.clone().unwrap();
    assert_eq!((started.candidate, started.step), (3, 0));
    let rec = t.route.clone().unwrap();
    assert_eq!((rec.phase, rec.share), (Phase::Shadow, 0.05));
    assert_eq!(t.events.last().unwrap().kind, EventKind::RolloutStep);
    h.apply(&t);
    let view = RolloutView::new(&h, &s, &rb, Some(&started), &good(143), 20);
    assert_eq!(view.state, "running");
    assert_eq!(view.waiting, vec!["waiting: 143/200 samples in this step"]);
    // Without a candidate there is nothing to start.
    let mut none = history();
    none.record.candidate = None;
    assert!(start_existing(&none, &s, 0).is_none());
    assert!(start_existing(&history(), &s, 0).is_some());
}

#[test]
fn edited_steps_put_a_running_candidate_at_its_steps_phase() {
    let mut h = history();
    h.record.phase = Phase::Canary;
    h.record.share = 0.05;
    let r = record(1, 0);
    // The step agrees: nothing to do.
    assert!(realign(&h, &r, &steps(), 9).is_none());
    // Step 2 is now promoted 0.1 (the canary steps were dropped from the file).
    let edited = [
        hold(Phase::Shadow, 0.05, 0, 200),
        hold(Phase::Promoted, 0.1, 60, 30),
        RolloutStep::Finalize,
    ];
    let t = realign(&h, &r, &edited, 9).unwrap();
    let rec = t.route.clone().unwrap();
    assert_eq!((rec.phase, rec.share), (Phase::Promoted, 0.1));
    assert_eq!(t.rollout, None, "the step and its clock stay");
    assert_eq!(
        t.events[0].reason.as_deref(),
        Some("step 2/3 (promoted 0.1): the configuration changed the step")
    );
    h.apply(&t);
    // ... so its finalize can follow.
    let t = advance(&h, &r, &edited, "evidence", 10).unwrap();
    h.apply(&t);
    assert_eq!((h.record.stable, h.record.candidate), (2, None));
    // Paused: left for resume to re-apply.
    let paused = RolloutRecord {
        paused_at_ms: Some(5),
        ..record(1, 0)
    };
    let mut h = history();
    h.record.phase = Phase::Canary;
    assert!(realign(&h, &paused, &edited, 9).is_none());
}
