//! # Confab store
//!
//! The storage and fan-out contracts, and their backends.
//!
//! - [`Store`] — durable state: visitors, conversations, messages, the tenant event log,
//!   the challenge replay set, the generated session secret. Its doc states the ordering
//!   and durability promises every backend keeps.
//! - [`Broker`] — cross-node fan-out: which channels this node wants, ephemeral
//!   publications (typing), and the [`EventSink`] every committed event is handed to.
//! - [`ratelimit`] — the [`RateLimiter`](ratelimit::RateLimiter) contract and its
//!   in-process implementation.
//! - [`sqlite`] — the embedded backend (file or in-memory): WAL, one writer thread with
//!   group commit, reads off the async runtime. It is its own broker (one node).
//! - [`redis`] — the scale-out backend: shared store, pub/sub fan-out, gap filling.
//! - `conformance` — the test suite every backend runs (feature `testkit`, for tests only).
//!
//! Messages are numbered by a per-conversation sequence and tenant events by a per-tenant
//! offset, both positive integers. Offsets go on the wire as decimal strings
//! ([`parse_offset`]); message ids also carry their conversation
//! ([`message_id`]: `msg_<32 hex>_<seq>`), so that they are unique across the deployment
//! while still ordered within a conversation and usable as cursors.

use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::model::{
    Attachment, Author, Contact, Conversation, Direction, Handler, Message, Reader, Status,
    TenantEvent,
};
use serde_json::{Map, Value};

#[cfg(feature = "testkit")]
pub mod conformance;
pub mod domain;
pub mod ratelimit;
pub mod redis;
pub mod sqlite;

/// The time source of a node (epoch ms). The gateway and its store share one, so message
/// timestamps, TTLs, token expiry and rate limits all read the same time — and tests can
/// move it (e.g. through a DST change or past a window).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(confab_protocol::time::now_ms))
    }

    /// Any time source (tests).
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

/// Store errors, by who is at fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached or did not commit; nothing was stored.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("store internal error: {0}")]
    Internal(String),
    /// The request breaks a rule only the store can check atomically (an attachment
    /// already sent by a concurrent message); `field` names it. Nothing was stored.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The prefix every message id of a conversation shares: `msg_` and the conversation id
/// without its hyphens (a UUID's 32 hex digits).
pub fn message_id_prefix(conversation_id: &str) -> String {
    let mut p = String::with_capacity(4 + 32 + 1);
    p.push_str("msg_");
    p.extend(conversation_id.chars().filter(|c| *c != '-'));
    p.push('_');
    p
}

/// The wire form of the message `seq` of a conversation: `msg_<32 hex>_<seq>`. Unique
/// across the deployment (a dashboard keys every message of every conversation by it);
/// within a conversation the `seq` part orders them.
pub fn message_id(conversation_id: &str, seq: u64) -> String {
    let mut id = message_id_prefix(conversation_id);
    id.push_str(&seq.to_string());
    id
}

/// Parses a message id that a client gives as a cursor in `conversation_id`: `None` when
/// it is not an id of that conversation. A bare decimal sequence number (the form ids had
/// before they carried their conversation) is still accepted, so clients that stored one
/// keep resuming.
pub fn parse_message_id(conversation_id: &str, id: &str) -> Option<u64> {
    if let Some(seq) = parse_offset(id) {
        return Some(seq);
    }
    let rest = id.strip_prefix("msg_")?;
    let (conv, seq) = rest.rsplit_once('_')?;
    let mut expected = conversation_id.chars().filter(|c| *c != '-');
    let same = conv.chars().all(|c| expected.next() == Some(c)) && expected.next().is_none();
    if !same {
        return None;
    }
    parse_offset(seq)
}

/// The sequence number of an id this store minted itself (no conversation check).
pub fn seq_of_message_id(id: &str) -> Option<u64> {
    parse_offset(id.rsplit_once('_').map_or(id, |(_, seq)| seq))
}

