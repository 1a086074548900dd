//! Starting and resuming visitor sessions (`POST /v1/sessions`): the sessions-per-IP
//! limit, profile rules and the tenant's PII policy, bot signals, the single-use init
//! challenge, resuming a known visitor or starting a conversation, and the session's
//! first message — which takes the path of every visitor message ([`VisitorDraft`]).
//!
//! Order matters: everything that can refuse a request runs before the challenge is
//! claimed and anything is created, so a refused request leaves its challenge usable and
//! stores nothing.

use std::net::IpAddr;
use std::sync::Arc;

use confab_protocol::model::{Contact, Conversation, Handler};
use confab_protocol::token::{self, SessionClaims};
use confab_protocol::validate;
use confab_protocol::{ApiError, ErrorCode};
use confab_store::{NewConversation, ProfileUpdate};
use serde_json::{Map, Value};

use super::visitor::{self, check_page_context, redact_email, redact_urls, VisitorDraft};
use crate::auth::VisitorSession;
use crate::config::PiiRetention;
use crate::error::store_error;
use crate::policy::limits::Limit;
use crate::settings::Tenant;
use crate::state::AppState;

/// What a session request asks for, as the transport read it (shapes checked, rules not
/// yet).
pub struct StartSession {
    pub init_challenge: Option<String>,
    pub visitor_token: Option<String>,
    pub customer_id: Option<String>,
    pub locale: Option<String>,
    pub variables: Option<Map<String, Value>>,
    /// `(name, email)`.
    pub contact: Option<(Option<String>, Option<String>)>,
    pub visitor_context: Option<Map<String, Value>>,
    pub honeypot: Option<Value>,
    pub elapsed_ms: Option<f64>,
    /// An optional first message and its idempotency key.
    pub message: Option<String>,
    pub client_message_id: Option<String>,
    /// The assistant that should answer a new conversation (else the tenant's first).
    pub assistant_id: Option<String>,
}

/// A started or resumed session.
pub struct Started {
    pub session_token: String,
    pub visitor_token: String,
    pub conversation: Conversation,
    pub expires_ms: i64,
    pub resumed: bool,
    /// The tenant's automatic reply, when the first message triggered it.
    pub auto_reply: Option<String>,
}

/// Checked and PII-filtered profile fields of a session request.
struct Profile {
    customer_id: Option<String>,
    locale: Option<String>,
    contact: Option<Contact>,
    variables: Option<Map<String, Value>>,
    visitor_context: Option<Map<String, Value>>,
}

fn check_profile(t: &Tenant, r: &mut StartSession) -> Result<Profile, ApiError> {
    if let Some(c) = &r.customer_id {
        validate::max_chars("customerId", c, validate::MAX_CUSTOMER_ID_CHARS)?;
    }
    if let Some(l) = &r.locale {
        if !validate::is_locale(l) {
            return Err(ApiError::invalid(
                "locale",
                "locale must be a BCP-47 tag of at most 16 characters",
            ));
        }
    }
    if let Some(v) = &r.variables {
        validate::variables(v)?;
    }
    let mut contact = None;
    if let Some((name, email)) = r.contact.take() {
        if let Some(n) = &name {
            validate::max_chars("contact.name", n, validate::MAX_CONTACT_NAME_CHARS)?;
        }
        if let Some(e) = &email {
            if !validate::is_email(e) {
                return Err(ApiError::invalid(
                    "contact.email",
                    "not a valid e-mail address",
                ));
            }
        }
        contact = Some(Contact {
            name: name.filter(|n| !n.trim().is_empty()),
            email,
        });
    }
    let mut context = match r.visitor_context.take() {
        Some(ctx) => Some(check_page_context(
            "visitorContext",
            Value::Object(ctx),
            &["pageUrl", "referrer", "pageTitle", "utm"],
        )?),
        None => None,
    };
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
        customer_id: r.customer_id.take(),
        locale: r.locale.take(),
        contact,
        variables: r.variables.take(),
        visitor_context: context,
    })
}

