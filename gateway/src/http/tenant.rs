//! The tenant API (`Authorization: Bearer <agent JWT | server_key>`): conversations,
//! history, replies, close/reopen, and the tenant event stream (polling fallback of the
//! tenant channel, and custom events published by the tenant's backend).
//!
//! Every read and write is scoped to the credential's tenant: another tenant's
//! conversation id is simply not found (404), never shown.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use confab_protocol::model::{Author, AuthorKind, Status};
use confab_protocol::{validate, ApiError, ErrorCode};
use confab_store::{parse_offset, ConversationCursor};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    history_body, history_cursor, json_text, limit_and_wait, read_events, read_history, sent,
};
use crate::auth::{authenticate_tenant, Actor, TenantAuth};
use crate::error::{HandlerResult, JsonBody, Params};

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::ConversationNotFound, "no such conversation")
}

fn auth(state: &crate::state::AppState, headers: &HeaderMap) -> Result<TenantAuth, ApiError> {
    let auth = authenticate_tenant(state, headers)?;
    auth.tenant.policy.check(headers)?;
    Ok(auth)
}

/// `GET /v1/tenant/conversations?status=&limit=&cursor=`.
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
    let page = state
        .store
        .conversations(&auth.tenant.cfg.id, status, cursor, limit)
        .await?;
    let body = json!({"conversations": page.conversations, "nextCursor": page.next_cursor});
    Ok(json_text(StatusCode::OK, body.to_string()))
}

/// `GET /v1/tenant/conversations/{id}`.
pub async fn get_one(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let conv = state
        .store
        .conversation(&auth.tenant.cfg.id, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(json_text(
        StatusCode::OK,
        serde_json::to_string(&conv).unwrap_or_default(),
    ))
}

/// `GET /v1/tenant/conversations/{id}/messages?after=&limit=&wait=` (all cursor forms).
pub async fn history(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Params,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let (cursor, echo) = history_cursor(&params, &id)?;
    let (limit, wait) = limit_and_wait(&params)?;
    state
        .store
        .conversation(&auth.tenant.cfg.id, &id)
        .await?
        .ok_or_else(not_found)?;
    let page = read_history(&state, &auth.tenant.cfg.id, &id, cursor, limit, wait).await?;
    Ok(json_text(StatusCode::OK, history_body(&page, &id, echo)))
}

#[derive(Deserialize)]
pub struct AuthorIn {
    kind: AuthorKind,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyBody {
    message: String,
    #[serde(default)]
    client_message_id: Option<String>,
    /// Server key only: who the message is from (`bot`, `system` or `agent`).
    #[serde(default)]
    author: Option<AuthorIn>,
    /// Server key only: `{ "mode": "flow" | "ai" | "safe_fallback" }` for bot messages.
    #[serde(default)]
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

/// `POST /v1/tenant/conversations/{id}/messages`: 201 stored, 200 duplicate.
pub async fn reply(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody<ReplyBody>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    let (author, meta) = reply_author(&auth, &mut body)?;
    let a = state
        .send_tenant_message(
            &auth.tenant,
            author,
            &id,
            &body.message,
            body.client_message_id,
            meta,
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
    let conv = state
        .set_conversation_status(&auth.tenant, &id, status)
        .await?;
    Ok(json_text(
        StatusCode::OK,
        serde_json::to_string(&conv).unwrap_or_default(),
    ))
}

/// `POST /v1/tenant/conversations/{id}/close` → the conversation.
pub async fn close(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    set_status(state, headers, id, Status::Closed).await
}

/// `POST /v1/tenant/conversations/{id}/reopen` → the conversation (replying reopens too).
pub async fn reopen(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    set_status(state, headers, id, Status::Open).await
}

/// `GET /v1/tenant/events?after=&limit=&wait=`: the tenant channel as a polling fallback.
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
    let page = read_events(&state, &auth.tenant.cfg.id, after.unwrap_or(0), limit, wait).await?;
    let mut s = String::from(r#"{"events":["#);
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&confab_protocol::frames::tenant_event(
            &e.kind, e.offset, &e.data,
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    conversation_id: Option<String>,
}

/// Event types only Confab itself emits.
const RESERVED: [&str; 3] = ["conversation:new", "conversation:updated", "message:new"];

/// `POST /v1/tenant/events` (server key only): a custom event to the tenant's agents.
pub async fn publish(
    State(state): State<crate::state::AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PublishBody>,
) -> HandlerResult<Response> {
    let auth = auth(&state, &headers)?;
    if !matches!(auth.actor, Actor::Server) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "publishing events needs the tenant's server key",
        )
        .into());
    }
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
    let event = state
        .store
        .append_event(
            &auth.tenant.cfg.id,
            &body.kind,
            body.data.unwrap_or_else(|| json!({})),
            body.conversation_id.as_deref(),
        )
        .await?
        .ok_or_else(not_found)?;
    Ok(json_text(
        StatusCode::ACCEPTED,
        json!({"accepted": true, "offset": event.offset.to_string()}).to_string(),
    ))
}