/// Parses a tenant event offset given by a client; `None` when it is not one of ours.
pub fn parse_offset(id: &str) -> Option<u64> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// What `start_conversation` needs.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub tenant: String,
    /// SHA-256 of the visitor token (the token itself is never stored).
    pub token_hash: String,
    pub customer_id: Option<String>,
    pub locale: Option<String>,
    pub contact: Contact,
    pub variables: Map<String, Value>,
    pub visitor_context: Map<String, Value>,
    /// The assistant that answers it (fixed when it starts).
    pub assistant_id: Option<String>,
    /// Who answers first.
    pub handler: Handler,
}

/// Fields a resuming visitor may update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub customer_id: Option<String>,
    pub locale: Option<String>,
    pub contact: Option<Contact>,
    pub variables: Option<Map<String, Value>>,
    pub visitor_context: Option<Map<String, Value>>,
}

impl ProfileUpdate {
    pub fn is_empty(&self) -> bool {
        self.customer_id.is_none()
            && self.locale.is_none()
            && self.contact.is_none()
            && self.variables.is_none()
            && self.visitor_context.is_none()
    }

    /// Applies the update; true when something changed. Refused (nothing changes) when
    /// the variables kept with those from before break the limits one request's must meet.
    pub fn apply(self, c: &mut Conversation) -> Result<bool> {
        let before = c.clone();
        if let Some(v) = self.customer_id {
            c.customer_id = Some(v);
        }
        if let Some(v) = self.locale {
            c.locale = Some(v);
        }
        if let Some(v) = self.contact {
            if v.name.is_some() {
                c.contact.name = v.name;
            }
            if v.email.is_some() {
                c.contact.email = v.email;
            }
        }
        if let Some(v) = self.variables {
            c.variables.extend(v);
            if let Err(e) = confab_protocol::validate::variables(&c.variables) {
                *c = before;
                return Err(StoreError::Invalid {
                    field: "variables".into(),
                    message: format!(
                        "{} (counting the variables the conversation already has)",
                        e.message
                    ),
                });
            }
        }
        if let Some(v) = self.visitor_context {
            c.visitor_context = v;
        }
        Ok(*c != before)
    }
}

/// A known visitor: who they are and their conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorRecord {
    pub visitor_id: String,
    pub conversation_id: String,
}

/// What `append_message` needs.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub tenant: String,
    pub conversation_id: String,
    pub direction: Direction,
    pub author: Author,
    /// Already validated and trimmed.
    pub body: String,
    pub client_message_id: Option<String>,
    pub meta: Option<Value>,
    /// The intent the visitor chose (already checked against the tenant's).
    pub intent: Option<String>,
    /// Sets the conversation's handler in the same commit (an agent's reply: `human`);
    /// `None` leaves it.
    pub handler: Option<Handler>,
    /// Files sent with it, as the message will show them (`url` empty). Each is claimed
    /// atomically with the append: it must be an unsent upload of this conversation, else
    /// [`StoreError::Invalid`] names it (`attachments[i]`) and nothing is stored.
    pub attachments: Vec<Attachment>,
}

impl NewMessage {
    /// The key idempotency is judged by: the `client_message_id` *of this author*. Two
    /// authors of one conversation (the visitor, an agent, the auto-reply) may pick the
    /// same id without one's message being taken for the other's duplicate.
    pub fn idempotency_key(&self) -> Option<String> {
        let kind = match self.author.kind {
            confab_protocol::model::AuthorKind::Visitor => "visitor",
            confab_protocol::model::AuthorKind::Agent => "agent",
            confab_protocol::model::AuthorKind::Bot => "bot",
            confab_protocol::model::AuthorKind::System => "system",
        };
        self.client_message_id
            .as_ref()
            .map(|id| format!("{kind}:{}:{id}", self.author.id))
    }
}

