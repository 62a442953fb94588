//! A route's policy: its shadow, scoring and rollback settings and its mirroring budget. One
//! per configured route, shared by every snapshot of the route, so the budget's counters survive
//! snapshot swaps. The budget only ever refuses: a mirror over it is dropped, never queued.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Upstream;
use crate::config::{
    Check, JudgeConfig, RollbackConfig, RouteConfig, ScoringConfig, SemanticConfig, ShadowConfig,
};
use crate::score::Windows;

/// Why the budget refused a mirror (the `outcome` label of `understudy_shadow_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_inflight` mirrors are running already.
    Busy,
    /// Over `max_rps` or `max_tokens_per_min`.
    Budget,
}

impl Refusal {
    /// The metric label.
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::Busy => "dropped_busy",
            Refusal::Budget => "dropped_budget",
        }
    }
}

/// A route's settings and mirroring budget.
#[derive(Debug)]
pub struct RoutePolicy {
    pub shadow: ShadowConfig,
    pub scoring: ScoringConfig,
    pub rollback: RollbackConfig,
    /// The user's checks, compiled.
    pub checks: Vec<Check>,
    /// The embedding scorer with its upstream and budget, when configured.
    pub semantic: Option<RemoteScorer<SemanticConfig>>,
    /// The LLM judge with its upstream and budget, when configured.
    pub judge: Option<RemoteScorer<JudgeConfig>>,
    /// Stable-vs-stable samples the route's judge holds, as the controller last set it: until
    /// `noise_warmup`, every mirror re-asks stable.
    noise_samples: AtomicUsize,
    /// Mirrors in flight, at most `max_inflight`; taken without waiting, so past it a mirror is
    /// dropped (`dropped_busy`), never queued.
    inflight: Arc<Semaphore>,
    /// Mirrors per second (`max_rps`, burst of one second's worth); past it: `dropped_budget`.
    rate: DefaultDirectRateLimiter,
    /// Mirror tokens per minute (`max_tokens_per_min`), charged when each answer's usage is known.
    tokens: Option<TokenBudget>,
    /// The origin of the token budget's clock.
    epoch: Instant,
    /// Embedding routes: the rolling windows of inputs embedded by both releases, shared by the
    /// mirror tasks of every worker (locked by one mirror at a time, off the client's path).
    pub neighbourhood: Mutex<Windows>,
}

impl RoutePolicy {
    /// The policy of `cfg`; its scorers' upstreams looked up in `upstreams` (the configuration
    /// checked that they exist).
    pub fn new(cfg: &RouteConfig, upstreams: &HashMap<String, Arc<Upstream>>) -> Self {
        let shadow = cfg.shadow.clone();
        let tokens = shadow.max_tokens_per_min.map(TokenBudget::per_minute);
        let scorer = |name: &str| upstreams.get(name).cloned();
        RoutePolicy {
            inflight: Arc::new(Semaphore::new(shadow.max_inflight)),
            rate: RateLimiter::direct(mirror_quota(shadow.max_rps)),
            tokens,
            epoch: Instant::now(),
            semantic: cfg.scoring.semantic.clone().and_then(|c| {
                let (rps, up) = (c.max_rps, scorer(&c.upstream)?);
                Some(RemoteScorer::new(c, up, rps, None))
            }),
            judge: cfg.scoring.judge.clone().and_then(|c| {
                let (rps, tokens, up) = (c.max_rps, c.max_tokens_per_min, scorer(&c.upstream)?);
                Some(RemoteScorer::new(c, up, rps, tokens))
            }),
            checks: cfg.checks.clone(),
            noise_samples: AtomicUsize::new(0),
            shadow,
            scoring: cfg.scoring.clone(),
            rollback: cfg.rollback.clone(),
            neighbourhood: Mutex::default(),
        }
    }

    /// Whether this mirror should also re-ask stable for the noise floor: always while the
    /// floor is warming up, then on `noise_floor_share` of mirrors (`draw` is uniform in [0, 1)).
    pub fn wants_noise(&self, draw: f64) -> bool {
        self.noise_samples.load(Ordering::Relaxed) < self.scoring.noise_warmup
            || draw < self.scoring.noise_floor_share
    }

    /// The controller's count of stable-vs-stable samples (0 again when stable changes).
    pub fn set_noise_samples(&self, n: usize) {
        self.noise_samples.store(n, Ordering::Relaxed);
    }

