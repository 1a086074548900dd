//! The tenant API (`Authorization: Bearer <agent JWT | server_key>`): conversations,
//! history, replies, close/reopen, and the tenant event stream (polling fallback of the
//! tenant channel, and custom events published by the tenant's backend).
//!
//! Every read and write is scoped to the credential's tenant: another tenant's
//! conversation id is simply not found (404), never shown.

use crate::service;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use confab_protocol::model::{Author, AuthorKind, Conversation, Status};
use confab_protocol::{validate, ApiError, ErrorCode};
use confab_store::{parse_offset, ConversationCursor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

#[allow(unused_imports)] // the `#[utoipa::path]` annotations name them
use super::openapi::{
    ConversationNotFound, ConversationsQuery, EventsQuery, HistoryQuery, InvalidCredentials,
    InvalidJson, OriginNotAllowed, PayloadTooLarge, RateLimited, StoreUnavailable,
    ValidationFailed,
};
use super::{history_body, history_cursor, json_text, limit_and_wait, sent};
#[allow(unused_imports)]
use super::{MessagesPage, Sent};
use crate::auth::{authenticate_tenant, Actor, TenantAuth};
use crate::error::{HandlerResult, JsonBody, Params};
#[allow(unused_imports)]
use confab_protocol::ErrorBody;

fn auth(state: &crate::state::AppState, headers: &HeaderMap) -> Result<TenantAuth, ApiError> {
    let auth = authenticate_tenant(state, headers)?;
    auth.tenant.policy.check(headers)?;
    Ok(auth)
}

/// [`auth`] for the routes of the tenant's own backend: an agent JWT gets 403.
fn server_only(
    state: &crate::state::AppState,
    headers: &HeaderMap,
    what: &str,
) -> Result<TenantAuth, ApiError> {
    let auth = auth(state, headers)?;
    if !matches!(auth.actor, Actor::Server) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{what} needs the tenant's server key"),
        ));
    }
    Ok(auth)
}

