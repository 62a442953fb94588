//! Configuration: the TOML file parsed strictly and validated once into runtime types.
//!
//! Each section (server, admin, store, each upstream, each route and each of its sub-tables)
//! is deserialized separately, so one bad section does not hide problems in another; then
//! the semantic rules are checked. Every problem is collected with its key path and line.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::domain::{Phase, Prices, ReleaseSpec};

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The proxy listener.
    pub server: ServerConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Upstreams by name (at least one).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Name of the upstream that receives unmatched requests.
    pub default_upstream: String,
    /// Routes by name.
    pub routes: BTreeMap<String, RouteConfig>,
}

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

/// `[store]`: the embedded database.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `path`, default `data/understudy.db`, resolved against the config file's directory.
    pub path: PathBuf,
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
}

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

/// Weights of the scorers (`weights = { lexical, structure, length, refusal }`).
pub use crate::score::Weights;

/// `[routes.NAME.scoring]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringConfig {
    /// `noise_floor_share`, default 0.02.
    pub noise_floor_share: f64,
    /// `weights`; missing keys take their default.
    pub weights: Weights,
    /// `keep_worst`, default 20.
    pub keep_worst: usize,
    /// `keep_random`, default 50.
    pub keep_random: usize,
    /// `redact_requests`, default false.
    pub redact_requests: bool,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            noise_floor_share: 0.02,
            weights: Weights::default(),
            keep_worst: 20,
            keep_random: 50,
            redact_requests: false,
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

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes.support-bot.share` (empty for syntax errors).
    pub key: String,
    /// 1-based line of the key, or of its nearest existing parent table.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Why [`Config::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has one or more problems.
    #[error("{path}: {} problem(s):\n{}", .problems.len(), indented(.problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found, in line order.
        problems: Vec<ConfigError>,
    },
}

fn indented(problems: &[ConfigError]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Read, parse, validate. Relative paths (system_prompt_file, ca_file, store.path) are
    /// resolved against the config file's directory.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Config::parse(&text, base_dir).map_err(|problems| LoadError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// The same from text; `base_dir` for relative paths. Problems are in line order.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let doc = DeTable::parse(text).map_err(|e| {
            vec![ConfigError {
                key: String::new(),
                line: e.span().map(|span| line_at(text, span.start)),
                message: format!("invalid TOML: {}", e.message()),
            }]
        })?;
        let mut checker = Checker {
            text,
            doc: doc.get_ref(),
            base_dir,
            problems: Vec::new(),
        };
        let config = checker.config();
        let mut problems = checker.problems;
        if problems.is_empty() {
            Ok(config)
        } else {
            problems.sort_by_key(|p| p.line);
            Err(problems)
        }
    }
}

/// The file as written: every key optional here, required ones are checked afterwards so that
/// their absence is reported like any other problem.
mod raw {
    use serde::de::IgnoredAny;
    use serde::Deserialize;

    use super::{ApiFlavor, Prices};

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub listen: Option<String>,
        pub max_body_bytes: Option<usize>,
        pub upstream_timeout_secs: Option<u64>,
        pub connect_timeout_secs: Option<u64>,
        pub shutdown_grace_secs: Option<u64>,
        pub workers: Option<usize>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub listen: Option<String>,
        pub token_env: Option<String>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Store {
        pub path: Option<String>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub base_url: Option<String>,
        pub api_key_env: Option<String>,
        pub default: Option<bool>,
        pub api: Option<ApiFlavor>,
        pub ca_file: Option<String>,
    }

