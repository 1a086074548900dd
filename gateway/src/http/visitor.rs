//! The visitor-facing API: `GET /v1/config`, `POST /v1/sessions`, `GET`/`POST
//! /v1/messages`, `POST /v1/events`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use confab_protocol::model::{Handler, Intent, QuickQuestion};
use confab_protocol::time::format_ms;
use confab_protocol::token;
use confab_protocol::validate;
use confab_protocol::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[allow(unused_imports)] // the `#[utoipa::path]` annotations name them
use super::openapi::{
    ConfigQuery, HistoryQuery, InvalidJson, InvalidSession, OriginNotAllowed, PayloadTooLarge,
    RateLimited, SessionTokenQuery, StoreUnavailable, ValidationFailed,
};
use super::{history_body, history_cursor, json_text, limit_and_wait, sent};
#[allow(unused_imports)]
use super::{MessagesPage, Sent};
use crate::auth::{bearer, verify_session, VisitorSession};
use crate::config::AvailabilityMode;
use crate::error::{HandlerResult, JsonBody, Params};
use crate::policy::limits::Limit;
use crate::service;
use crate::service::sessions::{self, StartSession};
use crate::settings::Tenant;
use crate::state::AppState;
#[allow(unused_imports)]
use confab_protocol::ErrorBody;

/// The tenant part of `/v1/config` is recomputed at most this often.
const CONFIG_CACHE_MS: i64 = 60_000;
/// Telemetry types a widget may send.
pub const TELEMETRY_TYPES: [&str; 5] = ["OPEN", "CLOSE", "TYPING", "ERROR", "MESSAGE"];

/// A telemetry event type (the strings of [`TELEMETRY_TYPES`]).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TelemetryType {
    Open,
    Close,
    Typing,
    Error,
    Message,
}

/// `GET /v1/config`: what the widget needs before the visitor types.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetConfig {
    #[serde(flatten)]
    pub tenant: TenantConfig,
    /// Fresh on every response; its `token` goes into `POST /v1/sessions`.
    pub init_challenge: InitChallenge,
}

/// The tenant part of [`WidgetConfig`], computed at most once per 60 s per tenant.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantConfig {
    pub tenant: TenantName,
    pub branding: Branding,
    pub greeting: String,
    /// Whether the team answers now: the tenant's availability mode and hours and, with
    /// `require_agent`, an agent online. Visitor sockets get an `availability` frame when
    /// it changes.
    pub is_available: bool,
    pub availability_mode: AvailabilityMode,
    pub intents: Vec<Intent>,
    /// A quick question's `intentName` is null unless that intent is configured.
    pub quick_questions: Vec<QuickQuestion>,
    pub telemetry: Telemetry,
    pub limits: WidgetLimits,
    /// Whether `POST /v1/sessions` needs `initChallenge` (an addition to the SPEC).
    pub require_init_challenge: bool,
    /// The widget waits this long before starting a session; `botSignals.elapsedMs` below
    /// it is a bot (an addition to the SPEC; 0: no check).
    pub min_elapsed_ms: u64,
    /// The tenant's default assistant, when it answers now (else null).
    pub assistant: Option<AssistantInfo>,
}

/// The assistant a new conversation gets, as the widget shows it.
#[derive(Serialize, ToSchema)]
pub struct AssistantInfo {
    pub id: String,
    pub name: String,
    /// It has a phone number: `POST /v1/voice` works.
    pub voice: bool,
}

/// The tenant's id and display name.
#[derive(Serialize, ToSchema)]
pub struct TenantName {
    pub id: String,
    pub name: String,
}

/// How the widget looks.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Branding {
    /// `#RRGGBB`.
    #[schema(example = "#10A37F")]
    pub primary_color: String,
    /// `bottom-right` or `bottom-left`.
    #[schema(example = "bottom-right")]
    pub position: String,
    pub label: String,
    /// A logo URL, or null.
    pub logo: Option<String>,
}

/// Widget telemetry settings (`POST /v1/events`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    #[schema(value_type = Vec<TelemetryType>)]
    pub event_types: [&'static str; 5],
    /// Share of events counted, 0–1.
    pub sample_rate: f64,
}

