//! Rate limits of the SPEC's table, keyed by the real client IP or the visitor, and the
//! client-IP rule itself: the socket's peer address, or — only when the peer is a
//! configured trusted proxy — the right-most `X-Forwarded-For` entry that is not itself
//! a trusted proxy. A client-supplied header from anyone else is ignored.
//!
//! Counting is delegated to the backend's [`RateLimiter`](confab_store::ratelimit::RateLimiter):
//! in-process for the embedded store, shared through Redis in Redis mode, so that limits
//! hold across nodes. One bucket per key whatever the transport (HTTP or WebSocket).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use confab_protocol::ApiError;
use confab_store::ratelimit::{Decision, LimitSpec};
use ipnet::IpNet;

use crate::state::{AppState, Tenant};

/// Which limit of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    SessionsPerIp,
    MessagesPerIp,
    MessagesPerSession,
    ConfigPerIp,
    PollsPerSession,
    EventsPerSession,
}

impl Limit {
    /// (allowance, window in ms, key prefix) for a tenant.
    fn params(self, t: &Tenant) -> (u32, u64, &'static str) {
        let r = &t.cfg.rate_limits;
        const HOUR: u64 = 3_600_000;
        const MINUTE: u64 = 60_000;
        match self {
            Limit::SessionsPerIp => (r.sessions_per_hour_per_ip, HOUR, "sess-ip"),
            Limit::MessagesPerIp => (r.messages_per_hour_per_ip, HOUR, "msg-ip"),
            Limit::MessagesPerSession => (r.messages_per_minute_per_session, MINUTE, "msg-vis"),
            Limit::ConfigPerIp => (r.config_per_minute_per_ip, MINUTE, "cfg-ip"),
            Limit::PollsPerSession => (r.polls_per_minute_per_session, MINUTE, "poll-vis"),
            Limit::EventsPerSession => (r.events_per_minute_per_session, MINUTE, "evt-vis"),
        }
    }
}

/// Parses `10.0.0.0/8` or a bare address.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The client's address per the rule above.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    if !trusted.iter().any(|n| n.contains(&peer_ip)) {
        return peer_ip;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer_ip };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip.to_canonical()),
                // A garbled chain cannot be trusted past this point.
                Err(_) => return peer_ip,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
        .unwrap_or(peer_ip)
}

impl AppState {
    /// Takes one request from `limit`'s allowance for `subject` (an IP or a visitor id).
    pub async fn rate_limit(
        &self,
        tenant: &Tenant,
        limit: Limit,
        subject: &str,
    ) -> Result<(), ApiError> {
        self.rate_limit_all(tenant, &[(limit, subject)]).await
    }

    /// A request that named an unknown public key (key enumeration) takes one unit of the
    /// client IP's `GET /v1/config` allowance — in a bucket of its own, as no tenant owns
    /// it, sized by the most generous `config_per_minute_per_ip` of the deployment.
    pub async fn rate_limit_unknown_key(&self, ip: &str) -> Result<(), ApiError> {
        let allowance = self
            .config
            .tenants
            .iter()
            .map(|t| t.rate_limits.config_per_minute_per_ip)
            .max()
            .unwrap_or(crate::config::RateLimits::default().config_per_minute_per_ip);
        // `?` is no tenant id character: this bucket is no tenant's.
        let key = format!("cfg-ip:?:{ip}");
        let spec = LimitSpec {
            key: &key,
            limit: allowance,
            window_ms: 60_000,
        };
        match self.limiter.check_all(&[spec], self.now_ms()).await {
            Ok(Decision::Allowed) => Ok(()),
            Ok(Decision::Limited { retry_after_ms, .. }) => {
                self.metrics.rate_limited("cfg-ip");
                Err(ApiError::rate_limited(retry_after_ms.div_ceil(1000).max(1)))
            }
            Err(e) => Err(crate::error::store_error(e)),
        }
    }

    /// Several limits for one request, all or nothing (one round trip to a shared
    /// limiter): refused if any is exhausted, and then none is charged.
    pub async fn rate_limit_all(
        &self,
        tenant: &Tenant,
        limits: &[(Limit, &str)],
    ) -> Result<(), ApiError> {
        let keys: Vec<(String, u32, u64, &'static str)> = limits
            .iter()
            .map(|(limit, subject)| {
                let (allowance, window, prefix) = limit.params(tenant);
                (
                    format!("{prefix}:{}:{subject}", tenant.cfg.id),
                    allowance,
                    window,
                    prefix,
                )
            })
            .collect();
        let specs: Vec<LimitSpec<'_>> = keys
            .iter()
            .map(|(key, limit, window_ms, _)| LimitSpec {
                key,
                limit: *limit,
                window_ms: *window_ms,
            })
            .collect();
        match self.limiter.check_all(&specs, self.now_ms()).await {
            Ok(Decision::Allowed) => Ok(()),
            Ok(Decision::Limited {
                retry_after_ms,
                refused,
            }) => {
                // Counted under the limit that refused, not under every limit checked.
                if let Some((_, _, _, prefix)) = keys.get(refused) {
                    self.metrics.rate_limited(prefix);
                }
                Err(ApiError::rate_limited(retry_after_ms.div_ceil(1000).max(1)))
            }
            Err(e) => Err(crate::error::store_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let peer: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let trusted = vec![parse_cidr("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(peer, &xff("203.0.113.9"), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A spoofed left-most entry is ignored: the right-most untrusted hop wins.
        assert_eq!(
            client_ip(peer, &xff("1.1.1.1, 203.0.113.9, 10.0.0.7"), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Not from a trusted proxy: the header is ignored.
        let stranger: SocketAddr = "198.51.100.1:1".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &xff("203.0.113.9"), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &xff("garbage"), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &HeaderMap::new(), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }
}
