//! The controller: the one owner of change. It owns the store and every route's history,
//! judge and review samples. Scored samples (from the mirrors) and commands (from the admin API
//! and Alertmanager) arrive on one queue and are applied one at a time: compute the transition
//! (pure, in `lifecycle.rs`), commit it to the store, then publish the new [`Snapshot`] by
//! swapping it in whole. The request path only ever reads the snapshot.
//!
//! The safe direction never depends on the disk: a rollback is applied and published first,
//! then written; when the store cannot take it, it stays in effect and queued
//! (`durability.rs`), retried on a timer in order, and the store reports failing (`/readyz`,
//! `understudy_store_healthy`, the route views) until it is written. Risky changes (publish,
//! promote, finalize) are committed first and refused while the store is failing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RolloutStep, RouteConfig, StickyKey};
use crate::domain::{Phase, ReleaseSpec, Trigger};
use crate::metrics::{Metrics, RouteGauges};
use crate::shadow::Sample;
use crate::state::{Release, Route, RoutePolicy, Snapshot, Upstream};

mod drill;
mod durability;
mod fleet;
mod indexes;
mod judge;
mod lifecycle;
mod reload;
mod reviews;
mod rollout;
mod store;
mod trend;
mod views;

use durability::{Durability, Turn};
pub use judge::Judge;
use lifecycle::{AlertBlocked, RouteHistory};
pub use reviews::OutputView;
use reviews::Reviews;
pub use views::{AlertEffect, AlertOutcome};

pub use reviews::ReviewSample;
pub use rollout::RolloutAction;
pub use views::RouteView;

pub use drill::DRILL_REASON;
pub use durability::StoreStatus;
pub use fleet::FleetView;
pub use lifecycle::Refused;
pub use reload::{Reconfigure, ReloadError, ReloadOutcome, ReloadRequest, Reloaded};
pub use store::{
    EventRecord, Fleet, FleetSignal, IndexRecord, JudgeInput, JudgeSample, Loaded, PgStore,
    ReleaseRecord, Replica, RolloutRecord, RouteRecord, SampleList, SqliteStore, Store, StoreError,
    Transition,
};

/// How often kept review samples are written to the store.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How often the store is retried while failing (queued changes first), or checked (its file
/// still the one opened) while healthy.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often running rollouts are looked at (a step that may advance does).
const ROLLOUT_EVERY: Duration = Duration::from_secs(1);
/// How often, in a fleet, this replica's scores go onto the shared stream and the stream's new
/// scores into the judges.
const FLEET_JUDGE_EVERY: Duration = Duration::from_millis(100);
/// Events listed per route in its detail.
const EVENTS_SHOWN: usize = 200;

/// A change to a route's releases.
#[derive(Debug, Clone)]
pub enum Change {
    Publish(ReleaseSpec),
    Promote {
        phase: Phase,
        share: Option<f64>,
    },
    Rollback {
        to: Option<u32>,
        trigger: Trigger,
        reason: String,
    },
    Finalize,
    /// Marks an embedding route's vector index dropped (rollbacks onto it are refused).
    DropIndex(String),
    /// An operator's command to the route's automatic rollout.
    Rollout(RolloutAction),
    /// Only for `understudy drill`: the candidate it rolled back, back in its phase and share.
    Restore {
        version: u32,
        phase: Phase,
        share: f64,
    },
}

/// One firing alert from Alertmanager.
#[derive(Debug, Clone)]
pub struct Alert {
    pub route: String,
    pub reason: String,
    pub starts_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is failing: only rollbacks (applied in memory, written later) are accepted.
    #[error(
        "the store is failing ({0}); only rollbacks are accepted until it can be written again"
    )]
    StoreUnavailable(String),
}

type Reply<T> = oneshot::Sender<T>;

