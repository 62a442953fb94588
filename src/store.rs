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
//! - `samples`: each route's kept review samples per kind ("worst", "random"), as opaque JSON
//!   documents in order.
//!
//! The schema version lives in `PRAGMA user_version`; `MIGRATIONS` lists the SQL steps that
//! bring a file from any older version to the current one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, Row, Transaction, TransactionBehavior};
use serde::Serialize;
use serde_json::{Map, Value};

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
    /// (prompt, completion) USD per million tokens.
    pub prices: Option<(f64, f64)>,
    /// Publication time, unix ms.
    pub created_at_ms: i64,
    /// Set when the release was rolled back: (unix ms, trigger, reason). Kept forever.
    pub rolled_back: Option<(i64, String, String)>,
}

/// The fields that define a release's behaviour, in a fixed order.
#[derive(Serialize)]
struct Definition<'a> {
    upstream: &'a str,
    model: &'a str,
    system_prompt: Option<&'a str>,
    params: &'a Map<String, Value>,
}

impl ReleaseRecord {
    /// Canonical JSON of what defines the release's behaviour: upstream, model, system_prompt,
    /// params (serde_json maps are key-sorted, so equal definitions give equal strings).
    /// Label and prices are metadata and not part of it.
    pub fn definition(&self) -> String {
        let definition = Definition {
            upstream: &self.upstream,
            model: &self.model,
            system_prompt: self.system_prompt.as_deref(),
            params: &self.params,
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
    /// "stable" | "shadow" | "canary" | "promoted".
    pub phase: String,
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
    /// "published", "promoted", "rolled_back", "finalized", "superseded", "configured".
    pub kind: String,
    /// The version the change moved away from, if any.
    pub from_version: Option<u32>,
    /// The version the change moved to, if any.
    pub to_version: Option<u32>,
    /// The route's phase after the change, if relevant.
    pub phase: Option<String>,
    /// The route's share after the change, if relevant.
    pub share: Option<f64>,
    /// "quality" | "errors" | "alert" | "manual".
    pub trigger: Option<String>,
    /// Free-text reason.
    pub reason: Option<String>,
}

/// Everything one change writes, applied in ONE transaction (all or nothing), in this order:
/// new releases, rollbacks, revivals, the route, the events.
#[derive(Debug, Clone, Default)]
pub struct Transition {
    /// Inserted; (route, version) must be new.
    pub new_releases: Vec<ReleaseRecord>,
    /// Upserted; its stable and candidate must name existing (or newly inserted) releases.
    pub route: Option<RouteRecord>,
    /// (route, version, at_ms, trigger, reason): sets [`ReleaseRecord::rolled_back`] of an
    /// existing release.
    pub rolled_back: Vec<(String, u32, i64, String, String)>,
    /// (route, version): clears `rolled_back` of an existing release (explicit admin rollback
    /// *to* a rolled-back version).
    pub revived: Vec<(String, u32)>,
    /// Appended to the event log.
    pub events: Vec<EventRecord>,
}

/// Everything the controller loads at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// Every route's state, ordered by route.
    pub routes: Vec<RouteRecord>,
    /// All routes' releases, ordered by (route, version).
    pub releases: Vec<ReleaseRecord>,
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
    /// The store file's directory could not be created.
    #[error("store: cannot create directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS reported.
        source: std::io::Error,
    },
}

