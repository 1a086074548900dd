//! Webhooks: each `[[tenants.webhooks]]` entry follows its tenant's event log and POSTs
//! the events it wants to its URL, signed, one at a time, in offset order.
//!
//! - **Driven by the log, not by a queue.** A webhook is a durable cursor in the store
//!   ([`WebhookState`]): the offset of the last event it dealt with, advanced only after a
//!   2xx (or past events its filter does not want, or that left retention first). A
//!   restart or a `kill -9` resumes from the stored cursor; at worst the deliveries of the
//!   last [`SAVE_EVERY`] and the event in flight are sent again, with the same
//!   `X-Confab-Delivery` ids (delivery is at least once).
//! - **One deliverer per webhook in the deployment.** A node delivers a webhook only while
//!   it holds the webhook's lease in the store ([`confab_store::Store::lease`]), renewed
//!   every few seconds while it works; a node that dies stops renewing, and another node,
//!   asking every few seconds, takes over from the stored cursor.
//! - **Order over throughput.** One event in flight per webhook; a failure (non-2xx,
//!   timeout, connection error) is retried with exponential backoff and jitter while later
//!   events wait.
//! - **A new webhook starts at the end of the log**: it hears what happens after it was
//!   added, not the retained history (a changed URL is a new webhook).
//! - **Bounded.** Responses are read up to [`MAX_RESPONSE_BYTES`] and discarded; the
//!   client never follows redirects; each attempt has a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use confab_protocol::model::TenantEvent;
use confab_protocol::time::format_ms;
use confab_protocol::token::sign_webhook;
use confab_protocol::ApiError;
use confab_store::{Channel, WebhookState};
use tokio::time::Instant;

use crate::metrics::WebhookStats;
use sha2::{Digest, Sha256};

use crate::settings::{Tenant, Webhook};
use crate::state::AppState;

/// Every delivery's `User-Agent`.
const WEBHOOK_USER_AGENT: &str = "Confab-Webhooks/1";

/// Response bytes read (then discarded) from a receiver, so the connection can be reused.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Events read from the log at a time.
const PAGE: usize = 100;
/// How often, at most, a webhook that keeps delivering stores its position. Saving after
/// every delivery would make each event wait for a commit (an fsync on the embedded
/// store); a crash resends at most this much (delivery is at least once anyway). A failure,
/// an idle log and shutdown save at once.
const SAVE_EVERY: Duration = Duration::from_millis(100);
/// Events scanned to compute one webhook's lag for the status route (the console polls it):
/// a lag beyond this is reported as this.
pub const LAG_SCAN_LIMIT: usize = 20_000;

/// The timings of delivery (SPEC: 10 s per attempt, backoff 1 s doubling to 10 min, a dead
/// node's webhooks taken over within 15 s). Tests shorten them through `Options`.
#[derive(Debug, Clone, Copy)]
pub struct WebhookTiming {
    /// How long one POST may take (connect, send, answer).
    pub attempt_timeout: Duration,
    /// The gap after the first failure; it doubles with each further failure…
    pub first_retry: Duration,
    /// …up to this. Each gap is randomised by ±20 %.
    pub max_retry: Duration,
    /// How long a lease lasts without renewal. The holder renews it every third of this; a
    /// node without it asks again every third of this, so a dead holder's webhooks move
    /// within `lease` + `lease / 3`.
    pub lease: Duration,
}

impl Default for WebhookTiming {
    fn default() -> Self {
        WebhookTiming {
            attempt_timeout: Duration::from_secs(10),
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(600),
            lease: Duration::from_secs(10),
        }
    }
}

impl WebhookTiming {
    fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// The gap before retry number `failures` (1 = after the first failure); `unit` in
    /// `[0, 1)` picks the jitter.
    pub fn backoff(&self, failures: u32, unit: f64) -> Duration {
        let base = self
            .first_retry
            .saturating_mul(1u32 << failures.saturating_sub(1).min(30))
            .min(self.max_retry);
        base.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
    }
}

