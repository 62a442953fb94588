//! The trace id on JSON log lines: a wrapper around a JSON event formatter that puts
//! `"trace_id"` first in each object written while a request's span is current (the request
//! path makes it current while it records the request). Without tracing, or outside a
//! request, the line is the inner formatter's as it is.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::current_trace_id;

/// `F`, a formatter that writes one JSON object per event, with `"trace_id"` added when a
/// span is current: `fmt::layer().json()...` becomes
/// `fmt::layer().event_format(TraceIdJson(fmt::format().json()...)).fmt_fields(JsonFields::new())`.
#[derive(Debug, Clone)]
pub struct TraceIdJson<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for TraceIdJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(trace_id) = current_trace_id() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) if rest.starts_with('}') => {
                write!(writer, "{{\"trace_id\":\"{trace_id}\"{rest}")
            }
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::Context;
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::TraceIdJson;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_the_current_trace_id() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(TraceIdJson(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .fmt_fields(JsonFields::new())
            .with_writer(lines.clone())
            .finish();
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = SpanContext::new(
            TraceId::from_hex(trace_id).unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(route = "bot", "outside");
            let _cx = Context::new().with_remote_span_context(span).attach();
            tracing::info!(route = "bot", "inside");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let objects: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(objects.len(), 2, "{text}");
        assert_eq!(objects[0]["message"], "outside");
        assert!(objects[0].get("trace_id").is_none(), "{text}");
        assert_eq!(objects[1]["message"], "inside");
        assert_eq!(objects[1]["route"], "bot");
        assert_eq!(objects[1]["trace_id"], trace_id);
    }
}