/// The narrow interface the controller uses.
pub trait Store: Send {
    /// Every route's state and every release.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies the whole transition durably, or nothing of it.
    fn commit(&mut self, t: &Transition) -> Result<(), StoreError>;
    /// The newest `limit` events of a route, oldest first.
    fn events(&self, route: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Replaces a route's kept review samples (each an opaque JSON document) of one kind
    /// ("worst" or "random").
    fn replace_samples(
        &mut self,
        route: &str,
        kind: &str,
        samples: &[String],
    ) -> Result<(), StoreError>;
    /// A route's kept review samples of one kind, in the order they were given.
    fn samples(&self, route: &str, kind: &str) -> Result<Vec<String>, StoreError>;
}

/// The schema, as steps: step `i` takes `user_version` from `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &["
CREATE TABLE releases (
    route               TEXT    NOT NULL,
    version             INTEGER NOT NULL CHECK (version >= 1),
    label               TEXT,
    upstream            TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    system_prompt       TEXT,
    params              TEXT    NOT NULL,
    price_prompt        REAL,
    price_completion    REAL,
    created_at_ms       INTEGER NOT NULL,
    rolled_back_at_ms   INTEGER,
    rolled_back_trigger TEXT,
    rolled_back_reason  TEXT,
    PRIMARY KEY (route, version),
    CHECK ((price_prompt IS NULL) = (price_completion IS NULL)),
    CHECK ((rolled_back_at_ms IS NULL) = (rolled_back_trigger IS NULL)
       AND (rolled_back_at_ms IS NULL) = (rolled_back_reason IS NULL))
) STRICT;
CREATE TABLE routes (
    route         TEXT    NOT NULL PRIMARY KEY,
    phase         TEXT    NOT NULL,
    share         REAL    NOT NULL,
    stable        INTEGER NOT NULL,
    candidate     INTEGER,
    updated_at_ms INTEGER NOT NULL,
    FOREIGN KEY (route, stable) REFERENCES releases (route, version),
    FOREIGN KEY (route, candidate) REFERENCES releases (route, version)
) STRICT;
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    route        TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    from_version INTEGER,
    to_version   INTEGER,
    phase        TEXT,
    share        REAL,
    triggered_by TEXT,
    reason       TEXT
) STRICT;
CREATE INDEX events_route_id ON events (route, id);
CREATE TABLE samples (
    route    TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    position INTEGER NOT NULL,
    doc      TEXT    NOT NULL,
    PRIMARY KEY (route, kind, position)
) STRICT;
"];

const INSERT_RELEASE: &str = "INSERT INTO releases (route, version, label, upstream, model, \
     system_prompt, params, price_prompt, price_completion, created_at_ms, rolled_back_at_ms, \
     rolled_back_trigger, rolled_back_reason) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
     ON CONFLICT (route, version) DO NOTHING";
const SELECT_RELEASES: &str = "SELECT route, version, label, upstream, model, system_prompt, \
     params, price_prompt, price_completion, created_at_ms, rolled_back_at_ms, \
     rolled_back_trigger, rolled_back_reason FROM releases ORDER BY route, version";
const SET_ROLLED_BACK: &str = "UPDATE releases SET rolled_back_at_ms = ?3, \
     rolled_back_trigger = ?4, rolled_back_reason = ?5 WHERE route = ?1 AND version = ?2";
const CLEAR_ROLLED_BACK: &str = "UPDATE releases SET rolled_back_at_ms = NULL, \
     rolled_back_trigger = NULL, rolled_back_reason = NULL WHERE route = ?1 AND version = ?2";
const UPSERT_ROUTE: &str = "INSERT INTO routes (route, phase, share, stable, candidate, \
     updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (route) DO UPDATE SET phase = excluded.phase, share = excluded.share, \
     stable = excluded.stable, candidate = excluded.candidate, \
     updated_at_ms = excluded.updated_at_ms";
const SELECT_ROUTES: &str =
    "SELECT route, phase, share, stable, candidate, updated_at_ms FROM routes ORDER BY route";
const INSERT_EVENT: &str = "INSERT INTO events (route, at_ms, kind, from_version, to_version, \
     phase, share, triggered_by, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const SELECT_EVENTS: &str = "SELECT id, route, at_ms, kind, from_version, to_version, phase, \
     share, triggered_by, reason FROM events WHERE route = ?1 ORDER BY id DESC LIMIT ?2";
const DELETE_SAMPLES: &str = "DELETE FROM samples WHERE route = ?1 AND kind = ?2";
const INSERT_SAMPLE: &str =
    "INSERT INTO samples (route, kind, position, doc) VALUES (?1, ?2, ?3, ?4)";