    /// A route's own keys; its sub-tables are only accepted here and deserialized separately.
    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub model: Option<String>,
        pub phase: Option<String>,
        pub share: Option<f64>,
        pub sticky_key: Option<String>,
        #[serde(rename = "stable")]
        pub _stable: Option<IgnoredAny>,
        #[serde(rename = "candidate")]
        pub _candidate: Option<IgnoredAny>,
        #[serde(rename = "shadow")]
        pub _shadow: Option<IgnoredAny>,
        #[serde(rename = "scoring")]
        pub _scoring: Option<IgnoredAny>,
        #[serde(rename = "rollback")]
        pub _rollback: Option<IgnoredAny>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Release {
        pub label: Option<String>,
        pub upstream: Option<String>,
        pub model: Option<String>,
        pub system_prompt: Option<String>,
        pub system_prompt_file: Option<String>,
        pub params: Option<toml::Table>,
        pub prices: Option<Prices>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Shadow {
        pub max_inflight: Option<usize>,
        pub max_rps: Option<f64>,
        pub max_tokens_per_min: Option<u64>,
        pub timeout_secs: Option<u64>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Scoring {
        pub noise_floor_share: Option<f64>,
        pub weights: Option<Weights>,
        pub keep_worst: Option<usize>,
        pub keep_random: Option<usize>,
        pub redact_requests: Option<bool>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Weights {
        pub lexical: Option<f64>,
        pub structure: Option<f64>,
        pub length: Option<f64>,
        pub refusal: Option<f64>,
    }

    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rollback {
        pub threshold: Option<f64>,
        pub window: Option<usize>,
        pub min_samples: Option<usize>,
        pub max_error_rate: Option<f64>,
        pub auto: Option<bool>,
    }
}

const ROOT_KEYS: [&str; 5] = ["server", "admin", "store", "upstreams", "routes"];
const DEFAULT_SHARE: f64 = 0.05;
const DEFAULT_STORE_PATH: &str = "data/understudy.db";
const MAX_KEPT_SAMPLES: usize = 10_000;
const MAX_WORKERS: usize = 1024;

type Value<'a> = Spanned<DeValue<'a>>;

/// Walks the parsed document, building runtime types and collecting problems.
struct Checker<'a> {
    text: &'a str,
    doc: &'a DeTable<'a>,
    base_dir: &'a Path,
    problems: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// The configuration with fallbacks where something is wrong; only meaningful when no
    /// problem was reported.
    fn config(&mut self) -> Config {
        let doc = self.doc;
        for (key, _) in doc.iter() {
            let key: &str = key.get_ref();
            if !ROOT_KEYS.contains(&key) {
                self.report(
                    &[key],
                    format!("unknown key, expected one of {}", ROOT_KEYS.join(", ")),
                );
            }
        }
        let server = self.server();
        let admin = self.admin();
        let store = self.store();
        let (upstreams, default_upstream) = self.upstreams();
        let routes = self.routes(server.upstream_timeout);
        Config {
            server,
            admin,
            store,
            upstreams,
            default_upstream,
            routes,
        }
    }

    fn server(&mut self) -> ServerConfig {
        let raw: raw::Server = self.optional_section(self.doc.get("server"), &["server"]);
        let default = ServerConfig::default();
        ServerConfig {
            listen: self.socket_addr(&["server", "listen"], raw.listen, default.listen),
            max_body_bytes: self.checked(
                &["server", "max_body_bytes"],
                raw.max_body_bytes,
                default.max_body_bytes,
                |v| v > 0,
                "must be greater than 0",
            ),
            upstream_timeout: self.secs(
                &["server", "upstream_timeout_secs"],
                raw.upstream_timeout_secs,
                default.upstream_timeout,
            ),
            connect_timeout: self.secs(
                &["server", "connect_timeout_secs"],
                raw.connect_timeout_secs,
                default.connect_timeout,
            ),
            shutdown_grace: self.secs(
                &["server", "shutdown_grace_secs"],
                raw.shutdown_grace_secs,
                default.shutdown_grace,
            ),
            workers: raw.workers.map(|w| {
                self.checked(
                    &["server", "workers"],
                    Some(w),
                    1,
                    |v| (1..=MAX_WORKERS).contains(&v),
                    "must be between 1 and 1024",
                )
            }),
        }
    }

    fn admin(&mut self) -> AdminConfig {
        let raw: raw::Admin = self.optional_section(self.doc.get("admin"), &["admin"]);
        let default = AdminConfig::default();
        AdminConfig {
            listen: self.socket_addr(&["admin", "listen"], raw.listen, default.listen),
            token_env: self
                .env_name(&["admin", "token_env"], raw.token_env)
                .unwrap_or(default.token_env),
        }
    }

    fn store(&mut self) -> StoreConfig {
        let raw: raw::Store = self.optional_section(self.doc.get("store"), &["store"]);
        let path = match raw.path {
            Some(path) if path.is_empty() => {
                self.report(&["store", "path"], "must not be empty");
                PathBuf::new()
            }
            path => self
                .base_dir
                .join(path.as_deref().unwrap_or(DEFAULT_STORE_PATH)),
        };
        StoreConfig { path }
    }

    /// The upstreams and the name of the default one.
    fn upstreams(&mut self) -> (BTreeMap<String, UpstreamConfig>, String) {
        const AT_LEAST_ONE: &str = "at least one upstream is required, e.g. [upstreams.openai]";
        let mut upstreams = BTreeMap::new();
        let doc = self.doc;
        let Some(value) = doc.get("upstreams") else {
            self.report(&["upstreams"], AT_LEAST_ONE);
            return (upstreams, String::new());
        };
        let Some(table) = self.named_tables(value, "upstreams") else {
            return (upstreams, String::new());
        };
        if table.is_empty() {
            self.report(&["upstreams"], AT_LEAST_ONE);
        }
        let mut marked = Vec::new();
        let mut all_read = true;
        for (name, value) in table.iter() {
            let name: &str = name.get_ref();
            let Some(raw) = self.section::<raw::Upstream>(value, &["upstreams", name]) else {
                all_read = false;
                continue;
            };
            if raw.default == Some(true) {
                marked.push(name);
            }
            if let Some(upstream) = self.upstream(name, raw) {
                upstreams.insert(name.to_owned(), upstream);
            }
        }

        let default_upstream = match marked.as_slice() {
            [one] => (*one).to_owned(),
            [] if table.len() == 1 => match upstreams.values_mut().next() {
                Some(only) => {
                    only.default = true;
                    only.name.clone()
                }
                None => String::new(),
            },
            [] => {
                if all_read && !table.is_empty() {
                    self.report(
                        &["upstreams"],
                        "no upstream has default = true: mark the one unmatched requests go to",
                    );
                }
                String::new()
            }
            many => {
                let list = many.join(", ");
                for name in many {
                    self.report(
                        &["upstreams", name, "default"],
                        format!("only one upstream can have default = true, but {list} do"),
                    );
                }
                String::new()
            }
        };
        (upstreams, default_upstream)
    }

    fn upstream(&mut self, name: &str, raw: raw::Upstream) -> Option<UpstreamConfig> {
        let before = self.problems.len();
        let base_url = match raw.base_url {
            Some(url) => self.base_url(&["upstreams", name, "base_url"], &url),
            None => {
                self.report(&["upstreams", name, "base_url"], "is required");
                None
            }
        };
        let api_key_env = self.env_name(&["upstreams", name, "api_key_env"], raw.api_key_env);
        let ca_file = raw.ca_file.and_then(|file| {
            let path = ["upstreams", name, "ca_file"];
            if base_url.as_ref().and_then(Uri::scheme_str) == Some("http") {
                self.report(&path, "only for https upstreams, but base_url is http://");
                return None;
            }
            let full = self.base_dir.join(file);
            match read_ca_file(&full) {
                Ok(certs) => Some(CaFile { path: full, certs }),
                Err(problem) => {
                    self.report(&path, problem);
                    None
                }
            }
        });
        if self.problems.len() != before {
            return None;
        }
        let base_url = base_url?;
        let api = raw.api.unwrap_or_else(|| {
            if base_url.host().is_some_and(|h| h.contains("anthropic")) {
                ApiFlavor::Anthropic
            } else {
                ApiFlavor::OpenAi
            }
        });
        Some(UpstreamConfig {
            name: name.to_owned(),
            base_url,
            api_key_env,
            default: raw.default.unwrap_or(false),
            api,
            ca_file,
        })
    }

    fn base_url(&mut self, path: &[&str], url: &str) -> Option<Uri> {
        let parsed = match url.parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                self.report(path, format!("invalid URL {url:?}: {e}"));
                return None;
            }
        };
        let problem = match (parsed.scheme_str(), parsed.authority()) {
            (Some("http" | "https"), Some(authority)) if !authority.host().is_empty() => {
                if parsed.query().is_some() {
                    Some("must not have a query string")
                } else {
                    None
                }
            }
            (Some("http" | "https"), _) => Some("must have a host"),
            _ => Some("must start with http:// or https://"),
        };
        if let Some(problem) = problem {
            self.report(path, format!("{problem}, got {url:?}"));
            return None;
        }
        let trimmed = match parsed.path().trim_end_matches('/') {
            "" => "/",
            prefix => prefix,
        };
        if trimmed.len() == parsed.path().len() {
            return Some(parsed);
        }
        let scheme = parsed.scheme_str().unwrap_or_default();
        let authority = parsed.authority().map_or("", |a| a.as_str());
        match format!("{scheme}://{authority}{trimmed}").parse() {
            Ok(uri) => Some(uri),
            Err(e) => {
                self.report(path, format!("invalid URL {url:?}: {e}"));
                None
            }
        }
    }

