//! Operations endpoints (`/healthz`, `/readyz`, `/metrics`) and the static pages the
//! gateway ships inside its binary (`/`, `/widget.js`, `/demo`, `/console` and their
//! scripts).
//!
//! The pages carry the SPEC's browser-safety headers: a `Content-Security-Policy` that
//! allows no inline script (so each page's script is a file of its own, `/demo.js` and
//! `/console.js`), no framing, and a `Referrer-Policy`. `nosniff` is added to every
//! response by the router (`super::router`), not here.

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use confab_protocol::{ApiError, ErrorCode};
use sha2::{Digest, Sha256};

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

/// `GET /readyz`: the store answers (on a Redis Cluster: every master answers `PING`) and,
/// in Redis modes, the subscription is alive (on a cluster: every shard's session).
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
        state
            .metrics
            .render(&state.hub, &state.assistants.open_circuits()),
    )
        .into_response()
}

const WIDGET_JS: &str = include_str!("../../assets/widget.js");
const DEMO_HTML: &str = include_str!("../../assets/demo.html");
const DEMO_JS: &str = include_str!("../../assets/demo.js");
const CONSOLE_HTML: &str = include_str!("../../assets/console.html");
const CONSOLE_JS: &str = include_str!("../../assets/console.js");

/// How long browsers and CDNs may use a served asset before revalidating it.
const ASSET_CACHE: &str = "public, max-age=300";

fn asset(content_type: &'static str, body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(ASSET_CACHE)),
        ],
        body,
    )
        .into_response()
}

/// The widget's strong `ETag`: a hash of its bytes, computed once. The same binary always
/// serves the same bytes, so every node of a deployment agrees on the tag.
static WIDGET_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(WIDGET_JS.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
});

/// Whether `If-None-Match` names `etag` (or is `*`). The comparison is the weak one RFC 9110
/// prescribes for `If-None-Match`, so a `W/` prefix a proxy added still matches.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// `GET /widget.js`: the embeddable widget. Host pages on other origins load it, so it is
/// marked `Cross-Origin-Resource-Policy: cross-origin` (a host page with
/// `Cross-Origin-Embedder-Policy` could not load it otherwise); a revalidation with the
/// current `ETag` gets an empty 304.
#[utoipa::path(get, path = "/widget.js", operation_id = "widgetScript", tag = "operations",
    responses(
        (status = 200, description = "The widget script.", body = String,
            content_type = "application/javascript; charset=utf-8"),
        (status = 304, description = "Not modified (`If-None-Match` names the current `ETag`)."),
    ))]
pub async fn widget_js(headers: HeaderMap) -> Response {
    let etag = WIDGET_ETAG.clone();
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static(ASSET_CACHE)),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        ),
    ];
    if etag_matches(&headers, etag.to_str().unwrap_or_default()) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let ct = HeaderValue::from_static("application/javascript; charset=utf-8");
    (
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, ct)],
        WIDGET_JS,
    )
        .into_response()
}

/// `GET /demo.js`: the demo page's own script.
#[utoipa::path(get, path = "/demo.js", operation_id = "demoScript", tag = "operations",
    responses((status = 200, description = "The demo page's script.", body = String,
        content_type = "application/javascript; charset=utf-8")))]
pub async fn demo_js() -> Response {
    asset("application/javascript; charset=utf-8", DEMO_JS.to_owned())
}

/// `GET /console.js`: the agent console's script.
#[utoipa::path(get, path = "/console.js", operation_id = "consoleScript", tag = "operations",
    responses((status = 200, description = "The agent console's script.", body = String,
        content_type = "application/javascript; charset=utf-8")))]
pub async fn console_js() -> Response {
    asset(
        "application/javascript; charset=utf-8",
        CONSOLE_JS.to_owned(),
    )
}

/// The console's inline `<style>` block as a CSP hash source, computed once: the sheet
/// stays in the page without allowing inline styles in general.
static CONSOLE_STYLE: LazyLock<String> = LazyLock::new(|| style_hash(CONSOLE_HTML));

/// `'sha256-…'` of the first `<style>` block of `html` (the console has exactly one).
fn style_hash(html: &str) -> String {
    let css = html
        .split_once("<style>")
        .and_then(|(_, rest)| rest.split_once("</style>"))
        .map_or("", |(css, _)| css);
    format!("'sha256-{}'", BASE64.encode(Sha256::digest(css.as_bytes())))
}

/// The `Host` the page was asked for, when it is a plain `name[:port]` that can be written
/// into a CSP source as it is. Anything else (IPv6 literals, which CSP sources cannot
/// express, or an attacker's `;`) is left out, and the page keeps only `'self'`.
fn page_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let port_ok = host.len() == name.len()
        || (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
    (name_ok && port_ok).then_some(host)
}

/// A page's `Content-Security-Policy`. Scripts only from the gateway's own files (never
/// inline, never `eval`); network access only to its own origin — `ws:`/`wss:` to its own
/// host spelled out, since older browsers (Safari before 15.4) do not count them as
/// `'self'`; no plugins, no `<base>`, and no framing (clickjacking an agent's console
/// would let another site click its buttons).
fn page_csp(headers: &HeaderMap, style_src: &str, img_src: &str) -> HeaderValue {
    let connect = match page_host(headers) {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src {style_src}; img-src {img_src}; \
         connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    );
    HeaderValue::from_str(&csp).expect("the host was checked to be plain")
}

