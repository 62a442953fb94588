//! The PostgreSQL backend of [`Store`]: the state a fleet of replicas shares. The controller
//! calls it synchronously from its own thread, as it does SQLite; each call runs on the store's
//! own small runtime (a deadpool-postgres pool of tokio-postgres connections) and is waited for
//! with a deadline, so an unreachable database is an error within `OP_TIMEOUT`, never a hang.
//!
//! - Schema: versioned in `schema_version`, migrated at open inside one transaction that holds
//!   a transaction-level advisory lock, so replicas starting together migrate once.
//! - One release state: every commit is one transaction that raises `fleet_state.version` and
//!   `NOTIFY understudy_state`; a route's row carries a revision, and a commit only updates the
//!   row at the revision this replica last read (else [`StoreError::Stale`]), so two replicas
//!   never both apply a change computed from the same state (a rollback made on two replicas at
//!   once lands once). A route's rollout row is part of its state: a change of the rollout
//!   alone (pause, resume) raises the route's revision too.
//! - A background session (`session.rs`) listens for the notifications (polling as well), holds
//!   the judge's advisory lock when it can and writes this replica's heartbeat.
//! - Review samples are kept per replica; the judge's samples are one stream for the fleet.

use std::collections::HashMap;
use std::future::Future;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    existing, name, EventRecord, Fleet, FleetSignal, IndexRecord, JudgeInput, JudgeSample, Loaded,
    ReleaseRecord, ReplicaRecord, RolledBack, RolloutRecord, RouteRecord, SampleList, Store,
    StoreError, Transition,
};
use crate::config::{parse_postgres_url, SslMode};
use crate::domain::{Phase, Prices, Trigger};

mod session;
mod tls;

/// Longest wait for one store operation before it is reported failed.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to the database gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The transaction-level advisory lock around migrations ("usmigr").
const MIGRATE_LOCK: i64 = 0x7573_6d69_6772;
/// The notification channel every commit announces the new version on.
const CHANNEL: &str = "understudy_state";

/// The schema, as steps: step `i` takes `schema_version` from `i` to `i + 1`. Append, never
/// edit.
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
    price_prompt        DOUBLE PRECISION,
    price_completion    DOUBLE PRECISION,
    created_at_ms       BIGINT  NOT NULL,
    rolled_back_at_ms   BIGINT,
    rolled_back_trigger TEXT,
    rolled_back_reason  TEXT,
    PRIMARY KEY (route, version),
    CHECK ((price_prompt IS NULL) = (price_completion IS NULL)),
    CHECK ((rolled_back_at_ms IS NULL) = (rolled_back_trigger IS NULL)
       AND (rolled_back_at_ms IS NULL) = (rolled_back_reason IS NULL))
);
CREATE TABLE routes (
    route         TEXT    NOT NULL PRIMARY KEY,
    phase         TEXT    NOT NULL,
    share         DOUBLE PRECISION NOT NULL,
    stable        INTEGER NOT NULL,
    candidate     INTEGER,
    updated_at_ms BIGINT  NOT NULL,
    revision      BIGINT  NOT NULL,
    FOREIGN KEY (route, stable) REFERENCES releases (route, version),
    FOREIGN KEY (route, candidate) REFERENCES releases (route, version)
);
CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    route        TEXT    NOT NULL,
    at_ms        BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    from_version INTEGER,
    to_version   INTEGER,
    phase        TEXT,
    share        DOUBLE PRECISION,
    triggered_by TEXT,
    reason       TEXT
);
CREATE INDEX events_route_id ON events (route, id);
CREATE TABLE samples (
    replica  TEXT    NOT NULL,
    route    TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    position INTEGER NOT NULL,
    doc      TEXT    NOT NULL,
    PRIMARY KEY (replica, route, kind, position)
);
CREATE TABLE fleet_state (
    one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version BIGINT  NOT NULL
);
INSERT INTO fleet_state (one, version) VALUES (TRUE, 0);
CREATE TABLE judge_samples (
    id                BIGSERIAL PRIMARY KEY,
    route             TEXT    NOT NULL,
    input             TEXT    NOT NULL,
    candidate_version INTEGER NOT NULL,
    combined          DOUBLE PRECISION NOT NULL,
    errored           BOOLEAN NOT NULL,
    scorers           TEXT    NOT NULL,
    replica           TEXT    NOT NULL,
    at_ms             BIGINT  NOT NULL
);
CREATE INDEX judge_samples_lists ON judge_samples (route, input, candidate_version, id);
CREATE TABLE replicas (
    id            TEXT    NOT NULL PRIMARY KEY,
    address       TEXT    NOT NULL,
    started_at_ms BIGINT  NOT NULL,
    last_seen_ms  BIGINT  NOT NULL,
    state_version BIGINT  NOT NULL,
    leader        BOOLEAN NOT NULL,
    backend_pid   INTEGER NOT NULL
);
",
    "
