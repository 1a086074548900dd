//! `GET /v1/config` (shape, key errors, availability modes with the 60 s tenant cache and
//! a fresh challenge every time, business hours across the March 2026 DST change) and the
//! operations routes (`/healthz`, `/readyz`, `/metrics`, unknown routes, wrong methods).

mod common;

use common::*;
use confab_protocol::time::format_ms;
use serde_json::{json, Value};

fn at(s: &str) -> i64 {
    confab_protocol::time::parse_ms(s).unwrap()
}

async fn config(c: &Client) -> Value {
    let r = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test]
async fn config_has_the_spec_shape() {
    let (gw, clock) = start_clocked(&config_toml("")).await;
    let c = gw.client();
    let r = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v = &r.json;
    assert_eq!(v["tenant"], json!({"id": "acme", "name": "Acme"}));
    assert_eq!(
        v["branding"],
        json!({"primaryColor": "#10A37F", "position": "bottom-right", "label": "Chat with us", "logo": null})
    );
    assert_eq!(v["greeting"], "Hi there! How can we help?");
    assert_eq!(v["isAvailable"], true);
    assert_eq!(v["availabilityMode"], "always");
    // Seed 004's intent shape (camelCase, with its one snake_case field).
    let intents = v["intents"].as_array().unwrap();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["name"], "billing");
    assert_eq!(intents[0]["displayLabel"], "Billing question");
    assert_eq!(intents[0]["examples"], json!(["Where is my invoice?"]));
    assert!(intents[0]["required_entities"].is_array());
    assert!(intents[0].get("display_label").is_none());
    // Quick questions: intentName null unless the intent exists.
    assert_eq!(
        v["quickQuestions"],
        json!([
            {"question": "What are your prices?", "pageType": "pricing", "flowId": null, "intentName": "billing"},
            {"question": "Unlinked", "pageType": "general", "flowId": null, "intentName": null}
        ])
    );
    let token = v["initChallenge"]["token"].as_str().unwrap();
    assert!(!token.is_empty());
    // The challenge lives 10 minutes by default.
    assert_eq!(
        v["initChallenge"]["expiresAt"],
        format_ms(clock.now() + 600_000)
    );
    assert_ts(&v["initChallenge"]["expiresAt"]);
    assert_eq!(
        v["telemetry"],
        json!({"eventTypes": ["OPEN", "CLOSE", "TYPING", "ERROR", "MESSAGE"], "sampleRate": 1.0})
    );
    assert_eq!(
        v["limits"],
        json!({
            "maxMessageLength": 10000,
            "maxAttachmentBytes": 10485760,
            "attachmentTypes": ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"]
        })
    );

    // The other tenant gets its own settings.
    let r = c.get(&format!("/v1/config?pk={PK2}"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["tenant"], json!({"id": "globex", "name": "Globex"}));
    assert_eq!(r.json["intents"], json!([]));
    assert_eq!(r.json["quickQuestions"], json!([]));
    gw.shutdown().await;
}

