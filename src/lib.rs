//! Understudy: a reverse proxy for LLM APIs that serves each route from its current release,
//! mirrors a share of traffic to a candidate release, scores the difference, and rolls back by
//! itself. See ARCHITECTURE.md for the request's path through these modules.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod judge;
pub mod lifecycle;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod relay;
pub mod rewrite;
pub mod routing;
pub mod score;
pub mod server;
pub mod shadow;
pub mod sim;
pub mod sse;
pub mod state;
pub mod store;
pub mod upstream;
pub mod workers;