/// Starts one follower per configured webhook; they stop with the node. Called before
/// the node accepts requests, so a new webhook's starting point is fixed before any event
/// this node commits.
pub async fn start(state: &AppState) {
    for tenant in state.tenants.all() {
        for hook in &tenant.webhooks {
            if let Err(e) = place_new(state, &tenant.cfg.id, hook).await {
                tracing::warn!(tenant = tenant.cfg.id, webhook = hook.index, error = %e, "webhook position not read; retrying in the background");
            }
            state
                .background
                .spawn(follow(state.clone(), tenant.clone(), hook.clone()));
        }
    }
}

/// Stores a webhook seen for the first time at the end of its tenant's log.
async fn place_new(
    state: &AppState,
    tenant: &str,
    hook: &Webhook,
) -> Result<(), confab_store::StoreError> {
    if state
        .store
        .webhook_state(tenant, &hook.key)
        .await?
        .is_none()
    {
        let st = WebhookState {
            offset: state.store.last_offset(tenant).await?,
            ..WebhookState::default()
        };
        state
            .store
            .save_webhook_state(tenant, &hook.key, &st)
            .await?;
    }
    Ok(())
}

/// Why a deliverer stopped.
enum Stop {
    Shutdown,
    /// Another node holds the lease now (or this one could not renew it).
    LeaseLost,
    Store(confab_store::StoreError),
}

impl From<confab_store::StoreError> for Stop {
    fn from(e: confab_store::StoreError) -> Stop {
        Stop::Store(e)
    }
}