/// An uploaded file as the store keeps it (the bytes live in the gateway's object store).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// `att_` + 32 hex digits.
    pub id: String,
    pub tenant: String,
    /// The conversation it was uploaded in: the only one it may be sent in.
    pub conversation_id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes (the download's `ETag`).
    pub sha256: String,
    pub created_ms: i64,
    /// The message that sent it; `None` while unsent (deleted after 24 h).
    #[serde(default)]
    pub message_id: Option<String>,
}

impl AttachmentRecord {
    /// The file as a message shows it (without its link).
    pub fn wire(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            url: String::new(),
        }
    }
}

/// The outcome of `append_message`.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    /// True when `client_message_id` was seen before: `message` is the first one and
    /// nothing was stored.
    pub duplicate: bool,
    /// True when this was the first message of the conversation.
    pub first_in_conversation: bool,
    /// True when this (visitor) message made a reply owed: the conversation's handler is
    /// `bot` (see [`Store::claim_reply`]).
    pub reply_owed: bool,
}

/// The outcome of [`Store::append_message_limited`].
// Unboxed: one per visitor message, moved once to its caller; a box would be an allocation
// per message for the rare refusal's sake.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LimitedAppend {
    /// What `append_message` answers: stored (the limits charged), a duplicate, or `None`
    /// when there is no such conversation in this tenant.
    Done(Option<Appended>),
    /// `limits[refused]` refused it (the longest wait when several did): nothing was
    /// charged and nothing stored. A retry can succeed in `retry_after_ms`.
    Limited { retry_after_ms: u64, refused: usize },
}

/// An owed reply this node claimed: answer the conversation's visitor messages up to
/// `through_seq` (see [`Store::claim_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedReply {
    pub conversation_id: String,
    pub through_seq: u64,
}

/// The outcome of [`Store::complete_reply`].
#[derive(Debug, Clone)]
pub enum ReplyOutcome {
    /// The reply was stored (it may be a duplicate of one stored by an earlier attempt).
    Stored(Box<Appended>),
    /// Nothing to store (deliberate silence), and the record was settled.
    Silent,
    /// This node no longer held the lease (another node took the reply over): nothing
    /// was stored.
    Lost,
    /// The conversation was handed to people meanwhile: nothing stored, nothing owed.
    HandedOver,
}

/// Where a history read starts (all exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// From the oldest message.
    Start,
    /// After this message id.
    After(u64),
    /// After (createdAt, id) — seed 000's `afterCreatedAt` + `afterId`.
    AfterCreated { created_ms: i64, id: u64 },
    /// Created strictly after this instant — seed 001's `since`.
    Since(i64),
}

/// A message as stored: its sequence number and its JSON, encoded once at append time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub json: Arc<str>,
}

/// One page of history.
#[derive(Debug, Clone, Default)]
pub struct MessagePage {
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
}

/// One page of a tenant's event log.
#[derive(Debug, Clone, Default)]
pub struct EventsPage {
    pub events: Vec<TenantEvent>,
    pub has_more: bool,
    /// False when events after the requested offset were already dropped by retention.
    pub recovered: bool,
}

/// Where a webhook stands: the offset of the last tenant event it has dealt with (delivered
/// with a 2xx, filtered out, or skipped after leaving retention) and its last attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookState {
    pub offset: u64,
    /// The last attempt failed and the event is being retried.
    pub failing: bool,
    /// HTTP status of the last attempt (`None`: no answer, or no attempt yet).
    pub last_status: Option<u16>,
    /// Why the last attempt failed (`None` after a success).
    pub last_error: Option<String>,
    pub last_attempt_ms: Option<i64>,
}

/// The outcome of `mark_read`.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadMark {
    /// The cursor moved: `conversation:read` was emitted; the conversation as it is now.
    Moved(Conversation),
    /// The cursor was already there or further (cursors only move forward).
    Unchanged(Conversation),
    /// The conversation has no message with that id (yet).
    NoSuchMessage,
}

