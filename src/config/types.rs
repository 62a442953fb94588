//! The validated runtime types: one per section of the file, with their defaults. Built only
//! by the checker (`check`), so a value of these types has passed every rule.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Uri};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::domain::{Phase, Prices, ReleaseSpec};

/// `[server]`: the proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `listen`, default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// `max_body_bytes`, default 10 MiB.
    pub max_body_bytes: usize,
    /// `upstream_timeout_secs`, default 300.
    pub upstream_timeout: Duration,
    /// `connect_timeout_secs`, default 10.
    pub connect_timeout: Duration,
    /// `shutdown_grace_secs`, default 30.
    pub shutdown_grace: Duration,
    /// `workers`: proxy worker threads; default (None) one per available core.
    pub workers: Option<usize>,
    /// `header_read_timeout_secs`, default 10: from a request's first byte to its complete head.
    pub header_read_timeout: Duration,
    /// `idle_timeout_secs`, default 60: a proxy connection with no request in flight (and none
    /// begun) for this long is closed.
    pub idle_timeout: Duration,
    /// `body_timeout_secs`, default 30: the longest wait for the next chunk of a request body.
    pub body_timeout: Duration,
    /// `max_connections`, default 4096: open proxy connections (lowered at start to fit the
    /// file-descriptor limit).
    pub max_connections: usize,
    /// `max_concurrent_requests`, default 1024: proxied requests in flight, streamed answers
    /// included, across all workers; past it a request is answered 503.
    pub max_concurrent_requests: usize,
}

impl ServerConfig {
    /// Proxy worker threads to run: `workers`, or one per available core.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 10 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            workers: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_concurrent_requests: 1024,
        }
    }
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `listen`, default 127.0.0.1:8081.
    pub listen: SocketAddr,
    /// `token_env`: the environment variable holding the bearer token, default
    /// `UNDERSTUDY_ADMIN_TOKEN`.
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token_env: "UNDERSTUDY_ADMIN_TOKEN".to_owned(),
        }
    }
}

/// `[store]`: the embedded database, or a PostgreSQL database a fleet of replicas shares.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `path`, default `data/understudy.db`, resolved against the config file's directory.
    pub path: PathBuf,
    /// `url` (with `password_env`): PostgreSQL instead of the file at `path`.
    pub postgres: Option<PostgresConfig>,
}

/// `[store] url = "postgres://..."`: the shared store of a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// The libpq-style URL, without a password (`sslmode` and the other parameters in it).
    pub url: String,
    /// The environment variable holding the password, if the server asks for one.
    pub password_env: Option<String>,
}

/// `[log]`: how the server's log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// `format`: `text` (key=value lines, the default) or `json` (one object per event).
    pub format: LogFormat,
}

/// The shape of a log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// key=value lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

impl LogFormat {
    pub const NAMES: [&str; 2] = ["text", "json"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}, expected one of {}",
                LogFormat::NAMES.join(", ")
            )),
        }
    }
}

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiFlavor {
    /// OpenAI and compatible servers (`api = "openai"`).
    OpenAi,
    /// Anthropic Messages API (`api = "anthropic"`).
    Anthropic,
}

/// `[upstreams.NAME]`: one upstream LLM API.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The table's name.
    pub name: String,
    /// `base_url`: http or https with a host; its path is `/` or a prefix without trailing slash.
    pub base_url: Uri,
    /// `api_key_env`: if set, the key from this environment variable replaces the client's.
    pub api_key_env: Option<String>,
    /// Whether unmatched requests go here.
    pub default: bool,
    /// `api`; default: Anthropic if the host contains "anthropic", else OpenAI.
    pub api: ApiFlavor,
    /// `ca_file`: extra trusted CA certificates (https only).
    pub ca_file: Option<CaFile>,
}

/// A PEM file of CA certificates, read and checked when the configuration is loaded. Its
/// certificates are trusted, besides the webpki roots, for every https upstream of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct CaFile {
    /// The file, resolved against the config file's directory.
    pub path: PathBuf,
    /// Its certificates (DER), at least one, each valid as a trust anchor.
    pub certs: Vec<CertificateDer<'static>>,
}

/// What keeps a user on the same side of a canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// `header:NAME`: a request header (name lower-cased).
    Header(HeaderName),
    /// `body:FIELD`: a field of the JSON request body.
    Body(String),
}

/// `[routes.NAME]`: one managed stream of LLM traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The table's name (a metric label).
    pub name: String,
    /// `model`: the alias applications send.
    pub model: String,
    /// `phase`, default stable.
    pub phase: Phase,
    /// `share`, in [0, 1], default 0.05.
    pub share: f64,
    /// `sticky_key`; absent: random.
    pub sticky_key: Option<StickyKey>,
    /// `[routes.NAME.stable]`.
    pub stable: ReleaseSpec,
    /// `[routes.NAME.candidate]`.
    pub candidate: Option<ReleaseSpec>,
    /// `[routes.NAME.shadow]`.
    pub shadow: ShadowConfig,
    /// `[routes.NAME.scoring]`.
    pub scoring: ScoringConfig,
    /// `[routes.NAME.rollback]`.
    pub rollback: RollbackConfig,
    /// `[[routes.NAME.checks]]`, in the file's order.
    pub checks: Vec<Check>,
    /// `index_retention`, default 24 h: how long the vector index of a release that stopped
    /// serving stays a rollback target (embedding routes).
    pub index_retention: Duration,
    /// `[routes.NAME.rollout]`: the steps the candidate walks by itself, when configured.
    pub rollout: Option<RolloutConfig>,
}

