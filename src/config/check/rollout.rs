//! `[routes.NAME.rollout]`: the steps a candidate walks by itself. Each step is checked on its
//! own and every problem is named by its key (`routes.NAME.rollout.steps.2.min_duration`):
//! a step is `{ phase, share, min_duration?, min_samples? }` or `{ finalize = true }`; phases
//! never go backwards (shadow, canary, promoted); `finalize` comes only last, after a promoted
//! step; durations are humantime's ("90s", "10m", "1h 30m").

use std::time::Duration;

use super::{Checker, Value};
use crate::config::raw;
use crate::config::types::{RolloutConfig, RolloutStep};
use crate::domain::{share_problem, Phase};

/// The order phases are walked in; a step may not go back to an earlier one.
fn rank(phase: Phase) -> u8 {
    match phase {
        Phase::Stable => 0,
        Phase::Shadow => 1,
        Phase::Canary => 2,
        Phase::Promoted => 3,
    }
}

impl<'a> Checker<'a> {
    /// The rollout, when the table is present; None when absent or invalid (reported).
    /// `default_samples` is the route's `rollback.min_samples`, a step's default.
    pub(super) fn rollout(
        &mut self,
        route: &str,
        value: Option<&Value<'a>>,
        default_samples: usize,
    ) -> Option<RolloutConfig> {
        let value = value?;
        let before = self.problems.len();
        let path = ["routes", route, "rollout"];
        self.section::<raw::Rollout>(value, &path)?;
        let steps_path = ["routes", route, "rollout", "steps"];
        let Some(steps) = value.get_ref().as_table().and_then(|t| t.get("steps")) else {
            self.report(
                &steps_path,
                "is required: the steps to walk, e.g. [{ phase = \"shadow\", share = 0.05, \
                 min_samples = 200 }, { phase = \"promoted\", share = 0.1, min_duration = \
                 \"1h\" }, { finalize = true }]",
            );
            return None;
        };
        let Some(items) = steps.get_ref().as_array() else {
            let got = steps.get_ref().type_str();
            self.report(&steps_path, format!("must be an array of steps, got {got}"));
            return None;
        };
        if items.is_empty() {
            self.report(&steps_path, "must list at least one step");
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut previous: Option<Phase> = None;
        for (i, item) in items.iter().enumerate() {
            let index = i.to_string();
            let at = ["routes", route, "rollout", "steps", index.as_str()];
            let Some(raw) = self.section::<raw::RolloutStep>(item, &at) else {
                continue;
            };
            let key = |k| ["routes", route, "rollout", "steps", index.as_str(), k];
            match raw.finalize {
                Some(true) => {
                    let extra = [
                        ("phase", raw.phase.is_some()),
                        ("share", raw.share.is_some()),
                        ("min_duration", raw.min_duration.is_some()),
                        ("min_samples", raw.min_samples.is_some()),
                    ];
                    for (name, given) in extra {
                        if given {
                            self.report(
                                &key(name),
                                "a finalize step takes no other keys: it makes the promoted \
                                 candidate stable at once",
                            );
                        }
                    }
                    if i + 1 != items.len() {
                        self.report(&key("finalize"), "finalize must be the last step");
                    }
                    if previous != Some(Phase::Promoted) {
                        self.report(
                            &key("finalize"),
                            "finalize must follow a promoted step (only a promoted candidate \
                             can become stable): add { phase = \"promoted\", share = 0.1, \
                             min_duration = \"1h\" } before it",
                        );
                    }
                    out.push(RolloutStep::Finalize);
                    continue;
                }
                Some(false) => {
                    self.report(
                        &key("finalize"),
                        "finalize = false is not a step: give phase and share instead, or \
                         finalize = true",
                    );
                    continue;
                }
                None => {}
            }
            let phase = match raw.phase.as_deref().map(str::parse::<Phase>) {
                None => {
                    self.report(
                        &key("phase"),
                        "is required (shadow, canary or promoted), or write { finalize = true }",
                    );
                    None
                }
                Some(Ok(Phase::Stable)) => {
                    self.report(
                        &key("phase"),
                        "must be shadow, canary or promoted (a finalize step makes the \
                         candidate stable)",
                    );
                    None
                }
                Some(Ok(phase)) => Some(phase),
                Some(Err(e)) => {
                    self.report(&key("phase"), e.to_string());
                    None
                }
            };
            if let (Some(phase), Some(before)) = (phase, previous) {
                if rank(phase) < rank(before) {
                    self.report(
                        &key("phase"),
                        format!(
                            "{phase} comes after {before}: phases never go backwards \
                             (shadow, canary, promoted)"
                        ),
                    );
                }
            }
            let share = match raw.share {
                None => {
                    self.report(&key("share"), "is required: a number between 0 and 1");
                    None
                }
                Some(share) => match share_problem(share) {
                    Some(problem) => {
                        self.report(&key("share"), problem);
                        None
                    }
                    None => Some(share),
                },
            };
            let min_duration = match raw.min_duration.as_deref().map(humantime::parse_duration) {
                None => Some(Duration::ZERO),
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    self.report(
                        &key("min_duration"),
                        format!(
                            "{:?} is not a duration ({e}): write e.g. \"90s\", \"10m\", \"1h\"",
                            raw.min_duration.unwrap_or_default()
                        ),
                    );
                    None
                }
            };
            if let Some(phase) = phase {
                previous = Some(phase);
            }
            if let (Some(phase), Some(share), Some(min_duration)) = (phase, share, min_duration) {
                out.push(RolloutStep::Hold {
                    phase,
                    share,
                    min_duration,
                    min_samples: raw.min_samples.unwrap_or(default_samples),
                });
            }
        }
        (self.problems.len() == before).then_some(RolloutConfig { steps: out })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, RolloutStep};
    use crate::domain::Phase;

