use super::*;
use crate::control::store::ReleaseKey;
use crate::domain::{EventKind, Phase, Trigger};
use serde_json::{Map, Value};
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
        index: None,
    }
}

fn route_state(route: &str, stable: u32, candidate: Option<u32>) -> RouteRecord {
    RouteRecord {
        route: route.into(),
        phase: if candidate.is_some() {
            Phase::Shadow
        } else {
            Phase::Stable
        },
        share: 0.05,
        stable,
        candidate,
        updated_at_ms: 1_700_000_000_500,
    }
}

fn prices(prompt_per_mtok: f64, completion_per_mtok: f64) -> Prices {
    Prices {
        prompt_per_mtok,
        completion_per_mtok,
    }
}

fn rolled(at_ms: i64, trigger: &str, reason: &str) -> RolledBack {
    RolledBack {
        at_ms,
        trigger: trigger.parse().unwrap(),
        reason: reason.into(),
    }
}

fn key(route: &str, version: u32) -> ReleaseKey {
    ReleaseKey {
        route: route.into(),
        version,
    }
}

fn mark(
    route: &str,
    version: u32,
    at_ms: i64,
    trigger: &str,
    reason: &str,
) -> (ReleaseKey, RolledBack) {
    (key(route, version), rolled(at_ms, trigger, reason))
}

