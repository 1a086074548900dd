//! HTTP routes. [`router`] is the whole application (HTTP and WebSocket upgrades) as an
//! axum `Router`, so tests and the binary serve exactly the same thing.
//!
//! - [`visitor`] — the visitor-facing API: config, sessions, messages, telemetry.
//! - [`tenant`] — the agent-dashboard / tenant-backend API.
//! - [`attachments`] — uploads (streamed; not under the 64 KiB JSON limit) and downloads.
//! - [`ops`] — health, readiness, metrics, and the static pages (widget, demo, console).
//! - [`openapi`] — `GET /openapi.json`, the description of all of the above, generated from
//!   the handlers' annotations and the types they read and write.
//!
//! Every response carries `X-Content-Type-Options: nosniff` (the `nosniff` layer). Every
//! request is counted in `/metrics` and logged (the access log: target `confab::access`,
//! one line per request — see `observe`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use confab_protocol::model::Message;
use confab_protocol::{ApiError, ErrorCode};
use confab_store::{message_id, parse_message_id, Cursor, MessagePage};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{error_response, Params};
use crate::state::AppState;

pub mod attachments;
pub mod cors;
pub mod openapi;
pub mod ops;
pub mod tenant;
pub mod visitor;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Whether a request announces (`Content-Length`) a body longer than `max` bytes: such a
/// body is refused before any of it is read, rather than waited for (a client would
/// otherwise send it for nothing, or hold the connection until the body timeout).
pub fn announces_more_than(headers: &HeaderMap, max: u64) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max)
}

/// The route table, written once: each route is its handler, and each handler carries its
/// `#[utoipa::path]` description, so the router and `GET /openapi.json` cannot disagree.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(visitor::config))
        .routes(routes!(visitor::sessions))
        .routes(routes!(visitor::history, visitor::send))
        .routes(routes!(visitor::events))
        .routes(routes!(visitor::read))
        .routes(routes!(visitor::handoff))
        .routes(routes!(visitor::voice))
        .routes(routes!(attachments::upload))
        .routes(routes!(attachments::download))
        .routes(routes!(attachments::tenant_upload))
        .routes(routes!(crate::ws::visitor::upgrade))
        .routes(routes!(crate::ws::tenant::upgrade))
        .routes(routes!(tenant::list))
        .routes(routes!(tenant::get_one))
        .routes(routes!(tenant::history, tenant::reply))
        .routes(routes!(tenant::close))
        .routes(routes!(tenant::reopen))
        .routes(routes!(tenant::read))
        .routes(routes!(tenant::handler))
        .routes(routes!(tenant::events, tenant::publish))
        .routes(routes!(tenant::webhooks))
        .routes(routes!(ops::landing))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::widget_js))
        .routes(routes!(ops::demo))
        .routes(routes!(ops::demo_js))
        .routes(routes!(ops::console))
        .routes(routes!(ops::console_js))
        .routes(routes!(openapi::serve))
}

/// The OpenAPI description of [`routes`].
pub fn api_description() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (routes, _) = routes().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(finish))
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(&ApiError::new(ErrorCode::NotFound, "no such route"))
}

async fn method_not_allowed() -> Response {
    error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    ))
}

/// The last word on every response the router gives (the outermost layer, so the layers
/// inside it that answer by themselves, CORS preflights and body limits, are covered too):
///
/// - `X-Content-Type-Options: nosniff` on answers, errors, 404s, preflights, pages and
///   metrics alike, so no browser ever reads a JSON body or an error as a script or a page;
/// - every 4xx/5xx carries the error body, also the few answers axum writes itself as
///   plain text (a WebSocket route asked without an upgrade, a path that is not UTF-8). The
///   status and the other headers stay; axum's short text becomes the `message`.
///
/// One layer for both: each `from_fn` layer costs every request a boxed future.
async fn finish(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        503 => ErrorCode::Unavailable,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let text = std::str::from_utf8(&text)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains(['<', '\n']))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("request refused"));
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = ApiError::new(code, text).body();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The access log's target: `RUST_LOG=confab::access=off` silences it.
pub const ACCESS_LOG: &str = "confab::access";

