//! The store's health as the controller knows it, and the changes that took effect in memory but
//! are not yet durable. Pure: the controller does the I/O and tells this what happened.
//!
//! The safe direction never depends on the disk: a rollback is applied in memory and published
//! first, then queued here and written in order. While anything is queued or the last write
//! failed, the store is failing: risky changes are refused, `/readyz` says why, and the
//! controller's timer retries the queue (or probes the store) until a write succeeds. A queued
//! transition whose earlier attempt failed is checked against the store before it is written
//! again, since a failed commit may still have landed (an fsync error after the write): each is
//! written at most once.

use std::collections::VecDeque;

use serde::Serialize;

use super::store::{RouteRecord, Transition};

/// A transition applied in memory and published, not yet committed.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The route it changed.
    pub route: String,
    pub transition: Transition,
    /// Failed attempts to commit it so far.
    pub attempts: u32,
}

/// What the store's health changed to, so the caller logs each change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Was healthy, now failing.
    Failing,
    /// Was failing, now healthy: everything queued is durable.
    Recovered,
    /// No change.
    Same,
}

/// The store's health and the queue of changes not yet durable.
#[derive(Debug, Default)]
pub struct Durability {
    /// Applied in memory, waiting to be committed, oldest first; committed in this order.
    pending: VecDeque<Pending>,
    /// Why the last store operation failed; None once one has succeeded with nothing queued.
    failing: Option<String>,
}

/// The outcome of one attempt to write the queue.
#[derive(Debug)]
pub struct Flushed<E> {
    /// The routes of the transitions now durable, in commit order.
    pub committed: Vec<String>,
    /// The failure that stopped the attempt (its transition and all after it stay queued).
    pub error: Option<E>,
    pub turn: Turn,
}

/// The store's health, as `/readyz`, the route views and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    /// "ok" or "failing".
    pub state: &'static str,
    /// Why it is failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Changes in effect but not yet durable (of the route, in a route's view).
    pub pending: usize,
}

impl StoreStatus {
    pub fn ok(&self) -> bool {
        self.state == "ok"
    }
}

impl Default for StoreStatus {
    fn default() -> Self {
        StoreStatus {
            state: "ok",
            reason: None,
            pending: 0,
        }
    }
}

impl Durability {
    /// Nothing queued and the last store operation succeeded: risky changes may go ahead.
    pub fn healthy(&self) -> bool {
        self.failing.is_none() && self.pending.is_empty()
    }

    /// Why the store is failing, when it is.
    pub fn failure(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The queued transitions of `route`, oldest first.
    pub fn pending_of<'a>(&'a self, route: &'a str) -> impl Iterator<Item = &'a Transition> + 'a {
        self.pending
            .iter()
            .filter(move |p| p.route == route)
            .map(|p| &p.transition)
    }

    /// The whole store's status, or one route's (its own pending count).
    pub fn status(&self, route: Option<&str>) -> StoreStatus {
        let pending = match route {
            Some(r) => self.pending_of(r).count(),
            None => self.pending.len(),
        };
        if self.healthy() {
            return StoreStatus::default();
        }
        StoreStatus {
            state: "failing",
            reason: Some(
                self.failing
                    .clone()
                    .unwrap_or_else(|| "changes not yet written".into()),
            ),
            pending,
        }
    }

    /// Queues a transition already applied in memory, behind every earlier one.
    pub fn queue(&mut self, route: &str, transition: Transition) {
        self.pending.push_back(Pending {
            route: route.to_string(),
            transition,
            attempts: 0,
        });
    }

    /// A store operation failed.
    pub fn failed(&mut self, reason: String) -> Turn {
        let was_failing = self.failing.replace(reason).is_some();
        if !was_failing {
            Turn::Failing
        } else {
            Turn::Same
        }
    }

    /// A store write succeeded. The store is healthy again only once nothing is queued.
    pub fn succeeded(&mut self) -> Turn {
        if !self.pending.is_empty() {
            return Turn::Same;
        }
        match self.failing.take() {
            Some(_) => Turn::Recovered,
            None => Turn::Same,
        }
    }

    /// Puts back the failure `flush` replaced, when its error was no failure of the store (a
    /// shared store's route changed on another replica first).
    pub fn restore(&mut self, failing: Option<String>) {
        self.failing = failing;
    }

    /// Computes each queued transition again (`again(route, transition)`, in order, on a newer
    /// state of a shared store); one for which it gives None is dropped: nothing is left to do.
    pub fn rederive(&mut self, mut again: impl FnMut(&str, &Transition) -> Option<Transition>) {
        let queued = std::mem::take(&mut self.pending);
        self.pending = queued
            .into_iter()
            .filter_map(|mut p| {
                p.transition = again(&p.route, &p.transition)?;
                p.attempts = 0;
                Some(p)
            })
            .collect();
    }

    /// Writes the queue in order through `commit`, stopping at the first failure (that
    /// transition and every later one stay queued, in order, their attempts counted).
    pub fn flush<E: ToString>(
        &mut self,
        mut commit: impl FnMut(&Pending) -> Result<(), E>,
    ) -> Flushed<E> {
        let mut committed = Vec::new();
        while let Some(p) = self.pending.front_mut() {
            if let Err(e) = commit(p) {
                p.attempts += 1;
                let turn = self.failed(e.to_string());
                return Flushed {
                    committed,
                    error: Some(e),
                    turn,
                };
            }
            if let Some(done) = self.pending.pop_front() {
                committed.push(done.route);
            }
        }
        let turn = if committed.is_empty() {
            Turn::Same
        } else {
            self.succeeded()
        };
        Flushed {
            committed,
            error: None,
            turn,
        }
    }
}

