//! Configuration: the TOML file of the SPEC ("Configuration"), overridden by flags and
//! environment variables, checked once at start-up so that a bad file fails loudly and
//! early rather than at the first request.
//!
//! Precedence (highest first): command-line flags, environment (`CONFAB_LISTEN`,
//! `CONFAB_STORE`, `WEBCHAT_ALLOWED_ORIGINS`, `WEBCHAT_PII_RETENTION_MODE`), the file,
//! built-in defaults. Without a file the gateway runs the built-in demo tenant.

use std::path::Path;

use confab_protocol::model::{Intent, QuickQuestion};
use confab_protocol::validate::MAX_MESSAGE_CHARS;
use serde::Deserialize;

pub use crate::policy::availability::{AvailabilityConfig, AvailabilityMode};
pub use crate::policy::limits::RateLimits;
use crate::settings::Settings;

/// The demo tenant's public key (the SPEC's example key).
pub const DEMO_PUBLIC_KEY: &str = "pk_live_0123456789abcdef0123456789abcdef";

/// Longest session or challenge lifetime (10 years), in seconds.
pub const MAX_TTL_SECS: u64 = 10 * 366 * 24 * 3600;
/// Longest `ws_write_delay_ms`: a held socket reads nothing meanwhile (not even a pong),
/// so the hold stays far below the ping and idle timers.
pub const MAX_WS_WRITE_DELAY_MS: u64 = 100;

/// The whole configuration, as read from the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_store")]
    pub store: String,
    /// Redis modes: an ack also waits until this many replicas hold the write (`WAIT`);
    /// too few in time → 503 `store_unavailable`. Absent: 1 on a `redis-cluster://` store
    /// whose shards have replicas, 0 otherwise.
    #[serde(default)]
    pub redis_replica_acks: Option<u32>,
    /// Global origin allowlist; empty = any origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// CIDRs whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// HMAC key for session tokens and challenges; generated and stored when absent.
    #[serde(default)]
    pub session_secret: Option<String>,
    /// Older secrets still accepted when verifying (rotation).
    #[serde(default)]
    pub previous_session_secrets: Vec<String>,
    /// How long an init challenge stays valid.
    #[serde(default = "default_challenge_ttl")]
    pub challenge_ttl_secs: u64,
    /// Most WebSocket connections this node holds (each is an open file; the process
    /// limit here is 20,000).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open connections (HTTP and WebSocket together) from one client IP, so that one
    /// client cannot take every file descriptor of the node. A peer in `trusted_proxies` is
    /// not capped: it carries many clients.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most visitor sockets one visitor may hold on this node (tabs), so that one session
    /// token cannot take the node's WebSocket slots. Counted per node.
    #[serde(default = "default_max_sockets_per_visitor")]
    pub max_sockets_per_visitor: usize,
    /// A WebSocket written to less than this long ago holds its next frames until this
    /// long after that write, and sends them together (0: every frame at once). For nodes
    /// that fan many events out to big teams: fewer, larger writes. See `ws::Conn`.
    #[serde(default)]
    pub ws_write_delay_ms: u64,
    /// Where attachment bytes are stored: `file:DIR`, or `s3://BUCKET?endpoint=…&region=…`
    /// (required in Redis mode: nodes share no disk). Default: `attachments/` beside the
    /// SQLite file; in memory for `store = "memory"`. See `crate::blobs`.
    #[serde(default)]
    pub attachments_store: Option<String>,
    /// How long a signed attachment link (a Message's `attachments[].url`) stays valid.
    #[serde(default = "default_attachment_url_ttl")]
    pub attachment_url_ttl_secs: u64,
    /// Seconds a shutting-down node waits for in-flight work before exiting anyway.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// True when no file was given: the tenant list is the built-in demo.
    #[serde(skip)]
    pub demo: bool,
}