/// A page of the tenant's conversations.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationList {
    /// Most recently updated first.
    pub conversations: Vec<Conversation>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/tenant/conversations?status=&limit=&cursor=`: the tenant's conversations, most
/// recently updated first.
#[utoipa::path(
    get,
    path = "/v1/tenant/conversations",
    operation_id = "listConversations",
    tag = "tenant",
    params(ConversationsQuery),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "A page of conversations.", body = ConversationList),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn list(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    params: Params,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let status = match params.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some("open") => Some(Status::Open),
        Some("closed") => Some(Status::Closed),
        Some(_) => return Err(ApiError::invalid("status", "status must be open or closed").into()),
    };
    let limit = params.int("limit", 1..=200)?.unwrap_or(50) as usize;
    let cursor = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            ConversationCursor::decode(c)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor from this API"))?,
        ),
    };
    let page = service::agent::conversations(&state, &auth.tenant, status, cursor, limit).await?;
    let body = ConversationList {
        conversations: page.conversations,
        next_cursor: page.next_cursor,
    };
    Ok(json_text(
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    ))
}

/// `GET /v1/tenant/conversations/{id}`.
#[utoipa::path(
    get,
    path = "/v1/tenant/conversations/{id}",
    operation_id = "getConversation",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID).")),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "The conversation.", body = Conversation),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn get_one(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let conv = service::agent::conversation(&state, &auth.tenant, &id).await?;
    Ok(crate::http::json_ok(&conv))
}

/// `GET /v1/tenant/conversations/{id}/messages?after=&limit=&wait=` (all cursor forms of
/// `GET /v1/messages`).
#[utoipa::path(
    get,
    path = "/v1/tenant/conversations/{id}/messages",
    operation_id = "listConversationMessages",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID)."), HistoryQuery),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "A page of messages in conversation order.", body = MessagesPage),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn history(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Params,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let (cursor, echo) = history_cursor(&params, &id)?;
    let (limit, wait) = limit_and_wait(&params)?;
    let page = service::agent::history(&state, &auth.tenant, &id, cursor, limit, wait).await?;
    Ok(json_text(
        StatusCode::OK,
        history_body(&page, &id, echo, |j| {
            state.attachments.links.message_json(&auth.tenant.cfg.id, j)
        }),
    ))
}

/// Who a message from the tenant's backend is from.
#[derive(Deserialize, ToSchema)]
#[schema(as = AuthorInput)]
pub struct AuthorIn {
    /// `bot`, `system` or `agent` (never `visitor`).
    kind: AuthorKind,
    /// At most 100 characters; defaults to the kind.
    #[serde(default)]
    #[schema(max_length = 100)]
    id: Option<String>,
    /// At most 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    name: Option<String>,
}

/// `POST /v1/tenant/conversations/{id}/messages`: a reply.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplyBody {
    /// 1–10,000 characters after trimming; may be empty (or left out) when
    /// `attachments` is not.
    #[serde(default)]
    #[schema(max_length = 10000, example = "Hello Jane, let me check.")]
    message: String,
    /// Up to 10 ids of files uploaded in this conversation
    /// (`POST /v1/tenant/conversations/{id}/attachments`) and not sent yet.
    #[serde(default)]
    #[schema(max_items = 10)]
    attachments: Vec<String>,
    /// Idempotency key, at most 64 characters.
    #[serde(default)]
    #[schema(max_length = 64, example = "a-1")]
    client_message_id: Option<String>,
    /// Server key only: who the message is from (`bot`, `system` or `agent`); without it,
    /// the tenant's bot (`{"kind":"bot","id":"server","name":<tenant name>}`), which does
    /// not take the conversation over from its assistant. Agents always write as themselves
    /// (422 when an agent JWT sets it).
    #[serde(default)]
    author: Option<AuthorIn>,
    /// Server key only: `{ "mode": "flow" | "ai" | "safe_fallback" }` for bot messages,
    /// at most 4096 bytes.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
}

/// The author and meta of a tenant-side message: agents are who their JWT says; the
/// tenant's backend may speak as a bot, the system, or a named agent (seed 002's bot modes).
fn reply_author(
    auth: &TenantAuth,
    body: &mut ReplyBody,
) -> Result<(Author, Option<Value>), ApiError> {
    if matches!(auth.actor, Actor::Agent { .. }) {
        if body.author.is_some() || body.meta.is_some() {
            return Err(ApiError::invalid(
                "author",
                "author and meta may only be set with the server key",
            ));
        }
        return Ok((auth.author(), None));
    }
    let author = match body.author.take() {
        None => auth.author(),
        Some(a) => {
            if a.kind == AuthorKind::Visitor {
                return Err(ApiError::invalid(
                    "author.kind",
                    "the tenant cannot write as the visitor",
                ));
            }
            let id =
                a.id.unwrap_or_else(|| format!("{:?}", a.kind).to_lowercase());
            validate::max_chars("author.id", &id, 100)?;
            if let Some(n) = &a.name {
                validate::max_chars("author.name", n, 200)?;
            }
            Author {
                kind: a.kind,
                id,
                name: a.name,
            }
        }
    };
    let meta = match body.meta.take() {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            match m.get("mode").and_then(Value::as_str) {
                None | Some("flow" | "ai" | "safe_fallback") => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        "meta.mode",
                        "mode must be flow, ai or safe_fallback",
                    ))
                }
            }
            if serde_json::to_string(&m)
                .map(|s| s.len())
                .unwrap_or(usize::MAX)
                > 4096
            {
                return Err(ApiError::invalid("meta", "meta must be at most 4096 bytes"));
            }
            Some(Value::Object(m))
        }
        Some(_) => return Err(ApiError::invalid("meta", "meta must be an object")),
    };
    Ok((author, meta))
}

/// `POST /v1/tenant/conversations/{id}/messages`: an agent (or the tenant's backend)
/// replies; reopens a closed conversation. The answer comes once it is durably stored.
#[utoipa::path(
    post,
    path = "/v1/tenant/conversations/{id}/messages",
    operation_id = "replyToConversation",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID).")),
    request_body = ReplyBody,
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 201, description = "Stored.", body = Sent,
            links(("listConversationMessagesAfter" = (
                operation_id = "listConversationMessages",
                parameters(
                    ("path.id" = "$request.path.id"),
                    ("query.after" = "$response.body#/messageId"),
                ),
                description = "What was written after this message.",
            )))),
        (status = 200, description = "A duplicate `clientMessageId`: nothing stored; the first message's id.", body = Sent),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn reply(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody<ReplyBody>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let (author, meta) = reply_author(&auth, &mut body)?;
    let a = service::agent::reply(
        &state,
        &auth.tenant,
        author,
        &id,
        &body.message,
        body.client_message_id,
        meta,
        &body.attachments,
    )
    .await?;
    Ok(sent(&a))
}

async fn set_status(
    state: crate::state::AppState,
    headers: HeaderMap,
    id: String,
    status: Status,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let conv = service::agent::set_status(&state, &auth.tenant, &id, status).await?;
    Ok(crate::http::json_ok(&conv))
}

/// `POST /v1/tenant/conversations/{id}/close` → the conversation.
#[utoipa::path(
    post,
    path = "/v1/tenant/conversations/{id}/close",
    operation_id = "closeConversation",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID).")),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "Closed; emits `conversation:updated`.", body = Conversation),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn close(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    set_status(state, headers, id, Status::Closed).await
}

/// `POST /v1/tenant/conversations/{id}/reopen` → the conversation (replying reopens too).
#[utoipa::path(
    post,
    path = "/v1/tenant/conversations/{id}/reopen",
    operation_id = "reopenConversation",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID).")),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "Open again; emits `conversation:updated`.", body = Conversation),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn reopen(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    set_status(state, headers, id, Status::Open).await
}

/// `POST /v1/tenant/conversations/{id}/handler`: who answers.
#[derive(Deserialize, ToSchema)]
pub struct HandlerBody {
    /// `human` (agents) or `bot` (the conversation's assistant; 422 without one).
    pub handler: confab_protocol::model::Handler,
}

/// `POST /v1/tenant/conversations/{id}/handler` → the conversation: hand it to people or
/// give it back to its assistant. Emits `conversation:updated` when it changed.
#[utoipa::path(
    post,
    path = "/v1/tenant/conversations/{id}/handler",
    operation_id = "setHandler",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID).")),
    request_body = HandlerBody,
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "The conversation with its new handler.", body = Conversation),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn handler(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<HandlerBody>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let conv = service::agent::set_handler(&state, &auth.tenant, &id, body.handler).await?;
    Ok(crate::http::json_ok(&conv))
}

/// `POST /v1/tenant/conversations/{id}/read` → the conversation: an agent has read it up
/// to `messageId`. Recounts `unreadByAgent`; emits `conversation:read` when the cursor moved.
#[utoipa::path(
    post,
    path = "/v1/tenant/conversations/{id}/read",
    operation_id = "markReadByAgent",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID).")),
    request_body = crate::http::visitor::ReadBody,
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "The conversation with its read cursors.", body = Conversation),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn read(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<crate::http::visitor::ReadBody>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let conv = service::agent::mark_read(&state, &auth.tenant, &id, &body.message_id).await?;
    Ok(crate::http::json_ok(&conv))
}

/// A page of the tenant's event log, as `GET /v1/tenant/events` writes it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// In offset order; the same frames the tenant channel sends.
    pub events: Vec<EventFrame>,
    /// The offset of the last event returned, or the `after` given; null without either.
    /// For an `after` beyond the log's end, the log's end.
    pub next_cursor: Option<String>,
    /// More events follow: ask again with `after=nextCursor`.
    pub has_more: bool,
    /// False when `after` is older than what is retained, or beyond the log's end (a
    /// cursor from another store; answered at once): reload state over HTTP, then go on
    /// with `after=nextCursor`.
    pub recovered: bool,
}

/// A stored tenant event: `conversation:new`, `conversation:updated`,
/// `conversation:qualified`, `message:new` (data: a Message) or a custom `a:b` type.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EventFrame {
    #[serde(rename = "type")]
    #[schema(example = "message:new")]
    pub kind: String,
    /// Position in the tenant's log (opaque, ordered); resume with `after`.
    pub offset: String,
    /// A Conversation, a Message, or the custom event's data.
    pub data: Value,
}

/// `GET /v1/tenant/events?after=&limit=&wait=`: the tenant channel as a polling fallback
/// (same offsets, same retention).
#[utoipa::path(
    get,
    path = "/v1/tenant/events",
    operation_id = "listTenantEvents",
    tag = "tenant",
    params(EventsQuery),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "A page of events in offset order.", body = EventsPage),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn events(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    params: Params,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let after = match params.get("after").filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(
            parse_offset(a)
                .ok_or_else(|| ApiError::invalid("after", "after must be an event offset"))?,
        ),
    };
    let (limit, wait) = limit_and_wait(&params)?;
    let tenant = &auth.tenant.cfg.id;
    if let Some(a) = after {
        // An offset this log never reached (a cursor from a wiped or another store): no
        // wait, nothing to recover from; the client reloads and goes on from the end.
        if let Some(latest) = service::events::beyond_end(&state, tenant, a).await? {
            return Ok(json_text(
                StatusCode::OK,
                format!(
                    r#"{{"events":[],"nextCursor":"{latest}","hasMore":false,"recovered":false}}"#
                ),
            ));
        }
    }
    let page = service::events::page(&state, tenant, after.unwrap_or(0), limit, wait).await?;
    // Spliced from the stored, already encoded events; `EventsPage` describes it.
    let mut s = String::from(r#"{"events":["#);
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let data = state
            .attachments
            .links
            .event_data(&auth.tenant.cfg.id, &e.kind, &e.data);
        s.push_str(&confab_protocol::frames::tenant_event(
            &e.kind, e.offset, &data,
        ));
    }
    let next = page
        .events
        .last()
        .map(|e| e.offset)
        .or(after)
        .map(|o| o.to_string());
    // Without `after` nothing was asked to be recovered.
    let recovered = after.is_none() || page.recovered;
    s.push_str(&format!(
        r#"],"nextCursor":{},"hasMore":{},"recovered":{}}}"#,
        serde_json::to_string(&next).unwrap_or_else(|_| "null".into()),
        page.has_more,
        recovered
    ));
    Ok(json_text(StatusCode::OK, s))
}

/// `POST /v1/tenant/events`: a custom event for the tenant's agents.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishBody {
    /// `^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$`, not one Confab emits itself
    /// (`conversation:new`, `conversation:updated`, `conversation:read`, `message:new`,
    /// `message:delta`, `voice:requested`).
    #[serde(rename = "type")]
    #[schema(
        pattern = "^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$",
        example = "campaign:progress"
    )]
    kind: String,
    /// Any JSON (an object when `conversationId` is given); `{}` when absent.
    #[serde(default)]
    data: Option<Value>,
    /// Ties the event to a conversation of this tenant (404 when there is none): it is set
    /// as `data.conversationId`, replacing any given there.
    #[serde(default)]
    conversation_id: Option<String>,
}

/// The answer to `POST /v1/tenant/events` (202).
#[derive(Serialize, ToSchema)]
pub struct Published {
    pub accepted: bool,
    /// The event's offset in the tenant's log.
    pub offset: String,
}

/// Event types only Confab itself emits.
const RESERVED: [&str; 6] = [
    "conversation:new",
    "conversation:updated",
    "conversation:read",
    "message:new",
    "message:delta",
    "voice:requested",
];

/// `POST /v1/tenant/events` (server key only): publishes a custom event to the tenant's
/// agents (and its log). `conversation:qualified` with a `conversationId` also sets that
/// conversation's `qualified` flag.
#[utoipa::path(
    post,
    path = "/v1/tenant/events",
    operation_id = "publishTenantEvent",
    tag = "tenant",
    request_body = PublishBody,
    security(("serverKey" = [])),
    responses(
        (status = 202, description = "Stored and published.", body = Published),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidCredentials),
        (status = 403, description = "`forbidden` (an agent JWT: this route needs the server key) or `origin_not_allowed`.", body = ErrorBody),
        (status = 404, response = ConversationNotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn publish(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PublishBody>,
) -> HandlerResult<Response> {
    let auth = server_only(&state, &headers, "publishing events")?;
    if !validate::is_event_type(&body.kind) {
        return Err(
            ApiError::invalid("type", "type must match ^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$").into(),
        );
    }
    if RESERVED.contains(&body.kind.as_str()) {
        return Err(ApiError::invalid(
            "type",
            format!("{} is emitted by Confab itself", body.kind),
        )
        .into());
    }
    if body.kind == "conversation:qualified" && body.conversation_id.is_none() {
        // It marks a conversation; without one it would announce nothing real.
        return Err(ApiError::invalid(
            "conversationId",
            "conversation:qualified needs the conversationId it qualifies",
        )
        .into());
    }
    let data = body.data.unwrap_or_else(|| json!({}));
    if body.conversation_id.is_some() && !data.is_object() {
        // The conversation's id goes into the data, which must have room for it.
        return Err(ApiError::invalid(
            "data",
            "data must be an object when conversationId is given",
        )
        .into());
    }
    let event = service::events::publish(
        &state,
        &auth.tenant,
        &body.kind,
        data,
        body.conversation_id.as_deref(),
    )
    .await?;
    let body = Published {
        accepted: true,
        offset: event.offset.to_string(),
    };
    Ok(json_text(
        StatusCode::ACCEPTED,
        serde_json::to_string(&body).unwrap_or_default(),
    ))
}

/// `GET /v1/tenant/webhooks`: where each of the tenant's webhooks stands.
#[derive(Serialize, ToSchema)]
pub struct Webhooks {
    pub webhooks: Vec<WebhookStatus>,
}

/// One webhook's delivery state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    pub url: String,
    /// The event types it receives; `null`: every stored event type.
    pub events: Option<Vec<String>>,
    /// The offset of the last event it has dealt with (delivered, filtered out, or skipped
    /// after leaving retention); a new webhook starts at the end of the log.
    pub offset: String,
    /// Retained events of its filter not delivered yet (counted over at most the next
    /// 20,000 events of the log).
    pub lag: u64,
    /// Its last attempt failed; the event is being retried (later events wait).
    pub failing: bool,
    /// HTTP status of the last attempt; `null` when there was no answer (timeout,
    /// connection refused) or no attempt yet.
    pub last_status: Option<u16>,
    /// Why the last attempt failed (`HTTP 500`, `timed out`, `connection failed`, …);
    /// `null` after a success.
    pub last_error: Option<String>,
    /// ISO 8601, UTC; `null` before the first attempt.
    pub last_attempt_at: Option<String>,
}

/// `GET /v1/tenant/webhooks` (server key only): each configured webhook's delivery state.
#[utoipa::path(
    get,
    path = "/v1/tenant/webhooks",
    operation_id = "listWebhooks",
    tag = "tenant",
    security(("serverKey" = [])),
    responses(
        (status = 200, description = "Every webhook of the tenant, in configuration order.", body = Webhooks),
        (status = 401, response = InvalidCredentials),
        (status = 403, description = "`forbidden` (an agent JWT: this route needs the server key) or `origin_not_allowed`.", body = ErrorBody),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn webhooks(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
) -> HandlerResult<Response> {
    let auth = server_only(&state, &headers, "webhook state")?;
    let list = service::webhooks::status(&state, &auth.tenant).await?;
    let body = Webhooks {
        webhooks: list
            .into_iter()
            .map(|s| WebhookStatus {
                url: s.hook.url.to_string(),
                events: s.hook.events.clone(),
                offset: s.state.offset.to_string(),
                lag: s.lag,
                failing: s.state.failing,
                last_status: s.state.last_status,
                last_error: s.state.last_error,
                last_attempt_at: s
                    .state
                    .last_attempt_ms
                    .map(confab_protocol::time::format_ms),
            })
            .collect(),
    };
    Ok(json_text(
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    ))
}
