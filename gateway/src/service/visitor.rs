//! What visitors do: send messages (HTTP, WebSocket, or a session's first message — one
//! path: [`VisitorDraft::check`] → the store, which charges the rate limits in the
//! message's own commit), and type. The page-context and PII rules every visitor input
//! goes through live here too.

use std::net::IpAddr;

use confab_protocol::model::{
    Author, AuthorKind, Conversation, Direction, Handler, Message, Reader,
};
use confab_protocol::validate;
use confab_protocol::{frames, ApiError};
use confab_store::{Appended, Channel, Cursor, MessagePage, NewMessage};
use serde_json::{json, Map, Value};

use crate::auth::VisitorSession;
use crate::config::PiiRetention;
use crate::error::store_error;
use crate::policy::limits::Limit;
use crate::service::limits::Charges;
use crate::settings::Tenant;
use crate::state::AppState;

/// Page metadata a visitor may attach to a message (seed 002).
pub const META_FIELDS: [&str; 6] = [
    "pageUrl",
    "referrer",
    "locale",
    "pageTitle",
    "origin",
    "utm",
];

/// Checks page context — a message's `meta`, a session's `visitorContext` — named `field`:
/// an object of the `allowed` keys, each a string of at most 2,048 characters (null drops
/// it), except `utm` (see [`check_utm`]). One rule for both, so they cannot drift apart.
pub fn check_page_context(
    field: &str,
    value: Value,
    allowed: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be an object"),
        ));
    };
    let mut out = Map::new();
    for (k, v) in map {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid(
                format!("{field}.{k}"),
                format!("unknown field (allowed: {})", allowed.join(", ")),
            ));
        }
        if k == "utm" {
            let utm = check_utm(&format!("{field}.utm"), &v)?;
            out.insert(k, Value::Object(utm));
            continue;
        }
        match v {
            Value::Null => {}
            Value::String(s) => {
                validate::max_chars(&format!("{field}.{k}"), &s, validate::MAX_CONTEXT_CHARS)?;
                out.insert(k, Value::String(s));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{field}.{k}"),
                    "must be a string",
                ))
            }
        }
    }
    Ok(out)
}

/// Checks a visitor message's `meta` and applies the tenant's PII mode to it.
pub fn visitor_meta(tenant: &Tenant, meta: Option<Value>) -> Result<Option<Value>, ApiError> {
    let Some(meta) = meta else { return Ok(None) };
    let out = check_page_context("meta", meta, &META_FIELDS)?;
    Ok(match tenant.cfg.pii_retention {
        PiiRetention::Minimal => None,
        PiiRetention::Redact => Some(Value::Object(redact_urls(out))),
        PiiRetention::Full => (!out.is_empty()).then_some(Value::Object(out)),
    })
}

/// `utm`: an object of at most the five UTM strings.
pub fn check_utm(field: &str, v: &Value) -> Result<Map<String, Value>, ApiError> {
    const UTM: [&str; 5] = ["source", "medium", "campaign", "term", "content"];
    let Value::Object(m) = v else {
        return Err(ApiError::invalid(field, "must be an object"));
    };
    for (k, v) in m {
        if !UTM.contains(&k.as_str()) {
            return Err(ApiError::invalid(
                format!("{field}.{k}"),
                "unknown UTM field",
            ));
        }
        match v {
            Value::Null => {}
            Value::String(s) => {
                validate::max_chars(&format!("{field}.{k}"), s, validate::MAX_CONTEXT_CHARS)?
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{field}.{k}"),
                    "must be a string",
                ))
            }
        }
    }
    Ok(m.clone())
}

/// Cuts query strings and fragments (where tokens and e-mails hide) from URL fields.
pub fn redact_urls(mut m: Map<String, Value>) -> Map<String, Value> {
    for k in ["pageUrl", "referrer", "origin"] {
        if let Some(Value::String(s)) = m.get_mut(k) {
            if let Some(i) = s.find(['?', '#']) {
                s.truncate(i);
            }
        }
    }
    m
}

/// `jane.doe@example.com` → `j***@example.com`.
pub fn redact_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

/// A visitor message that passed the tenant's rules (length, emptiness, idempotency key,
/// `meta` and the PII policy): the first step of every visitor message, whatever carries
/// it (`POST /v1/messages`, the WebSocket, or a session's first message).
pub struct VisitorDraft {
    body: String,
    client_message_id: Option<String>,
    meta: Option<Value>,
    intent: Option<String>,
    /// Files to send with it (already found in the conversation; claimed by the store).
    files: Vec<confab_protocol::model::Attachment>,
}