/// Limits the widget enforces before sending.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetLimits {
    /// In Unicode characters.
    pub max_message_length: usize,
    /// The largest file `POST /v1/attachments` accepts, in bytes (the tenant's
    /// `attachments.max_bytes`).
    pub max_attachment_bytes: u64,
    /// The types (as sniffed from the bytes) an upload may have (the tenant's
    /// `attachments.allowed_types`).
    pub attachment_types: Vec<String>,
}

/// A signed, single-use init challenge.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitChallenge {
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// The tenant of a public key. An unknown (well-formed) key costs the client IP a unit of
/// its config allowance: guessing keys is rate limited like fetching configs.
async fn tenant_by_key(
    state: &AppState,
    pk: Option<&str>,
    field: &str,
    ip: &str,
) -> Result<Arc<Tenant>, ApiError> {
    let pk = pk
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))?;
    if !validate::is_public_key(pk) {
        return Err(ApiError::invalid(
            field,
            "public key must match ^pk_live_[a-f0-9]{32}$",
        ));
    }
    match state.tenants.by_public_key(pk) {
        Some(t) => Ok(t.clone()),
        None => {
            crate::service::limits::charge_unknown_key(state, ip).await?;
            Err(ApiError::new(
                ErrorCode::UnknownPublicKey,
                "no widget has this public key",
            ))
        }
    }
}

/// Intents and quick questions as served (a quick question's `intentName` is null unless
/// that intent is configured).
fn widget_lists(t: &Tenant) -> (Vec<Intent>, Vec<QuickQuestion>) {
    let intents = t.cfg.intents.clone();
    let quick: Vec<QuickQuestion> = t
        .cfg
        .quick_questions
        .iter()
        .cloned()
        .map(|mut q| {
            if !q
                .intent_name
                .as_ref()
                .is_some_and(|n| t.cfg.intents.iter().any(|i| &i.name == n))
            {
                q.intent_name = None;
            }
            q
        })
        .collect();
    (intents, quick)
}

/// The tenant part of the config response.
fn tenant_config(t: &Tenant, is_available: bool) -> TenantConfig {
    let (intents, quick_questions) = widget_lists(t);
    let c = &t.cfg;
    TenantConfig {
        tenant: TenantName {
            id: c.id.clone(),
            name: c.name.clone(),
        },
        branding: Branding {
            primary_color: c.branding.primary_color.clone(),
            position: c.branding.position.clone(),
            label: c.branding.label.clone(),
            logo: c.branding.logo.clone(),
        },
        greeting: c.greeting.clone(),
        is_available,
        availability_mode: t.schedule.mode,
        intents,
        quick_questions,
        telemetry: Telemetry {
            event_types: TELEMETRY_TYPES,
            sample_rate: c.telemetry_sample_rate,
        },
        limits: WidgetLimits {
            max_message_length: c.max_message_length,
            max_attachment_bytes: c.attachments.max_bytes,
            attachment_types: c.attachments.allowed_types.clone(),
        },
        require_init_challenge: c.require_init_challenge,
        // Not a secret: a bot can always wait; the point is to make every automated
        // session cost that time.
        min_elapsed_ms: c.min_elapsed_ms,
        assistant: t
            .default_assistant()
            .filter(|a| crate::service::assistants::answers_now(a, is_available))
            .map(|a| AssistantInfo {
                id: a.cfg.id.clone(),
                name: a.cfg.name.clone(),
                voice: a.cfg.phone_number.is_some(),
            }),
    }
}

/// The tenant part of the config response encoded, without its closing brace: each
/// response appends its own challenge (what `WidgetConfig`'s `flatten` would write).
fn tenant_config_prefix(t: &Tenant, is_available: bool) -> String {
    prefix_of(&tenant_config(t, is_available))
}

fn prefix_of(c: &TenantConfig) -> String {
    let body = serde_json::to_string(c).unwrap_or_else(|_| "{}".into());
    body[..body.len() - 1].to_owned()
}

