//! Counters for `GET /metrics`, in the Prometheus text format. Hand-rolled: a handful of
//! atomics and labelled maps do not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;

use crate::hub::Hub;

#[derive(Default)]
pub struct Metrics {
    /// (route, status) → requests answered.
    http: DashMap<(&'static str, u16), AtomicU64>,
    /// Limit name → requests refused.
    rate_limited: DashMap<&'static str, AtomicU64>,
    /// Telemetry type → events received.
    widget_events: DashMap<&'static str, AtomicU64>,
    pub messages_stored: AtomicU64,
    pub visitor_sockets: AtomicI64,
    pub agent_sockets: AtomicI64,
}

fn bump<K: std::hash::Hash + Eq>(map: &DashMap<K, AtomicU64>, key: K) {
    if let Some(c) = map.get(&key) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn http(&self, route: &'static str, status: u16) {
        bump(&self.http, (route, status));
    }

    pub fn rate_limited(&self, limit: &'static str) {
        bump(&self.rate_limited, limit);
    }

    pub fn widget_event(&self, kind: &'static str) {
        bump(&self.widget_events, kind);
    }

    /// The exposition text.
    pub fn render(&self, hub: &Hub) -> String {
        let mut out = String::with_capacity(2048);
        let _ = writeln!(out, "# TYPE confab_http_requests_total counter");
        for e in self.http.iter() {
            let ((route, status), n) = (e.key(), e.value().load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "confab_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# TYPE confab_rate_limited_total counter");
        for e in self.rate_limited.iter() {
            let _ = writeln!(
                out,
                "confab_rate_limited_total{{limit=\"{}\"}} {}",
                e.key(),
                e.value().load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE confab_widget_events_total counter");
        for e in self.widget_events.iter() {
            let _ = writeln!(
                out,
                "confab_widget_events_total{{type=\"{}\"}} {}",
                e.key(),
                e.value().load(Ordering::Relaxed)
            );
        }
        let gauges = [
            (
                "confab_messages_stored_total",
                "counter",
                self.messages_stored.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_visitor_sockets",
                "gauge",
                self.visitor_sockets.load(Ordering::Relaxed),
            ),
            (
                "confab_agent_sockets",
                "gauge",
                self.agent_sockets.load(Ordering::Relaxed),
            ),
            (
                "confab_hub_deliveries_total",
                "counter",
                hub.deliveries.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_hub_kicks_total",
                "counter",
                hub.kicks.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_hub_dropped_typing_total",
                "counter",
                hub.dropped_ephemeral.load(Ordering::Relaxed) as i64,
            ),
            ("confab_hub_channels", "gauge", hub.channel_count() as i64),
        ];
        for (name, kind, v) in gauges {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {v}");
        }
        out
    }
}