impl VisitorDraft {
    /// Checks a visitor message; `field` names the body's field in errors. With
    /// `has_files` the text may be empty.
    pub fn check(
        tenant: &Tenant,
        field: &str,
        message: &str,
        client_message_id: Option<String>,
        meta: Option<Value>,
        intent: Option<String>,
        has_files: bool,
    ) -> Result<VisitorDraft, ApiError> {
        let body = validate::message_body_or_files(
            field,
            message,
            tenant.cfg.max_message_length,
            has_files,
        )?;
        if let Some(id) = &client_message_id {
            validate::client_message_id(id)?;
        }
        if let Some(name) = &intent {
            if !tenant.cfg.intents.iter().any(|i| &i.name == name) {
                return Err(ApiError::invalid(
                    "intent",
                    "not the name of one of the tenant's intents",
                ));
            }
        }
        Ok(VisitorDraft {
            body,
            client_message_id,
            meta: visitor_meta(tenant, meta)?,
            intent,
            files: Vec::new(),
        })
    }

    /// The message as the store takes it, in the session's conversation.
    fn into_new(self, session: &VisitorSession) -> NewMessage {
        NewMessage {
            tenant: session.tenant.cfg.id.clone(),
            conversation_id: session.claims.conversation_id.clone(),
            direction: Direction::Inbound,
            author: session.author(),
            body: self.body,
            client_message_id: self.client_message_id,
            meta: self.meta,
            intent: self.intent,
            handler: None,
            attachments: self.files,
        }
    }
}

/// A visitor's message with the ids of files uploaded in its conversation (`attachments`).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    state: &AppState,
    session: &VisitorSession,
    ip: IpAddr,
    message: &str,
    client_message_id: Option<String>,
    meta: Option<Value>,
    intent: Option<String>,
    attachments: &[String],
) -> Result<Appended, ApiError> {
    let retry_of = client_message_id.clone();
    let mut draft = match VisitorDraft::check(
        &session.tenant,
        "message",
        message,
        client_message_id,
        meta,
        intent,
        !attachments.is_empty(),
    ) {
        Ok(draft) => draft,
        Err(refused) => return refused_unless_stored(state, session, retry_of, refused).await,
    };
    if !attachments.is_empty() {
        let c = &session.claims;
        draft.files = match super::attachments::for_message(
            state,
            &c.tenant,
            &c.conversation_id,
            attachments,
        )
        .await
        {
            Ok(files) => files,
            // A retry whose files were sent with it (or swept since) is its duplicate.
            Err(refused) => return refused_unless_stored(state, session, retry_of, refused).await,
        };
    }
    admit_and_store(state, session, ip, draft).await
}

/// [`super::duplicate_or`] for a visitor's refused message in its session's conversation.
async fn refused_unless_stored(
    state: &AppState,
    session: &VisitorSession,
    client_message_id: Option<String>,
    refused: ApiError,
) -> Result<Appended, ApiError> {
    let probe = VisitorDraft {
        body: String::new(),
        client_message_id,
        meta: None,
        intent: None,
        files: Vec::new(),
    }
    .into_new(session);
    super::duplicate_or(state, &probe, refused).await
}

/// Charges the visitor's IP and session in the message's own commit (one Redis round
/// trip; see `Store::append_message_limited`).
async fn admit_and_store(
    state: &AppState,
    session: &VisitorSession,
    ip: IpAddr,
    draft: VisitorDraft,
) -> Result<Appended, ApiError> {
    let ip = ip.to_string();
    let charges = Charges::new(
        &session.tenant,
        &[
            (Limit::MessagesPerIp, ip.as_str()),
            (
                Limit::MessagesPerSession,
                session.claims.visitor_id.as_str(),
            ),
        ],
    );
    store_visitor_message(state, session, draft.into_new(session), &charges).await
}

/// Admits a session's first message before its session exists (nothing may be created
/// for a refused one): charges the IP's allowance, and the visitor's when resuming.
/// A refusal here is final (a resumed visitor's retry is then not looked up).
pub async fn admit(
    state: &AppState,
    tenant: &Tenant,
    visitor_id: Option<&str>,
    ip: IpAddr,
) -> Result<(), ApiError> {
    let ip = ip.to_string();
    let mut limits = vec![(Limit::MessagesPerIp, ip.as_str())];
    if let Some(v) = visitor_id {
        limits.push((Limit::MessagesPerSession, v));
    }
    crate::service::limits::charge_all(state, tenant, &limits).await
}