fn event(route: &str, kind: &str, to_version: Option<u32>) -> EventRecord {
    EventRecord {
        id: 0,
        route: route.into(),
        at_ms: 1_700_000_001_000,
        kind: kind.parse::<EventKind>().unwrap(),
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
    bot1.prices = Some(prices(2.5, 10.0));
    let mut bot2 = release("bot", 2);
    bot2.rolled_back = Some(rolled(1_700_000_002_000, "manual", "tried before"));
    let mut other1 = release("other", 1);
    other1.system_prompt = Some("Réponds en français 🙂".into());
    let mut published = event("bot", "published", Some(2));
    published.from_version = Some(1);
    published.phase = Some(Phase::Shadow);
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
        [
            "events",
            "indexes",
            "releases",
            "rollouts",
            "routes",
            "samples",
            "sqlite_sequence"
        ]
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
        ..Loaded::default()
    };
    assert_eq!(store.load().unwrap(), expected);

    // Second change: roll "other" back, revive bot#2, move bot to canary, add a route.
    let mut canary = route_state("bot", 1, Some(2));
    canary.phase = Phase::Canary;
    canary.share = 0.25;
    store
        .commit(&Transition {
            rolled_back: vec![mark("other", 1, 42, "quality", "q 0.61")],
            revived: vec![key("bot", 2)],
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
    expected.releases[2].rolled_back = Some(rolled(42, "quality", "q 0.61"));
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
                rolled_back: vec![mark("bot", 9, 1, "manual", "x")],
                ..Transition::default()
            },
            |e| matches!(e, StoreError::Corrupt(_)),
        ),
        (
            "revive a missing release",
            Transition {
                rolled_back: vec![mark("bot", 1, 1, "manual", "x")],
                revived: vec![key("nobody", 1)],
                ..Transition::default()
            },
            |e| matches!(e, StoreError::Corrupt(_)),
        ),
        (
            "route write fails after the other writes",
            Transition {
                new_releases: vec![release("bot", 3)],
                rolled_back: vec![mark("bot", 1, 1, "manual", "x")],
                revived: vec![key("bot", 2)],
                route: Some(nan_share),
                events: vec![event("bot", "published", Some(3))],
                indexes: Vec::new(),
                rollout: None,
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
    full.phase = Some(Phase::Stable);
    full.share = Some(0.0);
    full.trigger = Some(Trigger::Quality);
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
    let docs = |n: usize| -> Vec<String> { (0..n).map(|i| format!(r#"{{"i":{i}}}"#)).collect() };
    store
        .replace_samples("bot", SampleList::Worst, &docs(12))
        .unwrap();
    store
        .replace_samples("bot", SampleList::Random, &docs(2))
        .unwrap();
    store
        .replace_samples("other", SampleList::Worst, &docs(1))
        .unwrap();
    assert_eq!(store.samples("bot", SampleList::Worst).unwrap(), docs(12)); // order kept past 10
    store
        .replace_samples("bot", SampleList::Worst, &docs(3))
        .unwrap();
    assert_eq!(store.samples("bot", SampleList::Worst).unwrap(), docs(3));
    assert_eq!(store.samples("bot", SampleList::Random).unwrap(), docs(2));
    assert_eq!(store.samples("other", SampleList::Worst).unwrap(), docs(1));
    store
        .replace_samples("bot", SampleList::Worst, &[])
        .unwrap();
    assert_eq!(store.samples("bot", SampleList::Worst).unwrap(), docs(0));
    assert_eq!(store.samples("nobody", SampleList::Worst).unwrap(), docs(0));
}

#[test]
fn reopening_sees_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("understudy.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store.commit(&base()).unwrap();
    store
        .replace_samples("bot", SampleList::Worst, &[r#"{"score":0.1}"#.into()])
        .unwrap();
    let loaded = store.load().unwrap();
    let events = store.events("bot", 10).unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), loaded);
    assert_eq!(store.events("bot", 10).unwrap(), events);
    assert_eq!(
        store.samples("bot", SampleList::Worst).unwrap(),
        [r#"{"score":0.1}"#]
    );
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
        (
            "prices are metadata",
            |r| r.prices = Some(prices(1.0, 2.0)),
            true,
        ),
        (
            "rollback is state",
            |r| r.rolled_back = Some(rolled(1, "manual", "x")),
            true,
        ),
        (
            "version and time",
            |r| (r.version, r.created_at_ms) = (7, 0),
            true,
        ),
        (
            "key order",
            |r| r.params = object(r#"{"stop":{"a":2,"b":1},"max_tokens":100,"temperature":0.2}"#),
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
        let rolled_back = (version > 1).then(|| mark("r", version - 1, 1, "quality", "test"));
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

#[test]
fn one_writer_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("understudy.db");
    let first = SqliteStore::open(&path).unwrap();
    // A second opener (as a second server in this process; flock conflicts between open files
    // as between processes) is refused, naming the file.
    let err = SqliteStore::open(&path).err();
    let Some(StoreError::Locked { path: p, lock }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((p, lock), (&path, &dir.path().join("understudy.db.lock")));
    let message = err.as_ref().unwrap().to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("in use"),
        "{message}"
    );
    // Released with the store.
    drop(first);
    let mut again = SqliteStore::open(&path).unwrap();
    again.commit(&base()).unwrap();
}

#[test]
fn a_removed_or_replaced_file_is_noticed_before_any_write() {
    let (dir, mut store) = open_temp();
    let path = dir.path().join("understudy.db");
    store.check().unwrap();
    store.probe().unwrap();
    store.commit(&base()).unwrap();
    let moved = dir.path().join("moved.db");
    std::fs::rename(&path, &moved).unwrap();
    let said = |r: Result<(), StoreError>| match r {
        Err(StoreError::Moved { what, .. }) => what,
        other => panic!("{other:?}"),
    };
    assert_eq!(said(store.check()), "removed");
    assert_eq!(said(store.probe()), "removed");
    assert_eq!(
        said(store.replace_samples("bot", SampleList::Worst, &[])),
        "removed"
    );
    let mut later = base();
    later.new_releases.clear();
    later.route = Some(route_state("bot", 1, None));
    assert_eq!(said(store.commit(&later)), "removed");
    // Another file at the path is not ours either.
    std::fs::write(&path, b"").unwrap();
    assert_eq!(said(store.check()), "replaced by another file");
    // Our file back in place: writable again, and nothing was written meanwhile.
    std::fs::rename(&moved, &path).unwrap();
    store.check().unwrap();
    assert_eq!(
        store.load().unwrap().routes,
        base().route.into_iter().collect::<Vec<_>>()
    );
    store.commit(&later).unwrap();
}

#[test]
fn rollouts_round_trip_replace_and_name_existing_releases() {
    let (_dir, mut store) = open_temp();
    store.commit(&base()).unwrap();
    let mut r = RolloutRecord {
        route: "bot".into(),
        candidate: 2,
        step: 0,
        step_since_ms: 1_000,
        paused_at_ms: None,
        updated_at_ms: 1_000,
    };
    store
        .commit(&Transition {
            rollout: Some(r.clone()),
            ..Transition::default()
        })
        .unwrap();
    assert_eq!(store.load().unwrap().rollouts, vec![r.clone()]);
    // The next step, paused: the row is replaced, not added.
    r.step = 3;
    r.step_since_ms = 5_000;
    r.paused_at_ms = Some(6_000);
    r.updated_at_ms = 6_000;
    store
        .commit(&Transition {
            rollout: Some(r.clone()),
            ..Transition::default()
        })
        .unwrap();
    assert_eq!(store.load().unwrap().rollouts, vec![r.clone()]);
    // A rollout of a release the route never had is refused, and nothing of it is written.
    let missing = RolloutRecord {
        candidate: 9,
        ..r.clone()
    };
    let err = store
        .commit(&Transition {
            rollout: Some(missing),
            events: vec![event("bot", "rollout_step", Some(9))],
            ..Transition::default()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Sql(_)), "{err:?}");
    assert_eq!(store.load().unwrap().rollouts, vec![r]);
    assert_eq!(store.events("bot", 10).unwrap().len(), 1);
}

#[test]
fn a_version_1_file_gains_the_rollouts_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.commit().unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    store.commit(&base()).unwrap();
    let r = RolloutRecord {
        route: "bot".into(),
        candidate: 2,
        step: 1,
        step_since_ms: 7,
        paused_at_ms: None,
        updated_at_ms: 7,
    };
    store
        .commit(&Transition {
            rollout: Some(r.clone()),
            ..Transition::default()
        })
        .unwrap();
    assert_eq!(store.load().unwrap().rollouts, vec![r]);
}

#[test]
fn indexes_round_trip_and_a_version_1_file_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // A file as the first schema left it, with one release.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO releases (route, version, upstream, model, params, created_at_ms) \
             VALUES ('bot', 1, 'openai', 'm-1', '{}', 5)",
            [],
        )
        .unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.releases[0].index, None);
    assert!(loaded.indexes.is_empty());
    let mut embed = release("docs", 1);
    embed.index = Some("docs-small".into());
    let kept = IndexRecord {
        route: "docs".into(),
        name: "docs-small".into(),
        retained_until_ms: Some(42),
        dropped_at_ms: None,
    };
    let t = Transition {
        new_releases: vec![embed.clone()],
        route: Some(route_state("docs", 1, None)),
        indexes: vec![kept.clone()],
        ..Transition::default()
    };
    store.commit(&t).unwrap();
    // Upserted by (route, name).
    let dropped = IndexRecord {
        dropped_at_ms: Some(50),
        ..kept
    };
    store
        .commit(&Transition {
            indexes: vec![dropped.clone()],
            ..Transition::default()
        })
        .unwrap();
    // Read back from the file (reopening is `reopening_sees_everything_committed`'s business:
    // not done here, where the SIGKILL test's forks may hold the lock for an instant).
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded.releases.iter().find(|r| r.route == "docs"),
        Some(&embed)
    );
    assert_eq!(loaded.indexes, vec![dropped]);
}
