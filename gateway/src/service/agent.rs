//! What the tenant side does with conversations — agents (JWT) and the tenant's backend
//! (server key): list and read them, reply, close or reopen, type.

use confab_protocol::model::{
    Author, AuthorKind, Conversation, Direction, Handler, Reader, Status,
};
use confab_protocol::validate;
use confab_protocol::{frames, ApiError};
use confab_store::{
    Appended, Channel, ConversationCursor, ConversationPage, Cursor, MessagePage, NewMessage,
};
use serde_json::Value;

use super::not_found;
use crate::error::store_error;
use crate::settings::Tenant;
use crate::state::AppState;

#[allow(clippy::too_many_arguments)]
pub async fn reply(
    state: &AppState,
    tenant: &Tenant,
    author: Author,
    conversation_id: &str,
    message: &str,
    client_message_id: Option<String>,
    meta: Option<Value>,
    attachments: &[String],
) -> Result<Appended, ApiError> {
    let mut new = NewMessage {
        tenant: tenant.cfg.id.clone(),
        conversation_id: conversation_id.to_owned(),
        direction: Direction::Outbound,
        body: String::new(),
        client_message_id,
        meta,
        intent: None,
        // An agent's reply takes the conversation over from its assistant (a bot message
        // the tenant's backend posts does not).
        handler: (author.kind == AuthorKind::Agent).then_some(Handler::Human),
        author,
        attachments: Vec::new(),
    };
    let checked = async {
        new.body = validate::message_body_or_files(
            "message",
            message,
            validate::MAX_MESSAGE_CHARS,
            !attachments.is_empty(),
        )?;
        if let Some(id) = &new.client_message_id {
            validate::client_message_id(id)?;
        }
        if !attachments.is_empty() {
            new.attachments = super::attachments::for_message(
                state,
                &tenant.cfg.id,
                conversation_id,
                attachments,
            )
            .await?;
        }
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(refused) = checked {
        // A retry of a stored reply is its duplicate, as a visitor's is.
        return super::duplicate_or(state, &new, refused).await;
    }
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
    super::publish_ephemeral(state, channel, frame).await;
    Ok(())
}

/// The tenant's conversations, most recently updated first.
pub async fn conversations(
    state: &AppState,
    tenant: &Tenant,
    status: Option<Status>,
    cursor: Option<ConversationCursor>,
    limit: usize,
) -> Result<ConversationPage, ApiError> {
    state
        .store
        .conversations(&tenant.cfg.id, status, cursor, limit)
        .await
        .map_err(store_error)
}

/// One conversation of the tenant (404 for another tenant's: never its data).
pub async fn conversation(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
) -> Result<Conversation, ApiError> {
    state
        .store
        .conversation(&tenant.cfg.id, conversation_id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)
}

/// Sets who answers a conversation; `bot` needs the conversation to have an assistant.
pub async fn set_handler(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
    handler: Handler,
) -> Result<Conversation, ApiError> {
    if handler == Handler::Bot {
        let conv = conversation(state, tenant, conversation_id).await?;
        if conv
            .assistant_id
            .as_deref()
            .and_then(|id| tenant.assistant(id))
            .is_none()
        {
            return Err(ApiError::invalid(
                "handler",
                "the conversation has no assistant: only people can answer it",
            ));
        }
    }
    state
        .store
        .set_handler(&tenant.cfg.id, conversation_id, handler)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)
}

/// An agent has read one of the tenant's conversations up to `message_id`.
pub async fn mark_read(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
    message_id: &str,
) -> Result<Conversation, ApiError> {
    super::mark_read(
        state,
        &tenant.cfg.id,
        conversation_id,
        Reader::Agent,
        message_id,
    )
    .await
}

/// A page of one of the tenant's conversations, long-polled for up to `wait` seconds.
pub async fn history(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
    cursor: Cursor,
    limit: usize,
    wait: u64,
) -> Result<MessagePage, ApiError> {
    conversation(state, tenant, conversation_id).await?;
    super::visitor::history(state, &tenant.cfg.id, conversation_id, cursor, limit, wait).await
}
