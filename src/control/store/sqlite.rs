//! The SQLite backend of [`Store`]: one file, one connection owned by the controller thread, WAL
//! with `synchronous = FULL`, the schema version in `PRAGMA user_version`. Names (phases, event
//! kinds, triggers) are stored as their one spelling and read back through `FromStr`.
//!
//! One writer per file: `open` takes an exclusive advisory lock on `FILE.lock` beside the
//! database and holds it for the store's life, so a second server (another process, or another
//! `run` in this one) on the same file refuses to start instead of overwriting the first one's
//! changes. Every write first checks that the path still names the file that was opened (device
//! and inode): a store whose file was removed or replaced reports it instead of writing into a
//! file nobody will read again.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, Row, Transaction, TransactionBehavior};

use super::{
    existing, name, EventRecord, IndexRecord, Loaded, ReleaseRecord, RolledBack, RolloutRecord,
    RouteRecord, SampleList, Store, StoreError, Transition,
};
use crate::domain::{Phase, Prices, Trigger};

/// The schema, as steps: step `i` takes `user_version` from `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &[
    "
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
",
    "
CREATE TABLE rollouts (
    route         TEXT    NOT NULL PRIMARY KEY,
    candidate     INTEGER NOT NULL,
    step          INTEGER NOT NULL CHECK (step >= 0),
    step_since_ms INTEGER NOT NULL,
    paused_at_ms  INTEGER,
    updated_at_ms INTEGER NOT NULL,
    FOREIGN KEY (route, candidate) REFERENCES releases (route, version)
) STRICT;
",
    // Embedding routes: each release's vector index, and the indexes that stopped serving
    // (their retention and whether an operator dropped them).
    "
ALTER TABLE releases ADD COLUMN index_name TEXT;
CREATE TABLE indexes (
    route             TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    retained_until_ms INTEGER,
    dropped_at_ms     INTEGER,
    PRIMARY KEY (route, name)
) STRICT;
",
];

const INSERT_RELEASE: &str = "INSERT INTO releases (route, version, label, upstream, model, \
     system_prompt, params, price_prompt, price_completion, created_at_ms, rolled_back_at_ms, \
     rolled_back_trigger, rolled_back_reason, index_name) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
     ON CONFLICT (route, version) DO NOTHING";
const SELECT_RELEASES: &str = "SELECT route, version, label, upstream, model, system_prompt, \
     params, price_prompt, price_completion, created_at_ms, rolled_back_at_ms, \
     rolled_back_trigger, rolled_back_reason, index_name FROM releases ORDER BY route, version";
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
const UPSERT_ROLLOUT: &str = "INSERT INTO rollouts (route, candidate, step, step_since_ms, \
     paused_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (route) DO UPDATE SET candidate = excluded.candidate, step = excluded.step, \
     step_since_ms = excluded.step_since_ms, paused_at_ms = excluded.paused_at_ms, \
     updated_at_ms = excluded.updated_at_ms";
const SELECT_ROLLOUTS: &str = "SELECT route, candidate, step, step_since_ms, paused_at_ms, \
     updated_at_ms FROM rollouts ORDER BY route";
const INSERT_EVENT: &str = "INSERT INTO events (route, at_ms, kind, from_version, to_version, \
     phase, share, triggered_by, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const SELECT_EVENTS: &str = "SELECT id, route, at_ms, kind, from_version, to_version, phase, \
     share, triggered_by, reason FROM events WHERE route = ?1 ORDER BY id DESC LIMIT ?2";
const UPSERT_INDEX: &str = "INSERT INTO indexes (route, name, retained_until_ms, dropped_at_ms) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (route, name) DO UPDATE SET \
     retained_until_ms = excluded.retained_until_ms, dropped_at_ms = excluded.dropped_at_ms";
const SELECT_INDEXES: &str =
    "SELECT route, name, retained_until_ms, dropped_at_ms FROM indexes ORDER BY route, name";
