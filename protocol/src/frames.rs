//! WebSocket frames. Client frames are parsed from text; server frames are encoded here,
//! once, into the exact text every subscriber receives.

use serde::Deserialize;
use serde_json::json;

use crate::error::ErrorCode;
use crate::model::{AgentPresence, Author, Conversation, Message, PresenceStatus};

/// A frame a client may send on either channel. Which ones a channel accepts is the
/// channel's business (`reply`/`close` are agent-only, for instance).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// First frame: the credential and, to resume, the last id/offset the client saw.
    Auth {
        token: String,
        #[serde(default)]
        after: Option<String>,
    },
    /// Visitor sends a message.
    Message {
        /// May be empty (`""`) when `attachments` is not.
        message: String,
        #[serde(default, rename = "clientMessageId")]
        client_message_id: Option<String>,
        /// The name of one of the tenant's intents.
        #[serde(default)]
        intent: Option<String>,
        /// Ids of files uploaded in this conversation and not sent yet (at most 10).
        #[serde(default)]
        attachments: Vec<String>,
    },
    /// Visitor (no conversation id) or agent (with one) is typing.
    Typing {
        #[serde(default, rename = "conversationId")]
        conversation_id: Option<String>,
    },
    Ping,
    /// Agent replies in a conversation.
    Reply {
        #[serde(rename = "conversationId")]
        conversation_id: String,
        message: String,
        #[serde(default, rename = "clientMessageId")]
        client_message_id: Option<String>,
        #[serde(default)]
        attachments: Vec<String>,
    },
    /// Agent closes a conversation.
    Close {
        #[serde(rename = "conversationId")]
        conversation_id: String,
    },
    /// Agent sets itself online or away.
    Presence {
        status: PresenceStatus,
    },
    /// The visitor (no conversation id) or an agent (with one) has read up to a message.
    Read {
        #[serde(default, rename = "conversationId")]
        conversation_id: Option<String>,
        #[serde(rename = "messageId")]
        message_id: String,
    },
}

impl ClientFrame {
    /// Parses a text frame; the error text is what `invalid_frame` reports.
    pub fn parse(text: &str) -> Result<ClientFrame, String> {
        serde_json::from_str(text).map_err(|e| {
            let e = e.to_string();
            let e = e.split(" at line").next().unwrap_or(&e);
            format!(
                "unparseable or unknown frame: {}",
                crate::error::without_type_names(e)
            )
        })
    }
}

/// `{"type":"message:new","data":Message}` on the visitor channel.
pub fn visitor_message_new(message_json: &str) -> String {
    format!(r#"{{"type":"message:new","data":{message_json}}}"#)
}

/// `{"type":"conversation:updated","data":Conversation}` on the visitor channel.
pub fn visitor_conversation_updated(conversation_json: &str) -> String {
    format!(r#"{{"type":"conversation:updated","data":{conversation_json}}}"#)
}

/// `{"type":"conversation:read","data":{"conversationId","reader","messageId","unreadByAgent"}}`
/// on the visitor channel: a read cursor moved.
pub fn visitor_conversation_read(read_json: &str) -> String {
    format!(r#"{{"type":"conversation:read","data":{read_json}}}"#)
}

/// A tenant-channel event: `{"type":…,"offset":"…","data":…}`.
pub fn tenant_event(kind: &str, offset: u64, data_json: &str) -> String {
    let kind = serde_json::to_string(kind).unwrap_or_else(|_| "\"\"".into());
    format!(r#"{{"type":{kind},"offset":"{offset}","data":{data_json}}}"#)
}

/// `{"type":"message:delta","data":{"conversationId","streamId","delta","author"}}` — a
/// piece of an assistant's reply as it streams; ephemeral, no offset (both channels).
pub fn message_delta(
    conversation_id: &str,
    stream_id: &str,
    delta: &str,
    author: &Author,
) -> String {
    json!({"type": "message:delta", "data": {"conversationId": conversation_id, "streamId": stream_id,
           "delta": delta, "author": author}})
    .to_string()
}

/// `{"type":"typing","data":{"conversationId","author"}}` — ephemeral, no offset.
pub fn typing(conversation_id: &str, author: &Author) -> String {
    json!({"type": "typing", "data": {"conversationId": conversation_id, "author": author}})
        .to_string()
}

/// The visitor channel's `ready`, with where both read cursors stand (the widget's
/// "Seen" after a reload) and who answers now.
pub fn ready_visitor(conversation: &Conversation) -> String {
    let c = conversation;
    json!({"type": "ready", "conversationId": c.id, "visitorId": c.visitor_id,
           "visitorLastReadId": c.visitor_last_read_id, "agentLastReadId": c.agent_last_read_id,
           "assistantId": c.assistant_id, "handler": c.handler})
    .to_string()
}

/// The tenant channel's `ready`: `agents_online` is what it lists (possibly a part),
/// `agents_online_total` how many agents are online in all.
pub fn ready_tenant(
    tenant_id: &str,
    agent_id: &str,
    agent_name: Option<&str>,
    recovered: bool,
    agents_online: &[AgentPresence],
    agents_online_total: usize,
) -> String {
    json!({"type": "ready", "tenantId": tenant_id, "agent": {"id": agent_id, "name": agent_name},
           "recovered": recovered, "agentsOnline": agents_online,
           "agentsOnlineTotal": agents_online_total})
    .to_string()
}

/// `{"type":"presence","data":{"agentId","name","status"}}` to agents — ephemeral.
pub fn presence(agent: &AgentPresence) -> String {
    json!({"type": "presence", "data": agent}).to_string()
}

/// `{"type":"availability","data":{"isAvailable","availabilityMode"}}` to visitors —
/// ephemeral, sent when the tenant's availability changes.
pub fn availability(is_available: bool, availability_mode: &str) -> String {
    json!({"type": "availability", "data": {"isAvailable": is_available, "availabilityMode": availability_mode}})
        .to_string()
}

/// `ack` for a stored (or duplicate) message.
pub fn ack(client_message_id: Option<&str>, message: &Message, duplicate: bool) -> String {
    json!({"type": "ack", "clientMessageId": client_message_id, "messageId": message.id,
           "createdAt": message.created_at, "duplicate": duplicate})
    .to_string()
}

/// `{"type":"error","code","message"}`.
pub fn error(code: ErrorCode, message: &str) -> String {
    json!({"type": "error", "code": code.as_str(), "message": message}).to_string()
}

/// `{"type":"pong"}`.
pub const PONG: &str = r#"{"type":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_frames() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"auth","token":"t","after":"5"}"#).unwrap(),
            ClientFrame::Auth {
                token: "t".into(),
                after: Some("5".into())
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert!(ClientFrame::parse(r#"{"type":"dance"}"#).is_err());
        assert!(ClientFrame::parse("nope").is_err());
    }

    #[test]
    fn errors_do_not_name_rust_types() {
        for text in [
            r#"[1]"#,
            r#""auth""#,
            r#"{"type":"auth","token":["t"]}"#,
            "1",
        ] {
            let e = ClientFrame::parse(text).unwrap_err();
            assert!(
                !e.contains("ClientFrame") && !e.contains("enum ") && !e.contains("struct "),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn tenant_event_frame_is_valid_json() {
        let f = tenant_event("campaign:progress", 7, r#"{"x":1}"#);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["offset"], "7");
        assert_eq!(v["data"]["x"], 1);
    }
}
