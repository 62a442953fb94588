//! The durable embedded store: releases, route state, the event log and review samples, kept in
//! one SQLite file. Its only user is the controller thread, which calls it synchronously; the
//! request path never touches it. Every change is one transaction committed durably (WAL with
//! `synchronous = FULL`) before the call returns, so whatever the admin API acknowledged survives
//! `kill -9`. The controller sees only the narrow [`Store`] trait, so another backend can follow.
//!
//! Tables:
//! - `releases`: every release of every route, keyed by (route, version); immutable except for
//!   its `rolled_back_*` columns, never deleted.
//! - `routes`: each route's mutable state (phase, share, stable and candidate versions), one row
//!   per route; stable and candidate must name existing releases of that route.
//! - `events`: the append-only history of changes, numbered by an ever-increasing id and indexed
//!   by (route, id).
//! - `rollouts`: each route's automatic rollout (step, its clock, paused), one row per route,
//!   replaced by each rollout transition; its candidate must name an existing release.
//! - `samples`: each route's kept review samples per [`SampleList`], as opaque JSON documents
//!   in order.
//! - `indexes`: the vector indexes of embedding routes that stopped serving, keyed by (route,
//!   name): until when each stays a rollback target, and when an operator dropped it.
//!
//! The schema version lives in `PRAGMA user_version`; `MIGRATIONS` lists the SQL steps that
//! bring a file from any older version to the current one.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{EventKind, Phase, Prices, ReleaseSpec, Trigger, UnknownName};

mod fleet;
mod postgres;
mod sqlite;

pub use fleet::{Fleet, FleetSignal, JudgeInput, JudgeSample, ReplicaRecord};
pub use postgres::{PgStore, Replica};
pub use sqlite::SqliteStore;

/// One immutable release of a route, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRecord {
    /// The route it belongs to.
    pub route: String,
    /// 1, 2, 3... per route, in publication order.
    pub version: u32,
    /// Optional human label ("v3").
    pub label: Option<String>,
    /// Name of the upstream that serves it.
    pub upstream: String,
    /// The pinned upstream model name.
    pub model: String,
    /// The system prompt it imposes, if any.
    pub system_prompt: Option<String>,
    /// Parameter overrides (`temperature`, `max_tokens`, ...).
    pub params: Map<String, Value>,
    /// Token prices, USD per million tokens.
    pub prices: Option<Prices>,
    /// Publication time, unix ms.
    pub created_at_ms: i64,
    /// Set when the release was rolled back. Kept forever.
    pub rolled_back: Option<RolledBack>,
    /// The vector index built with its model (embedding routes).
    pub index: Option<String>,
}

/// A vector index of an embedding route that stopped serving (upserted by (route, name)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    pub route: String,
    pub name: String,
    /// Until when (unix ms) it stays a rollback target; set when its last release stopped
    /// serving (`index_retention` from then).
    pub retained_until_ms: Option<i64>,
    /// When an operator marked it dropped: rolling back to a release on it is refused.
    pub dropped_at_ms: Option<i64>,
}

/// When and why a release was rolled back.
#[derive(Debug, Clone, PartialEq)]
pub struct RolledBack {
    /// Unix ms.
    pub at_ms: i64,
    pub trigger: Trigger,
    pub reason: String,
}

/// The fields that define a release's behaviour, in a fixed order.
#[derive(Serialize)]
struct Definition<'a> {
    upstream: &'a str,
    model: &'a str,
    system_prompt: Option<&'a str>,
    params: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a str>,
}

impl ReleaseRecord {
    /// The release's definition.
    pub fn spec(&self) -> ReleaseSpec {
        ReleaseSpec {
            label: self.label.clone(),
            upstream: self.upstream.clone(),
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
            params: self.params.clone(),
            prices: self.prices,
            index: self.index.clone(),
        }
    }

    /// Canonical JSON of what defines the release's behaviour: upstream, model, system_prompt,
    /// params, and the index when there is one (serde_json maps are key-sorted, so equal
    /// definitions give equal strings).
    /// Label and prices are metadata and not part of it.
    pub fn definition(&self) -> String {
        let definition = Definition {
            upstream: &self.upstream,
            model: &self.model,
            system_prompt: self.system_prompt.as_deref(),
            params: &self.params,
            index: self.index.as_deref(),
        };
        // Cannot fail: only strings and a JSON map with string keys are serialized.
        serde_json::to_string(&definition).unwrap_or_default()
    }
}

