//! Counters and histograms for `GET /metrics`, in the Prometheus text format, each with
//! its `# HELP` and `# TYPE`. Hand-rolled: a handful of atomics, labelled maps and
//! fixed-bucket histograms ([`Histogram`]) do not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::histogram::Histogram;
use crate::hub::Hub;

pub struct Metrics {
    /// (route, status) → requests answered.
    http: DashMap<(&'static str, u16), AtomicU64>,
    /// Limit name → requests refused.
    rate_limited: DashMap<&'static str, AtomicU64>,
    /// Telemetry type → events received.
    widget_events: DashMap<&'static str, AtomicU64>,
    /// Matched route paths as `'static` labels, interned once each: they come from the
    /// router's table only, so this holds one entry per route.
    route_labels: DashMap<Box<str>, &'static str>,
    /// Route → request latency (first byte in to response head out; long-polls included).
    http_latency: DashMap<&'static str, Histogram>,
    /// How long the store took to durably append a message (the wait behind every ack).
    pub store_append: Histogram,
    pub messages_stored: AtomicU64,
    pub visitor_sockets: AtomicI64,
    pub agent_sockets: AtomicI64,
    /// TCP connections open now (HTTP and upgraded WebSockets).
    pub connections_open: AtomicI64,
    /// Connections refused at accept because their IP was at `max_connections_per_ip`.
    pub connections_refused: AtomicU64,
    /// Connections closed for a slow head, a stalled body or keep-alive idleness.
    pub connection_timeouts: AtomicU64,
    /// Failed `accept` calls (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
    /// (tenant, webhook index) → its delivery counters.
    webhooks: DashMap<(String, usize), Arc<WebhookStats>>,
    /// `meta.mode` (or `silent`) → assistant replies settled.
    assistant_replies: DashMap<&'static str, AtomicU64>,
    /// Cause → safe fallbacks stored.
    assistant_fallbacks: DashMap<&'static str, AtomicU64>,
    /// From asking an assistant to its first streamed piece, and to its whole answer.
    pub assistant_first_delta: Histogram,
    pub assistant_reply_latency: Histogram,
    /// Owed replies this node claimed.
    assistant_claims: AtomicU64,
}

/// One webhook's counters (this node's deliveries of it).
pub struct WebhookStats {
    delivered: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    lag: AtomicU64,
    /// From the event's commit to the receiver's 2xx.
    latency: Histogram,
}

impl WebhookStats {
    pub fn delivered(&self, since_commit_ms: i64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency
            .observe_duration(Duration::from_millis(since_commit_ms.max(0) as u64));
    }
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn skipped(&self, events: u64) {
        self.skipped.fetch_add(events, Ordering::Relaxed);
    }
    pub fn set_lag(&self, events: u64) {
        self.lag.store(events, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http: DashMap::new(),
            rate_limited: DashMap::new(),
            widget_events: DashMap::new(),
            http_latency: DashMap::new(),
            route_labels: DashMap::new(),
            store_append: Histogram::latency(),
            messages_stored: AtomicU64::new(0),
            visitor_sockets: AtomicI64::new(0),
            agent_sockets: AtomicI64::new(0),
            connections_open: AtomicI64::new(0),
            connections_refused: AtomicU64::new(0),
            connection_timeouts: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            webhooks: DashMap::new(),
            assistant_replies: DashMap::new(),
            assistant_fallbacks: DashMap::new(),
            assistant_first_delta: Histogram::latency(),
            assistant_reply_latency: Histogram::latency(),
            assistant_claims: AtomicU64::new(0),
        }
    }
}

/// `# HELP` and `# TYPE` of one metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn bump<K: std::hash::Hash + Eq>(map: &DashMap<K, AtomicU64>, key: K) {
    if let Some(c) = map.get(&key) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The label of a matched route path (only ever called with the router's own paths).
    pub fn route_label(&self, path: &str) -> &'static str {
        if let Some(label) = self.route_labels.get(path) {
            return *label;
        }
        *self
            .route_labels
            .entry(path.into())
            .or_insert_with(|| Box::leak(path.into()))
    }

