//! The file as written: every key optional here, required ones are checked afterwards so that
//! their absence is reported like any other problem. Each section is deserialized on its own
//! by the checker (`check`), so one bad section does not hide problems in another.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::types::ApiFlavor;
use crate::domain::Prices;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub upstream_timeout_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub workers: Option<usize>,
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub path: Option<String>,
    pub url: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub default: Option<bool>,
    pub api: Option<ApiFlavor>,
    pub ca_file: Option<String>,
}

/// A route's own keys; its sub-tables are only accepted here and deserialized separately.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub model: Option<String>,
    pub phase: Option<String>,
    pub share: Option<f64>,
    pub sticky_key: Option<String>,
    pub index_retention: Option<String>,
    #[serde(rename = "stable")]
    pub _stable: Option<IgnoredAny>,
    #[serde(rename = "candidate")]
    pub _candidate: Option<IgnoredAny>,
    #[serde(rename = "shadow")]
    pub _shadow: Option<IgnoredAny>,
    #[serde(rename = "scoring")]
    pub _scoring: Option<IgnoredAny>,
    #[serde(rename = "checks")]
    pub _checks: Option<IgnoredAny>,
    #[serde(rename = "rollback")]
    pub _rollback: Option<IgnoredAny>,
    #[serde(rename = "rollout")]
    pub _rollout: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub label: Option<String>,
    pub upstream: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub system_prompt_file: Option<String>,
    pub params: Option<toml::Table>,
    pub prices: Option<Prices>,
    pub index: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    pub max_inflight: Option<usize>,
    pub max_rps: Option<f64>,
    pub max_tokens_per_min: Option<u64>,
    pub timeout_secs: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoring {
    pub noise_floor_share: Option<f64>,
    pub noise_warmup: Option<usize>,
    pub weights: Option<Weights>,
    pub keep_worst: Option<usize>,
    pub keep_random: Option<usize>,
    pub redact_requests: Option<bool>,
    #[serde(rename = "semantic")]
    pub _semantic: Option<IgnoredAny>,
    #[serde(rename = "judge")]
    pub _judge: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub lexical: Option<f64>,
    pub structure: Option<f64>,
    pub length: Option<f64>,
    pub refusal: Option<f64>,
    pub semantic: Option<f64>,
    pub judge: Option<f64>,
}

/// `[routes.NAME.scoring.semantic]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Semantic {
    pub upstream: Option<String>,
    pub model: Option<String>,
    pub max_rps: Option<f64>,
    pub max_input_chars: Option<usize>,
}

/// `[routes.NAME.scoring.judge]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judge {
    pub upstream: Option<String>,
    pub model: Option<String>,
    pub rubric: Option<String>,
    pub rubric_file: Option<String>,
    pub max_rps: Option<f64>,
    pub max_tokens_per_min: Option<u64>,
    pub both_orders: Option<bool>,
    pub max_input_chars: Option<usize>,
    pub prices: Option<Prices>,
}

/// One `[[routes.NAME.checks]]` entry.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: Option<String>,
    pub json_schema: Option<toml::Table>,
    pub json_schema_file: Option<String>,
    pub on: Option<String>,
    pub must_match: Option<String>,
    pub must_not_match: Option<String>,
    pub max_words: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    pub threshold: Option<f64>,
    pub window: Option<usize>,
    pub min_samples: Option<usize>,
    pub max_error_rate: Option<f64>,
    pub auto: Option<bool>,
}

/// `[routes.NAME.rollout]`; its steps are read one by one (`RolloutStep`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    #[serde(rename = "steps")]
    pub _steps: Option<IgnoredAny>,
}

/// One entry of `[routes.NAME.rollout] steps`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    pub phase: Option<String>,
    pub share: Option<f64>,
    pub min_duration: Option<String>,
    pub min_samples: Option<usize>,
    pub finalize: Option<bool>,
}
