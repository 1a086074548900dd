//! Shared state of one gateway node: configuration compiled for the hot path, the
//! backend, the hub, the clock, and the shutdown signal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use confab_protocol::token::Keyring;
use confab_store::ratelimit::RateLimiter;
use confab_store::{Broker, Store};
use dashmap::DashMap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TenantConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::policy::availability::Schedule;
use crate::policy::limits::KeyedCap;
use crate::policy::origin::OriginPolicy;

/// The node's one time source, shared with its store (see [`confab_store::Clock`]).
pub use confab_store::Clock;

/// A tenant, compiled.
pub struct Tenant {
    pub cfg: TenantConfig,
    /// Its effective origin allowlist.
    pub policy: OriginPolicy,
    pub schedule: Schedule,
}

/// Lookup tables for tenants.
pub struct Tenants {
    by_id: HashMap<String, Arc<Tenant>>,
    by_public_key: HashMap<String, Arc<Tenant>>,
    /// SHA-256 of each `server_key`: a hash-table lookup does not leak key bytes by timing.
    by_server_key: HashMap<[u8; 32], Arc<Tenant>>,
    /// Every policy of the deployment, for CORS (which runs before the tenant is known).
    policies: Vec<OriginPolicy>,
}

impl Tenants {
    /// Compiles every tenant of `config` (its origin policy and schedule). `Config::check`
    /// has already refused anything that would fail here; an error still surfaces as one,
    /// never as a panic.
    pub fn new(config: &Config) -> Result<Tenants, String> {
        let mut t = Tenants {
            by_id: HashMap::new(),
            by_public_key: HashMap::new(),
            by_server_key: HashMap::new(),
            policies: Vec::new(),
        };
        for cfg in &config.tenants {
            let tenant = Arc::new(Tenant {
                policy: OriginPolicy::for_tenant(&config.allowed_origins, &cfg.allowed_origins),
                schedule: Schedule::parse(&cfg.availability)
                    .map_err(|e| format!("tenant {:?}: {e}", cfg.id))?,
                cfg: cfg.clone(),
            });
            t.policies.push(tenant.policy.clone());
            t.by_id.insert(cfg.id.clone(), tenant.clone());
            t.by_public_key
                .insert(cfg.public_key.clone(), tenant.clone());
            t.by_server_key
                .insert(Sha256::digest(cfg.server_key.as_bytes()).into(), tenant);
        }
        Ok(t)
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

    pub fn any_policy_allows(&self, origin: &str) -> bool {
        self.policies.iter().any(|p| p.allows(origin))
    }
}

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
    /// Open connections per client IP (`max_connections_per_ip`), taken at accept.
    pub per_ip: KeyedCap<IpAddr>,
    /// Open visitor sockets per visitor (`max_sockets_per_visitor`), taken after auth; keyed
    /// by [`visitor_key`] so that a held place costs no heap strings.
    pub per_visitor: KeyedCap<[u8; 16]>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        keys: Keyring,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        limiter: Arc<dyn RateLimiter>,
        hub: Arc<Hub>,
        clock: Clock,
    ) -> Result<AppState, String> {
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .map(|c| {
                crate::policy::limits::parse_cidr(c)
                    .ok_or_else(|| format!("trusted_proxies: {c:?} is not a CIDR or an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(AppState(Arc::new(Inner {
            tenants: Tenants::new(&config)?,
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
        })))
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
