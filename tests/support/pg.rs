//! A throwaway PostgreSQL cluster for one test, from the system's PostgreSQL binaries (Debian's
//! `postgresql` package; `scripts/test.sh` installs it): `initdb` in a temporary directory (as
//! the `postgres` user when the tests run as root, since `initdb` refuses root), password
//! authentication, started on a free port of 127.0.0.1, stopped and removed when dropped.
//! Also the real binary as a replica of a fleet.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The cluster's superuser password, given to the servers through [`PASSWORD_ENV`].
pub const PASSWORD: &str = "fleet-test-pw";
/// The environment variable the tests' configs name in `store.password_env`.
pub const PASSWORD_ENV: &str = "UNDERSTUDY_DB_PASSWORD";

/// A running throwaway cluster.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// More server options (`-c ssl=on ...`).
    options: String,
}

/// The newest installed PostgreSQL's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("no PostgreSQL under /usr/lib/postgresql: install the `postgresql` package (scripts/test.sh does)")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn checked(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// initdb and start.
    pub fn start() -> Cluster {
        Cluster::start_with_tls(None)
    }

    /// initdb and start; with `tls` (certificate chain PEM, key PEM) the server also offers TLS.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("understudy-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let as_postgres = is_root();
        let mut cluster = Cluster {
            dir,
            bin: bin_dir(),
            port: 0,
            as_postgres,
            options: String::new(),
        };
        std::fs::write(cluster.dir.join("pw"), PASSWORD).unwrap();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            let cert_path = cluster.dir.join("server.crt");
            let key_path = cluster.dir.join("server.key");
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
            cluster.options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_path.display(),
                key_path.display()
            );
        }
        if as_postgres {
            checked(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.dir)
                    .output(),
            );
        }
        let data = cluster.data();
        let pw = cluster.dir.join("pw");
        checked(
            "initdb",
            cluster
                .server_command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", pw.display()))
                .output(),
        );
        // Another process may take a free port between the look and the bind: try again.
        for attempt in 0.. {
            cluster.port = free_port();
            if cluster.try_start() {
                break;
            }
            assert!(attempt < 3, "PostgreSQL did not start: {}", cluster.log());
        }
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn try_start(&self) -> bool {
        self.server_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off{}",
                self.port,
                self.dir.display(),
                self.options
            ))
            .arg("start")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts it again on the same port (after [`Cluster::stop`]).
    pub fn restart(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not restart: {}",
            self.log()
        );
    }

    /// Stops it (fast shutdown: sessions are cut).
    pub fn stop(&self) {
        checked(
            "pg_ctl stop",
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"])
                .output(),
        );
    }

    /// Runs `sql` as the superuser (over TCP without TLS) and returns what it printed.
    pub fn sql(&self, sql: &str) -> String {
        let out = checked(
            "psql",
            Command::new(self.bin.join("psql"))
                .env("PGPASSWORD", PASSWORD)
                .env("PGSSLMODE", "disable")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-qAt",
                    "-c",
                ])
                .arg(sql)
                .arg("-p")
                .arg(self.port.to_string())
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a database and returns its `[store] url` (no password in it).
    pub fn database(&self, name: &str) -> String {
        self.sql(&format!("CREATE DATABASE {name}"));
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `toml` (from `support::config()`) with its `[store] path` replaced by `url`.
pub fn on_postgres(toml: &str, url: &str) -> String {
    toml.lines()
        .map(|line| {
            if line.starts_with("path = ") {
                format!("url = \"{url}\"\npassword_env = \"{PASSWORD_ENV}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every line the test's processes wrote on stderr, for failure messages.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    pub fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let text = self.0.lock().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A running `understudy serve` (the real binary), killed (SIGKILL) when dropped.
pub struct Replica {
    child: Child,
    pub name: &'static str,
    pub proxy: String,
    pub admin: String,
}

impl Replica {
    /// Starts the binary on `config` and waits until it prints its addresses.
    pub fn start(name: &'static str, config: &Path, log: &Log) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("UNDERSTUDY_ADMIN_TOKEN", super::TOKEN)
            .env(PASSWORD_ENV, PASSWORD)
            .env(
                "RUST_LOG",
                std::env::var("REPLICA_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("understudy serving") {
                    let field = |key: &str| {
                        line.split_whitespace()
                            .find_map(|t| t.strip_prefix(key))
                            .map(str::to_string)
                    };
                    if let (Some(p), Some(a)) = (field("proxy="), field("admin=")) {
                        let _ = tx.send((p, a));
                    }
                }
                lines.push(&format!("[{name}] {line}"));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((proxy, admin)) = rx.recv_timeout(Duration::from_millis(20)) {
                return Replica {
                    child,
                    name,
                    proxy: format!("http://{proxy}"),
                    admin: format!("http://{admin}"),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("{name} exited ({status}):\n{}", log.tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start:\n{}",
                log.tail(40)
            );
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