    /// One answered request: its status and how long it took.
    pub fn http(&self, route: &'static str, status: u16, took: Duration) {
        bump(&self.http, (route, status));
        match self.http_latency.get(route) {
            Some(h) => h.observe_duration(took),
            None => self
                .http_latency
                .entry(route)
                .or_insert_with(Histogram::latency)
                .observe_duration(took),
        }
    }

    pub fn rate_limited(&self, limit: &'static str) {
        bump(&self.rate_limited, limit);
    }

    /// The counters of a tenant's webhook number `index`.
    pub fn webhook(&self, tenant: &str, index: usize) -> Arc<WebhookStats> {
        self.webhooks
            .entry((tenant.to_owned(), index))
            .or_insert_with(|| {
                Arc::new(WebhookStats {
                    delivered: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    skipped: AtomicU64::new(0),
                    lag: AtomicU64::new(0),
                    latency: Histogram::latency(),
                })
            })
            .clone()
    }

    fn render_webhooks(&self, out: &mut String) {
        let label =
            |(tenant, index): &(String, usize)| format!("tenant=\"{tenant}\",webhook=\"{index}\"");
        header(
            out,
            "confab_webhook_attempts_total",
            "counter",
            "Webhook POSTs by outcome: delivered (2xx) or failed (anything else; each failure is retried).",
        );
        for e in self.webhooks.iter() {
            let l = label(e.key());
            let w = e.value();
            let _ = writeln!(
                out,
                "confab_webhook_attempts_total{{{l},outcome=\"delivered\"}} {}",
                w.delivered.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "confab_webhook_attempts_total{{{l},outcome=\"failed\"}} {}",
                w.failed.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "confab_webhook_skipped_events_total",
            "counter",
            "Events that left retention before their webhook could deliver them.",
        );
        for e in self.webhooks.iter() {
            let _ = writeln!(
                out,
                "confab_webhook_skipped_events_total{{{}}} {}",
                label(e.key()),
                e.value().skipped.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "confab_webhook_lag_events",
            "gauge",
            "Tenant events after the webhook's position (on the node delivering it).",
        );
        for e in self.webhooks.iter() {
            let _ = writeln!(
                out,
                "confab_webhook_lag_events{{{}}} {}",
                label(e.key()),
                e.value().lag.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "confab_webhook_delivery_seconds",
            "histogram",
            "From an event's commit to its webhook's 2xx (retries included).",
        );
        for e in self.webhooks.iter() {
            e.value()
                .latency
                .render(out, "confab_webhook_delivery_seconds", &label(e.key()));
        }
    }

    pub fn assistant_reply(&self, mode: &'static str) {
        bump(&self.assistant_replies, mode);
    }

    pub fn assistant_fallback(&self, cause: &'static str) {
        bump(&self.assistant_fallbacks, cause);
    }

    pub fn assistant_claims(&self) {
        self.assistant_claims.fetch_add(1, Ordering::Relaxed);
    }

    fn render_assistants(&self, out: &mut String, open_circuits: &[(String, String)]) {
        header(
            out,
            "confab_assistant_replies_total",
            "counter",
            "Assistant replies settled, by meta.mode (silent: a webhook bot chose not to answer).",
        );
        for e in self.assistant_replies.iter() {
            let _ = writeln!(
                out,
                "confab_assistant_replies_total{{mode=\"{}\"}} {}",
                e.key(),
                e.value().load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "confab_assistant_fallbacks_total",
            "counter",
            "Safe fallbacks stored instead of a reply, by cause.",
        );
        for e in self.assistant_fallbacks.iter() {
            let _ = writeln!(
                out,
                "confab_assistant_fallbacks_total{{cause=\"{}\"}} {}",
                e.key(),
                e.value().load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "confab_assistant_first_delta_seconds",
            "histogram",
            "From asking an assistant to its first streamed piece.",
        );
        self.assistant_first_delta
            .render(out, "confab_assistant_first_delta_seconds", "");
        header(
            out,
            "confab_assistant_reply_seconds",
            "histogram",
            "From asking an assistant to its complete answer (or failure).",
        );
        self.assistant_reply_latency
            .render(out, "confab_assistant_reply_seconds", "");
        header(
            out,
            "confab_assistant_circuit_open",
            "gauge",
            "1 for each assistant whose circuit is open on this node.",
        );
        for (tenant, assistant) in open_circuits {
            let _ = writeln!(
                out,
                "confab_assistant_circuit_open{{tenant=\"{tenant}\",assistant=\"{assistant}\"}} 1"
            );
        }
        header(
            out,
            "confab_assistant_owed_claims_total",
            "counter",
            "Owed replies this node claimed (the ones its visitors' messages made, and after a lease lapsed, any).",
        );
        let _ = writeln!(
            out,
            "confab_assistant_owed_claims_total {}",
            self.assistant_claims.load(Ordering::Relaxed)
        );
    }

    pub fn widget_event(&self, kind: &'static str) {
        bump(&self.widget_events, kind);
    }

    /// The exposition text.
    pub fn render(&self, hub: &Hub, open_circuits: &[(String, String)]) -> String {
        let mut out = String::with_capacity(2048);
        header(
            &mut out,
            "confab_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for e in self.http.iter() {
            let ((route, status), n) = (e.key(), e.value().load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "confab_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "confab_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route (long-polls hold requests up to 30 s).",
        );
        for e in self.http_latency.iter() {
            e.value().render(
                &mut out,
                "confab_http_request_duration_seconds",
                &format!("route=\"{}\"", e.key()),
            );
        }
        header(
            &mut out,
            "confab_store_append_duration_seconds",
            "histogram",
            "Time to durably store a message (every acknowledgement waits for it).",
        );
        self.store_append
            .render(&mut out, "confab_store_append_duration_seconds", "");
        header(
            &mut out,
            "confab_hub_queue_depth_frames",
            "histogram",
            "Frames already waiting in a socket's queue when the hub adds one.",
        );
        hub.queue_depth
            .render(&mut out, "confab_hub_queue_depth_frames", "");
        header(
            &mut out,
            "confab_rate_limited_total",
            "counter",
            "Requests refused by a rate limit, by the limit that refused.",
        );
        for e in self.rate_limited.iter() {
            let _ = writeln!(
                out,
                "confab_rate_limited_total{{limit=\"{}\"}} {}",
                e.key(),
                e.value().load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "confab_widget_events_total",
            "counter",
            "Widget telemetry events counted (after sampling), by type.",
        );
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
                "Messages stored by this node (duplicates excluded).",
                self.messages_stored.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_visitor_sockets",
                "gauge",
                "Open visitor WebSocket connections.",
                self.visitor_sockets.load(Ordering::Relaxed),
            ),
            (
                "confab_agent_sockets",
                "gauge",
                "Open tenant (agent) WebSocket connections.",
                self.agent_sockets.load(Ordering::Relaxed),
            ),
            (
                "confab_connections_open",
                "gauge",
                "TCP connections open (HTTP and upgraded WebSockets).",
                self.connections_open.load(Ordering::Relaxed),
            ),
            (
                "confab_connections_refused_total",
                "counter",
                "Connections refused because their IP was at max_connections_per_ip.",
                self.connections_refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_connection_timeouts_total",
                "counter",
                "Connections closed for a slow head, a stalled body (408) or keep-alive idleness.",
                self.connection_timeouts.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_accept_errors_total",
                "counter",
                "Failed accepts (e.g. out of file descriptors), each retried after a back-off.",
                self.accept_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_hub_deliveries_total",
                "counter",
                "Frames handed to socket queues.",
                hub.deliveries.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_hub_kicks_total",
                "counter",
                "Sockets closed (1013) for not keeping up.",
                hub.kicks.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_hub_dropped_typing_total",
                "counter",
                "Ephemeral frames (typing) dropped on full queues.",
                hub.dropped_ephemeral.load(Ordering::Relaxed) as i64,
            ),
            (
                "confab_hub_channels",
                "gauge",
                "Channels with subscribers on this node.",
                hub.channel_count() as i64,
            ),
        ];
        for (name, kind, help, v) in gauges {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        self.render_webhooks(&mut out);
        self.render_assistants(&mut out, open_circuits);
        out
    }
}
