//! The automatic rollout (`[routes.NAME.rollout]`) as a pure state machine: where a route's
//! candidate stands in its steps, whether the current step may advance, and the
//! [`Transition`]s that move it (start, advance or skip, pause, resume). No I/O and no clock:
//! the controller passes `now_ms` and the judge's figures, commits what comes back, then
//! applies it, like every other change.
//!
//! A step advances only on evidence that the candidate is good, never on the mere absence of
//! evidence that it is bad: its minimum duration has run (pauses not counted), it has scored
//! its minimum samples, the judge's window holds `rollback.min_samples`, the noise floor is
//! trusted, the one-sided 95 % *lower* bound of quality is at or above `rollback.threshold`,
//! and the 95 % *upper* bound of the error share is within `rollback.max_error_rate`. A
//! failing step is rolled back by the judge as without a rollout.
//!
//! Rules with the other changes (the controller applies them):
//! - a candidate published (admin API or configuration) starts at step 1, whatever ran before;
//! - a manual promote pauses the rollout (the operator has taken the wheel); `resume` puts the
//!   candidate back at its step's phase and share and carries on;
//! - a rollback (manual, judge or alert) or a manual finalize ends it: the rollout concerns one
//!   candidate, and that release is no longer the candidate;
//! - `skip` moves to the next step at once, without evidence (a paused rollout stays paused).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::{self, event, Refused, RouteHistory};
use super::store::{RolloutRecord, Transition};
use crate::config::{RollbackConfig, RolloutStep};
use crate::domain::{EventKind, Phase, RolloutWait};

/// An operator's command to a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// Hold the current step: nothing advances until `resume`.
    Pause,
    /// Carry on from the current step (its phase and share re-applied).
    Resume,
    /// Move to the next step now, without waiting for its evidence.
    Skip,
}

/// The figures a step's decision rests on, from the judge and the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Candidate samples scored since the step began (since the start, after a restart).
    pub step_samples: usize,
    /// Candidate samples in the judge's window.
    pub window_samples: usize,
    /// Stable-vs-stable samples the judge holds.
    pub noise_samples: usize,
    /// The one-sided 95 % lower bound of quality, once it can be computed.
    pub quality_lower: Option<f64>,
    /// The one-sided 95 % upper bound of the candidate's error share.
    pub error_upper: f64,
}

/// One condition of the current step that does not hold yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Waiting {
    /// An operator paused the rollout.
    Paused,
    /// The step has run `elapsed` of its `needed` minimum.
    Duration { elapsed: Duration, needed: Duration },
    /// Candidate samples scored in this step.
    StepSamples { have: usize, need: usize },
    /// Candidate samples in the judge's window (`rollback.min_samples`).
    WindowSamples { have: usize, need: usize },
    /// Stable-vs-stable samples before the floor is trusted.
    NoiseFloor { have: usize, need: usize },
    /// The quality's lower bound (None: not computable yet) against the threshold.
    Quality { lower: Option<f64>, threshold: f64 },
    /// The error share's upper bound against `max_error_rate`.
    Errors { upper: f64, max: f64 },
    /// The last step's conditions hold and no `finalize` step follows: finalize by hand.
    Done,
}

impl Waiting {
    /// Its label for the `understudy_rollout_waiting` gauge.
    pub fn kind(self) -> RolloutWait {
        match self {
            Waiting::Paused => RolloutWait::Paused,
            Waiting::Duration { .. } => RolloutWait::Duration,
            Waiting::StepSamples { .. } | Waiting::WindowSamples { .. } => RolloutWait::Samples,
            Waiting::NoiseFloor { .. } => RolloutWait::NoiseFloor,
            Waiting::Quality { .. } => RolloutWait::Quality,
            Waiting::Errors { .. } => RolloutWait::Errors,
            Waiting::Done => RolloutWait::Done,
        }
    }
}