/// Longest request path the access log writes for a request no route matched (the path is
/// the client's text: it is cut, and only ever written for unmatched requests).
const MAX_LOGGED_PATH: usize = 96;

/// Counts every answered request in `/metrics` and writes its access-log line (target
/// [`ACCESS_LOG`], level info): method, route, status, latency and client IP (per the
/// trusted-proxy rule). The route is the route table's pattern
/// (`/v1/tenant/conversations/{id}`: no ids or tokens are logged), or for a request no
/// route matched its path without the query, cut to [`MAX_LOGGED_PATH`] bytes. A WebSocket
/// is logged once, at its upgrade (101). The latency is the time to the response head (a
/// long-poll's wait included).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // The route table's own paths (a closed set, so labels stay bounded); "other" for
    // requests no route matched.
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| state.metrics.route_label(m.as_str()));
    let started = std::time::Instant::now();
    let access = tracing::enabled!(target: ACCESS_LOG, tracing::Level::INFO).then(|| {
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| state.client_ip(*peer, req.headers()));
        // No route: the client's path (never its query), cut.
        let path = matched
            .is_none()
            .then(|| cut(req.uri().path(), MAX_LOGGED_PATH).into_owned());
        (req.method().clone(), path, ip)
    });
    let resp = next.run(req).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    state.metrics.http(matched.unwrap_or("other"), status, took);
    if let Some((method, path, ip)) = access {
        let method = cut(method.as_str(), 16);
        let route = path.as_deref().or(matched).unwrap_or_default();
        let latency_ms = took.as_micros() as f64 / 1000.0;
        match ip {
            Some(ip) => {
                tracing::info!(target: ACCESS_LOG, %method, %route, status, latency_ms, %ip)
            }
            None => tracing::info!(target: ACCESS_LOG, %method, %route, status, latency_ms),
        }
    }
    resp
}

/// `s` cut to at most `max` bytes on a character boundary, `…` marking a cut.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// A JSON response from already-encoded text.
/// 200 with a Conversation (or any of our own types) as the JSON body.
pub fn json_ok<T: serde::Serialize>(value: &T) -> Response {
    json_text(
        axum::http::StatusCode::OK,
        serde_json::to_string(value).unwrap_or_default(),
    )
}

pub fn json_text(status: axum::http::StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The answer to a send (visitor or tenant side).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub success: bool,
    /// The stored message's id (the first one's, for a duplicate).
    pub message_id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// True when this `clientMessageId` was already stored: nothing new was stored.
    pub duplicate: bool,
    /// Only with `awaitReply: true`: the assistant's reply (or its safe fallback) once
    /// stored; null when people answer, the bot stayed silent, or the wait ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<confab_protocol::model::Message>)]
    pub reply: Option<Option<confab_protocol::model::Message>>,
}

/// The answer to a send: 201 when stored, 200 for a duplicate `clientMessageId`.
pub fn sent(a: &confab_store::Appended) -> Response {
    sent_with(a, None)
}

/// [`sent`], with `reply` for `awaitReply`.
pub fn sent_with(
    a: &confab_store::Appended,
    reply: Option<Option<confab_protocol::model::Message>>,
) -> Response {
    let status = if a.duplicate {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::CREATED
    };
    let body = Sent {
        success: true,
        message_id: a.message.id.clone(),
        created_at: a.message.created_at.clone(),
        duplicate: a.duplicate,
        reply,
    };
    json_text(status, serde_json::to_string(&body).unwrap_or_default())
}

/// A page of a conversation's messages, as [`history_body`] writes it (the stored
/// messages are spliced in already encoded, so this type describes rather than encodes).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
    /// In conversation order (ascending ids).
    pub messages: Vec<Message>,
    /// More messages follow: ask again with `after=nextCursor`.
    pub has_more: bool,
    /// The id of the last message returned, or the `after` given when none was; null
    /// without either.
    pub next_cursor: Option<String>,
}

