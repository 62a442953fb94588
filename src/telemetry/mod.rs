//! OpenTelemetry traces: one server span per client request (continuing the client's W3C
//! `traceparent`), one client span per mirrored call and per remote scorer call (children of
//! the request's span, so a mirror joins the client call that caused it), with the GenAI
//! semantic convention attributes and the route, release and phase; the `traceparent` passed on
//! to the upstream. Exported over OTLP HTTP/protobuf (`export.rs`).
//!
//! Off unless an `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set: then the request path holds
//! `None` where a [`Telemetry`] would be, and no span is made, no attribute formatted and no
//! header added. When on, spans the sampler drops are not recording: their attributes are not
//! built either, only the propagated `traceparent` is.

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracer;

mod export;
mod logs;
mod spans;

pub use export::Exporter;
pub use logs::TraceIdJson;
pub use spans::{LlmSpan, ScorerKind, TraceParent};

/// The tracer the request path starts spans with; present only when tracing is on.
#[derive(Debug, Clone)]
pub struct Telemetry {
    tracer: SdkTracer,
}

impl Telemetry {
    fn new(tracer: SdkTracer) -> Self {
        Telemetry { tracer }
    }
}

/// The trace id (32 hex digits) of the span whose context is current on this thread, if any:
/// for log lines (a JSON log's `trace_id`). The request path makes a request's span current
/// while it records the request (`LlmSpan::enter`), so the request's log line carries it. None
/// when tracing is off, outside a request, or for an invalid context. Costs one thread-local
/// read when nothing is current.
pub fn current_trace_id() -> Option<String> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.trace_id().to_string())
    })
}