/// One tenant (`[[tenants]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    pub name: String,
    pub public_key: String,
    pub agent_secret: String,
    pub server_key: String,
    /// Empty = the global list; non-empty replaces it.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default = "default_greeting")]
    pub greeting: String,
    /// Posted as a bot message after a conversation's first visitor message.
    #[serde(default)]
    pub auto_reply: Option<String>,
    #[serde(default = "yes")]
    pub require_init_challenge: bool,
    /// `botSignals.elapsedMs` below this is a bot; 0 turns the check off.
    #[serde(default = "default_min_elapsed")]
    pub min_elapsed_ms: u64,
    #[serde(default)]
    pub pii_retention: PiiRetention,
    #[serde(default = "default_sample_rate")]
    pub telemetry_sample_rate: f64,
    #[serde(default = "default_max_message_length")]
    pub max_message_length: usize,
    #[serde(default)]
    pub branding: Branding,
    #[serde(default)]
    pub availability: AvailabilityConfig,
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub intents: Vec<Intent>,
    #[serde(default)]
    pub quick_questions: Vec<QuickQuestion>,
    /// `[tenants.attachments]`: upload size and type rules.
    #[serde(default)]
    pub attachments: AttachmentsConfig,
    /// `[[tenants.webhooks]]`: where the tenant's events are POSTed.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// `[[tenants.assistants]]`: who may answer visitors for the tenant (the first is the
    /// default). See docs/assistants.md.
    #[serde(default)]
    pub assistants: Vec<AssistantConfig>,
}

/// One `[[tenants.assistants]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantConfig {
    /// 1–64 of `[A-Za-z0-9_-]`, unique within the tenant.
    pub id: String,
    /// The author name of its messages.
    pub name: String,
    pub kind: AssistantKind,
    /// `http://` or `https://`: the `…/chat/completions` URL, or the bot's webhook.
    pub url: String,
    /// openai: the bearer key (optional); webhook: the signing key (required).
    #[serde(default)]
    pub api_key: Option<String>,
    /// openai only (required there).
    #[serde(default)]
    pub model: Option<String>,
    /// openai only.
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub answers: Answers,
    /// Messages sent as context, the new one included.
    #[serde(default = "default_context_messages")]
    pub context_messages: usize,
    /// For the whole reply.
    #[serde(default = "default_assistant_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_fallback_message")]
    pub fallback_message: String,
    /// Voice calls (`POST /v1/voice`).
    #[serde(default)]
    pub phone_number: Option<String>,
}

/// The upstream dialect of an assistant.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AssistantKind {
    /// An OpenAI-compatible Chat Completions endpoint, streamed over SSE.
    Openai,
    /// The tenant's own bot: a signed POST answered with JSON or SSE.
    Webhook,
}

/// When an assistant answers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Answers {
    #[default]
    Always,
    /// Only while the tenant is not available (outside hours, offline, no agent online).
    WhenUnavailable,
}

/// The demo tenant's assistant, when the environment names an OpenAI-compatible endpoint
/// (`CONFAB_DEMO_OPENAI_URL`, `…_MODEL`, `…_KEY`): e.g. a local Ollama or llama.cpp server.
fn demo_assistant() -> Option<AssistantConfig> {
    let url = std::env::var("CONFAB_DEMO_OPENAI_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())?;
    Some(AssistantConfig {
        id: "demo-ai".into(),
        name: "Demo AI".into(),
        kind: AssistantKind::Openai,
        url: url.trim().to_owned(),
        api_key: std::env::var("CONFAB_DEMO_OPENAI_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        model: Some(
            std::env::var("CONFAB_DEMO_OPENAI_MODEL")
                .ok()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "llama3.2".into()),
        ),
        system_prompt: Some(
            "You are the friendly assistant of Demo Inc, answering website visitors in a chat \
             widget. Keep answers short. If you cannot help, say that a person from the team \
             will reply."
                .into(),
        ),
        answers: Answers::WhenUnavailable,
        context_messages: default_context_messages(),
        timeout_secs: default_assistant_timeout(),
        fallback_message: default_fallback_message(),
        phone_number: None,
    })
}

fn default_context_messages() -> usize {
    20
}
fn default_assistant_timeout() -> u64 {
    30
}
fn default_fallback_message() -> String {
    "Sorry, I can't answer right now. A person from our team will reply here.".into()
}

/// `[tenants.attachments]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Largest upload, in bytes (checked while the body streams in).
    pub max_bytes: u64,
    /// Types (as sniffed from the bytes) that may be uploaded. HTML and SVG are not in the
    /// default list: a browser could run them.
    pub allowed_types: Vec<String>,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            max_bytes: 10 * 1024 * 1024,
            allowed_types: [
                "image/png",
                "image/jpeg",
                "image/gif",
                "image/webp",
                "application/pdf",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// One `[[tenants.webhooks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    /// The HMAC key of `X-Confab-Signature`; at least 16 characters.
    pub secret: String,
    /// Event types to send; absent = every stored event type.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// How much personal data is kept (seed 002's `WEBCHAT_PII_RETENTION_MODE`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PiiRetention {
    /// Everything as sent.
    #[default]
    Full,
    /// E-mail local parts masked, query strings and fragments cut from URLs.
    Redact,
    /// No contact details, no page context, no message metadata.
    Minimal,
}

