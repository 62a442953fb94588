//! The PostgreSQL store on its own, against a throwaway cluster (`support/pg.rs`): replicas
//! opening it at once migrate it once; a change computed from an older state is refused
//! (`Stale`), so two replicas never both apply one; a commit is announced to the others within
//! a second; exactly one replica holds the judge's lock and another takes it when it goes; the
//! judge's stream is read back per list and pruned to what the windows need.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::{Duration, Instant};

use support::pg::{Cluster, PASSWORD};
use understudy::store::{
    EventKind, EventRecord, Fleet, JudgeInput, JudgeSample, PgStore, Phase, ReleaseRecord, Replica,
    RouteRecord, Store, StoreError, Transition,
};

fn open(url: &str, id: &str) -> PgStore {
    PgStore::open(
        url,
        Some(PASSWORD.to_string()),
        Replica {
            id: id.into(),
            address: format!("127.0.0.1:{id}"),
        },
    )
    .unwrap()
}

fn route(stable: u32, candidate: Option<u32>, share: f64, at: i64) -> RouteRecord {
    RouteRecord {
        route: "bot".into(),
        phase: if candidate.is_some() {
            Phase::Shadow
        } else {
            Phase::Stable
        },
        share,
        stable,
        candidate,
        updated_at_ms: at,
    }
}

fn release(version: u32) -> ReleaseRecord {
    ReleaseRecord {
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
    }
}

fn event(kind: EventKind, at: i64) -> EventRecord {
    EventRecord {
        id: 0,
        route: "bot".into(),
        at_ms: at,
        kind,
        from_version: None,
        to_version: None,
        phase: None,
        share: None,
        trigger: None,
        reason: None,
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn replicas_share_one_state_and_one_judge() {
    let cluster = Cluster::start();
    let url = cluster.database("store");
    // Opened at once: the migrations run once, under their lock.
    let opens: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|id| {
            let url = url.clone();
            std::thread::spawn(move || open(&url, id))
        })
        .collect();
    let mut stores: Vec<PgStore> = opens.into_iter().map(|t| t.join().unwrap()).collect();
    let (a, rest) = stores.split_first_mut().unwrap();
    let b = &mut rest[0];
    a.reload().unwrap();
    b.reload().unwrap();

    // A creates the route; B, which read the store before, may not create it again.
    let created = Transition {
        new_releases: vec![release(1), release(2)],
        route: Some(route(1, Some(2), 0.1, 10)),
        events: vec![event(EventKind::Configured, 10)],
        ..Transition::default()
    };
    let signal = b.signal();
    let before = signal.borrow().db_version;
    let committed = Instant::now();
    a.commit(&created).unwrap();
    wait_for("B hears of A's commit", || {
        signal.borrow().db_version > before
    });
    assert!(committed.elapsed() < Duration::from_secs(1));
    assert!(matches!(b.commit(&created), Err(StoreError::Stale(_))));

    // Both read it; A changes the share; B's change, computed from the older state, is refused
    // until B reads again.
    assert_eq!(b.reload().unwrap().routes, vec![route(1, Some(2), 0.1, 10)]);
    let share = |s: f64, at: i64| Transition {
        route: Some(route(1, Some(2), s, at)),
        events: vec![event(EventKind::Promoted, at)],
        ..Transition::default()
    };
    a.commit(&share(0.3, 20)).unwrap();
    assert!(matches!(
        b.commit(&share(0.5, 21)),
        Err(StoreError::Stale(_))
    ));
    b.reload().unwrap();
    b.commit(&share(0.5, 22)).unwrap();
    assert_eq!(a.reload().unwrap().routes, vec![route(1, Some(2), 0.5, 22)]);
    assert_eq!(a.events("bot", 10).unwrap().len(), 3);

    // One leader; when its store goes, another takes the lock.
    let leaders = |stores: &[PgStore]| stores.iter().filter(|s| s.signal().borrow().leader).count();
    wait_for("one leader", || leaders(&stores) == 1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(leaders(&stores), 1, "never two leaders");
    let k = stores
        .iter()
        .position(|s| s.signal().borrow().leader)
        .unwrap();
    let replicas = stores[0].replicas().unwrap();
    assert_eq!(replicas.len(), 3);
    assert_eq!(replicas.iter().filter(|r| r.leader).count(), 1);
    drop(stores.remove(k));
    wait_for("a new leader", || leaders(&stores) == 1);
    assert_eq!(
        stores[0].replicas().unwrap().len(),
        2,
        "the stopped one left"
    );

    // The judge's stream: read back in order, per list, and pruned to the windows.
    let s = &mut stores[0];
    let sample = |input, version, combined| JudgeSample {
        id: 0,
        route: "bot".into(),
        input,
        candidate_version: version,
        combined,
        errored: false,
        scorers: vec![("lexical".into(), combined)],
    };
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.push(sample(JudgeInput::Candidate, 2, f64::from(i) / 100.0));
    }
    for i in 0..10 {
        batch.push(sample(JudgeInput::Noise, 2, f64::from(i) / 10.0));
    }
    s.write_judge_samples(&batch).unwrap();
    let all = s.judge_samples_after(0, 1000).unwrap();
    assert_eq!(all.len(), 60);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[3].combined, 0.03);
    assert_eq!(all[3].scorers, vec![("lexical".to_string(), 0.03)]);
    assert_eq!(s.judge_samples_after(all[49].id, 1000).unwrap().len(), 10);
    let history = s.judge_history(20).unwrap();
    assert_eq!(history.len(), 30);
    assert_eq!(
        history[0].combined, 0.30,
        "the newest 20 of the candidate's"
    );
    assert_eq!(s.prune(20).unwrap(), 30);
    assert_eq!(s.judge_samples_after(0, 1000).unwrap(), history);
}