/// Whether `t` is already in the store whose routes are `stored`: the route's stored state is
/// exactly the one `t` leads to (its update time included, so an equal earlier state does not
/// count). Only a transition whose earlier attempt failed needs asking.
pub fn landed(stored: &[RouteRecord], t: &Transition) -> bool {
    let Some(after) = &t.route else {
        return false;
    };
    stored.iter().any(|r| r == after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Phase;

    fn record(route: &str, stable: u32, candidate: Option<u32>, at: i64) -> RouteRecord {
        RouteRecord {
            route: route.into(),
            phase: if candidate.is_some() {
                Phase::Shadow
            } else {
                Phase::Stable
            },
            share: 0.1,
            stable,
            candidate,
            updated_at_ms: at,
        }
    }

    fn rollback(route: &str, at: i64) -> Transition {
        Transition {
            route: Some(record(route, 1, None, at)),
            ..Transition::default()
        }
    }

    #[test]
    fn healthy_until_a_failure_and_again_after_a_write_with_nothing_queued() {
        let mut d = Durability::default();
        assert!(d.healthy());
        assert_eq!(d.status(None), StoreStatus::default());
        assert_eq!(d.failed("disk full".into()), Turn::Failing);
        assert_eq!(d.failed("disk full".into()), Turn::Same);
        assert!(!d.healthy());
        assert_eq!(d.failure(), Some("disk full"));
        assert_eq!(d.succeeded(), Turn::Recovered);
        assert!(d.healthy());
        assert_eq!(d.succeeded(), Turn::Same);
    }

    #[test]
    fn a_queued_change_keeps_the_store_failing_until_written() {
        let mut d = Durability::default();
        d.queue("bot", rollback("bot", 1));
        assert!(!d.healthy());
        // A samples write that succeeds does not make an unwritten rollback durable.
        assert_eq!(d.succeeded(), Turn::Same);
        let status = d.status(Some("bot"));
        assert_eq!((status.state, status.pending), ("failing", 1));
        assert_eq!(d.status(Some("other")).pending, 0);
        let flushed = d.flush(|_| Ok::<(), String>(()));
        assert_eq!(flushed.committed, ["bot"]);
        // Written at the first attempt: the store never failed.
        assert_eq!(flushed.turn, Turn::Same);
        assert!(d.healthy());
        // Queued, failed, then written: that is a recovery.
        d.queue("bot", rollback("bot", 2));
        assert_eq!(d.flush(|_| Err("full")).turn, Turn::Failing);
        assert_eq!(d.flush(|_| Ok::<(), &str>(())).turn, Turn::Recovered);
    }

    #[test]
    fn flush_writes_in_order_and_stops_at_the_first_failure() {
        let mut d = Durability::default();
        for (i, route) in ["a", "b", "a", "c"].into_iter().enumerate() {
            d.queue(route, rollback(route, i as i64));
        }
        let mut seen = Vec::new();
        let flushed = d.flush(|p| {
            seen.push(p.transition.route.as_ref().map(|r| r.updated_at_ms));
            if seen.len() == 3 {
                Err("disk full")
            } else {
                Ok(())
            }
        });
        assert_eq!(seen, [Some(0), Some(1), Some(2)]);
        assert_eq!(flushed.committed, ["a", "b"]);
        assert_eq!(flushed.error, Some("disk full"));
        assert_eq!(flushed.turn, Turn::Failing);
        assert_eq!(d.pending(), 2);
        assert_eq!(d.failure(), Some("disk full"));
        // The failed one is first, marked as attempted; the one behind it never was.
        let attempts: Vec<(String, u32)> = d
            .pending
            .iter()
            .map(|p| (p.route.clone(), p.attempts))
            .collect();
        assert_eq!(attempts, [("a".to_string(), 1), ("c".to_string(), 0)]);
        let mut seen = Vec::new();
        let flushed = d.flush(|p| {
            seen.push(p.route.clone());
            Ok::<(), &str>(())
        });
        assert_eq!(seen, ["a", "c"]);
        assert_eq!(flushed.turn, Turn::Recovered);
        assert!(d.healthy());
    }

    #[test]
    fn an_empty_flush_changes_nothing() {
        let mut d = Durability::default();
        d.failed("gone".into());
        let flushed = d.flush(|_| Err::<(), _>("never called"));
        assert!(flushed.committed.is_empty() && flushed.error.is_none());
        assert_eq!(flushed.turn, Turn::Same);
        assert_eq!(d.failure(), Some("gone"));
    }

    #[test]
    fn landed_only_when_the_stored_state_is_exactly_the_result() {
        let t = rollback("bot", 7);
        let check = |stored: &[RouteRecord], expected: bool| {
            assert_eq!(landed(stored, &t), expected, "{stored:?}");
        };
        check(&[], false);
        check(&[record("bot", 1, Some(2), 5)], false);
        // Same versions, earlier time: an older state, not this transition.
        check(&[record("bot", 1, None, 6)], false);
        check(
            &[record("other", 1, None, 7), record("bot", 1, None, 7)],
            true,
        );
        assert!(!landed(
            &[record("bot", 1, None, 7)],
            &Transition::default()
        ));
    }
}
