//! The controller's part in a fleet of replicas sharing a PostgreSQL store (nothing here runs
//! on SQLite, whose store has no fleet side).
//!
//! - One release state: the store announces every new state version; a replica behind it reads
//!   the whole state again (`resync`), puts its own rollbacks not yet written back on top of it
//!   (computed again on the newer state: one whose candidate is already gone is done), and
//!   publishes the snapshot. A change computed from an older state is refused by the store
//!   (`StoreError::Stale`), read again and computed again, so it lands once.
//! - One judge: every replica writes the scores of its mirrors to the store's stream and feeds
//!   its judges from that stream, so every replica shows the same figures; only the replica
//!   holding the judge's lock acts on a decision. A new leader's windows are already current,
//!   and it decides at once; the rollback is conditional on the candidate still being the one
//!   judged, so a decision is never applied twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::lifecycle::{self, RouteHistory};
use super::store::{
    FleetSignal, JudgeInput, JudgeSample, ReplicaRecord, RolloutRecord, Transition,
};
use super::Controller;
use crate::shadow::Sample;

/// Samples read from the stream at once.
const READ_BATCH: usize = 2000;
/// Scores kept for the stream while the database is away; the oldest go first past it.
const OUTBOX_MAX: usize = 10_000;
/// How often the leader deletes the stream's samples no judge needs any more.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A replica whose heartbeat is older than this is shown as gone.
const GONE_AFTER_MS: i64 = 5000;
/// The scorers the judge tracks, by the names the stream stores.
const SCORERS: [&str; 6] = [
    "lexical",
    "length",
    "structure",
    "refusal",
    "semantic",
    "judge",
];

/// The fleet state the controller keeps.
pub struct FleetRuntime {
    /// The newest stream sample fed to the judges.
    cursor: i64,
    /// This replica holds the judge's lock.
    pub leader: bool,
    /// What the store's session last learned (new versions, the lock, the connection).
    pub signal: watch::Receiver<FleetSignal>,
    /// Scores of this replica's mirrors, not yet written to the stream.
    outbox: Vec<JudgeSample>,
    /// When the leader last pruned the stream.
    pruned_at: Instant,
    /// Rollbacks of this replica dropped on a newer state: another replica had made them.
    dropped: u64,
}

/// A replica as `GET /admin/fleet` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub id: String,
    pub address: String,
    /// Seconds since its last heartbeat.
    pub last_seen_seconds_ago: f64,
    /// Its session to the database is open and its heartbeat recent.
    pub alive: bool,
    /// It runs the fleet's judge.
    pub leader: bool,
    /// The state version it serves.
    pub state_version: i64,
    /// This is the replica that answered.
    pub this: bool,
}

/// `GET /admin/fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// "postgres" (shared by the replicas listed) or "sqlite" (this process alone).
    pub store: &'static str,
    /// The shared state's newest version, as this replica last heard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<i64>,
    pub replicas: Vec<ReplicaView>,
}

fn tracked(scorers: &[(String, f64)]) -> Vec<(&'static str, f64)> {
    scorers
        .iter()
        .filter_map(|(name, v)| SCORERS.iter().find(|s| **s == name).map(|s| (*s, *v)))
        .collect()
}

/// A rollback queued on an older state, computed again on `h`: None when there is nothing left
/// to do (its candidate was rolled back meanwhile, by another replica or an alert there).
pub fn rederive(h: &RouteHistory, t: &Transition) -> Option<Transition> {
    let e = t.events.last()?;
    let target = e.to_version?;
    let trigger = e.trigger?;
    match t.rolled_back.first() {
        Some((key, _)) if h.record.candidate != Some(key.version) => return None,
        None if h.record.stable == target && h.record.candidate.is_none() => return None,
        _ => {}
    }
    let reason = e.reason.clone().unwrap_or_default();
    lifecycle::rollback(h, Some(target), trigger, &reason, e.at_ms)
        .ok()
        .flatten()
}

impl Controller {
    /// The longest judge window of any route: how much of each list of the stream is needed.
    fn max_window(&self) -> usize {
        self.settings
            .values()
            .map(|s| s.policy.rollback.window)
            .max()
            .unwrap_or(0)
    }

    /// How many of this replica's rollbacks were dropped as made by another replica (0 outside
    /// a fleet): `change` counts a rollback only when this does not move.
    pub(super) fn fleet_dropped(&self) -> u64 {
        self.fleet.as_ref().map_or(0, |f| f.dropped)
    }