/// What the controller is asked to do.
pub enum Command {
    Change {
        route: String,
        change: Change,
        reply: Reply<Result<RouteView, ChangeError>>,
    },
    Alerts {
        alerts: Vec<Alert>,
        reply: Reply<Vec<AlertOutcome>>,
    },
    Routes {
        reply: Reply<Vec<RouteView>>,
    },
    Detail {
        route: String,
        reply: Reply<Option<RouteView>>,
    },
    Samples {
        route: String,
        order: SampleOrder,
        limit: usize,
        reply: Reply<Option<Vec<ReviewSample>>>,
    },
    /// A route as the request path sees it and one of its releases (default: the candidate),
    /// for a replay; None when there is no such route or release.
    Release {
        route: String,
        version: Option<u32>,
        reply: Reply<Option<(Arc<Route>, Arc<Release>)>>,
    },
    /// The replicas sharing the store (`GET /admin/fleet`).
    Fleet {
        reply: Reply<Result<FleetView, StoreError>>,
    },
    /// A re-read configuration file (`reload.rs`).
    Reload {
        next: Box<Reconfigure>,
        reply: Reply<Result<Reloaded, ReloadError>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOrder {
    Worst,
    Random,
}

/// What the configuration says about a route beyond its releases.
struct Settings {
    alias: String,
    sticky_key: Option<StickyKey>,
    /// Shared by every snapshot of the route, so mirror budgets survive swaps.
    policy: Arc<RoutePolicy>,
    /// The route's configuration, to tell whether a reload changes it.
    config: RouteConfig,
}

impl Settings {
    fn of(cfg: &RouteConfig, policy: Arc<RoutePolicy>) -> Settings {
        Settings {
            alias: cfg.model.clone(),
            sticky_key: cfg.sticky_key.clone(),
            policy,
            config: cfg.clone(),
        }
    }

    /// `[routes.NAME.rollout] steps`, when the route walks them by itself.
    fn rollout(&self) -> Option<&[RolloutStep]> {
        self.config.rollout.as_ref().map(|r| r.steps.as_slice())
    }
}

struct RouteRuntime {
    history: RouteHistory,
    judge: Judge,
    reviews: Reviews,
    /// The route's last rollout row (running while it names the current candidate).
    rollout: Option<RolloutRecord>,
    /// Candidate samples scored since the rollout's current step began (or since the start).
    step_samples: usize,
    /// The rollout row whose advance was last refused, so the refusal is logged once, not
    /// every second.
    refused: Option<RolloutRecord>,
    /// Quality and noise floor over time, for the review page.
    trend: trend::Trend,
}

impl RouteRuntime {
    fn new(history: RouteHistory, reviews: Reviews, rollout: Option<RolloutRecord>) -> Self {
        RouteRuntime {
            history,
            judge: Judge::default(),
            reviews,
            rollout,
            step_samples: 0,
            refused: None,
            trend: trend::Trend::default(),
        }
    }

    /// What the rollout's decision rests on.
    fn evidence(&self) -> rollout::Evidence {
        rollout::Evidence {
            step_samples: self.step_samples,
            window_samples: self.judge.samples(),
            noise_samples: self.judge.noise_samples(),
            quality_lower: self.judge.quality_lower(),
            error_upper: self.judge.error_upper(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

pub struct Controller {
    state: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    store: Box<dyn Store>,
    upstreams: HashMap<String, Arc<Upstream>>,
    default_upstream: Arc<Upstream>,
    settings: BTreeMap<String, Settings>,
    routes: BTreeMap<String, RouteRuntime>,
    /// The store's health and the rollbacks in effect but not yet written.
    durability: Durability,
    /// The store's status for `/readyz`, which reads it without asking this thread (which may
    /// be waiting on a slow disk).
    health: watch::Sender<StoreStatus>,
    /// In a fleet (a shared store): the judge's stream, the leadership, the store's signals.
    fleet: Option<fleet::FleetRuntime>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Controller {
    /// Loads the store, reconciles every configured route with it (committing what changed),
    /// and builds the first snapshot.
    pub fn start(
        config: &Config,
        mut store: Box<dyn Store>,
        upstreams: HashMap<String, Arc<Upstream>>,
        default_upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Result<Controller, StartError> {
        // Replicas starting together may each create a route: a change another replica made
        // first is read back and reconciled again.
        let mut attempts = 0;
        let (routes, settings) = loop {
            attempts += 1;
            match Self::reconcile_all(config, &mut store, &upstreams) {
                Err(StartError::Store(StoreError::Stale(route))) if attempts < 5 => {
                    tracing::info!(
                        route,
                        "another replica changed the route while starting; reading it again"
                    );
                }
                other => break other?,
            }
        };
        let mut c = Controller {
            state: Arc::new(ArcSwap::from_pointee(Snapshot::new(
                Vec::new(),
                Arc::clone(&default_upstream),
            ))),
            metrics,
            store,
            upstreams,
            default_upstream,
            settings,
            routes,
            durability: Durability::default(),
            health: watch::channel(StoreStatus::default()).0,
            fleet: None,
        };
        c.align_rollouts()?;
        c.publish().map_err(StartError::Invalid)?;
        c.store_turned(Turn::Same);
        c.fleet_start();
        Ok(c)
    }

    /// Loads the store and reconciles every configured route with it, committing what changed.
    #[expect(clippy::type_complexity, reason = "two maps, used once")]
    fn reconcile_all(
        config: &Config,
        store: &mut Box<dyn Store>,
        upstreams: &HashMap<String, Arc<Upstream>>,
    ) -> Result<(BTreeMap<String, RouteRuntime>, BTreeMap<String, Settings>), StartError> {
        let loaded = match store.fleet() {
            Some(fleet) => fleet.reload()?,
            None => store.load()?,
        };
        let mut rollouts: HashMap<String, RolloutRecord> = loaded
            .rollouts
            .iter()
            .map(|r| (r.route.clone(), r.clone()))
            .collect();
        let mut histories = reload::histories(loaded);
        let mut routes = BTreeMap::new();
        let mut settings = BTreeMap::new();
        let now = now_ms();
        for (name, cfg) in &config.routes {
            let mut history = histories.remove(name);
            if let Some(mut t) = lifecycle::reconcile(cfg, history.as_ref(), now) {
                if let Some(h) = &history {
                    t.indexes = indexes::retired(h, &t, now, cfg.index_retention);
                }
                store.commit(&t)?;
                match &mut history {
                    Some(h) => h.apply(&t),
                    None => history = RouteHistory::created(&t),
                }
                for e in &t.events {
                    tracing::info!(route = %name, event = %e.kind, to = ?e.to_version, reason = ?e.reason, "reconciled with the configuration");
                }
            }
            let history = history.ok_or_else(|| {
                StartError::Invalid(format!("route {name}: no state after reconciling"))
            })?;
            let rollout = rollouts.remove(name);
            let reviews = reload::restore_reviews(store.as_ref(), name)?;
            routes.insert(name.clone(), RouteRuntime::new(history, reviews, rollout));
            let policy = RoutePolicy::new(cfg, upstreams);
            settings.insert(name.clone(), Settings::of(cfg, Arc::new(policy)));
        }
        Ok((routes, settings))
    }

    /// The snapshot the request path reads.
    pub fn state(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.state)
    }

    /// The store's status, as the controller last saw it.
    pub fn store_status(&self) -> watch::Receiver<StoreStatus> {
        self.health.subscribe()
    }

    /// Applies commands and samples until `shutdown` fires or the command senders are gone.
    /// Commands come first: an admin rollback never waits behind a backlog of samples.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut samples: mpsc::Receiver<Sample>,
        shutdown: CancellationToken,
    ) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut rollouts = tokio::time::interval(ROLLOUT_EVERY);
        rollouts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut judge = tokio::time::interval(FLEET_JUDGE_EVERY);
        judge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signal = self.fleet.as_ref().map(|f| f.signal.clone());
        if let Some(s) = &mut signal {
            // What the store's session learned before this loop (the lock, a newer version).
            s.mark_changed();
        }
        let in_fleet = signal.is_some();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    None => break,
                },
                Ok(()) = changed(&mut signal) => self.fleet_signalled(),
                _ = retry.tick() => self.tend_store(),
                _ = judge.tick(), if in_fleet => self.fleet_tick(),
                _ = flush.tick() => self.flush_reviews(),
                _ = rollouts.tick() => self.tend_rollouts(),
                Some(s) = samples.recv() => self.sample(s),
            }
        }
        self.flush_reviews();
        self.flush_pending();
        self.fleet_tick();
        if self.durability.pending() > 0 {
            tracing::error!(
                pending = self.durability.pending(),
                reason = self.durability.failure().unwrap_or(""),
                "stopping with changes that were never written to the store: they are lost"
            );
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Change {
                route,
                change,
                reply,
            } => {
                let result = match self.change(&route, change.clone()) {
                    // Another replica changed the route first: computed again on its state.
                    Err(ChangeError::Store(StoreError::Stale(_))) => self.change(&route, change),
                    other => other,
                };
                let result = result.and_then(|()| {
                    let mut view = self
                        .view(&route, false)
                        .ok_or_else(|| ChangeError::UnknownRoute(route.clone()))?;
                    view.durable = Some(view.store.pending == 0);
                    Ok(view)
                });
                let _ = reply.send(result);
            }
            Command::Alerts { alerts, reply } => {
                let mut outcomes: Vec<AlertOutcome> =
                    alerts.into_iter().map(|a| self.alert(a)).collect();
                // Said after the whole batch: a repeat of an alert whose rollback is in effect
                // but not yet written is not durable either, so Alertmanager keeps retrying.
                for o in &mut outcomes {
                    o.durable = self.durability.pending_of(&o.route).next().is_none();
                }
                let _ = reply.send(outcomes);
            }
            Command::Routes { reply } => {
                let names: Vec<String> = self.routes.keys().cloned().collect();
                let _ = reply.send(names.iter().filter_map(|n| self.view(n, false)).collect());
            }
            Command::Detail { route, reply } => {
                let _ = reply.send(self.view(&route, true));
            }
            Command::Samples {
                route,
                order,
                limit,
                reply,
            } => {
                let out = self.routes.get(&route).map(|r| {
                    let list = match order {
                        SampleOrder::Worst => &r.reviews.worst,
                        SampleOrder::Random => &r.reviews.reservoir,
                    };
                    list.iter().take(limit).cloned().collect()
                });
                let _ = reply.send(out);
            }
            Command::Release {
                route,
                version,
                reply,
            } => {
                let _ = reply.send(self.release_of(&route, version));
            }
            Command::Fleet { reply } => {
                let _ = reply.send(self.fleet_view());
            }
            Command::Reload { next, reply } => {
                let _ = reply.send(self.reload(*next));
            }
        }
    }

    /// The route as the request path sees it, and its release `version` (default: the
    /// candidate), built from the history when it is neither stable nor the candidate.
    fn release_of(&self, name: &str, version: Option<u32>) -> Option<(Arc<Route>, Arc<Release>)> {
        let route = Arc::clone(self.state.load().route(name)?);
        let version = version.or(route.candidate.as_ref().map(|c| c.version))?;
        let live = [Some(&route.stable), route.candidate.as_ref()]
            .into_iter()
            .flatten()
            .find(|r| r.version == version)
            .cloned();
        if let Some(r) = live {
            return Some((route, r));
        }
        let record = self.routes.get(name)?.history.release(version)?;
        let upstream = self.upstreams.get(&record.upstream)?;
        let release = Release::new(version, &record.spec(), Arc::clone(upstream));
        Some((route, Arc::new(release)))
    }

    /// Validates, commits and publishes one change. A rollback is published first and written
    /// after (or queued, when the store cannot take it); any other change is refused while the
    /// store is failing, and committed before it is published.
    fn change(&mut self, route: &str, change: Change) -> Result<(), ChangeError> {
        let rt = self
            .routes
            .get(route)
            .ok_or_else(|| ChangeError::UnknownRoute(route.to_string()))?;
        let rollback = matches!(change, Change::Rollback { .. });
        if !rollback && !self.durability.healthy() {
            let status = self.durability.status(None);
            return Err(ChangeError::StoreUnavailable(
                status.reason.unwrap_or_default(),
            ));
        }
        let now = now_ms();
        let h = &rt.history;
        let steps = self.settings.get(route).and_then(Settings::rollout);
        // The rollout of the current candidate, when the route has one configured.
        let running = steps.and_then(|_| rollout::active(h, rt.rollout.as_ref()));
        let t = match &change {
            Change::Publish(spec) => {
                // The one validation of a release, shared with the configuration file.
                let mut upstreams: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                upstreams.sort_unstable();
                let mut said: Vec<String> = spec
                    .problems(upstreams)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                // The embedding guard, against every release the route has had.
                said.extend(indexes::publish_problems(h, spec));
                if !said.is_empty() {
                    return Err(Refused::Invalid(said.join("; ")).into());
                }
                let mut t = lifecycle::publish(h, spec, now);
                if let Some(steps) = steps {
                    rollout::start(&mut t, steps, now);
                }
                Some(t)
            }
            Change::Promote { phase, share } => {
                let mut t = lifecycle::promote(h, *phase, *share, now)?;
                // The operator has taken the wheel: the rollout waits until resumed.
                let why =
                    "a manual promote paused the rollout; resume hands the candidate back to it";
                if let Some(p) = running.and_then(|r| rollout::pause(r, why, now)) {
                    t.rollout = p.rollout;
                    t.events.extend(p.events);
                }
                Some(t)
            }
            Change::Rollout(action) => {
                let Some(steps) = steps else {
                    return Err(Refused::Conflict(format!(
                        "route {route} has no automatic rollout: configure [routes.{route}.rollout]"
                    ))
                    .into());
                };
                let Some(r) = running else {
                    return Err(Refused::Conflict(format!(
                        "route {route} has no rollout running (no candidate); publishing one starts it"
                    ))
                    .into());
                };
                match action {
                    RolloutAction::Pause => rollout::pause(r, "paused by an operator", now),
                    RolloutAction::Resume => rollout::resume(h, r, steps, now),
                    RolloutAction::Skip => {
                        let why = format!("skipped by an operator at step {}", r.step + 1);
                        Some(rollout::advance(h, r, steps, &why, now)?)
                    }
                }
            }
            Change::Rollback {
                to,
                trigger,
                reason,
            } => {
                if let Some(refused) = to.and_then(|v| indexes::rollback_refusal(h, v, now)) {
                    return Err(refused.into());
                }
                lifecycle::rollback(h, *to, *trigger, reason, now)?
            }
            Change::Finalize => Some(lifecycle::finalize(h, now)?),
            Change::DropIndex(name) => indexes::drop_index(h, name, now)?,
            Change::Restore {
                version,
                phase,
                share,
            } => Some(drill::restore(h, *version, *phase, *share, now)?),
        };
        let Some(mut t) = t else { return Ok(()) };
        if let Some(settings) = self.settings.get(route) {
            let retention = settings.config.index_retention;
            t.indexes.extend(indexes::retired(h, &t, now, retention));
        }
        let Change::Rollback {
            trigger, reason, ..
        } = &change
        else {
            return self.commit(route, &t);
        };
        // In effect for the next request whatever the disk does; then made durable.
        self.apply_in_memory(route, &t);
        let (from, to) = t
            .events
            .last()
            .map_or((None, None), |e| (e.from_version, e.to_version));
        let dropped = self.fleet_dropped();
        self.durability.queue(route, t);
        self.flush_pending();
        if self.fleet_dropped() == dropped {
            self.metrics.rolled_back(route, *trigger, reason, from, to);
        } else {
            // Another replica rolled the same candidate back first (a duplicate alert): one
            // rollback fleet-wide, counted where it was written.
            tracing::info!(
                route,
                trigger = trigger.as_str(),
                "already rolled back by another replica"
            );
        }
        Ok(())
    }

    /// Commits `t`, applies it in memory and publishes the new snapshot.
    fn commit(&mut self, route: &str, t: &Transition) -> Result<(), ChangeError> {
        if let Err(e) = self.store.commit(t) {
            if let StoreError::Stale(_) = e {
                // Not a failing store: another replica changed the route first.
                self.resync();
                return Err(e.into());
            }
            let turn = self.durability.failed(e.to_string());
            self.metrics
                .store_error("commit", &e, turn == Turn::Failing);
            self.store_turned(turn);
            return Err(e.into());
        }
        let turn = self.durability.succeeded();
        self.store_turned(turn);
        self.apply_in_memory(route, t);
        Ok(())
    }

    /// Writes the queued changes in order, as far as the store takes them. A change whose
    /// earlier attempt failed is first looked for in the store, so none is written twice.
    fn flush_pending(&mut self) {
        for _ in 0..3 {
            let before = self.durability.failure().map(str::to_owned);
            if self.flush_once() {
                return;
            }
            // Another replica changed the route first: not a failure of the store. Read its
            // state; the rollback, computed again on it, is written (or is already done).
            self.durability.restore(before);
            self.resync();
        }
    }

    /// One attempt of `flush_pending`; false when a shared store said a route changed first.
    fn flush_once(&mut self) -> bool {
        if self.durability.pending() == 0 {
            return true;
        }
        let store = &mut self.store;
        let flushed = self.durability.flush(|p| {
            if p.attempts > 0 {
                let stored = store.load()?;
                if durability::landed(&stored.routes, &p.transition) {
                    return Ok(());
                }
            }
            store.commit(&p.transition)
        });
        for route in &flushed.committed {
            tracing::debug!(route, "queued change written to the store");
        }
        if let Some(StoreError::Stale(_)) = &flushed.error {
            return false;
        }
        if let Some(e) = &flushed.error {
            self.metrics
                .store_error("commit", e, flushed.turn == Turn::Failing);
        }
        self.store_turned(flushed.turn);
        true
    }

    /// The retry timer: write what is queued; else, while failing, probe the store with a write
    /// that changes nothing; else check that it is still the store that was opened.
    fn tend_store(&mut self) {
        if self.durability.pending() > 0 {
            self.flush_pending();
            return;
        }
        let turn = if self.durability.failure().is_some() {
            match self.store.probe() {
                Ok(()) => self.durability.succeeded(),
                Err(e) => {
                    let turn = self.durability.failed(e.to_string());
                    self.metrics.store_error("probe", &e, turn == Turn::Failing);
                    turn
                }
            }
        } else {
            match self.store.check() {
                Ok(()) => Turn::Same,
                Err(e) => {
                    let turn = self.durability.failed(e.to_string());
                    self.metrics.store_error("check", &e, turn == Turn::Failing);
                    turn
                }
            }
        };
        self.store_turned(turn);
    }

    /// After every store operation: the gauges, `/readyz`'s status and, on a recovery, the log.
    fn store_turned(&mut self, turn: Turn) {
        let status = self.durability.status(None);
        self.metrics
            .store_state(status.ok(), status.pending, turn == Turn::Recovered);
        self.health.send_if_modified(|now| {
            let changed = *now != status;
            *now = status;
            changed
        });
    }

    /// Applies `t` (already committed, or queued) in memory and publishes the new snapshot.
    fn apply_in_memory(&mut self, route: &str, t: &Transition) {
        if let Some(rt) = self.routes.get_mut(route) {
            let before = (rt.history.record.stable, rt.history.record.candidate);
            rt.history.apply(t);
            if let Some(r) = &t.rollout {
                let same_step = rt
                    .rollout
                    .as_ref()
                    .is_some_and(|old| (old.candidate, old.step) == (r.candidate, r.step));
                if !same_step {
                    rt.step_samples = 0;
                }
                rt.rollout = Some(r.clone());
            }
            let after = (rt.history.record.stable, rt.history.record.candidate);
            if before.0 != after.0 {
                // A new stable: its noise floor is unknown, so the warm-up starts again.
                rt.judge.reset_all();
                if let Some(settings) = self.settings.get(route) {
                    settings.policy.set_noise_samples(0);
                }
            } else if before.1 != after.1 {
                rt.judge.reset_candidate();
            }
            for e in &t.events {
                tracing::info!(route, event = %e.kind, from = ?e.from_version, to = ?e.to_version, phase = ?e.phase, share = ?e.share, trigger = ?e.trigger, reason = ?e.reason, "release change");
            }
        }
        if let Err(e) = self.publish() {
            // Cannot happen for validated changes; the previous snapshot keeps serving.
            tracing::error!(route, error = %e, "snapshot not published");
        }
    }

    fn alert(&mut self, a: Alert) -> AlertOutcome {
        let applies = self
            .routes
            .get(&a.route)
            .map(|rt| lifecycle::alert_applies(&rt.history, a.starts_at_ms));
        let outcome = match applies {
            None => AlertEffect::UnknownRoute,
            Some(Err(AlertBlocked::NoCandidate)) => AlertEffect::NoCandidate,
            Some(Err(AlertBlocked::Stale)) => AlertEffect::Stale,
            Some(Ok(())) => {
                let change = Change::Rollback {
                    to: None,
                    trigger: Trigger::Alert,
                    reason: a.reason.clone(),
                };
                match self.change(&a.route, change) {
                    Ok(()) => AlertEffect::RolledBack,
                    Err(e) => {
                        tracing::error!(route = %a.route, error = %e, "alert rollback failed");
                        AlertEffect::Failed
                    }
                }
            }
        };
        AlertOutcome {
            route: a.route,
            outcome,
            durable: true,
        }
    }

    fn sample(&mut self, s: Sample) {
        let Some(rt) = self.routes.get_mut(&s.route) else {
            return;
        };
        let Some(settings) = self.settings.get(&s.route) else {
            return;
        };
        let policy = &settings.policy;
        let window = policy.rollback.window;
        // In a fleet the judges are fed from the shared stream (`fleet.rs`), this one included.
        let local = self.fleet.is_none();
        if let (true, Some(noise)) = (local, &s.noise) {
            rt.judge
                .record_noise(noise.combined, &noise.tracked(), window);
            policy.set_noise_samples(rt.judge.noise_samples());
        }
        // A sample for a candidate that is no longer live (rolled back meanwhile) is not judged.
        let live = rt.history.record.candidate == Some(s.candidate_version);
        if live && local {
            rt.step_samples += 1;
            rt.judge.record(
                s.score.combined,
                s.candidate_error,
                &s.score.tracked(),
                window,
            );
        }
        let review = ReviewSample {
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            candidate_version: s.candidate_version,
            stable_version: Some(s.stable_version),
            api: Some(s.shape.as_str().to_owned()),
            score: s.score.combined,
            scores: s
                .score
                .by_scorer()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            hard_failure: s.score.hard_failure.map(|h| h.as_str().to_string()),
            failed_check: s.score.failed_check.clone(),
            judge_reason: s.judge_reason.clone(),
            request: s
                .request
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok()),
            stable: OutputView::from(&s.stable_output),
            candidate: OutputView::from(&s.candidate_output),
        };
        rt.reviews.add(
            review,
            policy.scoring.keep_worst,
            policy.scoring.keep_random,
            &mut rand::rng(),
        );
        let figures = rt.judge.figures();
        let record = &rt.history.record;
        rt.trend
            .record(now_ms(), &figures, record.phase, record.share);
        if !local {
            self.fleet_sample(&s);
            return;
        }
        self.metrics.judged(&s.route, &figures);
        if live {
            self.decide(&s.route);
        }
    }

    /// The judge's decision for a route, acted on (or only logged, with `auto = false`).
    fn decide(&mut self, route: &str) {
        let (Some(rt), Some(settings)) = (self.routes.get_mut(route), self.settings.get(route))
        else {
            return;
        };
        let policy = &settings.policy;
        let Some(trigger) = rt.judge.decide(&policy.rollback) else {
            return;
        };
        let reason = rt.judge.explain(trigger, &policy.rollback);
        if !policy.rollback.auto {
            // Alert-only: the quality gauge and Prometheus rules carry it from here.
            tracing::warn!(route, trigger = trigger.as_str(), %reason, "judge would roll back (auto = false)");
            rt.judge.reset_candidate();
            return;
        }
        let change = Change::Rollback {
            to: None,
            trigger,
            reason,
        };
        if let Err(e) = self.change(route, change) {
            tracing::error!(route, error = %e, "automatic rollback failed");
        }
    }

    /// At start and after a reload, each route's rollout as the file says: a candidate without a
    /// rollout of its own (new in the file, or the rollout newly configured) starts at step 1; a
    /// running rollout whose step the file changed keeps its step number, its candidate put at
    /// the step's phase and share. Each committed before it takes effect. In a fleet, replicas
    /// starting together plan the same changes: the one another replica made first is read back
    /// (`commit` resyncs on `Stale`) and the plan made again, so it lands once.
    fn align_rollouts(&mut self) -> Result<(), StoreError> {
        let mut attempts = 0;
        'plan: loop {
            attempts += 1;
            let now = now_ms();
            let mut planned = Vec::new();
            for (name, rt) in &self.routes {
                let Some(steps) = self.settings.get(name).and_then(Settings::rollout) else {
                    continue;
                };
                let t = match rollout::active(&rt.history, rt.rollout.as_ref()) {
                    None => rollout::start_existing(&rt.history, steps, now),
                    Some(r) => rollout::realign(&rt.history, r, steps, now),
                };
                planned.extend(t.map(|t| (name.clone(), t)));
            }
            for (name, t) in planned {
                match self.commit(&name, &t) {
                    Ok(()) => {}
                    Err(ChangeError::Store(StoreError::Stale(route))) if attempts < 5 => {
                        tracing::info!(
                            route,
                            "another replica changed the route first; planning its rollout again"
                        );
                        continue 'plan;
                    }
                    Err(ChangeError::Store(e)) => return Err(e),
                    Err(other) => return Err(StoreError::Corrupt(other.to_string())),
                }
            }
            return Ok(());
        }
    }

