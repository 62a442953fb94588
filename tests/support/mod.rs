//! Shared harness of the integration tests: the simulated upstream and the server, both on
//! 127.0.0.1:0, and a small HTTP client that records when each body chunk arrived.
#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::disallowed_methods)] // tests run the server and the simulator on plain tasks
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is the test failing

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use understudy::store::Store;
use understudy::Config;
use understudy::{run, run_with_store, Listeners};
use understudy_sim::{Behavior, SimUpstream};

pub mod pg;

pub const TOKEN: &str = "test-admin-token";

/// A running simulated upstream.
pub struct Sim {
    pub sim: Arc<SimUpstream>,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Sim {
    pub async fn start(default: Behavior) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sim = SimUpstream::new(default);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(Arc::clone(&sim).serve(listener, async {
            let _ = rx.await;
        }));
        Sim {
            sim,
            url,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The sections every test config shares: `[server]` and `[admin]` on 127.0.0.1:0, `[store]` in
/// `{DIR}`, and the simulated upstream `[upstreams.sim]` at `{SIM}` (placeholders that
/// `Server::start` fills in). Knobs for what the tests vary; `routes` appends the rest.
pub fn config() -> ConfigToml {
    ConfigToml {
        workers: None,
        upstream_timeout_secs: None,
        max_body_bytes: None,
        shutdown_grace_secs: None,
        store: "understudy.db",
        sim: true,
        default_upstream: None,
        upstreams: Vec::new(),
        server_keys: Vec::new(),
    }
}

/// See [`config`]. A knob left unset is left out of the TOML (the server's default applies).
#[derive(Clone, Debug)]
pub struct ConfigToml {
    workers: Option<usize>,
    upstream_timeout_secs: Option<u64>,
    max_body_bytes: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    store: &'static str,
    sim: bool,
    default_upstream: Option<&'static str>,
    upstreams: Vec<(String, String)>,
    server_keys: Vec<(&'static str, u64)>,
}

impl ConfigToml {
    /// `server.workers`.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// `server.upstream_timeout_secs`.
    pub fn upstream_timeout_secs(mut self, secs: u64) -> Self {
        self.upstream_timeout_secs = Some(secs);
        self
    }

    /// `server.max_body_bytes`.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// `server.shutdown_grace_secs`.
    pub fn shutdown_grace_secs(mut self, secs: u64) -> Self {
        self.shutdown_grace_secs = Some(secs);
        self
    }

    /// Any other numeric `[server]` key (the hygiene timeouts and caps).
    pub fn server(mut self, key: &'static str, value: u64) -> Self {
        self.server_keys.push((key, value));
        self
    }

    /// The store's file, relative to `{DIR}` (default `understudy.db`).
    pub fn store(mut self, file: &'static str) -> Self {
        self.store = file;
        self
    }

    /// No `[upstreams.sim]` (the test's upstreams are all given with `upstream`).
    pub fn without_sim(mut self) -> Self {
        self.sim = false;
        self
    }

    /// `default = true` on the upstream `name` (`sim` or one given with `upstream`).
    pub fn default_upstream(mut self, name: &'static str) -> Self {
        self.default_upstream = Some(name);
        self
    }

    /// One more upstream: `[upstreams.NAME]` with `body` (its keys, one a line).
    pub fn upstream(mut self, name: &str, body: &str) -> Self {
        self.upstreams.push((name.to_string(), body.to_string()));
        self
    }

    /// The whole config: the common sections, then `routes`.
    pub fn routes(&self, routes: &str) -> String {
        use std::fmt::Write as _;
        let mut toml = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
        let knobs = [
            ("workers", self.workers.map(|n| n as u64)),
            ("upstream_timeout_secs", self.upstream_timeout_secs),
            ("max_body_bytes", self.max_body_bytes),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
        ];
        for (key, value) in knobs {
            if let Some(value) = value {
                writeln!(toml, "{key} = {value}").unwrap();
            }
        }
        for (key, value) in &self.server_keys {
            writeln!(toml, "{key} = {value}").unwrap();
        }
        write!(
            toml,
            "\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"{{DIR}}/{}\"\n",
            self.store
        )
        .unwrap();
        let sim = self
            .sim
            .then(|| ("sim".to_string(), "base_url = \"{SIM}\"".to_string()));
        for (name, body) in sim.iter().chain(&self.upstreams) {
            write!(toml, "\n[upstreams.{name}]\n{}\n", body.trim_end()).unwrap();
            if self.default_upstream == Some(name.as_str()) {
                toml.push_str("default = true\n");
            }
        }
        if let Some(name) = self.default_upstream {
            let known =
                (self.sim && name == "sim") || self.upstreams.iter().any(|(n, _)| n == name);
            assert!(known, "default_upstream({name:?}): no such upstream");
        }
        if !routes.starts_with('\n') {
            toml.push('\n');
        }
        toml.push_str(routes);
        toml
    }
}

/// A running Understudy.
pub struct Server {
    pub proxy: String,
    pub admin: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), understudy::ServerError>>>,
}

impl Server {
    /// Starts the server with `toml`, where `{SIM}` stands for the simulated upstream's URL and
    /// `{DIR}` for a fresh temporary directory.
    pub async fn start(toml: &str, sim_url: &str) -> (Server, tempfile::TempDir) {
        Self::start_with_secrets(toml, sim_url, &[]).await
    }

    pub async fn start_with_secrets(
        toml: &str,
        sim_url: &str,
        secrets: &[(&str, &str)],
    ) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = toml
            .replace("{SIM}", sim_url)
            .replace("{DIR}", dir.path().to_str().unwrap());
        let config = Config::parse(&text, dir.path()).unwrap_or_else(|e| {
            panic!(
                "test config invalid: {}",
                e.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        });
        let server = Self::start_config(config, secrets).await;
        (server, dir)
    }

    pub async fn start_config(config: Config, secrets: &[(&str, &str)]) -> Server {
        Self::start_config_with_store(config, secrets, None).await
    }

    /// Starts the server on `store` (`run_with_store`) instead of opening `config.store`.
    pub async fn start_config_with_store(
        config: Config,
        secrets: &[(&str, &str)],
        store: Option<Box<dyn Store>>,
    ) -> Server {
        let listeners = Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let proxy = format!("http://{}", listeners.proxy.local_addr().unwrap());
        let admin = format!("http://{}", listeners.admin.local_addr().unwrap());
        let mut secrets: Vec<(String, String)> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        secrets.push(("UNDERSTUDY_ADMIN_TOKEN".into(), TOKEN.into()));
        let (tx, rx) = oneshot::channel::<()>();
        let secret = move |k: &str| secrets.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let shutdown = async {
            let _ = rx.await;
        };
        let task = match store {
            None => tokio::spawn(run(config, listeners, secret, shutdown)),
            Some(store) => tokio::spawn(run_with_store(config, listeners, secret, shutdown, store)),
        };
        Server {
            proxy,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server did not stop")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn metrics(&self) -> String {
        let r = send(
            Method::GET,
            &format!("{}/metrics", self.admin),
            &[],
            Bytes::new(),
        )
        .await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// The value of one sample line of /metrics (labels given in the exposition's order).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        metric_value(&self.metrics().await, name_and_labels)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of the series `name{labels}` in a Prometheus text exposition (labels in the
/// exposition's order). Panics when the series is absent, naming it and showing what is there:
/// a renamed metric or label must fail the test, not read as 0.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    metric_value_or_absent(text, name_and_labels).unwrap_or_else(|| {
        let name = name_and_labels
            .split_once('{')
            .map_or(name_and_labels, |(name, _)| name);
        let same_name: Vec<&str> = text
            .lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' '])))
            .collect();
        if same_name.is_empty() {
            let mut names: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| l.split(['{', ' ']).next())
                .collect();
            names.dedup();
            panic!(
                "no series {name_and_labels} in /metrics: no metric {name} at all; metrics present:\n{}",
                names.join("\n")
            )
        }
        panic!(
            "no series {name_and_labels} in /metrics; the series of {name}:\n{}",
            same_name.join("\n")
        )
    })
}

