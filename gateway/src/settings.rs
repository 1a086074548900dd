//! The configuration compiled: [`Settings::compile`] turns a [`Config`] (the TOML file with
//! flags and environment applied) into what the node runs on — validated tenants with
//! their origin policy and business-hours schedule, lookup tables by id and key, the
//! trusted-proxy networks. Every rule is checked here, once, while compiling: nothing
//! later parses a setting again, so nothing later can fail on one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use confab_protocol::validate::{is_event_type, is_public_key, MAX_MESSAGE_CHARS};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::{
    AssistantConfig, AssistantKind, Config, TenantConfig, MAX_TTL_SECS, MAX_WS_WRITE_DELAY_MS,
};
use crate::policy::availability::Schedule;
use crate::policy::limits::parse_cidr;
use crate::policy::origin::{check_pattern, OriginPolicy};

/// A validated configuration, ready to serve.
pub struct Settings {
    /// The file's values, as read (global settings are used as they are).
    pub config: Config,
    pub tenants: Tenants,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// A tenant, compiled.
pub struct Tenant {
    pub cfg: TenantConfig,
    /// Its effective origin allowlist.
    pub policy: OriginPolicy,
    pub schedule: Schedule,
    pub webhooks: Vec<Arc<Webhook>>,
    /// In the file's order: the first is the default.
    pub assistants: Vec<Arc<Assistant>>,
}

impl Tenant {
    pub fn assistant(&self, id: &str) -> Option<&Arc<Assistant>> {
        self.assistants.iter().find(|a| a.cfg.id == id)
    }

    pub fn default_assistant(&self) -> Option<&Arc<Assistant>> {
        self.assistants.first()
    }
}

/// An assistant, compiled.
#[derive(Debug)]
pub struct Assistant {
    pub cfg: AssistantConfig,
    pub url: reqwest::Url,
    /// Its place in the tenant's list.
    pub index: usize,
}

/// A webhook, compiled.
#[derive(Debug)]
pub struct Webhook {
    pub url: reqwest::Url,
    pub secret: String,
    /// Event types sent; `None`: every stored event type.
    pub events: Option<Vec<String>>,
    /// Names it in the store (its position and its lease): a hash of its URL, so that
    /// reordering the file keeps each webhook's position, and a new URL starts afresh.
    pub key: String,
    /// Its place in the tenant's list (a bounded `/metrics` label).
    pub index: usize,
}

impl Webhook {
    pub fn wants(&self, kind: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|list| list.iter().any(|k| k == kind))
    }
}

/// Lookup tables for tenants.
pub struct Tenants {
    by_id: HashMap<String, Arc<Tenant>>,
    by_public_key: HashMap<String, Arc<Tenant>>,
    /// SHA-256 of each `server_key`: a hash-table lookup does not leak key bytes by timing.
    by_server_key: HashMap<[u8; 32], Arc<Tenant>>,
    /// Every tenant in file order, and every policy of the deployment for CORS (which runs
    /// before the tenant is known).
    all: Vec<Arc<Tenant>>,
}

impl Settings {
    /// Checks every rule a configuration must follow, with a message naming what is wrong,
    /// and compiles it.
    pub fn compile(config: Config) -> Result<Settings, String> {
        check_globals(&config)?;
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .map(|c| {
                parse_cidr(c)
                    .ok_or_else(|| format!("trusted_proxies: {c:?} is not a CIDR or an address"))
            })
            .collect::<Result<_, _>>()?;
        for o in &config.allowed_origins {
            check_pattern(o).map_err(|e| format!("allowed_origins: {e}"))?;
        }
        let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
        // A tenant's secrets are its own: a server key shared by two tenants would open
        // only one of them (the other's backend would read the first's data), and a shared
        // agent secret would sign either tenant's agents.
        let mut secrets: HashMap<&str, &str> = HashMap::new();
        let mut tenants = Vec::with_capacity(config.tenants.len());
        for t in &config.tenants {
            let at = format!("tenant {:?}", t.id);
            check_tenant(t, config.demo).map_err(|e| format!("{at}: {e}"))?;
            if !ids.insert(&t.id) {
                return Err(format!("{at}: duplicate tenant id"));
            }
            if !keys.insert(&t.public_key) {
                return Err(format!("{at}: public_key is used by another tenant"));
            }
            for (name, secret) in [
                ("server_key", &t.server_key),
                ("agent_secret", &t.agent_secret),
            ] {
                if *secrets.entry(secret).or_insert(&t.id) != t.id {
                    return Err(format!("{at}: {name} is used by another tenant"));
                }
            }
            for o in &t.allowed_origins {
                check_pattern(o).map_err(|e| format!("{at}: allowed_origins: {e}"))?;
            }
            tenants.push(Tenant {
                webhooks: compile_webhooks(t).map_err(|e| format!("{at}: webhooks: {e}"))?,
                assistants: compile_assistants(t).map_err(|e| format!("{at}: assistants: {e}"))?,
                policy: OriginPolicy::for_tenant(&config.allowed_origins, &t.allowed_origins),
                schedule: Schedule::parse(&t.availability)
                    .map_err(|e| format!("{at}: availability: {e}"))?,
                cfg: t.clone(),
            });
        }
        Ok(Settings {
            tenants: Tenants::index(tenants),
            trusted_proxies,
            config,
        })
    }