/// The whole config body from the cached prefix.
fn config_body(prefix: &str, challenge: &InitChallenge) -> String {
    let challenge = serde_json::to_string(challenge).unwrap_or_else(|_| "null".into());
    format!(r#"{prefix},"initChallenge":{challenge}}}"#)
}

/// `GET /v1/config?pk=`: the widget's bootstrap — branding, availability, intents, and a
/// fresh single-use init challenge.
#[utoipa::path(
    get,
    path = "/v1/config",
    operation_id = "getConfig",
    tag = "widget",
    params(ConfigQuery),
    responses(
        (status = 200, description = "The widget's configuration.", body = WidgetConfig,
            links(("startSession" = (
                operation_id = "startSession",
                request_body = json!({
                    "publicKey": "$request.query.pk",
                    "initChallenge": "$response.body#/initChallenge/token",
                }),
                description = "Start a session with this answer's challenge.",
            )))),
        (status = 403, response = OriginNotAllowed),
        (status = 404, description = "`unknown_public_key`: no widget has this key.", body = ErrorBody),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
    ),
)]
pub async fn config(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
) -> HandlerResult<Response> {
    let ip = state.client_ip(peer, &headers).to_string();
    let tenant = tenant_by_key(
        &state,
        params.get("pk").or(params.get("publicKey")),
        "pk",
        &ip,
    )
    .await?;
    tenant.policy.check(&headers)?;
    crate::service::limits::charge(&state, &tenant, Limit::ConfigPerIp, &ip).await?;
    let now = state.now_ms();
    let cached = state
        .config_cache
        .get(&tenant.cfg.id)
        .filter(|e| now - e.0 < CONFIG_CACHE_MS && now >= e.0)
        .map(|e| e.1.clone());
    let prefix = match cached {
        Some(p) => p,
        None => {
            let available = crate::service::presence::is_available(&state, &tenant);
            let p: Arc<str> = tenant_config_prefix(&tenant, available).into();
            state
                .config_cache
                .insert(tenant.cfg.id.clone(), (now, p.clone()));
            p
        }
    };
    let (tok, claims) = token::issue_challenge(
        &state.keys,
        &tenant.cfg.id,
        now,
        state.config.challenge_ttl_secs as i64 * 1000,
    );
    let challenge = InitChallenge {
        token: tok,
        expires_at: format_ms(claims.expires_ms),
    };
    Ok(json_text(StatusCode::OK, config_body(&prefix, &challenge)))
}

/// Contact details (the widget's contact form).
#[derive(Deserialize, ToSchema)]
#[schema(as = ContactInput)]
pub struct ContactIn {
    /// At most 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    name: Option<String>,
    /// A valid e-mail address.
    #[serde(default)]
    #[schema(example = "jane@example.com")]
    email: Option<String>,
}

/// What the widget observed about the page, to tell people from bots.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotSignals {
    /// A hidden form field: anything but empty, `false` or null is a bot (403 `bot_suspected`).
    #[serde(default)]
    honeypot: Option<Value>,
    /// How long the page was open before the session started; missing or below the
    /// tenant's `minElapsedMs` is a bot (403 `bot_suspected`).
    #[serde(default)]
    #[schema(example = 1500)]
    elapsed_ms: Option<f64>,
}

/// `POST /v1/sessions`: start a conversation, or resume the visitor's.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    /// The tenant's widget key.
    #[schema(value_type = String, required = true, pattern = r"^pk_live_[a-f0-9]{32}$",
        example = "pk_live_0123456789abcdef0123456789abcdef")]
    public_key: Option<String>,
    /// The `initChallenge.token` of a `GET /v1/config` answer; single use. Required unless
    /// the tenant's `requireInitChallenge` is false.
    #[serde(default)]
    init_challenge: Option<String>,
    /// The token this browser was given before: resumes that visitor and conversation.
    /// Unknown tokens start a new visitor (no error).
    #[serde(default)]
    visitor_token: Option<String>,
    /// The tenant's own id for this visitor.
    #[serde(default)]
    #[schema(max_length = 100)]
    customer_id: Option<String>,
    /// A BCP-47 language tag.
    #[serde(default)]
    #[schema(max_length = 16, example = "en-US")]
    locale: Option<String>,
    /// At most 50 keys matching `^[a-z][a-z0-9_]{0,63}$`, at most 4096 bytes encoded;
    /// values are scalars, null, or arrays nested at most 4 deep (no objects).
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default)]
    contact: Option<ContactIn>,
    /// `pageUrl`, `referrer`, `pageTitle` (strings, at most 2048 characters) and `utm`
    /// (`source`, `medium`, `campaign`, `term`, `content`); other keys are refused.
    #[serde(default)]
    visitor_context: Option<Map<String, Value>>,
    #[serde(default)]
    bot_signals: Option<BotSignals>,
    /// An optional first message, 1–10,000 characters after trimming.
    #[serde(default)]
    #[schema(max_length = 10000)]
    message: Option<String>,
    /// Idempotency key of `message` (as on `POST /v1/messages`): a resumed visitor's retry
    /// of the same session request stores its first message once.
    #[serde(default)]
    #[schema(max_length = 64)]
    client_message_id: Option<String>,
    /// The assistant that answers a new conversation (one of the tenant's
    /// `[[tenants.assistants]]` ids; unknown: 422); default: the tenant's first.
    #[serde(default)]
    #[schema(max_length = 64, example = "ava")]
    assistant_id: Option<String>,
}