/// Whole seconds, as humantime writes them ("4m 10s").
fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Paused => write!(f, "paused by an operator"),
            Waiting::Duration { elapsed, needed } => {
                write!(
                    f,
                    "waiting: {} of {} in this step",
                    secs(*elapsed),
                    secs(*needed)
                )
            }
            Waiting::StepSamples { have, need } => {
                write!(f, "waiting: {have}/{need} samples in this step")
            }
            Waiting::WindowSamples { have, need } => {
                write!(f, "waiting: {have}/{need} samples in the judge's window")
            }
            Waiting::NoiseFloor { have, need } => {
                write!(
                    f,
                    "waiting: noise floor {have}/{need} stable-vs-stable samples"
                )
            }
            Waiting::Quality {
                lower: Some(lower),
                threshold,
            } => write!(f, "waiting: quality lower bound {lower:.2} < {threshold}"),
            Waiting::Quality {
                lower: None,
                threshold,
            } => write!(f, "waiting: no quality yet (threshold {threshold})"),
            Waiting::Errors { upper, max } => {
                write!(f, "waiting: error rate upper bound {upper:.3} > {max}")
            }
            Waiting::Done => write!(f, "done: the last step holds; finalize by hand"),
        }
    }
}

/// What the current step should do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every condition holds: move to the next step (or finalize).
    Advance,
    /// Not yet: every condition that does not hold, in a fixed order (the first is "the"
    /// reason the gauges show).
    Wait(Vec<Waiting>),
}

/// The rollout of the route's current candidate, if one runs: its record names that candidate.
pub fn active<'a>(h: &RouteHistory, r: Option<&'a RolloutRecord>) -> Option<&'a RolloutRecord> {
    r.filter(|r| h.record.candidate == Some(r.candidate))
}

/// Whether the current step may advance. `min_samples` of a step and every judge figure are
/// checked against `rollback` (threshold, max_error_rate, min_samples).
pub fn evaluate(
    steps: &[RolloutStep],
    rollback: &RollbackConfig,
    r: &RolloutRecord,
    ev: &Evidence,
    now_ms: i64,
) -> Decision {
    if r.paused_at_ms.is_some() {
        return Decision::Wait(vec![Waiting::Paused]);
    }
    let index = r.step as usize;
    let (min_duration, min_samples) = match steps.get(index) {
        // The configuration changed under a running rollout: its finalize step is where the
        // rollout stands, so finalize (it refuses anything but a promoted candidate).
        Some(RolloutStep::Finalize) => return Decision::Advance,
        None => return Decision::Wait(vec![Waiting::Done]),
        Some(RolloutStep::Hold {
            min_duration,
            min_samples,
            ..
        }) => (*min_duration, *min_samples),
    };
    let mut waiting = Vec::new();
    let elapsed = Duration::from_millis(u64::try_from(now_ms - r.step_since_ms).unwrap_or(0));
    if elapsed < min_duration {
        waiting.push(Waiting::Duration {
            elapsed,
            needed: min_duration,
        });
    }
    if ev.step_samples < min_samples {
        waiting.push(Waiting::StepSamples {
            have: ev.step_samples,
            need: min_samples,
        });
    }
    if ev.window_samples < rollback.min_samples {
        waiting.push(Waiting::WindowSamples {
            have: ev.window_samples,
            need: rollback.min_samples,
        });
    }
    if ev.noise_samples < super::judge::MIN_NOISE_SAMPLES {
        waiting.push(Waiting::NoiseFloor {
            have: ev.noise_samples,
            need: super::judge::MIN_NOISE_SAMPLES,
        });
    }
    if !ev.quality_lower.is_some_and(|q| q >= rollback.threshold) {
        waiting.push(Waiting::Quality {
            lower: ev.quality_lower,
            threshold: rollback.threshold,
        });
    }
    if ev.error_upper > rollback.max_error_rate {
        waiting.push(Waiting::Errors {
            upper: ev.error_upper,
            max: rollback.max_error_rate,
        });
    }
    if !waiting.is_empty() {
        return Decision::Wait(waiting);
    }
    if index + 1 >= steps.len() {
        return Decision::Wait(vec![Waiting::Done]);
    }
    Decision::Advance
}

