//! The OTLP pipeline: read from the standard `OTEL_*` variables at start, spans batched and
//! exported over HTTP/protobuf by one task the [`Exporter`] owns, flushed at shutdown.
//!
//! The HTTP client is hyper with the proxy's own rustls configuration (the same roots as the
//! upstreams, `ca_file`s included), so tracing adds no second TLS stack. The batch task runs
//! on the runtime that started the server, on a `TaskTracker` that [`Exporter::shutdown`]
//! waits for: nothing is left running after the server stops.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::runtime::{Runtime, RuntimeChannel};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use super::Telemetry;

/// The variables that turn tracing on; either is enough.
const ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOLS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
const TIMEOUTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
];
/// The OTLP default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one.
const SERVICE_NAME: &str = "understudy";

/// Why tracing could not be set up: the server does not start (the message names the variable).
#[derive(Debug, thiserror::Error)]
#[error("tracing: {0}")]
pub struct TracingError(String);

/// Owns the tracer provider and its batch task; [`Exporter::shutdown`] flushes what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
    /// The batch processor's task (and its export calls); shutdown waits for it.
    tasks: TaskTracker,
}

/// What is read from the environment, apart from what the SDK and the OTLP exporter read
/// themselves (endpoint, headers, sampler, resource).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    timeout: Duration,
    default_service_name: bool,
}

/// Tracing is on when an OTLP endpoint is set, the SDK is not disabled and the traces exporter
/// is not `none`; the protocol must be HTTP/protobuf. `Ok(None)` when off.
fn settings(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>, TracingError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if !ENDPOINTS.iter().any(|name| set(name).is_some()) {
        return Ok(None);
    }
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(exporter) = set("OTEL_TRACES_EXPORTER") {
        match exporter.trim() {
            "none" => return Ok(None),
            "otlp" => {}
            other => {
                return Err(TracingError(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: only \"otlp\" (or \"none\") is supported"
                )))
            }
        }
    }
    if let Some((name, value)) = PROTOCOLS.iter().find_map(|n| set(n).map(|v| (*n, v))) {
        if value.trim() != "http/protobuf" {
            return Err(TracingError(format!(
                "{name}={value:?}: understudy exports OTLP over \"http/protobuf\" only"
            )));
        }
    }
    let timeout = match TIMEOUTS.iter().find_map(|n| set(n).map(|v| (*n, v))) {
        None => DEFAULT_TIMEOUT,
        Some((name, value)) => value
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| {
                TracingError(format!(
                    "{name}={value:?}: expected milliseconds (an integer)"
                ))
            })?,
    };
    let default_service_name = set("OTEL_SERVICE_NAME").is_none()
        && !set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
        });
    Ok(Some(Settings {
        timeout,
        default_service_name,
    }))
}

impl Exporter {
    /// The tracer and its exporter when the environment turns tracing on; None when it is off.
    /// Must be called on the runtime that will run the batch task.
    pub fn from_env(
        tls: rustls::ClientConfig,
    ) -> Result<Option<(Telemetry, Exporter)>, TracingError> {
        let Some(settings) = settings(&|name| std::env::var(name).ok())? else {
            return Ok(None);
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = HyperClient::new(connector, settings.timeout, None);
        // Endpoint (`/v1/traces` appended to the generic one) and headers come from the
        // standard variables, read by the exporter itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(settings.timeout)
            .with_http_client(client)
            .build()
            .map_err(|e| TracingError(e.to_string()))?;
        let tasks = TaskTracker::new();
        let runtime = Tracked {
            tasks: tasks.clone(),
            handle: Handle::current(),
        };
        // Queue size, batch size and delay: OTEL_BSP_* (read by the builder's default config).
        let processor = BatchSpanProcessor::builder(exporter, runtime).build();
        let mut resource = Resource::builder();
        if settings.default_service_name {
            resource = resource.with_service_name(SERVICE_NAME);
        }
        // The sampler (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG) is read by the SDK's
        // default config; the default is parent-based always-on.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("understudy");
        Ok(Some((Telemetry::new(tracer), Exporter { provider, tasks })))
    }

    /// Exports what is queued and stops the batch task; waits for it (the provider's shutdown
    /// blocks, so it runs on the blocking pool while this runtime keeps driving the export).
    pub async fn shutdown(self) {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "tracing: spans not exported at shutdown"),
            Err(e) => tracing::warn!(error = %e, "tracing: shutdown failed"),
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The SDK's async runtime, with its tasks on our tracker instead of bare `tokio::spawn`.
#[derive(Debug, Clone)]
struct Tracked {
    tasks: TaskTracker,
    handle: Handle,
}

impl Runtime for Tracked {
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn_on(future, &self.handle);
    }

    fn delay(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep(duration)
    }
}

impl RuntimeChannel for Tracked {
    type Receiver<T: Debug + Send> = tokio_stream::wrappers::ReceiverStream<T>;
    type Sender<T: Debug + Send> = tokio::sync::mpsc::Sender<T>;

    fn batch_message_channel<T: Debug + Send>(
        &self,
        capacity: usize,
    ) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(vars: &[(&str, &str)], expected: Result<Option<Settings>, &str>) {
        let got = settings(&|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        });
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{vars:?}"),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e} for {vars:?}"),
            (got, want) => panic!("{vars:?}: got {got:?}, want {want:?}"),
        }
    }

    const ON: Settings = Settings {
        timeout: DEFAULT_TIMEOUT,
        default_service_name: true,
    };

    #[test]
    fn tracing_is_on_only_with_an_endpoint() {
        check(&[], Ok(None));
        check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], Ok(None));
        check(&[("OTEL_TRACES_SAMPLER", "always_on")], Ok(None));
        check(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")],
            Ok(Some(ON)),
        );
        check(
            &[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            )],
            Ok(Some(ON)),
        );
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        check(&[on, ("OTEL_SDK_DISABLED", "true")], Ok(None));
        check(&[on, ("OTEL_TRACES_EXPORTER", "none")], Ok(None));
        check(&[on, ("OTEL_TRACES_EXPORTER", "otlp")], Ok(Some(ON)));
    }

    #[test]
    fn settings_follow_the_standard_variables() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        check(
            &[on, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")],
            Ok(Some(Settings {
                timeout: Duration::from_millis(2500),
                ..ON
            })),
        );
        check(
            &[
                on,
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ],
            Ok(Some(Settings {
                timeout: Duration::from_millis(700),
                ..ON
            })),
        );
        let named = Settings {
            default_service_name: false,
            ..ON
        };
        check(
            &[on, ("OTEL_SERVICE_NAME", "llm-gw")],
            Ok(Some(named.clone())),
        );
        check(
            &[on, ("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=llm-gw")],
            Ok(Some(named)),
        );
        check(
            &[on, ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=x")],
            Ok(Some(ON)),
        );
        check(
            &[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
            Ok(Some(ON)),
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        check(
            &[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            Err("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\""),
        );
        check(
            &[on, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")],
            Err("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        );
        check(
            &[on, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
            Err("OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\": expected milliseconds"),
        );
        check(
            &[on, ("OTEL_TRACES_EXPORTER", "zipkin")],
            Err("OTEL_TRACES_EXPORTER"),
        );
    }
}
