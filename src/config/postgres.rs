//! `[store] url`: a libpq-style PostgreSQL URL, read once for the config checker and the store
//! alike. tokio-postgres parses the URL itself; `sslmode` (all of libpq's values, default
//! `prefer`) and `sslrootcert` are taken out first, since tokio-postgres knows only three modes
//! and no CA files: the store builds its rustls configuration from them.

use std::path::PathBuf;
use std::str::FromStr;

/// libpq's `sslmode`, as libpq reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS or no connection, without checking the certificate.
    Require,
    /// TLS with a certificate signed by a trusted CA, whatever name it carries.
    VerifyCa,
    /// TLS with a trusted certificate for the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; the nearest here is `prefer`.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A checked `[store] url`.
#[derive(Debug, Clone)]
pub struct PostgresUrl {
    /// Everything but TLS, as tokio-postgres reads it.
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// `sslrootcert`: PEM file of the CAs to trust (else the public roots).
    pub root_cert: Option<PathBuf>,
}

/// Reads `url`; the problem in words when it is not a usable PostgreSQL URL or carries a
/// password (which belongs in the environment, named by `password_env`).
pub fn parse_postgres_url(url: &str) -> Result<PostgresUrl, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a postgres:// or postgresql:// URL".into());
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ssl_mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "sslmode" => {
                ssl_mode = SslMode::parse(&value).ok_or_else(|| {
                    format!("sslmode {value:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")
                })?;
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(&*value)),
            "password" => return Err(password_inside()),
            _ => {
                rest.append_pair(&key, &value);
            }
        }
    }
    let rest = rest.finish();
    let stripped = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{rest}")
    };
    // tokio-postgres' messages do not repeat the URL, so no secret can leak through them.
    let config = tokio_postgres::Config::from_str(&stripped)
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    if config.get_password().is_some() {
        return Err(password_inside());
    }
    if config.get_dbname().is_none() {
        return Err("must name the database (postgres://USER@HOST:PORT/DATABASE)".into());
    }
    Ok(PostgresUrl {
        config,
        ssl_mode,
        root_cert,
    })
}

fn password_inside() -> String {
    "must not contain a password: put it in the environment variable named by store.password_env"
        .into()
}

/// The config checker's view: only whether the URL is usable.
pub fn postgres_url_problem(url: &str) -> Result<(), String> {
    parse_postgres_url(url).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_libpq_reads_them() {
        let u =
            parse_postgres_url("postgres://app@db:5433/us?sslmode=verify-full&application_name=x")
                .unwrap();
        assert_eq!(u.ssl_mode, SslMode::VerifyFull);
        assert_eq!(u.config.get_dbname(), Some("us"));
        assert_eq!(u.config.get_ports(), &[5433]);
        assert_eq!(u.config.get_application_name(), Some("x"));
        let u = parse_postgres_url("postgresql://app@db/us").unwrap();
        assert_eq!(u.ssl_mode, SslMode::Prefer, "libpq's default");
        for (url, said) in [
            ("mysql://a@b/c", "postgres://"),
            ("postgres://app:hunter2@db/us", "password"),
            ("postgres://app@db/us?password=hunter2", "password"),
            ("postgres://app@db/us?sslmode=sometimes", "sslmode"),
            ("postgres://app@db", "database"),
        ] {
            let e = parse_postgres_url(url).unwrap_err();
            assert!(e.contains(said), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }
}
