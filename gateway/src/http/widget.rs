//! The visitor-facing API: `GET /v1/config`, `POST /v1/sessions`, `GET`/`POST
//! /v1/messages`, `POST /v1/events`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use confab_protocol::model::{Contact, QuickQuestion};
use confab_protocol::time::format_ms;
use confab_protocol::token::{self, SessionClaims};
use confab_protocol::validate;
use confab_protocol::{ApiError, ErrorCode};
use confab_store::{NewConversation, ProfileUpdate};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    client_ip, history_body, history_cursor, json_text, limit_and_wait, read_history, sent,
};
use crate::auth::{bearer, verify_session, VisitorSession};
use crate::chat::{check_utm, redact_email, redact_urls, VisitorDraft};
use crate::config::PiiRetention;
use crate::error::{HandlerResult, JsonBody, Params};
use crate::limits::Limit;
use crate::state::{AppState, Tenant};

/// The tenant part of `/v1/config` is recomputed at most this often.
const CONFIG_CACHE_MS: i64 = 60_000;
/// Telemetry types a widget may send.
pub const TELEMETRY_TYPES: [&str; 5] = ["OPEN", "CLOSE", "TYPING", "ERROR", "MESSAGE"];

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
            state.rate_limit_unknown_key(ip).await?;
            Err(ApiError::new(
                ErrorCode::UnknownPublicKey,
                "no widget has this public key",
            ))
        }
    }
}

/// Intents and quick questions as served (a quick question's `intentName` is null unless
/// that intent is configured).
fn widget_lists(t: &Tenant) -> (Value, Value) {
    let intents = serde_json::to_value(&t.cfg.intents).unwrap_or(Value::Array(vec![]));
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
    (
        intents,
        serde_json::to_value(quick).unwrap_or(Value::Array(vec![])),
    )
}

/// The tenant part of the config response, without its closing brace.
fn tenant_config_prefix(t: &Tenant, now_ms: i64) -> String {
    let (intents, quick) = widget_lists(t);
    let c = &t.cfg;
    let body = json!({
        "tenant": {"id": c.id, "name": c.name},
        "branding": {"primaryColor": c.branding.primary_color, "position": c.branding.position,
                     "label": c.branding.label, "logo": c.branding.logo},
        "greeting": c.greeting,
        "isAvailable": t.schedule.is_available(now_ms),
        "availabilityMode": t.schedule.mode.as_str(),
        "intents": intents,
        "quickQuestions": quick,
        "telemetry": {"eventTypes": TELEMETRY_TYPES, "sampleRate": c.telemetry_sample_rate},
        "limits": {"maxMessageLength": c.max_message_length},
        "requireInitChallenge": c.require_init_challenge,
        // The widget waits this long before starting a session (not a secret: a bot can
        // always wait; the point is to make every automated session cost that time).
        "minElapsedMs": c.min_elapsed_ms,
    })
    .to_string();
    body[..body.len() - 1].to_owned()
}

/// `GET /v1/config?pk=`.
pub async fn config(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
) -> HandlerResult<Response> {
    let ip = client_ip(&state, peer, &headers).to_string();
    let tenant = tenant_by_key(
        &state,
        params.get("pk").or(params.get("publicKey")),
        "pk",
        &ip,
    )
    .await?;
    tenant.policy.check(&headers)?;
    state.rate_limit(&tenant, Limit::ConfigPerIp, &ip).await?;
    let now = state.now_ms();
    let cached = state
        .config_cache
        .get(&tenant.cfg.id)
        .filter(|e| now - e.0 < CONFIG_CACHE_MS && now >= e.0)
        .map(|e| e.1.clone());
    let prefix = match cached {
        Some(p) => p,
        None => {
            let p: Arc<str> = tenant_config_prefix(&tenant, now).into();
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
    let body = format!(
        r#"{prefix},"initChallenge":{{"token":"{tok}","expiresAt":"{}"}}}}"#,
        format_ms(claims.expires_ms)
    );
    Ok(json_text(StatusCode::OK, body))
}

#[derive(Deserialize)]
pub struct ContactIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BotSignals {
    #[serde(default)]
    honeypot: Option<Value>,
    #[serde(default)]
    elapsed_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    public_key: Option<String>,
    #[serde(default)]
    init_challenge: Option<String>,
    #[serde(default)]
    visitor_token: Option<String>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default)]
    contact: Option<ContactIn>,
    #[serde(default)]
    visitor_context: Option<Map<String, Value>>,
    #[serde(default)]
    bot_signals: Option<BotSignals>,
    #[serde(default)]
    message: Option<String>,
    /// Idempotency key of `message` (as on `POST /v1/messages`): a resumed visitor's retry
    /// of the same session request stores its first message once.
    #[serde(default)]
    client_message_id: Option<String>,
}

/// Checked and PII-filtered profile fields of a session request.
struct Profile {
    customer_id: Option<String>,
    locale: Option<String>,
    contact: Option<Contact>,
    variables: Option<Map<String, Value>>,
    visitor_context: Option<Map<String, Value>>,
}

