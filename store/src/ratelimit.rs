//! Rate limiting: the contract, and the in-process implementation.
//!
//! The algorithm is GCRA (the "virtual scheduling" form of a leaky bucket): a limit of
//! `limit` per `window` lets a burst of `limit` through at once and then one every
//! `window / limit`. Per key it stores one number, the theoretical arrival time (TAT), so a
//! key whose TAT is in the past holds no information and can be evicted — that is how the
//! in-memory limiter stays bounded ([`MemoryRateLimiter::sweep`]) and how Redis keys expire
//! by themselves (PEXPIRE at the TAT).

use async_trait::async_trait;
use dashmap::DashMap;

use crate::Result;

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; the earliest moment a retry can succeed, in ms from now.
    Limited {
        retry_after_ms: u64,
        /// Which limit refused: its index in the `check_all` list (the one with the
        /// longest wait when several did; 0 for `check`). Lets a caller count a refusal
        /// under the limit that made it, not under every limit it checked.
        refused: usize,
    },
}

/// Counts requests per key. Implementations must be correct under concurrency (and,
/// for shared backends, across nodes).
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one request from `key`'s allowance of `limit` per `window_ms`.
    /// `limit == 0` refuses everything.
    async fn check(&self, key: &str, limit: u32, window_ms: u64, now_ms: i64) -> Result<Decision>;

    /// Several limits for one request, all or nothing: allowed only if every one allows
    /// it (then each takes one unit); otherwise nothing is taken and the wait is the
    /// longest. One round trip for shared backends.
    async fn check_all(&self, limits: &[LimitSpec<'_>], now_ms: i64) -> Result<Decision>;

    /// Drops state that no longer matters. Called periodically.
    async fn sweep(&self, _now_ms: i64) {}
}

/// One limit of a [`RateLimiter::check_all`]: `limit` per `window_ms` on `key`.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec<'a> {
    pub key: &'a str,
    pub limit: u32,
    pub window_ms: u64,
}

/// One GCRA step in microseconds. Returns the new TAT to store, or the wait.
pub fn gcra(
    stored_tat_us: Option<i64>,
    limit: u32,
    window_ms: u64,
    now_ms: i64,
) -> std::result::Result<i64, u64> {
    if limit == 0 {
        return Err(window_ms.max(1000));
    }
    let now_us = now_ms.saturating_mul(1000);
    let window_us = (window_ms as i64).saturating_mul(1000);
    let interval_us = (window_us / limit as i64).max(1);
    let tat = stored_tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat + interval_us;
    if new_tat - now_us > window_us {
        let wait_us = new_tat - window_us - now_us;
        Err(((wait_us + 999) / 1000) as u64)
    } else {
        Ok(new_tat)
    }
}

/// In-process limiter: correct for one node. State is one `i64` per active key.
#[derive(Default)]
pub struct MemoryRateLimiter {
    /// key → TAT in µs. Entries whose TAT has passed are equivalent to absent ones.
    tats: DashMap<String, i64>,
}

impl MemoryRateLimiter {
    /// Number of keys held (to check eviction).
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, limit: u32, window_ms: u64, now_ms: i64) -> Result<Decision> {
        let mut entry = self.tats.entry(key.to_owned()).or_insert(i64::MIN);
        let stored = (*entry != i64::MIN).then_some(*entry);
        Ok(match gcra(stored, limit, window_ms, now_ms) {
            Ok(tat) => {
                *entry = tat;
                Decision::Allowed
            }
            Err(wait) => {
                if stored.is_none() {
                    *entry = now_ms * 1000;
                }
                Decision::Limited {
                    retry_after_ms: wait,
                    refused: 0,
                }
            }
        })
    }

    async fn check_all(&self, limits: &[LimitSpec<'_>], now_ms: i64) -> Result<Decision> {
        // Decide on every key first, then commit all or none. Entries are looked at one at
        // a time (no two shard locks held), so two requests racing on the same keys may
        // both pass the check: a node-local limiter accepts that one-request slack.
        let mut tats = Vec::with_capacity(limits.len());
        let (mut wait, mut refused) = (0, 0);
        for (i, l) in limits.iter().enumerate() {
            let stored = self.tats.get(l.key).map(|t| *t).filter(|t| *t != i64::MIN);
            match gcra(stored, l.limit, l.window_ms, now_ms) {
                Ok(tat) => tats.push(tat),
                Err(w) if w > wait => (wait, refused) = (w, i),
                Err(_) => {}
            }
        }
        if wait > 0 {
            return Ok(Decision::Limited {
                retry_after_ms: wait,
                refused,
            });
        }
        for (l, tat) in limits.iter().zip(tats) {
            self.tats.insert(l.key.to_owned(), tat);
        }
        Ok(Decision::Allowed)
    }

    async fn sweep(&self, now_ms: i64) {
        let now_us = now_ms.saturating_mul(1000);
        self.tats.retain(|_, tat| *tat > now_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_steady_rate() {
        let l = MemoryRateLimiter::default();
        let hour = 3_600_000;
        for _ in 0..10 {
            assert_eq!(l.check("k", 10, hour, 0).await.unwrap(), Decision::Allowed);
        }
        let Decision::Limited { retry_after_ms, .. } = l.check("k", 10, hour, 0).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(retry_after_ms, 360_000);
        // Other keys are independent.
        assert_eq!(
            l.check("other", 10, hour, 0).await.unwrap(),
            Decision::Allowed
        );
        // One slot frees every window/limit.
        assert_eq!(
            l.check("k", 10, hour, 360_000).await.unwrap(),
            Decision::Allowed
        );
        assert!(matches!(
            l.check("k", 10, hour, 360_000).await.unwrap(),
            Decision::Limited { .. }
        ));
    }

    #[tokio::test]
    async fn idle_keys_are_evicted() {
        let l = MemoryRateLimiter::default();
        l.check("a", 2, 1000, 0).await.unwrap();
        l.check("b", 2, 1000, 0).await.unwrap();
        l.sweep(100).await;
        assert_eq!(l.len(), 2);
        l.sweep(10_000).await;
        assert!(l.is_empty());
    }

    #[tokio::test]
    async fn check_all_is_all_or_nothing() {
        let l = MemoryRateLimiter::default();
        let a = LimitSpec {
            key: "a",
            limit: 2,
            window_ms: 60_000,
        };
        let b = LimitSpec {
            key: "b",
            limit: 1,
            window_ms: 60_000,
        };
        assert_eq!(l.check_all(&[a, b], 0).await.unwrap(), Decision::Allowed);
        // b is exhausted: refused (and named), and a keeps its remaining unit.
        assert!(matches!(
            l.check_all(&[a, b], 0).await.unwrap(),
            Decision::Limited { refused: 1, .. }
        ));
        assert_eq!(l.check("a", 2, 60_000, 0).await.unwrap(), Decision::Allowed);
    }

    #[tokio::test]
    async fn zero_limit_refuses() {
        let l = MemoryRateLimiter::default();
        assert!(matches!(
            l.check("k", 0, 1000, 0).await.unwrap(),
            Decision::Limited { .. }
        ));
    }
}
