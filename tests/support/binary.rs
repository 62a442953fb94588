//! The real `understudy serve` as a child process: started on a config file, its addresses read
//! from its log (text or JSON), every stderr line kept for the test to inspect. Included with
//! `#[path = "support/binary.rs"] mod binary;` by the tests that need a process (signals, log
//! lines, the image's config).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the binary may take to print its addresses on a loaded machine.
const STARTUP: Duration = Duration::from_secs(30);

pub struct Binary {
    pub child: Child,
    pub proxy: String,
    pub admin: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// `understudy serve --config PATH`, with the admin token set and `RUST_LOG=info`; `envs`
/// added (or overriding).
pub fn serve_command(config: &Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("UNDERSTUDY_ADMIN_TOKEN", super::support::TOKEN)
        .env("RUST_LOG", "info")
        .env_remove("UNDERSTUDY_LOG_FORMAT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// The proxy and admin addresses of the `understudy serving` line, text or JSON.
fn addresses(line: &str) -> Option<(String, String)> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |k: &str| v.get(k)?.as_str().map(str::to_string);
        return Some((field("proxy")?, field("admin")?));
    }
    let field = |k: &str| {
        let start = line.find(&format!("{k}="))? + k.len() + 1;
        let rest = &line[start..];
        Some(rest.split_whitespace().next()?.to_string())
    };
    Some((field("proxy")?, field("admin")?))
}

impl Binary {
    /// Spawns `cmd` (stderr piped) and waits until it serves; panics with its log if it exits
    /// or does not serve in time.
    pub async fn start(mut cmd: Command) -> Binary {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run understudy");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addrs) = addresses(&line) {
                        let _ = tx.send(addrs);
                    }
                    lines.lock().unwrap().push(line);
                }
            }
        });
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok((proxy, admin)) = rx.try_recv() {
                return Binary {
                    child,
                    proxy: format!("http://{proxy}"),
                    admin: format!("http://{admin}"),
                    lines,
                    reader: Some(reader),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = reader.join();
                panic!(
                    "understudy exited ({status}) before serving:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "understudy did not serve within {STARTUP:?}:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. `-HUP`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGTERM, then waits for the exit (and the end of its stderr); every line it wrote.
    pub async fn stop(mut self) -> Vec<String> {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "understudy exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "understudy did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
