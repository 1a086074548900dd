//! The Confab calls the scenarios make, in the shapes of the wire contract (SPEC.md):
//! widget bootstrap (`GET /v1/config`), sessions, visitor sends and polls, tenant custom
//! events, and the two authenticated WebSocket channels. Failures come back as short
//! `anyhow` messages (`sessions: HTTP 403 invalid_challenge`) that tally well.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::http::HttpClient;
use crate::net::Endpoint;
use crate::ws::{self, Ws};

/// The tenant credentials every scenario takes as flags.
#[derive(Debug, Clone)]
pub struct Creds {
    /// Widget public key (`pk_live_…`).
    pub pk: String,
    /// HS256 key for agent JWTs.
    pub agent_secret: String,
    /// Tenant id, the `tenant` claim of agent JWTs.
    pub tenant: String,
    /// Bearer key of the tenant's backend, for `POST /v1/tenant/events`.
    pub server_key: String,
}

impl Creds {
    /// A JWT for agent `index`, valid for a day.
    pub fn agent_token(&self, index: usize) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 86_400;
        crate::jwt::agent_token(
            &self.agent_secret,
            &self.tenant,
            &format!("lt-agent-{index}"),
            &format!("Load Agent {index}"),
            exp,
        )
    }
}

/// A visitor session, as `POST /v1/sessions` returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Bearer token for visitor routes and the visitor channel.
    pub session_token: String,
    /// The visitor's long-lived credential.
    pub visitor_token: String,
    /// The visitor's conversation.
    pub conversation_id: String,
}

/// How long a WebSocket may take to answer `auth` with `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// `GET /v1/config?pk=` and returns the fresh init challenge token.
pub async fn challenge(http: &mut HttpClient, creds: &Creds) -> Result<String> {
    let resp = http
        .get(&config_path(creds), None)
        .await
        .context("config")?;
    if resp.status != 200 {
        bail!(resp.failure("config"));
    }
    let v = resp.json().context("config")?;
    v["initChallenge"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("config: no initChallenge.token in the response"))
}

/// The widget bootstrap path for this tenant.
pub fn config_path(creds: &Creds) -> String {
    format!("/v1/config?pk={}", creds.pk)
}

/// `POST /v1/sessions` with a challenge already fetched.
pub async fn create_session_with(
    http: &mut HttpClient,
    creds: &Creds,
    challenge: &str,
) -> Result<Session> {
    let body = json!({
        "publicKey": creds.pk,
        "initChallenge": challenge,
        "botSignals": { "elapsedMs": 1000 },
    });
    let resp = http
        .post_json("/v1/sessions", None, &body)
        .await
        .context("sessions")?;
    if resp.status != 201 {
        bail!(resp.failure("sessions"));
    }
    serde_json::from_slice(&resp.body).context("sessions: unexpected body")
}

/// The widget's start-up: config (for the challenge), then a new session.
pub async fn create_session(http: &mut HttpClient, creds: &Creds) -> Result<Session> {
    let token = challenge(http, creds).await?;
    create_session_with(http, creds, &token).await
}

/// The body of a visitor send (HTTP or WebSocket share the fields).
pub fn message_body(text: &str, client_message_id: &str) -> serde_json::Value {
    json!({ "message": text, "clientMessageId": client_message_id })
}

/// Opens the visitor channel and waits for `ready`.
pub async fn open_visitor(endpoint: &Endpoint, local: Option<IpAddr>, token: &str) -> Result<Ws> {
    open_authed(endpoint, "/v1/visitor/ws", local, token)
        .await
        .context("visitor ws")
}

/// Opens the tenant channel as an agent and waits for `ready`.
pub async fn open_agent(endpoint: &Endpoint, local: Option<IpAddr>, jwt: &str) -> Result<Ws> {
    open_authed(endpoint, "/v1/tenant/ws", local, jwt)
        .await
        .context("tenant ws")
}

async fn open_authed(
    endpoint: &Endpoint,
    path: &str,
    local: Option<IpAddr>,
    token: &str,
) -> Result<Ws> {
    let mut ws = ws::connect(endpoint, path, local).await?;
    let auth = json!({ "type": "auth", "token": token }).to_string();
    ws.send(Message::text(auth)).await.context("sending auth")?;
    wait_for(&mut ws, "ready").await?;
    Ok(ws)
}

/// Reads frames until one of type `kind` arrives (others are skipped), a close, or
/// [`READY_TIMEOUT`].
pub async fn wait_for(ws: &mut Ws, kind: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no {kind} within {}s", READY_TIMEOUT.as_secs()))?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                if frame_type(&t) == Some(kind) {
                    return Ok(());
                }
                if frame_type(&t) == Some("error") {
                    bail!("error frame before {kind}: {}", t.as_str());
                }
            }
            Some(Ok(Message::Close(c))) => {
                bail!(
                    "closed before {kind}: {}",
                    c.map(|c| c.code.to_string()).unwrap_or_default()
                )
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("before {kind}: {e}"),
            None => bail!("closed before {kind}"),
        }
    }
}

/// The `type` of a JSON frame, without parsing the rest.
pub fn frame_type(text: &str) -> Option<&str> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Head<'_>>(text).ok().map(|h| h.kind)
}

/// A short reason for a WebSocket ending, for tallies.
pub fn close_reason(frame: Option<std::result::Result<Message, impl std::fmt::Display>>) -> String {
    match frame {
        None => "ws: connection ended".into(),
        Some(Ok(Message::Close(Some(c)))) => format!("ws: closed by server {}", u16::from(c.code)),
        Some(Ok(Message::Close(None))) => "ws: closed by server".into(),
        Some(Ok(_)) => "ws: unexpected frame".into(),
        Some(Err(e)) => format!("ws: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_frame_types() {
        assert_eq!(
            frame_type(r#"{"data":{"type":"x"},"type":"message:new"}"#),
            Some("message:new")
        );
        assert_eq!(frame_type("not json"), None);
        assert_eq!(frame_type("lt:00000001:1:1:1"), None);
    }
}
