//! The service layer: what the transports (`http`, `ws`) ask of the node once they have
//! parsed and authenticated a request. HTTP routes and WebSocket frames call the same
//! functions, so validation, idempotency, rate limits (one bucket per key, whatever the
//! transport), the PII policy and auto-replies cannot drift apart.
//!
//! - [`sessions`] — starting and resuming visitor sessions.
//! - [`visitor`] — visitor messages (one path for all of them), typing, read receipts,
//!   page context, PII.
//! - [`agent`] — the tenant side: conversations (list, read), replies, status, typing, read
//!   receipts.
//! - [`events`] — the tenant event log: pages (long-polled), resume points, custom events.
//! - [`webhooks`] — delivering the tenant event log to the tenant's webhooks.
//! - [`presence`] — which agents are online, and the availability that follows.
//! - [`assistants`] — AI and bot replies: owed replies, upstream dialects, streaming.
//!
//! - [`attachments`] — uploads, signed links on served messages, downloads, the sweep.
//! - [`limits`] — charging requests against the rate limits.

use std::sync::Arc;

use confab_protocol::model::{Conversation, Reader};
use confab_protocol::{ApiError, ErrorCode};
use confab_store::{Appended, Channel, LimitedAppend, NewMessage, Published, ReadMark};

use crate::state::AppState;

pub mod agent;
pub mod assistants;
pub mod attachments;
pub mod events;
pub mod limits;
pub mod presence;
pub mod sessions;
pub mod visitor;
pub mod webhooks;

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::ConversationNotFound, "no such conversation")
}

/// A refused message that retries one stored before is that message's duplicate,
/// whatever it says now (a client that re-sends after a lost answer must not be told its
/// stored message failed): `probe` — the refused message's conversation, author and
/// `clientMessageId` — is looked up first. `Ok` (the first message, `duplicate`) when
/// found; otherwise, or when the store cannot say, the refusal.
async fn duplicate_or(
    state: &AppState,
    probe: &NewMessage,
    refused: ApiError,
) -> Result<Appended, ApiError> {
    let usable = probe
        .client_message_id
        .as_deref()
        .is_some_and(|id| confab_protocol::validate::client_message_id(id).is_ok());
    if !usable {
        return Err(refused);
    }
    match state.store.find_duplicate(probe).await {
        Ok(Some(message)) => Ok(Appended {
            message,
            duplicate: true,
            first_in_conversation: false,
            reply_owed: false,
        }),
        Ok(None) | Err(_) => Err(refused),
    }
}

/// Appends through the store (404 for a conversation not in the tenant) and counts it.
async fn append(state: &AppState, new: NewMessage) -> Result<Appended, ApiError> {
    append_charged(state, new, &limits::Charges::default()).await
}

/// [`append`], charging `charges` in the same commit (`Store::append_message_limited`: one
/// round trip in Redis mode): 429 when a limit is exhausted and nothing charged or stored —
/// unless the message was stored before (an idempotent retry), which is answered.
async fn append_charged(
    state: &AppState,
    new: NewMessage,
    charges: &limits::Charges,
) -> Result<Appended, ApiError> {
    let started = std::time::Instant::now();
    let outcome = state
        .store
        .append_message_limited(
            new,
            &charges.specs(),
            state.now_ms(),
            state.limiter.as_ref(),
        )
        .await;
    state
        .metrics
        .store_append
        .observe_duration(started.elapsed());
    let appended = match outcome.map_err(crate::error::store_error)? {
        LimitedAppend::Done(appended) => appended.ok_or_else(not_found)?,
        LimitedAppend::Limited {
            retry_after_ms,
            refused,
        } => return Err(charges.refusal(state, retry_after_ms, refused)),
    };
    if !appended.duplicate {
        state
            .metrics
            .messages_stored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(appended)
}

/// Moves `reader`'s read cursor of a conversation to `message_id` (forward only; an older
/// id is accepted and changes nothing). 422 when the id is not one of its messages.
async fn mark_read(
    state: &AppState,
    tenant: &str,
    conversation_id: &str,
    reader: Reader,
    message_id: &str,
) -> Result<Conversation, ApiError> {
    let no_such = || ApiError::invalid("messageId", "no such message in this conversation");
    // Not an id of this conversation: seq 0, which the store answers with "no such
    // message" once it knows the conversation exists (else 404, as for any other call).
    let seq = confab_store::parse_message_id(conversation_id, message_id).unwrap_or(0);
    match state
        .store
        .mark_read(tenant, conversation_id, reader, seq)
        .await
        .map_err(crate::error::store_error)?
    {
        None => Err(not_found()),
        Some(ReadMark::NoSuchMessage) => Err(no_such()),
        Some(ReadMark::Moved(c) | ReadMark::Unchanged(c)) => Ok(c),
    }
}

/// Publishes an ephemeral frame (typing, message:delta) on `channel`, on every node.
async fn publish_ephemeral(state: &AppState, channel: Channel, frame: impl Into<Arc<str>>) {
    if let Err(e) = state
        .broker
        .publish_ephemeral(Published::Ephemeral {
            channel,
            frame: frame.into(),
        })
        .await
    {
        tracing::debug!(error = %e, "ephemeral frame not published");
    }
}

/// A read that, with `wait > 0` and nothing new, holds the request until something is
/// published on `channel` (the hub wakes it), the time is up, or the node shuts down.
/// Subscribing before the second read closes the race with a concurrent write. `first`:
/// the first read, when the caller has made it already.
pub(crate) async fn long_poll<P, F, Fut>(
    state: &AppState,
    channel: confab_store::Channel,
    wait: u64,
    is_empty: impl Fn(&P) -> bool,
    read: F,
    first: Option<P>,
) -> Result<P, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = confab_store::Result<P>>,
{
    let page = match first {
        Some(page) => page,
        None => read().await.map_err(crate::error::store_error)?,
    };
    if !is_empty(&page) || wait == 0 {
        return Ok(page);
    }
    let sub = state
        .hub
        .subscribe_live(&state.broker, channel, 1, true)
        .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let page = read().await.map_err(crate::error::store_error)?;
        if !is_empty(&page) {
            return Ok(page);
        }
        tokio::select! {
            _ = sub.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(page),
            _ = state.shutdown.cancelled() => return Ok(page),
        }
    }
}