/// The evidence a step advanced on, for its event's reason.
pub fn evidence_said(ev: &Evidence, rollback: &RollbackConfig, elapsed: Duration) -> String {
    format!(
        "quality lower bound {:.3} >= {}, error rate upper bound {:.3} <= {}, {} samples ({} in the step), {} in the step",
        ev.quality_lower.unwrap_or(0.0),
        rollback.threshold,
        ev.error_upper,
        rollback.max_error_rate,
        ev.window_samples,
        ev.step_samples,
        secs(elapsed)
    )
}

/// "step 2/5 (canary 0.05)".
fn step_said(steps: &[RolloutStep], index: usize) -> String {
    let n = steps.len();
    match steps.get(index) {
        Some(RolloutStep::Hold { phase, share, .. }) => {
            format!("step {}/{n} ({phase} {share})", index + 1)
        }
        Some(RolloutStep::Finalize) => format!("step {}/{n} (finalize)", index + 1),
        None => format!("step {}/{n}", index + 1),
    }
}

/// A new candidate starts at the first step: `t` (which makes `candidate` the route's
/// candidate, e.g. a publish) also moves it to that step's phase and share and writes the
/// rollout's row, in the same commit.
pub fn start(t: &mut Transition, steps: &[RolloutStep], now_ms: i64) {
    let Some(rec) = t.route.as_mut() else { return };
    let Some(candidate) = rec.candidate else {
        return;
    };
    let Some(RolloutStep::Hold { phase, share, .. }) = steps.first() else {
        return;
    };
    rec.phase = *phase;
    rec.share = *share;
    rec.updated_at_ms = now_ms;
    t.rollout = Some(RolloutRecord {
        route: rec.route.clone(),
        candidate,
        step: 0,
        step_since_ms: now_ms,
        paused_at_ms: None,
        updated_at_ms: now_ms,
    });
    t.events.push(lifecycle_event(
        &rec.route,
        now_ms,
        EventKind::RolloutStep,
        Some(candidate),
        Some((*phase, *share)),
        format!(
            "{}: a new candidate starts the rollout",
            step_said(steps, 0)
        ),
    ));
}

/// Starts the rollout of the route's current candidate (one that has none yet, such as a
/// candidate from before the rollout was configured); None without a candidate.
pub fn start_existing(h: &RouteHistory, steps: &[RolloutStep], now_ms: i64) -> Option<Transition> {
    h.record.candidate?;
    let mut t = Transition {
        route: Some(h.record.clone()),
        ..Transition::default()
    };
    start(&mut t, steps, now_ms);
    t.rollout.is_some().then_some(t)
}

/// At start, for a running rollout whose step's phase or share the configuration changed (its
/// steps were edited): the candidate is put at the step's phase and share. None when they agree,
/// when paused (`resume` re-applies them) or when the step is not a phase.
pub fn realign(
    h: &RouteHistory,
    r: &RolloutRecord,
    steps: &[RolloutStep],
    now_ms: i64,
) -> Option<Transition> {
    if r.paused_at_ms.is_some() || active(h, Some(r)).is_none() {
        return None;
    }
    let Some(RolloutStep::Hold { phase, share, .. }) = steps.get(r.step as usize) else {
        return None;
    };
    if h.record.phase == *phase && h.record.share == *share {
        return None;
    }
    let mut rec = h.record.clone();
    rec.phase = *phase;
    rec.share = *share;
    rec.updated_at_ms = now_ms;
    let mut e = lifecycle_event(
        &rec.route,
        now_ms,
        EventKind::RolloutStep,
        Some(r.candidate),
        Some((*phase, *share)),
        format!(
            "{}: the configuration changed the step",
            step_said(steps, r.step as usize)
        ),
    );
    e.from_version = Some(h.serving());
    Some(Transition {
        route: Some(rec),
        events: vec![e],
        ..Transition::default()
    })
}