/// A route's mutable state.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRecord {
    /// The route's name.
    pub route: String,
    pub phase: Phase,
    /// Share of traffic mirrored to or served by the candidate, per the phase.
    pub share: f64,
    /// Version of the stable release.
    pub stable: u32,
    /// Version of the candidate release, if any.
    pub candidate: Option<u32>,
    /// Time of the last change, unix ms.
    pub updated_at_ms: i64,
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Assigned by the store (ignored on insert), increasing in commit order.
    pub id: i64,
    /// The route it concerns.
    pub route: String,
    /// When it happened, unix ms.
    pub at_ms: i64,
    pub kind: EventKind,
    /// The version the change moved away from, if any.
    pub from_version: Option<u32>,
    /// The version the change moved to, if any.
    pub to_version: Option<u32>,
    /// The route's phase after the change, if relevant.
    pub phase: Option<Phase>,
    /// The route's share after the change, if relevant.
    pub share: Option<f64>,
    /// Why, for rollbacks.
    pub trigger: Option<Trigger>,
    /// Free-text reason.
    pub reason: Option<String>,
}

/// Where a route's automatic rollout stands (`[routes.NAME.rollout]`): one row per route,
/// replaced by each rollout transition. It concerns `candidate` only: once the route's
/// candidate is another release (or none), the rollout of this one is over.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    /// The route.
    pub route: String,
    /// The candidate release the rollout walks.
    pub candidate: u32,
    /// Index of the current step in the configured steps (0 = the first).
    pub step: u32,
    /// The step's clock, unix ms: when the step began, moved later by the time spent paused,
    /// so `now - step_since_ms` is the time the step has run.
    pub step_since_ms: i64,
    /// Set while paused: since when, unix ms.
    pub paused_at_ms: Option<i64>,
    /// Time of the last change, unix ms.
    pub updated_at_ms: i64,
}

/// Everything one change writes, applied in ONE transaction (all or nothing), in this order:
/// new releases, rollbacks, revivals, the route, the rollout, the indexes, the events.
#[derive(Debug, Clone, Default)]
pub struct Transition {
    /// Inserted; (route, version) must be new.
    pub new_releases: Vec<ReleaseRecord>,
    /// Upserted; its stable and candidate must name existing (or newly inserted) releases.
    pub route: Option<RouteRecord>,
    /// Sets [`ReleaseRecord::rolled_back`] of existing releases.
    pub rolled_back: Vec<(ReleaseKey, RolledBack)>,
    /// Clears `rolled_back` of existing releases (explicit admin rollback *to* a rolled-back
    /// version).
    pub revived: Vec<ReleaseKey>,
    /// Upserted (one row per route); its candidate must name an existing (or newly inserted)
    /// release of the route.
    pub rollout: Option<RolloutRecord>,
    /// Appended to the event log.
    pub events: Vec<EventRecord>,
    /// Upserted by (route, name): indexes that stopped serving or were dropped.
    pub indexes: Vec<IndexRecord>,
}

/// The lists of review documents kept per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleList {
    /// The worst samples, ascending by score.
    Worst,
    /// The uniform reservoir.
    Random,
    /// One document: how many samples the reservoir has been offered, so a restart keeps it
    /// uniform.
    Seen,
}

impl SampleList {
    /// The list's name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleList::Worst => "worst",
            SampleList::Random => "random",
            SampleList::Seen => "random_seen",
        }
    }
}

/// Names one release of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseKey {
    pub route: String,
    pub version: u32,
}

/// Everything the controller loads at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// Every route's state, ordered by route.
    pub routes: Vec<RouteRecord>,
    /// All routes' releases, ordered by (route, version).
    pub releases: Vec<ReleaseRecord>,
    /// Every route's retired or dropped vector indexes, ordered by (route, name).
    pub indexes: Vec<IndexRecord>,
    /// Every route's rollout row, ordered by route.
    pub rollouts: Vec<RolloutRecord>,
}