impl std::str::FromStr for PiiRetention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(PiiRetention::Full),
            "redact" => Ok(PiiRetention::Redact),
            "minimal" => Ok(PiiRetention::Minimal),
            other => Err(format!(
                "unknown PII retention mode {other:?} (full | redact | minimal)"
            )),
        }
    }
}

/// `[tenants.branding]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    #[serde(default = "default_color")]
    pub primary_color: String,
    #[serde(default = "default_position")]
    pub position: String,
    #[serde(default = "default_label")]
    pub label: String,
    #[serde(default)]
    pub logo: Option<String>,
}

impl Default for Branding {
    fn default() -> Self {
        Branding {
            primary_color: default_color(),
            position: default_position(),
            label: default_label(),
            logo: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_store() -> String {
    "sqlite:confab-data/confab.db".into()
}
fn default_session_ttl() -> u64 {
    86_400
}
fn default_challenge_ttl() -> u64 {
    600
}
fn default_max_connections() -> usize {
    19_000
}
fn default_max_connections_per_ip() -> usize {
    512
}
fn default_max_sockets_per_visitor() -> usize {
    10
}
fn default_attachment_url_ttl() -> u64 {
    3600
}
fn default_shutdown_grace() -> u64 {
    10
}
fn default_greeting() -> String {
    "Hi there! How can we help?".into()
}
fn yes() -> bool {
    true
}
fn default_min_elapsed() -> u64 {
    800
}
fn default_sample_rate() -> f64 {
    1.0
}
fn default_max_message_length() -> usize {
    MAX_MESSAGE_CHARS
}
fn default_color() -> String {
    "#10A37F".into()
}
fn default_position() -> String {
    "bottom-right".into()
}
fn default_label() -> String {
    "Chat with us".into()
}

/// Overrides from flags and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub store: Option<String>,
    /// Comma-separated (`WEBCHAT_ALLOWED_ORIGINS`).
    pub allowed_origins: Option<String>,
    pub pii_retention: Option<String>,
}

impl Overrides {
    /// Reads the environment variables of the SPEC.
    pub fn from_env() -> Overrides {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Overrides {
            listen: var("CONFAB_LISTEN"),
            store: var("CONFAB_STORE"),
            allowed_origins: var("WEBCHAT_ALLOWED_ORIGINS"),
            pii_retention: var("WEBCHAT_PII_RETENTION_MODE"),
        }
    }

    /// `other` wins where it has a value.
    pub fn or(self, other: Overrides) -> Overrides {
        Overrides {
            listen: other.listen.or(self.listen),
            store: other.store.or(self.store),
            allowed_origins: other.allowed_origins.or(self.allowed_origins),
            pii_retention: other.pii_retention.or(self.pii_retention),
        }
    }
}

impl Config {
    /// Parses a TOML document and checks it.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        // Rust's type names (`u64`, `struct X`) mean nothing to an operator.
        let config: Config = toml::from_str(text)
            .map_err(|e| confab_protocol::without_type_names(&e.to_string()))?;
        Ok(config)
    }

    /// Reads a file (`--config`), or the demo when `path` is `None`, and applies
    /// overrides. [`Settings::compile`] checks the result.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, String> {
        let mut config = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                Config::from_toml(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Config::demo(),
        };
        config.apply(overrides)?;
        Ok(config)
    }

    /// The built-in demo: one tenant, secrets derived from the session secret at start-up.
    pub fn demo() -> Config {
        let mut config = Config::from_toml("").expect("the empty config parses");
        config.demo = true;
        let mut tenant: TenantConfig = toml::from_str(&format!(
            r#"id = "demo"
               name = "Demo Inc"
               public_key = "{DEMO_PUBLIC_KEY}"
               agent_secret = ""
               server_key = ""
               auto_reply = "Thanks for reaching out! An agent will be with you shortly."
               [[intents]]
               name = "billing"
               display_label = "Billing question"
               examples = ["Where is my invoice?"]
               [[intents]]
               name = "support"
               display_label = "Technical support"
               examples = ["The app does not start"]
               [[quick_questions]]
               question = "What are your prices?"
               page_type = "pricing"
               intent_name = "billing"
               [[quick_questions]]
               question = "How do I reset my password?"
               intent_name = "support""#
        ))
        .expect("the demo tenant parses");
        tenant.rate_limits.sessions_per_hour_per_ip = 100;
        if let Some(a) = demo_assistant() {
            // The assistant answers, so the automatic reply would only be in its way.
            tenant.auto_reply = None;
            // "Unavailable" = no agent online: the AI takes over when the console closes.
            tenant.availability.require_agent = true;
            tenant.assistants.push(a);
        }
        config.tenants.push(tenant);
        config
    }

