//! [`RedisRateLimiter`]: GCRA in a script, so every node draws from the same allowance.
//!
//! One script call per request (`gcra.lua`), the same arithmetic as
//! [`ratelimit::gcra`](crate::ratelimit::gcra) on the caller's `now_ms`. A visitor message
//! does not come here: its limits are charged by the append script itself
//! ([`Store::append_message_limited`](crate::Store::append_message_limited)), with the
//! same Lua (`gcra_fn.lua`) on the same keys. The key holds the
//! TAT and expires at it (`PX`), so idle keys vanish by themselves and `sweep` has nothing
//! to do.

use std::sync::Arc;

use async_trait::async_trait;

use super::{keys, scripts, Conn};
use crate::ratelimit::{Decision, LimitSpec, RateLimiter};
use crate::Result;

/// The Redis [`RateLimiter`].
pub struct RedisRateLimiter {
    conn: Arc<Conn>,
    /// On a Redis Cluster the keys carry a hash tag, so one request's limits share a slot
    /// (see `keys::rate_clustered`).
    clustered: bool,
}

impl RedisRateLimiter {
    pub(crate) fn new(conn: Arc<Conn>, clustered: bool) -> RedisRateLimiter {
        RedisRateLimiter { conn, clustered }
    }

    fn key(&self, key: &str) -> String {
        keys::rate_key(key, self.clustered)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, limit: u32, window_ms: u64, now_ms: i64) -> Result<Decision> {
        if limit == 0 {
            return Ok(Decision::Limited {
                retry_after_ms: window_ms.max(1000),
                refused: 0,
            });
        }
        self.check_all(
            &[LimitSpec {
                key,
                limit,
                window_ms,
            }],
            now_ms,
        )
        .await
    }

    async fn check_all(&self, limits: &[LimitSpec<'_>], now_ms: i64) -> Result<Decision> {
        if let Some((i, l)) = limits.iter().enumerate().find(|(_, l)| l.limit == 0) {
            return Ok(Decision::Limited {
                retry_after_ms: l.window_ms.max(1000),
                refused: i,
            });
        }
        if self.clustered {
            let first = keys::slot(&self.key(limits[0].key));
            if limits.iter().any(|l| keys::slot(&self.key(l.key)) != first) {
                // Limits of different tenants cannot be checked in one script on a cluster;
                // the gateway never asks for that (one request, one tenant). Checked one
                // after the other: no longer all-or-nothing, still never over a limit.
                for (i, l) in limits.iter().enumerate() {
                    if let Decision::Limited { retry_after_ms, .. } =
                        self.check_all(std::slice::from_ref(l), now_ms).await?
                    {
                        return Ok(Decision::Limited {
                            retry_after_ms,
                            refused: i,
                        });
                    }
                }
                return Ok(Decision::Allowed);
            }
        }
        let mut inv = scripts::GCRA.prepare_invoke();
        inv.arg(now_ms);
        for l in limits {
            inv.key(self.key(l.key)).arg(l.limit).arg(l.window_ms);
        }
        let (allowed, wait, refused): (i64, i64, i64) = self.conn.eval(inv).await?;
        Ok(if allowed == 1 {
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after_ms: wait.max(0) as u64,
                // Lua counts from 1.
                refused: (refused.max(1) - 1) as usize,
            }
        })
    }
}
