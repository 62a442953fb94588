//! The names of the release lifecycle as enums, each with its one spelling: the one the
//! configuration, the admin API, the store, the event log and the metrics use. `as_str` writes
//! it, `FromStr` reads it back; nothing else in the crate spells these names.

use std::fmt;
use std::str::FromStr;

/// A name that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: expected one of {}", .expected.trim_end_matches(", "))]
pub struct UnknownName {
    /// What kind of name it should have been ("phase", "trigger", ...).
    pub what: &'static str,
    /// What was given.
    pub given: String,
    /// The accepted spellings, each followed by ", ".
    pub expected: &'static str,
}

/// Declares a fieldless enum with one spelling per variant, `ALL`, `as_str`, `Display`,
/// `FromStr` and serde (as the spelling).
macro_rules! names {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            #[allow(dead_code, reason = "not every enum lists all its values outside tests")]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The one spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        given: s.to_owned(),
                        expected: concat!($($text, ", "),+),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

names!(
    /// The phase of a route.
    Phase, "phase", {
        /// No candidate; stable serves everything.
        Stable = "stable",
        /// Stable serves everything; `share` is mirrored to the candidate.
        Shadow = "shadow",
        /// The candidate serves `share` of the traffic; stable is mirrored on those requests.
        Canary = "canary",
        /// The candidate serves everything; stable is mirrored on `share` of requests.
        Promoted = "promoted",
    }
);

impl Phase {
    /// Which of a route's releases serves the requests the candidate is not chosen for: the
    /// candidate once promoted, stable otherwise. The one place this is decided.
    pub fn serving<T>(self, stable: T, candidate: Option<T>) -> T {
        match (self, candidate) {
            (Phase::Promoted, Some(c)) => c,
            _ => stable,
        }
    }
}

names!(
    /// Why a route was rolled back.
    Trigger, "trigger", {
        /// The judge: quality below the threshold.
        Quality = "quality",
        /// The judge: candidate error rate above the limit.
        Errors = "errors",
        /// An Alertmanager alert.
        Alert = "alert",
        /// An operator (admin API or CLI).
        Manual = "manual",
    }
);

names!(
    /// What an entry of a route's event log records.
    EventKind, "event kind", {
        /// Created or changed by the configuration file at start.
        Configured = "configured",
        /// A new release became the candidate.
        Published = "published",
        /// A candidate was replaced by a newer one before it finished.
        Superseded = "superseded",
        /// The candidate moved to another phase or share.
        Promoted = "promoted",
        /// Stable serves again (or an earlier release became stable).
        RolledBack = "rolled_back",
        /// A promoted candidate became stable.
        Finalized = "finalized",
        /// An operator marked an embedding route's vector index dropped.
        IndexDropped = "index_dropped",
        /// The automatic rollout moved the candidate to its next step (or an operator skipped
        /// one); the reason says which step and on what evidence.
        RolloutStep = "rollout_step",
        /// An operator paused the automatic rollout (or took the wheel with a manual promote).
        RolloutPaused = "rollout_paused",
        /// An operator resumed the automatic rollout.
        RolloutResumed = "rollout_resumed",
        /// A rollback drill put the candidate it had rolled back back in its phase and share.
        Restored = "restored",
    }
);

names!(
    /// What an automatic rollout's current step is waiting for (a metric label: bounded).
    RolloutWait, "rollout wait", {
        /// Nothing: the step's conditions hold, it advances on the controller's next tick.
        Ready = "ready",
        /// An operator paused the rollout.
        Paused = "paused",
        /// The step's minimum duration has not elapsed.
        Duration = "duration",
        /// Fewer candidate samples than the step (or the judge) needs.
        Samples = "samples",
        /// The noise floor is not yet trusted (too few stable-vs-stable samples).
        NoiseFloor = "noise_floor",
        /// The quality's lower confidence bound is below the threshold.
        Quality = "quality",
        /// The error rate's upper confidence bound is above `max_error_rate`.
        Errors = "errors",
        /// The step's conditions hold, but the store cannot be written: the step is taken once
        /// it can.
        Store = "store",
        /// The last step holds (no `finalize` step): finalize by hand.
        Done = "done",
    }
);

names!(
    /// A release's place in its route's history.
    ReleaseState, "release state", {
        /// The route's current candidate.
        Candidate = "candidate",
        /// The route's known-good release.
        Stable = "stable",
        /// Rolled back, and not revived since.
        RolledBack = "rolled_back",
        /// Neither: superseded or replaced, kept for the record and for rollbacks to it.
        Retired = "retired",
    }
);

names!(
    /// Which side of the comparison a release plays for one request.
    Role, "role", {
        /// The known-good release: the reference.
        Stable = "stable",
        /// The release under test.
        Candidate = "candidate",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(*p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        for t in Trigger::ALL {
            assert_eq!(t.as_str().parse::<Trigger>(), Ok(*t));
        }
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(*k));
        }
        for s in ReleaseState::ALL {
            assert_eq!(s.as_str().parse::<ReleaseState>(), Ok(*s));
        }
    }

    #[test]
    fn only_a_promoted_candidate_serves_all() {
        for p in Phase::ALL {
            let expected = if *p == Phase::Promoted { 2 } else { 1 };
            assert_eq!(p.serving(1, Some(2)), expected, "{p}");
            assert_eq!(p.serving(1, None), 1, "{p} without a candidate");
        }
    }

    #[test]
    fn unknown_names_say_what_is_accepted() {
        let e = "Canary".parse::<Phase>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown phase \"Canary\": expected one of stable, shadow, canary, promoted"
        );
        assert!(serde_json::from_str::<Trigger>("\"bogus\"").is_err());
    }
}