/// Holds the webhook's lease whenever it can, and delivers while holding it.
async fn follow(state: AppState, tenant: Arc<Tenant>, hook: Arc<Webhook>) {
    let lease = format!("webhook:{}:{}", tenant.cfg.id, hook.key);
    let stats = state.metrics.webhook(&tenant.cfg.id, hook.index);
    let timing = state.webhook_timing;
    loop {
        let held = match take_lease(&state, &lease).await {
            Ok(held) => held,
            Err(e) => {
                tracing::debug!(error = %e, lease, "webhook lease not taken");
                false
            }
        };
        if held {
            tracing::info!(tenant = tenant.cfg.id, webhook = hook.index, url = %hook.url, "delivering webhook");
            let mut d = Deliverer {
                state: &state,
                tenant: &tenant,
                hook: &hook,
                lease: &lease,
                stats: &stats,
                renew_at: Instant::now() + timing.renew_every(),
                saved_at: Instant::now(),
                unsaved: None,
            };
            match d.run().await {
                Stop::Shutdown => {
                    // Hand over at once rather than after the lease lapses.
                    let _ = state.store.release_lease(&lease, &state.node_id).await;
                    return;
                }
                Stop::LeaseLost => {
                    tracing::warn!(
                        tenant = tenant.cfg.id,
                        webhook = hook.index,
                        "webhook lease lost; another node delivers"
                    )
                }
                Stop::Store(e) => {
                    tracing::warn!(tenant = tenant.cfg.id, webhook = hook.index, error = %e, "webhook delivery paused: store unavailable")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.renew_every()) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Takes or renews `lease` for this node, for the configured lease length.
async fn take_lease(state: &AppState, lease: &str) -> Result<bool, confab_store::StoreError> {
    let ttl_ms = state.webhook_timing.lease.as_millis() as i64;
    state.store.lease(lease, &state.node_id, ttl_ms).await
}

struct Deliverer<'a> {
    state: &'a AppState,
    tenant: &'a Arc<Tenant>,
    hook: &'a Webhook,
    lease: &'a str,
    stats: &'a WebhookStats,
    /// When the lease is renewed next.
    renew_at: Instant,
    /// When the position was last stored, and the newer state not stored yet.
    saved_at: Instant,
    unsaved: Option<WebhookState>,
}

impl Deliverer<'_> {
    fn tenant_id(&self) -> &str {
        &self.tenant.cfg.id
    }

    /// Delivers until shutdown, a lost lease or a store failure.
    async fn run(&mut self) -> Stop {
        match self.deliver_all().await {
            Ok(never) => match never {},
            Err(Stop::Shutdown) => {
                if let Some(st) = self.unsaved.take() {
                    let _ = self.save(&st).await;
                }
                Stop::Shutdown
            }
            Err(stop) => stop,
        }
    }

    async fn deliver_all(&mut self) -> Result<std::convert::Infallible, Stop> {
        let state = self.state;
        // A wake-up whenever the tenant's log grows (any node's commit reaches this node's
        // hub through the broker); the renewal tick re-reads the log anyway.
        let wake = state
            .hub
            .subscribe_live(
                &state.broker,
                Channel::Tenant {
                    tenant: self.tenant_id().into(),
                },
                1,
                true,
            )
            .await;
        place_new(state, self.tenant_id(), self.hook).await?;
        let mut st = state
            .store
            .webhook_state(self.tenant_id(), &self.hook.key)
            .await?
            .unwrap_or_default();
        loop {
            self.renew_if_due().await?;
            let page = state
                .store
                .events(self.tenant_id(), st.offset, PAGE)
                .await?;
            if !page.recovered {
                self.skip_pruned(&mut st, page.events.first()).await?;
            }
            let lag = match page.events.last() {
                None => 0,
                Some(last) if !page.has_more => last.offset.saturating_sub(st.offset),
                // Behind by more than a page: how far, only the log's end tells.
                Some(_) => state
                    .store
                    .last_offset(self.tenant_id())
                    .await?
                    .saturating_sub(st.offset),
            };
            self.stats.set_lag(lag);
            if page.events.is_empty() {
                if let Some(st) = self.unsaved.take() {
                    self.save(&st).await?;
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep_until(self.renew_at) => {}
                    _ = state.shutdown.cancelled() => return Err(Stop::Shutdown),
                }
                continue;
            }
            for ev in &page.events {
                if ev.offset <= st.offset {
                    // Skipped meanwhile: it left retention while an earlier one was retried.
                    continue;
                }
                if self.hook.wants(&ev.kind) {
                    self.deliver(&mut st, ev).await?;
                } else {
                    st.offset = ev.offset;
                    self.checkpoint(&st).await?;
                }
            }
        }
    }

    /// Events between the cursor and the oldest retained one were dropped by retention
    /// before they could be delivered: skipped, logged and counted.
    async fn skip_pruned(
        &mut self,
        st: &mut WebhookState,
        first: Option<&TenantEvent>,
    ) -> Result<(), Stop> {
        let resume = match first {
            Some(ev) => ev.offset - 1,
            None => self.state.store.last_offset(self.tenant_id()).await?,
        };
        if resume > st.offset {
            let skipped = resume - st.offset;
            tracing::warn!(
                tenant = self.tenant_id(),
                webhook = self.hook.index,
                from = st.offset + 1,
                through = resume,
                "webhook events left retention before delivery: skipped"
            );
            self.stats.skipped(skipped);
            st.offset = resume;
            self.save(st).await?;
        }
        Ok(())
    }

    /// Delivers one event, retrying until a 2xx, or until it leaves retention.
    async fn deliver(&mut self, st: &mut WebhookState, ev: &TenantEvent) -> Result<(), Stop> {
        let id = delivery_id(self.tenant_id(), &self.hook.key, ev);
        // Attachment links are minted when the delivery starts (valid for the link TTL).
        let signed;
        let ev = match self
            .state
            .attachments
            .links
            .event_data(self.tenant_id(), &ev.kind, &ev.data)
        {
            std::borrow::Cow::Borrowed(_) => ev,
            std::borrow::Cow::Owned(data) => {
                signed = TenantEvent { data, ..ev.clone() };
                &signed
            }
        };
        let body = payload(self.tenant_id(), &id, ev);
        let timing = self.state.webhook_timing;
        let mut failures = 0u32;
        loop {
            let (state, hook) = (self.state, self.hook);
            let outcome = self
                .leased(post(state, hook, &id, &ev.kind, body.clone()))
                .await?;
            let now = self.state.now_ms();
            st.last_attempt_ms = Some(now);
            match outcome {
                Ok(status) => {
                    st.last_status = Some(status);
                    st.last_error = None;
                    st.failing = false;
                    st.offset = ev.offset;
                    self.checkpoint(st).await?;
                    self.stats.delivered(now - ev.created_ms);
                    return Ok(());
                }
                Err(failure) => {
                    failures += 1;
                    tracing::debug!(
                        tenant = self.tenant_id(),
                        webhook = self.hook.index,
                        offset = ev.offset,
                        failures,
                        error = failure.error,
                        "webhook delivery failed; retrying"
                    );
                    st.last_status = failure.status;
                    st.last_error = Some(failure.error);
                    st.failing = true;
                    self.save(st).await?;
                    self.stats.failed();
                }
            }
            let gap = timing.backoff(failures, rand::random::<f64>());
            self.leased(tokio::time::sleep(gap)).await?;
            // Still retained? An event that fell out of the log meanwhile is skipped.
            let check = self
                .state
                .store
                .events(self.tenant_id(), st.offset, 1)
                .await?;
            if !check.recovered {
                self.skip_pruned(st, check.events.first()).await?;
                st.failing = false;
                return Ok(());
            }
        }
    }

    /// Runs `fut`, renewing the lease whenever due; stops on shutdown or a lost lease.
    async fn leased<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return Ok(v),
                _ = tokio::time::sleep_until(self.renew_at) => self.renew_if_due().await?,
                _ = self.state.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
        }
    }

    async fn renew_if_due(&mut self) -> Result<(), Stop> {
        if Instant::now() < self.renew_at {
            return Ok(());
        }
        if !take_lease(self.state, self.lease).await? {
            return Err(Stop::LeaseLost);
        }
        self.renew_at = Instant::now() + self.state.webhook_timing.renew_every();
        Ok(())
    }

    /// Stores `st` if the last save is [`SAVE_EVERY`] old, else keeps it for later.
    async fn checkpoint(&mut self, st: &WebhookState) -> Result<(), Stop> {
        if self.saved_at.elapsed() >= SAVE_EVERY {
            self.save(st).await
        } else {
            self.unsaved = Some(st.clone());
            Ok(())
        }
    }

    /// Stores `st` now.
    async fn save(&mut self, st: &WebhookState) -> Result<(), Stop> {
        self.unsaved = None;
        self.saved_at = Instant::now();
        self.state
            .store
            .save_webhook_state(self.tenant_id(), &self.hook.key, st)
            .await?;
        Ok(())
    }
}