CREATE TABLE rollouts (
    route         TEXT    NOT NULL PRIMARY KEY,
    candidate     INTEGER NOT NULL,
    step          INTEGER NOT NULL CHECK (step >= 0),
    step_since_ms BIGINT  NOT NULL,
    paused_at_ms  BIGINT,
    updated_at_ms BIGINT  NOT NULL,
    FOREIGN KEY (route, candidate) REFERENCES releases (route, version)
);
",
    // Embedding routes: each release's vector index, and the indexes that stopped serving
    // (their retention, and whether an operator dropped them).
    "
ALTER TABLE releases ADD COLUMN index_name TEXT;
CREATE TABLE indexes (
    route             TEXT   NOT NULL,
    name              TEXT   NOT NULL,
    retained_until_ms BIGINT,
    dropped_at_ms     BIGINT,
    PRIMARY KEY (route, name)
);
",
];

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Who this replica is, for the heartbeat and its own review samples.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Unique in the fleet (by default `HOSTNAME:ADMIN_PORT`).
    pub id: String,
    /// Its admin listener.
    pub address: String,
}

/// What the background session and the store share.
struct Shared {
    signal: watch::Sender<FleetSignal>,
    /// The state version this replica serves, for its heartbeat.
    serving: std::sync::atomic::AtomicI64,
}

/// The PostgreSQL implementation of [`Store`] and [`Fleet`].
pub struct PgStore {
    pool: Pool,
    /// The store's own runtime: the pool's connections and the session are polled on it, so
    /// the controller's thread can wait for an answer without blocking its own runtime.
    runtime: Option<tokio::runtime::Runtime>,
    /// Every operation and the session, so a drop stops them all.
    tasks: TaskTracker,
    /// Stops the session (it releases the judge's lock and takes the heartbeat row away).
    stop: CancellationToken,
    shared: Arc<Shared>,
    replica: Replica,
    /// Each route's revision as this replica last read or wrote it: a commit only applies to
    /// the row still at that revision.
    revisions: HashMap<String, i64>,
    /// The state version of the last load, or of this replica's commit right on top of it.
    version: i64,
    /// host/database, for messages (never the password).
    target: String,
}

/// An error with its causes ("error performing TLS handshake: invalid peer certificate: ...").
/// None of them carries the password: tokio-postgres never puts its config in a message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

fn pg(e: impl std::error::Error) -> StoreError {
    StoreError::Postgres(chain(&e))
}

/// tokio-postgres errors with the server's own message, when there is one.
fn db(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Postgres(format!("{}: {}", d.code().code(), d.message())),
        None => StoreError::Postgres(chain(&e)),
    }
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn uint(v: i32, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what}: negative version {v}")))
}

