//! Shared state of one gateway node: the compiled [`Settings`], the backend, the hub,
//! the clock, and the shutdown signal.

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use confab_protocol::token::Keyring;
use confab_store::ratelimit::RateLimiter;
use confab_store::{Backend, Broker, Store};
use dashmap::DashMap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::policy::limits::KeyedCap;
use crate::service::assistants::AssistantTiming;
use crate::service::presence::Presence;
use crate::service::webhooks::WebhookTiming;
use crate::settings::{Settings, Tenants};

/// The node's one time source, shared with its store (see [`confab_store::Clock`]).
pub use confab_store::Clock;

/// A visitor as a fixed-size key: 128 bits of SHA-256 over (tenant, visitor id), where a
/// collision is as unlikely as guessing a visitor token.
pub fn visitor_key(tenant: &str, visitor_id: &str) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0])
        .chain_update(visitor_id.as_bytes())
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&d[..16]);
    key
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    pub config: Config,
    pub tenants: Tenants,
    /// Session-token and challenge keys (current + previous).
    pub keys: Keyring,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub limiter: Arc<dyn RateLimiter>,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    pub trusted_proxies: Vec<IpNet>,
    /// Tenant id → (computed at, encoded tenant part of `/v1/config` without its closing
    /// brace). Recomputed at most once per 60 s per tenant.
    pub config_cache: DashMap<String, (i64, Arc<str>)>,
    pub metrics: Metrics,
    /// Cancelled when the node shuts down: long-polls answer, sockets close with 1001.
    pub shutdown: CancellationToken,
    /// WebSocket connection slots (`max_connections`): taken before the upgrade.
    pub connections: Arc<Semaphore>,
    /// WebSocket tasks, awaited (with a deadline) at shutdown.
    pub sockets: TaskTracker,
    /// Background work (webhook followers), awaited with the sockets at shutdown.
    pub background: TaskTracker,
    /// This process's name as a lease holder: random at each start, so a restarted node
    /// never mistakes a lease of its previous life for its own.
    pub node_id: String,
    /// The node's one client for outgoing HTTP (webhooks, assistants): pooled keep-alive
    /// connections, HTTP/2 where offered, no redirects followed.
    pub http: reqwest::Client,
    pub webhook_timing: WebhookTiming,
    pub assistant_timing: AssistantTiming,
    /// The replies this node is producing, and each assistant's circuit.
    pub assistants: crate::service::assistants::Runtime,
    /// Agents online (this node's and, as last read, every node's).
    pub presence: Presence,
    /// Open connections per client IP (`max_connections_per_ip`), taken at accept.
    pub per_ip: KeyedCap<IpAddr>,
    /// Attachment bytes and the signer of their links.
    pub attachments: crate::service::attachments::Attachments,
    /// Open visitor sockets per visitor (`max_sockets_per_visitor`), taken after auth; keyed
    /// by [`visitor_key`] so that a held place costs no heap strings.
    pub per_visitor: KeyedCap<[u8; 16]>,
}

impl AppState {
    pub fn new(
        settings: Settings,
        keys: Keyring,
        backend: Backend,
        hub: Arc<Hub>,
        blobs: crate::blobs::Blobs,
        options: &crate::server::Options,
    ) -> AppState {
        let clock = options.clock.clone();
        let (webhook_timing, assistant_timing) = (options.webhooks, options.assistants);
        let Settings {
            config,
            tenants,
            trusted_proxies,
        } = settings;
        let Backend {
            store,
            broker,
            limiter,
        } = backend;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Confab/1")
            .connect_timeout(std::time::Duration::from_secs(5))
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build()
            // Only fails when the TLS backend cannot initialise: nothing could be sent.
            .expect("the HTTP client starts");
        let links = Arc::new(crate::service::attachments::Links::new(
            keys.clone(),
            config.attachment_url_ttl_secs,
            clock.clone(),
        ));
        hub.set_links(links.clone());
        AppState(Arc::new(Inner {
            attachments: crate::service::attachments::Attachments { blobs, links },
            tenants,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            per_ip: KeyedCap::new(config.max_connections_per_ip),
            per_visitor: KeyedCap::new(config.max_sockets_per_visitor),
            config,
            keys,
            store,
            broker,
            limiter,
            hub,
            clock,
            trusted_proxies,
            config_cache: DashMap::new(),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            background: TaskTracker::new(),
            node_id: confab_protocol::token::random_id("node_", 12),
            http,
            webhook_timing,
            assistant_timing,
            assistants: Default::default(),
            presence: Presence::default(),
        }))
    }

    /// The client's IP per the trusted-proxy rule (see [`crate::policy::limits::client_ip`]).
    pub fn client_ip(
        &self,
        peer: std::net::SocketAddr,
        headers: &axum::http::HeaderMap,
    ) -> std::net::IpAddr {
        crate::policy::limits::client_ip(peer, headers, &self.trusted_proxies)
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
impl AppState {
    /// A node for unit tests: the demo config, the memory store, a hub wired to it, and
    /// `clock`.
    pub async fn for_tests(clock: Clock) -> AppState {
        let backend = confab_store::open("memory", confab_store::Retention::default())
            .await
            .unwrap();
        let hub = Arc::new(Hub::default());
        backend.broker.set_sink(hub.clone());
        AppState::new(
            Settings::compile(Config::demo()).unwrap(),
            Keyring::new(b"unit-test-secret", &[]),
            backend,
            hub,
            crate::blobs::Blobs::open(&crate::blobs::Location::Memory).unwrap(),
            &crate::server::Options {
                clock,
                ..Default::default()
            },
        )
    }
}
