//! Rate limits of the SPEC's table, keyed by the real client IP or the visitor, and the
//! client-IP rule itself: the socket's peer address, or — only when the peer is a
//! configured trusted proxy — the right-most `X-Forwarded-For` entry that is not itself
//! a trusted proxy. A client-supplied header from anyone else is ignored.
//!
//! Pure rules only; charging a request against them is `service::limits` (counting is
//! delegated to the backend's `RateLimiter`: in-process for the embedded store, shared
//! through Redis in Redis mode, so that limits hold across nodes; one bucket per key
//! whatever the transport).
//!
//! Also the caps on what is held open at once ([`KeyedCap`]): connections per client IP and
//! visitor sockets per visitor. These count what this node holds, so they are node-local.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::Deserialize;

/// `[tenants.rate_limits]`: the SPEC's table, each configurable.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub sessions_per_hour_per_ip: u32,
    pub messages_per_hour_per_ip: u32,
    pub messages_per_minute_per_session: u32,
    pub config_per_minute_per_ip: u32,
    pub polls_per_minute_per_session: u32,
    pub events_per_minute_per_session: u32,
    pub uploads_per_hour_per_session: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            sessions_per_hour_per_ip: 10,
            messages_per_hour_per_ip: 60,
            messages_per_minute_per_session: 30,
            config_per_minute_per_ip: 60,
            polls_per_minute_per_session: 120,
            events_per_minute_per_session: 120,
            uploads_per_hour_per_session: 20,
        }
    }
}

impl RateLimits {
    /// The first allowance that is zero, by its key: such a limit would refuse every
    /// request while telling the client to retry later.
    pub fn zero(&self) -> Option<&'static str> {
        [
            ("sessions_per_hour_per_ip", self.sessions_per_hour_per_ip),
            ("messages_per_hour_per_ip", self.messages_per_hour_per_ip),
            (
                "messages_per_minute_per_session",
                self.messages_per_minute_per_session,
            ),
            ("config_per_minute_per_ip", self.config_per_minute_per_ip),
            (
                "polls_per_minute_per_session",
                self.polls_per_minute_per_session,
            ),
            (
                "events_per_minute_per_session",
                self.events_per_minute_per_session,
            ),
            (
                "uploads_per_hour_per_session",
                self.uploads_per_hour_per_session,
            ),
        ]
        .into_iter()
        .find(|(_, n)| *n == 0)
        .map(|(key, _)| key)
    }
}

/// Which limit of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    SessionsPerIp,
    MessagesPerIp,
    MessagesPerSession,
    ConfigPerIp,
    PollsPerSession,
    EventsPerSession,
    UploadsPerSession,
}

impl Limit {
    /// (allowance, window in ms, key prefix) for a tenant.
    pub fn params(self, r: &RateLimits) -> (u32, u64, &'static str) {
        const HOUR: u64 = 3_600_000;
        const MINUTE: u64 = 60_000;
        match self {
            Limit::SessionsPerIp => (r.sessions_per_hour_per_ip, HOUR, "sess-ip"),
            Limit::MessagesPerIp => (r.messages_per_hour_per_ip, HOUR, "msg-ip"),
            Limit::MessagesPerSession => (r.messages_per_minute_per_session, MINUTE, "msg-vis"),
            Limit::ConfigPerIp => (r.config_per_minute_per_ip, MINUTE, "cfg-ip"),
            Limit::PollsPerSession => (r.polls_per_minute_per_session, MINUTE, "poll-vis"),
            Limit::EventsPerSession => (r.events_per_minute_per_session, MINUTE, "evt-vis"),
            Limit::UploadsPerSession => (r.uploads_per_hour_per_session, HOUR, "upl-vis"),
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

/// At most `limit` holders per key at once (connections per IP, sockets per visitor). A
/// holder is a [`CapGuard`]; dropping it frees its place. Keys with no holder are removed,
/// so the map is as large as what is open, never as what was ever seen.
pub struct KeyedCap<K: Hash + Eq> {
    limit: usize,
    /// Key → holders. One short critical section per open and per close, no `.await`
    /// inside: a plain `Mutex` suffices at connection rates.
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

/// One place under a [`KeyedCap`], given back on drop.
pub struct CapGuard<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

/// The map, even if a holder panicked while holding the lock: every update leaves the
/// counts consistent, so a poisoned lock carries no half-done change.
fn lock<K>(counts: &Mutex<HashMap<K, usize>>) -> MutexGuard<'_, HashMap<K, usize>> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> KeyedCap<K> {
    /// A cap of `limit` holders per key.
    pub fn new(limit: usize) -> KeyedCap<K> {
        KeyedCap {
            limit,
            counts: Arc::default(),
        }
    }

    /// A place for `key`, or `None` when it already holds `limit`.
    pub fn try_acquire(&self, key: K) -> Option<CapGuard<K>> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        drop(counts);
        Some(CapGuard {
            counts: self.counts.clone(),
            key,
        })
    }

    /// How many places `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        lock(&self.counts).get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for CapGuard<K> {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_cap_frees_places_on_drop_and_forgets_empty_keys() {
        let cap = KeyedCap::new(2);
        let a1 = cap.try_acquire("a").unwrap();
        let a2 = cap.try_acquire("a").unwrap();
        assert!(cap.try_acquire("a").is_none());
        let b = cap.try_acquire("b").unwrap();
        drop(a1);
        let a3 = cap.try_acquire("a").unwrap();
        assert_eq!(cap.held(&"a"), 2);
        drop((a2, a3, b));
        assert!(lock(&cap.counts).is_empty());
    }

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