impl PgStore {
    /// Connects (the password from `password`), migrates the schema and starts the session.
    pub fn open(
        url: &str,
        password: Option<String>,
        replica: Replica,
    ) -> Result<PgStore, StoreError> {
        let parsed =
            parse_postgres_url(url).map_err(|e| StoreError::Postgres(format!("store.url {e}")))?;
        let mut config = parsed.config.clone();
        if let Some(p) = password {
            config.password(p);
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        config.ssl_mode(match parsed.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let target = format!(
            "{}/{}",
            config
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default(),
            config.get_dbname().unwrap_or_default()
        );
        let tls = tls::connector(&parsed).map_err(StoreError::Postgres)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("understudy-pg")
            .enable_all()
            .build()
            .map_err(pg)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(pg)?;
        let (signal, _) = watch::channel(FleetSignal::default());
        let store = PgStore {
            pool,
            runtime: Some(runtime),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            shared: Arc::new(Shared {
                signal,
                serving: std::sync::atomic::AtomicI64::new(0),
            }),
            replica,
            revisions: HashMap::new(),
            version: 0,
            target,
        };
        store.block(|pool| async move {
            let mut client = pool.get().await.map_err(pg)?;
            migrate(&mut client).await
        })?;
        let session = session::Session {
            config,
            tls,
            replica: store.replica.clone(),
            stop: store.stop.clone(),
        };
        let shared = Arc::clone(&store.shared);
        if let Some(rt) = &store.runtime {
            store.tasks.spawn_on(
                session.run(
                    move |s| {
                        shared.signal.send_if_modified(|now| {
                            let changed = *now != s;
                            *now = s;
                            changed
                        });
                    },
                    {
                        let shared = Arc::clone(&store.shared);
                        move || shared.serving.load(std::sync::atomic::Ordering::Relaxed)
                    },
                ),
                rt.handle(),
            );
        }
        Ok(store)
    }

    /// Runs `op` on the store's runtime and waits for its answer, at most `OP_TIMEOUT`.
    fn block<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(rt) = &self.runtime else {
            return Err(StoreError::Postgres("store closed".into()));
        };
        let (tx, rx) = sync_channel(1);
        let fut = op(self.pool.clone());
        self.tasks.spawn_on(
            async move {
                let _ = tx.send(tokio::time::timeout(OP_TIMEOUT, fut).await);
            },
            rt.handle(),
        );
        match rx.recv_timeout(OP_TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err(StoreError::Postgres(format!(
                "{}: no answer within {} s",
                self.target,
                OP_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
        // The session gives the judge's lock back and removes the heartbeat row; wait for it a
        // little, then leave the runtime (dropping it here could block an async caller).
        let (tx, rx) = sync_channel::<()>(1);
        let tasks = self.tasks.clone();
        if let Some(rt) = &self.runtime {
            rt.handle().spawn(async move {
                tasks.wait().await;
                let _ = tx.send(());
            });
        }
        let _ = rx.recv_timeout(Duration::from_secs(2));
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Brings the schema to the newest version, under a lock so concurrent starts migrate once.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(db)?;
    // Under the lock, so asking first is safe (and spares the server's "already exists" notice).
    let known: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(db)?
        .get(0);
    if !known {
        tx.batch_execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .await
            .map_err(db)?;
    }
    let current: Option<i32> = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(db)?
        .map(|r| r.get(0));
    let done = current.unwrap_or(0);
    let Some(done) = usize::try_from(done)
        .ok()
        .filter(|d| *d <= MIGRATIONS.len())
    else {
        return Err(StoreError::Postgres(format!(
            "schema version {done} is not one this build knows (0 to {})",
            MIGRATIONS.len()
        )));
    };
    for sql in MIGRATIONS.iter().skip(done) {
        tx.batch_execute(sql).await.map_err(db)?;
    }
    let newest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current.is_none() {
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&newest],
        )
        .await
        .map_err(db)?;
    } else {
        tx.execute("UPDATE schema_version SET version = $1", &[&newest])
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

const SELECT_RELEASES: &str = "SELECT route, version, label, upstream, model, system_prompt, \
     params, price_prompt, price_completion, created_at_ms, rolled_back_at_ms, \
     rolled_back_trigger, rolled_back_reason, index_name FROM releases ORDER BY route, version";
const SELECT_INDEXES: &str =
    "SELECT route, name, retained_until_ms, dropped_at_ms FROM indexes ORDER BY route, name";
const SELECT_ROUTES: &str = "SELECT route, phase, share, stable, candidate, updated_at_ms, \
     revision FROM routes ORDER BY route";
const SELECT_ROLLOUTS: &str = "SELECT route, candidate, step, step_since_ms, paused_at_ms, \
     updated_at_ms FROM rollouts ORDER BY route";

/// What one load read: the state, each route's revision and the state version.
struct Read {
    loaded: Loaded,
    revisions: HashMap<String, i64>,
    version: i64,
}

async fn read_all(pool: Pool) -> Result<Read, StoreError> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let version: i64 = tx
        .query_one("SELECT version FROM fleet_state", &[])
        .await
        .map_err(db)?
        .get(0);
    let mut routes = Vec::new();
    let mut revisions = HashMap::new();
    for row in tx.query(SELECT_ROUTES, &[]).await.map_err(db)? {
        let route: String = row.get(0);
        let phase = name(row.get(1), || format!("route {route}"))?;
        revisions.insert(route.clone(), row.get::<_, i64>(6));
        routes.push(RouteRecord {
            phase,
            share: row.get(2),
            stable: uint(row.get(3), &route)?,
            candidate: row
                .get::<_, Option<i32>>(4)
                .map(|c| uint(c, &route))
                .transpose()?,
            updated_at_ms: row.get(5),
            route,
        });
    }
    let mut releases = Vec::new();
    for row in tx.query(SELECT_RELEASES, &[]).await.map_err(db)? {
        releases.push(release_from_row(&row)?);
    }
    let mut rollouts = Vec::new();
    for row in tx.query(SELECT_ROLLOUTS, &[]).await.map_err(db)? {
        let route: String = row.get(0);
        let step: i32 = row.get(2);
        rollouts.push(RolloutRecord {
            candidate: uint(row.get(1), &route)?,
            step: u32::try_from(step).map_err(|_| {
                StoreError::Corrupt(format!("rollout of {route}: negative step {step}"))
            })?,
            step_since_ms: row.get(3),
            paused_at_ms: row.get(4),
            updated_at_ms: row.get(5),
            route,
        });
    }
    let mut indexes = Vec::new();
    for row in tx.query(SELECT_INDEXES, &[]).await.map_err(db)? {
        indexes.push(IndexRecord {
            route: row.get(0),
            name: row.get(1),
            retained_until_ms: row.get(2),
            dropped_at_ms: row.get(3),
        });
    }
    tx.commit().await.map_err(db)?;
    Ok(Read {
        loaded: Loaded {
            routes,
            releases,
            indexes,
            rollouts,
        },
        revisions,
        version,
    })
}

/// Writes `t` in one transaction, only on top of the route revision `expected` (None: the route
/// must be new). Returns the route's new revision and the new state version.
async fn write(
    pool: Pool,
    t: Transition,
    expected: Option<i64>,
) -> Result<(Option<i64>, i64), StoreError> {
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(db)?;
    let stale = |route: &str| StoreError::Stale(route.to_string());
    for r in &t.new_releases {
        let params = serde_json::to_string(&r.params).map_err(|e| {
            StoreError::Corrupt(format!("release {}#{}: params: {e}", r.route, r.version))
        })?;
        let (at, trigger, reason) = match &r.rolled_back {
            Some(rb) => (
                Some(rb.at_ms),
                Some(rb.trigger.as_str()),
                Some(rb.reason.as_str()),
            ),
            None => (None, None, None),
        };
        let inserted = tx
            .execute(
                "INSERT INTO releases (route, version, label, upstream, model, system_prompt, \
                 params, price_prompt, price_completion, created_at_ms, rolled_back_at_ms, \
                 rolled_back_trigger, rolled_back_reason, index_name) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (route, version) DO NOTHING",
                &[
                    &r.route,
                    &int(r.version),
                    &r.label,
                    &r.upstream,
                    &r.model,
                    &r.system_prompt,
                    &params,
                    &r.prices.map(|p| p.prompt_per_mtok),
                    &r.prices.map(|p| p.completion_per_mtok),
                    &r.created_at_ms,
                    &at,
                    &trigger,
                    &reason,
                    &r.index,
                ],
            )
            .await
            .map_err(db)?;
        if inserted == 0 {
            // Another replica published it first: this change was computed from an old state.
            return Err(stale(&r.route));
        }
    }
    for (key, rb) in &t.rolled_back {
        let changed = tx
            .execute(
                "UPDATE releases SET rolled_back_at_ms = $3, rolled_back_trigger = $4, \
                 rolled_back_reason = $5 WHERE route = $1 AND version = $2",
                &[
                    &key.route,
                    &int(key.version),
                    &rb.at_ms,
                    &rb.trigger.as_str(),
                    &rb.reason,
                ],
            )
            .await
            .map_err(db)?;
        existing(changed, key)?;
    }
    for key in &t.revived {
        let changed = tx
            .execute(
                "UPDATE releases SET rolled_back_at_ms = NULL, rolled_back_trigger = NULL, \
                 rolled_back_reason = NULL WHERE route = $1 AND version = $2",
                &[&key.route, &int(key.version)],
            )
            .await
            .map_err(db)?;
        existing(changed, key)?;
    }
    let mut revision = None;
    if let Some(r) = &t.route {
        let candidate = r.candidate.map(int);
        let row = match expected {
            Some(rev) => tx
                .query_opt(
                    "UPDATE routes SET phase = $2, share = $3, stable = $4, candidate = $5, \
                     updated_at_ms = $6, revision = revision + 1 \
                     WHERE route = $1 AND revision = $7 RETURNING revision",
                    &[
                        &r.route,
                        &r.phase.as_str(),
                        &r.share,
                        &int(r.stable),
                        &candidate,
                        &r.updated_at_ms,
                        &rev,
                    ],
                )
                .await
                .map_err(db)?,
            None => tx
                .query_opt(
                    "INSERT INTO routes (route, phase, share, stable, candidate, \
                     updated_at_ms, revision) VALUES ($1, $2, $3, $4, $5, $6, 1) \
                     ON CONFLICT (route) DO NOTHING RETURNING revision",
                    &[
                        &r.route,
                        &r.phase.as_str(),
                        &r.share,
                        &int(r.stable),
                        &candidate,
                        &r.updated_at_ms,
                    ],
                )
                .await
                .map_err(db)?,
        };
        let Some(row) = row else {
            return Err(stale(&r.route));
        };
        revision = Some(row.get::<_, i64>(0));
    }
    if let Some(r) = &t.rollout {
        if t.route.is_none() {
            // A rollout change alone (pause, resume) is still a change of the route's state:
            // it too applies only on top of the revision this replica read, and raises it.
            let row = tx
                .query_opt(
                    "UPDATE routes SET revision = revision + 1 \
                     WHERE route = $1 AND revision = $2 RETURNING revision",
                    &[&r.route, &expected.unwrap_or(-1)],
                )
                .await
                .map_err(db)?;
            let Some(row) = row else {
                return Err(stale(&r.route));
            };
            revision = Some(row.get::<_, i64>(0));
        }
        tx.execute(
            "INSERT INTO rollouts (route, candidate, step, step_since_ms, paused_at_ms, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (route) DO UPDATE SET candidate = excluded.candidate, \
             step = excluded.step, step_since_ms = excluded.step_since_ms, \
             paused_at_ms = excluded.paused_at_ms, updated_at_ms = excluded.updated_at_ms",
            &[
                &r.route,
                &int(r.candidate),
                &i32::try_from(r.step).unwrap_or(i32::MAX),
                &r.step_since_ms,
                &r.paused_at_ms,
                &r.updated_at_ms,
            ],
        )
        .await
        .map_err(db)?;
    }
    for i in &t.indexes {
        tx.execute(
            "INSERT INTO indexes (route, name, retained_until_ms, dropped_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (route, name) DO UPDATE SET \
             retained_until_ms = excluded.retained_until_ms, \
             dropped_at_ms = excluded.dropped_at_ms",
            &[&i.route, &i.name, &i.retained_until_ms, &i.dropped_at_ms],
        )
        .await
        .map_err(db)?;
    }
    for e in &t.events {
        tx.execute(
            "INSERT INTO events (route, at_ms, kind, from_version, to_version, phase, share, \
             triggered_by, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &e.route,
                &e.at_ms,
                &e.kind.as_str(),
                &e.from_version.map(int),
                &e.to_version.map(int),
                &e.phase.map(Phase::as_str),
                &e.share,
                &e.trigger.map(Trigger::as_str),
                &e.reason,
            ],
        )
        .await
        .map_err(db)?;
    }
    let version: i64 = tx
        .query_one(
            "UPDATE fleet_state SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &version.to_string()],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok((revision, version))
}

impl Store for PgStore {
    fn check(&self) -> Result<(), StoreError> {
        self.block(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client.simple_query("SELECT 1").await.map_err(db)?;
            Ok(())
        })
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        // A write that changes nothing: the same durable path as a commit.
        self.block(|pool| async move {
            let client = pool.get().await.map_err(pg)?;
            client
                .execute("UPDATE fleet_state SET version = version", &[])
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        // `load` takes `&self`: the revisions it read are kept by `reload` (the fleet path);
        // the controller calls that one whenever it replaces its state.
        Ok(self.block(read_all)?.loaded)
    }

    fn commit(&mut self, t: &Transition) -> Result<(), StoreError> {
        let route = t
            .route
            .as_ref()
            .map(|r| r.route.clone())
            .or_else(|| t.rollout.as_ref().map(|r| r.route.clone()));
        let expected = route.as_ref().and_then(|r| self.revisions.get(r).copied());
        let owned = t.clone();
        let (revision, version) = self.block(move |pool| write(pool, owned, expected))?;
        if let (Some(route), Some(rev)) = (route, revision) {
            self.revisions.insert(route, rev);
        }
        if version == self.version + 1 {
            self.version = version;
        }
        Ok(())
    }

    fn events(&self, route: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let route = route.to_string();
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT id, route, at_ms, kind, from_version, to_version, phase, share, \
                     triggered_by, reason FROM events WHERE route = $1 ORDER BY id DESC LIMIT $2",
                    &[&route, &limit],
                )
                .await
                .map_err(db)?;
            let mut events = rows
                .iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            events.reverse();
            Ok(events)
        })
    }

    fn replace_samples(
        &mut self,
        route: &str,
        list: SampleList,
        samples: &[String],
    ) -> Result<(), StoreError> {
        let (replica, route, samples) =
            (self.replica.id.clone(), route.to_string(), samples.to_vec());
        self.block(move |pool| async move {
            let mut client = pool.get().await.map_err(pg)?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute(
                "DELETE FROM samples WHERE replica = $1 AND route = $2 AND kind = $3",
                &[&replica, &route, &list.as_str()],
            )
            .await
            .map_err(db)?;
            if !samples.is_empty() {
                let positions: Vec<i32> = (0..).take(samples.len()).collect();
                tx.execute(
                    "INSERT INTO samples (replica, route, kind, position, doc) \
                     SELECT $1, $2, $3, p, d FROM unnest($4::int[], $5::text[]) AS s(p, d)",
                    &[&replica, &route, &list.as_str(), &positions, &samples],
                )
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
    }

    fn samples(&self, route: &str, list: SampleList) -> Result<Vec<String>, StoreError> {
        let (replica, route) = (self.replica.id.clone(), route.to_string());
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT doc FROM samples WHERE replica = $1 AND route = $2 AND kind = $3 \
                     ORDER BY position",
                    &[&replica, &route, &list.as_str()],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn fleet(&mut self) -> Option<&mut dyn Fleet> {
        Some(self)
    }
}

impl PgStore {
    /// `load`, keeping the revisions and the version it read: the state the next commits are
    /// conditional on.
    pub fn reload(&mut self) -> Result<Loaded, StoreError> {
        let read = self.block(read_all)?;
        self.revisions = read.revisions;
        self.version = read.version;
        Ok(read.loaded)
    }
}

impl Fleet for PgStore {
    fn replica(&self) -> &str {
        &self.replica.id
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn signal(&self) -> watch::Receiver<FleetSignal> {
        self.shared.signal.subscribe()
    }

    fn serving(&self, version: i64) {
        self.shared
            .serving
            .store(version, std::sync::atomic::Ordering::Relaxed);
    }

    fn reload(&mut self) -> Result<Loaded, StoreError> {
        PgStore::reload(self)
    }

    fn write_judge_samples(&mut self, samples: &[JudgeSample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let replica = self.replica.id.clone();
        let samples = samples.to_vec();
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let mut routes = Vec::new();
            let mut inputs = Vec::new();
            let mut versions = Vec::new();
            let mut combined = Vec::new();
            let mut errored = Vec::new();
            let mut scorers = Vec::new();
            for s in &samples {
                routes.push(s.route.clone());
                inputs.push(s.input.as_str());
                versions.push(int(s.candidate_version));
                combined.push(s.combined);
                errored.push(s.errored);
                let map: serde_json::Map<String, serde_json::Value> = s
                    .scorers
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
                    .collect();
                scorers.push(serde_json::Value::Object(map).to_string());
            }
            client
                .execute(
                    &format!(
                        "INSERT INTO judge_samples (route, input, candidate_version, combined, \
                         errored, scorers, replica, at_ms) \
                         SELECT r, i, v, c, e, s, $7, {NOW_MS} FROM unnest($1::text[], \
                         $2::text[], $3::int[], $4::float8[], $5::bool[], $6::text[]) \
                         WITH ORDINALITY AS t(r, i, v, c, e, s, n) ORDER BY n"
                    ),
                    &[
                        &routes, &inputs, &versions, &combined, &errored, &scorers, &replica,
                    ],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn judge_samples_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JudgeSample>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT id, route, input, candidate_version, combined, errored, scorers \
                     FROM judge_samples WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &limit],
                )
                .await
                .map_err(db)?;
            rows.iter().map(judge_sample_from_row).collect()
        })
    }

    fn judge_history(&mut self, per_list: usize) -> Result<Vec<JudgeSample>, StoreError> {
        let per_list = i64::try_from(per_list).unwrap_or(i64::MAX);
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    "SELECT id, route, input, candidate_version, combined, errored, scorers \
                     FROM (SELECT *, row_number() OVER (PARTITION BY route, input, \
                     CASE WHEN input = 'noise' THEN 0 ELSE candidate_version END \
                     ORDER BY id DESC) AS n FROM judge_samples) AS newest \
                     WHERE n <= $1 ORDER BY id",
                    &[&per_list],
                )
                .await
                .map_err(db)?;
            rows.iter().map(judge_sample_from_row).collect()
        })
    }

    fn prune(&mut self, keep_per_list: usize) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep_per_list).unwrap_or(i64::MAX);
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let deleted = client
                .execute(
                    "DELETE FROM judge_samples WHERE id IN (SELECT id FROM (SELECT id, \
                     row_number() OVER (PARTITION BY route, input, \
                     CASE WHEN input = 'noise' THEN 0 ELSE candidate_version END \
                     ORDER BY id DESC) AS n FROM judge_samples) AS old WHERE n > $1)",
                    &[&keep],
                )
                .await
                .map_err(db)?;
            client
                .execute(
                    &format!("DELETE FROM replicas WHERE last_seen_ms < {NOW_MS} - 86400000"),
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(deleted)
        })
    }

