//! Assistants: AI and bot replies that never leave a visitor unanswered (docs/assistants.md).
//!
//! - **Owed replies live in the store, not in node memory.** A visitor message stored
//!   while the conversation's handler is `bot` makes a reply owed in the same commit
//!   ([`confab_store::Store::claim_reply`]). A node produces it only while holding the
//!   record's lease, renewed as it works; it settles the record with the reply in one
//!   commit that first checks the lease ([`confab_store::Store::complete_reply`]). So one
//!   node's reply is stored, and a reply whose node died is taken over by another node's
//!   poll once the lease lapses — or, on the embedded store, after the restart.
//! - **One reply in flight per conversation.** Each answering task claims as a holder of
//!   its own, so the store's lease alone decides who answers — across nodes and between
//!   two tasks of one node. Visitor messages that arrive meanwhile keep the record owed;
//!   the holder claims it again when it settles and answers them together.
//! - **Streaming.** Pieces of the answer go out as ephemeral `message:delta` frames to the
//!   conversation's visitors and the tenant's agents (every node, through the broker),
//!   then one stored bot message carries the same `streamId`.
//! - **Failure is never silence.** Any failure — including the assistant's circuit being
//!   open after consecutive failures — stores the safe fallback, which also hands the
//!   conversation to people.

pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::frames;
use confab_protocol::model::{
    Author, AuthorKind, Conversation, Direction, Handler, Intent, Message,
};
use confab_store::{Channel, Cursor, NewMessage, OwedReply, ReplyOutcome};
use dashmap::DashMap;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::upstream::{Failure, Reply, Request};
use crate::settings::{Assistant, Tenant};
use crate::state::AppState;

/// How owed replies are leased and how the circuit breaker behaves. Tests shorten them
/// through `Options`.
#[derive(Debug, Clone, Copy)]
pub struct AssistantTiming {
    /// How long a claim lasts without renewal; the holder renews it every third of this.
    pub lease: Duration,
    /// How often a node looks for owed replies nobody holds (a dead node's).
    pub poll: Duration,
    /// Consecutive failures that open an assistant's circuit on a node…
    pub breaker_failures: u32,
    /// …for this long.
    pub breaker_open: Duration,
}

impl Default for AssistantTiming {
    fn default() -> Self {
        AssistantTiming {
            lease: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
        }
    }
}

