//! The JSON shapes of the SPEC ("Shapes"): messages, conversations, tenant events, and the
//! widget settings (intents, quick questions) in seed 004's shape. Field names are
//! camelCase on the wire; the settings also accept the snake_case names used in TOML.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a message. `visitor` messages are inbound, everything else outbound.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuthorKind {
    Visitor,
    Agent,
    Bot,
    System,
}

/// `inbound` is visitor → tenant, `outbound` tenant → visitor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The author of a message or of a typing indicator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Author {
    pub kind: AuthorKind,
    pub id: String,
    pub name: Option<String>,
}

/// A stored message. Immutable once stored; `id` is opaque to clients and totally
/// ordered within its conversation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub direction: Direction,
    pub author: Author,
    pub body: String,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// `{ "mode": "flow" | "ai" | "safe_fallback" }` for bot messages; the page metadata
    /// a visitor sent with the message otherwise (subject to the PII retention mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// The `name` of the tenant's intent the visitor chose with this message (seed 004),
    /// else null.
    #[serde(default)]
    pub intent: Option<String>,
    /// Files sent with the message (at most 10); always present, maybe empty. Stored
    /// without links: each `url` is minted when the message is served. Last field on
    /// purpose: a stored message without files ends with `"attachments":[]}`, which is
    /// how servers skip the link pass cheaply.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// A file sent with a message (SPEC "Attachments").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `att_` + 32 hex digits.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "att_0123456789abcdef0123456789abcdef")
    )]
    pub id: String,
    /// Sanitised: no path, no control characters, at most 200 characters.
    #[cfg_attr(feature = "openapi", schema(example = "invoice.pdf"))]
    pub filename: String,
    /// Decided by sniffing the bytes, never by what the uploader said.
    #[cfg_attr(feature = "openapi", schema(example = "application/pdf"))]
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// A signed link, `/v1/attachments/{id}?exp=…&sig=…`, valid for
    /// `attachment_url_ttl_secs`: minted each time the message is served (empty in
    /// stored data and in a conversation's `lastMessage`).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = "/v1/attachments/att_0123456789abcdef0123456789abcdef?exp=1700003600&sig=…"
        )
    )]
    pub url: String,
}

/// `open` or `closed`; a closed conversation reopens when either side writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Closed => "closed",
        }
    }
}

/// Contact details a visitor gave (contact form, `POST /v1/sessions`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// One conversation per (tenant, visitor).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: String,
    pub tenant_id: String,
    pub visitor_id: String,
    pub status: Status,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    pub customer_id: Option<String>,
    pub locale: Option<String>,
    pub contact: Contact,
    pub variables: Map<String, Value>,
    pub visitor_context: Map<String, Value>,
    pub qualified: bool,
    pub last_message: Option<Message>,
    /// The assistant that answers this conversation (chosen when it started), if any.
    #[serde(default)]
    pub assistant_id: Option<String>,
    /// Who answers now: its assistant (`bot`) or the agents (`human`).
    #[serde(default)]
    pub handler: Handler,
    /// The last message the visitor has read (read receipts); only moves forward.
    #[serde(default)]
    pub visitor_last_read_id: Option<String>,
    /// The last message an agent has read; only moves forward.
    #[serde(default)]
    pub agent_last_read_id: Option<String>,
    /// Visitor messages after `agentLastReadId`.
    #[serde(default)]
    pub unread_by_agent: u64,
}

/// Who answers a conversation now.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Handler {
    /// The agents.
    #[default]
    Human,
    /// The conversation's assistant.
    Bot,
}

impl Handler {
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Human => "human",
            Handler::Bot => "bot",
        }
    }
}

/// Whose read cursor moved (the `reader` of `conversation:read`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Reader {
    Visitor,
    Agent,
}

/// An agent's presence (SPEC "Presence and read receipts").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// At least one tenant socket open, and not set away.
    Online,
    /// Connected, but set away (`{"type":"presence","status":"away"}`).
    Away,
    /// No socket open anywhere (sent once, when an agent leaves).
    Offline,
}

/// One agent in `ready.agentsOnline` and in `presence` frames.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentPresence {
    pub agent_id: String,
    pub name: Option<String>,
    pub status: PresenceStatus,
}

/// An entry of a tenant's event log as stored: `data` is kept as encoded JSON so that it
/// is encoded once and the same bytes are handed to every subscriber.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantEvent {
    /// Position in the tenant's log; strictly increasing, starting at 1.
    pub offset: u64,
    /// `conversation:new`, `message:new`, a custom `a:b` type, …
    pub kind: String,
    /// The event's `data`, already encoded as JSON.
    pub data: String,
    /// When it was stored (epoch ms); retention is judged by it.
    pub created_ms: i64,
}

/// An intent the widget may trigger (seed 004's shape, including its one snake_case
/// field `required_entities`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub name: String,
    #[serde(alias = "display_label")]
    pub display_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub examples: Vec<String>,
    #[serde(default, rename = "required_entities")]
    pub required_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<IntentIcon>,
    #[serde(
        default,
        alias = "accent_color",
        skip_serializing_if = "Option::is_none"
    )]
    pub accent_color: Option<String>,
    #[serde(
        default,
        alias = "style_variant",
        skip_serializing_if = "Option::is_none"
    )]
    pub style_variant: Option<String>,
    #[serde(default, alias = "is_pinned")]
    pub is_pinned: bool,
    #[serde(default)]
    pub priority: i64,
}

/// An intent's icon: `{ "kind": "emoji" | "url" | …, "value": "…" }`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IntentIcon {
    pub kind: String,
    pub value: String,
}

/// A quick-question chip (seed 004). `intentName` is null in responses unless that
/// intent is configured.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct QuickQuestion {
    pub question: String,
    #[serde(default = "general", alias = "page_type")]
    pub page_type: String,
    #[serde(default, alias = "flow_id")]
    pub flow_id: Option<String>,
    #[serde(default, alias = "intent_name")]
    pub intent_name: Option<String>,
}

fn general() -> String {
    "general".to_owned()
}