const DELETE_SAMPLES: &str = "DELETE FROM samples WHERE route = ?1 AND kind = ?2";
const INSERT_SAMPLE: &str =
    "INSERT INTO samples (route, kind, position, doc) VALUES (?1, ?2, ?3, ?4)";
const SELECT_SAMPLES: &str =
    "SELECT doc FROM samples WHERE route = ?1 AND kind = ?2 ORDER BY position";

/// The SQLite implementation of [`Store`]: one connection, owned by the controller thread.
pub struct SqliteStore {
    /// Declared before `_lock`, so the connection is closed before the lock is released.
    conn: Connection,
    /// The database file, as given to `open`.
    path: PathBuf,
    /// Device and inode of the file that was opened, to notice it being removed or replaced.
    identity: Option<FileId>,
    /// The open lock file, holding the exclusive advisory lock that keeps other servers off
    /// this store; released when the store is dropped (or the process dies, even by SIGKILL).
    _lock: File,
}

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// `path` + `.lock`: the lock file beside the database.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

/// The identity of the file at `path`, or None where the platform has no inodes.
fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some((meta.dev(), meta.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Ok(None)
    }
}

/// Takes the store's exclusive lock, or says who has it.
fn lock(path: &Path) -> Result<File, StoreError> {
    let lock = lock_path(path);
    let io = |source| StoreError::Io {
        path: lock.clone(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock,
        }),
        Err(TryLockError::Error(source)) => Err(io(source)),
    }
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
        let lock = lock(path)?;
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        configure(&conn).map_err(open_error)?;
        migrate(&mut conn).map_err(open_error)?;
        let identity = file_id(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            identity,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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
    fn check(&self) -> Result<(), StoreError> {
        let Some(opened) = self.identity else {
            return Ok(());
        };
        let moved = |what| StoreError::Moved {
            path: self.path.clone(),
            what,
        };
        match file_id(&self.path) {
            Ok(now) if now == Some(opened) => Ok(()),
            Ok(_) => Err(moved("replaced by another file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(moved("removed")),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.check()?;
        // Rewriting the schema version with its own value changes nothing, yet is a durable
        // write: the header page goes through the WAL and its fsync like any commit.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        Ok(())
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let mut routes = Vec::new();
        let mut stmt = self.conn.prepare_cached(SELECT_ROUTES)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let route: String = row.get(0)?;
            let phase = name(&row.get::<_, String>(1)?, || format!("route {route}"))?;
            routes.push(RouteRecord {
                route,
                phase,
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
        let mut rollouts = Vec::new();
        let mut stmt = self.conn.prepare_cached(SELECT_ROLLOUTS)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            rollouts.push(RolloutRecord {
                route: row.get(0)?,
                candidate: row.get(1)?,
                step: row.get(2)?,
                step_since_ms: row.get(3)?,
                paused_at_ms: row.get(4)?,
                updated_at_ms: row.get(5)?,
            });
        }
        let mut indexes = Vec::new();
        let mut stmt = self.conn.prepare_cached(SELECT_INDEXES)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            indexes.push(IndexRecord {
                route: row.get(0)?,
                name: row.get(1)?,
                retained_until_ms: row.get(2)?,
                dropped_at_ms: row.get(3)?,
            });
        }
        Ok(Loaded {
            routes,
            releases,
            indexes,
            rollouts,
        })
    }

    fn commit(&mut self, t: &Transition) -> Result<(), StoreError> {
        self.check()?;
        // Dropping `tx` on any error below rolls the whole transition back.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_releases(&tx, &t.new_releases)?;
        {
            let mut stmt = tx.prepare_cached(SET_ROLLED_BACK)?;
            for (key, r) in &t.rolled_back {
                let changed = stmt.execute(params![
                    key.route,
                    key.version,
                    r.at_ms,
                    r.trigger.as_str(),
                    r.reason
                ])?;
                existing(changed as u64, key)?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(CLEAR_ROLLED_BACK)?;
            for key in &t.revived {
                existing(stmt.execute(params![key.route, key.version])? as u64, key)?;
            }
        }
        if let Some(r) = &t.route {
            tx.prepare_cached(UPSERT_ROUTE)?.execute(params![
                r.route,
                r.phase.as_str(),
                r.share,
                r.stable,
                r.candidate,
                r.updated_at_ms
            ])?;
        }
        if let Some(r) = &t.rollout {
            tx.prepare_cached(UPSERT_ROLLOUT)?.execute(params![
                r.route,
                r.candidate,
                r.step,
                r.step_since_ms,
                r.paused_at_ms,
                r.updated_at_ms
            ])?;
        }
        {
            let mut stmt = tx.prepare_cached(UPSERT_INDEX)?;
            for i in &t.indexes {
                stmt.execute(params![
                    i.route,
                    i.name,
                    i.retained_until_ms,
                    i.dropped_at_ms
                ])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(INSERT_EVENT)?;
            for e in &t.events {
                stmt.execute(params![
                    e.route,
                    e.at_ms,
                    e.kind.as_str(),
                    e.from_version,
                    e.to_version,
                    e.phase.map(Phase::as_str),
                    e.share,
                    e.trigger.map(Trigger::as_str),
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
        let mut rows = stmt.query(params![route, limit])?;
        let mut events = Vec::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let at = || format!("event {id}");
            let phase: Option<String> = row.get(6)?;
            let trigger: Option<String> = row.get(8)?;
            events.push(EventRecord {
                id,
                route: row.get(1)?,
                at_ms: row.get(2)?,
                kind: name(&row.get::<_, String>(3)?, at)?,
                from_version: row.get(4)?,
                to_version: row.get(5)?,
                phase: phase.map(|p| name(&p, at)).transpose()?,
                share: row.get(7)?,
                trigger: trigger.map(|t| name(&t, at)).transpose()?,
                reason: row.get(9)?,
            });
        }
        events.reverse();
        Ok(events)
    }

    fn replace_samples(
        &mut self,
        route: &str,
        list: SampleList,
        samples: &[String],
    ) -> Result<(), StoreError> {
        self.check()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(DELETE_SAMPLES)?
            .execute(params![route, list.as_str()])?;
        {
            let mut stmt = tx.prepare_cached(INSERT_SAMPLE)?;
            for (position, doc) in (0_i64..).zip(samples) {
                stmt.execute(params![route, list.as_str(), position, doc])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn samples(&self, route: &str, list: SampleList) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(SELECT_SAMPLES)?;
        let docs = stmt
            .query_map(params![route, list.as_str()], |row| row.get(0))?
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
            Some(rb) => (Some(rb.at_ms), Some(rb.trigger.as_str()), Some(&rb.reason)),
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
            r.prices.map(|p| p.prompt_per_mtok),
            r.prices.map(|p| p.completion_per_mtok),
            r.created_at_ms,
            rolled_back_at,
            trigger,
            reason,
            r.index
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

fn release_from_row(row: &Row<'_>) -> Result<ReleaseRecord, StoreError> {
    let route: String = row.get(0)?;
    let version: u32 = row.get(1)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("release {route}#{version}: {what}"));
    let params_json: String = row.get(6)?;
    let params = serde_json::from_str(&params_json)
        .map_err(|e| corrupt(&format!("params are not a JSON object: {e}")))?;
    let prices = match (row.get(7)?, row.get(8)?) {
        (Some(prompt_per_mtok), Some(completion_per_mtok)) => Some(Prices {
            prompt_per_mtok,
            completion_per_mtok,
        }),
        (None, None) => None,
        _ => return Err(corrupt("only one of the two prices is set")),
    };
    let rolled_back = match (
        row.get(10)?,
        row.get::<_, Option<String>>(11)?,
        row.get(12)?,
    ) {
        (Some(at_ms), Some(trigger), Some(reason)) => Some(RolledBack {
            at_ms,
            trigger: name(&trigger, || format!("release {route}#{version}"))?,
            reason,
        }),
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
        index: row.get(13)?,
        route,
        version,
    })
}

#[cfg(test)]
mod tests;
