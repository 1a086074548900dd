//! The tenant channel (`GET /v1/tenant/ws`): every event of one tenant, for agent
//! dashboards. Authenticated by an agent JWT; `after` is a tenant event offset.

use super::WsUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use confab_protocol::frames::{self, ClientFrame};
use confab_protocol::model::{Author, PresenceStatus, Status};
use confab_protocol::{ApiError, Disconnect, ErrorCode};
use confab_store::Channel;
use std::net::SocketAddr;
use std::sync::Arc;

use super::visitor::error_for;
use super::{accept, closed, parse_after, Backlog, ChannelLogic, Conn, Serving, Upgrade};
use crate::auth::verify_agent;
use crate::error::Params;
use crate::http::openapi;
use crate::hub::Subscription;
use crate::settings::Tenant;
use crate::state::AppState;

/// How many frames an agent connection may fall behind before it is closed (1013). Agents see every event of the tenant,
/// so bursts are larger than on the visitor channel.
pub const AGENT_QUEUE: usize = 4096;
/// Events per replay read.
const PAGE: usize = 500;
/// Most online agents `ready` lists; the others follow as `presence` frames (at most
/// [`MORE_PRESENCE`]). This bounds `ready` (~60 bytes per agent listed), which every
/// agent socket gets at once when a node restarts and its whole team reconnects.
const READY_AGENTS: usize = 100;
/// Most `presence` frames sent after `ready` for the agents it does not list: well within
/// the queue ([`AGENT_QUEUE`]), which live events share. `ready.agentsOnlineTotal` tells a
/// dashboard when even these do not cover the team.
const MORE_PRESENCE: usize = 1_000;

struct Agent {
    tenant: Arc<Tenant>,
    author: Author,
    /// Counts this socket in the agent's presence while it is open.
    _seat: crate::service::presence::Seat,
}

impl ChannelLogic for Agent {
    async fn backlog(&self, state: &AppState, after: u64) -> Result<Backlog, ApiError> {
        let page = crate::service::events::page(state, &self.tenant.cfg.id, after, PAGE, 0).await?;
        if !page.recovered {
            return Ok(None);
        }
        let items = page
            .events
            .iter()
            .map(|e| {
                let data =
                    state
                        .attachments
                        .links
                        .event_data(&self.tenant.cfg.id, &e.kind, &e.data);
                (
                    e.offset,
                    frames::tenant_event(&e.kind, e.offset, &data).into(),
                )
            })
            .collect();
        Ok(Some((items, page.has_more)))
    }

    async fn on_frame(&mut self, state: &AppState, frame: ClientFrame, sub: &Subscription) {
        match frame {
            ClientFrame::Reply {
                conversation_id,
                message,
                client_message_id,
                attachments,
            } => {
                let cmid = client_message_id.clone();
                let result = crate::service::agent::reply(
                    state,
                    &self.tenant,
                    self.author.clone(),
                    &conversation_id,
                    &message,
                    client_message_id,
                    None,
                    &attachments,
                )
                .await;
                match result {
                    Ok(a) => sub.reply(frames::ack(
                        a.message.client_message_id.as_deref().or(cmid.as_deref()),
                        &a.message,
                        a.duplicate,
                    )),
                    Err(e) => sub.reply(error_for(&e, cmid.as_deref())),
                }
            }
            ClientFrame::Typing {
                conversation_id: Some(id),
            } => {
                if let Err(e) =
                    crate::service::agent::typing(state, &self.tenant, &self.author, &id).await
                {
                    sub.reply(error_for(&e, None));
                }
            }
            ClientFrame::Typing {
                conversation_id: None,
            } => sub.reply(frames::error(
                ErrorCode::InvalidFrame,
                "typing needs a conversationId on the tenant channel",
            )),
            ClientFrame::Close { conversation_id } => {
                if let Err(e) = crate::service::agent::set_status(
                    state,
                    &self.tenant,
                    &conversation_id,
                    Status::Closed,
                )
                .await
                {
                    sub.reply(error_for(&e, None));
                }
            }
            ClientFrame::Presence { status } => match status {
                PresenceStatus::Online | PresenceStatus::Away => {
                    crate::service::presence::set_status(
                        state,
                        &self.tenant,
                        &self.author.id,
                        status == PresenceStatus::Away,
                    )
                    .await
                }
                PresenceStatus::Offline => sub.reply(frames::error(
                    ErrorCode::InvalidFrame,
                    "status is online or away (an agent is offline when its sockets close)",
                )),
            },
            ClientFrame::Read {
                conversation_id: Some(id),
                message_id,
            } => {
                if let Err(e) =
                    crate::service::agent::mark_read(state, &self.tenant, &id, &message_id).await
                {
                    sub.reply(error_for(&e, None));
                }
            }
            ClientFrame::Read {
                conversation_id: None,
                ..
            } => sub.reply(frames::error(
                ErrorCode::InvalidFrame,
                "read needs a conversationId on the tenant channel",
            )),
            ClientFrame::Ping => sub.reply(frames::PONG),
            ClientFrame::Auth { .. } => sub.reply(frames::error(
                ErrorCode::InvalidFrame,
                "already authenticated",
            )),
            ClientFrame::Message { .. } => sub.reply(frames::error(
                ErrorCode::InvalidFrame,
                "not an agent frame (reply, typing, read, close, presence, ping)",
            )),
        }
    }
}