/// Stores a session's first message, admitted (by [`admit`]) before its session existed.
/// A new visitor's per-session allowance is charged now, in the message's commit — it was
/// unknown then, and cannot be exhausted yet — so the first minute of a session counts the
/// same messages whichever way they came.
pub async fn store_admitted(
    state: &AppState,
    session: &VisitorSession,
    draft: VisitorDraft,
    new_visitor: bool,
) -> Result<Appended, ApiError> {
    let charges = if new_visitor {
        Charges::new(
            &session.tenant,
            &[(
                Limit::MessagesPerSession,
                session.claims.visitor_id.as_str(),
            )],
        )
    } else {
        Charges::default()
    };
    store_visitor_message(state, session, draft.into_new(session), &charges).await
}

async fn store_visitor_message(
    state: &AppState,
    session: &VisitorSession,
    mut new: NewMessage,
    charges: &Charges,
) -> Result<Appended, ApiError> {
    let tenant = &session.tenant;
    new.handler = bot_takes_over(state, session).await?;
    let appended = super::append_charged(state, new, charges).await?;
    if appended.reply_owed {
        // The assistant answers (and the automatic reply would only be in its way).
        super::assistants::kick(state, tenant, &session.claims.conversation_id);
    } else if !appended.duplicate
        && appended.first_in_conversation
        && tenant.cfg.auto_reply.is_some()
    {
        // After the answer, not before: the visitor's ack must not wait on it.
        let (state, tenant) = (state.clone(), tenant.clone());
        let conv = session.claims.conversation_id.clone();
        tokio::spawn(async move { auto_reply(&state, &tenant, &conv).await });
    }
    Ok(appended)
}

/// `Some(Bot)` when the conversation's assistant answers `when_unavailable`, nobody is
/// available and people handle it now: the bot takes the visitor's message. Reads the
/// conversation only in that situation (a tenant with such an assistant, unavailable).
async fn bot_takes_over(
    state: &AppState,
    session: &VisitorSession,
) -> Result<Option<Handler>, ApiError> {
    let tenant = &session.tenant;
    let may = tenant
        .assistants
        .iter()
        .any(|a| a.cfg.answers == crate::config::Answers::WhenUnavailable);
    if !may || super::presence::is_available(state, tenant) {
        return Ok(None);
    }
    let Some(conv) = conversation(state, session).await? else {
        return Ok(None);
    };
    let answers = conv
        .assistant_id
        .as_deref()
        .and_then(|id| tenant.assistant(id))
        .is_some_and(|a| super::assistants::answers_now(a, false));
    Ok((answers && conv.handler == Handler::Human).then_some(Handler::Bot))
}

async fn auto_reply(state: &AppState, tenant: &Tenant, conversation_id: &str) {
    let Some(text) = &tenant.cfg.auto_reply else {
        return;
    };
    let new = NewMessage {
        tenant: tenant.cfg.id.clone(),
        conversation_id: conversation_id.to_owned(),
        direction: Direction::Outbound,
        author: Author {
            kind: AuthorKind::Bot,
            id: "auto_reply".into(),
            name: Some(tenant.cfg.name.clone()),
        },
        body: text.clone(),
        client_message_id: Some("auto_reply".into()),
        meta: Some(json!({"mode": "flow"})),
        intent: None,
        handler: None,
        attachments: Vec::new(),
    };
    if let Err(e) = state.store.append_message(new).await {
        tracing::warn!(error = %e, conversation_id, "auto-reply not stored");
    }
}

pub async fn typing(state: &AppState, session: &VisitorSession) {
    let frame = frames::typing(&session.claims.conversation_id, &session.author());
    let channel = Channel::Tenant {
        tenant: session.tenant.cfg.id.as_str().into(),
    };
    super::publish_ephemeral(state, channel, frame).await;
}

/// `awaitReply`: the assistant's reply to `sent` (or its fallback) once stored; `None`
/// when people answer the conversation, the bot stayed silent or took too long (see
/// [`super::assistants::await_reply`]).
pub async fn await_reply(
    state: &AppState,
    session: &VisitorSession,
    sent: &Appended,
) -> Result<Option<Message>, ApiError> {
    let Some(conv) = conversation(state, session).await? else {
        return Ok(None);
    };
    if !sent.reply_owed && conv.handler != Handler::Bot {
        return Ok(None);
    }
    let seq = confab_store::seq_of_message_id(&sent.message.id).unwrap_or(0);
    super::assistants::await_reply(state, &session.tenant, &conv, seq).await
}