    fn replicas(&mut self) -> Result<Vec<ReplicaRecord>, StoreError> {
        // Alive and leading as the database knows it now: the replica's session is still open,
        // and holds the judge's lock (a killed replica's row stays until it is seen again).
        let (class, object) = session::leader_lock_ids();
        self.block(move |pool| async move {
            let client = pool.get().await.map_err(pg)?;
            let rows = client
                .query(
                    &format!(
                        "SELECT r.id, r.address, r.started_at_ms, r.last_seen_ms, \
                         r.state_version, EXISTS (SELECT 1 FROM pg_locks l \
                         WHERE l.locktype = 'advisory' AND l.granted AND l.pid = r.backend_pid \
                         AND l.classid::bigint = $1 AND l.objid::bigint = $2), {NOW_MS}, \
                         EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.backend_pid) \
                         FROM replicas r ORDER BY r.id"
                    ),
                    &[&class, &object],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| ReplicaRecord {
                    id: r.get(0),
                    address: r.get(1),
                    started_at_ms: r.get(2),
                    last_seen_ms: r.get(3),
                    state_version: r.get(4),
                    leader: r.get(5),
                    now_ms: r.get(6),
                    connected: r.get(7),
                })
                .collect())
        })
    }
}

fn judge_sample_from_row(row: &Row) -> Result<JudgeSample, StoreError> {
    let id: i64 = row.get(0);
    let input = match row.get::<_, &str>(2) {
        "candidate" => JudgeInput::Candidate,
        "noise" => JudgeInput::Noise,
        other => {
            return Err(StoreError::Corrupt(format!(
                "judge sample {id}: unknown input {other:?}"
            )))
        }
    };
    let scorers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(row.get(6))
        .map_err(|e| StoreError::Corrupt(format!("judge sample {id}: scorers: {e}")))?;
    Ok(JudgeSample {
        id,
        route: row.get(1),
        input,
        candidate_version: uint(row.get(3), "judge sample")?,
        combined: row.get(4),
        errored: row.get(5),
        scorers: scorers
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
            .collect(),
    })
}

