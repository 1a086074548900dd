//! Operations endpoints (`/healthz`, `/readyz`, `/metrics`) and the static pages the
//! gateway ships inside its binary (`/widget.js`, `/demo`, `/console`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use confab_protocol::{ApiError, ErrorCode};

use super::json_text;
use crate::config::DEMO_PUBLIC_KEY;
use crate::error::error_response;
use crate::state::AppState;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // describes the literal bodies below
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "The process is up.", body = Health)))]
pub async fn healthz() -> Response {
    json_text(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

/// `GET /readyz`: the store answers (and, in Redis mode, the subscription is alive).
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve.", body = Health),
        (status = 503, description = "`store_unavailable` or `unavailable` (shutting down).", body = confab_protocol::ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return error_response(&ApiError::new(ErrorCode::Unavailable, "shutting down"));
    }
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    if !store_ok {
        return error_response(&ApiError::new(
            ErrorCode::StoreUnavailable,
            "the store does not answer",
        ));
    }
    if !state.broker.healthy() {
        return error_response(&ApiError::new(
            ErrorCode::StoreUnavailable,
            "the fan-out subscription is down",
        ));
    }
    json_text(StatusCode::OK, r#"{"status":"ready"}"#.into())
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format.", body = String,
        content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let ct = HeaderValue::from_static("text/plain; version=0.0.4");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ct)],
        state.metrics.render(&state.hub),
    )
        .into_response()
}

const WIDGET_JS: &str = include_str!("../../assets/widget.js");
const DEMO_HTML: &str = include_str!("../../assets/demo.html");
const CONSOLE_HTML: &str = include_str!("../../assets/console.html");

fn asset(content_type: &'static str, body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /widget.js`: the embeddable widget.
#[utoipa::path(get, path = "/widget.js", operation_id = "widgetScript", tag = "operations",
    responses((status = 200, description = "The widget script.", body = String,
        content_type = "application/javascript; charset=utf-8")))]
pub async fn widget_js() -> Response {
    asset(
        "application/javascript; charset=utf-8",
        WIDGET_JS.to_owned(),
    )
}

/// `GET /demo`: a host page with the widget of the first configured tenant (the demo
/// tenant when running without a config file).
#[utoipa::path(get, path = "/demo", operation_id = "demoPage", tag = "operations",
    responses((status = 200, description = "An HTML host page with the widget.", body = String,
        content_type = "text/html; charset=utf-8")))]
pub async fn demo(State(state): State<AppState>) -> Response {
    let pk = state
        .config
        .tenants
        .first()
        .map(|t| t.public_key.as_str())
        .unwrap_or(DEMO_PUBLIC_KEY);
    asset(
        "text/html; charset=utf-8",
        DEMO_HTML.replace("{{PUBLIC_KEY}}", pk),
    )
}

/// `GET /console`: the agent console.
#[utoipa::path(get, path = "/console", operation_id = "consolePage", tag = "operations",
    responses((status = 200, description = "The agent console (HTML).", body = String,
        content_type = "text/html; charset=utf-8")))]
pub async fn console() -> Response {
    asset("text/html; charset=utf-8", CONSOLE_HTML.to_owned())
}
