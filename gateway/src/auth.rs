//! Who is calling: visitors (signed session tokens, verified without a store lookup) and
//! tenants (an agent JWT signed with the tenant's `agent_secret`, or the tenant backend's
//! `server_key`).

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use confab_protocol::model::{Author, AuthorKind};
use confab_protocol::token::{self, AgentClaims, SessionClaims};
use confab_protocol::{ApiError, ErrorCode};

use crate::settings::Tenant;
use crate::state::AppState;

/// `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A verified visitor session.
#[derive(Clone)]
pub struct VisitorSession {
    pub tenant: Arc<Tenant>,
    pub claims: SessionClaims,
}

impl VisitorSession {
    /// The visitor as a message author.
    pub fn author(&self) -> Author {
        Author {
            kind: AuthorKind::Visitor,
            id: self.claims.visitor_id.clone(),
            name: None,
        }
    }
}

fn invalid_session() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidSession,
        "missing, invalid or expired session token",
    )
}

/// Verifies a session token: signature, expiry, and that its tenant still exists.
pub fn verify_session(state: &AppState, token: Option<&str>) -> Result<VisitorSession, ApiError> {
    let token = token.ok_or_else(invalid_session)?;
    let claims =
        token::verify_session(&state.keys, token, state.now_ms()).map_err(|_| invalid_session())?;
    let tenant = state
        .tenants
        .by_id(&claims.tenant)
        .ok_or_else(invalid_session)?
        .clone();
    Ok(VisitorSession { tenant, claims })
}

/// Who is acting on a tenant route.
#[derive(Clone, Debug)]
pub enum Actor {
    /// A dashboard user (agent JWT).
    Agent { id: String, name: Option<String> },
    /// The tenant's own backend (`server_key`).
    Server,
}

/// A verified tenant credential.
#[derive(Clone)]
pub struct TenantAuth {
    pub tenant: Arc<Tenant>,
    pub actor: Actor,
}

impl TenantAuth {
    /// The default author of a message sent with this credential: the agent, or for the
    /// tenant's backend a bot named after the tenant.
    pub fn author(&self) -> Author {
        match &self.actor {
            Actor::Agent { id, name } => Author {
                kind: AuthorKind::Agent,
                id: id.clone(),
                name: name.clone(),
            },
            Actor::Server => Author {
                kind: AuthorKind::Bot,
                id: "server".into(),
                name: Some(self.tenant.cfg.name.clone()),
            },
        }
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidCredentials,
        "missing, invalid or expired agent token or server key",
    )
}

/// Verifies an agent JWT: HS256 with the `agent_secret` of the tenant its `tenant` claim
/// names (so the claim necessarily matches the tenant whose data it opens).
pub fn verify_agent(state: &AppState, token: &str) -> Result<(Arc<Tenant>, AgentClaims), ApiError> {
    let tenant_id = token::peek_jwt_tenant(token).ok_or_else(invalid_credentials)?;
    let tenant = state
        .tenants
        .by_id(&tenant_id)
        .ok_or_else(invalid_credentials)?;
    let claims = token::verify_agent_jwt(token, tenant.cfg.agent_secret.as_bytes(), state.now_ms())
        .map_err(|_| invalid_credentials())?;
    if claims.tenant != tenant.cfg.id {
        return Err(invalid_credentials());
    }
    Ok((tenant.clone(), claims))
}

/// Authenticates a tenant route: a JWT (three dot-separated parts) or a server key.
pub fn authenticate_tenant(state: &AppState, headers: &HeaderMap) -> Result<TenantAuth, ApiError> {
    let token = bearer(headers).ok_or_else(invalid_credentials)?;
    if token.matches('.').count() == 2 {
        let (tenant, claims) = verify_agent(state, token)?;
        return Ok(TenantAuth {
            tenant,
            actor: Actor::Agent {
                id: claims.sub,
                name: claims.name,
            },
        });
    }
    let tenant = state
        .tenants
        .by_server_key(token)
        .ok_or_else(invalid_credentials)?;
    Ok(TenantAuth {
        tenant: tenant.clone(),
        actor: Actor::Server,
    })
}