    /// A route with a candidate whose rollout table is `rollout` (starting on line 11).
    fn file(rollout: &str) -> String {
        format!(
            "[upstreams.u]\nbase_url = \"http://127.0.0.1:1\"\n[routes.r]\nmodel = \"bot\"\n\
             phase = \"shadow\"\n[routes.r.stable]\nupstream = \"u\"\nmodel = \"m-1\"\n\
             [routes.r.candidate]\nupstream = \"u\"\nmodel = \"m-2\"\n{rollout}"
        )
    }

    fn problems(rollout: &str) -> Vec<String> {
        match Config::parse(&file(rollout), Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_contract_example_parses() {
        let text = file(
            r#"[routes.r.rollout]
steps = [
  { phase = "shadow",   share = 0.05, min_samples = 200 },
  { phase = "canary",   share = 0.05, min_duration = "10m", min_samples = 100 },
  { phase = "canary",   share = 0.25, min_duration = "30m" },
  { phase = "promoted", share = 0.10, min_duration = "1h" },
  { finalize = true },
]
"#,
        );
        let cfg = Config::parse(&text, Path::new(".")).unwrap();
        let steps = &cfg.routes["r"].rollout.as_ref().unwrap().steps;
        let hold = |phase, share, secs, min_samples| RolloutStep::Hold {
            phase,
            share,
            min_duration: Duration::from_secs(secs),
            min_samples,
        };
        assert_eq!(
            steps,
            &vec![
                hold(Phase::Shadow, 0.05, 0, 200),
                hold(Phase::Canary, 0.05, 600, 100),
                // min_samples defaults to rollback.min_samples (30).
                hold(Phase::Canary, 0.25, 1800, 30),
                hold(Phase::Promoted, 0.10, 3600, 30),
                RolloutStep::Finalize,
            ]
        );
        assert_eq!(
            Config::parse(&file(""), Path::new(".")).unwrap().routes["r"].rollout,
            None
        );
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[routes.r.rollout]\n",
                &["line 12: routes.r.rollout.steps: is required"],
            ),
            (
                "[routes.r.rollout]\nsteps = []\n",
                &["line 13: routes.r.rollout.steps: must list at least one step"],
            ),
            (
                "[routes.r.rollout]\nsteps = 3\n",
                &["line 13: routes.r.rollout.steps: must be an array of steps, got integer"],
            ),
            (
                "[routes.r.rollout]\nsteps = [{ phase = \"shadow\", share = 0.1 }]\nspeed = 2\n",
                &["line 14: routes.r.rollout.speed: unknown field `speed`"],
            ),
            (
                "[routes.r.rollout]\nsteps = [\n{ phase = \"canary\", share = 0.1 },\n\
                 { phase = \"shadow\", share = 0.1 },\n]\n",
                &["line 15: routes.r.rollout.steps.1.phase: shadow comes after canary: phases never go backwards"],
            ),
            (
                "[routes.r.rollout]\nsteps = [\n{ phase = \"promoted\", share = 1.5 },\n\
                 { phase = \"stable\", share = -0.1, min_duration = \"ten minutes\" },\n\
                 { phase = \"canary\", share = 0.1, min_samples = -1 },\n\
                 { share = 0.1 },\n]\n",
                &[
                    "line 14: routes.r.rollout.steps.0.share: must be between 0 and 1",
                    "line 15: routes.r.rollout.steps.1.phase: must be shadow, canary or promoted",
                    "line 15: routes.r.rollout.steps.1.share: must be between 0 and 1",
                    "line 15: routes.r.rollout.steps.1.min_duration: \"ten minutes\" is not a duration",
                    "line 16: routes.r.rollout.steps.2.min_samples:",
                    "line 17: routes.r.rollout.steps.3.phase: is required",
                ],
            ),
            (
                "[routes.r.rollout]\nsteps = [\n{ finalize = true },\n\
                 { phase = \"promoted\", share = 0.1 },\n{ finalize = false },\n]\n",
                &[
                    "line 14: routes.r.rollout.steps.0.finalize: finalize must be the last step",
                    "line 14: routes.r.rollout.steps.0.finalize: finalize must follow a promoted step",
                    "line 16: routes.r.rollout.steps.2.finalize: finalize = false is not a step",
                ],
            ),
            (
                "[routes.r.rollout]\nsteps = [\n{ phase = \"canary\", share = 0.1 },\n\
                 { finalize = true, share = 0.2 },\n]\n",
                &[
                    "line 15: routes.r.rollout.steps.1.share: a finalize step takes no other keys",
                    "line 15: routes.r.rollout.steps.1.finalize: finalize must follow a promoted step",
                ],
            ),
            (
                "[routes.r.rollout]\nsteps = [\"shadow\"]\n",
                &["line 13: routes.r.rollout.steps.0: must be a table, got string"],
            ),
        ];
        for (rollout, expected) in cases {
            let got = problems(rollout);
            let ok = got.len() == expected.len()
                && got
                    .iter()
                    .zip(expected.iter())
                    .all(|(g, e)| g.starts_with(e));
            assert!(ok, "for:\n{rollout}\nexpected {expected:#?}\ngot {got:#?}");
        }
    }