/// The move to the next step: its phase and share, or the finalize; `why` is said in the
/// event (the evidence, or who skipped). A paused rollout stays paused, on the new step.
pub fn advance(
    h: &RouteHistory,
    r: &RolloutRecord,
    steps: &[RolloutStep],
    why: &str,
    now_ms: i64,
) -> Result<Transition, Refused> {
    // Normally the next step; the current one when it is a finalize (the configuration changed
    // under a running rollout).
    let at_finalize = matches!(steps.get(r.step as usize), Some(RolloutStep::Finalize));
    let next = r.step as usize + usize::from(!at_finalize);
    let record = RolloutRecord {
        step: u32::try_from(next).unwrap_or(u32::MAX),
        step_since_ms: now_ms,
        paused_at_ms: r.paused_at_ms.map(|_| now_ms),
        updated_at_ms: now_ms,
        ..r.clone()
    };
    let said = format!("{}: {why}", step_said(steps, next));
    match steps.get(next) {
        Some(RolloutStep::Hold { phase, share, .. }) => {
            let mut rec = h.record.clone();
            rec.phase = *phase;
            rec.share = *share;
            rec.updated_at_ms = now_ms;
            let mut e = lifecycle_event(
                &rec.route,
                now_ms,
                EventKind::RolloutStep,
                Some(r.candidate),
                Some((*phase, *share)),
                said,
            );
            e.from_version = Some(h.serving());
            Ok(Transition {
                route: Some(rec),
                rollout: Some(record),
                events: vec![e],
                ..Transition::default()
            })
        }
        Some(RolloutStep::Finalize) => {
            let mut t = lifecycle::finalize(h, now_ms)?;
            for e in &mut t.events {
                e.reason = Some(format!("rollout {said}"));
            }
            t.rollout = Some(record);
            Ok(t)
        }
        None => Err(Refused::Conflict(format!(
            "route {} is at the last step of its rollout: finalize it by hand",
            h.record.route
        ))),
    }
}

/// Pauses; None when already paused.
pub fn pause(r: &RolloutRecord, why: &str, now_ms: i64) -> Option<Transition> {
    if r.paused_at_ms.is_some() {
        return None;
    }
    Some(Transition {
        rollout: Some(RolloutRecord {
            paused_at_ms: Some(now_ms),
            updated_at_ms: now_ms,
            ..r.clone()
        }),
        events: vec![lifecycle_event(
            &r.route,
            now_ms,
            EventKind::RolloutPaused,
            Some(r.candidate),
            None,
            format!("step {}: {why}", r.step + 1),
        )],
        ..Transition::default()
    })
}

/// Resumes: the step's clock moves on by the time spent paused, and the candidate is put back
/// at the step's phase and share (a manual promote may have moved it). None when not paused.
pub fn resume(
    h: &RouteHistory,
    r: &RolloutRecord,
    steps: &[RolloutStep],
    now_ms: i64,
) -> Option<Transition> {
    let paused_at = r.paused_at_ms?;
    let mut t = Transition {
        rollout: Some(RolloutRecord {
            step_since_ms: r.step_since_ms + (now_ms - paused_at).max(0),
            paused_at_ms: None,
            updated_at_ms: now_ms,
            ..r.clone()
        }),
        ..Transition::default()
    };
    let mut at = None;
    if let Some(RolloutStep::Hold { phase, share, .. }) = steps.get(r.step as usize) {
        at = Some((*phase, *share));
        if h.record.phase != *phase || h.record.share != *share {
            let mut rec = h.record.clone();
            rec.phase = *phase;
            rec.share = *share;
            rec.updated_at_ms = now_ms;
            t.route = Some(rec);
        }
    }
    t.events.push(lifecycle_event(
        &r.route,
        now_ms,
        EventKind::RolloutResumed,
        Some(r.candidate),
        at,
        format!("{}: resumed", step_said(steps, r.step as usize)),
    ));
    Some(t)
}

fn lifecycle_event(
    route: &str,
    now_ms: i64,
    kind: EventKind,
    candidate: Option<u32>,
    at: Option<(Phase, f64)>,
    reason: String,
) -> super::store::EventRecord {
    let mut e = event(route, now_ms, kind);
    e.to_version = candidate;
    e.phase = at.map(|a| a.0);
    e.share = at.map(|a| a.1);
    e.reason = Some(reason);
    e
}

