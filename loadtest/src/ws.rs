//! WebSocket connects with small buffers. tungstenite's defaults (128 KiB read buffer,
//! eagerly allocated) would cost ~2.5 GiB for 19,000 idle sockets; 4 KiB keeps one client
//! process at a few tens of KiB per socket.

use std::net::IpAddr;

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::net::{self, Endpoint};

/// A client (or baseline-server) WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Small buffers: 4 KiB read, frames written straight through, 1 MiB caps.
pub fn small_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// Opens `ws://endpoint{path}` from `local`.
pub async fn connect(endpoint: &Endpoint, path: &str, local: Option<IpAddr>) -> Result<Ws> {
    let stream = net::connect(local, endpoint.addr)
        .await
        .with_context(|| format!("connecting to {}", endpoint.addr))?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(
        endpoint.ws_url(path),
        stream,
        Some(small_config()),
    )
    .await
    .context("WebSocket handshake")?;
    Ok(ws)
}