    /// In a fleet: rebuilds the judges' windows from the stream and starts following it.
    pub(super) fn fleet_start(&mut self) {
        let per_list = self.max_window();
        let Some(fleet) = self.store.fleet() else {
            return;
        };
        let signal = fleet.signal();
        fleet.serving(fleet.version());
        let history = match fleet.judge_history(per_list) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "the judges' windows could not be read back from the store; they start empty");
                Vec::new()
            }
        };
        let replica = fleet.replica().to_string();
        let cursor = history.iter().map(|s| s.id).max().unwrap_or(0);
        for s in &history {
            self.feed(s);
        }
        for rt in self.routes.values_mut() {
            // A rollout's step counts the samples scored since this process started, as alone.
            rt.step_samples = 0;
        }
        tracing::info!(
            replica,
            samples = history.len(),
            "fleet: following the shared state and the judge's stream"
        );
        self.fleet = Some(FleetRuntime {
            cursor,
            leader: false,
            signal,
            outbox: Vec::new(),
            pruned_at: Instant::now(),
            dropped: 0,
        });
    }

    /// A mirrored sample, in a fleet: onto the stream (the judges read it back from there).
    pub(super) fn fleet_sample(&mut self, s: &Sample) {
        let Some(f) = &mut self.fleet else { return };
        let tracked = |score: &crate::score::Score| -> Vec<(String, f64)> {
            score
                .tracked()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        };
        if let Some(noise) = &s.noise {
            f.outbox.push(JudgeSample {
                id: 0,
                route: s.route.clone(),
                input: JudgeInput::Noise,
                candidate_version: s.candidate_version,
                combined: noise.combined,
                errored: false,
                scorers: tracked(noise),
            });
        }
        f.outbox.push(JudgeSample {
            id: 0,
            route: s.route.clone(),
            input: JudgeInput::Candidate,
            candidate_version: s.candidate_version,
            combined: s.score.combined,
            errored: s.candidate_error,
            scorers: tracked(&s.score),
        });
    }

    /// One sample of the stream into its route's judge. True when it was a live candidate's.
    fn feed(&mut self, s: &JudgeSample) -> bool {
        let (Some(rt), Some(settings)) =
            (self.routes.get_mut(&s.route), self.settings.get(&s.route))
        else {
            return false;
        };
        let window = settings.policy.rollback.window;
        let live = match s.input {
            JudgeInput::Noise => {
                rt.judge
                    .record_noise(s.combined, &tracked(&s.scorers), window);
                settings.policy.set_noise_samples(rt.judge.noise_samples());
                false
            }
            JudgeInput::Candidate => {
                let live = rt.history.record.candidate == Some(s.candidate_version);
                if live {
                    rt.step_samples += 1;
                    rt.judge
                        .record(s.combined, s.errored, &tracked(&s.scorers), window);
                }
                live
            }
        };
        self.metrics.judged(&s.route, &rt.judge.figures());
        live
    }

    /// The fleet's timer: this replica's scores onto the stream, then the stream's new samples
    /// into the judges (the leader decides after each, as one process would).
    pub(super) fn fleet_tick(&mut self) {
        let keep = self.max_window();
        let Some(f) = &mut self.fleet else { return };
        if !f.signal.borrow().connected {
            // The database is away: no waiting on it here (a rollback must not queue behind
            // a connect timeout); the newest scores wait, bounded.
            let over = f.outbox.len().saturating_sub(OUTBOX_MAX);
            f.outbox.drain(..over);
            return;
        }
        let outbox = std::mem::take(&mut f.outbox);
        let mut cursor = f.cursor;
        let leader = f.leader;
        let prune = leader && f.pruned_at.elapsed() >= PRUNE_EVERY;
        if prune {
            f.pruned_at = Instant::now();
            if let Some(fleet) = self.store.fleet() {
                match fleet.prune(keep) {
                    Ok(n) => tracing::debug!(deleted = n, "fleet: old judge samples deleted"),
                    Err(e) => self.metrics.store_error("samples", &e, false),
                }
            }
        }
        if let Some(fleet) = self.store.fleet() {
            if let Err(e) = fleet.write_judge_samples(&outbox) {
                // Scores are not changes of state: these are lost for the fleet's judge
                // (counted); the store's health is what the commits and probes say.
                self.metrics.store_error("samples", &e, false);
            }
        }
        loop {
            let read = match self.store.fleet() {
                Some(fleet) => fleet.judge_samples_after(cursor, READ_BATCH),
                None => return,
            };
            let batch = match read {
                Ok(b) => b,
                Err(e) => {
                    self.metrics.store_error("read", &e, false);
                    return;
                }
            };
            let Some(last) = batch.last() else { return };
            cursor = last.id;
            for s in &batch {
                if self.feed(s) && leader {
                    self.decide(&s.route);
                }
            }
            if let Some(f) = &mut self.fleet {
                f.cursor = cursor;
            }
            if batch.len() < READ_BATCH {
                return;
            }
        }
    }

    /// The store's session learned something: a newer state (read it), the judge's lock won or
    /// lost.
    pub(super) fn fleet_signalled(&mut self) {
        let Some(f) = &mut self.fleet else { return };
        let signal = *f.signal.borrow_and_update();
        let won = signal.leader && !f.leader;
        if signal.leader != f.leader {
            f.leader = signal.leader;
            if signal.leader {
                tracing::info!("fleet: this replica now runs the judge");
            } else {
                tracing::info!("fleet: this replica no longer runs the judge");
            }
        }
        let behind = self
            .store
            .fleet()
            .is_some_and(|fleet| signal.db_version > fleet.version());
        if behind {
            self.resync();
        } else if let Some(fleet) = self.store.fleet() {
            // Current (this replica's own commit, say): its heartbeat says so.
            fleet.serving(fleet.version());
        }
        if won {
            // Current with the stream, then every route judged at once: the decision the last
            // leader may not have lived to make.
            self.fleet_tick();
            let names: Vec<String> = self.routes.keys().cloned().collect();
            for name in names {
                self.decide(&name);
            }
        }
        self.fleet_gauges();
    }

    fn fleet_gauges(&mut self) {
        let Some(f) = &self.fleet else { return };
        let signal = *f.signal.borrow();
        let leader = f.leader;
        let Some(fleet) = self.store.fleet() else {
            return;
        };
        let lag = (signal.db_version - fleet.version()).max(0);
        self.metrics.fleet_state(leader, lag);
    }

    /// Reads the shared state again and serves it, with this replica's rollbacks not yet
    /// written computed again on top of it.
    pub(super) fn resync(&mut self) {
        let Some(fleet) = self.store.fleet() else {
            return;
        };
        let loaded = match fleet.reload() {
            Ok(l) => l,
            Err(e) => {
                self.metrics.store_error("read", &e, false);
                return;
            }
        };
        let version = fleet.version();
        let mut rollouts: HashMap<String, RolloutRecord> = loaded
            .rollouts
            .into_iter()
            .map(|r| (r.route.clone(), r))
            .collect();
        let mut fresh: HashMap<String, RouteHistory> = loaded
            .routes
            .into_iter()
            .map(|record| {
                (
                    record.route.clone(),
                    RouteHistory {
                        record,
                        releases: Vec::new(),
                        indexes: Vec::new(),
                    },
                )
            })
            .collect();
        for r in loaded.releases {
            if let Some(h) = fresh.get_mut(&r.route) {
                h.releases.push(r);
            }
        }
        for i in loaded.indexes {
            if let Some(h) = fresh.get_mut(&i.route) {
                h.indexes.push(i);
            }
        }
        let routes = &self.routes;
        let mut dropped = 0;
        self.durability.rederive(|route, t| {
            let h = fresh
                .get(route)
                .or_else(|| routes.get(route).map(|rt| &rt.history))?;
            let Some(again) = rederive(h, t) else {
                dropped += 1;
                return None;
            };
            if let Some(h) = fresh.get_mut(route) {
                h.apply(&again);
            }
            Some(again)
        });
        if let Some(f) = &mut self.fleet {
            f.dropped += dropped;
        }
        for (name, rt) in &mut self.routes {
            // The rollout as the leader (or an operator on any replica) last moved it.
            if let Some(r) = rollouts.remove(name) {
                if rt.rollout.as_ref() != Some(&r) {
                    let same_step = rt
                        .rollout
                        .as_ref()
                        .is_some_and(|old| (old.candidate, old.step) == (r.candidate, r.step));
                    if !same_step {
                        rt.step_samples = 0;
                    }
                    rt.rollout = Some(r);
                }
            }
            let Some(h) = fresh.remove(name) else {
                continue;
            };
            if h == rt.history {
                continue;
            }
            let before = (rt.history.record.stable, rt.history.record.candidate);
            rt.history = h;
            if before.0 != rt.history.record.stable {
                rt.judge.reset_all();
                if let Some(settings) = self.settings.get(name) {
                    settings.policy.set_noise_samples(0);
                }
            } else if before.1 != rt.history.record.candidate {
                rt.judge.reset_candidate();
            }
            tracing::info!(route = %name, stable = rt.history.record.stable, candidate = ?rt.history.record.candidate, phase = %rt.history.record.phase, "fleet: serving the shared state");
        }
        if let Err(e) = self.publish() {
            tracing::error!(error = %e, "snapshot not published");
        }
        if let Some(fleet) = self.store.fleet() {
            fleet.serving(version);
        }
        self.fleet_gauges();
    }

    /// `GET /admin/fleet`.
    pub(super) fn fleet_view(&mut self) -> Result<FleetView, super::StoreError> {
        let signal = self.fleet.as_ref().map(|f| *f.signal.borrow());
        let Some(fleet) = self.store.fleet() else {
            return Ok(FleetView {
                store: "sqlite",
                state_version: None,
                replicas: Vec::new(),
            });
        };
        let me = fleet.replica().to_string();
        let replicas = fleet.replicas()?;
        Ok(FleetView {
            store: "postgres",
            state_version: signal.map(|s| s.db_version),
            replicas: replicas.into_iter().map(|r| view(r, &me)).collect(),
        })
    }
}

