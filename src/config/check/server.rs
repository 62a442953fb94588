//! `[server]`, `[admin]`, `[store]` and `[log]`: the listeners, the embedded store and the
//! log format.

use std::path::PathBuf;

use super::Checker;
use crate::config::raw;
use crate::config::types::{
    AdminConfig, LogConfig, LogFormat, PostgresConfig, ServerConfig, StoreConfig,
};

const DEFAULT_STORE_PATH: &str = "data/understudy.db";
const MAX_WORKERS: usize = 1024;
/// Upper bound of the connection and request caps (a typo guard, not a tuning figure).
const MAX_CAP: usize = 1_000_000;

impl<'a> Checker<'a> {
    pub(super) fn server(&mut self) -> ServerConfig {
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
            header_read_timeout: self.secs(
                &["server", "header_read_timeout_secs"],
                raw.header_read_timeout_secs,
                default.header_read_timeout,
            ),
            idle_timeout: self.secs(
                &["server", "idle_timeout_secs"],
                raw.idle_timeout_secs,
                default.idle_timeout,
            ),
            body_timeout: self.secs(
                &["server", "body_timeout_secs"],
                raw.body_timeout_secs,
                default.body_timeout,
            ),
            max_connections: self.checked(
                &["server", "max_connections"],
                raw.max_connections,
                default.max_connections,
                |v| (1..=MAX_CAP).contains(&v),
                "must be between 1 and 1000000",
            ),
            max_concurrent_requests: self.checked(
                &["server", "max_concurrent_requests"],
                raw.max_concurrent_requests,
                default.max_concurrent_requests,
                |v| (1..=MAX_CAP).contains(&v),
                "must be between 1 and 1000000",
            ),
        }
    }

    pub(super) fn admin(&mut self) -> AdminConfig {
        let raw: raw::Admin = self.optional_section(self.doc.get("admin"), &["admin"]);
        let default = AdminConfig::default();
        AdminConfig {
            listen: self.socket_addr(&["admin", "listen"], raw.listen, default.listen),
            token_env: self
                .env_name(&["admin", "token_env"], raw.token_env)
                .unwrap_or(default.token_env),
        }
    }

    pub(super) fn store(&mut self) -> StoreConfig {
        let raw: raw::Store = self.optional_section(self.doc.get("store"), &["store"]);
        let had_path = raw.path.is_some();
        let path = match raw.path {
            Some(path) if path.is_empty() => {
                self.report(&["store", "path"], "must not be empty");
                PathBuf::new()
            }
            path => self
                .base_dir
                .join(path.as_deref().unwrap_or(DEFAULT_STORE_PATH)),
        };
        let postgres = self.postgres(raw.url, raw.password_env, had_path);
        StoreConfig { path, postgres }
    }

    /// `url` and `password_env`: a PostgreSQL URL with no password in it and an `sslmode` libpq
    /// knows; `path` is then not allowed.
    fn postgres(
        &mut self,
        url: Option<String>,
        password_env: Option<String>,
        had_path: bool,
    ) -> Option<PostgresConfig> {
        let password_env = self.env_name(&["store", "password_env"], password_env);
        let Some(url) = url else {
            if password_env.is_some() {
                self.report(&["store", "password_env"], "only goes with store.url");
            }
            return None;
        };
        if had_path {
            self.report(
                &["store", "url"],
                "give either store.path (SQLite, one server) or store.url (PostgreSQL, a fleet), not both",
            );
        }
        if let Err(problem) = crate::config::postgres_url_problem(&url) {
            self.report(&["store", "url"], problem);
            return None;
        }
        Some(PostgresConfig { url, password_env })
    }

    pub(super) fn log(&mut self) -> LogConfig {
        let raw: raw::Log = self.optional_section(self.doc.get("log"), &["log"]);
        let format = match raw.format.as_deref().map(str::parse::<LogFormat>) {
            None => LogFormat::default(),
            Some(Ok(format)) => format,
            Some(Err(e)) => {
                self.report(&["log", "format"], e);
                LogFormat::default()
            }
        };
        LogConfig { format }
    }
}