fn check_profile(t: &Tenant, b: &mut SessionBody) -> Result<Profile, ApiError> {
    if let Some(c) = &b.customer_id {
        validate::max_chars("customerId", c, validate::MAX_CUSTOMER_ID_CHARS)?;
    }
    if let Some(l) = &b.locale {
        if !validate::is_locale(l) {
            return Err(ApiError::invalid(
                "locale",
                "locale must be a BCP-47 tag of at most 16 characters",
            ));
        }
    }
    if let Some(v) = &b.variables {
        validate::variables(v)?;
    }
    let mut contact = None;
    if let Some(c) = b.contact.take() {
        if let Some(n) = &c.name {
            validate::max_chars("contact.name", n, validate::MAX_CONTACT_NAME_CHARS)?;
        }
        if let Some(e) = &c.email {
            if !validate::is_email(e) {
                return Err(ApiError::invalid(
                    "contact.email",
                    "not a valid e-mail address",
                ));
            }
        }
        contact = Some(Contact {
            name: c.name.filter(|n| !n.trim().is_empty()),
            email: c.email,
        });
    }
    let mut context = None;
    if let Some(ctx) = b.visitor_context.take() {
        let mut out = Map::new();
        for (k, v) in ctx {
            match k.as_str() {
                "utm" => {
                    out.insert(k, Value::Object(check_utm("visitorContext.utm", &v)?));
                }
                "pageUrl" | "referrer" | "pageTitle" => match v {
                    Value::Null => {}
                    Value::String(s) => {
                        validate::max_chars(
                            &format!("visitorContext.{k}"),
                            &s,
                            validate::MAX_CONTEXT_CHARS,
                        )?;
                        out.insert(k, Value::String(s));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!("visitorContext.{k}"),
                            "must be a string",
                        ))
                    }
                },
                _ => {
                    return Err(ApiError::invalid(
                        format!("visitorContext.{k}"),
                        "unknown field (pageUrl, referrer, pageTitle, utm)",
                    ))
                }
            }
        }
        context = Some(out);
    }
    match t.cfg.pii_retention {
        PiiRetention::Full => {}
        PiiRetention::Redact => {
            if let Some(c) = &mut contact {
                c.email = c.email.as_deref().map(redact_email);
            }
            context = context.map(redact_urls);
        }
        PiiRetention::Minimal => {
            contact = None;
            context = None;
        }
    }
    Ok(Profile {
        customer_id: b.customer_id.take(),
        locale: b.locale.take(),
        contact,
        variables: b.variables.take(),
        visitor_context: context,
    })
}

fn check_bot_signals(t: &Tenant, s: Option<&BotSignals>) -> Result<(), ApiError> {
    let bot = || ApiError::new(ErrorCode::BotSuspected, "automated traffic suspected");
    let honeypot_filled = s
        .and_then(|s| s.honeypot.as_ref())
        .is_some_and(|h| match h {
            Value::Null => false,
            Value::String(v) => !v.is_empty(),
            Value::Bool(b) => *b,
            _ => true,
        });
    if honeypot_filled {
        return Err(bot());
    }
    if t.cfg.min_elapsed_ms > 0 {
        match s.and_then(|s| s.elapsed_ms) {
            Some(ms) if ms.is_finite() && ms >= t.cfg.min_elapsed_ms as f64 => {}
            _ => return Err(bot()),
        }
    }
    Ok(())
}

fn invalid_challenge() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidChallenge,
        "init challenge missing, invalid, expired or already used",
    )
}

