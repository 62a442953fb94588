//! The checker: walks the parsed document section by section, building the runtime types and
//! collecting every problem with its key path and line. One file per root table, each adding
//! its own `impl Checker` block:
//!
//! - `server`: `[server]`, `[admin]`, `[store]` and `[log]`;
//! - `upstreams`: `[upstreams.NAME]`, their base URL and CA file;
//! - `routes`: `[routes.NAME]` and its tables: `stable` and `candidate` (the releases),
//!   `shadow`, `scoring` and `rollback`;
//! - `rollout`: `[routes.NAME.rollout]`, the steps of an automatic rollout.
//!
//! This file holds the [`Checker`] itself, the walk of the root table, and the helpers the
//! sections share: deserializing a section, reporting a problem at its key's line, checking
//! a value against a rule.

mod rollout;
mod routes;
mod server;
mod upstreams;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::{Config, ConfigError};

const ROOT_KEYS: [&str; 6] = ["server", "admin", "store", "upstreams", "routes", "log"];

type Value<'a> = Spanned<DeValue<'a>>;

/// Walks the parsed document, building runtime types and collecting problems.
pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) doc: &'a DeTable<'a>,
    pub(super) base_dir: &'a Path,
    pub(super) problems: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// The configuration with fallbacks where something is wrong; only meaningful when no
    /// problem was reported.
    pub(super) fn config(&mut self) -> Config {
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
        let log = self.log();
        Config {
            server,
            admin,
            store,
            upstreams,
            default_upstream,
            routes,
            log,
        }
    }

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
        // The array the previous segment named, for an index segment (`checks.0`).
        let mut array: Option<&[Value<'a>]> = None;
        let mut found = None;
        for segment in path {
            if let (Some(items), Ok(i)) = (array, segment.parse::<usize>()) {
                let Some(item) = items.get(i) else {
                    break;
                };
                found = Some(item.span().start);
                table = item.get_ref().as_table();
                array = None;
                continue;
            }
            let Some((key, value)) = table.and_then(|t| t.get_key_value(*segment)) else {
                break;
            };
            found = Some(key.span().start);
            table = value.get_ref().as_table();
            array = value.get_ref().as_array().map(|a| a.as_ref());
        }
        found.map(|offset| line_at(self.text, offset))
    }
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
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    let before = bytes.get(..offset).unwrap_or(bytes);
    before.iter().filter(|&&b| b == b'\n').count() + 1
}
