//! Backend-independent pieces of the data model: how a new conversation and a new message
//! look, so that every backend produces byte-for-byte the same JSON.

use confab_protocol::model::{Conversation, Message, Status};
use confab_protocol::time::format_ms;
use confab_protocol::token::random_id;

use crate::{message_id, NewConversation, NewMessage};

/// A fresh visitor id (shown to agents; not a credential).
pub fn new_visitor_id() -> String {
    random_id("v_", 12)
}

/// A fresh conversation id (UUID v4).
pub fn new_conversation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The conversation `start_conversation` creates.
pub fn new_conversation(
    new: &NewConversation,
    id: String,
    visitor_id: String,
    now_ms: i64,
) -> Conversation {
    let now = format_ms(now_ms);
    Conversation {
        id,
        tenant_id: new.tenant.clone(),
        visitor_id,
        status: Status::Open,
        created_at: now.clone(),
        updated_at: now,
        customer_id: new.customer_id.clone(),
        locale: new.locale.clone(),
        contact: new.contact.clone(),
        variables: new.variables.clone(),
        visitor_context: new.visitor_context.clone(),
        qualified: false,
        last_message: None,
    }
}

/// The message `append_message` stores as number `seq`, created at `created_ms`.
pub fn new_message(new: &NewMessage, seq: u64, created_ms: i64) -> Message {
    Message {
        id: message_id(&new.conversation_id, seq),
        conversation_id: new.conversation_id.clone(),
        direction: new.direction,
        author: new.author.clone(),
        body: new.body.clone(),
        created_at: format_ms(created_ms),
        client_message_id: new.client_message_id.clone(),
        meta: new.meta.clone(),
        attachments: new.attachments.clone(),
    }
}

/// Records `message` on its conversation: last message, update time, reopening.
/// True when the conversation was closed and is now open again.
pub fn record_message(c: &mut Conversation, message: &Message) -> bool {
    c.updated_at = message.created_at.clone();
    c.last_message = Some(message.clone());
    let reopened = c.status == Status::Closed;
    c.status = Status::Open;
    reopened
}

/// Encodes a value that cannot fail to encode (our own types).
pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}