    /// Admits one mirror now, or says why not. The permit is held for the mirror's life.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        let permit = Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        let tokens_ok = self
            .tokens
            .as_ref()
            .is_none_or(|t| t.has_room(self.now_ns()));
        if !tokens_ok || self.rate.check().is_err() {
            return Err(Refusal::Budget);
        }
        Ok(permit)
    }

    /// Charges the tokens a mirror spent against `max_tokens_per_min`.
    pub fn charge_tokens(&self, spent: u64) {
        if let Some(t) = &self.tokens {
            t.charge(spent, self.now_ns());
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// A scorer that calls a model (embeddings, the LLM judge): its settings, the upstream it calls
/// and its own budget, so scoring never spends the mirrors' budget or floods the scorer.
#[derive(Debug)]
pub struct RemoteScorer<C> {
    pub cfg: C,
    pub upstream: Arc<Upstream>,
    /// Calls per second; past it the scorer is skipped for that sample.
    rate: DefaultDirectRateLimiter,
    /// Tokens per minute, charged after each call.
    tokens: Option<TokenBudget>,
    epoch: Instant,
}

impl<C> RemoteScorer<C> {
    fn new(cfg: C, upstream: Arc<Upstream>, max_rps: f64, tokens_per_min: Option<u64>) -> Self {
        RemoteScorer {
            cfg,
            upstream,
            rate: RateLimiter::direct(mirror_quota(max_rps)),
            tokens: tokens_per_min.map(TokenBudget::per_minute),
            epoch: Instant::now(),
        }
    }

    /// Takes `calls` calls from the budget at once, or none.
    pub fn admit(&self, calls: u32) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64;
        if !self.tokens.as_ref().is_none_or(|t| t.has_room(now)) {
            return false;
        }
        let Some(n) = NonZeroU32::new(calls) else {
            return true;
        };
        matches!(self.rate.check_n(n), Ok(Ok(())))
    }

    /// Charges the tokens a call spent.
    pub fn charge_tokens(&self, spent: u64) {
        if let Some(t) = &self.tokens {
            t.charge(spent, self.epoch.elapsed().as_nanos() as u64);
        }
    }
}

/// `max_rps` mirrors per second with a burst of one second's worth (at least one).
fn mirror_quota(max_rps: f64) -> Quota {
    let period = Duration::try_from_secs_f64(1.0 / max_rps).unwrap_or(Duration::MAX);
    let burst = NonZeroU32::new(max_rps.round().clamp(1.0, f64::from(u32::MAX)) as u32)
        .unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// A token budget that is charged after the fact: a mirror's size is known only when its answer
/// is, so a mirror is admitted while the budget has room and its usage is charged afterwards,
/// even past the budget, which then refuses until it has refilled (a debt). `governor`, used for
/// the request rate, only admits spending known in advance, hence this small GCRA of its own.
/// Lock-free; the caller passes the time (nanoseconds on one clock), so tests need no sleep.
#[derive(Debug)]
struct TokenBudget {
    /// Theoretical arrival time, in nanoseconds on the caller's clock.
    tat: AtomicU64,
    /// Nanoseconds one token costs.
    token_ns: f64,
    /// How far ahead of now the arrival time may run: a minute's worth of tokens.
    tolerance_ns: u64,
}

impl TokenBudget {
    fn per_minute(tokens: u64) -> Self {
        let token_ns = 60e9 / (tokens as f64).max(1e-9);
        TokenBudget {
            tat: AtomicU64::new(0),
            token_ns,
            tolerance_ns: (token_ns * (tokens as f64).max(1.0)) as u64,
        }
    }

    /// Whether the budget has room left at `now`.
    fn has_room(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now + self.tolerance_ns
    }

    /// Charges `tokens` spent already, even past the budget.
    fn charge(&self, tokens: u64, now: u64) {
        let step = (tokens as f64 * self.token_ns) as u64;
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                Some(t.max(now).saturating_add(step))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn mirror_rate_admits_its_burst_then_refills_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(mirror_quota(10.0), clock.clone());
        let admitted = (0..100).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(admitted, 10, "a burst of one second's worth");
        clock.advance(Duration::from_millis(250));
        let more = (0..100).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(more, 2, "2.5 refilled in 250 ms at 10/s");
        // Slow rates still admit one.
        let clock = FakeRelativeClock::default();
        let slow = RateLimiter::direct_with_clock(mirror_quota(0.5), clock.clone());
        assert!(slow.check().is_ok());
        assert!(slow.check().is_err());
        clock.advance(Duration::from_secs(2));
        assert!(slow.check().is_ok(), "one every two seconds");
    }

    #[test]
    fn token_budget_goes_into_debt_and_refills() {
        let t = TokenBudget::per_minute(1000);
        assert!(t.has_room(0));
        t.charge(5000, 0);
        assert!(!t.has_room(0), "5000 tokens charged against 1000/min");
        // 5000 tokens at 1000/min is five minutes of budget; one minute of tolerance.
        assert!(!t.has_room(3 * 60_000_000_000));
        assert!(t.has_room(4 * 60_000_000_000 + 1));
    }

    fn policy(shadow: ShadowConfig, scoring: ScoringConfig) -> RoutePolicy {
        let text =
            "[upstreams.u]\nbase_url = \"http://127.0.0.1:1\"\n[routes.r]\nmodel = \"bot\"\n\
                    [routes.r.stable]\nupstream = \"u\"\nmodel = \"m-1\"\n";
        let mut cfg = crate::config::Config::parse(text, std::path::Path::new("."))
            .unwrap()
            .routes["r"]
            .clone();
        cfg.shadow = shadow;
        cfg.scoring = scoring;
        RoutePolicy::new(&cfg, &HashMap::new())
    }

    #[test]
    fn noise_floor_warms_up_then_samples_its_share() {
        let scoring = ScoringConfig {
            noise_warmup: 3,
            noise_floor_share: 0.1,
            ..ScoringConfig::default()
        };
        let shadow = ShadowConfig {
            max_inflight: 1,
            max_rps: 1.0,
            max_tokens_per_min: None,
            timeout: Duration::from_secs(1),
        };
        let p = policy(shadow, scoring);
        assert!(p.wants_noise(0.99), "cold: every mirror");
        p.set_noise_samples(3);
        assert!(!p.wants_noise(0.99));
        assert!(p.wants_noise(0.05), "warm: the share");
        p.set_noise_samples(0);
        assert!(p.wants_noise(0.99), "stable changed: warm up again");
    }

    #[test]
    fn busy_and_budget_refusals() {
        let shadow = ShadowConfig {
            max_inflight: 1,
            max_rps: 1000.0,
            max_tokens_per_min: Some(100),
            timeout: Duration::from_secs(1),
        };
        let p = policy(shadow, ScoringConfig::default());
        let permit = p.admit().unwrap();
        assert_eq!(p.admit().unwrap_err(), Refusal::Busy);
        drop(permit);
        p.charge_tokens(1_000_000);
        assert_eq!(p.admit().unwrap_err(), Refusal::Budget);
    }
}