    fn apply(&mut self, o: Overrides) -> Result<(), String> {
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = o.store {
            self.store = v;
        }
        if let Some(v) = o.allowed_origins {
            self.allowed_origins = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = o.pii_retention {
            let mode: PiiRetention = v.parse()?;
            for t in &mut self.tenants {
                t.pii_retention = mode;
            }
        }
        Ok(())
    }

    /// Every rule a file must follow, with a message naming what is wrong: compiles the
    /// configuration (see [`Settings::compile`]) and discards the result.
    pub fn check(&self) -> Result<(), String> {
        Settings::compile(self.clone()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses() {
        let c = Config::from_toml(
            r##"
listen = "127.0.0.1:8080"
store = "sqlite:confab-data/confab.db"
allowed_origins = []
trusted_proxies = []
session_ttl_secs = 86400
session_secret = "s3cret-s3cret"

[[tenants]]
id = "demo"
name = "Demo Inc"
public_key = "pk_live_0123456789abcdef0123456789abcdef"
agent_secret = "change-me"
server_key = "change-me-too"
allowed_origins = []
greeting = "Hi there! How can we help?"
auto_reply = "Thanks for reaching out! We'll get back to you soon."
require_init_challenge = true
min_elapsed_ms = 800
pii_retention = "full"
telemetry_sample_rate = 1.0

[tenants.branding]
primary_color = "#10A37F"
position = "bottom-right"
label = "Chat with us"

[tenants.availability]
mode = "business_hours"
timezone = "Europe/Berlin"
hours = { mon = ["09:00-17:00"], tue = ["09:00-17:00"], sat = [] }

[tenants.rate_limits]
sessions_per_hour_per_ip = 10
messages_per_hour_per_ip = 60
messages_per_minute_per_session = 30

[[tenants.intents]]
name = "billing"
display_label = "Billing question"
examples = ["Where is my invoice?"]

[[tenants.quick_questions]]
question = "What are your prices?"
page_type = "pricing"
intent_name = "billing"
"##,
        )
        .unwrap();
        c.check().unwrap();
        let t = &c.tenants[0];
        assert_eq!(t.availability.mode, AvailabilityMode::BusinessHours);
        assert_eq!(t.rate_limits.polls_per_minute_per_session, 120);
        assert_eq!(
            t.intents[0].display_label.as_deref(),
            Some("Billing question")
        );
        assert_eq!(t.quick_questions[0].intent_name.as_deref(), Some("billing"));
    }

    #[test]
    fn mistakes_are_named() {
        let bad_key = r#"[[tenants]]
id = "a"
name = "A"
public_key = "pk_live_nope"
agent_secret = "xxxxxxxxxx"
server_key = "yyyyyyyyyy""#;
        let e = Config::from_toml(bad_key).unwrap().check().unwrap_err();
        assert!(e.contains("public_key"), "{e}");
        let typo = "listne = \"x\"";
        assert!(Config::from_toml(typo).unwrap_err().contains("listne"));
        let bad_tz = format!(
            "{}\n[tenants.availability]\nmode = \"business_hours\"\ntimezone = \"Mars/Olympus\"",
            bad_key.replace("pk_live_nope", DEMO_PUBLIC_KEY)
        );
        assert!(Config::from_toml(&bad_tz)
            .unwrap()
            .check()
            .unwrap_err()
            .contains("Mars"));
    }

    #[test]
    fn overrides_win() {
        let c = Config::load(
            None,
            Overrides {
                listen: Some("0.0.0.0:1".into()),
                allowed_origins: Some("https://a.example, https://b.example".into()),
                pii_retention: Some("minimal".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:1");
        assert_eq!(c.allowed_origins.len(), 2);
        assert_eq!(c.tenants[0].pii_retention, PiiRetention::Minimal);
        assert!(c.demo);
    }
}
