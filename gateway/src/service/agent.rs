//! What the tenant side does in a conversation — agents (JWT) and the tenant's backend
//! (server key): reply, close or reopen, type.

use confab_protocol::model::{Author, Conversation, Direction, Status};
use confab_protocol::validate;
use confab_protocol::{frames, ApiError};
use confab_store::{Appended, Channel, NewMessage};
use serde_json::Value;

use super::not_found;
use crate::state::{AppState, Tenant};

pub async fn reply(
    state: &AppState,
    tenant: &Tenant,
    author: Author,
    conversation_id: &str,
    message: &str,
    client_message_id: Option<String>,
    meta: Option<Value>,
) -> Result<Appended, ApiError> {
    let body = validate::message_body("message", message, validate::MAX_MESSAGE_CHARS)?;
    if let Some(id) = &client_message_id {
        validate::client_message_id(id)?;
    }
    let new = NewMessage {
        tenant: tenant.cfg.id.clone(),
        conversation_id: conversation_id.to_owned(),
        direction: Direction::Outbound,
        author,
        body,
        client_message_id,
        meta,
    };
    super::append(state, new).await
}

pub async fn set_status(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
    status: Status,
) -> Result<Conversation, ApiError> {
    state
        .store
        .set_status(&tenant.cfg.id, conversation_id, status)
        .await
        .map_err(crate::error::store_error)?
        .ok_or_else(not_found)
}

pub async fn typing(
    state: &AppState,
    tenant: &Tenant,
    author: &Author,
    conversation_id: &str,
) -> Result<(), ApiError> {
    if conversation_id.is_empty() || conversation_id.len() > 64 {
        return Err(not_found());
    }
    let frame = frames::typing(conversation_id, author);
    let channel = Channel::Conversation {
        tenant: tenant.cfg.id.as_str().into(),
        conversation_id: conversation_id.into(),
    };
    super::publish_typing(state, channel, frame).await;
    Ok(())
}