/// What a node keeps about assistants: each assistant's circuit, word of each settled
/// reply for `awaitReply` requests, and a counter naming its answering tasks.
pub struct Runtime {
    /// Numbers the answering tasks: each claims as its own holder (`NODE#N`), so two
    /// tasks of one node can never both think they hold a reply.
    tasks: std::sync::atomic::AtomicU64,
    /// (tenant, assistant) → its circuit.
    breakers: DashMap<(String, String), Breaker>,
    /// Every reply this node settled, stored or not.
    settled: tokio::sync::broadcast::Sender<Settled>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            tasks: std::sync::atomic::AtomicU64::new(0),
            breakers: DashMap::new(),
            settled: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

/// A reply settled by this node: the visitor messages up to `through_seq` of a
/// conversation have their outcome.
#[derive(Debug, Clone)]
struct Settled {
    tenant: String,
    conversation_id: String,
    through_seq: u64,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Runtime {
    /// True while `assistant`'s circuit is open (straight to the fallback).
    fn is_open(&self, tenant: &str, assistant: &str) -> bool {
        self.breakers
            .get(&(tenant.to_owned(), assistant.to_owned()))
            .and_then(|b| b.open_until)
            .is_some_and(|t| Instant::now() < t)
    }

    /// Records an outcome; true when this failure opened the circuit.
    fn record(&self, tenant: &str, assistant: &str, ok: bool, timing: &AssistantTiming) -> bool {
        let mut b = self
            .breakers
            .entry((tenant.to_owned(), assistant.to_owned()))
            .or_default();
        if ok {
            *b = Breaker::default();
            return false;
        }
        b.failures += 1;
        if b.failures >= timing.breaker_failures && b.open_until.is_none_or(|t| Instant::now() >= t)
        {
            b.open_until = Some(Instant::now() + timing.breaker_open);
            b.failures = 0;
            return true;
        }
        false
    }

    /// Assistants whose circuit is open now, as (tenant, assistant).
    pub fn open_circuits(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        self.breakers
            .iter()
            .filter(|e| e.value().open_until.is_some_and(|t| now < t))
            .map(|e| e.key().clone())
            .collect()
    }
}

/// Starts the node's poll for owed replies nobody holds (a dead node's, or ones left
/// after a restart). Stops with the node.
pub fn start(state: &AppState) {
    if state.tenants.all().iter().all(|t| t.assistants.is_empty()) {
        return;
    }
    let state2 = state.clone();
    state.background.spawn(async move {
        let state = state2;
        loop {
            for tenant in state.tenants.all() {
                if !tenant.assistants.is_empty() {
                    adopt_owed(&state, tenant).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(state.assistant_timing.poll) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// Most owed replies one poll claims for a tenant (the next tick takes the rest).
const ADOPT_PER_TICK: usize = 1000;

/// A fresh holder name for one answering task of this node.
fn new_holder(state: &AppState) -> String {
    let n = state
        .assistants
        .tasks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}#{n}", state.node_id)
}

/// Claims what the tenant owes and nobody holds (free, or its lease lapsed), each for a
/// task of its own.
async fn adopt_owed(state: &AppState, tenant: &Arc<Tenant>) {
    for _ in 0..ADOPT_PER_TICK {
        let holder = new_holder(state);
        let claimed = state
            .store
            .claim_reply(&tenant.cfg.id, None, &holder, lease_ms(state))
            .await;
        match claimed {
            Ok(Some(owed)) => {
                let (state2, tenant) = (state.clone(), tenant.clone());
                state
                    .background
                    .spawn(async move { answer_all(&state2, &tenant, &holder, owed).await });
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(tenant = tenant.cfg.id, error = %e, "owed replies not read");
                return;
            }
        }
    }
}

/// A visitor message made a reply owed: answer it from this node now. When a reply to the
/// conversation is being produced already (here or on another node), this task's claim
/// fails and it ends: the holder answers the new message with its next reply.
pub fn kick(state: &AppState, tenant: &Arc<Tenant>, conversation_id: &str) {
    let holder = new_holder(state);
    let (state2, tenant, conv) = (state.clone(), tenant.clone(), conversation_id.to_owned());
    state.background.spawn(async move {
        let claimed = state2
            .store
            .claim_reply(&tenant.cfg.id, Some(&conv), &holder, lease_ms(&state2))
            .await;
        match claimed {
            Ok(Some(owed)) => answer_all(&state2, &tenant, &holder, owed).await,
            Ok(None) => {}
            // The poll claims it once the store answers again.
            Err(e) => {
                tracing::warn!(tenant = tenant.cfg.id, conversation_id = conv, error = %e, "owed reply not claimed")
            }
        }
    });
}

/// Answers a claimed reply, then whatever the conversation owes meanwhile (visitor
/// messages stored while it was produced), as long as this holder can claim it.
async fn answer_all(state: &AppState, tenant: &Arc<Tenant>, holder: &str, first: OwedReply) {
    let conversation_id = first.conversation_id.clone();
    let mut owed = first;
    loop {
        state.metrics.assistant_claims();
        if state.shutdown.is_cancelled() {
            return;
        }
        answer(state, tenant, holder, owed).await;
        owed = match state
            .store
            .claim_reply(
                &tenant.cfg.id,
                Some(&conversation_id),
                holder,
                lease_ms(state),
            )
            .await
        {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                // The poll claims it once the lease (if any) lapses.
                tracing::warn!(tenant = tenant.cfg.id, conversation_id, error = %e, "owed reply not claimed");
                return;
            }
        };
    }
}

fn lease_ms(state: &AppState) -> i64 {
    state.assistant_timing.lease.as_millis() as i64
}

/// Why producing a reply stopped before it could be settled.
enum Abandon {
    /// Another node holds the reply now.
    LeaseLost,
    Shutdown,
}

/// Produces and settles one claimed reply.
async fn answer(state: &AppState, tenant: &Arc<Tenant>, holder: &str, owed: OwedReply) {
    let tid = tenant.cfg.id.as_str();
    let conv = match state.store.conversation(tid, &owed.conversation_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return settle(state, tenant, holder, &owed, None).await,
        Err(e) => {
            tracing::warn!(tenant = tid, conversation_id = owed.conversation_id, error = %e, "owed reply: conversation not read");
            return;
        }
    };
    if conv.handler != Handler::Bot {
        return settle(state, tenant, holder, &owed, None).await;
    }
    let Some(assistant) = conv
        .assistant_id
        .as_deref()
        .and_then(|id| tenant.assistant(id))
        .cloned()
    else {
        // Its assistant left the configuration: people answer.
        tracing::warn!(tenant = tid, conversation_id = conv.id, assistant = ?conv.assistant_id, "the conversation's assistant is not configured; handing it to people");
        settle(state, tenant, holder, &owed, None).await;
        if let Err(e) = state.store.set_handler(tid, &conv.id, Handler::Human).await {
            tracing::warn!(tenant = tid, conversation_id = conv.id, error = %e, "handler not set");
        }
        return;
    };
    let author = Author {
        kind: AuthorKind::Bot,
        id: assistant.cfg.id.clone(),
        name: Some(assistant.cfg.name.clone()),
    };
    // With the stream's id when pieces of it went out (a fallback then replaces them).
    let (outcome, streamed) = if state.assistants.is_open(tid, &assistant.cfg.id) {
        (Err(Failure::CircuitOpen), None)
    } else {
        match produce(state, tenant, holder, &assistant, &conv, &owed, &author).await {
            Ok((result, streamed)) => {
                let ok = result.is_ok();
                if state
                    .assistants
                    .record(tid, &assistant.cfg.id, ok, &state.assistant_timing)
                {
                    tracing::warn!(
                        tenant = tid,
                        assistant = assistant.cfg.id,
                        "assistant circuit open: replies go straight to the fallback for {:?}",
                        state.assistant_timing.breaker_open
                    );
                }
                (result, streamed)
            }
            Err(Abandon::LeaseLost) => {
                tracing::warn!(
                    tenant = tid,
                    conversation_id = conv.id,
                    "owed reply taken over by another node"
                );
                return;
            }
            Err(Abandon::Shutdown) => return,
        }
    };
    let reply = match outcome {
        Ok(reply) => reply,
        Err(failure) => {
            tracing::warn!(
                tenant = tid,
                assistant = assistant.cfg.id,
                conversation_id = conv.id,
                cause = failure.cause(),
                "assistant failed ({failure}); storing the safe fallback"
            );
            state.metrics.assistant_fallback(failure.cause());
            let mut meta = json!({"mode": "safe_fallback"});
            if let Some(id) = streamed {
                // The draft its pieces made is replaced by the fallback, as a reply's is.
                meta["streamId"] = id.into();
            }
            let message = reply_message(
                tenant,
                &conv,
                &owed,
                author,
                assistant.cfg.fallback_message.trim().to_owned(),
                meta,
                Some(Handler::Human),
            );
            state.metrics.assistant_reply("safe_fallback");
            return settle(state, tenant, holder, &owed, Some(message)).await;
        }
    };
    if reply.silent {
        state.metrics.assistant_reply("silent");
        settle(state, tenant, holder, &owed, None).await;
        if reply.handoff {
            if let Err(e) = state.store.set_handler(tid, &conv.id, Handler::Human).await {
                tracing::warn!(tenant = tid, conversation_id = conv.id, error = %e, "handoff not stored");
            }
        }
        return;
    }
    let mut meta = Map::new();
    meta.insert("mode".into(), reply.mode.clone().into());
    if let Some(id) = &reply.stream_id {
        meta.insert("streamId".into(), id.clone().into());
    }
    if let Some(m) = &reply.model {
        meta.insert("model".into(), m.clone().into());
    }
    if let Some(t) = reply.tokens {
        meta.insert("tokens".into(), t.into());
    }
    if let Some(m) = reply.metadata.clone() {
        meta.insert("metadata".into(), m);
    }
    state
        .metrics
        .assistant_reply(if reply.mode == "ai" { "ai" } else { "flow" });
    let message = reply_message(
        tenant,
        &conv,
        &owed,
        author,
        reply.text,
        Value::Object(meta),
        reply.handoff.then_some(Handler::Human),
    );
    settle(state, tenant, holder, &owed, Some(message)).await;
}

/// The stored form of a reply. Its idempotency key names the visitor message it answers,
/// so a settle retried after an unanswered commit stores it once.
fn reply_message(
    tenant: &Tenant,
    conv: &Conversation,
    owed: &OwedReply,
    author: Author,
    body: String,
    meta: Value,
    handler: Option<Handler>,
) -> NewMessage {
    NewMessage {
        tenant: tenant.cfg.id.clone(),
        conversation_id: conv.id.clone(),
        direction: Direction::Outbound,
        author,
        body,
        client_message_id: Some(reply_key(owed.through_seq)),
        meta: Some(meta),
        intent: None,
        handler,
        attachments: Vec::new(),
    }
}

/// Settles the record (retrying a store that is briefly unavailable; past that, the lease
/// lapses and the reply is produced again, stored once by its idempotency key).
async fn settle(
    state: &AppState,
    tenant: &Tenant,
    holder: &str,
    owed: &OwedReply,
    reply: Option<NewMessage>,
) {
    let tid = tenant.cfg.id.as_str();
    for attempt in 0..3u32 {
        match state
            .store
            .complete_reply(
                tid,
                &owed.conversation_id,
                holder,
                owed.through_seq,
                reply.clone(),
            )
            .await
        {
            Ok(ReplyOutcome::Stored(a)) => {
                if !a.duplicate {
                    state
                        .metrics
                        .messages_stored
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return announce(state, tid, owed);
            }
            Ok(ReplyOutcome::Silent) => return announce(state, tid, owed),
            Ok(ReplyOutcome::HandedOver) => {
                tracing::debug!(
                    tenant = tid,
                    conversation_id = owed.conversation_id,
                    "reply dropped: the conversation was handed to people"
                );
                return announce(state, tid, owed);
            }
            Ok(ReplyOutcome::Lost) => {
                tracing::warn!(
                    tenant = tid,
                    conversation_id = owed.conversation_id,
                    "reply dropped: another node took it over"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(tenant = tid, conversation_id = owed.conversation_id, attempt, error = %e, "reply not stored yet");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

/// Tells this node's `awaitReply` requests that the messages up to `owed.through_seq` have
/// their outcome (no receiver: nobody waits).
fn announce(state: &AppState, tenant: &str, owed: &OwedReply) {
    let _ = state.assistants.settled.send(Settled {
        tenant: tenant.to_owned(),
        conversation_id: owed.conversation_id.clone(),
        through_seq: owed.through_seq,
    });
}

/// The idempotency key of the reply to the visitor messages up to `through_seq`: also its
/// `clientMessageId`, which tells clients (and `awaitReply`) which messages it answers.
fn reply_key(through_seq: u64) -> String {
    format!("reply-{through_seq}")
}

/// The last visitor message a stored reply answers (from its `clientMessageId`).
fn answered_through(m: &Message) -> Option<u64> {
    if m.author.kind != AuthorKind::Bot {
        return None;
    }
    m.client_message_id
        .as_deref()?
        .strip_prefix("reply-")?
        .parse()
        .ok()
}

/// `awaitReply`: waits, at most the assistant's `timeout_secs` + 5 s, for the outcome of
/// the visitor message `seq`: the stored reply (or fallback) that answers it; `None` when
/// it was settled without one (silence, people took over), when people answer the
/// conversation, or when the time is up. Silence decided on another node is only seen as
/// the time running out.
pub async fn await_reply(
    state: &AppState,
    tenant: &Tenant,
    conv: &Conversation,
    seq: u64,
) -> Result<Option<Message>, confab_protocol::ApiError> {
    let Some(assistant) = conv
        .assistant_id
        .as_deref()
        .and_then(|id| tenant.assistant(id))
    else {
        return Ok(None);
    };
    let tid = tenant.cfg.id.as_str();
    let deadline = Instant::now() + Duration::from_secs(assistant.cfg.timeout_secs + 5);
    // Subscribed before the first read: nothing settled in between is missed.
    let mut settled = state.assistants.settled.subscribe();
    let published = state
        .hub
        .subscribe_live(
            &state.broker,
            Channel::Conversation {
                tenant: tid.into(),
                conversation_id: conv.id.as_str().into(),
            },
            1,
            true,
        )
        .await;
    let mut without_reply = false;
    loop {
        let page = state
            .store
            .messages(tid, &conv.id, Cursor::After(seq), 200)
            .await
            .map_err(crate::error::store_error)?;
        let reply = page
            .messages
            .iter()
            .filter_map(|m| serde_json::from_str::<Message>(&m.json).ok())
            .find(|m| {
                m.author.id == assistant.cfg.id && answered_through(m).is_some_and(|t| t >= seq)
            });
        if reply.is_some() || without_reply {
            return Ok(reply);
        }
        let now = state
            .store
            .conversation(tid, &conv.id)
            .await
            .map_err(crate::error::store_error)?;
        if now.is_none_or(|c| c.handler != Handler::Bot) {
            // A fallback hands over in the commit that stores it: read once more.
            without_reply = true;
            continue;
        }
        tokio::select! {
            _ = published.changed() => {}
            s = settled.recv() => {
                // Settled without a stored reply covering it: one last read, then null.
                if let Ok(s) = s {
                    without_reply = s.tenant == tid && s.conversation_id == conv.id && s.through_seq >= seq;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = state.shutdown.cancelled() => return Ok(None),
        }
    }
}

/// Asks the upstream, streaming its pieces out, while keeping the lease. With the outcome,
/// the stream's id if any piece went out.
async fn produce(
    state: &AppState,
    tenant: &Tenant,
    holder: &str,
    assistant: &Assistant,
    conv: &Conversation,
    owed: &OwedReply,
    author: &Author,
) -> Result<(Result<Reply, Failure>, Option<String>), Abandon> {
    let stream_id = confab_protocol::token::random_id("str_", 16);
    let stream_id = stream_id.as_str();
    let tid = tenant.cfg.id.as_str();
    let messages = match context(state, tid, conv, owed, assistant.cfg.context_messages).await {
        Ok(m) => m,
        Err(e) => {
            return Ok((
                Err(Failure::Connect(format!(
                    "the conversation's history could not be read: {e}"
                ))),
                None,
            ))
        }
    };
    let intent = chosen_intent(tenant, &messages);
    let request = Request {
        tenant: tid,
        conversation: conv,
        messages: &messages,
        intent,
    };
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let limit = Duration::from_secs(assistant.cfg.timeout_secs);
    let started = Instant::now();
    let call = tokio::time::timeout(limit, upstream::call(&state.http, assistant, &request, tx));
    tokio::pin!(call);
    let every = state.assistant_timing.lease / 3;
    let mut renew = tokio::time::interval_at(Instant::now() + every, every);
    let channels = [
        Channel::Conversation {
            tenant: tid.into(),
            conversation_id: conv.id.as_str().into(),
        },
        Channel::Tenant { tenant: tid.into() },
    ];
    let mut first_delta = true;
    let mut streamed = false;
    let result = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => return Err(Abandon::Shutdown),
            Some(piece) = rx.recv() => {
                if first_delta {
                    first_delta = false;
                    state.metrics.assistant_first_delta.observe_duration(started.elapsed());
                }
                streamed = true;
                publish_delta(state, &channels, &conv.id, stream_id, &piece, author).await;
            }
            r = &mut call => break r,
            _ = renew.tick() => {
                match state.store.renew_reply(tid, &conv.id, holder, lease_ms(state)).await {
                    Ok(true) => {}
                    Ok(false) => return Err(Abandon::LeaseLost),
                    // Keep going: the commit checks the lease anyway.
                    Err(e) => tracing::debug!(error = %e, "reply lease not renewed"),
                }
            }
        }
    };
    // Pieces sent before the call returned.
    while let Ok(piece) = rx.try_recv() {
        streamed = true;
        publish_delta(state, &channels, &conv.id, stream_id, &piece, author).await;
    }
    state
        .metrics
        .assistant_reply_latency
        .observe_duration(started.elapsed());
    let outcome = result.unwrap_or(Err(Failure::Timeout)).map(|mut reply| {
        if reply.streamed {
            reply.stream_id = Some(stream_id.to_owned());
        }
        reply
    });
    Ok((outcome, streamed.then(|| stream_id.to_owned())))
}

async fn publish_delta(
    state: &AppState,
    channels: &[Channel; 2],
    conversation_id: &str,
    stream_id: &str,
    delta: &str,
    author: &Author,
) {
    let frame: Arc<str> = frames::message_delta(conversation_id, stream_id, delta, author).into();
    for ch in channels {
        super::publish_ephemeral(state, ch.clone(), frame.clone()).await;
    }
}

/// The conversation's last `n` messages as it was read (the owed ones and, after them,
/// any reply already stored to earlier ones), oldest first.
async fn context(
    state: &AppState,
    tenant: &str,
    conv: &Conversation,
    owed: &OwedReply,
    n: usize,
) -> Result<Vec<Message>, confab_store::StoreError> {
    let last = conv
        .last_message
        .as_ref()
        .and_then(|m| confab_store::seq_of_message_id(&m.id))
        .unwrap_or(0)
        .max(owed.through_seq);
    let page = state
        .store
        .messages(
            tenant,
            &conv.id,
            Cursor::After(last.saturating_sub(n as u64)),
            n,
        )
        .await?;
    let mut messages: Vec<(u64, Message)> = page
        .messages
        .iter()
        .filter(|m| m.seq <= last)
        .filter_map(|m| Some((m.seq, serde_json::from_str::<Message>(&m.json).ok()?)))
        .collect();
    // A reply comes after the messages it answers, even when more visitor messages were
    // stored before it (they are what this request answers): the request then ends with
    // the visitor's turn, which is what a chat model continues from.
    messages.sort_by_key(|(seq, m)| match answered_through(m) {
        Some(t) if t < *seq => (t, 1),
        _ => (*seq, 0),
    });
    Ok(messages.into_iter().map(|(_, m)| m).collect())
}

/// The intent of the newest visitor message that chose one (among those being answered
/// and their context), if it is still one of the tenant's.
fn chosen_intent<'a>(tenant: &'a Tenant, messages: &[Message]) -> Option<&'a Intent> {
    let name = messages
        .iter()
        .rev()
        .filter(|m| m.author.kind == AuthorKind::Visitor)
        .find_map(|m| m.intent.as_deref())?;
    tenant.cfg.intents.iter().find(|i| i.name == name)
}

/// Whether the conversation's assistant answers now, for a conversation starting or
/// taking a visitor message (SPEC "Who answers").
pub fn answers_now(assistant: &Assistant, is_available: bool) -> bool {
    match assistant.cfg.answers {
        crate::config::Answers::Always => true,
        crate::config::Answers::WhenUnavailable => !is_available,
    }
}
