//! Understudy: a reverse proxy for LLM APIs that serves each route from its current release,
//! mirrors a share of traffic to a candidate release, scores the difference, and rolls back by
//! itself. See ARCHITECTURE.md for the request's path through these modules.
//!
//! # Layout
//!
//! Folders by plane, each private; dependencies point one way, from the top of this list to
//! the bottom (a module imports only from modules below it):
//!
//! - `cli`: the command line's work (`serve`, admin commands, `demo`).
//! - `server`: assembly and lifecycle; the proxy worker threads.
//! - `admin`: the admin HTTP API and the client the command line uses for it.
//! - `control`: the controller, the judge, the release lifecycle and the store backends.
//! - `proxy`: the client's request path as named phases; routing, relay, errors.
//! - `shadow`: mirror tasks and the scored samples they send to the controller.
//! - `upstream`: the upstream leg both paths share: pooled client, headers, request rewrite.
//! - `telemetry`: OpenTelemetry traces: the request's and its calls' spans, the OTLP exporter.
//! - `state`: the immutable snapshot the request path reads; upstreams, releases, budgets.
//! - `metrics`: Prometheus metrics and the events that both log and count.
//! - `config`: the TOML file, parsed strictly and checked into typed sections.
//! - `score`: pure scorers of an answer against the reference answer.
//! - `observe`: pure assembly of answers from the four APIs' bodies and SSE streams.
//! - `domain`: the shared vocabulary: body types, phases, triggers, release definitions.
//!
//! The items below are what the binary, the integration tests and the benches use.

mod admin;
mod cli;
mod config;
mod control;
mod domain;
mod metrics;
mod observe;
mod proxy;
mod score;
mod server;
mod shadow;
mod state;
mod telemetry;
mod upstream;

pub use cli::{
    admin_command, check_config, drill_command, export_command, replay_command, serve, AdminCall,
    Pick, ReplayArgs,
};
#[cfg(feature = "sim")]
pub use cli::{demo, mock_upstream};
pub use config::{ApiFlavor, Config};
pub use domain::{Prices, ReleaseSpec};
pub use server::{run, run_reloading, run_with_store, Listeners, ReloadFrom, ServerError};
pub use telemetry::{current_trace_id, TraceIdJson};

/// The seam between the controller and its durable store: the trait, the SQLite and PostgreSQL
/// backends and what a backend is given. `run_with_store` takes any backend; the integration
/// tests wrap the SQLite one to make writes fail on demand, and drive the PostgreSQL one
/// directly (`tests/store_postgres.rs`).
pub mod store {
    pub use crate::control::{
        EventRecord, Fleet, FleetSignal, IndexRecord, JudgeInput, JudgeSample, Loaded, PgStore,
        ReleaseRecord, Replica, RolloutRecord, RouteRecord, SampleList, SqliteStore, Store,
        StoreError, Transition,
    };
    pub use crate::domain::{EventKind, Phase};
}

/// The pure functions of the hot paths and the judge, for the benches.
pub mod hot_paths {
    pub use crate::config::RollbackConfig;
    pub use crate::control::Judge;
    pub use crate::observe::{
        ApiShape, FinishReason, Observation, Observer, SseEvent, SseReader, StreamEnd, ToolCall,
    };
    pub use crate::score::{
        finish, length, lexical, refusal, score, structure, Score, Weights, Windows,
    };
    pub use crate::state::{Release, Upstream};
    pub use crate::upstream::{rewrite_request, ModelRewriter, RequestBody};
}
