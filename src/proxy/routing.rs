//! Routing: which route a request belongs to, which release serves it, and which release (if
//! any) is mirrored. Pure functions over the snapshot and a few numbers; no I/O.

use std::sync::Arc;

use crate::config::StickyKey;
use crate::domain::{Phase, Role};
use crate::state::{Release, Route};
use crate::upstream::RequestBody;

/// What to do with one routed request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The release that answers the client.
    pub serve: Arc<Release>,
    pub served_role: Role,
    /// The release the request is mirrored to, off the client's path, for scoring.
    pub mirror: Option<Arc<Release>>,
}

/// The sticky sampling key of a request, if the route has one and the request carries it.
pub fn sticky_value(
    route: &Route,
    headers: &http::HeaderMap,
    body: &RequestBody<'_>,
) -> Option<String> {
    match route.sticky_key.as_ref()? {
        StickyKey::Header(name) => headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        StickyKey::Body(field) => body.sticky_value(field).map(|v| v.into_owned()),
    }
}

/// A point in [0, 1) that decides sampling for one request: a stable hash of the sticky key
/// (salted by route, so one user is not sampled on every route at once), or a random draw.
pub fn sample_point(route: &str, sticky: Option<&[u8]>, random: impl FnOnce() -> f64) -> f64 {
    match sticky {
        Some(key) => {
            let h = fnv1a(fnv1a(FNV_OFFSET, route.as_bytes()), key);
            // splitmix64's finaliser spreads FNV's low-entropy high bits.
            let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
        None => random(),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Decide serving and mirroring for a request whose sampling point is `point`.
///
/// - `stable`: stable serves, nothing mirrored.
/// - `shadow`: stable serves; the candidate is mirrored on `share` of requests.
/// - `canary`: the candidate serves `share` of requests, stable is mirrored on exactly those.
/// - `promoted`: the candidate serves all; stable is mirrored on `share` of requests.
pub fn plan(route: &Route, point: f64) -> Plan {
    let sampled = point < route.share;
    let stable = || Arc::clone(&route.stable);
    match (&route.phase, &route.candidate) {
        (Phase::Shadow, Some(c)) => Plan {
            serve: stable(),
            served_role: Role::Stable,
            mirror: sampled.then(|| Arc::clone(c)),
        },
        (Phase::Canary, Some(c)) if sampled => Plan {
            serve: Arc::clone(c),
            served_role: Role::Candidate,
            mirror: Some(stable()),
        },
        (Phase::Promoted, Some(c)) => Plan {
            serve: Arc::clone(c),
            served_role: Role::Candidate,
            mirror: sampled.then(stable),
        },
        _ => Plan {
            serve: stable(),
            served_role: Role::Stable,
            mirror: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_points_are_stable_and_spread() {
        let a = sample_point("r", Some(b"user-1"), || unreachable!());
        assert_eq!(a, sample_point("r", Some(b"user-1"), || 0.0));
        assert_ne!(a, sample_point("other", Some(b"user-1"), || 0.0));
        // 10,000 keys at share 0.25 land near 25 %.
        let n = (0..10_000)
            .filter(|i| sample_point("r", Some(format!("user-{i}").as_bytes()), || 0.0) < 0.25)
            .count();
        assert!(
            (2_300..2_700).contains(&n),
            "{n} of 10000 sampled at share 0.25"
        );
    }

    #[test]
    fn random_point_without_key() {
        assert_eq!(sample_point("r", None, || 0.42), 0.42);
    }
}