    /// Property: over random step lists, the file is accepted exactly when an independent
    /// statement of the rules holds, and every problem is named under the rollout's key with
    /// its line.
    #[test]
    fn accepted_exactly_when_the_rules_hold() {
        use rand::{Rng, SeedableRng};
        let phases = ["shadow", "canary", "promoted", "stable", "bogus"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..400 {
            let n = rng.random_range(1..6);
            let mut text = String::from("[routes.r.rollout]\nsteps = [\n");
            let mut valid = true;
            let mut last_rank = 0;
            let mut previous_promoted = false;
            for i in 0..n {
                if rng.random_bool(0.2) {
                    text.push_str("{ finalize = true },\n");
                    valid &= i + 1 == n && previous_promoted;
                    previous_promoted = false;
                    continue;
                }
                let phase = phases[rng.random_range(0..phases.len())];
                let share = [0.05, 1.0, 1.5][rng.random_range(0..3)];
                let duration = ["\"10m\"", "\"1h 30m\"", "\"soon\""][rng.random_range(0..3)];
                text.push_str(&format!(
                    "{{ phase = \"{phase}\", share = {share}, min_duration = {duration} }},\n"
                ));
                let rank = match phase {
                    "shadow" => 1,
                    "canary" => 2,
                    "promoted" => 3,
                    _ => 0,
                };
                valid &= rank > 0 && share <= 1.0 && duration != "\"soon\"";
                if rank > 0 {
                    valid &= rank >= last_rank;
                    last_rank = rank;
                }
                previous_promoted = phase == "promoted";
            }
            text.push_str("]\n");
            match Config::parse(&file(&text), Path::new(".")) {
                Ok(cfg) => {
                    assert!(valid, "accepted:\n{text}");
                    let steps = &cfg.routes["r"].rollout.as_ref().unwrap().steps;
                    assert_eq!(steps.len(), n, "{text}");
                }
                Err(problems) => {
                    assert!(!valid, "refused:\n{text}\n{problems:?}");
                    for p in problems {
                        assert!(p.key.starts_with("routes.r.rollout.steps."), "{p}");
                        assert!(p.line.is_some_and(|l| l >= 13), "{p}");
                    }
                }
            }
        }
    }

    #[test]
    fn durations_parse_and_steps_may_end_without_finalize() {
        let text = file(
            "[routes.r.rollout]\nsteps = [{ phase = \"canary\", share = 0.2, min_duration = \"1h 30m\", min_samples = 0 }]\n",
        );
        let cfg = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(
            cfg.routes["r"].rollout.as_ref().unwrap().steps,
            vec![RolloutStep::Hold {
                phase: Phase::Canary,
                share: 0.2,
                min_duration: Duration::from_secs(5400),
                min_samples: 0,
            }]
        );
    }
}
