//! Request bodies and cursors as the contract describes them, whatever a client (or a
//! fuzzer) sends: a body is one JSON object or it is 400 `invalid_json`; every 422 names a
//! `field`; no error message speaks of Rust types; any valid timestamp is a cursor.

mod common;

use common::*;
use serde_json::{json, Value};

/// Every route that takes a JSON body, with the credential it needs.
async fn body_routes(gw: &Gateway) -> Vec<(String, String)> {
    let c = gw.client();
    let s = c.session(PK).await;
    vec![
        ("/v1/sessions".into(), String::new()),
        ("/v1/messages".into(), s.token.clone()),
        ("/v1/events".into(), s.token.clone()),
        (
            format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            SERVER_KEY.into(),
        ),
        ("/v1/tenant/events".into(), SERVER_KEY.into()),
    ]
}

async fn post_raw(gw: &Gateway, path: &str, token: &str, body: &str) -> Resp {
    let auth = bearer(token);
    let headers: Vec<(&str, &str)> = if token.is_empty() {
        vec![]
    } else {
        vec![("authorization", &auth)]
    };
    gw.client()
        .request("POST", path, &headers, Some(body.as_bytes().to_vec()))
        .await
}

/// Defect 7: serde also reads a struct from an array of its fields, so `["hello"]` was a
/// message. Every body must be a JSON object.
#[tokio::test]
async fn a_body_that_is_not_an_object_is_invalid_json_everywhere() {
    let gw = Gateway::start(&without_auto_reply(&config_toml(""))).await;
    let c = gw.client();
    let s = c.session(PK).await;
    for body in [
        r#"["hello"]"#,
        r#"["hello","c-1"]"#,
        r#""hello""#,
        "42",
        "null",
        "true",
    ] {
        let r = post_raw(&gw, "/v1/messages", &s.token, body).await;
        assert_error(&r, 400, "invalid_json");
    }
    assert_eq!(c.history(&s).await, Vec::<Value>::new(), "nothing stored");
    for (path, token) in body_routes(&gw).await {
        for body in [r#"["x"]"#, "[]", r#""x""#, "1.5", "null", "false"] {
            let r = post_raw(&gw, &path, &token, body).await;
            assert_error(&r, 400, "invalid_json");
            assert!(
                r.json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("JSON object"),
                "{path} {body}: {}",
                r.text
            );
        }
    }
}

/// Defect 10: a body of the wrong shape got a 422 without `field`, and messages like
/// "expected struct SendBody". Every 422 names its field; no message names a Rust type.
#[tokio::test]
async fn wrong_shapes_name_the_field_and_no_rust_type() {
    let gw = Gateway::start(&config_toml("")).await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/sessions",
            json!({"publicKey": PK, "contact": "jane"}),
            "contact",
        ),
        (
            "/v1/sessions",
            json!({"publicKey": PK, "contact": ["jane"]}),
            "contact",
        ),
        (
            "/v1/sessions",
            json!({"publicKey": PK, "botSignals": [1]}),
            "botSignals",
        ),
        (
            "/v1/sessions",
            json!({"publicKey": PK, "variables": [1]}),
            "variables",
        ),
        (
            "/v1/messages",
            json!({"message": {"text": "hi"}}),
            "message",
        ),
        ("/v1/events", json!({"type": ["OPEN"]}), "type"),
        ("/v1/events", json!({}), "type"),
        (
            "/v1/sessions",
            json!({"publicKey": PK, "botSignals": {"elapsedMs": "5000"}}),
            "botSignals.elapsedMs",
        ),
    ];
    let routes = body_routes(&gw).await;
    let token_for = |p: &str| {
        routes
            .iter()
            .find(|(r, _)| r == p)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let (reply_path, _) = routes[3].clone();
    let mut all = cases
        .into_iter()
        .map(|(p, b, f)| (p.to_owned(), token_for(p), b, f))
        .collect::<Vec<_>>();
    all.push((
        reply_path.clone(),
        SERVER_KEY.into(),
        json!({"message": "hi", "author": "bot"}),
        "author",
    ));
    all.push((
        reply_path,
        SERVER_KEY.into(),
        json!({"message": "hi", "author": {"kind": ["bot"]}}),
        "author.kind",
    ));
    all.push((
        "/v1/tenant/events".into(),
        SERVER_KEY.into(),
        json!({"type": "a:b", "conversationId": {"id": 1}}),
        "conversationId",
    ));
    for (path, token, body, field) in all {
        let r = post_raw(&gw, &path, &token, &body.to_string()).await;
        assert_invalid(&r, field);
        let msg = r.json["error"]["message"].as_str().unwrap();
        assert!(
            !msg.contains("struct ")
                && !msg.contains("enum ")
                && !msg.contains("Body")
                && !msg.contains("f64")
                && !msg.contains("u64"),
            "{path} {body}: {msg}"
        );
    }
}

/// Defect 10: `9999-12-31T00:00:00.000Z` is a valid RFC 3339 timestamp, beyond what the
/// time library's timestamp type holds; as a cursor it is simply after everything.
#[tokio::test]
async fn any_valid_timestamp_is_a_cursor() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "hello", None).await.status, 201);
    for since in [
        "9999-12-31T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
        "9999-12-31T23:59:59.999-01:00",
    ] {
        let r = c
            .get_auth(&format!("/v1/messages?since={since}"), &s.token)
            .await;
        assert_eq!(r.status, 200, "{since}: {}", r.text);
        assert_eq!(r.json["messages"], json!([]), "{since}");
        let r = c
            .get_auth(
                &format!(
                    "/v1/tenant/conversations/{}/messages?afterCreatedAt={since}&afterId=1",
                    s.conversation_id
                ),
                SERVER_KEY,
            )
            .await;
        assert_eq!(r.status, 200, "{since}: {}", r.text);
        assert_eq!(r.json["messages"], json!([]), "{since}");
    }
    let r = c
        .get_auth("/v1/messages?since=0001-01-01T00:00:00.000Z", &s.token)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.json["messages"].as_array().unwrap().is_empty());
}

/// Found by fuzzing against the description: a plain GET of a WebSocket route got axum's
/// text/plain 400. Every 4xx is the JSON error body.
#[tokio::test]
async fn channel_routes_asked_without_an_upgrade_answer_the_error_body() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    for path in ["/v1/visitor/ws", "/v1/tenant/ws"] {
        let r = c.get(path, &[]).await;
        assert_error(&r, 400, "bad_request");
        let r = c
            .get(path, &[("connection", "upgrade"), ("upgrade", "websocket")])
            .await;
        assert_error(&r, 400, "bad_request");
    }
}

/// A body announced (`Content-Length`) as larger than 64 KiB is refused with 413 before any
/// of it arrives, not held until the body timeout.
#[tokio::test]
async fn an_announced_oversized_body_is_413_at_once() {
    let gw = Gateway::start(&config_toml("")).await;
    let s = gw.client().session(PK).await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{",
        s.token
    );
    let text = raw_answer(gw.addr, &head, "payload_too_large").await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    gw.shutdown().await;
}