/// Where a route's rollout stands, for the admin API and `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    /// `running`, `paused`, `finished` (its candidate became stable), `rolled_back`,
    /// `superseded`, or `idle` (no candidate: the next published one starts at step 1).
    pub state: &'static str,
    /// The candidate it walks (or walked).
    pub candidate: Option<u32>,
    /// The current step, 1-based (0 when idle).
    pub step: usize,
    /// How many steps are configured.
    pub steps: usize,
    /// The current step's phase and share, when it is one.
    pub phase: Option<Phase>,
    pub share: Option<f64>,
    /// The current step's minimums.
    pub min_duration_secs: Option<u64>,
    pub min_samples: Option<usize>,
    /// Time the step has run, pauses not counted (while running or paused).
    pub step_elapsed_secs: Option<u64>,
    /// Candidate samples scored in this step.
    pub step_samples: Option<usize>,
    /// The reason label of the first unmet condition (`ready` when none, `store` when ready but
    /// the store cannot be written; running or paused only).
    pub reason: Option<RolloutWait>,
    /// Every unmet condition in words ("waiting: 143/200 samples in this step").
    pub waiting: Vec<String>,
}

impl RolloutView {
    /// The view of `r` (the route's last rollout row, if any) on route `h`.
    pub fn new(
        h: &RouteHistory,
        steps: &[RolloutStep],
        rollback: &RollbackConfig,
        r: Option<&RolloutRecord>,
        ev: &Evidence,
        now_ms: i64,
    ) -> Self {
        let mut view = RolloutView {
            state: "idle",
            candidate: r.map(|r| r.candidate),
            step: 0,
            steps: steps.len(),
            phase: None,
            share: None,
            min_duration_secs: None,
            min_samples: None,
            step_elapsed_secs: None,
            step_samples: None,
            reason: None,
            waiting: Vec::new(),
        };
        let Some(r) = r else { return view };
        view.step = r.step as usize + 1;
        if let Some(RolloutStep::Hold {
            phase,
            share,
            min_duration,
            min_samples,
        }) = steps.get(r.step as usize)
        {
            view.phase = Some(*phase);
            view.share = Some(*share);
            view.min_duration_secs = Some(min_duration.as_secs());
            view.min_samples = Some(*min_samples);
        }
        if active(h, Some(r)).is_none() {
            let release = h.release(r.candidate);
            view.state = if h.record.stable == r.candidate {
                "finished"
            } else if release.is_some_and(|rel| rel.rolled_back.is_some()) {
                "rolled_back"
            } else {
                "superseded"
            };
            if h.record.candidate.is_none() && view.state == "superseded" {
                view.state = "idle";
            }
            return view;
        }
        let clock = r.paused_at_ms.unwrap_or(now_ms);
        view.step_elapsed_secs = Some(u64::try_from(clock - r.step_since_ms).unwrap_or(0) / 1000);
        view.step_samples = Some(ev.step_samples);
        view.state = if r.paused_at_ms.is_some() {
            "paused"
        } else {
            "running"
        };
        let unpaused = RolloutRecord {
            paused_at_ms: None,
            ..r.clone()
        };
        let decision = evaluate(steps, rollback, &unpaused, ev, clock);
        let mut waiting = match decision {
            Decision::Advance => Vec::new(),
            Decision::Wait(w) => w,
        };
        if r.paused_at_ms.is_some() {
            waiting.insert(0, Waiting::Paused);
        }
        view.reason = Some(waiting.first().map_or(RolloutWait::Ready, |w| w.kind()));
        view.waiting = waiting.iter().map(ToString::to_string).collect();
        view
    }
}

impl RolloutView {
    /// The store cannot be written: a step that is ready waits for it (an advance is committed
    /// before it is taken).
    pub fn store_failing(&mut self) {
        if self.reason == Some(RolloutWait::Ready) {
            self.reason = Some(RolloutWait::Store);
            self.waiting
                .push("waiting: the store cannot be written; the step is taken once it can".into());
        }
    }
}

#[cfg(test)]
mod tests;
