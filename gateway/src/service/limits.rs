//! Charging requests against the rate limits of the SPEC's table (the rules are
//! `crate::policy::limits`): one bucket per key whatever the transport, counted by the backend's
//! `RateLimiter` (in-process, or in Redis so limits hold across nodes).

use confab_protocol::ApiError;
use confab_store::ratelimit::{Decision, LimitSpec};

use crate::policy::limits::{Limit, RateLimits};
use crate::settings::Tenant;
use crate::state::AppState;

/// Takes one request from `limit`'s allowance for `subject` (an IP or a visitor id).
pub async fn charge(
    state: &AppState,
    tenant: &Tenant,
    limit: Limit,
    subject: &str,
) -> Result<(), ApiError> {
    charge_all(state, tenant, &[(limit, subject)]).await
}

/// A request that named an unknown public key (key enumeration) takes one unit of the
/// client IP's `GET /v1/config` allowance — in a bucket of its own, as no tenant owns
/// it, sized by the most generous `config_per_minute_per_ip` of the deployment.
pub async fn charge_unknown_key(state: &AppState, ip: &str) -> Result<(), ApiError> {
    let allowance = state
        .config
        .tenants
        .iter()
        .map(|t| t.rate_limits.config_per_minute_per_ip)
        .max()
        .unwrap_or(RateLimits::default().config_per_minute_per_ip);
    // `?` is no tenant id character: this bucket is no tenant's.
    let key = format!("cfg-ip:?:{ip}");
    let spec = LimitSpec {
        key: &key,
        limit: allowance,
        window_ms: 60_000,
    };
    match state.limiter.check_all(&[spec], state.now_ms()).await {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Limited { retry_after_ms, .. }) => {
            state.metrics.rate_limited("cfg-ip");
            Err(ApiError::rate_limited(retry_after_ms.div_ceil(1000).max(1)))
        }
        Err(e) => Err(crate::error::store_error(e)),
    }
}

/// Several limits for one request, all or nothing (one round trip to a shared
/// limiter): refused if any is exhausted, and then none is charged.
pub async fn charge_all(
    state: &AppState,
    tenant: &Tenant,
    limits: &[(Limit, &str)],
) -> Result<(), ApiError> {
    let charges = Charges::new(tenant, limits);
    match state
        .limiter
        .check_all(&charges.specs(), state.now_ms())
        .await
    {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Limited {
            retry_after_ms,
            refused,
        }) => Err(charges.refusal(state, retry_after_ms, refused)),
        Err(e) => Err(crate::error::store_error(e)),
    }
}

/// The limits one request is charged, keyed as the limiter keys them
/// (`PREFIX:TENANT:SUBJECT`): what [`charge_all`] checks, and what a visitor message hands
/// the store to charge in its own commit (`Store::append_message_limited`).
#[derive(Default)]
pub struct Charges(Vec<(String, u32, u64, &'static str)>);

impl Charges {
    pub fn new(tenant: &Tenant, limits: &[(Limit, &str)]) -> Charges {
        Charges(
            limits
                .iter()
                .map(|(limit, subject)| {
                    let (allowance, window, prefix) = limit.params(&tenant.cfg.rate_limits);
                    (
                        format!("{prefix}:{}:{subject}", tenant.cfg.id),
                        allowance,
                        window,
                        prefix,
                    )
                })
                .collect(),
        )
    }

    pub fn specs(&self) -> Vec<LimitSpec<'_>> {
        self.0
            .iter()
            .map(|(key, limit, window_ms, _)| LimitSpec {
                key,
                limit: *limit,
                window_ms: *window_ms,
            })
            .collect()
    }

    /// The answer to a refusal by the limit at index `refused`: 429 with `Retry-After`,
    /// counted under that limit, not under every limit checked.
    pub fn refusal(&self, state: &AppState, retry_after_ms: u64, refused: usize) -> ApiError {
        if let Some((_, _, _, prefix)) = self.0.get(refused) {
            state.metrics.rate_limited(prefix);
        }
        ApiError::rate_limited(retry_after_ms.div_ceil(1000).max(1))
    }
}
