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
    open_authed(endpoint, "/v1/visitor/ws", local, token, None)
        .await
        .map(|(ws, _)| ws)
        .context("visitor ws")
}

/// Opens the tenant channel as an agent and waits for `ready`.
pub async fn open_agent(endpoint: &Endpoint, local: Option<IpAddr>, jwt: &str) -> Result<Ws> {
    open_agent_after(endpoint, local, jwt, None)
        .await
        .map(|(ws, _)| ws)
}

/// Opens the tenant channel resuming after tenant event offset `after`, as a dashboard
/// does after a disconnect; returns the socket and the `ready` frame (with `recovered`).
pub async fn open_agent_after(
    endpoint: &Endpoint,
    local: Option<IpAddr>,
    jwt: &str,
    after: Option<&str>,
) -> Result<(Ws, String)> {
    open_authed(endpoint, "/v1/tenant/ws", local, jwt, after)
        .await
        .context("tenant ws")
}

async fn open_authed(
    endpoint: &Endpoint,
    path: &str,
    local: Option<IpAddr>,
    token: &str,
    after: Option<&str>,
) -> Result<(Ws, String)> {
    let mut ws = ws::connect(endpoint, path, local).await?;
    let auth = match after {
        Some(a) => json!({ "type": "auth", "token": token, "after": a }),
        None => json!({ "type": "auth", "token": token }),
    };
    ws.send(Message::text(auth.to_string()))
        .await
        .context("sending auth")?;
    let ready = wait_for(&mut ws, "ready").await?;
    Ok((ws, ready))
}

/// Reads frames until one of type `kind` arrives (others are skipped), a close, or
/// [`READY_TIMEOUT`]; returns that frame.
pub async fn wait_for(ws: &mut Ws, kind: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no {kind} within {}s", READY_TIMEOUT.as_secs()))?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                if frame_type(&t) == Some(kind) {
                    return Ok(t.as_str().to_string());
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

/// The envelope of a server frame: its `type` and, for tenant events, its `offset`.
/// Parsed without building the rest of the frame.
#[derive(Debug, Deserialize)]
pub struct Head<'a> {
    /// `type`.
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    /// `offset` (tenant events only); opaque.
    #[serde(default, borrow)]
    pub offset: Option<&'a str>,
}

/// The envelope of a JSON frame, or `None` when it is not one.
pub fn head(text: &str) -> Option<Head<'_>> {
    head_prefix(text).or_else(|| serde_json::from_str::<Head<'_>>(text).ok())
}

/// [`head`] read from the frame's first bytes: Confab writes `type` first, and a tenant
/// event's `offset` right after it. A receiver reads every frame of a broadcast, so
/// scanning only the prefix keeps the tool's own cost per frame from capping the rate it
/// can measure. `None` (so: parse it all) for any other shape.
fn head_prefix(text: &str) -> Option<Head<'_>> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let end = rest.find('"')?;
    let kind = &rest[..end];
    if kind.contains('\\') {
        return None;
    }
    let offset = match rest[end + 1..].strip_prefix(r#","offset":""#) {
        Some(r) => Some(&r[..r.find('"')?]),
        // An offset elsewhere in the frame: not this shape.
        None if text.contains(r#""offset":"#) => return None,
        None => None,
    };
    Some(Head { kind, offset })
}

/// The `type` of a JSON frame, without parsing the rest.
pub fn frame_type(text: &str) -> Option<&str> {
    head(text).map(|h| h.kind)
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
    fn reads_the_head_from_the_prefix_or_the_whole_frame() {
        let h = head(r#"{"type":"x:y","offset":"42","data":{"type":"z","offset":"1"}}"#).unwrap();
        assert_eq!((h.kind, h.offset), ("x:y", Some("42")));
        let h = head(r#"{"type":"message:new","data":{"offset":"1"}}"#).unwrap();
        assert_eq!((h.kind, h.offset), ("message:new", None));
        let h = head(r#"{"data":{},"offset":"7","type":"x:y"}"#).unwrap();
        assert_eq!((h.kind, h.offset), ("x:y", Some("7")));
        // An escaped type is not read from the prefix (nor borrowed by the parser).
        assert!(head(r#"{"type":"a\"b","offset":"3"}"#).is_none());
    }

    #[test]
    fn reads_frame_types() {
        assert_eq!(
            frame_type(r#"{"data":{"type":"x"},"type":"message:new"}"#),
            Some("message:new")
        );
        assert_eq!(frame_type("not json"), None);
        assert_eq!(frame_type("lt:00000001:1:1:1"), None);
        let h = head(r#"{"type":"campaign:progress","offset":"0000042","data":{}}"#).unwrap();
        assert_eq!((h.kind, h.offset), ("campaign:progress", Some("0000042")));
    }
}
