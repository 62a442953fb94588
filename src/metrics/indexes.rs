//! Embedding routes' vector indexes as metrics: which index the route's traffic is served
//! from (the value of `x-understudy-index`), and until when each index that stopped serving
//! stays a rollback target. Index names come from the configuration and the store.

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

use super::register;

/// One index of a route as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexGauge<'a> {
    pub name: &'a str,
    /// The route's traffic is served from it (stable's, or a promoted candidate's).
    pub serving: bool,
    /// Unix seconds until which it stays a rollback target (stopped serving, not dropped).
    pub retained_until: Option<f64>,
}

/// `understudy_serving_index` and `understudy_index_retained_until_seconds`.
#[derive(Clone)]
pub struct IndexMetrics {
    serving: IntGaugeVec,
    retained_until: GaugeVec,
}

impl IndexMetrics {
    pub(super) fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        Ok(IndexMetrics {
            serving: register(r, IntGaugeVec::new(Opts::new("understudy_serving_index", "Embedding routes: 1 for the vector index the route's traffic is served from (x-understudy-index; a canary's share names the candidate's), 0 for its other indexes."), &["route", "index"])?)?,
            retained_until: register(r, GaugeVec::new(Opts::new("understudy_index_retained_until_seconds", "Embedding routes: unix time until which an index that stopped serving stays a rollback target (index_retention); absent once dropped."), &["route", "index"])?)?,
        })
    }

    /// A route's indexes, after every published change.
    pub fn route_indexes(&self, route: &str, indexes: &[IndexGauge<'_>]) {
        for i in indexes {
            self.serving
                .with_label_values(&[route, i.name])
                .set(i64::from(i.serving));
            match i.retained_until {
                Some(until) => self
                    .retained_until
                    .with_label_values(&[route, i.name])
                    .set(until),
                None => {
                    let _ = self.retained_until.remove_label_values(&[route, i.name]);
                }
            }
        }
    }
}