/// One POST. `Ok(status)` for a 2xx.
async fn post(
    state: &AppState,
    hook: &Webhook,
    id: &str,
    kind: &str,
    body: bytes::Bytes,
) -> Result<u16, Failure> {
    let t = state.now_ms().div_euclid(1000);
    let signature = sign_webhook(hook.secret.as_bytes(), t, &body);
    let sent = state
        .http
        .post(hook.url.clone())
        .timeout(state.webhook_timing.attempt_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        // The contract's own name for deliveries (the client's default, `Confab/1`, is
        // what assistant calls send), so a receiver can tell them apart.
        .header(reqwest::header::USER_AGENT, WEBHOOK_USER_AGENT)
        .header("X-Confab-Event", kind)
        .header("X-Confab-Delivery", id)
        .header("X-Confab-Signature", signature)
        .body(body)
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure {
                status: None,
                error: describe(&e),
            })
        }
    };
    let status = resp.status().as_u16();
    // Read a little of the answer so the connection can be reused; never keep it.
    let mut read = 0;
    while read <= MAX_RESPONSE_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err(Failure {
            status: Some(status),
            error: format!("HTTP {status}"),
        })
    }
}

/// A failed attempt.
struct Failure {
    status: Option<u16>,
    error: String,
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        // The innermost cause names the problem (reset, bad response, …) without the URL.
        let mut source: &dyn std::error::Error = e;
        while let Some(inner) = source.source() {
            source = inner;
        }
        source.to_string()
    }
}

