//! `[routes.NAME]` and the tables under it: the route's own keys (alias, phase, share, sticky
//! key), its releases (`stable`, `candidate`), and its `shadow`, `scoring` and `rollback`
//! settings. A release is validated by [`ReleaseSpec::problems`], shared with the admin API.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::HeaderName;

use super::{Checker, Value};
use crate::config::raw;
use crate::config::types::{
    Check, CheckRule, CheckTarget, JudgeConfig, RollbackConfig, RouteConfig, ScoringConfig,
    SemanticConfig, ShadowConfig, StickyKey, Weights, DEFAULT_INDEX_RETENTION,
};
use crate::domain::{route_name_problem, share_problem, space_problems, Phase, ReleaseSpec};
use crate::score::{Pattern, Schema};

const DEFAULT_SHARE: f64 = 0.05;
const MAX_KEPT_SAMPLES: usize = 10_000;

impl<'a> Checker<'a> {
    /// Routes by name, with route aliases checked for uniqueness.
    pub(super) fn routes(&mut self, upstream_timeout: Duration) -> BTreeMap<String, RouteConfig> {
        let mut routes = BTreeMap::new();
        let doc = self.doc;
        let Some(table) = doc
            .get("routes")
            .and_then(|value| self.named_tables(value, "routes"))
        else {
            return routes;
        };
        let upstreams: BTreeSet<&str> = doc
            .get("upstreams")
            .and_then(|u| u.get_ref().as_table())
            .map(|t| t.iter().map(|(name, _)| name.get_ref().as_ref()).collect())
            .unwrap_or_default();
        // In file order, so that a duplicated alias is reported where it is repeated.
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(name, _)| name.span().start);
        let mut aliases = BTreeMap::new();
        for (name, value) in entries {
            let name: &str = name.get_ref();
            let route = self.route(name, value, &upstreams, &mut aliases, upstream_timeout);
            if let Some(route) = route {
                routes.insert(name.to_owned(), route);
            }
        }
        routes
    }

    fn route(
        &mut self,
        name: &str,
        value: &Value<'a>,
        upstreams: &BTreeSet<&str>,
        aliases: &mut BTreeMap<String, String>,
        upstream_timeout: Duration,
    ) -> Option<RouteConfig> {
        let before = self.problems.len();
        let path = ["routes", name];
        // The one check of a route name, shared with the command line and the webhook.
        if let Some(problem) = route_name_problem(name) {
            self.report(&path, problem);
        }
        let top: Option<raw::Route> = self.section(value, &path);
        let table = value.get_ref().as_table()?;
        let stable = match table.get("stable") {
            Some(value) => self.release(name, "stable", value, upstreams),
            None => {
                self.report(
                    &["routes", name, "stable"],
                    "is required: the release that serves the route's traffic",
                );
                None
            }
        };
        let candidate = table
            .get("candidate")
            .and_then(|value| self.release(name, "candidate", value, upstreams));
        let shadow = self.shadow(name, table.get("shadow"), upstream_timeout);
        let scoring = self.scoring(name, table.get("scoring"), upstreams);
        let checks = self.checks(name, table.get("checks"));
        let rollback = self.rollback(name, table.get("rollback"));
        let rollout = self.rollout(name, table.get("rollout"), rollback.min_samples);

        let top = top?;
        let model = self.required_string(&["routes", name, "model"], top.model);
        if let Some(model) = &model {
            match aliases.entry(model.clone()) {
                Entry::Occupied(first) => self.report(
                    &["routes", name, "model"],
                    format!("alias {model:?} is already used by route {:?}", first.get()),
                ),
                Entry::Vacant(entry) => {
                    entry.insert(name.to_owned());
                }
            }
        }
        let phase = match top.phase.as_deref().map(str::parse::<Phase>) {
            None => Some(Phase::Stable),
            Some(Ok(phase)) => Some(phase),
            Some(Err(e)) => {
                self.report(&["routes", name, "phase"], e.to_string());
                None
            }
        };
        match (phase, table.contains_key("candidate")) {
            (Some(Phase::Stable), true) => self.report(
                &["routes", name, "phase"],
                "phase is \"stable\" but a candidate is configured: set phase = \"shadow\" \
                 to evaluate it, or remove the candidate",
            ),
            (Some(phase), false) if phase != Phase::Stable => self.report(
                &["routes", name, "candidate"],
                format!(
                    "phase {:?} needs a candidate: add [routes.{name}.candidate]",
                    phase.as_str()
                ),
            ),
            _ => {}
        }
        let share = self.checked(
            &["routes", name, "share"],
            top.share,
            DEFAULT_SHARE,
            |v| share_problem(v).is_none(),
            "must be between 0 and 1",
        );
        let sticky_key = top
            .sticky_key
            .and_then(|key| self.sticky_key(&["routes", name, "sticky_key"], &key));
        let index_retention = self.index_retention(name, top.index_retention.as_deref());
        if let (Some(stable), Some(candidate)) = (&stable, &candidate) {
            // The guard: the candidate's index and space against stable's (domain/index.rs).
            for p in space_problems(candidate, [("stable", stable)]) {
                let mut path = vec!["routes", name, "candidate"];
                path.extend(p.key.iter().map(String::as_str));
                self.report(&path, p.message);
            }
        }

        if self.problems.len() != before {
            return None;
        }
        Some(RouteConfig {
            name: name.to_owned(),
            model: model?,
            phase: phase?,
            share,
            sticky_key,
            stable: stable?,
            candidate,
            shadow,
            scoring,
            rollback,
            checks,
            index_retention,
            rollout,
        })
    }

    /// `index_retention`: a duration such as "24h" or "90m" (default 24 h).
    fn index_retention(&mut self, route: &str, value: Option<&str>) -> Duration {
        let Some(text) = value else {
            return DEFAULT_INDEX_RETENTION;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d > Duration::ZERO => d,
            Ok(_) => {
                self.report(
                    &["routes", route, "index_retention"],
                    "must be longer than 0",
                );
                DEFAULT_INDEX_RETENTION
            }
            Err(e) => {
                self.report(
                    &["routes", route, "index_retention"],
                    format!("must be a duration such as \"24h\" or \"90m\", got {text:?}: {e}"),
                );
                DEFAULT_INDEX_RETENTION
            }
        }
    }

    fn sticky_key(&mut self, path: &[&str], key: &str) -> Option<StickyKey> {
        if let Some(header) = key.strip_prefix("header:") {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => return Some(StickyKey::Header(name)),
                Err(_) => self.report(path, format!("{header:?} is not a valid header name")),
            }
        } else if let Some(field) = key.strip_prefix("body:") {
            if !field.is_empty() {
                return Some(StickyKey::Body(field.to_owned()));
            }
            self.report(path, "\"body:\" needs a field name, e.g. \"body:user\"");
        } else {
            self.report(
                path,
                format!("must be \"header:NAME\" or \"body:FIELD\", got {key:?}"),
            );
        }
        None
    }

    /// `[routes.ROUTE.WHICH]`, where WHICH is "stable" or "candidate".
    fn release(
        &mut self,
        route: &str,
        which: &str,
        value: &Value<'a>,
        upstreams: &BTreeSet<&str>,
    ) -> Option<ReleaseSpec> {
        let before = self.problems.len();
        let raw: raw::Release = self.section(value, &["routes", route, which])?;
        let key = |k| ["routes", route, which, k];

        let upstream = self.required_string(&key("upstream"), raw.upstream);
        let model = self.required_string(&key("model"), raw.model);
        let system_prompt = match (raw.system_prompt, raw.system_prompt_file) {
            (Some(_), Some(_)) => {
                self.report(
                    &key("system_prompt_file"),
                    "cannot be combined with system_prompt: keep one of them",
                );
                None
            }
            (None, Some(file)) => self.prompt_file(&key("system_prompt_file"), &file),
            (prompt, None) => prompt,
        };
        let (params, mut param_problems) = self.params(raw.params.unwrap_or_default());
        let spec = ReleaseSpec {
            label: raw.label,
            upstream: upstream.unwrap_or_default(),
            model: model.unwrap_or_default(),
            system_prompt,
            params,
            prices: raw.prices,
            index: raw.index,
        };
        // The one validation of a release, shared with the admin API. A missing field was
        // reported above already; parameter problems are said in the table's order together
        // with the ones found converting them.
        let mut rest = Vec::new();
        for problem in spec.problems(upstreams.iter().copied()) {
            match problem.key.as_slice() {
                [field] if field == "upstream" && spec.upstream.is_empty() => {}
                [field] if field == "model" && spec.model.trim().is_empty() => {}
                [params, name] if params == "params" => {
                    param_problems.push((name.clone(), problem.message));
                }
                _ => rest.push(problem),
            }
        }
        param_problems.sort_by(|a, b| a.0.cmp(&b.0));
        let (first, last): (Vec<_>, Vec<_>) = rest.into_iter().partition(|p| {
            matches!(
                p.key.first().map(String::as_str),
                Some("upstream" | "model")
            )
        });
        for p in first {
            self.report(&["routes", route, which, &p.key[0]], p.message);
        }
        for (name, message) in param_problems {
            self.report(&["routes", route, which, "params", &name], message);
        }
        for p in last {
            let mut path = vec!["routes", route, which];
            path.extend(p.key.iter().map(String::as_str));
            self.report(&path, p.message);
        }
        (self.problems.len() == before).then_some(spec)
    }

    fn prompt_file(&mut self, path: &[&str], file: &str) -> Option<String> {
        let full = self.base_dir.join(file);
        match std::fs::read_to_string(&full) {
            Ok(prompt) => Some(prompt.trim_end().to_owned()),
            Err(e) => {
                self.report(
                    path,
                    format!("cannot read prompt file {}: {e}", full.display()),
                );
                None
            }
        }
    }

    /// The release's parameters as JSON, and the ones that cannot be (name, problem).
    fn params(
        &mut self,
        params: toml::Table,
    ) -> (
        serde_json::Map<String, serde_json::Value>,
        Vec<(String, String)>,
    ) {
        let mut json = serde_json::Map::new();
        let mut problems = Vec::new();
        for (name, value) in params {
            match toml_to_json(value) {
                Ok(value) => {
                    json.insert(name, value);
                }
                Err(problem) => problems.push((name, problem.to_owned())),
            }
        }
        (json, problems)
    }

    fn shadow(
        &mut self,
        route: &str,
        value: Option<&Value<'a>>,
        upstream_timeout: Duration,
    ) -> ShadowConfig {
        let raw: raw::Shadow = self.optional_section(value, &["routes", route, "shadow"]);
        let key = |k| ["routes", route, "shadow", k];
        if raw.max_tokens_per_min == Some(0) {
            self.report(
                &key("max_tokens_per_min"),
                "must be greater than 0 (leave it out for no limit), got 0",
            );
        }
        ShadowConfig {
            max_inflight: self.checked(
                &key("max_inflight"),
                raw.max_inflight,
                64,
                |v| v >= 1,
                "must be at least 1",
            ),
            max_rps: self.checked(
                &key("max_rps"),
                raw.max_rps,
                20.0,
                |v| v > 0.0 && v.is_finite(),
                "must be greater than 0",
            ),
            max_tokens_per_min: raw.max_tokens_per_min,
            timeout: self.secs(&key("timeout_secs"), raw.timeout_secs, upstream_timeout),
        }
    }

    fn scoring(
        &mut self,
        route: &str,
        value: Option<&Value<'a>>,
        upstreams: &BTreeSet<&str>,
    ) -> ScoringConfig {
        let raw: raw::Scoring = self.optional_section(value, &["routes", route, "scoring"]);
        let key = |k| ["routes", route, "scoring", k];
        let default = ScoringConfig::default();
        let sub = |k: &str| {
            value
                .and_then(|v| v.get_ref().as_table())
                .and_then(|t| t.get(k))
        };
        let semantic = sub("semantic").and_then(|v| self.semantic(route, v, upstreams));
        let judge = sub("judge").and_then(|v| self.judge(route, v, upstreams));
        let weights = raw.weights.unwrap_or_default();
        // A remote scorer that is configured takes part with weight 1 unless weighted.
        let remote_default = |configured: bool| if configured { 1.0 } else { 0.0 };
        let mut weight = |name: &'static str, value: Option<f64>, default: f64| {
            self.checked(
                &["routes", route, "scoring", "weights", name],
                value,
                default,
                |v: f64| v >= 0.0 && v.is_finite(),
                "must be a number >= 0",
            )
        };
        let weights = Weights {
            lexical: weight("lexical", weights.lexical, default.weights.lexical),
            structure: weight("structure", weights.structure, default.weights.structure),
            length: weight("length", weights.length, default.weights.length),
            refusal: weight("refusal", weights.refusal, default.weights.refusal),
            semantic: weight(
                "semantic",
                weights.semantic,
                remote_default(semantic.is_some()),
            ),
            judge: weight("judge", weights.judge, remote_default(judge.is_some())),
        };
        let local = weights.lexical + weights.structure + weights.length + weights.refusal;
        if local + weights.semantic + weights.judge <= 0.0 {
            self.report(
                &key("weights"),
                "at least one weight must be greater than 0",
            );
        }
        for (name, weight, configured) in [
            ("semantic", weights.semantic, semantic.is_some()),
            ("judge", weights.judge, judge.is_some()),
        ] {
            if weight > 0.0 && !configured {
                self.report(
                    &["routes", route, "scoring", "weights", name],
                    format!("is {weight} but [routes.{route}.scoring.{name}] is not configured"),
                );
            }
        }
        ScoringConfig {
            noise_floor_share: self.checked(
                &key("noise_floor_share"),
                raw.noise_floor_share,
                default.noise_floor_share,
                |v| (0.0..=1.0).contains(&v),
                "must be between 0 and 1",
            ),
            noise_warmup: self.checked(
                &key("noise_warmup"),
                raw.noise_warmup,
                default.noise_warmup,
                |v| v <= MAX_KEPT_SAMPLES,
                "must be at most 10000",
            ),
            weights,
            keep_worst: self.checked(
                &key("keep_worst"),
                raw.keep_worst,
                default.keep_worst,
                |v| v <= MAX_KEPT_SAMPLES,
                "must be at most 10000",
            ),
            keep_random: self.checked(
                &key("keep_random"),
                raw.keep_random,
                default.keep_random,
                |v| v <= MAX_KEPT_SAMPLES,
                "must be at most 10000",
            ),
            redact_requests: raw.redact_requests.unwrap_or(default.redact_requests),
            semantic,
            judge,
        }
    }

    /// An upstream a scorer names: required, and configured.
    fn scorer_upstream(
        &mut self,
        path: &[&str],
        upstream: Option<String>,
        upstreams: &BTreeSet<&str>,
    ) -> Option<String> {
        let upstream = self.required_string(path, upstream)?;
        if !upstreams.contains(upstream.as_str()) {
            let known: Vec<&str> = upstreams.iter().copied().collect();
            self.report(
                path,
                format!(
                    "unknown upstream {upstream:?} (configured: {})",
                    known.join(", ")
                ),
            );
            return None;
        }
        Some(upstream)
    }

    /// A remote scorer's `max_rps` (default `default_rps`) and `max_input_chars` (default 8000).
    fn scorer_limits(
        &mut self,
        path: &[&str],
        max_rps: Option<f64>,
        default_rps: f64,
        max_input_chars: Option<usize>,
    ) -> (f64, usize) {
        let key = |k| {
            let mut p = path.to_vec();
            p.push(k);
            p
        };
        let rps = self.checked(
            &key("max_rps"),
            max_rps,
            default_rps,
            |v| v > 0.0 && v.is_finite(),
            "must be greater than 0",
        );
        let chars = self.checked(
            &key("max_input_chars"),
            max_input_chars,
            8000,
            |v| v >= 1,
            "must be at least 1",
        );
        (rps, chars)
    }

    fn semantic(
        &mut self,
        route: &str,
        value: &Value<'a>,
        upstreams: &BTreeSet<&str>,
    ) -> Option<SemanticConfig> {
        let path = ["routes", route, "scoring", "semantic"];
        let raw: raw::Semantic = self.section(value, &path)?;
        let key = |k| ["routes", route, "scoring", "semantic", k];
        let upstream = self.scorer_upstream(&key("upstream"), raw.upstream, upstreams);
        let model = self.required_string(&key("model"), raw.model);
        let (max_rps, max_input_chars) =
            self.scorer_limits(&path, raw.max_rps, 20.0, raw.max_input_chars);
        Some(SemanticConfig {
            upstream: upstream?,
            model: model?,
            max_rps,
            max_input_chars,
        })
    }

    fn judge(
        &mut self,
        route: &str,
        value: &Value<'a>,
        upstreams: &BTreeSet<&str>,
    ) -> Option<JudgeConfig> {
        let path = ["routes", route, "scoring", "judge"];
        let raw: raw::Judge = self.section(value, &path)?;
        let key = |k| ["routes", route, "scoring", "judge", k];
        let upstream = self.scorer_upstream(&key("upstream"), raw.upstream, upstreams);
        let model = self.required_string(&key("model"), raw.model);
        if let Some(problem) = model.as_deref().and_then(crate::domain::model_problem) {
            self.report(&key("model"), problem.message);
        }
        let rubric = match (raw.rubric, raw.rubric_file) {
            (Some(_), Some(_)) => {
                self.report(
                    &key("rubric_file"),
                    "cannot be combined with rubric: keep one of them",
                );
                None
            }
            (None, Some(file)) => self.prompt_file(&key("rubric_file"), &file),
            (Some(rubric), None) => Some(rubric),
            (None, None) => {
                self.report(
                    &key("rubric"),
                    "is required (or rubric_file): what makes an answer better",
                );
                None
            }
        };
        if raw.max_tokens_per_min == Some(0) {
            self.report(
                &key("max_tokens_per_min"),
                "must be greater than 0 (leave it out for no limit), got 0",
            );
        }
        let (max_rps, max_input_chars) =
            self.scorer_limits(&path, raw.max_rps, 2.0, raw.max_input_chars);
        if let Some(prices) = raw.prices {
            for problem in prices.problems() {
                let mut path = key("prices").to_vec();
                path.extend(problem.key.iter().skip(1).map(String::as_str));
                self.report(&path, problem.message);
            }
        }
        Some(JudgeConfig {
            prices: raw.prices,
            upstream: upstream?,
            model: model?,
            rubric: rubric?,
            max_rps,
            max_tokens_per_min: raw.max_tokens_per_min.filter(|t| *t > 0),
            both_orders: raw.both_orders.unwrap_or(true),
            max_input_chars,
        })
    }

    /// `[[routes.NAME.checks]]`: each check compiled; names unique.
    fn checks(&mut self, route: &str, value: Option<&Value<'a>>) -> Vec<Check> {
        let Some(value) = value else {
            return Vec::new();
        };
        let Some(items) = value.get_ref().as_array() else {
            let got = value.get_ref().type_str();
            self.report(
                &["routes", route, "checks"],
                format!("must be an array of tables ([[routes.{route}.checks]]), got {got}"),
            );
            return Vec::new();
        };
        let mut checks: Vec<Check> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let index = i.to_string();
            let path = ["routes", route, "checks", index.as_str()];
            let Some(mut raw) = self.section::<raw::Check>(item, &path) else {
                continue;
            };
            let key = |k| ["routes", route, "checks", index.as_str(), k];
            let Some(name) = self.required_string(&key("name"), raw.name.take()) else {
                continue;
            };
            if checks.iter().any(|c| c.name == name) {
                self.report(&key("name"), format!("check {name:?} is defined twice"));
                continue;
            }
            if let Some(rule) = self.check_rule(&path, raw) {
                checks.push(Check { name, rule });
            }
        }
        checks
    }

    /// The one rule of a check, compiled.
    fn check_rule(&mut self, path: &[&str], raw: raw::Check) -> Option<CheckRule> {
        let key = |k: &'static str| {
            let mut p = path.to_vec();
            p.push(k);
            p
        };
        let given = [
            raw.json_schema.is_some(),
            raw.json_schema_file.is_some(),
            raw.must_match.is_some(),
            raw.must_not_match.is_some(),
            raw.max_words.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            self.report(
                path,
                "needs exactly one of json_schema, json_schema_file, must_match, must_not_match,                  max_words",
            );
            return None;
        }
        if raw.on.is_some() && raw.json_schema.is_none() && raw.json_schema_file.is_none() {
            self.report(
                &key("on"),
                "applies only to json_schema and json_schema_file",
            );
            return None;
        }
        let on = match raw.on.as_deref() {
            None | Some("text") => CheckTarget::Text,
            Some("tool_arguments") => CheckTarget::ToolArguments,
            Some(other) => {
                self.report(
                    &key("on"),
                    format!("must be \"text\" or \"tool_arguments\", got {other:?}"),
                );
                return None;
            }
        };
        let schema = |document: serde_json::Value, this: &mut Self, at: Vec<&str>| match Schema::new(
            document,
        ) {
            Ok(schema) => Some(CheckRule::JsonSchema { schema, on }),
            Err(e) => {
                this.report(&at, format!("is not a valid JSON Schema: {e}"));
                None
            }
        };
        if let Some(table) = raw.json_schema {
            return match toml_to_json(toml::Value::Table(table)) {
                Ok(document) => schema(document, self, key("json_schema")),
                Err(problem) => {
                    self.report(&key("json_schema"), problem);
                    None
                }
            };
        }
        if let Some(file) = raw.json_schema_file {
            let text = self.prompt_file(&key("json_schema_file"), &file)?;
            return match serde_json::from_str(&text) {
                Ok(document) => schema(document, self, key("json_schema_file")),
                Err(e) => {
                    self.report(&key("json_schema_file"), format!("{file} is not JSON: {e}"));
                    None
                }
            };
        }
        for (k, source, must) in [
            ("must_match", raw.must_match, true),
            ("must_not_match", raw.must_not_match, false),
        ] {
            if let Some(source) = source {
                return match Pattern::new(&source) {
                    Ok(p) if must => Some(CheckRule::MustMatch(p)),
                    Ok(p) => Some(CheckRule::MustNotMatch(p)),
                    Err(e) => {
                        self.report(&key(k), format!("is not a valid regular expression: {e}"));
                        None
                    }
                };
            }
        }
        raw.max_words.map(CheckRule::MaxWords)
    }

    fn rollback(&mut self, route: &str, value: Option<&Value<'a>>) -> RollbackConfig {
        let raw: raw::Rollback = self.optional_section(value, &["routes", route, "rollback"]);
        let key = |k| ["routes", route, "rollback", k];
        let default = RollbackConfig::default();
        let window = self.checked(
            &key("window"),
            raw.window,
            default.window,
            |v| v >= 1,
            "must be at least 1",
        );
        RollbackConfig {
            threshold: self.checked(
                &key("threshold"),
                raw.threshold,
                default.threshold,
                |v| v > 0.0 && v <= 1.0,
                "must be greater than 0 and at most 1",
            ),
            window,
            min_samples: self.checked(
                &key("min_samples"),
                raw.min_samples,
                default.min_samples.min(window),
                |v| (1..=window).contains(&v),
                &format!("must be between 1 and window ({window})"),
            ),
            max_error_rate: self.checked(
                &key("max_error_rate"),
                raw.max_error_rate,
                default.max_error_rate,
                |v| (0.0..=1.0).contains(&v),
                "must be between 0 and 1",
            ),
            auto: raw.auto.unwrap_or(default.auto),
        }
    }
}

/// A TOML value as JSON; TOML dates and non-finite floats have no JSON form.
fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, &'static str> {
    Ok(match value {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or("nan and inf cannot be sent as JSON")?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(_) => {
            return Err("TOML dates and times cannot be sent as JSON: write it as a string")
        }
        toml::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => serde_json::Value::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok::<_, &'static str>((k, toml_to_json(v)?)))
                .collect::<Result<_, _>>()?,
        ),
    })
}