/// A page of a conversation's history, long-polled for up to `wait` seconds.
pub async fn history(
    state: &AppState,
    tenant: &str,
    conversation_id: &str,
    cursor: Cursor,
    limit: usize,
    wait: u64,
) -> Result<MessagePage, ApiError> {
    let named = match cursor {
        Cursor::After(seq) => Some(("after", seq)),
        Cursor::AfterCreated { id, .. } => Some(("afterId", id)),
        Cursor::Start | Cursor::Since(_) => None,
    };
    let mut first = None;
    if let Some((field, seq)) = named {
        // A message id past the conversation's last names no message of it (it was made
        // up, or kept from a wiped store): refused, rather than echoed back as
        // `nextCursor`, from which a poller would skip every message up to it. Checked
        // only when nothing follows the cursor, before any wait.
        let page = state
            .store
            .messages(tenant, conversation_id, cursor, limit)
            .await
            .map_err(store_error)?;
        if page.messages.is_empty() {
            let last = state
                .store
                .conversation(tenant, conversation_id)
                .await
                .map_err(store_error)?
                .map_or(0, |c| last_seq(&c));
            if seq > last {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} names no message of this conversation"),
                ));
            }
        }
        // The long-poll's first read.
        first = Some(page);
    }
    let channel = confab_store::Channel::Conversation {
        tenant: tenant.into(),
        conversation_id: conversation_id.into(),
    };
    super::long_poll(
        state,
        channel,
        wait,
        |p: &MessagePage| p.messages.is_empty(),
        || state.store.messages(tenant, conversation_id, cursor, limit),
        first,
    )
    .await
}

/// The session's conversation (`None`: it does not exist).
pub async fn conversation(
    state: &AppState,
    session: &VisitorSession,
) -> Result<Option<Conversation>, ApiError> {
    let c = &session.claims;
    state
        .store
        .conversation(&c.tenant, &c.conversation_id)
        .await
        .map_err(crate::error::store_error)
}

/// The visitor asks for a person: the conversation's handler becomes `human`.
pub async fn handoff(state: &AppState, session: &VisitorSession) -> Result<Conversation, ApiError> {
    let c = &session.claims;
    state
        .store
        .set_handler(&c.tenant, &c.conversation_id, Handler::Human)
        .await
        .map_err(crate::error::store_error)?
        .ok_or_else(super::not_found)
}

/// A voice call the visitor asked for (seed 003): the assistant's number.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceCall {
    pub conversation_id: String,
    pub assistant_id: String,
    #[schema(example = "+14165559999")]
    pub phone_number: String,
}

/// `POST /v1/voice`: the number of `assistant_id` (else the conversation's assistant, else
/// the tenant's default); emits `voice:requested`. Counted in the session's events limit.
pub async fn voice(
    state: &AppState,
    session: &VisitorSession,
    assistant_id: Option<&str>,
) -> Result<VoiceCall, ApiError> {
    let tenant = &session.tenant;
    let c = &session.claims;
    let assistant = match assistant_id {
        Some(id) => Some(tenant.assistant(id).ok_or_else(|| {
            ApiError::invalid("assistantId", "not one of the tenant's assistants")
        })?),
        None => {
            let conv = conversation(state, session).await?;
            conv.and_then(|cv| cv.assistant_id)
                .and_then(|id| tenant.assistant(&id))
                .or(tenant.default_assistant())
        }
    };
    crate::service::limits::charge(state, tenant, Limit::EventsPerSession, &c.visitor_id).await?;
    let Some((assistant, phone)) =
        assistant.and_then(|a| a.cfg.phone_number.as_ref().map(|p| (a, p)))
    else {
        return Err(ApiError::new(
            confab_protocol::ErrorCode::VoiceUnavailable,
            "no voice number for this assistant",
        ));
    };
    let call = VoiceCall {
        conversation_id: c.conversation_id.clone(),
        assistant_id: assistant.cfg.id.clone(),
        phone_number: phone.clone(),
    };
    let data = serde_json::to_value(&call).unwrap_or_default();
    state
        .store
        .append_event(&c.tenant, "voice:requested", data, Some(&c.conversation_id))
        .await
        .map_err(crate::error::store_error)?
        .ok_or_else(super::not_found)?;
    Ok(call)
}

/// The sequence number of a conversation's last message (0 when it has none).
pub fn last_seq(conversation: &Conversation) -> u64 {
    conversation
        .last_message
        .as_ref()
        .and_then(|m| confab_store::seq_of_message_id(&m.id))
        .unwrap_or(0)
}

/// The visitor has read up to `message_id` (read receipts).
pub async fn mark_read(
    state: &AppState,
    session: &VisitorSession,
    message_id: &str,
) -> Result<Conversation, ApiError> {
    let c = &session.claims;
    super::mark_read(
        state,
        &c.tenant,
        &c.conversation_id,
        Reader::Visitor,
        message_id,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact_email("jane.doe@example.com"), "j***@example.com");
        let m = json!({"pageUrl": "https://s.example/p?email=a@b.c#x", "pageTitle": "T"});
        let r = redact_urls(m.as_object().unwrap().clone());
        assert_eq!(r["pageUrl"], "https://s.example/p");
        assert_eq!(r["pageTitle"], "T");
    }
}