fn event_from_row(row: &Row) -> Result<EventRecord, StoreError> {
    let id: i64 = row.get(0);
    let at = || format!("event {id}");
    let phase: Option<&str> = row.get(6);
    let trigger: Option<&str> = row.get(8);
    Ok(EventRecord {
        id,
        route: row.get(1),
        at_ms: row.get(2),
        kind: name(row.get(3), at)?,
        from_version: row
            .get::<_, Option<i32>>(4)
            .map(|v| uint(v, "event"))
            .transpose()?,
        to_version: row
            .get::<_, Option<i32>>(5)
            .map(|v| uint(v, "event"))
            .transpose()?,
        phase: phase.map(|p| name(p, at)).transpose()?,
        share: row.get(7),
        trigger: trigger.map(|t| name(t, at)).transpose()?,
        reason: row.get(9),
    })
}

fn release_from_row(row: &Row) -> Result<ReleaseRecord, StoreError> {
    let route: String = row.get(0);
    let version = uint(row.get(1), &route)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("release {route}#{version}: {what}"));
    let params = serde_json::from_str(row.get(6))
        .map_err(|e| corrupt(&format!("params are not a JSON object: {e}")))?;
    let prices = match (row.get(7), row.get(8)) {
        (Some(prompt_per_mtok), Some(completion_per_mtok)) => Some(Prices {
            prompt_per_mtok,
            completion_per_mtok,
        }),
        (None, None) => None,
        _ => return Err(corrupt("only one of the two prices is set")),
    };
    let rolled_back = match (
        row.get::<_, Option<i64>>(10),
        row.get::<_, Option<&str>>(11),
        row.get::<_, Option<String>>(12),
    ) {
        (Some(at_ms), Some(trigger), Some(reason)) => Some(RolledBack {
            at_ms,
            trigger: name(trigger, || format!("release {route}#{version}"))?,
            reason,
        }),
        (None, None, None) => None,
        _ => return Err(corrupt("rollback columns are partly set")),
    };
    Ok(ReleaseRecord {
        label: row.get(2),
        upstream: row.get(3),
        model: row.get(4),
        system_prompt: row.get(5),
        params,
        prices,
        created_at_ms: row.get(9),
        rolled_back,
        index: row.get(13),
        route,
        version,
    })
}