/// The value of the series `name{labels}`, or None when the exposition has no such series. Only
/// for series that legitimately may not exist yet (created on their first event); the caller
/// says why it accepts absence.
pub fn metric_value_or_absent(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let value = l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim();
        Some(
            value
                .parse()
                .unwrap_or_else(|e| panic!("series {name_and_labels} has value {value:?}: {e}")),
        )
    })
}

/// A response with the arrival time of each body chunk.
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// (time since the request was sent, chunk)
    pub chunks: Vec<(Duration, Bytes)>,
    pub total: Duration,
    /// The body ended with an error (reset, timeout).
    pub body_error: Option<String>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    send_with(&client(), method, url, headers, body).await
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let started = Instant::now();
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut chunks = Vec::new();
    let mut all = Vec::new();
    let mut body_error = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                body_error = Some(e.to_string());
                break;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    all.extend_from_slice(&data);
                    chunks.push((started.elapsed(), data));
                }
            }
        }
    }
    Reply {
        status,
        version,
        headers,
        body: Bytes::from(all),
        chunks,
        total: started.elapsed(),
        body_error,
    }
}

/// POSTs JSON.
pub async fn post(url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, Bytes::from(body.to_string())).await
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A request body of each managed API for `model`.
pub fn request_for(path: &str, model: &str, prompt: &str, stream: bool) -> serde_json::Value {
    use serde_json::json;
    match path {
        "/v1/chat/completions" => json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}),
        "/v1/completions" => json!({"model": model, "stream": stream, "prompt": prompt}),
        "/v1/responses" => json!({"model": model, "stream": stream, "input": prompt}),
        "/v1/messages" => json!({"model": model, "stream": stream, "max_tokens": 256,
            "messages": [{"role": "user", "content": prompt}]}),
        other => panic!("not a managed path: {other}"),
    }
}

pub const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
];
