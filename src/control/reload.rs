//! A configuration re-read while serving (SIGHUP, `POST /admin/reload`): the routes,
//! upstreams and route settings of the new file, reconciled with the store by the same rules
//! as at start (`lifecycle::reconcile`: the store wins; only release definitions a route never
//! had take effect, so a rolled-back candidate stays rolled back). Nothing is committed unless
//! every route's releases resolve to a configured upstream; then each route's transition is
//! committed and the new snapshot swapped in whole. Requests in flight keep the snapshot they
//! started with (their `Arc`s), so a reload never disturbs them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::lifecycle::{self, RouteHistory};
use super::reviews::Reviews;
use super::store::{Loaded, SampleList, Store, StoreError, Transition};
use super::{now_ms, Controller, ReviewSample, RouteRuntime, Settings};
use crate::config::RouteConfig;
use crate::state::{RoutePolicy, Upstream};

/// What a reload asks of the controller: the new file's routes and its upstreams, resolved.
pub struct Reconfigure {
    pub routes: BTreeMap<String, RouteConfig>,
    /// Every configured upstream; an unchanged one is the running `Arc` (its pool and budgets).
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub default_upstream: Arc<Upstream>,
}

/// What a reload changed, for its answer and log.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Reloaded {
    /// Routes new to this server (created, or read back from the store).
    pub added: Vec<String>,
    /// Routes no longer in the file: no longer served (their state stays in the store).
    pub removed: Vec<String>,
    /// Routes whose settings (alias, sticky key, shadow, scoring, rollback, checks) changed.
    pub updated: Vec<String>,
    /// The release changes reconciling made, e.g. `support-bot: published #3`.
    pub changes: Vec<String>,
}

/// The answer to a reload request (SIGHUP's is only logged).
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new file is in effect, except for the settings in `restart_required`.
    Applied {
        reloaded: Reloaded,
        /// Settings that changed in the file but only take effect at the next start (their
        /// running values are kept), e.g. `[server]`, `upstreams.NAME.ca_file`.
        restart_required: Vec<String>,
    },
    /// The file (or what it makes of the store's state) is invalid: every problem, and the
    /// running configuration kept.
    Refused(Vec<String>),
    /// The reload could not be applied (the store is failing), or only in part.
    Failed(String),
}

/// A reload asked of the server, answered on the channel.
pub type ReloadRequest = tokio::sync::oneshot::Sender<ReloadOutcome>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration cannot serve the store's state; nothing was changed.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The store is failing: a reload, which commits, waits until it takes writes again.
    #[error("the store is failing ({0}); reload again once it takes writes")]
    StoreUnavailable(String),
    /// A commit failed part way: the routes committed before it are in effect, the others
    /// keep their state and settings.
    #[error("the store failed while reconciling: {error}; in effect: {committed:?}, unchanged: the other routes and settings")]
    Store {
        error: StoreError,
        committed: Vec<String>,
    },
}

/// Every route's history in `loaded`, by route (at start and for routes a reload adds).
pub(super) fn histories(loaded: Loaded) -> HashMap<String, RouteHistory> {
    let mut histories: HashMap<String, RouteHistory> = loaded
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
        if let Some(h) = histories.get_mut(&r.route) {
            h.releases.push(r);
        }
    }
    for i in loaded.indexes {
        if let Some(h) = histories.get_mut(&i.route) {
            h.indexes.push(i);
        }
    }
    histories
}

