//! The SPEC's browser-safety headers ("Connections and abuse" → Headers): `nosniff` on
//! every response (JSON, errors, 404s, preflights, pages, metrics); a `Content-Security-Policy`
//! without inline scripts on `/console` and `/demo` (and no inline script left in them for
//! it to forbid), `frame-ancestors 'none'` and `X-Frame-Options: DENY` on the console; and
//! `/widget.js` cacheable cross-origin with a strong `ETag` that answers `If-None-Match`.

mod common;

use common::*;

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The directives of a CSP: name → sources.
fn directives(csp: &str) -> Vec<(String, Vec<String>)> {
    csp.split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut parts = d.split_ascii_whitespace();
            let name = parts.next().unwrap().to_ascii_lowercase();
            (name, parts.map(str::to_owned).collect())
        })
        .collect()
}

fn directive<'a>(d: &'a [(String, Vec<String>)], name: &str) -> Option<&'a [String]> {
    d.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice())
}

#[tokio::test]
async fn every_response_is_nosniff() {
    let gw = Gateway::start(&config_toml_global(
        r#"allowed_origins = ["https://shop.example"]"#,
        "",
    ))
    .await;
    let c = gw.client();
    let s = c.session(PK).await;
    let visitor = bearer(&s.token);
    let preflight = |origin: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ]
    };
    // (what, response)
    let cases = vec![
        ("health", c.get("/healthz", &[]).await),
        ("ready", c.get("/readyz", &[]).await),
        ("metrics", c.get("/metrics", &[]).await),
        ("openapi", c.get("/openapi.json", &[]).await),
        ("config", c.get(&format!("/v1/config?pk={PK}"), &[]).await),
        ("unknown key", c.get("/v1/config?pk=pk_nope", &[]).await),
        ("history", c.get_auth("/v1/messages", &s.token).await),
        ("no session", c.get("/v1/messages", &[]).await),
        (
            "bad json",
            c.request(
                "POST",
                "/v1/messages",
                &[("authorization", &visitor)],
                Some(b"{".to_vec()),
            )
            .await,
        ),
        ("404", c.get("/no/such/route", &[]).await),
        ("405", c.request("DELETE", "/healthz", &[], None).await),
        (
            "preflight",
            c.request(
                "OPTIONS",
                "/v1/sessions",
                &preflight("https://shop.example"),
                None,
            )
            .await,
        ),
        (
            "refused preflight",
            c.request(
                "OPTIONS",
                "/v1/sessions",
                &preflight("https://evil.example"),
                None,
            )
            .await,
        ),
        (
            "tenant API",
            c.get_auth("/v1/tenant/conversations", SERVER_KEY).await,
        ),
        ("tenant 401", c.get("/v1/tenant/conversations", &[]).await),
        ("widget.js", c.get("/widget.js", &[]).await),
        ("demo", c.get("/demo", &[]).await),
        ("console", c.get("/console", &[]).await),
        (
            "ws without upgrade",
            c.get("/v1/visitor/ws", &[("origin", "https://evil.example")])
                .await,
        ),
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (what, r) in &cases {
        statuses.insert(r.status);
        assert_eq!(
            header(r, "x-content-type-options"),
            Some("nosniff"),
            "{what} ({}) lacks nosniff",
            r.status
        );
    }
    // The cases really cover answers and errors of every kind.
    for s in [200, 204, 400, 401, 403, 404, 405] {
        assert!(statuses.contains(&s), "no {s} among {statuses:?}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn pages_carry_a_csp_without_inline_scripts() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let host = gw.addr.to_string();
    for page in ["/console", "/demo"] {
        let r = c.get(page, &[]).await;
        assert_eq!(r.status, 200, "{page}");
        let csp = header(&r, "content-security-policy")
            .unwrap_or_else(|| panic!("{page} has no Content-Security-Policy"));
        let d = directives(csp);
        let scripts = directive(&d, "script-src")
            .or_else(|| directive(&d, "default-src"))
            .unwrap_or_else(|| panic!("{page}: no script-src: {csp}"));
        assert!(scripts.iter().any(|s| s == "'self'"), "{page}: {csp}");
        for bad in [
            "'unsafe-inline'",
            "'unsafe-eval'",
            "*",
            "http:",
            "https:",
            "data:",
        ] {
            assert!(
                !scripts.iter().any(|s| s == bad),
                "{page} allows {bad}: {csp}"
            );
        }
        for name in ["object-src", "base-uri"] {
            assert_eq!(
                directive(&d, name),
                Some(&["'none'".to_owned()][..]),
                "{page}: {csp}"
            );
        }
        // Its own origin, for fetch and for the WebSocket (older browsers do not count
        // ws:/wss: as 'self').
        let connect = directive(&d, "connect-src").expect("connect-src");
        for source in [
            "'self'".to_owned(),
            format!("ws://{host}"),
            format!("wss://{host}"),
        ] {
            assert!(
                connect.contains(&source),
                "{page} connect-src lacks {source}: {csp}"
            );
        }
        assert!(
            header(&r, "referrer-policy").is_some(),
            "{page}: Referrer-Policy"
        );
        // Nothing left for the policy to block: no inline script, no inline handler.
        let html = r.text.to_ascii_lowercase();
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains(" src="), "{page} has an inline script: {tag}");
        }
        for attr in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onerror=",
            "javascript:",
        ] {
            assert!(!html.contains(attr), "{page} has an inline handler {attr}");
        }
        // The scripts it names are served, as JavaScript.
        for (i, _) in html.match_indices(" src=\"/") {
            let src = &r.text[i + 6..];
            let src = &src[..src.find('"').unwrap()];
            let js = c.get(src, &[]).await;
            assert_eq!(js.status, 200, "{page} includes {src}");
            assert!(
                header(&js, "content-type").unwrap().contains("javascript"),
                "{src}"
            );
        }
    }
    // The console cannot be framed (old browsers: X-Frame-Options).
    let r = c.get("/console", &[]).await;
    let d = directives(header(&r, "content-security-policy").unwrap());
    assert_eq!(
        directive(&d, "frame-ancestors"),
        Some(&["'none'".to_owned()][..])
    );
    assert_eq!(header(&r, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&r, "referrer-policy"), Some("no-referrer"));
    // A Host header cannot smuggle sources into the policy.
    for bad_host in ["evil.example; script-src *", "a b", "x'y"] {
        let r = c.get("/console", &[("host", bad_host)]).await;
        let csp = header(&r, "content-security-policy").unwrap_or("");
        assert!(!csp.contains("evil") && !csp.contains("x'y"), "{csp}");
        let d = directives(csp);
        assert_eq!(
            directive(&d, "script-src"),
            Some(&["'self'".to_owned()][..]),
            "{csp}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn widget_js_is_cacheable_cross_origin_with_a_strong_etag() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let r = c.get("/widget.js", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&r, "cross-origin-resource-policy"),
        Some("cross-origin")
    );
    let cc = header(&r, "cache-control").expect("Cache-Control");
    assert!(cc.contains("max-age="), "{cc}");
    let etag = header(&r, "etag").expect("ETag").to_owned();
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    assert_eq!(
        c.get("/widget.js", &[]).await.headers["etag"],
        etag.as_str(),
        "the same bytes, the same ETag"
    );
    // Revalidation: a matching tag (alone, weak, in a list, or `*`) gets an empty 304
    // that still carries the validators; anything else gets the script.
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for inm in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let r = c.get("/widget.js", &[("if-none-match", inm)]).await;
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert!(r.text.is_empty());
        assert_eq!(header(&r, "etag"), Some(etag.as_str()));
        assert!(header(&r, "cache-control").is_some());
        assert_eq!(
            header(&r, "cross-origin-resource-policy"),
            Some("cross-origin")
        );
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    }
    for inm in ["\"stale\"", "W/\"stale\", \"older\"", "garbage"] {
        let r = c.get("/widget.js", &[("if-none-match", inm)]).await;
        assert_eq!(r.status, 200, "If-None-Match: {inm}");
        assert!(r.text.contains("Confab"), "the script itself");
    }
    gw.shutdown().await;
}