/// The delivery id: the same for an event on every retry, on every node, and different
/// for any other delivery — another tenant's (which may share the URL), another webhook's,
/// or the same offset of a log that started again (a new store): it digests the tenant,
/// the webhook, the offset and when the event was stored. The offset stays readable at
/// the end.
pub fn delivery_id(tenant: &str, webhook_key: &str, ev: &TenantEvent) -> String {
    let mut h = Sha256::new();
    for part in [
        tenant.as_bytes(),
        webhook_key.as_bytes(),
        &ev.offset.to_be_bytes(),
        &ev.created_ms.to_be_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("dlv_{hex}_{}", ev.offset)
}

/// The POST body: the event as on the tenant channel, with its delivery id and tenant.
pub fn payload(tenant: &str, id: &str, ev: &TenantEvent) -> bytes::Bytes {
    let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
    format!(
        r#"{{"id":{},"type":{},"offset":"{}","tenantId":{},"createdAt":"{}","data":{}}}"#,
        s(id),
        s(&ev.kind),
        ev.offset,
        s(tenant),
        format_ms(ev.created_ms),
        ev.data
    )
    .into()
}

/// One webhook's delivery state, for `GET /v1/tenant/webhooks`.
pub struct Status {
    pub hook: Arc<Webhook>,
    pub state: WebhookState,
    /// Retained events its filter wants that it has not delivered yet.
    pub lag: u64,
}

/// Every webhook of `tenant`, with its stored state and its lag.
pub async fn status(state: &AppState, tenant: &Tenant) -> Result<Vec<Status>, ApiError> {
    let mut out = Vec::with_capacity(tenant.webhooks.len());
    for hook in &tenant.webhooks {
        let stored = state
            .store
            .webhook_state(&tenant.cfg.id, &hook.key)
            .await
            .map_err(crate::error::store_error)?;
        let st = match stored {
            Some(st) => st,
            // Not started yet: it will start at the end of the log.
            None => WebhookState {
                offset: state
                    .store
                    .last_offset(&tenant.cfg.id)
                    .await
                    .map_err(crate::error::store_error)?,
                ..WebhookState::default()
            },
        };
        let lag = state
            .store
            .event_kinds(&tenant.cfg.id, st.offset, LAG_SCAN_LIMIT)
            .await
            .map_err(crate::error::store_error)?
            .into_iter()
            .filter(|(kind, _)| hook.wants(kind))
            .map(|(_, n)| n)
            .sum();
        out.push(Status {
            hook: hook.clone(),
            state: st,
            lag,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_within_the_jitter() {
        let t = WebhookTiming::default();
        let secs = |n, u| t.backoff(n, u).as_secs_f64();
        assert_eq!(secs(1, 0.5), 1.0);
        assert_eq!(secs(2, 0.5), 2.0);
        assert_eq!(secs(3, 0.5), 4.0);
        assert_eq!(secs(10, 0.5), 512.0);
        assert_eq!(secs(11, 0.5), 600.0);
        assert_eq!(secs(1_000, 0.5), 600.0);
        assert!((secs(1, 0.0) - 0.8).abs() < 1e-9);
        assert!((secs(11, 0.999_999) - 720.0).abs() < 0.01);
    }

    #[test]
    fn the_payload_is_the_event_with_its_id() {
        let ev = TenantEvent {
            offset: 42,
            kind: "message:new".into(),
            data: r#"{"text":"hi \"you\""}"#.into(),
            created_ms: 0,
        };
        let id = delivery_id("demo", "wh_0011", &ev);
        let body = payload("demo", &id, &ev);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": id, "type": "message:new", "offset": "42", "tenantId": "demo",
                "createdAt": "1970-01-01T00:00:00.000Z", "data": {"text": "hi \"you\""}
            })
        );
    }

    #[test]
    fn delivery_ids_are_stable_and_unique_to_their_delivery() {
        let ev = |offset, created_ms| TenantEvent {
            offset,
            kind: "message:new".into(),
            data: "{}".into(),
            created_ms,
        };
        let id = delivery_id("acme", "wh_0011", &ev(42, 1_000));
        assert!(id.starts_with("dlv_") && id.ends_with("_42"), "{id}");
        assert_eq!(id.len(), "dlv_".len() + 16 + "_42".len());
        // The same event: the same id, whatever else about the event changes.
        let mut same = ev(42, 1_000);
        same.data = r#"{"x":1}"#.into();
        assert_eq!(delivery_id("acme", "wh_0011", &same), id);
        // Another tenant on the same URL, another webhook, another offset, or the same
        // offset of a log that started again: all different.
        for other in [
            delivery_id("beta", "wh_0011", &ev(42, 1_000)),
            delivery_id("acme", "wh_0012", &ev(42, 1_000)),
            delivery_id("acme", "wh_0011", &ev(43, 1_000)),
            delivery_id("acme", "wh_0011", &ev(42, 2_000)),
        ] {
            assert_ne!(other, id);
        }
    }
}
