//! Configuration: the TOML file parsed strictly and validated once into runtime types.
//!
//! Each section (server, admin, store, each upstream, each route and each of its sub-tables)
//! is deserialized separately, so one bad section does not hide problems in another; then
//! the semantic rules are checked. Every problem is collected with its key path and line.
//!
//! Layout (private modules; dependencies point down this list, except that `check` builds
//! this file's [`Config`] and [`ConfigError`]):
//!
//! - this file: [`Config`] with [`Config::load`] and [`Config::parse`], the errors, and the
//!   re-exports of the runtime types;
//! - `check`: the checker, one file per root table (`server`, `upstreams`, `routes`) over
//!   the helpers they share;
//! - `raw`: the file as written, every key optional;
//! - `types`: the validated runtime types.

mod check;
mod postgres;
mod raw;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use check::{line_at, Checker};
pub use postgres::{parse_postgres_url, postgres_url_problem, PostgresUrl, SslMode};
pub use types::*;

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
    /// How log lines are written.
    pub log: LogConfig,
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