const SELECT_SAMPLES: &str =
    "SELECT doc FROM samples WHERE route = ?1 AND kind = ?2 ORDER BY position";

/// The SQLite implementation of [`Store`]: one connection, owned by the controller thread.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating the file, its parent directory and the schema on first start) with WAL,
    /// synchronous=FULL, foreign keys on, busy_timeout 5 s; a schema version in
    /// `PRAGMA user_version` with migrations as a list of SQL steps.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        configure(&conn).map_err(open_error)?;
        migrate(&mut conn).map_err(open_error)?;
        Ok(SqliteStore { conn })
    }
}

/// The per-connection settings the durability promise rests on.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_failure(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)
}

/// Applies the migrations the file has not seen yet, each in its own transaction together with
/// its new `user_version`.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let Some(done) = usize::try_from(current)
        .ok()
        .filter(|done| *done <= MIGRATIONS.len())
    else {
        return Err(open_failure(format!(
            "schema version {current} is not one this build knows (0 to {})",
            MIGRATIONS.len()
        )));
    };
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", step + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn open_failure(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(message),
    )
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut routes = Vec::new();
        let mut stmt = self.conn.prepare_cached(SELECT_ROUTES)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            routes.push(RouteRecord {
                route: row.get(0)?,
                phase: row.get(1)?,
                share: row.get(2)?,
                stable: row.get(3)?,
                candidate: row.get(4)?,
                updated_at_ms: row.get(5)?,
            });
        }
        let mut releases = Vec::new();
        let mut stmt = self.conn.prepare_cached(SELECT_RELEASES)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            releases.push(release_from_row(row)?);
        }
        Ok(Loaded { routes, releases })
    }

    fn commit(&mut self, t: &Transition) -> Result<(), StoreError> {
        // Dropping `tx` on any error below rolls the whole transition back.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_releases(&tx, &t.new_releases)?;
        {
            let mut stmt = tx.prepare_cached(SET_ROLLED_BACK)?;
            for (route, version, at_ms, trigger, reason) in &t.rolled_back {
                let changed = stmt.execute(params![route, version, at_ms, trigger, reason])?;
                existing(changed, route, *version)?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(CLEAR_ROLLED_BACK)?;
            for (route, version) in &t.revived {
                existing(stmt.execute(params![route, version])?, route, *version)?;
            }
        }
        if let Some(r) = &t.route {
            tx.prepare_cached(UPSERT_ROUTE)?.execute(params![
                r.route,
                r.phase,
                r.share,
                r.stable,
                r.candidate,
                r.updated_at_ms
            ])?;
        }
        {
            let mut stmt = tx.prepare_cached(INSERT_EVENT)?;
            for e in &t.events {
                stmt.execute(params![
                    e.route,
                    e.at_ms,
                    e.kind,
                    e.from_version,
                    e.to_version,
                    e.phase,
                    e.share,
                    e.trigger,
                    e.reason
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn events(&self, route: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(SELECT_EVENTS)?;
        let mut events = stmt
            .query_map(params![route, limit], |row| {
                Ok(EventRecord {
                    id: row.get(0)?,
                    route: row.get(1)?,
                    at_ms: row.get(2)?,
                    kind: row.get(3)?,
                    from_version: row.get(4)?,
                    to_version: row.get(5)?,
                    phase: row.get(6)?,
                    share: row.get(7)?,
                    trigger: row.get(8)?,
                    reason: row.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    fn replace_samples(
        &mut self,
        route: &str,
        kind: &str,
        samples: &[String],
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(DELETE_SAMPLES)?
            .execute(params![route, kind])?;
        {
            let mut stmt = tx.prepare_cached(INSERT_SAMPLE)?;
            for (position, doc) in (0_i64..).zip(samples) {
                stmt.execute(params![route, kind, position, doc])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn samples(&self, route: &str, kind: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(SELECT_SAMPLES)?;
        let docs = stmt
            .query_map(params![route, kind], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(docs)
    }
}

fn insert_releases(tx: &Transaction<'_>, releases: &[ReleaseRecord]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(INSERT_RELEASE)?;
    for r in releases {
        let params_json = serde_json::to_string(&r.params).map_err(|e| {
            StoreError::Corrupt(format!("release {}#{}: params: {e}", r.route, r.version))
        })?;
        let (rolled_back_at, trigger, reason) = match &r.rolled_back {
            Some((at, trigger, reason)) => (Some(*at), Some(trigger), Some(reason)),
            None => (None, None, None),
        };
        let inserted = stmt.execute(params![
            r.route,
            r.version,
            r.label,
            r.upstream,
            r.model,
            r.system_prompt,
            params_json,
            r.prices.map(|p| p.0),
            r.prices.map(|p| p.1),
            r.created_at_ms,
            rolled_back_at,
            trigger,
            reason
        ])?;
        if inserted == 0 {
            return Err(StoreError::Conflict {
                route: r.route.clone(),
                version: r.version,
            });
        }
    }
    Ok(())
}

/// Turns "no row updated" into an error: a change may only mark releases that exist.
fn existing(changed: usize, route: &str, version: u32) -> Result<(), StoreError> {
    if changed == 0 {
        return Err(StoreError::Corrupt(format!(
            "no release {route}#{version} to update"
        )));
    }
    Ok(())
}

fn release_from_row(row: &Row<'_>) -> Result<ReleaseRecord, StoreError> {
    let route: String = row.get(0)?;
    let version: u32 = row.get(1)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("release {route}#{version}: {what}"));
    let params_json: String = row.get(6)?;
    let params = serde_json::from_str(&params_json)
        .map_err(|e| corrupt(&format!("params are not a JSON object: {e}")))?;
    let prices = match (row.get(7)?, row.get(8)?) {
        (Some(prompt), Some(completion)) => Some((prompt, completion)),
        (None, None) => None,
        _ => return Err(corrupt("only one of the two prices is set")),
    };
    let rolled_back = match (row.get(10)?, row.get(11)?, row.get(12)?) {
        (Some(at), Some(trigger), Some(reason)) => Some((at, trigger, reason)),
        (None, None, None) => None,
        _ => return Err(corrupt("rollback columns are partly set")),
    };
    Ok(ReleaseRecord {
        label: row.get(2)?,
        upstream: row.get(3)?,
        model: row.get(4)?,
        system_prompt: row.get(5)?,
        params,
        prices,
        created_at_ms: row.get(9)?,
        rolled_back,
        route,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use tempfile::TempDir;

    fn open_temp() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("understudy.db")).unwrap();
        (dir, store)
    }

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn release(route: &str, version: u32) -> ReleaseRecord {
        ReleaseRecord {
            route: route.into(),
            version,
            label: None,
            upstream: "openai".into(),
            model: "gpt-4o-2024-08-06".into(),
            system_prompt: None,
            params: Map::new(),
            prices: None,
            created_at_ms: 1_700_000_000_000 + i64::from(version),
            rolled_back: None,
        }
    }

    fn route_state(route: &str, stable: u32, candidate: Option<u32>) -> RouteRecord {
        RouteRecord {
            route: route.into(),
            phase: if candidate.is_some() {
                "shadow"
            } else {
                "stable"
            }
            .into(),
            share: 0.05,
            stable,
            candidate,
            updated_at_ms: 1_700_000_000_500,
        }
    }

    fn event(route: &str, kind: &str, to_version: Option<u32>) -> EventRecord {
        EventRecord {
            id: 0,
            route: route.into(),
            at_ms: 1_700_000_001_000,
            kind: kind.into(),
            from_version: None,
            to_version,
            phase: None,
            share: None,
            trigger: None,
            reason: None,
        }
    }

    /// Two routes: "bot" with a fully populated stable and a rolled-back candidate, "other"
    /// with one release.
    fn base() -> Transition {
        let mut bot1 = release("bot", 1);
        bot1.label = Some("v3".into());
        bot1.system_prompt = Some("You are a concise support assistant.".into());
        bot1.params = object(r#"{"temperature":0.2,"stop":["\n"],"x":{"b":1,"a":[true,null]}}"#);
        bot1.prices = Some((2.5, 10.0));
        let mut bot2 = release("bot", 2);
        bot2.rolled_back = Some((1_700_000_002_000, "manual".into(), "tried before".into()));
        let mut other1 = release("other", 1);
        other1.system_prompt = Some("Réponds en français 🙂".into());
        let mut published = event("bot", "published", Some(2));
        published.from_version = Some(1);
        published.phase = Some("shadow".into());
        published.share = Some(0.05);
        Transition {
            new_releases: vec![bot1, bot2, other1],
            route: Some(route_state("bot", 1, Some(2))),
            events: vec![published, event("other", "configured", Some(1))],
            ..Transition::default()
        }
    }

    #[test]
    fn open_creates_file_and_schema_in_nested_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/understudy.db");
        let store = SqliteStore::open(&path).unwrap();
        assert!(path.is_file());
        let pragma = |name: &str| -> String {
            store
                .conn
                .pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma("synchronous"), "Integer(2)"); // FULL
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
        assert_eq!(pragma("busy_timeout"), "Integer(5000)");
        assert_eq!(
            pragma("user_version"),
            format!("Integer({})", MIGRATIONS.len())
        );
        let tables: Vec<String> = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tables,
            ["events", "releases", "routes", "samples", "sqlite_sequence"]
        );
        assert_eq!(store.load().unwrap(), Loaded::default());
    }

    #[test]
    fn open_failures() {
        let dir = tempfile::tempdir().unwrap();
        // A parent that is a file cannot become a directory.
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let err = SqliteStore::open(&dir.path().join("file/understudy.db")).err();
        assert!(matches!(err, Some(StoreError::Dir { .. })), "{err:?}");
        // A schema newer than this build is refused, not guessed at.
        let path = dir.path().join("newer.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).err();
        assert!(
            matches!(&err, Some(StoreError::Open { path: p, .. }) if *p == path),
            "{err:?}"
        );
    }

    #[test]
    fn commit_then_load_round_trips() {
        let (_dir, mut store) = open_temp();
        let t = base();
        store.commit(&t).unwrap();
        let mut expected = Loaded {
            routes: vec![route_state("bot", 1, Some(2))],
            releases: t.new_releases.clone(),
        };
        assert_eq!(store.load().unwrap(), expected);

        // Second change: roll "other" back, revive bot#2, move bot to canary, add a route.
        let mut canary = route_state("bot", 1, Some(2));
        canary.phase = "canary".into();
        canary.share = 0.25;
        store
            .commit(&Transition {
                rolled_back: vec![("other".into(), 1, 42, "quality".into(), "q 0.61".into())],
                revived: vec![("bot".into(), 2)],
                route: Some(canary.clone()),
                ..Transition::default()
            })
            .unwrap();
        store
            .commit(&Transition {
                route: Some(route_state("other", 1, None)),
                ..Transition::default()
            })
            .unwrap();
        expected.routes = vec![canary, route_state("other", 1, None)];
        expected.releases[1].rolled_back = None;
        expected.releases[2].rolled_back = Some((42, "quality".into(), "q 0.61".into()));
        assert_eq!(store.load().unwrap(), expected);
    }

    #[test]
    fn rejected_transition_applies_nothing() {
        type Case = (&'static str, Transition, fn(&StoreError) -> bool);
        let mut nan_share = route_state("bot", 1, Some(3));
        nan_share.share = f64::NAN; // stored as NULL: violates NOT NULL
        let cases: Vec<Case> = vec![
            (
                "existing version",
                Transition {
                    new_releases: vec![release("bot", 3), release("bot", 1)],
                    route: Some(route_state("bot", 1, Some(3))),
                    events: vec![event("bot", "published", Some(3))],
                    ..Transition::default()
                },
                |e| matches!(e, StoreError::Conflict { route, version: 1 } if route == "bot"),
            ),
            (
                "same version twice",
                Transition {
                    new_releases: vec![release("bot", 3), release("bot", 3)],
                    ..Transition::default()
                },
                |e| matches!(e, StoreError::Conflict { version: 3, .. }),
            ),
            (
                "route names a missing release",
                Transition {
                    new_releases: vec![release("bot", 3)],
                    route: Some(route_state("bot", 1, Some(4))),
                    events: vec![event("bot", "published", Some(4))],
                    ..Transition::default()
                },
                |e| matches!(e, StoreError::Sql(_)),
            ),
            (
                "roll back a missing release",
                Transition {
                    new_releases: vec![release("bot", 3)],
                    rolled_back: vec![("bot".into(), 9, 1, "manual".into(), "x".into())],
                    ..Transition::default()
                },
                |e| matches!(e, StoreError::Corrupt(_)),
            ),
            (
                "revive a missing release",
                Transition {
                    rolled_back: vec![("bot".into(), 1, 1, "manual".into(), "x".into())],
                    revived: vec![("nobody".into(), 1)],
                    ..Transition::default()
                },
                |e| matches!(e, StoreError::Corrupt(_)),
            ),
            (
                "route write fails after the other writes",
                Transition {
                    new_releases: vec![release("bot", 3)],
                    rolled_back: vec![("bot".into(), 1, 1, "manual".into(), "x".into())],
                    revived: vec![("bot".into(), 2)],
                    route: Some(nan_share),
                    events: vec![event("bot", "published", Some(3))],
                },
                |e| matches!(e, StoreError::Sql(_)),
            ),
        ];
        let (_dir, mut store) = open_temp();
        store.commit(&base()).unwrap();
        let before = store.load().unwrap();
        let events_before = store.events("bot", 100).unwrap();
        for (name, t, expected) in cases {
            let err = store.commit(&t).err();
            assert!(err.as_ref().is_some_and(expected), "{name}: {err:?}");
            assert_eq!(store.load().unwrap(), before, "{name}");
            assert_eq!(store.events("bot", 100).unwrap(), events_before, "{name}");
        }
        // The store is still usable afterwards.
        store
            .commit(&Transition {
                new_releases: vec![release("bot", 3)],
                ..Transition::default()
            })
            .unwrap();
        assert_eq!(
            store.load().unwrap().releases.len(),
            before.releases.len() + 1
        );
    }

    #[test]
    fn events_are_newest_first_limited_then_returned_oldest_first() {
        let (_dir, mut store) = open_temp();
        let mut full = event("a", "rolled_back", Some(1));
        full.from_version = Some(2);
        full.phase = Some("stable".into());
        full.share = Some(0.0);
        full.trigger = Some("quality".into());
        full.reason = Some("quality 0.61 below 0.80".into());
        let commits = [
            vec![
                event("a", "published", Some(2)),
                event("b", "published", Some(1)),
            ],
            vec![event("a", "promoted", Some(2))],
            vec![full.clone(), event("a", "superseded", None)],
        ];
        for events in commits {
            store
                .commit(&Transition {
                    events,
                    ..Transition::default()
                })
                .unwrap();
        }
        let cases: [(&str, usize, &[&str]); 6] = [
            ("a", 0, &[]),
            ("a", 2, &["rolled_back", "superseded"]),
            ("a", 3, &["promoted", "rolled_back", "superseded"]),
            (
                "a",
                10,
                &["published", "promoted", "rolled_back", "superseded"],
            ),
            ("b", 10, &["published"]),
            ("none", 10, &[]),
        ];
        for (route, limit, kinds) in cases {
            let got = store.events(route, limit).unwrap();
            let got_kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
            assert_eq!(got_kinds, kinds, "{route} limit {limit}");
            assert!(
                got.windows(2).all(|w| w[0].id < w[1].id),
                "{route}: {got:?}"
            );
            assert!(got.iter().all(|e| e.route == route));
        }
        let stored = store.events("a", 2).unwrap().remove(0);
        assert!(stored.id > 0);
        assert_eq!(
            stored,
            EventRecord {
                id: stored.id,
                ..full
            }
        );
    }

    #[test]
    fn samples_are_replaced_per_route_and_kind() {
        let (_dir, mut store) = open_temp();
        let docs =
            |n: usize| -> Vec<String> { (0..n).map(|i| format!(r#"{{"i":{i}}}"#)).collect() };
        store.replace_samples("bot", "worst", &docs(12)).unwrap();
        store.replace_samples("bot", "random", &docs(2)).unwrap();
        store.replace_samples("other", "worst", &docs(1)).unwrap();
        assert_eq!(store.samples("bot", "worst").unwrap(), docs(12)); // order kept past 10
        store.replace_samples("bot", "worst", &docs(3)).unwrap();
        assert_eq!(store.samples("bot", "worst").unwrap(), docs(3));
        assert_eq!(store.samples("bot", "random").unwrap(), docs(2));
        assert_eq!(store.samples("other", "worst").unwrap(), docs(1));
        store.replace_samples("bot", "worst", &[]).unwrap();
        assert_eq!(store.samples("bot", "worst").unwrap(), docs(0));
        assert_eq!(store.samples("nobody", "worst").unwrap(), docs(0));
    }

    #[test]
    fn reopening_sees_everything_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("understudy.db");
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&base()).unwrap();
        store
            .replace_samples("bot", "worst", &[r#"{"score":0.1}"#.into()])
            .unwrap();
        let loaded = store.load().unwrap();
        let events = store.events("bot", 10).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), loaded);
        assert_eq!(store.events("bot", 10).unwrap(), events);
        assert_eq!(store.samples("bot", "worst").unwrap(), [r#"{"score":0.1}"#]);
    }

    #[test]
    fn undecodable_rows_are_reported_as_corrupt() {
        let cases = [
            ("'not json'", "NULL", "params are not a JSON object"),
            ("'[1, 2]'", "NULL", "params are not a JSON object"),
            ("'{}'", "'manual'", "rollback columns are partly set"),
        ];
        for (params_sql, trigger_sql, expected) in cases {
            let (_dir, store) = open_temp();
            // Written behind the store's back, as a damaged or foreign file would be; the CHECK
            // that normally prevents partial rollback columns is bypassed too.
            store
                .conn
                .pragma_update(None, "ignore_check_constraints", true)
                .unwrap();
            store
                .conn
                .execute_batch(&format!(
                    "INSERT INTO releases (route, version, upstream, model, params, \
                     created_at_ms, rolled_back_trigger) VALUES ('bot', 1, 'u', 'm', \
                     {params_sql}, 0, {trigger_sql})"
                ))
                .unwrap();
            let message = match store.load() {
                Err(StoreError::Corrupt(m)) => m,
                other => panic!("{params_sql}: {other:?}"),
            };
            assert!(message.starts_with("release bot#1: "), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn definition_covers_behaviour_only() {
        let mut base = release("bot", 1);
        base.params = object(r#"{"temperature":0.2,"max_tokens":100,"stop":{"b":1,"a":2}}"#);
        base.system_prompt = Some("Be brief.".into());
        type Change = fn(&mut ReleaseRecord);
        let cases: [(&str, Change, bool); 10] = [
            ("label is metadata", |r| r.label = Some("v9".into()), true),
            ("prices are metadata", |r| r.prices = Some((1.0, 2.0)), true),
            (
                "rollback is state",
                |r| r.rolled_back = Some((1, "manual".into(), "x".into())),
                true,
            ),
            (
                "version and time",
                |r| (r.version, r.created_at_ms) = (7, 0),
                true,
            ),
            (
                "key order",
                |r| {
                    r.params =
                        object(r#"{"stop":{"a":2,"b":1},"max_tokens":100,"temperature":0.2}"#)
                },
                true,
            ),
            ("model", |r| r.model = "gpt-4o-2024-11-20".into(), false),
            ("upstream", |r| r.upstream = "anthropic".into(), false),
            (
                "empty prompt is not no prompt",
                |r| r.system_prompt = Some(String::new()),
                false,
            ),
            (
                "param value",
                |r| r.params["temperature"] = 0.3.into(),
                false,
            ),
            (
                "extra param",
                |r| _ = r.params.insert("top_p".into(), 1.into()),
                false,
            ),
        ];
        for (name, change, same) in cases {
            let mut changed = base.clone();
            change(&mut changed);
            assert_eq!(changed.definition() == base.definition(), same, "{name}");
        }
        assert_eq!(
            release("bot", 1).definition(),
            r#"{"upstream":"openai","model":"gpt-4o-2024-08-06","system_prompt":null,"params":{}}"#
        );
    }

    const WRITER_ENV: &str = "UNDERSTUDY_STORE_CRASH_WRITER";
    const WRITER_MAX: u32 = 2_000;

    /// Not a test on its own: the child process of `acknowledged_commits_survive_sigkill`.
    /// With `UNDERSTUDY_STORE_CRASH_WRITER=PATH` it commits version after version to the store at
    /// PATH, printing `committed N` after each commit returned, until killed.
    #[test]
    fn crash_writer() {
        let Some(path) = std::env::var_os(WRITER_ENV) else {
            return;
        };
        let mut store = SqliteStore::open(Path::new(&path)).unwrap();
        let mut out = std::io::stdout().lock();
        for version in 1..=WRITER_MAX {
            let rolled_back = (version > 1)
                .then(|| ("r".into(), version - 1, 1, "quality".into(), "test".into()));
            store
                .commit(&Transition {
                    new_releases: vec![release("r", version)],
                    route: Some(route_state("r", version, None)),
                    rolled_back: rolled_back.into_iter().collect(),
                    events: vec![event("r", "published", Some(version))],
                    ..Transition::default()
                })
                .unwrap();
            writeln!(out, "committed {version}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn acknowledged_commits_survive_sigkill() {
        let exe = std::env::current_exe().unwrap();
        // The writer's name as the harness knows it, without the crate name.
        let (_, module) = module_path!().split_once("::").unwrap();
        let writer = format!("{module}::crash_writer");
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("crash.db");
            let kill_after: u32 = rand::random_range(1..=60);
            let mut child = Command::new(&exe)
                .args(["--exact", &writer, "--nocapture"])
                .args(["--test-threads", "1"])
                .env(WRITER_ENV, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut acked = 0;
            for line in BufReader::new(child.stdout.take().unwrap()).lines() {
                // The harness may print "test ... " in front of the first one.
                if let Some((_, n)) = line.unwrap().split_once("committed ") {
                    acked = n.parse().unwrap();
                    if acked >= kill_after {
                        break;
                    }
                }
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            assert_eq!(acked, kill_after, "round {round}: writer stopped early");

            let store = SqliteStore::open(&path).unwrap();
            let loaded = store.load().unwrap();
            let versions: Vec<u32> = loaded.releases.iter().map(|r| r.version).collect();
            let last = versions.len() as u32;
            // Every acknowledged commit is there, possibly followed by some the writer made
            // but had not yet acknowledged; never a gap.
            assert!(last >= acked, "round {round}: {last} < acked {acked}");
            assert_eq!(versions, (1..=last).collect::<Vec<_>>(), "round {round}");
            // Each commit is whole: route state, rollbacks and events match the releases.
            assert_eq!(
                loaded.routes,
                [route_state("r", last, None)],
                "round {round}"
            );
            let live: Vec<u32> = loaded
                .releases
                .iter()
                .filter(|r| r.rolled_back.is_none())
                .map(|r| r.version)
                .collect();
            assert_eq!(
                live,
                [last],
                "round {round}: only the newest is not rolled back"
            );
            assert_eq!(store.events("r", usize::MAX).unwrap().len(), versions.len());
        }
    }
}
