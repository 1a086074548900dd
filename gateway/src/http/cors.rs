//! CORS for every route: preflights answered, and the request's `Origin` reflected when
//! some policy of the deployment allows it (the tenant-specific decision is the handler's,
//! through [`OriginPolicy::check`](crate::policy::origin::OriginPolicy::check), once it knows the
//! tenant). WebSocket upgrades are not covered by CORS at all: the channels check the
//! origin themselves before upgrading.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use confab_protocol::{ApiError, ErrorCode};

use crate::state::AppState;

/// Answers preflights and adds `Access-Control-Allow-Origin` to every response whose
/// `Origin` some policy of the deployment allows.
pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| state.tenants.any_policy_allows(o));
    if req.method() == Method::OPTIONS {
        if origin.is_some() && !allowed {
            return crate::error::error_response(&ApiError::new(
                ErrorCode::OriginNotAllowed,
                "origin not allowed",
            ));
        }
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        decorate(h, origin);
        return resp;
    }
    let mut resp = next.run(req).await;
    if allowed {
        decorate(resp.headers_mut(), origin);
    }
    resp
}

fn decorate(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}