fn check_bot_signals(t: &Tenant, r: &StartSession) -> Result<(), ApiError> {
    let bot = || ApiError::new(ErrorCode::BotSuspected, "automated traffic suspected");
    let honeypot_filled = r.honeypot.as_ref().is_some_and(|h| match h {
        Value::Null => false,
        Value::String(v) => !v.is_empty(),
        Value::Bool(b) => *b,
        _ => true,
    });
    if honeypot_filled {
        return Err(bot());
    }
    if t.cfg.min_elapsed_ms > 0 {
        match r.elapsed_ms {
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

/// Starts a session, or resumes the visitor of a known `visitor_token` (see the module
/// doc for the order of checks). Starting one emits `conversation:new` (the store does).
pub async fn start(
    state: &AppState,
    tenant: &Arc<Tenant>,
    ip: IpAddr,
    mut r: StartSession,
) -> Result<Started, ApiError> {
    crate::service::limits::charge(state, tenant, Limit::SessionsPerIp, &ip.to_string()).await?;
    let profile = check_profile(tenant, &mut r)?;
    // The first message takes the path of every visitor message: checked here, admitted
    // against the message limits before anything is claimed or created, stored last.
    let first_message = match r.message.take() {
        Some(m) => Some(VisitorDraft::check(
            tenant,
            "message",
            &m,
            r.client_message_id.take(),
            None,
            None,
            false,
        )?),
        None => None,
    };
    let assistant = match r.assistant_id.as_deref() {
        Some(id) => Some(tenant.assistant(id).ok_or_else(|| {
            ApiError::invalid("assistantId", "not one of the tenant's assistants")
        })?),
        None => tenant.default_assistant(),
    };
    check_bot_signals(tenant, &r)?;
    let now = state.now_ms();
    let challenge = if tenant.cfg.require_init_challenge {
        let tok = r.init_challenge.as_deref().ok_or_else(invalid_challenge)?;
        Some(
            token::verify_challenge(&state.keys, tok, &tenant.cfg.id, now)
                .map_err(|_| invalid_challenge())?,
        )
    } else {
        None
    };

    let known = match r
        .visitor_token
        .as_deref()
        .filter(|t| t.starts_with("vis_") && t.len() <= 128)
    {
        Some(t) => state
            .store
            .find_visitor(&tenant.cfg.id, &token::hash_visitor_token(t))
            .await
            .map_err(store_error)?
            .map(|v| (t.to_owned(), v)),
        None => None,
    };
    if first_message.is_some() {
        let visitor = known.as_ref().map(|(_, v)| v.visitor_id.as_str());
        // A resumed visitor's retry of a message already stored is found after the
        // session exists (below); here a refusal is final.
        visitor::admit(state, tenant, visitor, ip).await?;
    }
    // Claimed last: a request refused for any other reason leaves the challenge usable.
    if let Some(claims) = &challenge {
        if !state
            .store
            .claim_nonce(&claims.nonce, claims.expires_ms)
            .await
            .map_err(store_error)?
        {
            return Err(invalid_challenge());
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
                    .await
            } else {
                state
                    .store
                    .update_profile(&tenant.cfg.id, &v.conversation_id, update)
                    .await
            };
            match conv.map_err(store_error)? {
                Some(c) => (tok, c, true),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        "visitor without conversation",
                    ))
                }
            }
        }
        None => {
            let tok = token::new_visitor_token();
            let bot = assistant.is_some_and(|a| {
                crate::service::assistants::answers_now(
                    a,
                    crate::service::presence::is_available(state, tenant),
                )
            });
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
                    assistant_id: assistant.map(|a| a.cfg.id.clone()),
                    handler: if bot { Handler::Bot } else { Handler::Human },
                })
                .await
                .map_err(store_error)?;
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
        let appended = visitor::store_admitted(state, &session, draft, !resumed).await?;
        if appended.first_in_conversation && !appended.reply_owed {
            auto_reply = tenant.cfg.auto_reply.clone();
        }
    }
    Ok(Started {
        session_token: token::sign_session(&state.keys, &claims),
        visitor_token,
        conversation,
        expires_ms: claims.expires_ms,
        resumed,
        auto_reply,
    })
}