/// The review samples the store kept for `route` (at start and for routes a reload adds).
pub(super) fn restore_reviews(store: &dyn Store, route: &str) -> Result<Reviews, StoreError> {
    let list = |list: SampleList| -> Result<Vec<ReviewSample>, StoreError> {
        Ok(store
            .samples(route, list)?
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    };
    let seen = store
        .samples(route, SampleList::Seen)?
        .first()
        .and_then(|s| s.parse().ok());
    Ok(Reviews::restore(
        list(SampleList::Worst)?,
        list(SampleList::Random)?,
        seen,
    ))
}

/// One route's part of a reload: its reconciling transition and the history after it.
struct Planned {
    name: String,
    transition: Option<Transition>,
    after: RouteHistory,
    new: bool,
}

impl Controller {
    /// Applies a new configuration's routes and upstreams: reconciled with the store, checked
    /// whole, committed route by route, then published in one swap.
    pub(super) fn reload(&mut self, next: Reconfigure) -> Result<Reloaded, ReloadError> {
        if !self.durability.healthy() {
            let reason = self.durability.failure().unwrap_or("unknown").to_string();
            return Err(ReloadError::StoreUnavailable(reason));
        }
        let plan = self.plan(&next)?;
        let mut report = Reloaded::default();
        let mut committed = Vec::new();
        for p in &plan {
            let Some(t) = &p.transition else { continue };
            if let Err(error) = self.store.commit(t) {
                let turn = self.durability.failed(error.to_string());
                self.metrics
                    .store_error("commit", &error, turn == super::Turn::Failing);
                self.store_turned(turn);
                self.keep_committed(&committed, next.upstreams);
                return Err(ReloadError::Store {
                    error,
                    committed: committed
                        .iter()
                        .map(|p: &&Planned| p.name.clone())
                        .collect(),
                });
            }
            committed.push(p);
        }
        for p in &plan {
            for e in p.transition.iter().flat_map(|t| &t.events) {
                let to = e.to_version.map_or(String::new(), |v| format!(" #{v}"));
                report.changes.push(format!("{}: {}{to}", p.name, e.kind));
                tracing::info!(route = %p.name, event = %e.kind, to = ?e.to_version, "reconciled with the reloaded configuration");
            }
        }
        report.removed = self
            .routes
            .keys()
            .filter(|n| !next.routes.contains_key(*n))
            .cloned()
            .collect();
        for name in &report.removed {
            self.routes.remove(name);
            self.settings.remove(name);
            self.metrics.route_removed(name);
        }
        for p in plan {
            let cfg = &next.routes[&p.name];
            if p.new {
                report.added.push(p.name.clone());
                let reviews = match restore_reviews(self.store.as_ref(), &p.name) {
                    Ok(r) => r,
                    Err(e) => {
                        self.metrics.store_error("read", &e, false);
                        Reviews::restore(Vec::new(), Vec::new(), None)
                    }
                };
                self.routes
                    .insert(p.name.clone(), RouteRuntime::new(p.after, reviews, None));
            } else if let Some(rt) = self.routes.get_mut(&p.name) {
                let (stable, candidate) = (rt.history.record.stable, rt.history.record.candidate);
                rt.history = p.after;
                if rt.history.record.stable != stable {
                    rt.judge.reset_all();
                } else if rt.history.record.candidate != candidate {
                    rt.judge.reset_candidate();
                }
            }
            let keep = self
                .settings
                .get(&p.name)
                .is_some_and(|s| s.config == *cfg && self.scorers_same(cfg, &next.upstreams));
            if !keep {
                if !p.new {
                    report.updated.push(p.name.clone());
                }
                let policy = RoutePolicy::new(cfg, &next.upstreams);
                self.settings
                    .insert(p.name.clone(), Settings::of(cfg, Arc::new(policy)));
            }
            self.sync_noise(&p.name);
        }
        self.upstreams = next.upstreams;
        self.default_upstream = next.default_upstream;
        self.rollouts_after_reload();
        self.publish().map_err(|e| ReloadError::Invalid(vec![e]))?;
        Ok(report)
    }

    /// Each route's transition and resulting history, and the check that every release the
    /// routes may serve resolves to an upstream of the new configuration.
    fn plan(&self, next: &Reconfigure) -> Result<Vec<Planned>, ReloadError> {
        let now = now_ms();
        let mut stored = if next.routes.keys().all(|n| self.routes.contains_key(n)) {
            HashMap::new()
        } else {
            let loaded = self.store.load().map_err(|e| ReloadError::Store {
                error: e,
                committed: Vec::new(),
            })?;
            histories(loaded)
        };
        let mut plan = Vec::with_capacity(next.routes.len());
        let mut problems = Vec::new();
        for (name, cfg) in &next.routes {
            let current = match self.routes.get(name) {
                Some(rt) => Some(rt.history.clone()),
                None => stored.remove(name),
            };
            let new = !self.routes.contains_key(name);
            let transition = lifecycle::reconcile(cfg, current.as_ref(), now).map(|mut t| {
                // Indexes the reconciled releases stop using stay rollback targets a while.
                if let Some(h) = &current {
                    t.indexes = super::indexes::retired(h, &t, now, cfg.index_retention);
                }
                t
            });
            let after = match (&transition, current) {
                (Some(t), Some(mut h)) => {
                    h.apply(t);
                    Some(h)
                }
                (Some(t), None) => RouteHistory::created(t),
                (None, h) => h,
            };
            let Some(after) = after else {
                problems.push(format!("routes.{name}: no state after reconciling"));
                continue;
            };
            let live = [Some(after.record.stable), after.record.candidate];
            for version in live.into_iter().flatten() {
                match after.release(version) {
                    Some(r) if next.upstreams.contains_key(&r.upstream) => {}
                    Some(r) => problems.push(format!(
                        "routes.{name}: release #{version}, which the store says is {}, uses upstream {:?}, which the new configuration does not have",
                        after.state_of(r).as_str(),
                        r.upstream
                    )),
                    None => problems.push(format!(
                        "routes.{name}: release #{version} missing from the store"
                    )),
                }
            }
            plan.push(Planned {
                name: name.clone(),
                transition,
                after,
                new,
            });
        }
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(ReloadError::Invalid(problems))
        }
    }

    /// After a commit failed part way: the committed routes that were already served take
    /// their new state (the store has it), with the new upstreams beside the running ones so
    /// every release still resolves; everything else stays as it was.
    fn keep_committed(
        &mut self,
        committed: &[&Planned],
        upstreams: HashMap<String, Arc<Upstream>>,
    ) {
        for p in committed {
            if let Some(rt) = self.routes.get_mut(&p.name) {
                rt.history = p.after.clone();
                rt.judge.reset_all();
            }
            self.sync_noise(&p.name);
        }
        for (name, u) in upstreams {
            self.upstreams.entry(name).or_insert(u);
        }
        if let Err(e) = self.publish() {
            tracing::error!(error = %e, "snapshot not published after a failed reload");
        }
    }

    /// Tells the route's policy how many noise samples its judge holds (0 after a new stable or
    /// a new policy: the noise floor's warm-up starts again).
    fn sync_noise(&self, route: &str) {
        if let (Some(rt), Some(settings)) = (self.routes.get(route), self.settings.get(route)) {
            settings.policy.set_noise_samples(rt.judge.noise_samples());
        }
    }

    /// Whether the remote scorers of `cfg` would use the same upstreams as now.
    fn scorers_same(&self, cfg: &RouteConfig, next: &HashMap<String, Arc<Upstream>>) -> bool {
        let names = [
            cfg.scoring.semantic.as_ref().map(|s| &s.upstream),
            cfg.scoring.judge.as_ref().map(|j| &j.upstream),
        ];
        names
            .into_iter()
            .flatten()
            .all(|n| match (self.upstreams.get(n), next.get(n)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            })
    }
}