    /// Routes by name, with route aliases checked for uniqueness.
    fn routes(&mut self, upstream_timeout: Duration) -> BTreeMap<String, RouteConfig> {
        let mut routes = BTreeMap::new();
        let doc = self.doc;
        let Some(table) = doc
            .get("routes")
            .and_then(|value| self.named_tables(value, "routes"))
        else {
            return routes;
        };
        let upstreams: BTreeSet<&str> = doc
            .get("upstreams")
            .and_then(|u| u.get_ref().as_table())
            .map(|t| t.iter().map(|(name, _)| name.get_ref().as_ref()).collect())
            .unwrap_or_default();
        // In file order, so that a duplicated alias is reported where it is repeated.
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(name, _)| name.span().start);
        let mut aliases = BTreeMap::new();
        for (name, value) in entries {
            let name: &str = name.get_ref();
            let route = self.route(name, value, &upstreams, &mut aliases, upstream_timeout);
            if let Some(route) = route {
                routes.insert(name.to_owned(), route);
            }
        }
        routes
    }

    fn route(
        &mut self,
        name: &str,
        value: &Value<'a>,
        upstreams: &BTreeSet<&str>,
        aliases: &mut BTreeMap<String, String>,
        upstream_timeout: Duration,
    ) -> Option<RouteConfig> {
        let before = self.problems.len();
        let path = ["routes", name];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            self.report(
                &path,
                format!(
                    "route name {name:?} must be non-empty and use only letters, digits, '_', '.' \
                     and '-' (it becomes a metric label)"
                ),
            );
        }
        let top: Option<raw::Route> = self.section(value, &path);
        let table = value.get_ref().as_table()?;
        let stable = match table.get("stable") {
            Some(value) => self.release(name, "stable", value, upstreams),
            None => {
                self.report(
                    &["routes", name, "stable"],
                    "is required: the release that serves the route's traffic",
                );
                None
            }
        };
        let candidate = table
            .get("candidate")
            .and_then(|value| self.release(name, "candidate", value, upstreams));
        let shadow = self.shadow(name, table.get("shadow"), upstream_timeout);
        let scoring = self.scoring(name, table.get("scoring"));
        let rollback = self.rollback(name, table.get("rollback"));

        let top = top?;
        let model = self.required_string(&["routes", name, "model"], top.model);
        if let Some(model) = &model {
            match aliases.entry(model.clone()) {
                Entry::Occupied(first) => self.report(
                    &["routes", name, "model"],
                    format!("alias {model:?} is already used by route {:?}", first.get()),
                ),
                Entry::Vacant(entry) => {
                    entry.insert(name.to_owned());
                }
            }
        }
        let phase = match top.phase.as_deref().map(str::parse::<Phase>) {
            None => Some(Phase::Stable),
            Some(Ok(phase)) => Some(phase),
            Some(Err(e)) => {
                self.report(&["routes", name, "phase"], e.to_string());
                None
            }
        };
        match (phase, table.contains_key("candidate")) {
            (Some(Phase::Stable), true) => self.report(
                &["routes", name, "phase"],
                "phase is \"stable\" but a candidate is configured: set phase = \"shadow\" \
                 to evaluate it, or remove the candidate",
            ),
            (Some(phase), false) if phase != Phase::Stable => self.report(
                &["routes", name, "candidate"],
                format!(
                    "phase {:?} needs a candidate: add [routes.{name}.candidate]",
                    phase.as_str()
                ),
            ),
            _ => {}
        }
        let share = self.checked(
            &["routes", name, "share"],
            top.share,
            DEFAULT_SHARE,
            |v| (0.0..=1.0).contains(&v),
            "must be between 0 and 1",
        );
        let sticky_key = top
            .sticky_key
            .and_then(|key| self.sticky_key(&["routes", name, "sticky_key"], &key));

        if self.problems.len() != before {
            return None;
        }
        Some(RouteConfig {
            name: name.to_owned(),
            model: model?,
            phase: phase?,
            share,
            sticky_key,
            stable: stable?,
            candidate,
            shadow,
            scoring,
            rollback,
        })
    }

    fn sticky_key(&mut self, path: &[&str], key: &str) -> Option<StickyKey> {
        if let Some(header) = key.strip_prefix("header:") {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => return Some(StickyKey::Header(name)),
                Err(_) => self.report(path, format!("{header:?} is not a valid header name")),
            }
        } else if let Some(field) = key.strip_prefix("body:") {
            if !field.is_empty() {
                return Some(StickyKey::Body(field.to_owned()));
            }
            self.report(path, "\"body:\" needs a field name, e.g. \"body:user\"");
        } else {
            self.report(
                path,
                format!("must be \"header:NAME\" or \"body:FIELD\", got {key:?}"),
            );
        }
        None
    }

    /// `[routes.ROUTE.WHICH]`, where WHICH is "stable" or "candidate".
    fn release(
        &mut self,
        route: &str,
        which: &str,
        value: &Value<'a>,
        upstreams: &BTreeSet<&str>,
    ) -> Option<ReleaseSpec> {
        let before = self.problems.len();
        let raw: raw::Release = self.section(value, &["routes", route, which])?;
        let key = |k| ["routes", route, which, k];

        let upstream = self.required_string(&key("upstream"), raw.upstream);
        let model = self.required_string(&key("model"), raw.model);
        let system_prompt = match (raw.system_prompt, raw.system_prompt_file) {
            (Some(_), Some(_)) => {
                self.report(
                    &key("system_prompt_file"),
                    "cannot be combined with system_prompt: keep one of them",
                );
                None
            }
            (None, Some(file)) => self.prompt_file(&key("system_prompt_file"), &file),
            (prompt, None) => prompt,
        };
        let (params, mut param_problems) = self.params(raw.params.unwrap_or_default());
        let spec = ReleaseSpec {
            label: raw.label,
            upstream: upstream.unwrap_or_default(),
            model: model.unwrap_or_default(),
            system_prompt,
            params,
            prices: raw.prices,
        };
        // The one validation of a release, shared with the admin API. A missing field was
        // reported above already; parameter problems are said in the table's order together
        // with the ones found converting them.
        let mut rest = Vec::new();
        for problem in spec.problems(upstreams.iter().copied()) {
            match problem.key.as_slice() {
                [field] if field == "upstream" && spec.upstream.is_empty() => {}
                [field] if field == "model" && spec.model.trim().is_empty() => {}
                [params, name] if params == "params" => {
                    param_problems.push((name.clone(), problem.message));
                }
                _ => rest.push(problem),
            }
        }
        param_problems.sort_by(|a, b| a.0.cmp(&b.0));
        let (first, last): (Vec<_>, Vec<_>) = rest.into_iter().partition(|p| {
            matches!(
                p.key.first().map(String::as_str),
                Some("upstream" | "model")
            )
        });
        for p in first {
            self.report(&["routes", route, which, &p.key[0]], p.message);
        }
        for (name, message) in param_problems {
            self.report(&["routes", route, which, "params", &name], message);
        }
        for p in last {
            let mut path = vec!["routes", route, which];
            path.extend(p.key.iter().map(String::as_str));
            self.report(&path, p.message);
        }
        (self.problems.len() == before).then_some(spec)
    }

    fn prompt_file(&mut self, path: &[&str], file: &str) -> Option<String> {
        let full = self.base_dir.join(file);
        match std::fs::read_to_string(&full) {
            Ok(prompt) => Some(prompt.trim_end().to_owned()),
            Err(e) => {
                self.report(
                    path,
                    format!("cannot read prompt file {}: {e}", full.display()),
                );
                None
            }
        }
    }

    /// The release's parameters as JSON, and the ones that cannot be (name, problem).
    fn params(
        &mut self,
        params: toml::Table,
    ) -> (
        serde_json::Map<String, serde_json::Value>,
        Vec<(String, String)>,
    ) {
        let mut json = serde_json::Map::new();
        let mut problems = Vec::new();
        for (name, value) in params {
            match toml_to_json(value) {
                Ok(value) => {
                    json.insert(name, value);
                }
                Err(problem) => problems.push((name, problem.to_owned())),
            }
        }
        (json, problems)
    }

    fn shadow(
        &mut self,
        route: &str,
        value: Option<&Value<'a>>,
        upstream_timeout: Duration,
    ) -> ShadowConfig {
        let raw: raw::Shadow = self.optional_section(value, &["routes", route, "shadow"]);
        let key = |k| ["routes", route, "shadow", k];
        if raw.max_tokens_per_min == Some(0) {
            self.report(
                &key("max_tokens_per_min"),
                "must be greater than 0 (leave it out for no limit), got 0",
            );
        }
        ShadowConfig {
            max_inflight: self.checked(
                &key("max_inflight"),
                raw.max_inflight,
                64,
                |v| v >= 1,
                "must be at least 1",
            ),
            max_rps: self.checked(
                &key("max_rps"),
                raw.max_rps,
                20.0,
                |v| v > 0.0 && v.is_finite(),
                "must be greater than 0",
            ),
            max_tokens_per_min: raw.max_tokens_per_min,
            timeout: self.secs(&key("timeout_secs"), raw.timeout_secs, upstream_timeout),
        }
    }

    fn scoring(&mut self, route: &str, value: Option<&Value<'a>>) -> ScoringConfig {
        let raw: raw::Scoring = self.optional_section(value, &["routes", route, "scoring"]);
        let key = |k| ["routes", route, "scoring", k];
        let default = ScoringConfig::default();
        let weights = raw.weights.unwrap_or_default();
        let mut weight = |name: &'static str, value: Option<f64>, default: f64| {
            self.checked(
                &["routes", route, "scoring", "weights", name],
                value,
                default,
                |v: f64| v >= 0.0 && v.is_finite(),
                "must be a number >= 0",
            )
        };
        let weights = Weights {
            lexical: weight("lexical", weights.lexical, default.weights.lexical),
            structure: weight("structure", weights.structure, default.weights.structure),
            length: weight("length", weights.length, default.weights.length),
            refusal: weight("refusal", weights.refusal, default.weights.refusal),
        };
        if weights.lexical + weights.structure + weights.length + weights.refusal <= 0.0 {
            self.report(
                &key("weights"),
                "at least one weight must be greater than 0",
            );
        }
        ScoringConfig {
            noise_floor_share: self.checked(
                &key("noise_floor_share"),
                raw.noise_floor_share,
                default.noise_floor_share,
                |v| (0.0..=1.0).contains(&v),
                "must be between 0 and 1",
            ),
            weights,
            keep_worst: self.checked(
                &key("keep_worst"),
                raw.keep_worst,
                default.keep_worst,
                |v| v <= MAX_KEPT_SAMPLES,
                "must be at most 10000",
            ),
            keep_random: self.checked(
                &key("keep_random"),
                raw.keep_random,
                default.keep_random,
                |v| v <= MAX_KEPT_SAMPLES,
                "must be at most 10000",
            ),
            redact_requests: raw.redact_requests.unwrap_or(default.redact_requests),
        }
    }

    fn rollback(&mut self, route: &str, value: Option<&Value<'a>>) -> RollbackConfig {
        let raw: raw::Rollback = self.optional_section(value, &["routes", route, "rollback"]);
        let key = |k| ["routes", route, "rollback", k];
        let default = RollbackConfig::default();
        let window = self.checked(
            &key("window"),
            raw.window,
            default.window,
            |v| v >= 1,
            "must be at least 1",
        );
        RollbackConfig {
            threshold: self.checked(
                &key("threshold"),
                raw.threshold,
                default.threshold,
                |v| v > 0.0 && v <= 1.0,
                "must be greater than 0 and at most 1",
            ),
            window,
            min_samples: self.checked(
                &key("min_samples"),
                raw.min_samples,
                default.min_samples.min(window),
                |v| (1..=window).contains(&v),
                &format!("must be between 1 and window ({window})"),
            ),
            max_error_rate: self.checked(
                &key("max_error_rate"),
                raw.max_error_rate,
                default.max_error_rate,
                |v| (0.0..=1.0).contains(&v),
                "must be between 0 and 1",
            ),
            auto: raw.auto.unwrap_or(default.auto),
        }
    }

    // ---- helpers ----

    /// The root table `key` (upstreams, routes), which holds one table per name.
    fn named_tables(&mut self, value: &'a Value<'a>, key: &str) -> Option<&'a DeTable<'a>> {
        let table = value.get_ref().as_table();
        if table.is_none() {
            let got = value.get_ref().type_str();
            self.report(&[key], format!("must be a table, got {got}"));
        }
        table
    }

    /// Deserializes a table; reports the first type error or unknown key in it.
    fn section<T: DeserializeOwned>(&mut self, value: &Value<'a>, path: &[&str]) -> Option<T> {
        let Some(table) = value.get_ref().as_table() else {
            let got = value.get_ref().type_str();
            self.report(path, format!("must be a table, got {got}"));
            return None;
        };
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(section) => Some(section),
            Err(e) => {
                let mut key = path.to_vec();
                let line = match e.span() {
                    Some(span) => {
                        locate(table, span.start, &mut key);
                        Some(line_at(self.text, span.start))
                    }
                    None => self.line_of(path),
                };
                self.problems.push(ConfigError {
                    key: key.join("."),
                    line,
                    message: e.message().to_owned(),
                });
                None
            }
        }
    }

    /// [`Self::section`] for an optional table: defaults when absent or wrong (already reported).
    fn optional_section<T: DeserializeOwned + Default>(
        &mut self,
        value: Option<&Value<'a>>,
        path: &[&str],
    ) -> T {
        value
            .and_then(|value| self.section(value, path))
            .unwrap_or_default()
    }

    /// `value` if it passes `valid`, else reports `rule` and returns `default`.
    fn checked<T: Copy + fmt::Display>(
        &mut self,
        path: &[&str],
        value: Option<T>,
        default: T,
        valid: impl Fn(T) -> bool,
        rule: &str,
    ) -> T {
        match value {
            Some(value) if !valid(value) => {
                self.report(path, format!("{rule}, got {value}"));
                default
            }
            Some(value) => value,
            None => default,
        }
    }

    fn secs(&mut self, path: &[&str], secs: Option<u64>, default: Duration) -> Duration {
        let default = default.as_secs();
        Duration::from_secs(self.checked(path, secs, default, |v| v > 0, "must be greater than 0"))
    }

    fn socket_addr(
        &mut self,
        path: &[&str],
        addr: Option<String>,
        default: SocketAddr,
    ) -> SocketAddr {
        let Some(addr) = addr else { return default };
        addr.parse().unwrap_or_else(|_| {
            self.report(
                path,
                format!("must be an address like \"127.0.0.1:8080\", got {addr:?}"),
            );
            default
        })
    }

    /// A present, non-empty string; reports it otherwise.
    fn required_string(&mut self, path: &[&str], value: Option<String>) -> Option<String> {
        match value {
            Some(value) if !value.trim().is_empty() => Some(value),
            Some(_) => {
                self.report(path, "must not be empty");
                None
            }
            None => {
                self.report(path, "is required");
                None
            }
        }
    }

    /// An environment variable name, if given; reports it when it does not look like one.
    fn env_name(&mut self, path: &[&str], name: Option<String>) -> Option<String> {
        let name = name?;
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            return Some(name);
        }
        self.report(
            path,
            format!(
                "must be an environment variable name (letters, digits and '_', not starting \
                 with a digit), got {name:?}"
            ),
        );
        None
    }

    fn report(&mut self, path: &[&str], message: impl Into<String>) {
        self.problems.push(ConfigError {
            key: path.join("."),
            line: self.line_of(path),
            message: message.into(),
        });
    }

    /// The line of the key at `path`, or of its nearest existing parent.
    fn line_of(&self, path: &[&str]) -> Option<usize> {
        let mut table = Some(self.doc);
        let mut found = None;
        for segment in path {
            let Some((key, value)) = table.and_then(|t| t.get_key_value(*segment)) else {
                break;
            };
            found = Some(key.span().start);
            table = value.get_ref().as_table();
        }
        found.map(|offset| line_at(self.text, offset))
    }
}