    /// The demo tenant's agent secret and server key, derived from the node's session
    /// secret at start-up (the demo config leaves them empty).
    pub fn with_demo_secrets(mut self, agent_secret: String, server_key: String) -> Settings {
        let tenants = self.tenants.all.iter().enumerate().map(|(i, t)| {
            let mut cfg = t.cfg.clone();
            if i == 0 {
                cfg.agent_secret.clone_from(&agent_secret);
                cfg.server_key.clone_from(&server_key);
            }
            Tenant {
                cfg,
                policy: t.policy.clone(),
                schedule: t.schedule.clone(),
                webhooks: t.webhooks.clone(),
                assistants: t.assistants.clone(),
            }
        });
        self.tenants = Tenants::index(tenants.collect());
        self.config.tenants[0].agent_secret = agent_secret;
        self.config.tenants[0].server_key = server_key;
        self
    }
}

/// Shortest `session_secret` (and previous one): it signs every session token and
/// challenge, so an empty or trivial one would let anyone forge them.
pub const MIN_SESSION_SECRET: usize = 8;

fn check_globals(c: &Config) -> Result<(), String> {
    // What the gateway binds and opens at start, checked here too: `check-config` must
    // refuse what would not start.
    let port = c
        .listen
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
        return Err(format!(
            "listen {:?} is not HOST:PORT (e.g. 127.0.0.1:8080, [::]:8080)",
            c.listen
        ));
    }
    confab_store::check_url(&c.store)?;
    for secret in c.session_secret.iter().chain(&c.previous_session_secrets) {
        if secret.chars().count() < MIN_SESSION_SECRET {
            return Err(format!(
                "session_secret and previous_session_secrets must be at least \
                 {MIN_SESSION_SECRET} characters (leave session_secret out to have one generated)"
            ));
        }
    }
    let redis = ["redis://", "rediss://", "redis-cluster://"]
        .iter()
        .any(|p| c.store.starts_with(p));
    if c.redis_replica_acks.is_some_and(|n| n > 0) && !redis {
        return Err("redis_replica_acks applies to Redis stores only".into());
    }
    if c.tenants.is_empty() {
        return Err("no tenants configured: add at least one [[tenants]] table".into());
    }
    // Bounded, so expiries computed in epoch milliseconds cannot overflow.
    if !(1..=MAX_TTL_SECS).contains(&c.session_ttl_secs)
        || !(1..=MAX_TTL_SECS).contains(&c.challenge_ttl_secs)
    {
        return Err(format!(
            "session_ttl_secs and challenge_ttl_secs must be 1..={MAX_TTL_SECS} (10 years)"
        ));
    }
    // A tokio semaphore holds the slots; it panics beyond MAX_PERMITS.
    if c.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
        return Err("max_connections must be below 2^61".into());
    }
    crate::blobs::Location::of(c)?;
    if !(1..=MAX_TTL_SECS).contains(&c.attachment_url_ttl_secs) {
        return Err(format!(
            "attachment_url_ttl_secs must be 1..={MAX_TTL_SECS}"
        ));
    }
    if c.ws_write_delay_ms > MAX_WS_WRITE_DELAY_MS {
        return Err(format!(
            "ws_write_delay_ms must be 0 to {MAX_WS_WRITE_DELAY_MS}"
        ));
    }
    if c.max_connections == 0 || c.max_connections_per_ip == 0 || c.max_sockets_per_visitor == 0 {
        return Err(
            "max_connections, max_connections_per_ip and max_sockets_per_visitor must be positive"
                .into(),
        );
    }
    Ok(())
}

