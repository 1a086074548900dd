//! `confab-baseline`: a minimal tokio-tungstenite room-broadcast server, for benchmarks
//! only. It is what "the limit of the stack" means in the reports: same runtime, same
//! WebSocket library, no auth, no storage, no JSON parsing — one `broadcast` channel whose
//! messages are encoded once and shared by every subscriber. Protocol in
//! [`crate::baseline_proto`].

use std::future::Future;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{http, Message};

use crate::baseline_proto::{server_config, Role, READY};

/// Serves the room on `listener` until `shutdown` completes; then every connection gets
/// 1001 (going away). `queue` bounds the broadcast backlog: a subscriber that falls
/// further behind is closed with 1013 rather than slowing the room down.
pub async fn run(listener: TcpListener, queue: usize, shutdown: impl Future) -> Result<()> {
    let (room, _) = broadcast::channel::<Message>(queue);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, room.clone(), stop_rx.clone()));
            }
            _ = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

// tungstenite's handshake callback type fixes the (large) error type.
#[allow(clippy::result_large_err)]
async fn handle(
    stream: TcpStream,
    room: broadcast::Sender<Message>,
    mut stop: watch::Receiver<bool>,
) {
    let mut role = None;
    let pick = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        role = Role::from_path(req.uri().path());
        match role {
            Some(_) => Ok(resp),
            None => Err(http::Response::builder()
                .status(404)
                .body(Some("use /sub, /pub or /chat".into()))
                .expect("static response")),
        }
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, pick, Some(server_config())).await
    else {
        return;
    };
    let Some(role) = role else { return };
    // Subscribe before announcing ready, so nothing published after `ready` is missed.
    let mut rx = (role == Role::Sub).then(|| room.subscribe());
    if ws.send(Message::text(READY)).await.is_err() {
        return;
    }
    let close = |code: CloseCode, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        tokio::select! {
            published = async { rx.as_mut().expect("sub only").recv().await }, if rx.is_some() => {
                match published {
                    Ok(msg) => {
                        // Batch whatever is already queued into one flush.
                        let mut ok = ws.feed(msg).await.is_ok();
                        while let (true, Ok(more)) = (ok, rx.as_mut().expect("sub").try_recv()) {
                            ok = ws.feed(more).await.is_ok();
                        }
                        if !ok || ws.flush().await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = ws.send(close(CloseCode::Again, "too slow")).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) if role != Role::Sub => {
                    let msg = Message::Text(text);
                    if role == Role::Chat && ws.send(msg.clone()).await.is_err() {
                        return;
                    }
                    let _ = room.send(msg);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {} // pings are answered by tungstenite itself
            },
            _ = stop.changed() => {
                let _ = ws.send(close(CloseCode::Away, "shutting down")).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline_proto::open;
    use crate::net::Endpoint;

    #[tokio::test]
    async fn publishes_to_subscribers_and_echoes_chat() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, 64, stopped));
        let ep = Endpoint::resolve(&url).await.unwrap();

        let mut sub = open(&ep, Role::Sub, None).await.unwrap();
        let mut publisher = open(&ep, Role::Pub, None).await.unwrap();
        let mut chat = open(&ep, Role::Chat, None).await.unwrap();

        publisher.send(Message::text("one")).await.unwrap();
        chat.send(Message::text("two")).await.unwrap();
        assert_eq!(sub.next().await.unwrap().unwrap(), Message::text("one"));
        assert_eq!(sub.next().await.unwrap().unwrap(), Message::text("two"));
        assert_eq!(chat.next().await.unwrap().unwrap(), Message::text("two"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        match sub.next().await {
            Some(Ok(Message::Close(Some(c)))) => assert_eq!(c.code, CloseCode::Away),
            other => panic!("expected 1001, got {other:?}"),
        }
    }
}