#[tokio::test]
async fn configured_branding_and_sample_rate_are_served() {
    let extra = r##"greeting = "Moin!"
telemetry_sample_rate = 0.25
max_message_length = 500
[tenants.branding]
primary_color = "#000000"
position = "bottom-left"
label = "Talk to us"
logo = "https://cdn.example/logo.png"
[tenants.attachments]
max_bytes = 2048
allowed_types = ["image/png", "application/pdf"]
"##;
    let gw = Gateway::start(&config_toml(extra)).await;
    let v = config(&gw.client()).await;
    assert_eq!(v["greeting"], "Moin!");
    assert_eq!(
        v["branding"],
        json!({"primaryColor": "#000000", "position": "bottom-left", "label": "Talk to us", "logo": "https://cdn.example/logo.png"})
    );
    assert_eq!(v["telemetry"]["sampleRate"], 0.25);
    assert_eq!(v["limits"]["maxMessageLength"], 500);
    // The widget checks a file against the tenant's attachment limits before uploading it.
    assert_eq!(v["limits"]["maxAttachmentBytes"], 2048);
    assert_eq!(
        v["limits"]["attachmentTypes"],
        json!(["image/png", "application/pdf"])
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn public_key_errors() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    assert_invalid(&c.get("/v1/config", &[]).await, "pk");
    assert_invalid(&c.get("/v1/config?pk=", &[]).await, "pk");
    for bad in [
        "pk_live_0123",
        "pk_test_0123456789abcdef0123456789abcdef",
        "pk_live_0123456789ABCDEF0123456789abcdef",
        "pk_live_0123456789abcdef0123456789abcdef0",
        "pk_live_0123456789abcdef0123456789abcdeg",
    ] {
        assert_invalid(&c.get(&format!("/v1/config?pk={bad}"), &[]).await, "pk");
    }
    let r = c
        .get(
            "/v1/config?pk=pk_live_00000000000000000000000000000000",
            &[],
        )
        .await;
    assert_error(&r, 404, "unknown_public_key");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_challenge_is_fresh_on_every_response() {
    let (gw, clock) = start_clocked(&config_toml("")).await;
    let c = gw.client();
    let a = config(&c).await;
    clock.advance(1_000);
    let b = config(&c).await;
    assert_ne!(a["initChallenge"]["token"], b["initChallenge"]["token"]);
    let (ea, eb) = (
        assert_ts(&a["initChallenge"]["expiresAt"]),
        assert_ts(&b["initChallenge"]["expiresAt"]),
    );
    assert_eq!(eb - ea, 1_000);
    gw.shutdown().await;
}

#[tokio::test]
async fn offline_mode_is_never_available() {
    let gw = Gateway::start(&config_toml("[tenants.availability]\nmode = \"offline\"\n")).await;
    let v = config(&gw.client()).await;
    assert_eq!(v["isAvailable"], false);
    assert_eq!(v["availabilityMode"], "offline");
    // The other tenant keeps the default.
    let r = gw.client().get(&format!("/v1/config?pk={PK2}"), &[]).await;
    assert_eq!(r.json["isAvailable"], true);
    assert_eq!(r.json["availabilityMode"], "always");
    gw.shutdown().await;
}

const BERLIN: &str = r#"[tenants.availability]
mode = "business_hours"
timezone = "Europe/Berlin"
hours = { mon = ["09:00-17:00"], tue = ["09:00-17:00"], wed = ["09:00-17:00"], thu = ["09:00-17:00"], fri = ["09:00-17:00"], sat = [] }
"#;

#[tokio::test]
async fn business_hours_follow_the_berlin_dst_change() {
    let (gw, clock) = start_clocked(&config_toml(BERLIN)).await;
    let c = gw.client();
    // Each step moves the clock by far more than 60 s, so the tenant part is recomputed.
    let cases = [
        // Friday 27 March 2026, CET (UTC+1).
        ("2026-03-27T07:30:00Z", false), // 08:30 local
        ("2026-03-27T08:30:00Z", true),  // 09:30
        ("2026-03-27T15:30:00Z", true),  // 16:30
        ("2026-03-27T16:30:00Z", false), // 17:30
        // Saturday and Sunday (the switch is Sunday 29 March, 01:00 UTC): closed.
        ("2026-03-28T10:00:00Z", false),
        ("2026-03-29T10:00:00Z", false),
        // Monday 30 March 2026, CEST (UTC+2): the same UTC times answer differently.
        ("2026-03-30T06:30:00Z", false), // 08:30 local
        ("2026-03-30T07:30:00Z", true),  // 09:30 (08:30 in CET: would be closed)
        ("2026-03-30T14:30:00Z", true),  // 16:30
        ("2026-03-30T15:30:00Z", false), // 17:30 (16:30 in CET: would be open)
    ];
    for (when, open) in cases {
        clock.set(at(when));
        let v = config(&c).await;
        assert_eq!(v["availabilityMode"], "business_hours");
        assert_eq!(v["isAvailable"], open, "at {when}");
        assert_eq!(
            assert_ts(&v["initChallenge"]["expiresAt"]),
            at(when) + 600_000
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn availability_is_cached_for_60_s_but_the_challenge_is_not() {
    let (gw, clock) = start_clocked(&config_toml(BERLIN)).await;
    let c = gw.client();
    for (before_opening, label) in [
        // 08:59:30 CET on Friday, and 08:59:30 CEST on Monday after the change.
        ("2026-03-27T07:59:30Z", "CET"),
        ("2026-03-30T06:59:30Z", "CEST"),
    ] {
        let t0 = at(before_opening);
        clock.set(t0);
        let first = config(&c).await;
        assert_eq!(first["isAvailable"], false, "{label}: closed before 09:00");
        // 40 s later it is 09:00:10 local, but the tenant part is at most 60 s old: unchanged.
        clock.set(t0 + 40_000);
        let cached = config(&c).await;
        assert_eq!(cached["isAvailable"], false, "{label}: cached for 60 s");
        assert_ne!(
            cached["initChallenge"]["token"], first["initChallenge"]["token"],
            "{label}: fresh challenge"
        );
        assert_eq!(
            assert_ts(&cached["initChallenge"]["expiresAt"]),
            t0 + 40_000 + 600_000
        );
        clock.set(t0 + 59_999);
        assert_eq!(
            config(&c).await["isAvailable"],
            false,
            "{label}: still within 60 s"
        );
        // More than 60 s after it was computed: recomputed, now open.
        clock.set(t0 + 61_000);
        let fresh = config(&c).await;
        assert_eq!(fresh["isAvailable"], true, "{label}: recomputed after 60 s");
        assert_eq!(
            assert_ts(&fresh["initChallenge"]["expiresAt"]),
            t0 + 61_000 + 600_000
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let h = c.get("/healthz", &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json["status"], "ok");
    let r = c.get("/readyz", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "ready");
    config(&c).await;
    let m = c.get("/metrics", &[]).await;
    assert_eq!(m.status, 200);
    assert!(m.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        m.text.contains("# TYPE confab_http_requests_total counter"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains(r#"confab_http_requests_total{route="/v1/config",status="200"} 1"#),
        "{}",
        m.text
    );
    assert!(
        m.text.contains("confab_messages_stored_total 0"),
        "{}",
        m.text
    );
    // Every metric says what it is; latency and queue depth are histograms.
    let types: Vec<&str> = m
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for name in &types {
        assert!(
            m.text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    for h in [
        "confab_http_request_duration_seconds",
        "confab_store_append_duration_seconds",
        "confab_hub_queue_depth_frames",
    ] {
        assert!(
            m.text.contains(&format!("# TYPE {h} histogram")),
            "{h}: {}",
            m.text
        );
    }
    assert!(
        m.text
            .contains(r#"confab_http_request_duration_seconds_count{route="/v1/config"} 1"#),
        "{}",
        m.text
    );
    // Every non-comment line is `name{labels} value` or `name value`.
    for line in m
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    for path in [
        "/nope",
        "/v1",
        "/v1/configs",
        "/v1/tenant/conversations/a/b/c",
    ] {
        assert_error(&c.get(path, &[]).await, 404, "not_found");
    }
    assert_error(&c.post("/v1/nope", &[], &json!({})).await, 404, "not_found");
    for (method, path) in [
        ("DELETE", "/v1/config"),
        ("POST", "/v1/config"),
        ("GET", "/v1/sessions"),
        ("PUT", "/v1/messages"),
        ("GET", "/v1/events"),
        ("DELETE", "/v1/tenant/conversations"),
        ("GET", "/v1/tenant/conversations/x/close"),
        ("POST", "/healthz"),
    ] {
        let r = c.request(method, path, &[], None).await;
        assert_error(&r, 405, "method_not_allowed");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn static_assets_are_served() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let w = c.get("/widget.js", &[]).await;
    assert_eq!(w.status, 200);
    assert!(w.headers["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    let d = c.get("/demo", &[]).await;
    assert_eq!(d.status, 200);
    assert!(
        d.text.contains(PK),
        "the demo page embeds the first tenant's key"
    );
    gw.shutdown().await;
}
