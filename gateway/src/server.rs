//! The one way in: [`run`] serves a bound listener with compiled [`Settings`] until
//! `shutdown` resolves. The binary and the tests both call it.
//!
//! Connections are accepted and policed by [`crate::connections`] (per-IP cap, head, body
//! and keep-alive timeouts).
//!
//! Shutdown: stop accepting, cancel the node's token (long-polls answer, every socket
//! closes with 1001), let in-flight requests, acks and socket closes finish within one
//! deadline, `shutdown_grace_secs` after the signal, then drop the backend — for SQLite
//! that joins the writer thread after it committed everything queued and checkpoints the
//! WAL.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use confab_protocol::token::{sign_agent_jwt, AgentClaims, Keyring};
use confab_store::{Retention, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connections::Timeouts;
use crate::hub::Hub;
use crate::policy::availability::AvailabilityMode;
use crate::service::webhooks::WebhookTiming;
use crate::settings::{Settings, Tenant};
use crate::state::{AppState, Clock};

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Knobs tests turn; the binary uses the defaults.
#[derive(Clone)]
pub struct Options {
    pub clock: Clock,
    pub retention: Retention,
    /// How often housekeeping runs (expired nonces, event retention, rate-limit keys).
    pub maintenance_every: Duration,
    /// A connection that has not sent a complete request head within this is closed
    /// (SPEC: 10 s).
    pub head_timeout: Duration,
    /// A request body from which nothing arrives for this gets 408 and the connection is
    /// closed (SPEC: 30 s).
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed (SPEC: 75 s).
    pub keep_alive_timeout: Duration,
    /// Webhook attempt timeout, retry gaps and lease length.
    pub webhooks: WebhookTiming,
    /// Owed-reply lease and poll, and the assistants' circuit breaker.
    pub assistants: crate::service::assistants::AssistantTiming,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Clock::system(),
            retention: Retention::default(),
            maintenance_every: Duration::from_secs(60),
            head_timeout: Timeouts::default().head,
            body_timeout: Timeouts::default().body_stall,
            keep_alive_timeout: Timeouts::default().keep_alive,
            webhooks: WebhookTiming::default(),
            assistants: Default::default(),
        }
    }
}

