//! A real full disk: `understudy serve` in a private mount namespace (`unshare -m`) with its
//! store on a 1 MiB tmpfs that the test fills (`nsenter ... dd`). The store's writes then fail
//! for real (SQLITE_FULL): a rollback still takes effect on the next request and says it is not
//! yet durable, `/readyz` says why, and once space is freed the rollback is written (the route's
//! event log, read back from the store, has it). Needs root and util-linux's `unshare` and
//! `nsenter`; where the machine does not allow a mount namespace the test says so and passes
//! (the same behaviour is also tested with a failing store wrapper in `tests/store_faults.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::json;
use support::*;
use understudy_sim::Behavior;

struct Namespaced {
    child: Child,
    proxy: String,
    admin: String,
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Namespaced {
    /// Runs `nsenter` into the server's mount namespace.
    fn inside(&self, script: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.child.id().to_string(), "-m", "sh", "-c", script])
            .output()
            .unwrap()
    }
}

/// Whether this machine lets the test make a mount namespace with a tmpfs in it.
fn namespaces_allowed() -> bool {
    Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start(dir: &std::path::Path, sim_url: &str) -> Namespaced {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let config = dir.join("understudy.toml");
    std::fs::write(
        &config,
        config_toml(sim_url, &mnt.join("understudy.db").display().to_string()),
    )
    .unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{}' && exec '{}' serve --config '{}'",
        mnt.display(),
        env!("CARGO_BIN_EXE_understudy"),
        config.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("UNDERSTUDY_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("understudy serving") {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .map(|v| v.trim_matches('"').to_owned())
                };
                if let (Some(p), Some(a)) = (field("proxy="), field("admin=")) {
                    let _ = tx.send((p, a));
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((proxy, admin)) = rx.try_recv() {
            return Namespaced {
                child,
                proxy: format!("http://{proxy}"),
                admin: format!("http://{admin}"),
            };
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "understudy exited before serving"
        );
        assert!(Instant::now() < deadline, "understudy did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn config_toml(sim: &str, db: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[store]
path = "{db}"
[upstreams.sim]
base_url = "{sim}"
default = true
[routes.bot]
model = "support-bot"
phase = "canary"
share = 1.0
[routes.bot.stable]
upstream = "sim"
model = "stable-2024-08-06"
[routes.bot.candidate]
upstream = "sim"
model = "candidate-2024-11-20"
"#
    )
}

fn auth() -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {TOKEN}"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_does_not_block_rollback() {
    if !namespaces_allowed() {
        eprintln!(
            "skipped: this machine does not allow a mount namespace with a tmpfs (needs root)"
        );
        return;
    }
    let sim = Sim::start(Behavior::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &sim.url);
    let [(k, v)] = auth();
    let headers = [(k, v.as_str())];
    let chat = request_for(
        "/v1/chat/completions",
        "support-bot",
        "Where is my order?",
        false,
    );
    let served_by = |r: &Reply| r.header("x-understudy-release").map(str::to_owned);
    let r = post(&format!("{}/v1/chat/completions", server.proxy), &chat, &[]).await;
    assert_eq!(
        served_by(&r).as_deref(),
        Some("2"),
        "the canary serves at share 1"
    );

    // Fill the tmpfs, then write until the store reports it cannot (SQLite reuses WAL space it
    // already has, so the first writes may still fit).
    let out = server.inside(&format!(
        "dd if=/dev/zero of='{}/mnt/fill' bs=4k 2>&1; df -k '{}/mnt' | tail -1",
        dir.path().display(),
        dir.path().display()
    ));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No space left"),
        "{out:?}"
    );
    let mut failing = false;
    for _ in 0..2000 {
        // Each promote is one commit (the route and an event): WAL pages that need new space.
        let body = json!({"phase": "canary", "share": 1.0});
        let r = post(
            &format!("{}/admin/routes/bot/promote", server.admin),
            &body,
            &headers,
        )
        .await;
        if r.status == 503 {
            failing = true;
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(failing, "the store never reported the full disk");
    let ready = send(
        Method::GET,
        &format!("{}/readyz", server.admin),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("store failing"), "{}", ready.text());

    // The safe direction: the rollback is in effect for the next request, not yet durable.
    let r = post(
        &format!("{}/admin/routes/bot/rollback", server.admin),
        &json!({"reason": "disk full drill"}),
        &headers,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["durable"], false);
    let r = post(&format!("{}/v1/chat/completions", server.proxy), &chat, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        served_by(&r).as_deref(),
        Some("1"),
        "stable serves right away"
    );

    // Space again: the rollback is written (the event log is read from the store).
    server.inside(&format!("rm -f '{}/mnt/fill'", dir.path().display()));
    eventually(15, "the store to recover", || async {
        send(
            Method::GET,
            &format!("{}/readyz", server.admin),
            &[],
            Bytes::new(),
        )
        .await
        .status
            == 200
    })
    .await;
    let detail = send(
        Method::GET,
        &format!("{}/admin/routes/bot", server.admin),
        &headers,
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(detail["store"]["state"], "ok", "{detail}");
    assert_eq!(detail["store"]["pending"], 0, "{detail}");
    let events = detail["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "rolled_back" && e["reason"] == "disk full drill"),
        "{detail}"
    );
    assert!(detail["candidate"].is_null(), "{detail}");
}