/// The certificates of the PEM file at `path`: at least one, each usable as a trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read CA file {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            let why = match e {
                pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
                pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".to_owned(),
                other => other.to_string(),
            };
            format!("{shown} is not valid PEM: {why}")
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" sections)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        if roots.add(CertificateDer::from(cert.as_ref())).is_err() {
            let n = i + 1;
            return Err(format!(
                "certificate {n} of {shown} is not a valid X.509 certificate"
            ));
        }
    }
    Ok(certs)
}

/// Appends to `path` the keys leading to the key or value at byte `offset`, if any.
fn locate<'t>(table: &'t DeTable<'_>, offset: usize, path: &mut Vec<&'t str>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref());
        if let Some(inner) = value.get_ref().as_table() {
            if locate(inner, offset, path) {
                return true;
            }
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return true;
        }
        path.pop();
    }
    false
}

/// 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    let before = bytes.get(..offset).unwrap_or(bytes);
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// A TOML value as JSON; TOML dates and non-finite floats have no JSON form.
fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, &'static str> {
    Ok(match value {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or("nan and inf cannot be sent as JSON")?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(_) => {
            return Err("TOML dates and times cannot be sent as JSON: write it as a string")
        }
        toml::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => serde_json::Value::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(v)?)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    const PROMPT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prompts/support-v4.txt");
    /// Appended to cases that are not about upstreams, after their last line.
    const UPSTREAM: &str = "\n[upstreams.openai]\nbase_url = \"https://api.openai.com\"\n";

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, Path::new(BASE_DIR))
    }

    /// `text` yields exactly the `expected` problems, in order; each is a prefix of one.
    fn check(text: &str, expected: &[&str]) {
        let got: Vec<String> = match parse(text) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        };
        let matches =
            got.len() == expected.len() && got.iter().zip(expected).all(|(g, e)| g.starts_with(e));
        assert!(
            matches,
            "for:\n{text}\nexpected {expected:#?}\ngot {got:#?}"
        );
    }

    /// A route `r` whose line 3 is `top` and whose `rest` starts on line 7.
    fn route(top: &str, rest: &str) -> String {
        format!(
            "[routes.r]\nmodel = \"r\"\n{top}\n[routes.r.stable]\nupstream = \"openai\"\n\
             model = \"gpt-4o-2024-08-06\"\n{rest}{UPSTREAM}"
        )
    }

    const CONTRACT_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 10485760
upstream_timeout_secs = 300

[admin]
listen = "127.0.0.1:8081"
token_env = "UNDERSTUDY_ADMIN_TOKEN"   # required for every mutating call

[store]
path = "data/understudy.db"             # embedded default; created on first start

[upstreams.openai]
base_url = "https://api.openai.com"
api_key_env = "OPENAI_API_KEY"          # if set, replaces the client's credentials
default = true                          # unmatched requests go here

[upstreams.anthropic]
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"

[routes.support-bot]
model = "support-bot"                   # the alias applications send as `model`
phase = "shadow"
share = 0.05
sticky_key = "header:x-user-id"         # or "body:user"; absent = random

