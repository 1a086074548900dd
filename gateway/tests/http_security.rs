//! Abuse and browser-safety rules over HTTP: body errors (400 `invalid_json`, 413),
//! origin allowlists (tenant, global, wildcard) and CORS, every rate limit of the SPEC's
//! table with `Retry-After` (and that refused messages are not stored), and the
//! `X-Forwarded-For` rule (believed only from a trusted proxy).

mod common;

use common::*;
use serde_json::{json, Value};

fn quiet() -> String {
    without_auto_reply(&config_toml(""))
}

/// A session request body for `pk` (fresh challenge, human timing).
async fn session_body(c: &Client, pk: &str) -> Value {
    json!({"publicKey": pk, "initChallenge": c.challenge(pk).await, "botSignals": {"elapsedMs": 1500}})
}

async fn count_conversations(c: &Client) -> usize {
    let r = c
        .get_auth("/v1/tenant/conversations?limit=200", SERVER_KEY)
        .await;
    assert_eq!(r.status, 200);
    r.json["conversations"].as_array().unwrap().len()
}

/// Asserts a 429 with a sane `Retry-After`; returns its seconds.
fn assert_rate_limited(r: &Resp, window_secs: u64) -> u64 {
    assert_error(r, 429, "rate_limited");
    let secs: u64 = r
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        secs >= 1 && secs <= window_secs,
        "Retry-After {secs} outside 1..={window_secs}"
    );
    secs
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let conv = format!("/v1/tenant/conversations/{}/messages", s.conversation_id);
    let visitor = bearer(&s.token);
    let server = bearer(SERVER_KEY);
    let session_json = format!(r#"{{"publicKey":"{PK}"}}"#);
    // (path, authorization, a body of the right shape)
    let routes: [(&str, &str, &str); 5] = [
        ("/v1/sessions", "", &session_json),
        ("/v1/messages", &visitor, r#"{"message":"x"}"#),
        ("/v1/events", &visitor, r#"{"type":"OPEN"}"#),
        (&conv, &server, r#"{"message":"x"}"#),
        ("/v1/tenant/events", &server, r#"{"type":"a:b"}"#),
    ];
    for (path, auth, valid) in routes {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth)]
        };
        let trailing = [
            format!("{valid} trailing"),
            format!("{valid}{valid}"),
            format!("{valid},"),
            format!("{valid}]"),
        ];
        let malformed: Vec<Vec<u8>> = [
            &b"{not json"[..],
            b"",
            b"{\"message\": \"unterminated",
            b"\xff\xfe",
            b"nul",
            b"{\"message\":\"x\",}",
        ]
        .into_iter()
        .map(<[u8]>::to_vec)
        .chain(trailing.iter().map(|t| t.as_bytes().to_vec()))
        .collect();
        for body in malformed {
            let r = c.request("POST", path, &headers, Some(body.clone())).await;
            assert_eq!(
                r.status,
                400,
                "{path} {:?}: {}",
                String::from_utf8_lossy(&body),
                r.text
            );
            assert_error(&r, 400, "invalid_json");
        }
        // JSON that is not an object is not a body (serde would read `[1, 2]` as a struct).
        let r = c
            .request("POST", path, &headers, Some(b"[1, 2]".to_vec()))
            .await;
        assert_error(&r, 400, "invalid_json");
        // An object of the wrong shape is a 422.
        let r = c
            .request(
                "POST",
                path,
                &headers,
                Some(br#"{"publicKey":1,"message":1,"type":1}"#.to_vec()),
            )
            .await;
        assert_error(&r, 422, "validation_failed");
        // 64 KiB is the largest accepted body: one more byte is 413.
        let exact = padded_body(64 * 1024);
        let r = c.request("POST", path, &headers, Some(exact)).await;
        assert_ne!(
            r.status, 413,
            "{path}: 64 KiB exactly is accepted: {}",
            r.text
        );
        let over = padded_body(64 * 1024 + 1);
        let r = c.request("POST", path, &headers, Some(over)).await;
        assert_error(&r, 413, "payload_too_large");
        let huge = padded_body(200 * 1024);
        assert_error(
            &c.request("POST", path, &headers, Some(huge)).await,
            413,
            "payload_too_large",
        );
    }
    // Trailing whitespace is still just the value.
    let r = c
        .request(
            "POST",
            "/v1/events",
            &[("authorization", &visitor)],
            Some(b"{\"type\":\"OPEN\"}\r\n \t".to_vec()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // A text/plain body (sendBeacon) is read as JSON all the same.
    let r = c
        .request(
            "POST",
            "/v1/events",
            &[("authorization", &visitor), ("content-type", "text/plain")],
            Some(br#"{"type":"OPEN"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // None of it stored anything.
    assert_eq!(c.history(&s).await.len(), 0);
    assert_eq!(count_conversations(&c).await, 1);
    gw.shutdown().await;
}

/// A JSON object of exactly `n` bytes: `{"message":"xxx…"}`.
fn padded_body(n: usize) -> Vec<u8> {
    let overhead = r#"{"message":""}"#.len();
    let body = format!(r#"{{"message":"{}"}}"#, "x".repeat(n - overhead));
    assert_eq!(body.len(), n);
    body.into_bytes()
}

const ORIGINS: &str = r#"allowed_origins = ["https://shop.example", "https://*.brand.example"]
"#;

fn origin_config() -> String {
    without_auto_reply(&config_toml_global(
        r#"allowed_origins = ["https://global.example"]"#,
        ORIGINS,
    ))
}

fn acao(r: &Resp) -> Option<&str> {
    r.headers
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn tenant_global_and_wildcard_origin_lists() {
    let gw = Gateway::start(&origin_config()).await;
    let c = gw.client();
    let cfg = |pk: &'static str, origin: &'static str| {
        let c = c.clone();
        async move {
            let headers: Vec<(&str, &str)> = if origin.is_empty() {
                vec![]
            } else {
                vec![("origin", origin)]
            };
            c.get(&format!("/v1/config?pk={pk}"), &headers).await
        }
    };
    // Acme's own list replaces the global one.
    for ok in [
        "https://shop.example",
        "https://SHOP.example",
        "https://eu.brand.example",
        "https://a.b.brand.example",
        "",
    ] {
        let r = cfg(PK, ok).await;
        assert_eq!(r.status, 200, "{ok}: {}", r.text);
        if !ok.is_empty() {
            assert_eq!(acao(&r), Some(ok));
        }
    }
    for bad in [
        "https://global.example",
        "https://brand.example",
        "http://shop.example",
        "https://shop.example:8443",
        "https://shop.example.evil",
        "https://evilbrand.example",
        "null",
    ] {
        assert_error(&cfg(PK, bad).await, 403, "origin_not_allowed");
    }
    // Globex has no list of its own: the global list applies.
    assert_eq!(cfg(PK2, "https://global.example").await.status, 200);
    assert_eq!(cfg(PK2, "").await.status, 200);
    assert_error(
        &cfg(PK2, "https://shop.example").await,
        403,
        "origin_not_allowed",
    );
    // A refusal the browser may read carries ACAO when some tenant allows the origin;
    // an origin nobody allows gets none.
    assert_eq!(
        acao(&cfg(PK, "https://global.example").await),
        Some("https://global.example")
    );
    assert_eq!(acao(&cfg(PK, "https://evil.example").await), None);

    // Sessions, visitor routes and tenant routes check the same list.
    let s = c.session(PK).await; // no Origin: server-to-server is fine
    let b = session_body(&c, PK).await;
    let r = c
        .post("/v1/sessions", &[("origin", "https://evil.example")], &b)
        .await;
    assert_error(&r, 403, "origin_not_allowed");
    let r = c
        .post("/v1/sessions", &[("origin", "https://global.example")], &b)
        .await;
    assert_error(&r, 403, "origin_not_allowed");
    let r = c
        .post(
            "/v1/sessions",
            &[("origin", "https://eu.brand.example")],
            &b,
        )
        .await;
    assert_eq!(
        r.status, 201,
        "refused attempts left the challenge usable: {}",
        r.text
    );
    let auth = s.bearer();
    let server_auth = bearer(SERVER_KEY);
    for origin in ["https://global.example", "https://evil.example"] {
        let h = [("authorization", auth.as_str()), ("origin", origin)];
        assert_error(&c.get("/v1/messages", &h).await, 403, "origin_not_allowed");
        assert_error(
            &c.post("/v1/messages", &h, &json!({"message": "x"})).await,
            403,
            "origin_not_allowed",
        );
        assert_error(
            &c.post("/v1/events", &h, &json!({"type": "OPEN"})).await,
            403,
            "origin_not_allowed",
        );
        let t = [("authorization", server_auth.as_str()), ("origin", origin)];
        assert_error(
            &c.get("/v1/tenant/conversations", &t).await,
            403,
            "origin_not_allowed",
        );
    }
    let h = [
        ("authorization", auth.as_str()),
        ("origin", "https://shop.example"),
    ];
    let r = c
        .post("/v1/messages", &h, &json!({"message": "from the shop"}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(acao(&r), Some("https://shop.example"));
    assert_eq!(c.history(&s).await.len(), 1, "refused sends stored nothing");
    gw.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let gw = Gateway::start(&origin_config()).await;
    let c = gw.client();
    let routes = [
        "/v1/config?pk=x",
        "/v1/sessions",
        "/v1/messages",
        "/v1/events",
        "/v1/tenant/conversations",
        "/v1/tenant/conversations/abc",
        "/v1/tenant/conversations/abc/messages",
        "/v1/tenant/conversations/abc/close",
        "/v1/tenant/events",
        "/healthz",
    ];
    for path in routes {
        for origin in [
            "https://shop.example",
            "https://eu.brand.example",
            "https://global.example",
        ] {
            let r = c
                .request(
                    "OPTIONS",
                    path,
                    &[
                        ("origin", origin),
                        ("access-control-request-method", "POST"),
                        (
                            "access-control-request-headers",
                            "authorization, content-type",
                        ),
                    ],
                    None,
                )
                .await;
            assert_eq!(r.status, 204, "{path} from {origin}: {}", r.text);
            assert_eq!(acao(&r), Some(origin), "{path}");
            let methods = r.headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .to_ascii_uppercase();
            assert!(
                methods.contains("GET") && methods.contains("POST"),
                "{methods}"
            );
            let allowed = r.headers["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .to_ascii_lowercase();
            assert!(
                allowed.contains("authorization") && allowed.contains("content-type"),
                "{allowed}"
            );
        }
        for origin in ["https://evil.example", "https://brand.example", "null"] {
            let r = c
                .request(
                    "OPTIONS",
                    path,
                    &[
                        ("origin", origin),
                        ("access-control-request-method", "POST"),
                    ],
                    None,
                )
                .await;
            assert_error(&r, 403, "origin_not_allowed");
            assert_eq!(acao(&r), None);
        }
    }
    // Normal responses carry ACAO (and expose Retry-After) for allowed origins only.
    let r = c
        .get(
            &format!("/v1/config?pk={PK}"),
            &[("origin", "https://shop.example")],
        )
        .await;
    assert_eq!(acao(&r), Some("https://shop.example"));
    let expose = r.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(expose.contains("retry-after"), "{expose}");
    assert!(r.headers.get_all("vary").iter().any(|v| v
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("origin")));
    let r = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(acao(&r), None, "no Origin, no ACAO");
    // Errors too, so the widget can read them.
    let r = c
        .get("/v1/messages", &[("origin", "https://shop.example")])
        .await;
    assert_error(&r, 401, "invalid_session");
    assert_eq!(acao(&r), Some("https://shop.example"));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_empty_list_allows_any_origin() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let r = c
        .request(
            "OPTIONS",
            "/v1/sessions",
            &[
                ("origin", "https://anything.example"),
                ("access-control-request-method", "POST"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(acao(&r), Some("https://anything.example"));
    let r = c
        .get(
            &format!("/v1/config?pk={PK}"),
            &[("origin", "http://localhost:3000")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(acao(&r), Some("http://localhost:3000"));
    // A preflight without Origin is still answered.
    assert_eq!(
        c.request("OPTIONS", "/v1/messages", &[], None).await.status,
        204
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn sessions_per_hour_per_ip() {
    let (gw, clock) = start_clocked(&with_limit(&quiet(), "sessions_per_hour_per_ip", 2)).await;
    let c = gw.client();
    let first = c.session(PK).await;
    c.session(PK).await;
    let b = session_body(&c, PK).await;
    let r = c.post("/v1/sessions", &[], &b).await;
    let wait = assert_rate_limited(&r, 3600);
    assert_eq!(
        count_conversations(&c).await,
        2,
        "a refused session creates nothing"
    );
    // Resuming is a session start too.
    let r = c
        .session_with(PK, json!({"visitorToken": first.visitor_token}))
        .await;
    assert_rate_limited(&r, 3600);
    // Per tenant: the other tenant's bucket is its own.
    c.session(PK2).await;
    // Retry-After is accurate on the gateway's clock.
    clock.advance(wait as i64 * 1000 - 1_500);
    assert_rate_limited(
        &c.post("/v1/sessions", &[], &session_body(&c, PK).await)
            .await,
        3600,
    );
    clock.advance(1_500);
    let r = c
        .post("/v1/sessions", &[], &session_body(&c, PK).await)
        .await;
    assert_eq!(r.status, 201, "after Retry-After: {}", r.text);
    assert_rate_limited(
        &c.post("/v1/sessions", &[], &session_body(&c, PK).await)
            .await,
        3600,
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn messages_per_hour_per_ip_spans_sessions_and_first_messages() {
    let (gw, clock) = start_clocked(&with_limit(&quiet(), "messages_per_hour_per_ip", 3)).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    // A first message given to POST /v1/sessions counts.
    let r = c.session_with(PK, json!({"message": "one"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a = c.session(PK).await;
    let b = c.session(PK).await;
    assert_eq!(c.send(&a, "two", None).await.status, 201);
    assert_eq!(c.send(&b, "three", None).await.status, 201);
    let offset = c.tenant_events(&agent, None).await.json["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let wait = assert_rate_limited(&c.send(&a, "four", Some("k4")).await, 3600);
    assert_rate_limited(&c.send(&b, "four", None).await, 3600);
    let before = count_conversations(&c).await;
    let r = c.session_with(PK, json!({"message": "hello?"})).await;
    assert_rate_limited(&r, 3600);
    assert_eq!(
        count_conversations(&c).await,
        before,
        "a refused first message refuses its session"
    );
    // Nothing refused was stored or announced.
    assert_eq!(c.history(&a).await.len(), 1);
    assert_eq!(c.history(&b).await.len(), 1);
    assert_eq!(
        c.tenant_events(&agent, Some(&offset)).await.json["events"],
        json!([])
    );
    // Agents are not limited by visitors' buckets.
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{}/messages", a.conversation_id),
            &agent,
            &json!({"message": "agent"}),
        )
        .await;
    assert_eq!(r.status, 201);
    clock.advance(wait as i64 * 1000);
    assert_eq!(c.send(&a, "four", Some("k4")).await.status, 201);
    gw.shutdown().await;
}

#[tokio::test]
async fn messages_per_minute_per_session() {
    let (gw, clock) =
        start_clocked(&with_limit(&quiet(), "messages_per_minute_per_session", 2)).await;
    let c = gw.client();
    let a = c.session(PK).await;
    let b = c.session(PK).await;
    assert_eq!(c.send(&a, "1", None).await.status, 201);
    assert_eq!(c.send(&a, "2", None).await.status, 201);
    let wait = assert_rate_limited(&c.send(&a, "3", Some("k3")).await, 60);
    assert_eq!(
        c.history(&a).await.len(),
        2,
        "the refused message is not stored"
    );
    // Another session has its own bucket.
    assert_eq!(c.send(&b, "1", None).await.status, 201);
    // A resumed session is the same visitor, the same bucket.
    let r = c
        .session_with(PK, json!({"visitorToken": a.visitor_token}))
        .await;
    let resumed = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        ..a.clone()
    };
    assert_rate_limited(&c.send(&resumed, "3", Some("k3")).await, 60);
    clock.advance(wait as i64 * 1000);
    let r = c.send(&a, "3", Some("k3")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(c.history(&a).await.len(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_sessions_first_message_takes_the_path_of_every_message() {
    let gw = Gateway::start(&with_limit(&quiet(), "messages_per_minute_per_session", 2)).await;
    let c = gw.client();
    // The first message of a new session takes one of the session's two.
    let r = c
        .session_with(PK, json!({"message": "hello", "clientMessageId": "first"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: r.json["visitorToken"].as_str().unwrap().into(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: r.json["visitorId"].as_str().unwrap().into(),
    };
    assert_eq!(c.send(&a, "two", None).await.status, 201);
    assert_rate_limited(&c.send(&a, "three", None).await, 60);
    // A resumed visitor at its limit cannot slip a message in through a new session.
    let r = c
        .session_with(
            PK,
            json!({"visitorToken": a.visitor_token, "message": "sneaky", "clientMessageId": "s"}),
        )
        .await;
    assert_rate_limited(&r, 60);
    let history = c.history(&a).await;
    let mine: Vec<_> = history
        .iter()
        .filter(|m| m["author"]["kind"] == "visitor")
        .collect();
    assert_eq!(mine.len(), 2, "{history:?}");
    assert_eq!(mine[0]["clientMessageId"], "first");
    // Each refusal is counted under the limit that made it, not under every limit checked.
    let metrics = c.get("/metrics", &[]).await.text;
    assert!(
        metrics.contains("confab_rate_limited_total{limit=\"msg-vis\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("limit=\"msg-ip\""), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_resumed_sessions_first_message_is_idempotent() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let a = c.session(PK).await;
    for _ in 0..2 {
        let r = c
            .session_with(
                PK,
                json!({"visitorToken": a.visitor_token, "message": "again?", "clientMessageId": "once"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let history = c.history(&a).await;
    let mine: Vec<_> = history
        .iter()
        .filter(|m| m["author"]["kind"] == "visitor")
        .collect();
    assert_eq!(mine.len(), 1, "{history:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_retried_message_is_acknowledged_even_at_the_limit() {
    let gw = Gateway::start(&with_limit(&quiet(), "messages_per_minute_per_session", 2)).await;
    let c = gw.client();
    let a = c.session(PK).await;
    let first = c.send(&a, "1", Some("k1")).await;
    assert_eq!(first.status, 201);
    assert_eq!(c.send(&a, "2", Some("k2")).await.status, 201);
    // The answer to k2 was lost; the widget retries it.
    let retry = c.send(&a, "2", Some("k2")).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.json["duplicate"], true);
    gw.shutdown().await;
}

#[tokio::test]
async fn config_per_minute_per_ip() {
    let (gw, clock) = start_clocked(&with_limit(&quiet(), "config_per_minute_per_ip", 2)).await;
    let c = gw.client();
    let path = format!("/v1/config?pk={PK}");
    let get = || c.get(&path, &[]);
    assert_eq!(get().await.status, 200);
    assert_eq!(get().await.status, 200);
    let wait = assert_rate_limited(&get().await, 60);
    assert_eq!(
        c.get(&format!("/v1/config?pk={PK2}"), &[]).await.status,
        200,
        "per tenant"
    );
    clock.advance(wait as i64 * 1000);
    assert_eq!(get().await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_public_keys_are_rate_limited_per_ip() {
    // Acme at 3 per minute, Globex at the default 60: the unknown-key bucket is sized by
    // the largest.
    let (gw, clock) = start_clocked(&with_limit(&quiet(), "config_per_minute_per_ip", 3)).await;
    let c = gw.client();
    let unknown = |n: u32| format!("/v1/config?pk=pk_live_{n:032x}");
    for n in 0..60 {
        assert_error(&c.get(&unknown(n), &[]).await, 404, "unknown_public_key");
    }
    let wait = assert_rate_limited(&c.get(&unknown(60), &[]).await, 60);
    // Guessing through the session route draws on the same bucket.
    let r = c
        .post(
            "/v1/sessions",
            &[],
            &json!({"publicKey": format!("pk_live_{:032x}", 61)}),
        )
        .await;
    assert_rate_limited(&r, 60);
    // Known keys keep their own allowance.
    assert_eq!(c.get(&format!("/v1/config?pk={PK}"), &[]).await.status, 200);
    clock.advance(wait as i64 * 1000);
    assert_error(&c.get(&unknown(62), &[]).await, 404, "unknown_public_key");
    gw.shutdown().await;
}

#[tokio::test]
async fn polls_per_minute_per_session() {
    let (gw, clock) = start_clocked(&with_limit(&quiet(), "polls_per_minute_per_session", 2)).await;
    let c = gw.client();
    let a = c.session(PK).await;
    let b = c.session(PK).await;
    assert_eq!(c.get_auth("/v1/messages", &a.token).await.status, 200);
    assert_eq!(
        c.get_auth("/v1/messages?limit=5", &a.token).await.status,
        200
    );
    let wait = assert_rate_limited(&c.get_auth("/v1/messages", &a.token).await, 60);
    assert_rate_limited(
        &c.get(&format!("/v1/messages?sessionToken={}", a.token), &[])
            .await,
        60,
    );
    assert_eq!(c.get_auth("/v1/messages", &b.token).await.status, 200);
    // Sending is a different bucket.
    assert_eq!(c.send(&a, "still allowed", None).await.status, 201);
    clock.advance(wait as i64 * 1000);
    assert_eq!(c.get_auth("/v1/messages", &a.token).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn events_per_minute_per_session() {
    let (gw, clock) =
        start_clocked(&with_limit(&quiet(), "events_per_minute_per_session", 2)).await;
    let c = gw.client();
    let a = c.session(PK).await;
    let b = c.session(PK).await;
    let ev = json!({"type": "OPEN"});
    assert_eq!(c.post_auth("/v1/events", &a.token, &ev).await.status, 202);
    assert_eq!(c.post_auth("/v1/events", &a.token, &ev).await.status, 202);
    let wait = assert_rate_limited(&c.post_auth("/v1/events", &a.token, &ev).await, 60);
    assert_eq!(c.post_auth("/v1/events", &b.token, &ev).await.status, 202);
    clock.advance(wait as i64 * 1000);
    assert_eq!(c.post_auth("/v1/events", &a.token, &ev).await.status, 202);
    let m = c.get("/metrics", &[]).await;
    assert!(
        m.text
            .contains(r#"confab_rate_limited_total{limit="evt-vis"} 1"#),
        "{}",
        m.text
    );
    gw.shutdown().await;
}

/// Starts a session with an `X-Forwarded-For` header; returns the status.
async fn session_via(c: &Client, xff: Option<&str>) -> Resp {
    let b = session_body(c, PK).await;
    let headers: Vec<(&str, &str)> = xff
        .map(|v| vec![("x-forwarded-for", v)])
        .unwrap_or_default();
    c.post("/v1/sessions", &headers, &b).await
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let gw = Gateway::start(&with_limit(&quiet(), "sessions_per_hour_per_ip", 2)).await;
    let c = gw.client();
    assert_eq!(session_via(&c, Some("203.0.113.1")).await.status, 201);
    assert_eq!(session_via(&c, Some("203.0.113.2")).await.status, 201);
    // A third "client" is really the same peer.
    assert_rate_limited(&session_via(&c, Some("203.0.113.3")).await, 3600);
    assert_rate_limited(&session_via(&c, None).await, 3600);
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_from_a_trusted_proxy() {
    let toml = with_limit(
        &config_toml_global(r#"trusted_proxies = ["127.0.0.1/32"]"#, ""),
        "sessions_per_hour_per_ip",
        2,
    );
    let gw = Gateway::start(&without_auto_reply(&toml)).await;
    let c = gw.client();
    for _ in 0..2 {
        assert_eq!(session_via(&c, Some("203.0.113.1")).await.status, 201);
    }
    assert_rate_limited(&session_via(&c, Some("203.0.113.1")).await, 3600);
    // Another client behind the proxy has its own bucket.
    assert_eq!(session_via(&c, Some("203.0.113.2")).await.status, 201);
    assert_eq!(session_via(&c, Some("203.0.113.2")).await.status, 201);
    assert_rate_limited(&session_via(&c, Some("203.0.113.2")).await, 3600);
    // The right-most untrusted hop counts: a spoofed left-most entry does not help.
    assert_rate_limited(
        &session_via(&c, Some("198.51.100.9, 203.0.113.1")).await,
        3600,
    );
    assert_eq!(
        session_via(&c, Some("203.0.113.1, 198.51.100.7"))
            .await
            .status,
        201
    );
    // No header: the proxy's own address.
    assert_eq!(session_via(&c, None).await.status, 201);
    // A garbled chain falls back to the peer (same bucket as no header).
    assert_eq!(session_via(&c, Some("not-an-ip")).await.status, 201);
    assert_rate_limited(&session_via(&c, Some("not-an-ip")).await, 3600);
    gw.shutdown().await;
}