/// `POST /v1/sessions`: start or resume.
pub async fn sessions(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<SessionBody>,
) -> HandlerResult<Response> {
    let peer_ip = client_ip(&state, peer, &headers);
    let ip = peer_ip.to_string();
    let tenant = tenant_by_key(&state, body.public_key.as_deref(), "publicKey", &ip).await?;
    tenant.policy.check(&headers)?;
    state.rate_limit(&tenant, Limit::SessionsPerIp, &ip).await?;
    let profile = check_profile(&tenant, &mut body)?;
    // The first message takes the path of every visitor message: checked here, admitted
    // against the message limits before anything is claimed or created, stored last.
    let first_message = match body.message.take() {
        Some(m) => Some(VisitorDraft::check(
            &tenant,
            "message",
            &m,
            body.client_message_id.take(),
            None,
        )?),
        None => None,
    };
    check_bot_signals(&tenant, body.bot_signals.as_ref())?;
    let now = state.now_ms();
    let challenge = if tenant.cfg.require_init_challenge {
        let tok = body
            .init_challenge
            .as_deref()
            .ok_or_else(invalid_challenge)?;
        Some(
            token::verify_challenge(&state.keys, tok, &tenant.cfg.id, now)
                .map_err(|_| invalid_challenge())?,
        )
    } else {
        None
    };

    let known = match body
        .visitor_token
        .as_deref()
        .filter(|t| t.starts_with("vis_") && t.len() <= 128)
    {
        Some(t) => state
            .store
            .find_visitor(&tenant.cfg.id, &token::hash_visitor_token(t))
            .await?
            .map(|v| (t.to_owned(), v)),
        None => None,
    };
    if first_message.is_some() {
        let visitor = known.as_ref().map(|(_, v)| v.visitor_id.as_str());
        // A resumed visitor's retry of a message already stored is found after the
        // session exists (below); here a refusal is final.
        state
            .admit_visitor_message(&tenant, visitor, peer_ip, None)
            .await?;
    }
    // Claimed last: a request refused for any other reason leaves the challenge usable.
    if let Some(claims) = &challenge {
        if !state
            .store
            .claim_nonce(&claims.nonce, claims.expires_ms)
            .await?
        {
            return Err(invalid_challenge().into());
        }
    }
    let (visitor_token, conversation, resumed) = match known {
        Some((tok, v)) => {
            let update = ProfileUpdate {
                customer_id: profile.customer_id,
                locale: profile.locale,
                contact: profile.contact,
                variables: profile.variables,
                visitor_context: profile.visitor_context,
            };
            let conv = if update.is_empty() {
                state
                    .store
                    .conversation(&tenant.cfg.id, &v.conversation_id)
                    .await?
            } else {
                state
                    .store
                    .update_profile(&tenant.cfg.id, &v.conversation_id, update)
                    .await?
            };
            match conv {
                Some(c) => (tok, c, true),
                None => {
                    return Err(
                        ApiError::new(ErrorCode::Internal, "visitor without conversation").into(),
                    )
                }
            }
        }
        None => {
            let tok = token::new_visitor_token();
            let conv = state
                .store
                .start_conversation(NewConversation {
                    tenant: tenant.cfg.id.clone(),
                    token_hash: token::hash_visitor_token(&tok),
                    customer_id: profile.customer_id,
                    locale: profile.locale,
                    contact: profile.contact.unwrap_or_default(),
                    variables: profile.variables.unwrap_or_default(),
                    visitor_context: profile.visitor_context.unwrap_or_default(),
                })
                .await?;
            (tok, conv, false)
        }
    };
    let claims = SessionClaims {
        tenant: tenant.cfg.id.clone(),
        visitor_id: conversation.visitor_id.clone(),
        conversation_id: conversation.id.clone(),
        expires_ms: now + state.config.session_ttl_secs as i64 * 1000,
    };
    let session = VisitorSession {
        tenant: tenant.clone(),
        claims: claims.clone(),
    };
    let mut auto_reply = None;
    if let Some(draft) = first_message {
        let appended = state.store_admitted(&session, draft, !resumed).await?;
        if appended.first_in_conversation {
            auto_reply = tenant.cfg.auto_reply.clone();
        }
    }
    let (intents, quick) = widget_lists(&tenant);
    let body = json!({
        "sessionToken": token::sign_session(&state.keys, &claims),
        "visitorToken": visitor_token,
        "visitorId": conversation.visitor_id,
        "conversationId": conversation.id,
        "expiresAt": format_ms(claims.expires_ms),
        "resumed": resumed,
        "widget": {"label": tenant.cfg.branding.label},
        "intents": intents,
        "quickQuestions": quick,
        "autoReply": auto_reply,
    });
    Ok(json_text(StatusCode::CREATED, body.to_string()))
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

/// `GET /v1/messages`: history and the polling fallback.
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> HandlerResult<Response> {
    let session = session_of(&state, &headers, Some(&params))?;
    let (cursor, echo) = history_cursor(&params, &session.claims.conversation_id)?;
    let (limit, wait) = limit_and_wait(&params)?;
    state
        .rate_limit(
            &session.tenant,
            Limit::PollsPerSession,
            &session.claims.visitor_id,
        )
        .await?;
    let page = read_history(
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
        history_body(&page, &session.claims.conversation_id, echo),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendBody {
    message: String,
    #[serde(default)]
    client_message_id: Option<String>,
    #[serde(default)]
    meta: Option<Value>,
    /// Legacy clients (seed 000) put the token in the body.
    #[serde(default)]
    session_token: Option<String>,
}

/// `POST /v1/messages`: a visitor sends. 201 when stored, 200 for a duplicate.
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
    let ip = client_ip(&state, peer, &headers);
    let a = state
        .send_visitor_message(
            &session,
            ip,
            &body.message,
            body.client_message_id,
            body.meta,
        )
        .await?;
    Ok(sent(&a))
}

#[derive(Deserialize)]
pub struct EventBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /v1/events`: widget telemetry. `TYPING` is forwarded to the agents.
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
    state
        .rate_limit(
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
        state.visitor_typing(&session).await;
    }
    Ok(json_text(
        StatusCode::ACCEPTED,
        json!({"accepted": true, "sampled": sampled, "sampleRate": rate}).to_string(),
    ))
}