/// `[routes.NAME.rollout]`: an automatic rollout. Validated: at least one step, phases never go
/// backwards, `finalize` only last and only after a `promoted` step.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// `steps`, in order.
    pub steps: Vec<RolloutStep>,
}

/// One entry of `steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RolloutStep {
    /// `{ phase, share, min_duration?, min_samples? }`: hold the candidate at `phase` and
    /// `share` until the evidence says it is good.
    Hold {
        /// shadow, canary or promoted.
        phase: Phase,
        /// In [0, 1].
        share: f64,
        /// `min_duration` ("10m", "1h"), default 0: time spent in the step, pauses not counted.
        min_duration: Duration,
        /// `min_samples`: candidate samples scored during the step; default: the route's
        /// `rollback.min_samples`.
        min_samples: usize,
    },
    /// `{ finalize = true }`: the promoted candidate becomes stable.
    Finalize,
}

/// The default of `index_retention`.
pub const DEFAULT_INDEX_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// `[routes.NAME.shadow]`: limits on mirrored traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// `max_inflight`, default 64.
    pub max_inflight: usize,
    /// `max_rps`, default 20.
    pub max_rps: f64,
    /// `max_tokens_per_min`, default none.
    pub max_tokens_per_min: Option<u64>,
    /// `timeout_secs`, default `server.upstream_timeout`.
    pub timeout: Duration,
}

/// Weights of the scorers (`weights = { lexical, structure, length, refusal, semantic, judge }`).
pub use crate::score::Weights;
/// `[[routes.NAME.checks]]`: the user's own checks on an answer.
pub use crate::score::{Check, CheckRule, CheckTarget};

/// `[routes.NAME.scoring]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringConfig {
    /// `noise_floor_share`, default 0.02: the share of mirrors that also re-ask stable, once
    /// the floor is warm.
    pub noise_floor_share: f64,
    /// `noise_warmup`, default 20: until the route has this many stable-vs-stable samples,
    /// every mirror re-asks stable.
    pub noise_warmup: usize,
    /// `weights`; missing keys take their default.
    pub weights: Weights,
    /// `keep_worst`, default 20.
    pub keep_worst: usize,
    /// `keep_random`, default 50.
    pub keep_random: usize,
    /// `redact_requests`, default false.
    pub redact_requests: bool,
    /// `[routes.NAME.scoring.semantic]`: embedding similarity, when configured.
    pub semantic: Option<SemanticConfig>,
    /// `[routes.NAME.scoring.judge]`: the blind pairwise LLM judge, when configured.
    pub judge: Option<JudgeConfig>,
}

/// `[routes.NAME.scoring.semantic]`: cosine similarity of the two answers' embeddings from an
/// OpenAI-compatible `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticConfig {
    /// `upstream`: the name of an upstream that serves embeddings.
    pub upstream: String,
    /// `model`: the embedding model.
    pub model: String,
    /// `max_rps`, default 20: embedding calls per second; past it the scorer is skipped.
    pub max_rps: f64,
    /// `max_input_chars`, default 8000: each answer is cut to this many characters.
    pub max_input_chars: usize,
}

/// `[routes.NAME.scoring.judge]`: an LLM compares the two answers without knowing which is
/// which.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeConfig {
    /// `upstream`: the name of an upstream (its API decides chat completions or messages).
    pub upstream: String,
    /// `model`: the judge model, pinned.
    pub model: String,
    /// `rubric`, or the contents of `rubric_file`.
    pub rubric: String,
    /// `max_rps`, default 2: judge calls per second; past it the scorer is skipped.
    pub max_rps: f64,
    /// `max_tokens_per_min`: the judge's token budget, default none.
    pub max_tokens_per_min: Option<u64>,
    /// `both_orders`, default true: when the budget allows, ask with A and B swapped too, and
    /// count disagreement as a tie (position bias).
    pub both_orders: bool,
    /// `max_input_chars`, default 8000: the request and each answer are cut to this many.
    pub max_input_chars: usize,
    /// `prices`, USD per million tokens: the judge's cost, counted under release `judge`.
    pub prices: Option<Prices>,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            noise_floor_share: 0.02,
            noise_warmup: 20,
            weights: Weights::default(),
            keep_worst: 20,
            keep_random: 50,
            redact_requests: false,
            semantic: None,
            judge: None,
        }
    }
}

/// `[routes.NAME.rollback]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackConfig {
    /// `threshold`, default 0.80.
    pub threshold: f64,
    /// `window`, default 200.
    pub window: usize,
    /// `min_samples`, default 30.
    pub min_samples: usize,
    /// `max_error_rate`, default 0.05.
    pub max_error_rate: f64,
    /// `auto`, default true.
    pub auto: bool,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        Self {
            threshold: 0.80,
            window: 200,
            min_samples: 30,
            max_error_rate: 0.05,
            auto: true,
        }
    }
}
