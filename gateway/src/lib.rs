//! # Confab gateway
//!
//! One node of the Confab chat gateway. [`server::run`] is the one entry point; the
//! binary (`main.rs`) only parses flags ([`cli`]), sets up logging and passes a shutdown
//! signal — or runs one of the operator commands, `confab token` and `confab check-config`.
//!
//! ## Layout
//!
//! - [`cli`] — the command line: the gateway's flags, `confab token`, `confab check-config`,
//!   and the logging set-up (`--log-format text|json`).
//! - [`config`] — the TOML file, flags and environment, as read.
//! - [`settings`] — the configuration validated and compiled, once (tenants, policies).
//! - [`connections`] — the accept loop: per-IP cap, head/body/idle timeouts, drain.
//! - [`state`] — shared node state: compiled tenants, keys, backend, hub, clock.
//! - [`http`] — the HTTP routes (`router` is the whole application).
//! - [`ws`] — the visitor and tenant WebSocket channels.
//! - [`hub`] — node-local connection registry and fan-out (encode once, one shared feed per channel, bounded lag).
//! - [`service`] — the service layer: sessions, visitor messages, agent actions.
//! - [`auth`] — session tokens, agent JWTs, server keys.
//! - [`policy`] — pure rules: origin allowlists, business hours, the rate-limit table,
//!   the client-IP rule, open-connection caps.
//! - [`error`] — the error body, status mapping and request extractors.
//! - [`blobs`] — where attachment bytes live (`object_store`: local files, S3, memory).
//! - [`metrics`] — counters and histograms for `/metrics`.
//! - [`histogram`] — the fixed-bucket histogram they use.
//!
//! Layers read in one direction: `main` → `server::run` → `connections` → `http`/`ws`
//! (transport: parse, authenticate, map errors) → `service` (the code that calls the
//! `Store`, charges limits, applies the PII policy) → `confab_store` and the `hub` (which
//! the store feeds after each commit). `policy` is pure and below all of them; `config`
//! is read once at start and compiled by `settings` into `state`.

pub mod auth;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod connections;
pub mod error;
pub mod histogram;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod service;
pub mod settings;
pub mod state;
pub mod ws;

pub use config::{Config, Overrides};
pub use server::{run, Options};
pub use settings::Settings;