/// Reads the history cursor: `after`, or `afterCreatedAt` + `afterId`, or `since`
/// (exactly one form), in the conversation `conversation_id` (a message id of another
/// conversation is not a cursor here). Returns the cursor and the id to echo as
/// `nextCursor` when the page is empty.
pub fn history_cursor(
    p: &Params,
    conversation_id: &str,
) -> Result<(Cursor, Option<String>), ApiError> {
    let given = |k: &str| p.get(k).filter(|v| !v.is_empty());
    let forms = [
        given("after").is_some(),
        given("afterCreatedAt").is_some() || given("afterId").is_some(),
        given("since").is_some(),
    ];
    if forms.iter().filter(|f| **f).count() > 1 {
        return Err(ApiError::invalid(
            "after",
            "give one cursor: after, afterCreatedAt + afterId, or since",
        ));
    }
    if let Some(a) = given("after") {
        let seq = parse_message_id(conversation_id, a).ok_or_else(|| {
            ApiError::invalid("after", "after must be a message id of this conversation")
        })?;
        return Ok((Cursor::After(seq), Some(a.to_owned())));
    }
    if forms[1] {
        let ts = given("afterCreatedAt").ok_or_else(|| {
            ApiError::invalid("afterCreatedAt", "afterCreatedAt goes with afterId")
        })?;
        let id = given("afterId")
            .ok_or_else(|| ApiError::invalid("afterId", "afterId goes with afterCreatedAt"))?;
        let created_ms = confab_protocol::time::parse_ms(ts).ok_or_else(|| {
            ApiError::invalid(
                "afterCreatedAt",
                "afterCreatedAt must be an RFC 3339 timestamp",
            )
        })?;
        let id_seq = parse_message_id(conversation_id, id).ok_or_else(|| {
            ApiError::invalid(
                "afterId",
                "afterId must be a message id of this conversation",
            )
        })?;
        return Ok((
            Cursor::AfterCreated {
                created_ms,
                id: id_seq,
            },
            Some(id.to_owned()),
        ));
    }
    if let Some(s) = given("since") {
        let ms = confab_protocol::time::parse_ms(s)
            .ok_or_else(|| ApiError::invalid("since", "since must be an RFC 3339 timestamp"))?;
        return Ok((Cursor::Since(ms), None));
    }
    Ok((Cursor::Start, None))
}

/// `limit` (1..=200, default 50) and `wait` (0..=30 s, default 0).
pub fn limit_and_wait(p: &Params) -> Result<(usize, u64), ApiError> {
    let limit = p.int("limit", 1..=200)?.unwrap_or(50) as usize;
    let wait = p.int("wait", 0..=30)?.unwrap_or(0);
    Ok((limit, wait))
}

/// `{ "messages": [...], "hasMore": …, "nextCursor": … }`, concatenating the stored JSON
/// as `serve` gives it (with fresh attachment links).
pub fn history_body<'a>(
    page: &'a MessagePage,
    conversation_id: &str,
    echo: Option<String>,
    serve: impl Fn(&'a str) -> std::borrow::Cow<'a, str>,
) -> String {
    let mut s = String::with_capacity(
        64 + page
            .messages
            .iter()
            .map(|m| m.json.len() + 1)
            .sum::<usize>(),
    );
    s.push_str(r#"{"messages":["#);
    for (i, m) in page.messages.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&serve(&m.json));
    }
    let next = page
        .messages
        .last()
        .map(|m| message_id(conversation_id, m.seq))
        .or(echo);
    s.push_str(r#"],"hasMore":"#);
    s.push_str(if page.has_more { "true" } else { "false" });
    s.push_str(r#","nextCursor":"#);
    s.push_str(&serde_json::to_string(&next).unwrap_or_else(|_| "null".into()));
    s.push('}');
    s
}
