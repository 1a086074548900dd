//! The visitor channel (`GET /v1/visitor/ws`): one conversation, live. Authenticated by a
//! session token; `after` is a message id. One visitor holds at most
//! `max_sockets_per_visitor` of these on a node (tabs; the next closes with 4429), so that
//! one session token cannot take the node's `max_connections` slots; counted per node.

use std::net::{IpAddr, SocketAddr};

use super::WsUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use confab_protocol::frames::{self, ClientFrame};
use confab_protocol::{ApiError, Disconnect, ErrorCode};
use confab_store::{Channel, Cursor};

use super::{accept, closed, parse_after, Backlog, ChannelLogic, Conn, Serving, Upgrade};
use crate::auth::{verify_session, VisitorSession};
use crate::error::Params;
use crate::http::openapi;
use crate::hub::Subscription;
use crate::policy::limits::CapGuard;
use crate::state::AppState;

/// How many frames a visitor connection may fall behind before it is closed (1013). A visitor sees one conversation, so
/// this is far more than a healthy client ever has pending.
pub const VISITOR_QUEUE: usize = 256;

struct Visitor {
    session: VisitorSession,
    ip: IpAddr,
    /// This socket's place under `max_sockets_per_visitor`.
    _place: CapGuard<[u8; 16]>,
}

impl ChannelLogic for Visitor {
    async fn backlog(&self, state: &AppState, after: u64) -> Result<Backlog, ApiError> {
        let c = &self.session.claims;
        let page = crate::service::visitor::history(
            state,
            &c.tenant,
            &c.conversation_id,
            Cursor::After(after),
            200,
            0,
        )
        .await?;
        let items = page
            .messages
            .iter()
            .map(|m| {
                let json = state.attachments.links.message_json(&c.tenant, &m.json);
                (m.seq, frames::visitor_message_new(&json).into())
            })
            .collect();
        Ok(Some((items, page.has_more)))
    }

    async fn on_frame(&mut self, state: &AppState, frame: ClientFrame, sub: &Subscription) {
        match frame {
            ClientFrame::Message {
                message,
                client_message_id,
                intent,
                attachments,
            } => {
                let cmid = client_message_id.clone();
                match crate::service::visitor::send(
                    state,
                    &self.session,
                    self.ip,
                    &message,
                    client_message_id,
                    None,
                    intent,
                    &attachments,
                )
                .await
                {
                    Ok(a) => sub.reply(frames::ack(
                        a.message.client_message_id.as_deref().or(cmid.as_deref()),
                        &a.message,
                        a.duplicate,
                    )),
                    Err(e) => sub.reply(error_for(&e, cmid.as_deref())),
                }
            }
            ClientFrame::Typing { .. } => {
                crate::service::visitor::typing(state, &self.session).await
            }
            ClientFrame::Read {
                conversation_id: None,
                message_id,
            } => {
                if let Err(e) =
                    crate::service::visitor::mark_read(state, &self.session, &message_id).await
                {
                    sub.reply(error_for(&e, None));
                }
            }
            ClientFrame::Ping => sub.reply(frames::PONG),
            ClientFrame::Auth { .. } => sub.reply(frames::error(
                ErrorCode::InvalidFrame,
                "already authenticated",
            )),
            ClientFrame::Reply { .. }
            | ClientFrame::Close { .. }
            | ClientFrame::Presence { .. }
            | ClientFrame::Read {
                conversation_id: Some(_),
                ..
            } => sub.reply(frames::error(
                ErrorCode::InvalidFrame,
                "not a visitor frame (message, typing, read without conversationId, ping)",
            )),
        }
    }
}

/// An `error` frame for a failed client request, naming the `clientMessageId` it answers.
pub fn error_for(e: &ApiError, client_message_id: Option<&str>) -> String {
    let mut v = serde_json::json!({"type": "error", "code": e.code.as_str(), "message": e.message});
    if let Some(id) = client_message_id {
        v["clientMessageId"] = id.into();
    }
    if let Some(f) = &e.field {
        v["field"] = f.as_str().into();
    }
    if let Some(s) = e.retry_after_secs {
        v["retryAfter"] = s.into();
    }
    v.to_string()
}

/// The visitor channel: one conversation, live (see docs/websocket.md). The credential is
/// sent in the first frame, `{"type":"auth","token":"<sessionToken>","after":"<message id>"?}`.
#[utoipa::path(
    get,
    path = "/v1/visitor/ws",
    operation_id = "visitorChannel",
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
    accept(
        state,
        ip,
        headers,
        params,
        ws,
        |m| &m.visitor_sockets,
        move |state, conn, upgrade| setup(state, conn, upgrade, ip),
    )
    .await
}

/// Authenticates and subscribes a visitor socket; `None` once it closed it.
async fn setup(
    state: AppState,
    mut conn: Conn,
    upgrade: Upgrade,
    ip: IpAddr,
) -> Option<Serving<Visitor>> {
    let (token, after) = match conn.authenticate(&state.shutdown).await {
        Ok(x) => x,
        Err(None) => return None,
        Err(Some(why)) => return closed(conn, why).await,
    };
    let session = match verify_session(&state, Some(&token)) {
        Ok(s) => s,
        Err(_) => return closed(conn, Disconnect::InvalidToken).await,
    };
    drop(token);
    if let Err(why) = upgrade.admits(&session.tenant) {
        return closed(conn, why).await;
    }
    drop(upgrade);
    let c = &session.claims;
    let Some(place) = state
        .per_visitor
        .try_acquire(crate::state::visitor_key(&c.tenant, &c.visitor_id))
    else {
        return closed(conn, Disconnect::TooManySockets).await;
    };
    let Ok(after) = parse_after(after.as_deref(), |a| {
        confab_store::parse_message_id(&c.conversation_id, a)
    }) else {
        return closed(conn, Disconnect::BadAfter).await;
    };
    let channel = Channel::Conversation {
        tenant: c.tenant.as_str().into(),
        conversation_id: c.conversation_id.as_str().into(),
    };
    let sub = state
        .hub
        .subscribe_live(&state.broker, channel, VISITOR_QUEUE, false)
        .await;
    // Where the log stands now that we are subscribed: anything later arrives live.
    let conversation = match crate::service::visitor::conversation(&state, &session).await {
        Ok(Some(conversation)) => conversation,
        Ok(None) => return closed(conn, Disconnect::NoConversation).await,
        Err(_) => return closed(conn, Disconnect::StoreUnavailable).await,
    };
    let latest = crate::service::visitor::last_seq(&conversation);
    // Without `after` the client starts live; an `after` beyond the log replays nothing.
    let last = after.map_or(latest, |a| a.min(latest));
    let ready = frames::ready_visitor(&conversation);
    let expires_ms = session.claims.expires_ms;
    Some(Serving {
        conn,
        sub,
        logic: Visitor {
            session,
            ip,
            _place: place,
        },
        last,
        ready,
        expires_ms,
    })
}