/// The data of a `conversation:read` event and of the visitor frame of the same name.
/// Both backends produce exactly these bytes (field order as declared).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadEvent {
    pub conversation_id: String,
    pub reader: Reader,
    pub message_id: String,
    /// The conversation's `unreadByAgent` after the move.
    pub unread_by_agent: u64,
}

/// One node's word on one agent of a tenant: volatile presence, kept only while renewed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    pub agent_id: String,
    /// The node holding the agent's sockets (an agent may be connected to several).
    pub node: String,
    pub name: Option<String>,
    /// Set away by the agent.
    pub away: bool,
}

/// A page of the conversation list, most recently updated first.
#[derive(Debug, Clone, Default)]
pub struct ConversationPage {
    pub conversations: Vec<Conversation>,
    /// Opaque cursor for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// Position in the conversation list (most recently updated first): exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationCursor {
    pub updated_ms: i64,
    pub id: String,
}

impl ConversationCursor {
    /// The opaque wire form.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.updated_ms, self.id)
    }

    /// Parses the wire form; `None` when it is not one of ours.
    pub fn decode(s: &str) -> Option<ConversationCursor> {
        let (ms, id) = s.split_once('_')?;
        if id.is_empty() || id.len() > 64 {
            return None;
        }
        Some(ConversationCursor {
            updated_ms: ms.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// How long the tenant event log is kept: an event is dropped only when it is *both*
/// older than `min_age_ms` and not among the last `min_events` of its tenant.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub min_events: u64,
    pub min_age_ms: i64,
}

impl Default for Retention {
    /// The SPEC's floor: the last 10,000 events or 24 h, whichever keeps more.
    fn default() -> Self {
        Retention {
            min_events: 10_000,
            min_age_ms: 24 * 3600 * 1000,
        }
    }
}

/// The durable state of Confab.
///
/// Promises every backend keeps (checked by the `conformance` suite):
/// - **Durability**: a call that returns `Ok` has committed: the data survives a crash of
///   the process (SQLite: WAL with `synchronous=FULL`; Redis: as durable as its AOF setting).
///   `Err(Unavailable)` means nothing was stored.
/// - **Order**: message ids are 1, 2, 3… per conversation and tenant offsets 1, 2, 3… per
///   tenant, assigned at commit; `createdAt` never decreases along a conversation.
/// - **Publication**: every committed message and tenant event is handed to the broker's
///   [`EventSink`] exactly once per subscribed node, in id/offset order per channel (in
///   Redis mode: at most once through pub/sub, the gap being filled from the log by the
///   consumer, see [`Published`]).
/// - **Idempotency**: a `client_message_id` seen before in the same conversation stores
///   nothing and returns the first message with `duplicate: true`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// The deployment's session secret: the stored one, or `generated` if none was stored
    /// yet (first writer wins, so every node ends up with the same one).
    async fn session_secret(&self, generated: Vec<u8>) -> Result<Vec<u8>>;

    /// Marks a challenge nonce used until `expires_ms`. True the first time, false after.
    async fn claim_nonce(&self, nonce: &str, expires_ms: i64) -> Result<bool>;

    /// The visitor whose token hashes to `token_hash`, in `tenant`.
    async fn find_visitor(&self, tenant: &str, token_hash: &str) -> Result<Option<VisitorRecord>>;

    /// Creates a visitor and their conversation; appends `conversation:new`.
    async fn start_conversation(&self, new: NewConversation) -> Result<Conversation>;

    /// Updates what a resuming visitor sent; appends `conversation:updated` if anything
    /// changed. `None` when there is no such conversation.
    async fn update_profile(
        &self,
        tenant: &str,
        conversation_id: &str,
        update: ProfileUpdate,
    ) -> Result<Option<Conversation>>;

    /// Appends a message (or finds its duplicate), reopening a closed conversation;
    /// appends `message:new` (and `conversation:updated` when it reopened).
    /// `None` when there is no such conversation in this tenant.
    async fn append_message(&self, new: NewMessage) -> Result<Option<Appended>>;

    /// `append_message` for one request that must also pass `limits` (a visitor's
    /// message: its IP's and its session's allowances), all or nothing: either every limit
    /// takes one unit and the message is appended, or nothing is charged or stored and the
    /// answer is [`LimitedAppend::Limited`]. A retry of a message already stored (same
    /// `client_message_id`) is answered with the original even when a limit is exhausted.
    ///
    /// This default is [`charge_then_append`]: asks `limiter` (`check_all` on `now_ms`),
    /// then appends — and when limited, looks for the duplicate. A backend whose limiter
    /// lives beside its data overrides it with one commit: the Redis store (given the
    /// limiter it was opened with) checks the idempotency key first (a duplicate charges
    /// nothing), then the limits on [`redis::RedisRateLimiter`]'s own keys, then charges
    /// and appends together — one round trip per message.
    async fn append_message_limited(
        &self,
        new: NewMessage,
        limits: &[ratelimit::LimitSpec<'_>],
        now_ms: i64,
        limiter: &dyn ratelimit::RateLimiter,
    ) -> Result<LimitedAppend> {
        charge_then_append(self, new, limits, now_ms, limiter).await
    }

    /// The message `new` would duplicate (same conversation, same author, same
    /// `client_message_id`), if one is stored. Lets a caller acknowledge a retry it would
    /// otherwise refuse (a rate-limited retry of a message already stored).
    async fn find_duplicate(&self, new: &NewMessage) -> Result<Option<Message>>;

    /// A page of a conversation's history in id order, at most `limit` messages.
    async fn messages(
        &self,
        tenant: &str,
        conversation_id: &str,
        cursor: Cursor,
        limit: usize,
    ) -> Result<MessagePage>;

    /// One conversation of the tenant.
    async fn conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<Option<Conversation>>;

    /// The tenant's conversations, most recently updated first.
    async fn conversations(
        &self,
        tenant: &str,
        status: Option<Status>,
        cursor: Option<ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationPage>;

    /// Sets a conversation's status; appends `conversation:updated` when it changed.
    async fn set_status(
        &self,
        tenant: &str,
        conversation_id: &str,
        status: Status,
    ) -> Result<Option<Conversation>>;

    /// Sets who answers the conversation; `conversation:updated` when it changed. `None`
    /// when the conversation does not exist.
    async fn set_handler(
        &self,
        tenant: &str,
        conversation_id: &str,
        handler: Handler,
    ) -> Result<Option<Conversation>>;

    /// Moves `reader`'s read cursor forward to message `seq` (never back): stores it,
    /// recounts `unreadByAgent` for an agent, emits the tenant event `conversation:read`
    /// and the visitor frame. Does not touch `updatedAt` (reading does not reorder the list).
    async fn mark_read(
        &self,
        tenant: &str,
        conversation_id: &str,
        reader: Reader,
        seq: u64,
    ) -> Result<Option<ReadMark>>;

    /// Claims an owed reply for `holder` with a lease of `lease_ms`: the given
    /// conversation's (when it is owed and its lease is free, expired or already
    /// `holder`'s), or any owed one of the tenant whose lease is free or expired. A visitor
    /// message appended while the conversation's handler is `bot` makes its reply owed in
    /// the same commit; the record stays until [`Store::complete_reply`] settles it.
    async fn claim_reply(
        &self,
        tenant: &str,
        conversation_id: Option<&str>,
        holder: &str,
        lease_ms: i64,
    ) -> Result<Option<OwedReply>>;

    /// Extends `holder`'s lease; false when it no longer holds it.
    async fn renew_reply(
        &self,
        tenant: &str,
        conversation_id: &str,
        holder: &str,
        lease_ms: i64,
    ) -> Result<bool>;

    /// Settles a claimed reply in one commit: checks that `holder` still holds it and that
    /// the conversation's handler is still `bot`, appends `reply` (None: silence), and
    /// deletes the record — or releases it, still owed, when visitor messages after
    /// `through_seq` arrived meanwhile (they are answered together by the next reply).
    async fn complete_reply(
        &self,
        tenant: &str,
        conversation_id: &str,
        holder: &str,
        through_seq: u64,
        reply: Option<NewMessage>,
    ) -> Result<ReplyOutcome>;

    /// Appends a custom event. `conversation:qualified` with a conversation id also sets
    /// that conversation's `qualified` flag and carries the conversation as `data`.
    /// `None` when the named conversation does not exist in this tenant.
    async fn append_event(
        &self,
        tenant: &str,
        kind: &str,
        data: Value,
        conversation_id: Option<&str>,
    ) -> Result<Option<TenantEvent>>;

    /// The tenant's events after `after`, in offset order, at most `limit`.
    async fn events(&self, tenant: &str, after: u64, limit: usize) -> Result<EventsPage>;

    /// How many of the tenant's first `limit` events after `after` are of each kind: what a
    /// webhook's lag counts, without the events' data (a message's can be 10,000
    /// characters). This default reads the events themselves.
    async fn event_kinds(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut kinds = std::collections::BTreeMap::new();
        let (mut after, mut left) = (after, limit);
        while left > 0 {
            let page = self.events(tenant, after, left.min(1000)).await?;
            left -= page.events.len();
            for e in &page.events {
                *kinds.entry(e.kind.clone()).or_default() += 1;
            }
            match page.events.last() {
                Some(e) if page.has_more => after = e.offset,
                _ => break,
            }
        }
        Ok(kinds)
    }

    /// The tenant's latest offset (0 when it has none).
    async fn last_offset(&self, tenant: &str) -> Result<u64>;

    /// Housekeeping: drops expired nonces and events beyond retention.
    async fn maintain(&self, now_ms: i64) -> Result<()>;

    /// A webhook's stored state (`webhook` names it within the tenant); `None` before its
    /// first save.
    async fn webhook_state(&self, tenant: &str, webhook: &str) -> Result<Option<WebhookState>>;

    /// Saves a webhook's state. The stored offset never moves back: a node that lost the
    /// webhook's lease mid-delivery cannot rewind the progress of the one that took over.
    async fn save_webhook_state(
        &self,
        tenant: &str,
        webhook: &str,
        state: &WebhookState,
    ) -> Result<()>;

    /// Takes the lease `name` for `holder`, or renews it when `holder` already holds it,
    /// for `ttl_ms` from now. True when `holder` holds it afterwards. A lease names work
    /// exactly one node should do at a time (a webhook's deliveries); it lapses by itself
    /// when its holder dies.
    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool>;

    /// Gives the lease up, if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    /// Records an upload, unsent, once its bytes are durably stored.
    async fn create_attachment(&self, record: &AttachmentRecord) -> Result<()>;

    /// One upload of the tenant (sent or not).
    async fn attachment(&self, tenant: &str, id: &str) -> Result<Option<AttachmentRecord>>;

    /// Uploads never sent and created before `before_ms`, at most `limit`, across tenants:
    /// what the 24 h sweep deletes.
    async fn stale_attachments(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<AttachmentRecord>>;

    /// Deletes an upload's record if it is still unsent; true when it was deleted (then,
    /// and only then, may its bytes go: a concurrent send either claimed it first or
    /// finds it gone).
    async fn delete_unsent_attachment(&self, tenant: &str, id: &str) -> Result<bool>;

    /// Presence (volatile, never persisted beyond `expires_ms`): records `entries` — agents
    /// with sockets on one node — replacing that node's earlier word on each.
    async fn presence_beat(
        &self,
        tenant: &str,
        entries: &[PresenceEntry],
        expires_ms: i64,
    ) -> Result<()>;

    /// Drops one node's word on an agent (its last socket there closed).
    async fn presence_leave(&self, tenant: &str, agent_id: &str, node: &str) -> Result<()>;

    /// Every entry of the tenant that has not expired at `now_ms`.
    async fn presence(&self, tenant: &str, now_ms: i64) -> Result<Vec<PresenceEntry>>;
}

/// A channel of the fan-out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Everything a visitor's connections see.
    Conversation {
        tenant: Arc<str>,
        conversation_id: Arc<str>,
    },
    /// Everything a tenant's agents see.
    Tenant { tenant: Arc<str> },
}

/// An event on its way to subscribers. Frames are encoded by the receiver, once.
#[derive(Debug, Clone)]
pub enum Published {
    /// A stored message, for the visitor channel of its conversation. (The tenant channel
    /// gets its own `TenantEvent` carrying the same message.)
    Message {
        tenant: Arc<str>,
        conversation_id: Arc<str>,
        seq: u64,
        json: Arc<str>,
    },
    /// A stored tenant event, for the tenant's agents.
    Event {
        tenant: Arc<str>,
        event: Arc<TenantEvent>,
    },
    /// The conversation changed (closed, reopened, profile): for its visitor channel.
    ConversationUpdated {
        tenant: Arc<str>,
        conversation_id: Arc<str>,
        json: Arc<str>,
    },
    /// A read cursor moved: for its visitor channel; `json` is a [`ReadEvent`].
    ConversationRead {
        tenant: Arc<str>,
        conversation_id: Arc<str>,
        json: Arc<str>,
    },
    /// Ephemeral: never stored, never replayed, dropped first under back-pressure. `frame`
    /// is the encoded frame (`typing`, `message:delta`).
    Ephemeral { channel: Channel, frame: Arc<str> },
    /// The broker may have missed publications (pub/sub reconnected): every subscriber
    /// must re-read the log after the last id/offset it delivered.
    Resync,
}

/// Receives every publication for the channels this node subscribed to.
/// Called from the backend's own thread/task: it must not block.
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, event: Published);
}

/// Cross-node fan-out.
///
/// Contract: after `subscribe(ch)`, every event committed on `ch` by any node is handed to
/// the sink in commit order, at most once; a publication lost in transit (Redis pub/sub is
/// at-most-once) is followed, once the loss is noticed, by a [`Published::Resync`].
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Where publications go. Called once, before any subscription.
    fn set_sink(&self, sink: Arc<dyn EventSink>);
    /// The first local subscriber of `channel` arrived.
    fn subscribe(&self, channel: &Channel);
    /// The last local subscriber of `channel` left.
    fn unsubscribe(&self, channel: &Channel);
    /// Resolves once the subscription to `channel` is live: every event committed on it
    /// from then on reaches the sink. `subscribe` may take effect asynchronously (Redis),
    /// so a hub replaying history to a new subscriber reads the log only after this (and
    /// drops live events it already replayed, by id/offset): nothing committed in between
    /// is missed. `Err(Unavailable)` when it did not become live in time; a
    /// [`Published::Resync`] follows once it does. Default: live at once.
    async fn subscribed(&self, _channel: &Channel) -> Result<()> {
        Ok(())
    }
    /// Publishes an ephemeral event (typing, message:delta) to every node.
    async fn publish_ephemeral(&self, event: Published) -> Result<()>;
    /// False while the broker knows its subscription is broken (for `/readyz`).
    fn healthy(&self) -> bool {
        true
    }
}

