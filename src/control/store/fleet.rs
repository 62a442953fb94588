//! The fleet side of a store several replicas share: one release state with a version that
//! every commit raises (and announces), one stream of scored samples from every replica for the
//! one judge, the elected leader that runs it, and the replicas' heartbeats. Only the
//! PostgreSQL backend has one; the controller asks [`super::Store::fleet`].

use tokio::sync::watch;

use super::{Loaded, StoreError};

/// What the store's background session last learned from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetSignal {
    /// The shared state's newest version (raised by every commit of any replica).
    pub db_version: i64,
    /// This replica holds the judge's lock.
    pub leader: bool,
    /// The session to the database is up.
    pub connected: bool,
}

/// Which window of the judge a sample feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeInput {
    /// Candidate against stable, for `candidate_version`.
    Candidate,
    /// Stable against itself: the noise floor.
    Noise,
}

impl JudgeInput {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeInput::Candidate => "candidate",
            JudgeInput::Noise => "noise",
        }
    }
}

/// One score for the fleet's judge, from whichever replica mirrored it.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSample {
    /// Assigned by the store (ignored on insert), increasing in insert order.
    pub id: i64,
    pub route: String,
    pub input: JudgeInput,
    /// The candidate the mirror scored.
    pub candidate_version: u32,
    /// The combined score.
    pub combined: f64,
    /// The candidate failed (candidate samples only).
    pub errored: bool,
    /// The tracked scorers' own values.
    pub scorers: Vec<(String, f64)>,
}

/// One replica as its heartbeat left it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRecord {
    pub id: String,
    /// Its admin listener.
    pub address: String,
    /// Unix ms, by the database's clock.
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    /// The database's clock when this list was read, unix ms.
    pub now_ms: i64,
    /// The state version it serves.
    pub state_version: i64,
    /// Its session holds the judge's lock now.
    pub leader: bool,
    /// Its session to the database is open now.
    pub connected: bool,
}

/// The fleet operations of a shared store.
pub trait Fleet {
    /// This replica's id.
    fn replica(&self) -> &str;
    /// The state version of the last `load` (or of this replica's own commit on top of it).
    fn version(&self) -> i64;
    /// Changes of the shared version, the leadership and the connection.
    fn signal(&self) -> watch::Receiver<FleetSignal>;
    /// `Store::load`, keeping what it read as the state the next commits build on (each
    /// route's revision, the state version).
    fn reload(&mut self) -> Result<Loaded, StoreError>;
    /// The state version this replica serves, for its heartbeat.
    fn serving(&self, version: i64);
    /// Appends scored samples to the fleet's stream.
    fn write_judge_samples(&mut self, samples: &[JudgeSample]) -> Result<(), StoreError>;
    /// The stream after `after` (an id), oldest first, at most `limit`.
    fn judge_samples_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JudgeSample>, StoreError>;
    /// To rebuild the judges' windows: per route the newest `per_list` noise samples and the
    /// newest `per_list` of each candidate, oldest first.
    fn judge_history(&mut self, per_list: usize) -> Result<Vec<JudgeSample>, StoreError>;
    /// Deletes what no judge needs any more: past the newest `keep_per_list` samples of each
    /// list (as `judge_history` reads them), and the heartbeat rows of replicas not seen for
    /// a day. Returns the samples deleted.
    fn prune(&mut self, keep_per_list: usize) -> Result<u64, StoreError>;
    /// Every replica that has a heartbeat row.
    fn replicas(&mut self) -> Result<Vec<ReplicaRecord>, StoreError>;
}
