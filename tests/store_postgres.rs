//! The PostgreSQL store on its own, against a throwaway cluster (`support/pg.rs`): replicas
//! opening it at once migrate it once; a change computed from an older state is refused
//! (`Stale`), so two replicas never both apply one; a commit is announced to the others within
//! a second; exactly one replica holds the judge's lock and another takes it when it goes; the
//! judge's stream is read back per list and pruned to what the windows need. And TLS as
//! libpq's `sslmode` promises, against a server with a certificate from a private CA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::{Duration, Instant};

use support::pg::{Cluster, PASSWORD};
use understudy::store::{
    EventKind, EventRecord, Fleet, IndexRecord, JudgeInput, JudgeSample, PgStore, Phase,
    ReleaseRecord, Replica, RolloutRecord, RouteRecord, Store, StoreError, Transition,
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
        index: None,
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
    let mut embedding = release(2);
    embedding.index = Some("docs-large".into());
    let retained = IndexRecord {
        route: "bot".into(),
        name: "docs-old".into(),
        retained_until_ms: Some(5),
        dropped_at_ms: None,
    };
    let created = Transition {
        new_releases: vec![release(1), embedding],
        route: Some(route(1, Some(2), 0.1, 10)),
        events: vec![event(EventKind::Configured, 10)],
        indexes: vec![retained.clone()],
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
    let loaded = b.reload().unwrap();
    assert_eq!(loaded.routes, vec![route(1, Some(2), 0.1, 10)]);
    // Embedding routes' release index and retained indexes are shared too.
    assert_eq!(loaded.releases[1].index.as_deref(), Some("docs-large"));
    assert_eq!(loaded.indexes, vec![retained]);
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

    // The rollout row: written with the route's change, read back by the other replica. A change
    // of the rollout alone (a pause) is a change of the route's state too: conditional on the
    // revision read, so B's pause computed before A's step is refused until B reads again.
    let rollout = |step: u32, paused: Option<i64>, at: i64| RolloutRecord {
        route: "bot".into(),
        candidate: 2,
        step,
        step_since_ms: at,
        paused_at_ms: paused,
        updated_at_ms: at,
    };
    b.reload().unwrap();
    a.commit(&Transition {
        route: Some(route(1, Some(2), 0.7, 30)),
        rollout: Some(rollout(1, None, 30)),
        events: vec![event(EventKind::RolloutStep, 30)],
        ..Transition::default()
    })
    .unwrap();
    let pause = |at: i64| Transition {
        rollout: Some(rollout(1, Some(at), 30)),
        events: vec![event(EventKind::RolloutPaused, at)],
        ..Transition::default()
    };
    assert!(matches!(b.commit(&pause(31)), Err(StoreError::Stale(_))));
    assert_eq!(b.reload().unwrap().rollouts, vec![rollout(1, None, 30)]);
    b.commit(&pause(32)).unwrap();
    let loaded = a.reload().unwrap();
    assert_eq!(loaded.rollouts, vec![rollout(1, Some(32), 30)]);
    assert_eq!(loaded.routes, vec![route(1, Some(2), 0.7, 30)]);
    // Its candidate must be a release of the route: nothing of the change is written.
    let unknown = Transition {
        rollout: Some(RolloutRecord {
            candidate: 9,
            ..rollout(0, None, 40)
        }),
        events: vec![event(EventKind::RolloutStep, 40)],
        ..Transition::default()
    };
    assert!(matches!(a.commit(&unknown), Err(StoreError::Postgres(_))));
    assert_eq!(a.reload().unwrap().rollouts, vec![rollout(1, Some(32), 30)]);
    assert_eq!(a.events("bot", 10).unwrap().len(), 5);

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

/// A private CA and a server certificate for `localhost` only (not `127.0.0.1`).
fn pki() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "Understudy test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (
        ca.pem(),
        format!("{}{}", cert.pem(), ca.pem()),
        key.serialize_pem(),
    )
}

#[test]
fn tls_as_sslmode_says() {
    let (ca, chain, key) = pki();
    let cluster = Cluster::start_with_tls(Some((&chain, &key)));
    cluster.database("tls");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    std::fs::write(&root, ca).unwrap();
    let root = root.display().to_string();
    let url = |host: &str, query: &str| {
        format!("postgres://postgres@{host}:{}/tls?{query}", cluster.port)
    };
    let encrypted = || cluster.sql("SELECT count(*) FROM pg_stat_ssl WHERE ssl");
    let try_open = |u: String| {
        let replica = Replica {
            id: "t".into(),
            address: "x".into(),
        };
        PgStore::open(&u, Some(PASSWORD.to_string()), replica)
    };
    // Encrypted without a check of the certificate (libpq's prefer and require).
    for mode in ["prefer", "require"] {
        let store = try_open(url("127.0.0.1", &format!("sslmode={mode}"))).unwrap();
        assert_ne!(encrypted(), "0", "{mode}");
        drop(store);
    }
    // verify-ca: signed by the CA given, whatever the name; verify-full: and for the host.
    let ca_only = format!("sslmode=verify-ca&sslrootcert={root}");
    drop(try_open(url("127.0.0.1", &ca_only)).unwrap());
    let full = format!("sslmode=verify-full&sslrootcert={root}");
    let store = try_open(url("localhost", &full)).unwrap();
    assert_ne!(encrypted(), "0");
    drop(store);
    for refused in [
        url("127.0.0.1", &full),
        url("localhost", "sslmode=verify-full"),
    ] {
        let e = try_open(refused.clone()).err().unwrap().to_string();
        assert!(!e.contains(PASSWORD), "{e}");
        assert!(e.contains("certificate"), "the cause is said: {e}");
        println!("refused as it should be: {refused}: {e}");
    }
    // disable: in the clear.
    let store = try_open(url("127.0.0.1", "sslmode=disable")).unwrap();
    assert_eq!(encrypted(), "0");
    drop(store);
}