/// The answer to `POST /v1/sessions` (201, also when resumed).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStarted {
    /// The visitor's credential for the API and the visitor channel; expires at `expiresAt`.
    pub session_token: String,
    /// Keep it (localStorage) to resume this visitor later; never shown to agents.
    #[schema(example = "vis_3q2-7wErYmTqhcP4A8sS0w")]
    pub visitor_token: String,
    /// What agents see of the visitor.
    pub visitor_id: String,
    #[schema(format = "uuid")]
    pub conversation_id: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// True when `visitorToken` resumed a known visitor.
    pub resumed: bool,
    pub widget: WidgetLabel,
    pub intents: Vec<Intent>,
    pub quick_questions: Vec<QuickQuestion>,
    /// The tenant's automatic reply, when the first `message` triggered it.
    pub auto_reply: Option<String>,
    /// The assistant of the conversation, if any.
    pub assistant_id: Option<String>,
    /// Who answers now: `bot` (the assistant) or `human`.
    pub handler: Handler,
}

/// The widget's launcher label.
#[derive(Serialize, ToSchema)]
pub struct WidgetLabel {
    pub label: String,
}

/// `POST /v1/sessions`: start a conversation, or resume the one of a known `visitorToken`
/// (both 201). Starting one emits `conversation:new` to the tenant's agents.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "startSession",
    tag = "widget",
    request_body = SessionBody,
    responses(
        (status = 201, description = "A session: started, or resumed (`resumed: true`).", body = SessionStarted,
            links(
                ("sendMessage" = (
                    operation_id = "sendMessage",
                    parameters(("query.sessionToken" = "$response.body#/sessionToken")),
                    description = "The visitor writes in this conversation.",
                )),
                ("listMessages" = (
                    operation_id = "listMessages",
                    parameters(("query.sessionToken" = "$response.body#/sessionToken")),
                    description = "The conversation's history.",
                )),
                ("getConversation" = (
                    operation_id = "getConversation",
                    parameters(("path.id" = "$response.body#/conversationId")),
                    description = "The conversation, as the tenant sees it.",
                )),
                ("replyToConversation" = (
                    operation_id = "replyToConversation",
                    parameters(("path.id" = "$response.body#/conversationId")),
                    description = "An agent answers.",
                )),
                ("listConversationMessages" = (
                    operation_id = "listConversationMessages",
                    parameters(("path.id" = "$response.body#/conversationId")),
                    description = "The history, as the tenant sees it.",
                )),
                ("closeConversation" = (
                    operation_id = "closeConversation",
                    parameters(("path.id" = "$response.body#/conversationId")),
                )),
                ("reopenConversation" = (
                    operation_id = "reopenConversation",
                    parameters(("path.id" = "$response.body#/conversationId")),
                )),
            )),
        (status = 400, response = InvalidJson),
        (status = 403, description = "`invalid_challenge` (missing, malformed, expired, reused or another \
tenant's), `bot_suspected` (honeypot filled, `elapsedMs` missing or too small) or `origin_not_allowed`.", body = ErrorBody),
        (status = 404, description = "`unknown_public_key`: no widget has this key.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn sessions(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SessionBody>,
) -> HandlerResult<Response> {
    let ip = state.client_ip(peer, &headers);
    let tenant = tenant_by_key(
        &state,
        body.public_key.as_deref(),
        "publicKey",
        &ip.to_string(),
    )
    .await?;
    tenant.policy.check(&headers)?;
    let contact = body.contact.map(|c| (c.name, c.email));
    let (honeypot, elapsed_ms) = body
        .bot_signals
        .map_or((None, None), |b| (b.honeypot, b.elapsed_ms));
    let request = StartSession {
        init_challenge: body.init_challenge,
        visitor_token: body.visitor_token,
        customer_id: body.customer_id,
        locale: body.locale,
        variables: body.variables,
        contact,
        visitor_context: body.visitor_context,
        honeypot,
        elapsed_ms,
        message: body.message,
        client_message_id: body.client_message_id,
        assistant_id: body.assistant_id,
    };
    let started = sessions::start(&state, &tenant, ip, request).await?;
    let (intents, quick_questions) = widget_lists(&tenant);
    let body = SessionStarted {
        session_token: started.session_token,
        visitor_token: started.visitor_token,
        visitor_id: started.conversation.visitor_id,
        conversation_id: started.conversation.id,
        expires_at: format_ms(started.expires_ms),
        resumed: started.resumed,
        widget: WidgetLabel {
            label: tenant.cfg.branding.label.clone(),
        },
        intents,
        quick_questions,
        auto_reply: started.auto_reply,
        assistant_id: started.conversation.assistant_id,
        handler: started.conversation.handler,
    };
    Ok(json_text(
        StatusCode::CREATED,
        serde_json::to_string(&body).unwrap_or_default(),
    ))
}

/// The session of a visitor route: `Authorization: Bearer`, or `?sessionToken=`.
fn session_of(
    state: &AppState,
    headers: &HeaderMap,
    params: Option<&Params>,
) -> Result<VisitorSession, ApiError> {
    let token = bearer(headers).or_else(|| params.and_then(|p| p.get("sessionToken")));
    let session = verify_session(state, token)?;
    session.tenant.policy.check(headers)?;
    Ok(session)
}

/// `GET /v1/messages`: the conversation's history, oldest first (or after a cursor), and the
/// polling fallback of the visitor channel (`wait`).
#[utoipa::path(
    get,
    path = "/v1/messages",
    operation_id = "listMessages",
    tag = "widget",
    params(HistoryQuery, SessionTokenQuery),
    security(("visitorSession" = [])),
    responses(
        (status = 200, description = "A page of messages in conversation order.", body = MessagesPage),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> HandlerResult<Response> {
    let session = session_of(&state, &headers, Some(&params))?;
    let (cursor, echo) = history_cursor(&params, &session.claims.conversation_id)?;
    let (limit, wait) = limit_and_wait(&params)?;
    crate::service::limits::charge(
        &state,
        &session.tenant,
        Limit::PollsPerSession,
        &session.claims.visitor_id,
    )
    .await?;
    let page = service::visitor::history(
        &state,
        &session.tenant.cfg.id,
        &session.claims.conversation_id,
        cursor,
        limit,
        wait,
    )
    .await?;
    Ok(json_text(
        StatusCode::OK,
        history_body(&page, &session.claims.conversation_id, echo, |j| {
            state
                .attachments
                .links
                .message_json(&session.tenant.cfg.id, j)
        }),
    ))
}

/// `POST /v1/messages`: a visitor's message.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendBody {
    /// 1–10,000 characters (the tenant's `maxMessageLength`) after trimming whitespace
    /// and zero-width characters; may be empty (or left out) when `attachments` is not.
    #[serde(default)]
    #[schema(max_length = 10000, example = "Hi! Where is my invoice?")]
    message: String,
    /// Up to 10 ids of files uploaded in this conversation (`POST /v1/attachments`) and
    /// not sent yet.
    #[serde(default)]
    #[schema(max_items = 10)]
    attachments: Vec<String>,
    /// Idempotency key, at most 64 characters: the same key again in this conversation
    /// answers 200 with the first message's id and stores nothing.
    #[serde(default)]
    #[schema(max_length = 64, example = "c-1")]
    client_message_id: Option<String>,
    /// Page metadata: `pageUrl`, `referrer`, `locale`, `pageTitle`, `origin`, `utm`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// Legacy clients (seed 000) put the session token in the body.
    #[serde(default)]
    session_token: Option<String>,
    /// The `name` of one of the tenant's intents (seed 004): stored on the message and
    /// passed to the assistant; anything else is 422.
    #[serde(default)]
    #[schema(example = "billing")]
    intent: Option<String>,
    /// Answer only once the assistant's reply is stored (at most its `timeout_secs` + 5 s),
    /// with it as `reply` (seed 003's synchronous chat).
    #[serde(default)]
    await_reply: bool,
}

/// `POST /v1/messages`: the visitor sends. The answer comes once the message is durably
/// stored; it reopens a closed conversation.
#[utoipa::path(
    post,
    path = "/v1/messages",
    operation_id = "sendMessage",
    tag = "widget",
    params(SessionTokenQuery),
    request_body = SendBody,
    security(("visitorSession" = [])),
    responses(
        (status = 201, description = "Stored.", body = Sent,
            links(("listMessagesAfter" = (
                operation_id = "listMessages",
                parameters(("query.after" = "$response.body#/messageId")),
                description = "What was written after this message (same credential).",
            )))),
        (status = 200, description = "A duplicate `clientMessageId`: nothing stored; the first message's id.", body = Sent),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn send(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
    JsonBody(body): JsonBody<SendBody>,
) -> HandlerResult<Response> {
    let token = bearer(&headers)
        .or(params.get("sessionToken"))
        .or(body.session_token.as_deref());
    let session = verify_session(&state, token)?;
    session.tenant.policy.check(&headers)?;
    let ip = state.client_ip(peer, &headers);
    let a = service::visitor::send(
        &state,
        &session,
        ip,
        &body.message,
        body.client_message_id,
        body.meta,
        body.intent,
        &body.attachments,
    )
    .await?;
    if body.await_reply {
        let reply = service::visitor::await_reply(&state, &session, &a).await?;
        return Ok(crate::http::sent_with(&a, Some(reply)));
    }
    Ok(sent(&a))
}

/// `POST /v1/events`: one widget telemetry event.
#[derive(Deserialize, ToSchema)]
pub struct EventBody {
    #[serde(rename = "type")]
    #[schema(value_type = TelemetryType)]
    kind: String,
    /// Free-form details.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// The answer to `POST /v1/events` (202).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventAccepted {
    pub accepted: bool,
    /// Whether this event was counted (the tenant's sample rate).
    pub sampled: bool,
    pub sample_rate: f64,
}

/// `POST /v1/events`: widget telemetry, counted at the tenant's sample rate; `TYPING` is
/// always forwarded to the agents as a `typing` event.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "sendTelemetry",
    tag = "widget",
    request_body = EventBody,
    security(("visitorSession" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EventAccepted),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EventBody>,
) -> HandlerResult<Response> {
    let session = session_of(&state, &headers, None)?;
    let Some(kind) = TELEMETRY_TYPES.iter().copied().find(|t| *t == body.kind) else {
        return Err(ApiError::invalid(
            "type",
            format!("type must be one of {}", TELEMETRY_TYPES.join(", ")),
        )
        .into());
    };
    if !matches!(body.data, None | Some(Value::Object(_)) | Some(Value::Null)) {
        return Err(ApiError::invalid("data", "data must be an object").into());
    }
    crate::service::limits::charge(
        &state,
        &session.tenant,
        Limit::EventsPerSession,
        &session.claims.visitor_id,
    )
    .await?;
    let rate = session.tenant.cfg.telemetry_sample_rate;
    let sampled = rate >= 1.0 || rand::random::<f64>() < rate;
    if sampled {
        state.metrics.widget_event(kind);
    }
    if kind == "TYPING" {
        service::visitor::typing(&state, &session).await;
    }
    let body = EventAccepted {
        accepted: true,
        sampled,
        sample_rate: rate,
    };
    Ok(json_text(
        StatusCode::ACCEPTED,
        serde_json::to_string(&body).unwrap_or_default(),
    ))
}

/// `POST /v1/read` and `POST /v1/tenant/conversations/{id}/read`: read up to a message.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadBody {
    /// A message of the conversation. Cursors only move forward: an older id is accepted
    /// and changes nothing.
    #[schema(example = "msg_2a3f0c9e8b7d4e1fa0b1c2d3e4f5a6b7_12")]
    pub message_id: String,
}

/// `POST /v1/read`: the visitor has read the conversation up to `messageId` (read
/// receipts). Emits `conversation:read` to the agents and the visitor's other tabs when
/// the cursor moved.
#[utoipa::path(
    post,
    path = "/v1/read",
    operation_id = "markReadByVisitor",
    tag = "widget",
    request_body = ReadBody,
    security(("visitorSession" = [])),
    responses(
        (status = 200, description = "The conversation with its read cursors.", body = confab_protocol::model::Conversation),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ReadBody>,
) -> HandlerResult<Response> {
    let session = session_of(&state, &headers, None)?;
    let conv = service::visitor::mark_read(&state, &session, &body.message_id).await?;
    Ok(crate::http::json_ok(&conv))
}

/// `POST /v1/handoff`: the visitor asks for a person.
#[utoipa::path(
    post,
    path = "/v1/handoff",
    operation_id = "handoff",
    tag = "widget",
    security(("visitorSession" = [])),
    responses(
        (status = 200, description = "The conversation, with `handler: \"human\"`; emits `conversation:updated` when it changed.", body = confab_protocol::model::Conversation),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn handoff(State(state): State<AppState>, headers: HeaderMap) -> HandlerResult<Response> {
    let session = session_of(&state, &headers, None)?;
    let conv = service::visitor::handoff(&state, &session).await?;
    Ok(crate::http::json_ok(&conv))
}

/// `POST /v1/voice`: which assistant's number to call.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VoiceBody {
    /// One of the tenant's assistants; default: the conversation's.
    #[serde(default)]
    #[schema(example = "ava")]
    pub assistant_id: Option<String>,
}

/// `POST /v1/voice`: the visitor wants to call the assistant (seed 003's voice start);
/// emits the tenant event `voice:requested`.
#[utoipa::path(
    post,
    path = "/v1/voice",
    operation_id = "startVoice",
    tag = "widget",
    request_body = VoiceBody,
    security(("visitorSession" = [])),
    responses(
        (status = 201, description = "The number to call.", body = service::visitor::VoiceCall),
        (status = 400, response = InvalidJson),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 404, description = "`voice_unavailable`: that assistant has no phone number.", body = confab_protocol::ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn voice(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<VoiceBody>,
) -> HandlerResult<Response> {
    let session = session_of(&state, &headers, None)?;
    let call = service::visitor::voice(&state, &session, body.assistant_id.as_deref()).await?;
    Ok(json_text(
        StatusCode::CREATED,
        serde_json::to_string(&call).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spliced config body is what `WidgetConfig` (the documented type) encodes to.
    #[test]
    fn config_body_is_a_widget_config() {
        let tenant = || TenantConfig {
            tenant: TenantName {
                id: "demo".into(),
                name: "Demo \"Inc\"".into(),
            },
            branding: Branding {
                primary_color: "#10A37F".into(),
                position: "bottom-right".into(),
                label: "Chat".into(),
                logo: None,
            },
            greeting: "Hi".into(),
            is_available: true,
            availability_mode: AvailabilityMode::BusinessHours,
            intents: vec![],
            quick_questions: vec![],
            telemetry: Telemetry {
                event_types: TELEMETRY_TYPES,
                sample_rate: 0.5,
            },
            limits: WidgetLimits {
                max_message_length: 10_000,
                max_attachment_bytes: 1024,
                attachment_types: vec!["image/png".into()],
            },
            require_init_challenge: true,
            min_elapsed_ms: 800,
            assistant: None,
        };
        let challenge = || InitChallenge {
            token: "c1.abc".into(),
            expires_at: "2026-11-22T10:00:00.123Z".into(),
        };
        let spliced: Value =
            serde_json::from_str(&config_body(&prefix_of(&tenant()), &challenge())).unwrap();
        let typed = serde_json::to_value(WidgetConfig {
            tenant: tenant(),
            init_challenge: challenge(),
        })
        .unwrap();
        assert_eq!(spliced, typed);
        assert_eq!(spliced["availabilityMode"], "business_hours");
        assert_eq!(spliced["initChallenge"]["token"], "c1.abc");
    }
}
