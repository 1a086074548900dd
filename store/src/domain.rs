//! Backend-independent pieces of the data model: how a new conversation and a new message
//! look, so that every backend produces byte-for-byte the same JSON.

use confab_protocol::model::{Conversation, Direction, Handler, Message, Reader, Status};
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
        assistant_id: new.assistant_id.clone(),
        handler: new.handler,
        visitor_last_read_id: None,
        agent_last_read_id: None,
        unread_by_agent: 0,
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
        intent: new.intent.clone(),
        attachments: new.attachments.clone(),
    }
}

/// Records `message` on its conversation: last message, update time, reopening, unread
/// count, and the handler `handler` sets. True when a visitor-visible field changed
/// (reopened, or the handler), which is a `conversation:updated`.
pub fn record_message(c: &mut Conversation, message: &Message, handler: Option<Handler>) -> bool {
    c.updated_at = message.created_at.clone();
    c.last_message = Some(message.clone());
    if message.direction == Direction::Inbound {
        c.unread_by_agent += 1;
    }
    let reopened = c.status == Status::Closed;
    c.status = Status::Open;
    let handed = handler.is_some_and(|h| h != c.handler);
    if let Some(h) = handler {
        c.handler = h;
    }
    reopened || handed
}

/// A read cursor's message id, as stored in the conversation JSON.
pub fn read_cursor(c: &Conversation, reader: Reader) -> Option<&str> {
    match reader {
        Reader::Visitor => c.visitor_last_read_id.as_deref(),
        Reader::Agent => c.agent_last_read_id.as_deref(),
    }
    .filter(|s| !s.is_empty())
}

/// Where `reader`'s cursor stands (0: nothing read).
pub fn read_seq(c: &Conversation, reader: Reader) -> u64 {
    read_cursor(c, reader)
        .and_then(crate::seq_of_message_id)
        .unwrap_or(0)
}

/// Whether a stored message JSON is a visitor's. `direction` is the third field, after
/// the id and conversation id (both ours, no quotes inside), so its first occurrence is
/// the field itself, whatever the body or meta contain. The Redis script does the same.
pub fn is_inbound_json(json: &str) -> bool {
    json.find("\"direction\":\"")
        .is_some_and(|i| json[i + "\"direction\":\"".len()..].starts_with("inbound"))
}

/// Encodes a value that cannot fail to encode (our own types).
pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}
