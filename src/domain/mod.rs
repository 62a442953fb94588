//! The bottom layer: the vocabulary every other module shares and nothing else. Plumbing types
//! (the body every request and response uses, the boxed error) and the typed domain of releases
//! (phases, triggers, event kinds, release states, one release definition with its one
//! validation), and the one check of each value that comes in by several ways (`input`).
//! Imports nothing from the crate.

mod body;
mod index;
mod input;
mod release;
mod vocabulary;

pub use body::{full, Body, BoxError};
pub use index::{index_name_problem, space_problems};
pub use input::{cut, route_name_problem, share_problem, MAX_REASON_BYTES};
pub use release::{model_problem, Prices, ReleaseSpec};
pub use vocabulary::{EventKind, Phase, ReleaseState, Role, RolloutWait, Trigger, UnknownName};