    /// After a reload: the rollout rows of routes it added, read from the store, then
    /// [`Self::align_rollouts`]. A failure is logged: the reload itself is in effect.
    fn rollouts_after_reload(&mut self) {
        let unknown = self.routes.iter().any(|(name, rt)| {
            rt.rollout.is_none()
                && self
                    .settings
                    .get(name)
                    .and_then(Settings::rollout)
                    .is_some()
        });
        if unknown {
            match self.store.load() {
                Ok(loaded) => {
                    for r in loaded.rollouts {
                        if let Some(rt) = self.routes.get_mut(&r.route) {
                            if rt.rollout.is_none() {
                                rt.rollout = Some(r);
                            }
                        }
                    }
                }
                Err(e) => self.metrics.store_error("read", &e, false),
            }
        }
        if let Err(e) = self.align_rollouts() {
            tracing::error!(error = %e, "rollouts not aligned with the reloaded configuration");
        }
    }

    /// The rollout timer: each running rollout whose step has its evidence moves on (committed
    /// first, like any change, so never while the store is failing); the gauges say where every
    /// rollout stands and what it waits for. In a fleet, only the leader (the replica holding the
    /// judge's lock, whose windows decide rollbacks too) advances.
    fn tend_rollouts(&mut self) {
        let now = now_ms();
        let names: Vec<String> = self.routes.keys().cloned().collect();
        for name in names {
            let Some(settings) = self.settings.get(&name) else {
                continue;
            };
            let Some(steps) = settings.rollout().map(<[RolloutStep]>::to_vec) else {
                continue;
            };
            let policy = Arc::clone(&settings.policy);
            let Some(rt) = self.routes.get(&name) else {
                continue;
            };
            let Some(r) = rollout::active(&rt.history, rt.rollout.as_ref()).cloned() else {
                self.metrics.rollout_state(&name, 0, None);
                continue;
            };
            let ev = rt.evidence();
            let decision = rollout::evaluate(&steps, &policy.rollback, &r, &ev, now);
            let rollout::Decision::Advance = decision else {
                let first = match &decision {
                    rollout::Decision::Wait(w) => w.first().map(|w| w.kind()),
                    rollout::Decision::Advance => None,
                };
                self.metrics
                    .rollout_state(&name, r.step as usize + 1, first);
                continue;
            };
            if self.fleet.as_ref().is_some_and(|f| !f.leader) {
                // In a fleet only the judge's leader moves rollouts on (its step reaches this
                // replica through the shared state): ready, the leader advances it.
                self.metrics.rollout_state(
                    &name,
                    r.step as usize + 1,
                    Some(crate::domain::RolloutWait::Ready),
                );
                continue;
            }
            if !self.durability.healthy() {
                // Advancing is a risky change: it waits for the store, like a promote.
                self.metrics.rollout_state(
                    &name,
                    r.step as usize + 1,
                    Some(crate::domain::RolloutWait::Store),
                );
                continue;
            }
            let elapsed = Duration::from_millis(u64::try_from(now - r.step_since_ms).unwrap_or(0));
            let why = rollout::evidence_said(&ev, &policy.rollback, elapsed);
            match rollout::advance(&rt.history, &r, &steps, &why, now) {
                Ok(t) => {
                    let step = t.rollout.as_ref().map_or(0, |r| r.step as usize + 1);
                    match self.commit(&name, &t) {
                        Ok(()) => self.metrics.rollout_advanced(&name, step, &why),
                        Err(e) => {
                            tracing::error!(route = %name, error = %e, "rollout step not taken");
                        }
                    }
                }
                Err(e) => {
                    if let Some(rt) = self.routes.get_mut(&name) {
                        if rt.refused.as_ref() != Some(&r) {
                            tracing::warn!(route = %name, error = %e, "rollout cannot advance");
                            rt.refused = Some(r.clone());
                        }
                    }
                }
            }
            let step = self
                .routes
                .get(&name)
                .and_then(|rt| rollout::active(&rt.history, rt.rollout.as_ref()))
                .map_or(0, |r| r.step as usize + 1);
            self.metrics.rollout_state(&name, step, None);
        }
    }