fn derive(secret: &[u8], label: &str) -> String {
    let d = Sha256::new()
        .chain_update(label.as_bytes())
        .chain_update([0])
        .chain_update(secret)
        .finalize();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The demo tenant's agent secret, derived from the deployment's session secret (also what
/// `confab token` signs with when no config file is given).
pub(crate) fn demo_agent_secret(session_secret: &[u8]) -> String {
    derive(session_secret, "confab-demo-agent-secret")
}

/// One line describing a compiled tenant: what the gateway logs for each configured tenant
/// at start-up, and what `confab check-config` prints.
pub fn tenant_summary(t: &Tenant) -> String {
    let c = &t.cfg;
    let origins = if t.policy.allowed.is_empty() {
        "any".to_owned()
    } else {
        t.policy.allowed.join(" ")
    };
    let availability = match c.availability.mode {
        AvailabilityMode::BusinessHours => {
            format!("business_hours ({})", c.availability.timezone)
        }
        mode => mode.as_str().to_owned(),
    };
    let pii = format!("{:?}", c.pii_retention).to_ascii_lowercase();
    format!(
        "tenant {:?} ({}): public key {}, origins {origins}, availability {availability}, \
         webhooks {}, assistants {}, pii {pii}, init challenge {}",
        c.id,
        c.name,
        c.public_key,
        t.webhooks.len(),
        if t.assistants.is_empty() {
            "none".to_owned()
        } else {
            t.assistants
                .iter()
                .map(|a| a.cfg.id.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        },
        if c.require_init_challenge {
            "required"
        } else {
            "off"
        },
    )
}

/// Serves until `shutdown` resolves. Logs `listening on http://ADDR` once it accepts.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let config = &settings.config;
    let redis = confab_store::redis::RedisOptions {
        replica_acks: config.redis_replica_acks,
    };
    let backend = confab_store::open_with_options(
        &config.store,
        options.retention,
        options.clock.clone(),
        &redis,
    )
    .await?;
    let secret = match &config.session_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let mut fresh = vec![0u8; 32];
            rand::rng().fill_bytes(&mut fresh);
            backend.store.session_secret(fresh).await?
        }
    };
    let previous: Vec<Vec<u8>> = config
        .previous_session_secrets
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let keys = Keyring::new(&secret, &previous);
    let settings = if config.demo {
        // Stable across restarts, unguessable, and never written anywhere but the log.
        let server_key = format!(
            "sk_demo_{}",
            &derive(&secret, "confab-demo-server-key")[..32]
        );
        settings.with_demo_secrets(demo_agent_secret(&secret), server_key)
    } else {
        settings
    };
    let location = crate::blobs::Location::of(&settings.config).map_err(std::io::Error::other)?;
    if location == crate::blobs::Location::Unconfigured {
        tracing::warn!(
            "attachments: no attachments_store; uploads answer 503 until an s3:// store is \
             configured (Redis mode: the nodes share no disk)"
        );
    }
    let blobs = crate::blobs::Blobs::open(&location).map_err(std::io::Error::other)?;
    let hub = Arc::new(Hub::default());
    backend.broker.set_sink(hub.clone());
    let state = AppState::new(settings, keys, backend, hub, blobs, &options);

    let addr = listener.local_addr()?;
    if state.config.demo {
        print_demo_banner(&state, addr);
    } else {
        for t in state.tenants.all() {
            tracing::info!("{}", tenant_summary(t));
        }
    }
    let maintenance = tokio::spawn(maintain(state.clone(), options.maintenance_every));
    crate::service::webhooks::start(&state).await;
    crate::service::assistants::start(&state);
    state
        .background
        .spawn(crate::service::presence::run(state.clone()));
    let app = crate::http::router(state.clone());
    let token = state.shutdown.clone();
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    // One deadline for the whole shutdown, fixed when it starts: in-flight requests and
    // open sockets share `shutdown_grace_secs`, they do not get one each.
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = deadline_tx.send(tokio::time::Instant::now() + grace);
        token.cancel();
    });
    tracing::info!("listening on http://{addr}");
    let timeouts = Timeouts {
        head: options.head_timeout,
        body_stall: options.body_timeout,
        keep_alive: options.keep_alive_timeout,
    };
    // Cancelled when the grace is over: connections still open then are dropped.
    let hard = CancellationToken::new();
    let server = crate::connections::serve(listener, app, state.clone(), timeouts, hard.clone());
    let deadline = async {
        match deadline_rx.await {
            Ok(at) => at,
            // The signal task is gone without a shutdown (cannot happen while we serve).
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut at = None;
    tokio::pin!(server);
    loop {
        tokio::select! {
            _ = &mut server => break,
            d = &mut deadline, if at.is_none() => at = Some(d),
            _ = tokio::time::sleep_until(at.unwrap_or_else(tokio::time::Instant::now)), if at.is_some() => {
                tracing::warn!("in-flight requests did not finish within {grace:?}; exiting anyway");
                hard.cancel();
                break;
            }
        }
    }
    state.sockets.close();
    state.background.close();
    // The server may have finished before the deadline was read; it is set by then.
    let at = at
        .or_else(|| futures_util::FutureExt::now_or_never(&mut deadline))
        .unwrap_or_else(|| tokio::time::Instant::now() + grace);
    if tokio::time::timeout_at(at, state.sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!("some WebSocket connections did not close within {grace:?}");
    }
    // Webhook followers stop at once on shutdown (an attempt in flight is abandoned: the
    // event is sent again by the next holder) and hand their leases back.
    if tokio::time::timeout_at(at, state.background.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within {grace:?}");
    }
    maintenance.abort();
    let _ = maintenance.await;
    drop(state);
    tracing::info!("stopped");
    Ok(())
}

async fn maintain(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let now = state.now_ms();
        if let Err(e) = state.store.maintain(now).await {
            tracing::warn!(error = %e, "maintenance failed");
        }
        state.limiter.sweep(now).await;
        crate::service::attachments::sweep(&state).await;
    }
}

fn print_demo_banner(state: &AppState, addr: SocketAddr) {
    let t = &state.config.tenants[0];
    let exp = state.now_ms() / 1000 + 24 * 3600;
    let jwt = sign_agent_jwt(
        t.agent_secret.as_bytes(),
        &AgentClaims {
            sub: "demo-agent".into(),
            tenant: t.id.clone(),
            exp,
            name: Some("Demo Agent".into()),
        },
    );
    let base = format!("http://{addr}");
    tracing::info!("demo tenant {:?} ({}) — no config file given", t.id, t.name);
    tracing::info!("  public key:   {}", t.public_key);
    tracing::info!("  server key:   {}", t.server_key);
    tracing::info!("  agent JWT (valid 24 h): {jwt}");
    tracing::info!("  widget demo:  {base}/demo");
    tracing::info!("  console:      {base}/console#token={jwt}");
    tracing::info!(
        "  config:       curl '{base}/v1/config?pk={}'",
        t.public_key
    );
    match t.assistants.first() {
        Some(a) => tracing::info!(
            "  assistant:    {:?} ({}, model {}) answers while no agent is online",
            a.name,
            a.url,
            a.model.as_deref().unwrap_or_default()
        ),
        None => tracing::info!(
            "  assistant:    none — set CONFAB_DEMO_OPENAI_URL (e.g. http://127.0.0.1:11434/v1/chat/completions \
             for Ollama; CONFAB_DEMO_OPENAI_MODEL, CONFAB_DEMO_OPENAI_KEY) for an AI that answers while no agent is online"
        ),
    }
}
