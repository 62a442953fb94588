//! The process's log subscriber: `RUST_LOG` filters (default `info`), lines go to stderr as
//! key=value text or, with `[log] format = "json"` or `UNDERSTUDY_LOG_FORMAT=json`, as one JSON
//! object per event (the event's fields at the top level, beside `timestamp`, `level`, `target`
//! and the current span, and `trace_id` when tracing is on and the event belongs to a request). The subscriber is a `Registry` with layers, so another layer (a
//! tracing exporter) stacks onto the same one.
//!
//! Secrets never reach a log line because no event carries them: upstream keys are
//! `HeaderValue`s marked sensitive and the admin token is only compared, never formatted.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::LogFormat;
use crate::telemetry::TraceIdJson;

/// The environment variable that overrides `[log] format`.
pub const LOG_FORMAT_ENV: &str = "UNDERSTUDY_LOG_FORMAT";

/// The format to log in: `UNDERSTUDY_LOG_FORMAT` when set, else the configuration's. An
/// unknown value in the variable is an error naming it.
pub fn format(configured: LogFormat) -> Result<LogFormat, String> {
    match std::env::var(LOG_FORMAT_ENV) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| format!("{LOG_FORMAT_ENV}: {e}")),
        _ => Ok(configured),
    }
}

/// Installs the subscriber for the process (once; a second call changes nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(lines(format).with_filter(filter))
        .try_init();
}

/// The layer that writes log lines in `format` to stderr.
fn lines(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        // With tracing on, a line written during a request carries its `trace_id`.
        LogFormat::Json => fmt::layer()
            .event_format(TraceIdJson(
                fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ))
            .fmt_fields(fmt::format::JsonFields::new())
            .with_writer(std::io::stderr)
            .boxed(),
    }
}