fn check_tenant(t: &TenantConfig, demo: bool) -> Result<(), String> {
    let a = &t.attachments;
    if a.max_bytes == 0 || a.max_bytes > 5 * 1024 * 1024 * 1024 {
        return Err("attachments.max_bytes must be 1 to 5 GiB".into());
    }
    for ty in &a.allowed_types {
        let ok = ty.split_once('/').is_some_and(|(x, y)| {
            !x.is_empty()
                && !y.is_empty()
                && ty
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/.+-".contains(&b))
        });
        if !ok {
            return Err(format!(
                "attachments.allowed_types: {ty:?} is not a lowercase type/subtype"
            ));
        }
        // Types come from the file's bytes, never from the client: a name the sniffer
        // never gives (`image/jpg`) would allow nothing.
        if !crate::service::attachments::can_sniff(ty) {
            return Err(format!(
                "attachments.allowed_types: {ty:?} is not a type Confab recognises in a \
                 file's bytes (e.g. image/jpeg, image/png, application/pdf, text/plain)"
            ));
        }
    }
    if let Some(key) = t.rate_limits.zero() {
        return Err(format!(
            "rate_limits.{key} must be at least 1 (0 would refuse every request)"
        ));
    }
    if t.id.is_empty()
        || t.id.len() > 64
        || !t
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("id must be 1-64 characters of [A-Za-z0-9_-]".into());
    }
    if !is_public_key(&t.public_key) {
        return Err("public_key must match ^pk_live_[a-f0-9]{32}$".into());
    }
    if !demo && (t.agent_secret.len() < 8 || t.server_key.len() < 8) {
        return Err("agent_secret and server_key must be at least 8 characters".into());
    }
    if !(0.0..=1.0).contains(&t.telemetry_sample_rate) {
        return Err("telemetry_sample_rate must be between 0 and 1".into());
    }
    if t.max_message_length == 0 || t.max_message_length > MAX_MESSAGE_CHARS {
        return Err(format!(
            "max_message_length must be 1..={MAX_MESSAGE_CHARS}"
        ));
    }
    if !matches!(t.branding.position.as_str(), "bottom-right" | "bottom-left") {
        return Err("branding.position must be bottom-right or bottom-left".into());
    }
    Ok(())
}

/// Shortest webhook signing secret.
pub const MIN_WEBHOOK_SECRET: usize = 16;

fn compile_webhooks(t: &TenantConfig) -> Result<Vec<Arc<Webhook>>, String> {
    let mut urls = HashSet::new();
    let mut out = Vec::with_capacity(t.webhooks.len());
    for (index, w) in t.webhooks.iter().enumerate() {
        let url = reqwest::Url::parse(&w.url).map_err(|e| format!("{:?}: {e}", w.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("{:?}: only http:// and https:// URLs", w.url));
        }
        if !urls.insert(url.as_str().to_owned()) {
            return Err(format!("{:?} is listed twice", w.url));
        }
        if w.secret.chars().count() < MIN_WEBHOOK_SECRET {
            return Err(format!(
                "{:?}: secret must be at least {MIN_WEBHOOK_SECRET} characters",
                w.url
            ));
        }
        if let Some(events) = &w.events {
            if events.is_empty() {
                return Err(format!(
                    "{:?}: events is empty, so nothing would be delivered (leave it out for \
                     every event type)",
                    w.url
                ));
            }
            for e in events {
                if !is_event_type(e) {
                    return Err(format!("{:?}: {e:?} is not an event type (a:b)", w.url));
                }
                if e == "message:delta" {
                    return Err(format!(
                        "{:?}: message:delta is ephemeral and never sent to webhooks",
                        w.url
                    ));
                }
            }
        }
        let digest = Sha256::digest(url.as_str().as_bytes());
        let key: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        out.push(Arc::new(Webhook {
            url,
            secret: w.secret.clone(),
            events: w.events.clone(),
            key: format!("wh_{key}"),
            index,
        }));
    }
    Ok(out)
}