/// An HTML page with its policy headers.
fn page(csp: HeaderValue, referrer: &'static str, html: String) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(ASSET_CACHE)),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::REFERRER_POLICY, HeaderValue::from_static(referrer)),
        ],
        html,
    )
        .into_response()
}

/// `GET /demo`: a host page with the widget of the first configured tenant (the demo
/// tenant when running without a config file). The widget styles its shadow root with a
/// `<style>` element, and a tenant's logo may live anywhere, so this page allows inline
/// styles and any image — as a real host page of the widget has to.
#[utoipa::path(get, path = "/demo", operation_id = "demoPage", tag = "operations",
    responses((status = 200, description = "An HTML host page with the widget.", body = String,
        content_type = "text/html; charset=utf-8")))]
pub async fn demo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let pk = state
        .config
        .tenants
        .first()
        .map(|t| t.public_key.as_str())
        .unwrap_or(DEMO_PUBLIC_KEY);
    page(
        page_csp(&headers, "'self' 'unsafe-inline'", "* data:"),
        "strict-origin-when-cross-origin",
        DEMO_HTML.replace("{{PUBLIC_KEY}}", pk),
    )
}

/// The landing page: what this server is and where to go. No script at all; its one inline
/// `<style>` is allowed by its hash.
const LANDING_HTML: &str = concat!(
    r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Confab</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; margin-bottom: 0.25rem; }
p.sub { margin-top: 0; color: #59636e; }
li { margin: 0.4rem 0; }
a { color: #0a7a5f; }
</style>
</head>
<body>
<h1>Confab</h1>
<p class="sub">A real-time chat gateway, version "#,
    env!("CARGO_PKG_VERSION"),
    r#".</p>
<ul>
<li><a href="/demo">Widget demo</a>: a host page with the chat widget.</li>
<li><a href="/console">Agent console</a>: answer conversations (needs an agent token).</li>
<li><a href="/openapi.json">OpenAPI description</a> of the HTTP API.</li>
</ul>
</body>
</html>
"#
);

/// The landing page's inline `<style>` block as a CSP hash source.
static LANDING_STYLE: LazyLock<String> = LazyLock::new(|| style_hash(LANDING_HTML));

/// `GET /`: a small HTML page linking to the demo, the console and the API description.
#[utoipa::path(get, path = "/", operation_id = "landingPage", tag = "operations",
    responses((status = 200, description = "A small HTML page linking to `/demo`, `/console` \
        and `/openapi.json`.", body = String, content_type = "text/html; charset=utf-8")))]
pub async fn landing(headers: HeaderMap) -> Response {
    page(
        page_csp(&headers, &LANDING_STYLE, "'self'"),
        "strict-origin-when-cross-origin",
        LANDING_HTML.to_owned(),
    )
}

/// `GET /console`: the agent console. It holds an agent's token: no referrer leaves it.
#[utoipa::path(get, path = "/console", operation_id = "consolePage", tag = "operations",
    responses((status = 200, description = "The agent console (HTML).", body = String,
        content_type = "text/html; charset=utf-8")))]
pub async fn console(headers: HeaderMap) -> Response {
    let style = format!("'self' {}", *CONSOLE_STYLE);
    page(
        page_csp(&headers, &style, "'self' data:"),
        "no-referrer",
        CONSOLE_HTML.to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_hash_covers_its_only_inline_style() {
        assert_eq!(CONSOLE_HTML.matches("<style").count(), 1);
        assert!(
            !CONSOLE_HTML.contains(" style="),
            "style attributes need a hash each"
        );
        assert!(CONSOLE_STYLE.starts_with("'sha256-") && CONSOLE_STYLE.len() == 53);
        assert_ne!(*CONSOLE_STYLE, style_hash(""));
    }

    #[test]
    fn the_landing_page_has_one_hashed_style_and_no_script() {
        assert_eq!(LANDING_HTML.matches("<style").count(), 1);
        assert!(!LANDING_HTML.contains("<script") && !LANDING_HTML.contains(" style="));
        assert!(LANDING_STYLE.starts_with("'sha256-") && LANDING_STYLE.len() == 53);
        for link in [
            "href=\"/demo\"",
            "href=\"/console\"",
            "href=\"/openapi.json\"",
        ] {
            assert!(LANDING_HTML.contains(link), "{link}");
        }
    }

    #[test]
    fn only_plain_hosts_reach_the_policy() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            page_host(&m).map(str::to_owned)
        };
        for ok in ["127.0.0.1:8080", "chat.example.com", "localhost:1", "a-b.c"] {
            assert_eq!(host(ok).as_deref(), Some(ok));
        }
        for bad in [
            "",
            "[::1]:8080",
            "a b",
            "x;script-src *",
            "h:",
            "h:123456",
            "h:8a",
            "é",
        ] {
            if HeaderValue::from_str(bad).is_ok() {
                assert_eq!(host(bad), None, "{bad}");
            }
        }
        assert_eq!(page_host(&HeaderMap::new()), None);
    }

    #[test]
    fn if_none_match() {
        let inm = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            etag_matches(&m, "\"abc\"")
        };
        assert!(inm("\"abc\"") && inm("W/\"abc\"") && inm("\"x\", \"abc\"") && inm("*"));
        assert!(!inm("\"abcd\"") && !inm("abc") && !inm(""));
        assert!(!etag_matches(&HeaderMap::new(), "\"abc\""));
    }
}