    fn flush_reviews(&mut self) {
        let mut turn = Turn::Same;
        for (name, rt) in &mut self.routes {
            if !rt.reviews.dirty {
                continue;
            }
            let docs = |list: &[ReviewSample]| -> Vec<String> {
                list.iter()
                    .filter_map(|s| serde_json::to_string(s).ok())
                    .collect()
            };
            let worst = docs(&rt.reviews.worst);
            let random = docs(&rt.reviews.reservoir);
            let seen = [rt.reviews.seen().to_string()];
            let written = self
                .store
                .replace_samples(name, SampleList::Worst, &worst)
                .and_then(|()| {
                    self.store
                        .replace_samples(name, SampleList::Random, &random)
                })
                .and_then(|()| self.store.replace_samples(name, SampleList::Seen, &seen));
            match written {
                Ok(()) => {
                    rt.reviews.dirty = false;
                    if self.durability.succeeded() == Turn::Recovered {
                        turn = Turn::Recovered;
                    }
                }
                Err(e) => {
                    let now = self.durability.failed(e.to_string());
                    self.metrics
                        .store_error("samples", &e, now == Turn::Failing);
                    if now == Turn::Failing {
                        turn = now;
                    }
                }
            }
        }
        self.store_turned(turn);
    }

    /// Builds every route from its history and settings and swaps the snapshot in.
    fn publish(&mut self) -> Result<(), String> {
        let mut routes = Vec::with_capacity(self.routes.len());
        for (name, rt) in &self.routes {
            let Some(settings) = self.settings.get(name) else {
                continue;
            };
            let h = &rt.history;
            let release = |version: u32| -> Result<Arc<Release>, String> {
                let r = h.release(version).ok_or_else(|| {
                    format!("route {name}: release #{version} missing from the store")
                })?;
                let upstream = self.upstreams.get(&r.upstream).ok_or_else(|| {
                    format!("route {name}: release #{version} uses upstream {:?}, which is not configured", r.upstream)
                })?;
                Ok(Arc::new(Release::new(
                    r.version,
                    &r.spec(),
                    Arc::clone(upstream),
                )))
            };
            let route = Route {
                name: name.clone(),
                alias: settings.alias.clone(),
                phase: h.record.phase,
                share: h.record.share,
                sticky_key: settings.sticky_key.clone(),
                stable: release(h.record.stable)?,
                candidate: h.record.candidate.map(release).transpose()?,
                policy: Arc::clone(&settings.policy),
            };
            self.metrics.route_state(&RouteGauges {
                name: &route.name,
                phase: route.phase,
                serving: route.serving().version,
                threshold: route.policy.rollback.threshold,
                has_candidate: route.candidate.is_some(),
            });
            indexes::publish_gauges(h, &self.metrics);
            routes.push(Arc::new(route));
        }
        let snapshot = Snapshot::new(routes, Arc::clone(&self.default_upstream));
        self.state.store(Arc::new(snapshot));
        Ok(())
    }