[routes.support-bot.stable]
label = "v3"
upstream = "openai"
model = "gpt-4o-2024-08-06"
system_prompt = "You are a concise support assistant."
params = { temperature = 0.2 }

[routes.support-bot.candidate]
label = "v4"
upstream = "openai"
model = "gpt-4o-2024-11-20"
system_prompt = "You are a concise and friendly support assistant."

[routes.support-bot.shadow]
max_inflight = 64                       # concurrent mirrored requests; past it: dropped_busy
max_rps = 20                            # mirrored requests per second; past it: dropped_budget

[routes.support-bot.scoring]
noise_floor_share = 0.02                # share of samples also re-sent to stable
weights = { lexical = 0.4, structure = 0.3, length = 0.1, refusal = 0.2 }

[routes.support-bot.rollback]
threshold = 0.80                        # quality below this rolls back
window = 200
min_samples = 30
max_error_rate = 0.05
auto = true                             # false: alert-only, rollback only by alert or admin
"#;

    #[test]
    fn contract_example_parses_to_expected_values() {
        let config = parse(CONTRACT_EXAMPLE).unwrap();
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.admin, AdminConfig::default());
        assert_eq!(
            config.store.path,
            Path::new(BASE_DIR).join("data/understudy.db")
        );
        assert_eq!(config.default_upstream, "openai");

        let openai = &config.upstreams["openai"];
        assert_eq!(openai.base_url.to_string(), "https://api.openai.com/");
        assert_eq!(openai.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert!(openai.default);
        assert_eq!(openai.api, ApiFlavor::OpenAi);
        let anthropic = &config.upstreams["anthropic"];
        assert_eq!(anthropic.api, ApiFlavor::Anthropic);
        assert!(!anthropic.default);

        let route = &config.routes["support-bot"];
        assert_eq!(route.name, "support-bot");
        assert_eq!(route.model, "support-bot");
        assert_eq!(route.phase, Phase::Shadow);
        assert_eq!(route.share, 0.05);
        assert_eq!(
            route.sticky_key,
            Some(StickyKey::Header(HeaderName::from_static("x-user-id")))
        );
        let stable = &route.stable;
        assert_eq!(stable.label.as_deref(), Some("v3"));
        assert_eq!(stable.upstream, "openai");
        assert_eq!(stable.model, "gpt-4o-2024-08-06");
        assert_eq!(
            stable.system_prompt.as_deref(),
            Some("You are a concise support assistant.")
        );
        assert_eq!(
            serde_json::Value::Object(stable.params.clone()),
            serde_json::json!({ "temperature": 0.2 })
        );
        assert_eq!(stable.prices, None);
        let candidate = route.candidate.as_ref().unwrap();
        assert_eq!(candidate.label.as_deref(), Some("v4"));
        assert_eq!(candidate.model, "gpt-4o-2024-11-20");
        assert!(candidate.params.is_empty());

        assert_eq!(
            route.shadow,
            ShadowConfig {
                max_inflight: 64,
                max_rps: 20.0,
                max_tokens_per_min: None,
                timeout: Duration::from_secs(300),
            }
        );
        assert_eq!(route.scoring, ScoringConfig::default());
        assert_eq!(route.rollback, RollbackConfig::default());
    }

    #[test]
    fn delivered_example_config_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/understudy.toml"
        ));
        let config = Config::load(path).unwrap();
        let route = &config.routes["support-bot"];
        let prompt = std::fs::read_to_string(PROMPT_FILE).unwrap();
        let candidate = route.candidate.as_ref().unwrap();
        assert_eq!(candidate.system_prompt.as_deref(), Some(prompt.trim_end()));
        assert_eq!(
            candidate.prices,
            Some(Prices {
                prompt_per_mtok: 2.5,
                completion_per_mtok: 10.0
            })
        );
        assert_eq!(route.shadow.timeout, Duration::from_secs(120));
        assert_eq!(
            config.store.path,
            Path::new(BASE_DIR).join("data/understudy.db")
        );
        assert_eq!(config.default_upstream, "openai");
    }

    #[test]
    fn defaults_fill_in() {
        let config = parse(
            "[server]\nupstream_timeout_secs = 60\n\
             [upstreams.local]\nbase_url = \"http://localhost:11434/v1/\"\n\
             [routes.r]\nmodel = \"r\"\n\
             [routes.r.stable]\nupstream = \"local\"\nmodel = \"llama3.1:8b\"\n\
             [routes.r.scoring]\nweights = { refusal = 0.5 }\n",
        )
        .unwrap();
        assert_eq!(
            config.server,
            ServerConfig {
                upstream_timeout: Duration::from_secs(60),
                ..ServerConfig::default()
            }
        );
        assert_eq!(config.admin, AdminConfig::default());
        assert_eq!(config.admin.token_env, "UNDERSTUDY_ADMIN_TOKEN");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.max_body_bytes, 10_485_760);
        assert_eq!(
            config.store.path,
            Path::new(BASE_DIR).join("data/understudy.db")
        );
        // The only upstream is the default even if not marked.
        assert_eq!(config.default_upstream, "local");
        let local = &config.upstreams["local"];
        assert!(local.default);
        assert_eq!(local.api_key_env, None);
        assert_eq!(local.api, ApiFlavor::OpenAi);
        assert_eq!(local.base_url.path(), "/v1");

        let route = &config.routes["r"];
        assert_eq!(route.phase, Phase::Stable);
        assert_eq!(route.share, 0.05);
        assert_eq!(route.sticky_key, None);
        assert_eq!(route.candidate, None);
        assert_eq!(route.stable.label, None);
        assert_eq!(route.stable.system_prompt, None);
        assert_eq!(route.stable.prices, None);
        assert!(route.stable.params.is_empty());
        assert_eq!(
            route.shadow,
            ShadowConfig {
                max_inflight: 64,
                max_rps: 20.0,
                max_tokens_per_min: None,
                timeout: Duration::from_secs(60),
            }
        );
        assert_eq!(
            route.scoring,
            ScoringConfig {
                noise_floor_share: 0.02,
                weights: Weights {
                    lexical: 0.4,
                    structure: 0.3,
                    length: 0.1,
                    refusal: 0.5
                },
                keep_worst: 20,
                keep_random: 50,
                redact_requests: false,
            }
        );
        assert_eq!(
            route.rollback,
            RollbackConfig {
                threshold: 0.8,
                window: 200,
                min_samples: 30,
                max_error_rate: 0.05,
                auto: true,
            }
        );
    }

    #[test]
    fn relative_prompt_file_is_resolved_against_base_dir() {
        let text = route(
            "phase = \"canary\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"gpt-4o-2024-11-20\"\n\
             system_prompt_file = \"prompts/support-v4.txt\"\n",
        );
        let config = parse(&text).unwrap();
        let prompt = std::fs::read_to_string(PROMPT_FILE).unwrap();
        let candidate = config.routes["r"].candidate.clone().unwrap();
        assert_eq!(candidate.system_prompt.as_deref(), Some(prompt.trim_end()));
        // The same text from another directory does not find the file.
        let problems = Config::parse(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "routes.r.candidate.system_prompt_file");
        assert_eq!(problems[0].line, Some(10));
        assert!(problems[0].message.contains("prompts/support-v4.txt"));
    }

    #[test]
    fn valid_variants_parse() {
        for text in [
            route("phase = \"promoted\"\nshare = 1", "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"o3-2025-04-16\"\n"),
            route("sticky_key = \"body:user\"\nshare = 0", ""),
            route("", "[routes.r.rollback]\nthreshold = 1\nwindow = 1\nmin_samples = 1\nmax_error_rate = 0\n"),
            route("", "[routes.r.scoring]\nweights = { lexical = 0, structure = 0, length = 0 }\nkeep_worst = 10000\nkeep_random = 0\n"),
            route("", "[routes.r.shadow]\nmax_tokens_per_min = 100000\nmax_rps = 0.5\nmax_inflight = 1\n"),
        ] {
            check(&text, &[]);
        }
    }

    #[test]
    fn base_url_and_api_flavor() {
        let cases = [
            (
                "https://api.openai.com",
                "",
                "https://api.openai.com/",
                ApiFlavor::OpenAi,
            ),
            (
                "https://api.anthropic.com/",
                "",
                "https://api.anthropic.com/",
                ApiFlavor::Anthropic,
            ),
            (
                "http://localhost:8000/proxy/v1//",
                "",
                "http://localhost:8000/proxy/v1",
                ApiFlavor::OpenAi,
            ),
            (
                "https://gw.example.com/anthropic",
                "",
                "https://gw.example.com/anthropic",
                ApiFlavor::OpenAi,
            ),
            (
                "https://gw.example.com/a",
                "api = \"anthropic\"",
                "https://gw.example.com/a",
                ApiFlavor::Anthropic,
            ),
            (
                "https://my-anthropic-proxy.local",
                "api = \"openai\"",
                "https://my-anthropic-proxy.local/",
                ApiFlavor::OpenAi,
            ),
        ];
        for (url, extra, expected_url, expected_api) in cases {
            let config = parse(&format!("[upstreams.u]\nbase_url = \"{url}\"\n{extra}\n")).unwrap();
            let upstream = &config.upstreams["u"];
            assert_eq!(upstream.base_url.to_string(), expected_url, "{url}");
            assert_eq!(upstream.api, expected_api, "{url}");
        }
    }

    #[test]
    fn params_convert_to_json() {
        let text = route(
            "",
            "[routes.r.stable.params]\ntemperature = 0.2\nmax_tokens = 800\nstop = [\"\\n\\n\", \"END\"]\n\
             response_format = { type = \"json_object\" }\nlogprobs = true\n",
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            serde_json::Value::Object(config.routes["r"].stable.params.clone()),
            serde_json::json!({
                "temperature": 0.2,
                "max_tokens": 800,
                "stop": ["\n\n", "END"],
                "response_format": { "type": "json_object" },
                "logprobs": true,
            })
        );
    }

    #[test]
    fn sticky_header_is_lower_cased() {
        let config = parse(&route("sticky_key = \"header:X-User-Id\"", "")).unwrap();
        assert_eq!(
            config.routes["r"].sticky_key,
            Some(StickyKey::Header(HeaderName::from_static("x-user-id")))
        );
    }

    #[test]
    fn syntax_errors_stop_with_their_line() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[server]\nlisten = \"x\"\nlisten = \"y\"\n",
                &["line 3: invalid TOML: duplicate key"],
            ),
            (
                "[routes.r]\nmodel = \"r\"\n[routes.r]\n",
                &["line 3: invalid TOML: duplicate key"],
            ),
            (
                "[server]\nlisten = \n",
                &["line 2: invalid TOML: string values must be quoted"],
            ),
            (
                "[admin]\ntoken_env = \"\"\n\n[store\n",
                &["line 4: invalid TOML: unclosed table"],
            ),
        ];
        for (text, expected) in cases {
            check(text, expected);
        }
    }

    #[test]
    fn server_admin_store_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("[server]\nlisten = \"nope\"", &["line 2: server.listen: must be an address like \"127.0.0.1:8080\", got \"nope\""]),
            ("[server]\nlisten = 8080", &["line 2: server.listen: invalid type: integer `8080`, expected a string"]),
            ("[server]\nmax_body_bytes = 0", &["line 2: server.max_body_bytes: must be greater than 0, got 0"]),
            ("[server]\nmax_body_bytes = -1", &["line 2: server.max_body_bytes: invalid value: integer `-1`"]),
            (
                "[server]\nupstream_timeout_secs = 0\nconnect_timeout_secs = 0\nshutdown_grace_secs = 0",
                &[
                    "line 2: server.upstream_timeout_secs: must be greater than 0, got 0",
                    "line 3: server.connect_timeout_secs: must be greater than 0, got 0",
                    "line 4: server.shutdown_grace_secs: must be greater than 0, got 0",
                ],
            ),
            ("[server]\nworkers = 0", &["line 2: server.workers: must be between 1 and 1024, got 0"]),
            ("[server]\nworkers = 2000", &["line 2: server.workers: must be between 1 and 1024, got 2000"]),
            ("[server]\nlisten = \"127.0.0.1:1\"\nport = 1", &["line 3: server.port: unknown field `port`"]),
            ("server = 5", &["line 1: server: must be a table, got integer"]),
            ("[serverr]\nlisten = \"x\"", &["line 1: serverr: unknown key, expected one of server, admin"]),
            ("\n[admin]\nlisten = \"localhost\"", &["line 3: admin.listen: must be an address like"]),
            ("[admin]\ntoken_env = \"1TOKEN\"", &["line 2: admin.token_env: must be an environment variable name"]),
            ("[admin]\ntoken_env = \"\"", &["line 2: admin.token_env: must be an environment variable name"]),
            ("[store]\npath = \"\"", &["line 2: store.path: must not be empty"]),
        ];
        for (text, expected) in cases {
            check(&format!("{text}{UPSTREAM}"), expected);
        }
    }

    #[test]
    fn upstream_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["upstreams: at least one upstream is required"]),
            ("upstreams = {}", &["line 1: upstreams: at least one upstream is required"]),
            ("upstreams = 5", &["line 1: upstreams: must be a table, got integer"]),
            ("[upstreams]\na = 5", &["line 2: upstreams.a: must be a table, got integer"]),
            ("[upstreams.a]\napi_key_env = \"A\"", &["line 1: upstreams.a.base_url: is required"]),
            ("[upstreams.a]\nbase_url = \"ftp://x\"", &["line 2: upstreams.a.base_url: must start with http:// or https://"]),
            ("[upstreams.a]\nbase_url = \"api.openai.com\"", &["line 2: upstreams.a.base_url: must start with http:// or https://"]),
            ("[upstreams.a]\nbase_url = \"https://x/v1?k=1\"", &["line 2: upstreams.a.base_url: must not have a query string"]),
            ("[upstreams.a]\nbase_url = \"http://:80/v1\"", &["line 2: upstreams.a.base_url: must have a host"]),
            ("[upstreams.a]\nbase_url = \"https://exa mple.com\"", &["line 2: upstreams.a.base_url: invalid URL"]),
            ("[upstreams.a]\nbase_url = \"https://a\"\napi_key_env = \"MY-KEY\"", &["line 3: upstreams.a.api_key_env: must be an environment variable name"]),
            ("[upstreams.a]\nbase_url = \"https://a\"\napi_key_env = \"\"", &["line 3: upstreams.a.api_key_env: must be an environment variable name"]),
            ("[upstreams.a]\nbase_url = \"https://a\"\napi = \"gemini\"", &["line 3: upstreams.a.api: unknown variant `gemini`, expected `openai` or `anthropic`"]),
            ("[upstreams.a]\nbase_url = \"https://a\"\ndefault = \"yes\"", &["line 3: upstreams.a.default: invalid type: string \"yes\", expected a boolean"]),
            (
                "[upstreams.a]\nbase_url = \"https://a\"\n[upstreams.b]\nbase_url = \"https://b\"",
                &["line 1: upstreams: no upstream has default = true"],
            ),
            (
                "[upstreams.a]\nbase_url = \"https://a\"\ndefault = true\n\
                 [upstreams.b]\nbase_url = \"https://b\"\ndefault = true\n\
                 [upstreams.c]\nbase_url = \"https://c\"",
                &[
                    "line 3: upstreams.a.default: only one upstream can have default = true, but a, b do",
                    "line 6: upstreams.b.default: only one upstream can have default = true, but a, b do",
                ],
            ),
        ];
        for (text, expected) in cases {
            check(text, expected);
        }
    }

    /// A self-signed certificate in PEM, and its DER.
    fn test_cert(name: &str) -> (String, CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (certified.cert.pem(), certified.cert.der().clone())
    }

    #[test]
    fn ca_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, _) = test_cert("ca.test");
        let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let unended = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n";
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        // (base_url, file contents (None: no file), expected problem after the file's path)
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                "https://gw",
                None,
                "cannot read CA file {FILE}: No such file",
            ),
            ("https://gw", Some(""), "{FILE} holds no certificate"),
            (
                "https://gw",
                Some("just text\n"),
                "{FILE} holds no certificate",
            ),
            ("https://gw", Some(&key_pem), "{FILE} holds no certificate"),
            (
                "https://gw",
                Some(unended),
                "{FILE} is not valid PEM: a section has no END line",
            ),
            (
                "https://gw",
                Some(bad_base64),
                "{FILE} is not valid PEM: base64 decode error",
            ),
            (
                "https://gw",
                Some(not_der),
                "certificate 1 of {FILE} is not a valid X.509 certificate",
            ),
            (
                "http://gw",
                Some(&ca_pem),
                "only for https upstreams, but base_url is http://",
            ),
        ];
        for (i, (url, contents, expected)) in cases.iter().enumerate() {
            let file = dir.path().join(format!("ca{i}.pem"));
            if let Some(contents) = contents {
                std::fs::write(&file, contents).unwrap();
            }
            let file = file.to_str().unwrap();
            let text = format!("\n[upstreams.gw]\nbase_url = \"{url}\"\nca_file = \"{file}\"\n");
            let expected = format!(
                "line 4: upstreams.gw.ca_file: {}",
                expected.replace("{FILE}", file)
            );
            check(&text, &[&expected]);
        }
    }

    #[test]
    fn ca_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let (first_pem, first) = test_cert("ca-one.test");
        let (second_pem, second) = test_cert("ca-two.test");
        let bundle = format!("# internal CAs\n{first_pem}\n{second_pem}");
        std::fs::write(dir.path().join("cas.pem"), bundle).unwrap();
        let text = "[upstreams.gw]\nbase_url = \"https://gw.internal\"\nca_file = \"cas.pem\"\n";
        let config = Config::parse(text, dir.path()).unwrap();
        let ca = config.upstreams["gw"].ca_file.as_ref().unwrap();
        assert_eq!(ca.path, dir.path().join("cas.pem"));
        assert_eq!(ca.certs, [first, second]);
        let plain = parse("[upstreams.gw]\nbase_url = \"https://gw.internal\"\n").unwrap();
        assert_eq!(plain.upstreams["gw"].ca_file, None);
    }

    #[test]
    fn route_rules() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("share = 1.5", "", &["line 3: routes.r.share: must be between 0 and 1, got 1.5"]),
            ("share = -0.1", "", &["line 3: routes.r.share: must be between 0 and 1, got -0.1"]),
            ("share = \"half\"", "", &["line 3: routes.r.share: invalid type: string \"half\", expected f64"]),
            ("phase = \"live\"", "", &["line 3: routes.r.phase: unknown phase \"live\": expected one of stable"]),
            ("phase = \"shadow\"", "", &["line 1: routes.r.candidate: phase \"shadow\" needs a candidate"]),
            ("phase = \"promoted\"", "", &["line 1: routes.r.candidate: phase \"promoted\" needs a candidate"]),
            (
                "phase = \"stable\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"gpt-4o-2024-11-20\"\n",
                &["line 3: routes.r.phase: phase is \"stable\" but a candidate is configured: set phase = \"shadow\""],
            ),
            (
                "",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"gpt-4o-2024-11-20\"\n",
                &["line 1: routes.r.phase: phase is \"stable\" but a candidate is configured"],
            ),
            ("sticky_key = \"cookie:x\"", "", &["line 3: routes.r.sticky_key: must be \"header:NAME\" or \"body:FIELD\", got \"cookie:x\""]),
            ("sticky_key = \"header:bad header\"", "", &["line 3: routes.r.sticky_key: \"bad header\" is not a valid header name"]),
            ("sticky_key = \"header:\"", "", &["line 3: routes.r.sticky_key: \"\" is not a valid header name"]),
            ("sticky_key = \"body:\"", "", &["line 3: routes.r.sticky_key: \"body:\" needs a field name"]),
            ("modle = \"r2\"", "", &["line 3: routes.r.modle: unknown field `modle`"]),
            ("stable = 5", "", &["line 4: invalid TOML: duplicate key"]),
            // A bad top-level key does not hide a problem in a sub-table.
            ("shar = 0.5", "[routes.r.shadow]\nmax_rps = 0\n", &[
                "line 3: routes.r.shar: unknown field `shar`",
                "line 8: routes.r.shadow.max_rps: must be greater than 0, got 0",
            ]),
            // Releases, tested on the candidate (its table starts on line 7).
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"nope\"\nmodel = \"gpt-4o-latest\"\n",
                &[
                    "line 8: routes.r.candidate.upstream: unknown upstream \"nope\" (configured: openai)",
                    "line 9: routes.r.candidate.model: \"gpt-4o-latest\" is not pinned: use a dated version",
                ],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nlabel = \"v4\"\n",
                &[
                    "line 7: routes.r.candidate.upstream: is required",
                    "line 7: routes.r.candidate.model: is required",
                ],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"\"\n",
                &["line 9: routes.r.candidate.model: must not be empty"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"claude-3-5-sonnet-LATEST\"\n",
                &["line 9: routes.r.candidate.model: \"claude-3-5-sonnet-LATEST\" is not pinned"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 system_prompt = \"a\"\nsystem_prompt_file = \"prompts/support-v4.txt\"\n",
                &["line 11: routes.r.candidate.system_prompt_file: cannot be combined with system_prompt"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 system_prompt_file = \"prompts/missing.txt\"\n",
                &["line 10: routes.r.candidate.system_prompt_file: cannot read prompt file"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 params = { model = \"x\", stream = true, messages = [], when = 1979-05-27, temperature = 0.2 }\n",
                &[
                    "line 10: routes.r.candidate.params.messages: is set by the proxy",
                    "line 10: routes.r.candidate.params.model: is set by the proxy",
                    "line 10: routes.r.candidate.params.stream: is set by the proxy",
                    "line 10: routes.r.candidate.params.when: TOML dates and times cannot be sent as JSON",
                ],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 params = { logit_bias = { x = nan } }\n",
                &["line 10: routes.r.candidate.params.logit_bias: nan and inf cannot be sent as JSON"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 params = \"temperature=0\"\n",
                &["line 10: routes.r.candidate.params: invalid type: string \"temperature=0\""],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 prices = { prompt_per_mtok = -1, completion_per_mtok = 1 }\n",
                &["line 10: routes.r.candidate.prices.prompt_per_mtok: must be a number >= 0, got -1"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 prices = { prompt_per_mtok = 1 }\n",
                &["line 10: routes.r.candidate.prices: missing field `completion_per_mtok`"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
                 prices = { prompt_per_mtok = 1, completion_per_mtok = 1, currency = \"EUR\" }\n",
                &["line 10: routes.r.candidate.prices.currency: unknown field `currency`"],
            ),
            (
                "phase = \"shadow\"",
                "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\ntemperature = 0.2\n",
                &["line 10: routes.r.candidate.temperature: unknown field `temperature`"],
            ),
            (
                "phase = \"shadow\"\ncandidate = 5",
                "",
                &["line 4: routes.r.candidate: must be a table, got integer"],
            ),
            // Shadow limits.
            (
                "",
                "[routes.r.shadow]\nmax_inflight = 0\nmax_rps = 0\nmax_tokens_per_min = 0\ntimeout_secs = 0\n",
                &[
                    "line 8: routes.r.shadow.max_inflight: must be at least 1, got 0",
                    "line 9: routes.r.shadow.max_rps: must be greater than 0, got 0",
                    "line 10: routes.r.shadow.max_tokens_per_min: must be greater than 0",
                    "line 11: routes.r.shadow.timeout_secs: must be greater than 0, got 0",
                ],
            ),
            ("", "[routes.r.shadow]\nmax_rps = inf\n", &["line 8: routes.r.shadow.max_rps: must be greater than 0, got inf"]),
            ("", "[routes.r.shadow]\nmax_inflight = -3\n", &["line 8: routes.r.shadow.max_inflight: invalid value: integer `-3`"]),
            // Scoring.
            (
                "",
                "[routes.r.scoring]\nnoise_floor_share = 2\nkeep_worst = 10001\nkeep_random = 20000\n",
                &[
                    "line 8: routes.r.scoring.noise_floor_share: must be between 0 and 1, got 2",
                    "line 9: routes.r.scoring.keep_worst: must be at most 10000, got 10001",
                    "line 10: routes.r.scoring.keep_random: must be at most 10000, got 20000",
                ],
            ),
            (
                "",
                "[routes.r.scoring]\nweights = { lexical = -1, structure = 0, length = 0, refusal = 0 }\n",
                &["line 8: routes.r.scoring.weights.lexical: must be a number >= 0, got -1"],
            ),
            (
                "",
                "[routes.r.scoring]\nweights = { lexical = 0, structure = 0, length = 0, refusal = 0 }\n",
                &["line 8: routes.r.scoring.weights: at least one weight must be greater than 0"],
            ),
            (
                "",
                "[routes.r.scoring]\nredact_requests = true\nweights = { lexicon = 1 }\n",
                &["line 9: routes.r.scoring.weights.lexicon: unknown field `lexicon`"],
            ),
            // Rollback.
            (
                "",
                "[routes.r.rollback]\nthreshold = 0\nwindow = 0\nmin_samples = 0\nmax_error_rate = 1.5\n",
                &[
                    "line 8: routes.r.rollback.threshold: must be greater than 0 and at most 1, got 0",
                    "line 9: routes.r.rollback.window: must be at least 1, got 0",
                    "line 10: routes.r.rollback.min_samples: must be between 1 and window",
                    "line 11: routes.r.rollback.max_error_rate: must be between 0 and 1, got 1.5",
                ],
            ),
            ("", "[routes.r.rollback]\nthreshold = 1.01\n", &["line 8: routes.r.rollback.threshold: must be greater than 0 and at most 1"]),
            ("", "[routes.r.rollback]\nwindow = 10\nmin_samples = 11\n", &["line 9: routes.r.rollback.min_samples: must be between 1 and window (10), got 11"]),
            ("", "[routes.r.rollback]\nmax_error_rate = -0.5\n", &["line 8: routes.r.rollback.max_error_rate: must be between 0 and 1, got -0.5"]),
            ("", "[routes.r.rollback]\ntreshold = 0.5\n", &["line 8: routes.r.rollback.treshold: unknown field `treshold`, expected one of `threshold`"]),
            ("", "[routes.r.rollback]\nauto = \"yes\"\n", &["line 8: routes.r.rollback.auto: invalid type: string \"yes\", expected a boolean"]),
            ("", "[routes.r.rollback]\nwindow = 2.5\n", &["line 8: routes.r.rollback.window: invalid type: floating point `2.5`"]),
            ("", "[routes.r]\n", &["line 7: invalid TOML: duplicate key"]),
        ];
        for (top, rest, expected) in cases {
            check(&route(top, rest), expected);
        }
    }

    #[test]
    fn route_table_rules() {
        let stable = "upstream = \"openai\"\nmodel = \"gpt-4o-2024-08-06\"";
        let cases: Vec<(String, &[&str])> = vec![
            ("routes = []".to_owned(), &["line 1: routes: must be a table, got array"]),
            ("[routes]\nr = 1".to_owned(), &["line 2: routes.r: must be a table, got integer"]),
            ("[routes.r]\nmodel = \"r\"".to_owned(), &["line 1: routes.r.stable: is required"]),
            (
                format!("[routes.r]\nstable = {{ {} }}", stable.replace('\n', ", ")),
                &["line 1: routes.r.model: is required"],
            ),
            (
                format!("[routes.r]\nmodel = \"\"\n[routes.r.stable]\n{stable}"),
                &["line 2: routes.r.model: must not be empty"],
            ),
            (
                "[routes.r]\nmodel = \"r\"\n[routes.r.stable]\nupstream = \"azure\"\nmodel = \"gpt-4o-2024-08-06\"".to_owned(),
                &["line 4: routes.r.stable.upstream: unknown upstream \"azure\" (configured: openai)"],
            ),
            (
                format!("[routes.\"support bot\"]\nmodel = \"r\"\n[routes.\"support bot\".stable]\n{stable}"),
                &["line 1: routes.support bot: route name \"support bot\" must be non-empty and use only letters"],
            ),
            (
                format!("[routes.\"\"]\nmodel = \"r\"\n[routes.\"\".stable]\n{stable}"),
                &["line 1: routes.: route name \"\" must be non-empty"],
            ),
            (
                format!(
                    "[routes.a]\nmodel = \"bot\"\n[routes.a.stable]\n{stable}\n\
                     [routes.b]\nmodel = \"bot\"\n[routes.b.stable]\n{stable}"
                ),
                &["line 7: routes.b.model: alias \"bot\" is already used by route \"a\""],
            ),
        ];
        for (text, expected) in cases {
            check(&format!("{text}{UPSTREAM}"), expected);
        }
    }

    #[test]
    fn every_problem_in_every_section_is_reported() {
        let text = r#"[server]
listen = "0.0.0.0"
max_body_bytes = 0

[admin]
token_env = "admin token"

[store]
pth = "x.db"

[upstreams.openai]
base_url = "https://api.openai.com"
default = true

[upstreams.anthropic]
base_url = "api.anthropic.com"
default = true
api_key_env = "ANTHROPIC_API_KEY"

[routes.support-bot]
model = "support-bot"
phase = "canary"
share = 1.5

[routes.support-bot.stable]
upstream = "openia"
model = "gpt-4o-latest"

[routes.support-bot.candidate]
upstream = "anthropic"
model = "claude-sonnet-4-20250514"
params = { stream = true }

[routes.support-bot.rollback]
treshold = 0.5

[routes.faq]
model = "support-bot"
phase = "shadow"

[routes.faq.stable]
upstream = "openai"
model = "gpt-4o-mini-2024-07-18"

[routes.faq.scoring]
keep_worst = 100000
"#;
        check(
            text,
            &[
                "line 2: server.listen: must be an address",
                "line 3: server.max_body_bytes: must be greater than 0, got 0",
                "line 6: admin.token_env: must be an environment variable name",
                "line 9: store.pth: unknown field `pth`",
                "line 13: upstreams.openai.default: only one upstream can have default = true, but anthropic, openai do",
                "line 16: upstreams.anthropic.base_url: must start with http:// or https://",
                "line 17: upstreams.anthropic.default: only one upstream can have default = true, but anthropic, openai do",
                "line 23: routes.support-bot.share: must be between 0 and 1, got 1.5",
                "line 26: routes.support-bot.stable.upstream: unknown upstream \"openia\" (configured: anthropic, openai)",
                "line 27: routes.support-bot.stable.model: \"gpt-4o-latest\" is not pinned",
                "line 32: routes.support-bot.candidate.params.stream: is set by the proxy",
                "line 35: routes.support-bot.rollback.treshold: unknown field `treshold`",
                "line 37: routes.faq.candidate: phase \"shadow\" needs a candidate",
                "line 38: routes.faq.model: alias \"support-bot\" is already used by route \"support-bot\"",
                "line 46: routes.faq.scoring.keep_worst: must be at most 10000, got 100000",
            ],
        );
    }

    #[test]
    fn error_display() {
        let with_line = ConfigError {
            key: "routes.support-bot.share".into(),
            line: Some(12),
            message: "must be between 0 and 1, got 1.5".into(),
        };
        assert_eq!(
            with_line.to_string(),
            "line 12: routes.support-bot.share: must be between 0 and 1, got 1.5"
        );
        let without_line = ConfigError {
            key: "upstreams".into(),
            line: None,
            message: "at least one upstream is required".into(),
        };
        assert_eq!(
            without_line.to_string(),
            "upstreams: at least one upstream is required"
        );
        let invalid = LoadError::Invalid {
            path: PathBuf::from("config/understudy.toml"),
            problems: vec![without_line, with_line],
        };
        assert_eq!(
            invalid.to_string(),
            "config/understudy.toml: 2 problem(s):\n  upstreams: at least one upstream is required\n  \
             line 12: routes.support-bot.share: must be between 0 and 1, got 1.5"
        );
        let missing = Config::load(Path::new("/nonexistent/understudy.toml")).unwrap_err();
        assert!(matches!(missing, LoadError::Read { .. }));
        assert!(missing
            .to_string()
            .starts_with("cannot read /nonexistent/understudy.toml: "));
    }
}
