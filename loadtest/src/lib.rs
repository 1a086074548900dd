//! # confab-loadtest
//!
//! Load generator for the Confab gateway: scenarios that look like real widget and
//! dashboard traffic (idle visitor sockets, visitor↔agent chat, tenant broadcasts, the
//! HTTP API), with figures a person can compare from run to run. It also ships
//! `confab-baseline`, a minimal tokio-tungstenite room server, so the same client code can
//! measure "the limit of the stack" beside the gateway.
//!
//! # Layout
//!
//! - [`cli`] — the command line: flags shared by every scenario and each scenario's own.
//! - [`net`] — gateway base URLs, the pool of loopback source addresses, and TCP connects
//!   bound to a chosen local IP so ephemeral ports never run out.
//! - [`http`] — a minimal keep-alive HTTP/1.1 client (one hyper connection per worker).
//! - [`ws`] — WebSocket connects with small buffers, so one process holds ~19,000 sockets.
//! - [`jwt`] — HS256 agent tokens, signed through `confab_protocol`.
//! - [`api`] — the Confab calls the scenarios make: config, sessions, sends, polls, tenant
//!   events, and the authenticated WebSocket channels.
//! - [`baseline_proto`] and [`baseline`] — the baseline server's tiny protocol (shared by
//!   server and client) and the server itself.
//! - [`probe`] — the stamp (run, sender, sequence, send time) embedded in every message
//!   the tool sends, which is how latency, loss, duplicates and order are measured.
//! - [`stats`] — latency histograms, per-sender sequence tracking, rates.
//! - [`report`] — parameters, the progress line, tables and JSON output, server RSS.
//! - [`receiver`] — the webhook receiver (`webhooks`, `webhook-sink`): signatures checked,
//!   deliveries counted like agents' frames.
//! - [`webhook_config`] — the webhook benchmarks' tenant naming scheme, and the gateway
//!   config declaring them (`webhook-config`).
//! - [`upstream`] — a fake OpenAI-compatible streaming upstream (`assistant`,
//!   `assistant-upstream`) whose every token is a timestamped probe.
//! - [`assistant_config`] — the gateway config with an assistant on that upstream
//!   (`assistant-config`).
//! - [`scenario`] — one module per scenario: `connections`, `chat`, `broadcast`, `http`,
//!   `webhooks`, `assistant`.
//!
//! Everything here is `anyhow`-based: this is a tool, not a library with callers to serve.

pub mod api;
pub mod assistant_config;
pub mod baseline;
pub mod baseline_proto;
pub mod cli;
pub mod disk;
pub mod http;
pub mod jwt;
pub mod net;
pub mod probe;
pub mod receiver;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod upstream;
pub mod webhook_config;
pub mod ws;