/// Longest `timeout_secs` of an assistant (10 minutes).
pub const MAX_ASSISTANT_TIMEOUT_SECS: u64 = 600;
/// Most `context_messages` of an assistant (one history page).
pub const MAX_CONTEXT_MESSAGES: usize = 200;

fn compile_assistants(t: &TenantConfig) -> Result<Vec<Arc<Assistant>>, String> {
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(t.assistants.len());
    for (index, a) in t.assistants.iter().enumerate() {
        let at = format!("{:?}", a.id);
        if a.id.is_empty()
            || a.id.len() > 64
            || !a
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("{at}: id must be 1-64 characters of [A-Za-z0-9_-]"));
        }
        if !ids.insert(&a.id) {
            return Err(format!("{at}: duplicate assistant id"));
        }
        if a.name.trim().is_empty() || a.name.chars().count() > 100 {
            return Err(format!("{at}: name must be 1-100 characters"));
        }
        let url = reqwest::Url::parse(&a.url).map_err(|e| format!("{at}: url {:?}: {e}", a.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("{at}: url: only http:// and https:// URLs"));
        }
        match a.kind {
            AssistantKind::Openai => {
                if a.model.as_deref().is_none_or(|m| m.trim().is_empty()) {
                    return Err(format!("{at}: kind = \"openai\" needs a model"));
                }
            }
            AssistantKind::Webhook => {
                if a.api_key
                    .as_deref()
                    .is_none_or(|k| k.chars().count() < MIN_WEBHOOK_SECRET)
                {
                    return Err(format!(
                        "{at}: kind = \"webhook\" needs an api_key (its signing key) of at least {MIN_WEBHOOK_SECRET} characters"
                    ));
                }
                if a.model.is_some() || a.system_prompt.is_some() {
                    return Err(format!(
                        "{at}: model and system_prompt are for kind = \"openai\""
                    ));
                }
            }
        }
        if !(1..=MAX_CONTEXT_MESSAGES).contains(&a.context_messages) {
            return Err(format!(
                "{at}: context_messages must be 1..={MAX_CONTEXT_MESSAGES}"
            ));
        }
        if !(1..=MAX_ASSISTANT_TIMEOUT_SECS).contains(&a.timeout_secs) {
            return Err(format!(
                "{at}: timeout_secs must be 1..={MAX_ASSISTANT_TIMEOUT_SECS}"
            ));
        }
        let fallback = a.fallback_message.trim();
        if fallback.is_empty() || fallback.chars().count() > MAX_MESSAGE_CHARS {
            return Err(format!(
                "{at}: fallback_message must be 1..={MAX_MESSAGE_CHARS} characters"
            ));
        }
        if let Some(p) = &a.phone_number {
            let digits = p.strip_prefix('+').unwrap_or(p);
            if digits.len() < 3 || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!(
                    "{at}: phone_number must be E.164, e.g. +14165559999"
                ));
            }
        }
        out.push(Arc::new(Assistant {
            cfg: a.clone(),
            url,
            index,
        }));
    }
    Ok(out)
}

impl Tenants {
    fn index(all: Vec<Tenant>) -> Tenants {
        let all: Vec<Arc<Tenant>> = all.into_iter().map(Arc::new).collect();
        let mut t = Tenants {
            by_id: HashMap::new(),
            by_public_key: HashMap::new(),
            by_server_key: HashMap::new(),
            all: all.clone(),
        };
        for tenant in all {
            t.by_id.insert(tenant.cfg.id.clone(), tenant.clone());
            t.by_public_key
                .insert(tenant.cfg.public_key.clone(), tenant.clone());
            t.by_server_key.insert(
                Sha256::digest(tenant.cfg.server_key.as_bytes()).into(),
                tenant,
            );
        }
        t
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    pub fn by_public_key(&self, pk: &str) -> Option<&Arc<Tenant>> {
        self.by_public_key.get(pk)
    }

    pub fn by_server_key(&self, key: &str) -> Option<&Arc<Tenant>> {
        self.by_server_key
            .get(&<[u8; 32]>::from(Sha256::digest(key.as_bytes())))
    }

    /// Every tenant, in the file's order.
    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.all
    }

    pub fn any_policy_allows(&self, origin: &str) -> bool {
        self.all.iter().any(|t| t.policy.allows(origin))
    }
}