/// Why a store operation failed. A failed operation has changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened, configured or migrated.
    #[error("store {path}: {source}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What SQLite reported.
        source: rusqlite::Error,
    },
    /// A statement failed (including constraint violations such as a route naming a release
    /// that does not exist).
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A new release's (route, version) is already taken.
    #[error("store: release {route}#{version} already exists")]
    Conflict {
        /// The route.
        route: String,
        /// The version already taken.
        version: u32,
    },
    /// A stored row cannot be decoded, or a change names a release that does not exist.
    #[error("store: corrupt row: {0}")]
    Corrupt(String),
    /// The store file was removed or replaced by another file while open: writing on would go
    /// into a file nobody reads again.
    #[error("store {path}: the file was {what} while in use; changes are kept in memory until it is back (or the server restarts)")]
    Moved {
        /// The store file.
        path: PathBuf,
        /// "removed" or "replaced by another file".
        what: &'static str,
    },
    /// Another server holds the store's lock: one writer per store file.
    #[error("store {path} is in use by another understudy server (it holds the lock {lock}); one server per store file: stop the other one, or give this one its own [store] path")]
    Locked {
        /// The store file.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// An I/O error outside SQLite (the lock file, the store file's identity), or a write that
    /// failed for a reason of the disk.
    #[error("store {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// PostgreSQL refused or failed an operation, or did not answer in time (its message; the
    /// password is never part of it).
    #[error("store (PostgreSQL): {0}")]
    Postgres(String),
    /// A shared store's route changed on another replica since this one last read it: the
    /// change was not written (it is computed again from the newer state).
    #[error("store: route {0} was changed by another replica meanwhile")]
    Stale(String),
    /// The store file's directory could not be created.
    #[error("store: cannot create directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS reported.
        source: std::io::Error,
    },
}

/// The narrow interface the controller uses. A failed write changes nothing and may be retried;
/// the controller keeps what it could not write (see `control/durability.rs`), so a backend
/// only reports, it never queues.
pub trait Store: Send {
    /// Cheap, no write: is the store still the one opened (its file not removed or replaced,
    /// its server reachable)? Called by the controller's timer while everything is fine.
    fn check(&self) -> Result<(), StoreError>;
    /// A durable write that changes nothing, to learn whether a failing store can be written
    /// again. Called by the controller's timer while the store is failing with nothing queued.
    fn probe(&mut self) -> Result<(), StoreError>;
    /// Every route's state and every release.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies the whole transition durably, or nothing of it.
    fn commit(&mut self, t: &Transition) -> Result<(), StoreError>;
    /// The newest `limit` events of a route, oldest first.
    fn events(&self, route: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Replaces one of a route's kept lists of review documents (each opaque JSON).
    fn replace_samples(
        &mut self,
        route: &str,
        list: SampleList,
        samples: &[String],
    ) -> Result<(), StoreError>;
    /// One of a route's kept lists, in the order it was given.
    fn samples(&self, route: &str, list: SampleList) -> Result<Vec<String>, StoreError>;

    // ---- Fleet (a store several replicas share). Defaults: one process, no fleet. ----

    /// The fleet side of a store that several replicas share (PostgreSQL); None for a store
    /// that serves one process (SQLite).
    fn fleet(&mut self) -> Option<&mut dyn Fleet> {
        None
    }
}

/// Turns "no row updated" into an error: a change may only mark releases that exist.
fn existing(changed: u64, key: &ReleaseKey) -> Result<(), StoreError> {
    if changed == 0 {
        return Err(StoreError::Corrupt(format!(
            "no release {}#{} to update",
            key.route, key.version
        )));
    }
    Ok(())
}

/// A stored name read back as its enum: the one conversion from the store (`as_str` is the one
/// conversion to it). An unknown name is a corrupt row, named by `row`.
fn name<T: std::str::FromStr<Err = UnknownName>>(
    text: &str,
    row: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    text.parse()
        .map_err(|e: UnknownName| StoreError::Corrupt(format!("{}: {e}", row())))
}
