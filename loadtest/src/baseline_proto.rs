//! The baseline server's protocol, shared by `confab-baseline` and the load tool's
//! `--target baseline` mode. Everything is one room, and the server never parses payloads:
//!
//! - `GET /sub` (WebSocket) — a subscriber: receives every frame published to the room.
//!   The counterpart of an agent on `GET /v1/tenant/ws`.
//! - `GET /pub` (WebSocket) — a publisher: every text frame it sends is broadcast to all
//!   subscribers. The counterpart of `POST /v1/tenant/events` (a WebSocket rather than HTTP
//!   so the server stays a hundred lines; it measures fan-out, not request parsing).
//! - `GET /chat` (WebSocket) — a chatting visitor: every text frame it sends is echoed back
//!   to it and broadcast to all subscribers — the shape of a visitor message, which goes to
//!   the visitor's own channel and to every agent.
//!
//! On connect the server sends `{"type":"ready"}` to every role, so the client's
//! "connected" means the same thing as the gateway's `ready`. No auth, no storage.

use std::net::IpAddr;

use anyhow::{Context, Result};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::net::Endpoint;
use crate::ws::{self, Ws};

/// The first frame on every connection.
pub const READY: &str = r#"{"type":"ready"}"#;

/// What a connection does, chosen by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives the room's broadcasts (`/sub`).
    Sub,
    /// Publishes to the room (`/pub`).
    Pub,
    /// Publishes to the room and gets its own frames echoed (`/chat`).
    Chat,
}

impl Role {
    /// The role for a request path.
    pub fn from_path(path: &str) -> Option<Role> {
        match path {
            "/sub" => Some(Role::Sub),
            "/pub" => Some(Role::Pub),
            "/chat" => Some(Role::Chat),
            _ => None,
        }
    }

    /// The request path for a role.
    pub fn path(self) -> &'static str {
        match self {
            Role::Sub => "/sub",
            Role::Pub => "/pub",
            Role::Chat => "/chat",
        }
    }
}

/// Server-side buffers: 4 KiB reads, writes batched up to 8 KiB before hitting the socket.
pub fn server_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Connects in `role` and waits for `ready`.
pub async fn open(endpoint: &Endpoint, role: Role, local: Option<IpAddr>) -> Result<Ws> {
    let mut ws = ws::connect(endpoint, role.path(), local).await?;
    crate::api::wait_for(&mut ws, "ready")
        .await
        .context("baseline ws")?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for r in [Role::Sub, Role::Pub, Role::Chat] {
            assert_eq!(Role::from_path(r.path()), Some(r));
        }
        assert_eq!(Role::from_path("/v1/tenant/ws"), None);
        assert_eq!(crate::api::frame_type(READY), Some("ready"));
    }
}
