//! The tenant event log as agents and the tenant's backend use it: pages (long-polled),
//! where a resuming tenant channel starts, and custom events the backend publishes.

use confab_protocol::model::TenantEvent;
use confab_protocol::ApiError;
use serde_json::Value;

use super::not_found;
use crate::error::store_error;
use crate::settings::Tenant;
use crate::state::AppState;

/// A page of a tenant's event log, long-polled for up to `wait` seconds.
pub async fn page(
    state: &AppState,
    tenant: &str,
    after: u64,
    limit: usize,
    wait: u64,
) -> Result<confab_store::EventsPage, ApiError> {
    let channel = confab_store::Channel::Tenant {
        tenant: tenant.into(),
    };
    super::long_poll(
        state,
        channel,
        wait,
        |p: &confab_store::EventsPage| p.events.is_empty(),
        || state.store.events(tenant, after, limit),
        None,
    )
    .await
}

/// Where a tenant channel resuming `after` starts, and whether that is a full recovery:
/// `(last, recovered)` — the replay sends what follows `last`. Without `after`, live from
/// now. An offset this log never reached means the client's state is from elsewhere; one
/// lost to retention replays everything still retained. Either way `recovered` is false
/// and the client reloads over HTTP.
pub async fn resume_point(
    state: &AppState,
    tenant: &str,
    after: Option<u64>,
) -> Result<(u64, bool), ApiError> {
    let Some(a) = after else {
        let latest = state.store.last_offset(tenant).await.map_err(store_error)?;
        return Ok((latest, true));
    };
    if let Some(latest) = beyond_end(state, tenant, a).await? {
        return Ok((latest, false));
    }
    let page = state
        .store
        .events(tenant, a, 1)
        .await
        .map_err(store_error)?;
    if page.recovered {
        return Ok((a, true));
    }
    // The offset just before the oldest retained event.
    let oldest = state
        .store
        .events(tenant, 0, 1)
        .await
        .map_err(store_error)?;
    let floor = oldest.events.first().map(|e| e.offset - 1).unwrap_or(a);
    Ok((floor, false))
}

/// The log's last offset when `after` is beyond it (an offset this log never reached: the
/// client's state is from elsewhere); `None` for an offset the log has reached.
pub async fn beyond_end(
    state: &AppState,
    tenant: &str,
    after: u64,
) -> Result<Option<u64>, ApiError> {
    let latest = state.store.last_offset(tenant).await.map_err(store_error)?;
    Ok((after > latest).then_some(latest))
}

/// Appends a custom event (`POST /v1/tenant/events`) for the tenant's agents; 404 when it
/// names a conversation the tenant does not have.
pub async fn publish(
    state: &AppState,
    tenant: &Tenant,
    kind: &str,
    data: Value,
    conversation_id: Option<&str>,
) -> Result<TenantEvent, ApiError> {
    state
        .store
        .append_event(&tenant.cfg.id, kind, data, conversation_id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)
}