fn view(r: ReplicaRecord, me: &str) -> ReplicaView {
    let ago = (r.now_ms - r.last_seen_ms).max(0);
    let alive = r.connected && ago <= GONE_AFTER_MS;
    ReplicaView {
        this: r.id == me,
        id: r.id,
        address: r.address,
        last_seen_seconds_ago: ago as f64 / 1000.0,
        alive,
        leader: r.leader && alive,
        state_version: r.state_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::{ReleaseRecord, RouteRecord};
    use crate::domain::{Phase, Trigger};

    fn history(stable: u32, candidate: Option<u32>, versions: u32) -> RouteHistory {
        RouteHistory {
            record: RouteRecord {
                route: "bot".into(),
                phase: if candidate.is_some() {
                    Phase::Canary
                } else {
                    Phase::Stable
                },
                share: 0.1,
                stable,
                candidate,
                updated_at_ms: 1,
            },
            releases: (1..=versions)
                .map(|version| ReleaseRecord {
                    route: "bot".into(),
                    version,
                    label: None,
                    upstream: "u".into(),
                    model: format!("m{version}"),
                    system_prompt: None,
                    params: serde_json::Map::new(),
                    prices: None,
                    created_at_ms: 1,
                    rolled_back: None,
                    index: None,
                })
                .collect(),
            indexes: Vec::new(),
        }
    }

    #[test]
    fn a_queued_rollback_is_computed_again_on_the_newer_state_or_dropped_when_done() {
        let old = history(1, Some(2), 2);
        let t = lifecycle::rollback(&old, None, Trigger::Alert, "page", 5)
            .unwrap()
            .unwrap();
        // Another replica only moved the share meanwhile: the same rollback, on the new state.
        let mut moved = history(1, Some(2), 2);
        moved.record.share = 0.5;
        moved.record.updated_at_ms = 3;
        let again = rederive(&moved, &t).unwrap();
        assert_eq!(again.route.as_ref().unwrap().candidate, None);
        assert_eq!(again.rolled_back[0].0.version, 2);
        assert_eq!(again.events.last().unwrap().trigger, Some(Trigger::Alert));
        // Another replica already rolled #2 back, or a newer candidate took its place: done.
        assert!(rederive(&history(1, None, 2), &t).is_none());
        assert!(rederive(&history(1, Some(3), 3), &t).is_none());
        // A rollback *to* a version, with no candidate: done once the route is there.
        let to_one = lifecycle::rollback(&history(2, None, 2), Some(1), Trigger::Manual, "", 5)
            .unwrap()
            .unwrap();
        assert!(rederive(&history(1, None, 2), &to_one).is_none());
        assert!(rederive(&history(2, None, 2), &to_one).is_some());
    }
}