    /// The admin view of a route; with its releases and events when `detail`.
    fn view(&self, name: &str, detail: bool) -> Option<RouteView> {
        let rt = self.routes.get(name)?;
        let alias = self.settings.get(name).map_or("", |s| s.alias.as_str());
        let scorers = rt
            .judge
            .scorer_qualities()
            .into_iter()
            .map(Into::into)
            .collect();
        let mut view = RouteView::new(
            alias,
            &rt.history,
            rt.judge.figures(),
            rt.judge.error_rate(),
            scorers,
            self.durability.status(Some(name)),
        );
        if let Some(settings) = self.settings.get(name) {
            if let Some(steps) = settings.rollout() {
                let mut ro = rollout::RolloutView::new(
                    &rt.history,
                    steps,
                    &settings.policy.rollback,
                    rt.rollout.as_ref(),
                    &rt.evidence(),
                    now_ms(),
                );
                if !self.durability.healthy() {
                    ro.store_failing();
                }
                view.rollout = Some(ro);
            }
        }
        if !detail {
            return Some(view);
        }
        let mut events = match self.store.events(name, EVENTS_SHOWN) {
            Ok(events) => events,
            Err(e) => {
                self.metrics.store_error("read", &e, false);
                Vec::new()
            }
        };
        // Changes in effect but not yet written are history too (the newest).
        events.extend(
            self.durability
                .pending_of(name)
                .flat_map(|t| t.events.iter().cloned()),
        );
        Some(
            view.with_detail(&rt.history, &events)
                .with_trend(rt.trend.points()),
        )
    }
}

/// A change of the fleet's signal; never, outside a fleet.
async fn changed(
    signal: &mut Option<watch::Receiver<store::FleetSignal>>,
) -> Result<(), watch::error::RecvError> {
    match signal {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}