/// The tenant channel: every event of one tenant, for agent dashboards (see
/// docs/websocket.md). The first frame is
/// `{"type":"auth","token":"<agent JWT>","after":"<event offset>"?}`.
#[utoipa::path(
    get,
    path = "/v1/tenant/ws",
    operation_id = "tenantChannel",
    tag = "channels",
    params(openapi::ChannelQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request (no `Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Key` or version 13).", body = confab_protocol::ErrorBody),
        (status = 403, response = openapi::OriginNotAllowed),
        (status = 404, description = "`unknown_public_key`: no widget has the `?pk=` key.", body = confab_protocol::ErrorBody),
        (status = 422, response = openapi::ValidationFailed),
        (status = 429, response = openapi::RateLimited),
        (status = 503, description = "`unavailable` (the node is at `max_connections` or shutting \
down) or `too_many_connections` (the client IP is at `max_connections_per_ip`).", body = confab_protocol::ErrorBody),
    ),
)]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
    ws: WsUpgrade,
) -> Response {
    let ip = state.client_ip(peer, &headers);
    accept(state, ip, headers, params, ws, |m| &m.agent_sockets, setup).await
}

/// Authenticates and subscribes an agent socket; `None` once it closed it.
async fn setup(state: AppState, mut conn: Conn, upgrade: Upgrade) -> Option<Serving<Agent>> {
    let (token, after) = match conn.authenticate(&state.shutdown).await {
        Ok(x) => x,
        Err(None) => return None,
        Err(Some(why)) => return closed(conn, why).await,
    };
    let (tenant, claims) = match verify_agent(&state, &token) {
        Ok(x) => x,
        Err(_) => return closed(conn, Disconnect::InvalidToken).await,
    };
    if let Err(why) = upgrade.admits(&tenant) {
        return closed(conn, why).await;
    }
    drop(upgrade);
    let Ok(after) = parse_after(after.as_deref(), confab_store::parse_offset) else {
        return closed(conn, Disconnect::BadAfter).await;
    };
    let sub = state
        .hub
        .subscribe_live(
            &state.broker,
            Channel::Tenant {
                tenant: tenant.cfg.id.as_str().into(),
            },
            AGENT_QUEUE,
            false,
        )
        .await;
    let (last, recovered) =
        match crate::service::events::resume_point(&state, &tenant.cfg.id, after).await {
            Ok(x) => x,
            Err(_) => return closed(conn, Disconnect::StoreUnavailable).await,
        };
    // This agent first: `ready` always lists it.
    let (seat, team) = crate::service::presence::join(
        &state,
        &tenant,
        &claims.sub,
        claims.name.as_deref(),
        READY_AGENTS,
        MORE_PRESENCE,
    )
    .await;
    let ready = frames::ready_tenant(
        &tenant.cfg.id,
        &claims.sub,
        claims.name.as_deref(),
        recovered,
        &team.listed,
        team.total,
    );
    // Queued now, written after `ready` and the replay.
    for frame in team.more {
        sub.reply(frame);
    }
    // JWT `exp` is in seconds.
    let expires_ms = claims.exp.saturating_mul(1000);
    let author = Author {
        kind: confab_protocol::model::AuthorKind::Agent,
        id: claims.sub,
        name: claims.name,
    };
    Some(Serving {
        conn,
        sub,
        logic: Agent {
            tenant,
            author,
            _seat: seat,
        },
        last,
        ready,
        expires_ms,
    })
}