/// A backend: both halves.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub limiter: Arc<dyn ratelimit::RateLimiter>,
}

/// Opens a backend from its URL (`memory`, `sqlite:PATH`, or `redis://…`) on the system
/// clock.
pub async fn open(url: &str, retention: Retention) -> Result<Backend> {
    open_with_clock(url, retention, Clock::system()).await
}

/// [`Store::append_message_limited`] in two steps: `limiter.check_all`, then
/// `append_message` (or, when limited, `find_duplicate`). The default, and the Redis
/// store's way for limits it cannot charge in the message's script. Unlike the one-script
/// way, a duplicate that arrives within the limits is charged.
pub async fn charge_then_append<S: Store + ?Sized>(
    store: &S,
    new: NewMessage,
    limits: &[ratelimit::LimitSpec<'_>],
    now_ms: i64,
    limiter: &dyn ratelimit::RateLimiter,
) -> Result<LimitedAppend> {
    if !limits.is_empty() {
        if let ratelimit::Decision::Limited {
            retry_after_ms,
            refused,
        } = limiter.check_all(limits, now_ms).await?
        {
            let duplicate = match new.client_message_id {
                Some(_) => store.find_duplicate(&new).await?,
                None => None,
            };
            if let Some(message) = duplicate {
                return Ok(LimitedAppend::Done(Some(Appended {
                    message,
                    duplicate: true,
                    first_in_conversation: false,
                    reply_owed: false,
                })));
            }
            return Ok(LimitedAppend::Limited {
                retry_after_ms,
                refused,
            });
        }
    }
    Ok(LimitedAppend::Done(store.append_message(new).await?))
}

/// Opens a backend from its URL, stamping time with the node's `clock`.
pub async fn open_with_clock(url: &str, retention: Retention, clock: Clock) -> Result<Backend> {
    open_with_options(url, retention, clock, &redis::RedisOptions::default()).await
}

/// A store URL, read: which backend, and its options.
enum StoreUrl<'a> {
    Memory,
    Sqlite(&'a str, sqlite::FileOptions),
    Redis,
}

impl<'a> StoreUrl<'a> {
    fn parse(url: &'a str) -> std::result::Result<StoreUrl<'a>, String> {
        if url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let (path, options) = match rest.split_once('?') {
                None => (rest, sqlite::FileOptions::default()),
                Some((path, query)) => (
                    path,
                    sqlite::FileOptions::parse(query).map_err(|e| format!("store {url:?}: {e}"))?,
                ),
            };
            if path.is_empty() {
                return Err(format!("store {url:?}: sqlite: needs a file path"));
            }
            return Ok(StoreUrl::Sqlite(path, options));
        }
        if url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis-cluster://")
        {
            return Ok(StoreUrl::Redis);
        }
        Err(format!(
            "unknown store URL {url:?}: use memory, sqlite:PATH, redis://HOST:PORT/DB or redis-cluster://HOST:PORT,HOST:PORT,…"
        ))
    }
}

/// Checks a store URL's form (what [`open_with_options`] would take) without opening it:
/// the configuration check refuses a URL the gateway could never open.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    StoreUrl::parse(url).map(|_| ())
}

/// Opens a backend from its URL (`memory`, `sqlite:PATH`, `redis://…` or
/// `redis-cluster://HOST:PORT,HOST:PORT,…`), stamping time with the node's `clock`;
/// `redis` applies to the Redis backends only.
pub async fn open_with_options(
    url: &str,
    retention: Retention,
    clock: Clock,
    redis: &redis::RedisOptions,
) -> Result<Backend> {
    match StoreUrl::parse(url).map_err(StoreError::Internal)? {
        StoreUrl::Memory => {
            let s = Arc::new(sqlite::SqliteStore::open_memory(retention, clock)?);
            Ok(Backend {
                store: s.clone(),
                broker: s,
                limiter: Arc::new(ratelimit::MemoryRateLimiter::default()),
            })
        }
        StoreUrl::Sqlite(path, options) => {
            let s = Arc::new(sqlite::SqliteStore::open_file(
                std::path::Path::new(path),
                retention,
                options,
                clock,
            )?);
            Ok(Backend {
                store: s.clone(),
                broker: s,
                limiter: Arc::new(ratelimit::MemoryRateLimiter::default()),
            })
        }
        StoreUrl::Redis => redis::open(url, retention, clock, redis).await,
    }
}
