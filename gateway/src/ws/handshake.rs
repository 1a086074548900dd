//! The HTTP side of opening a WebSocket (RFC 6455 §4.2.1): the upgrade request is checked
//! and answered with 101 and the accept key; the connection hyper hands over afterwards
//! becomes a [`WireSocket`](super::wire::WireSocket). A refused request gets 400 (or 426
//! when the connection cannot switch protocols), as a JSON error body like every other
//! refusal (see `http::finish`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

/// A checked upgrade request.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why an upgrade request was refused.
#[derive(Debug)]
pub struct NotAnUpgrade(StatusCode, &'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotAnUpgrade> {
        let refuse = |why| Err(NotAnUpgrade(StatusCode::BAD_REQUEST, why));
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade") {
            return refuse("Connection header did not include 'upgrade'");
        }
        if !has_token(h, header::UPGRADE, "websocket") {
            return refuse("`Upgrade` header did not include 'websocket'");
        }
        if h.get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return refuse("`Sec-WebSocket-Version` header did not include '13'");
        }
        let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return refuse("`Sec-WebSocket-Key` header missing");
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(NotAnUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(WsUpgrade { key, on_upgrade })
    }
}

impl WsUpgrade {
    /// The 101 response, and the connection it will hand over once sent.
    pub fn accept(self) -> (Response, OnUpgrade) {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(axum::body::Body::empty())
            .expect("valid static headers");
        (response, self.on_upgrade)
    }
}

/// Whether `name` lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_are_matched_case_insensitively_in_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgrades"),
        );
        assert!(!has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::UPGRADE, "websocket"));
    }
}
