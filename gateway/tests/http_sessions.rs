//! `POST /v1/sessions`: the 201 shape, resume rules, the optional first message, profile
//! fields and every validation rule, the init challenge (missing, malformed, expired,
//! reused, another tenant's), bot signals, session expiry, and the PII retention modes.

mod common;

use common::*;
use confab_protocol::time::format_ms;
use serde_json::{json, Value};

/// A session request body with a fresh challenge and human-looking bot signals.
async fn body(c: &Client, pk: &str, extra: Value) -> Value {
    let mut b = json!({"publicKey": pk, "initChallenge": c.challenge(pk).await, "botSignals": {"elapsedMs": 1500}});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

async fn start(c: &Client, b: &Value) -> Resp {
    c.post("/v1/sessions", &[], b).await
}

async fn conversation(c: &Client, tenant_token: &str, id: &str) -> Value {
    let r = c
        .get_auth(&format!("/v1/tenant/conversations/{id}"), tenant_token)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test]
async fn a_new_session_has_the_spec_shape() {
    let (gw, clock) = start_clocked(&config_toml("")).await;
    let c = gw.client();
    let r = c.session_with(PK, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = &r.json;
    assert!(v["sessionToken"].as_str().is_some_and(|t| !t.is_empty()));
    let vt = v["visitorToken"].as_str().unwrap();
    assert!(vt.starts_with("vis_"), "{vt}");
    // At least 128 random bits, URL-safe.
    assert!(vt.len() - 4 >= 22, "{vt}");
    assert!(
        vt[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{vt}"
    );
    let conv = v["conversationId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(conv).is_ok(), "{conv}");
    assert_eq!(v["resumed"], false);
    // Default session lifetime: 24 h on the gateway's clock.
    assert_eq!(v["expiresAt"], format_ms(clock.now() + 86_400_000));
    assert_ts(&v["expiresAt"]);
    assert_eq!(v["widget"], json!({"label": "Chat with us"}));
    assert_eq!(v["intents"][0]["name"], "billing");
    assert_eq!(v["intents"][0]["displayLabel"], "Billing question");
    assert_eq!(v["quickQuestions"][0]["intentName"], "billing");
    assert_eq!(v["quickQuestions"][1]["question"], "Unlinked");
    assert_eq!(
        v["quickQuestions"][1]["intentName"],
        Value::Null,
        "an intent that does not exist is null"
    );
    // Two sessions: two visitors, two conversations, two tokens.
    let r2 = c.session_with(PK, json!({})).await;
    assert_eq!(r2.status, 201);
    assert_ne!(r2.json["visitorToken"], v["visitorToken"]);
    assert_ne!(r2.json["conversationId"], v["conversationId"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_new_conversation_is_announced_and_stored_with_its_profile() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let before = c.tenant_events(&agent, None).await;
    let last = before.json["nextCursor"].as_str().map(str::to_owned);
    let r = c
        .session_with(
            PK,
            json!({
                "customerId": "cust-42",
                "locale": "de-DE",
                "contact": {"name": "Jane Doe", "email": "jane.doe@example.com"},
                "variables": {"cart_total": 129, "plan": "pro", "tags": ["a", ["b"]], "none": null, "vip": true},
                "visitorContext": {"pageUrl": "https://shop.example/p?x=1", "referrer": "https://google.com/",
                                   "pageTitle": "Pricing", "utm": {"source": "news", "medium": "email", "campaign": "c",
                                   "term": "t", "content": "k"}}
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["conversationId"].as_str().unwrap();
    let conv = conversation(&c, &agent, id).await;
    assert_eq!(conv["id"], id);
    assert_eq!(conv["tenantId"], "acme");
    assert_eq!(conv["visitorId"], r.json["visitorId"]);
    assert_eq!(conv["status"], "open");
    assert_eq!(conv["customerId"], "cust-42");
    assert_eq!(conv["locale"], "de-DE");
    assert_eq!(
        conv["contact"],
        json!({"name": "Jane Doe", "email": "jane.doe@example.com"})
    );
    assert_eq!(
        conv["variables"],
        json!({"cart_total": 129, "plan": "pro", "tags": ["a", ["b"]], "none": null, "vip": true})
    );
    assert_eq!(
        conv["visitorContext"]["pageUrl"],
        "https://shop.example/p?x=1"
    );
    assert_eq!(conv["visitorContext"]["utm"]["source"], "news");
    assert_eq!(conv["qualified"], false);
    assert_eq!(conv["lastMessage"], Value::Null);
    assert_ts(&conv["createdAt"]);
    assert_ts(&conv["updatedAt"]);
    // The visitor token is a credential: never shown to agents.
    let vt = r.json["visitorToken"].as_str().unwrap();
    assert!(!conv.to_string().contains(vt));

    let after = c.tenant_events(&agent, last.as_deref()).await;
    let events = after.json["events"].as_array().unwrap();
    let new: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "conversation:new")
        .collect();
    assert_eq!(new.len(), 1, "{}", after.text);
    assert_eq!(new[0]["data"]["id"], id);
    assert_eq!(new[0]["data"]["contact"]["email"], "jane.doe@example.com");
    assert!(new[0]["offset"]
        .as_str()
        .is_some_and(|o| o.parse::<u64>().is_ok()));
    assert!(!after.text.contains(vt));
    gw.shutdown().await;
}

#[tokio::test]
async fn resume_with_a_known_visitor_token() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "first", None).await.status, 201);
    let events_before = c.tenant_events(&agent, None).await.json["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = c
        .session_with(PK, json!({"visitorToken": s.visitor_token}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resumed"], true);
    assert_eq!(r.json["conversationId"], s.conversation_id);
    assert_eq!(r.json["visitorId"], s.visitor_id);
    assert_eq!(r.json["visitorToken"], s.visitor_token);
    // The new session token works on the same conversation and sees its history.
    let resumed = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: s.visitor_token.clone(),
        conversation_id: s.conversation_id.clone(),
        visitor_id: s.visitor_id.clone(),
    };
    assert_eq!(c.history(&resumed).await[0]["body"], "first");
    // Resuming announces no new conversation.
    let after = c.tenant_events(&agent, Some(&events_before)).await;
    assert!(
        after.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "conversation:new"),
        "{}",
        after.text
    );

    // Resuming with new profile fields updates the conversation.
    let r = c.session_with(PK, json!({"visitorToken": s.visitor_token, "contact": {"email": "late@example.com"}, "customerId": "c-7"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resumed"], true);
    let conv = conversation(&c, &agent, &s.conversation_id).await;
    assert_eq!(conv["contact"]["email"], "late@example.com");
    assert_eq!(conv["customerId"], "c-7");
    gw.shutdown().await;
}

/// A resume merges its variables into the conversation's; the limits (50 keys, 4096 bytes
/// JSON-encoded) hold for what the conversation keeps, not only for each request's part.
#[tokio::test]
async fn resumed_variables_stay_within_the_limits() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let vars = |from: usize, n: usize| -> Value {
        (from..from + n)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = c.session_with(PK, json!({"variables": vars(0, 30)})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (vt, id) = (
        r.json["visitorToken"].as_str().unwrap().to_owned(),
        r.json["conversationId"].as_str().unwrap().to_owned(),
    );
    let resume = |extra: Value| {
        let (c, vt) = (c.clone(), vt.clone());
        async move {
            let mut body = json!({"visitorToken": vt});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            c.session_with(PK, body).await
        }
    };
    // 30 + 21 new keys: refused, and nothing of it kept.
    assert_invalid(
        &resume(json!({"variables": vars(30, 21)})).await,
        "variables",
    );
    let kept = |conv: &Value| conv["variables"].as_object().unwrap().len();
    assert_eq!(kept(&conversation(&c, &agent, &id).await), 30);
    // Keys it has already are replaced, not counted twice: 30 + 20 new = 50.
    let r = resume(json!({"variables": vars(10, 40)})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(kept(&conversation(&c, &agent, &id).await), 50);
    // The size counts too: half the values made 80 characters long fit (~2.5 KB), the
    // other half as well would not (~4.5 KB), though each request alone is ~2.3 KB.
    let long = |keys: std::ops::Range<usize>| -> Value {
        keys.map(|i| (format!("k{i}"), json!("x".repeat(80))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = resume(json!({"variables": long(0..25)})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_invalid(
        &resume(json!({"variables": long(25..50)})).await,
        "variables",
    );
    let conv = conversation(&c, &agent, &id).await;
    assert_eq!(conv["variables"]["k49"], 49, "unchanged");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_or_foreign_visitor_tokens_start_a_new_visitor() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let other = c.session(PK2).await;
    for vt in [
        "vis_thisonewasneverissued0000000000".to_string(),
        "not-even-a-visitor-token".to_string(),
        String::new(),
        other.visitor_token.clone(), // another tenant's visitor
    ] {
        let r = c.session_with(PK, json!({"visitorToken": vt})).await;
        assert_eq!(r.status, 201, "{vt}: {}", r.text);
        assert_eq!(r.json["resumed"], false, "{vt}");
        let new_vt = r.json["visitorToken"].as_str().unwrap();
        assert!(new_vt.starts_with("vis_"));
        assert_ne!(new_vt, vt, "a new visitor gets a new token");
        assert_ne!(r.json["conversationId"], s.conversation_id);
        assert_ne!(r.json["conversationId"], other.conversation_id);
    }
    // The other tenant's visitor is untouched and still resumes there.
    let r = c
        .session_with(PK2, json!({"visitorToken": other.visitor_token}))
        .await;
    assert_eq!(r.json["resumed"], true);
    assert_eq!(r.json["conversationId"], other.conversation_id);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_optional_first_message_is_stored() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let r = c
        .session_with(
            PK,
            json!({"message": "  Hello from the contact form  ", "contact": {"name": "Jo"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let s = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: r.json["visitorToken"].as_str().unwrap().into(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: r.json["visitorId"].as_str().unwrap().into(),
    };
    let h = c.history(&s).await;
    assert_eq!(h[0]["body"], "Hello from the contact form", "trimmed");
    assert_eq!(h[0]["direction"], "inbound");
    assert_eq!(h[0]["author"]["kind"], "visitor");
    assert_eq!(h[0]["author"]["id"], s.visitor_id);
    // The auto-reply follows the conversation's first message (possibly after the answer).
    let r = c
        .get(
            &format!("/v1/messages?after={}&wait=5", h[0]["id"].as_str().unwrap()),
            &[("authorization", &s.bearer())],
        )
        .await;
    assert_eq!(r.json["messages"][0]["author"]["kind"], "bot", "{}", r.text);
    assert_eq!(
        r.json["messages"][0]["body"],
        "Thanks! We'll be right with you."
    );
    let conv = conversation(&c, &acme_agent("a"), &s.conversation_id).await;
    assert_eq!(conv["contact"], json!({"name": "Jo", "email": null}));
    assert!(conv["lastMessage"].is_object());

    // A first message that breaks the rules refuses the whole session.
    let r = c.session_with(PK, json!({"message": "   "})).await;
    assert_invalid(&r, "message");
    // Zero-width characters render as nothing: such a message is empty too.
    let r = c
        .session_with(PK, json!({"message": "\u{200B}\u{200D} \u{FEFF}\u{2060}"}))
        .await;
    assert_invalid(&r, "message");
    let r = c
        .session_with(PK, json!({"message": "é".repeat(10_001)}))
        .await;
    assert_invalid(&r, "message");
    gw.shutdown().await;
}

#[tokio::test]
async fn profile_validation_names_the_field() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    // Multi-byte characters: limits count characters, not bytes.
    let ok = [
        json!({"customerId": "ü".repeat(100)}),
        json!({"locale": "zh-Hant-TW"}),
        json!({"locale": "de-CH-1996"}),
        json!({"contact": {"name": "名".repeat(200), "email": "ü@bücher.de"}}),
        json!({"variables": (0..50).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
        json!({"variables": {"deep": [[[["four"]]]]}}),
        json!({"variables": {"a_1": "x".repeat(4000)}}),
        // 4096 bytes JSON-encoded exactly ({"a":"…"} is 8 bytes plus 2 per "é").
        json!({"variables": {"a": "é".repeat(2044)}}),
        json!({"contact": {"name": "   "}}),
    ];
    for extra in ok {
        let r = start(&c, &body(&c, PK, extra.clone()).await).await;
        assert_eq!(r.status, 201, "{extra}: {}", r.text);
    }
    let long_key = "k".repeat(65);
    let long_field = format!("variables.{long_key}");
    let bad = [
        (json!({"publicKey": "pk_live_nope"}), "publicKey"),
        (json!({"publicKey": null}), "publicKey"),
        (json!({"customerId": "ü".repeat(101)}), "customerId"),
        (json!({"locale": "en_US"}), "locale"),
        (json!({"locale": "1en"}), "locale"),
        (json!({"locale": "en-"}), "locale"),
        (json!({"locale": "abcdefgh-ijklmnop"}), "locale"), // 17 characters
        (
            json!({"contact": {"email": "not-an-email"}}),
            "contact.email",
        ),
        (json!({"contact": {"email": "a@b"}}), "contact.email"),
        (
            json!({"contact": {"name": "名".repeat(201)}}),
            "contact.name",
        ),
        (
            json!({"variables": (0..51).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
            "variables",
        ),
        (json!({"variables": {"a": "x".repeat(4100)}}), "variables"),
        (json!({"variables": {"Cart": 1}}), "variables.Cart"),
        (json!({"variables": {"1abc": 1}}), "variables.1abc"),
        (json!({"variables": {"has-dash": 1}}), "variables.has-dash"),
        (
            json!({"variables": {long_key.clone(): 1}}),
            long_field.as_str(),
        ),
        (json!({"variables": {"obj": {"a": 1}}}), "variables.obj"),
        (json!({"variables": {"arr": [{"a": 1}]}}), "variables.arr"),
        (
            json!({"variables": {"deep": [[[[["five"]]]]]}}),
            "variables.deep",
        ),
        (
            json!({"visitorContext": {"utm": {"nope": "x"}}}),
            "visitorContext.utm.nope",
        ),
        (json!({"variables": {"a": "é".repeat(2045)}}), "variables"), // 4098 bytes, 2045 characters
        (
            json!({"visitorContext": {"pageUrl": "x".repeat(2049)}}),
            "visitorContext.pageUrl",
        ),
        (
            json!({"visitorContext": {"pageTitle": 5}}),
            "visitorContext.pageTitle",
        ),
        (
            json!({"visitorContext": {"favouriteColour": "red"}}),
            "visitorContext.favouriteColour",
        ),
    ];
    for (extra, field) in bad {
        let b = body(&c, PK, extra.clone()).await;
        let r = start(&c, &b).await;
        assert_invalid(&r, field);
        // A refused request does not burn its challenge.
        let mut fixed = b.clone();
        fixed["publicKey"] = PK.into();
        for k in [
            "customerId",
            "locale",
            "contact",
            "variables",
            "visitorContext",
        ] {
            fixed.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(
            start(&c, &fixed).await.status,
            201,
            "{extra}: the challenge is still usable"
        );
    }
    // Unknown public key: 404.
    let mut b = body(&c, PK, json!({})).await;
    b["publicKey"] = "pk_live_00000000000000000000000000000000".into();
    assert_error(&start(&c, &b).await, 404, "unknown_public_key");
    // Wrong JSON types name the field too.
    let r = start(&c, &body(&c, PK, json!({"customerId": 5})).await).await;
    assert_invalid(&r, "customerId");
    let r = start(&c, &body(&c, PK, json!({"contact": {"email": 5}})).await).await;
    assert_invalid(&r, "contact.email");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_init_challenge_is_required_signed_fresh_single_use_and_bound() {
    let (gw, clock) = start_clocked(&config_toml("")).await;
    let c = gw.client();
    let signals = json!({"elapsedMs": 1500});
    // Missing.
    let r = start(&c, &json!({"publicKey": PK, "botSignals": signals})).await;
    assert_error(&r, 403, "invalid_challenge");
    // Malformed, or another kind of token.
    let s = c.session(PK).await;
    for bad in ["", "garbage", "c1.x.y.z", &s.token, &s.visitor_token] {
        let r = start(
            &c,
            &json!({"publicKey": PK, "initChallenge": bad, "botSignals": signals}),
        )
        .await;
        assert_error(&r, 403, "invalid_challenge");
    }
    // Tampered: another challenge's payload under this one's signature.
    let a = c.challenge(PK).await;
    let b = c.challenge(PK).await;
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    let forged = format!("{}.{}.{}.{}", pa[0], pa[1], pb[2], pa[3]);
    let r = start(
        &c,
        &json!({"publicKey": PK, "initChallenge": forged, "botSignals": signals}),
    )
    .await;
    assert_error(&r, 403, "invalid_challenge");
    // Another tenant's.
    let foreign = c.challenge(PK2).await;
    let r = start(
        &c,
        &json!({"publicKey": PK, "initChallenge": foreign, "botSignals": signals}),
    )
    .await;
    assert_error(&r, 403, "invalid_challenge");
    // ...which is still good for its own tenant.
    let r = start(&c, &json!({"publicKey": PK2, "initChallenge": foreign})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Single use.
    let ch = c.challenge(PK).await;
    let ok = json!({"publicKey": PK, "initChallenge": ch, "botSignals": signals});
    assert_eq!(start(&c, &ok).await.status, 201);
    assert_error(&start(&c, &ok).await, 403, "invalid_challenge");
    // Expired: valid 10 minutes on the gateway's clock.
    let ch = c.challenge(PK).await;
    clock.advance(599_000);
    let fine = c.challenge(PK).await;
    assert_eq!(
        start(
            &c,
            &json!({"publicKey": PK, "initChallenge": fine, "botSignals": signals})
        )
        .await
        .status,
        201
    );
    clock.advance(1_001);
    let r = start(
        &c,
        &json!({"publicKey": PK, "initChallenge": ch, "botSignals": signals}),
    )
    .await;
    assert_error(&r, 403, "invalid_challenge");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_challenge_can_be_turned_off_per_tenant() {
    let gw = Gateway::start(&config_toml("require_init_challenge = false\n")).await;
    let c = gw.client();
    let cfg = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(cfg.status, 200);
    let r = start(
        &c,
        &json!({"publicKey": PK, "botSignals": {"elapsedMs": 900}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The other tenant still requires it.
    assert_error(
        &start(&c, &json!({"publicKey": PK2})).await,
        403,
        "invalid_challenge",
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bot_signals() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let cases = [
        (json!({"honeypot": "I am a bot", "elapsedMs": 5000}), 403),
        (json!({"honeypot": true, "elapsedMs": 5000}), 403),
        (json!({}), 403),                                   // elapsedMs missing
        (json!({"elapsedMs": null}), 403),                  // elapsedMs missing
        (json!({"elapsedMs": 799}), 403),                   // below the minimum (800)
        (json!({"elapsedMs": 800}), 201),                   // at the minimum
        (json!({"honeypot": "", "elapsedMs": 800.5}), 201), // empty honeypot is fine
        (json!({"honeypot": null, "elapsedMs": 60000}), 201),
    ];
    for (signals, status) in cases {
        let b = body(&c, PK, json!({"botSignals": signals})).await;
        let r = start(&c, &b).await;
        if status == 403 {
            assert_error(&r, 403, "bot_suspected");
            // Refused as a bot: the challenge was not used up.
            let mut human = b.clone();
            human["botSignals"] = json!({"elapsedMs": 2000});
            assert_eq!(start(&c, &human).await.status, 201, "{signals}");
        } else {
            assert_eq!(r.status, status, "{signals}: {}", r.text);
        }
    }
    // No botSignals at all.
    let mut b = body(&c, PK, json!({})).await;
    b.as_object_mut().unwrap().remove("botSignals");
    assert_error(&start(&c, &b).await, 403, "bot_suspected");
    // min_elapsed_ms = 0 (globex) turns the timing check off, not the honeypot.
    let mut b = body(&c, PK2, json!({})).await;
    b.as_object_mut().unwrap().remove("botSignals");
    assert_eq!(start(&c, &b).await.status, 201);
    let b = body(&c, PK2, json!({"botSignals": {"honeypot": "x"}})).await;
    assert_error(&start(&c, &b).await, 403, "bot_suspected");
    gw.shutdown().await;
}

#[tokio::test]
async fn sessions_expire_on_the_gateway_clock() {
    let (gw, clock) = start_clocked(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "hi", None).await.status, 201);
    clock.advance(86_400_000 - 1_000);
    assert_eq!(c.get_auth("/v1/messages", &s.token).await.status, 200);
    clock.advance(1_000);
    assert_error(
        &c.get_auth("/v1/messages", &s.token).await,
        401,
        "invalid_session",
    );
    assert_error(&c.send(&s, "late", None).await, 401, "invalid_session");
    let r = c
        .post_auth("/v1/events", &s.token, &json!({"type": "OPEN"}))
        .await;
    assert_error(&r, 401, "invalid_session");
    // Resuming with the visitor token gives a fresh session on the same conversation.
    let r = c
        .session_with(PK, json!({"visitorToken": s.visitor_token}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resumed"], true);
    assert_eq!(r.json["conversationId"], s.conversation_id);
    let token = r.json["sessionToken"].as_str().unwrap();
    assert_eq!(c.get_auth("/v1/messages", token).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_session_ttl_is_configurable() {
    let (gw, clock) = start_clocked(&config_toml_global("session_ttl_secs = 60", "")).await;
    let c = gw.client();
    let r = c.session_with(PK, json!({})).await;
    assert_eq!(r.json["expiresAt"], format_ms(clock.now() + 60_000));
    clock.advance(60_000);
    let token = r.json["sessionToken"].as_str().unwrap();
    assert_error(
        &c.get_auth("/v1/messages", token).await,
        401,
        "invalid_session",
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn pii_minimal_keeps_no_contact_or_context() {
    let gw = Gateway::start(&config_toml("pii_retention = \"minimal\"\n")).await;
    let c = gw.client();
    let r = c
        .session_with(
            PK,
            json!({"contact": {"name": "Jane", "email": "jane@example.com"},
                   "visitorContext": {"pageUrl": "https://shop.example/?email=jane@example.com", "pageTitle": "T"},
                   "customerId": "c1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["conversationId"].as_str().unwrap();
    let agent = acme_agent("a");
    let conv = conversation(&c, &agent, id).await;
    assert_eq!(conv["contact"], json!({"name": null, "email": null}));
    assert_eq!(conv["visitorContext"], json!({}));
    let token = r.json["sessionToken"].as_str().unwrap();
    let sent = c
        .post_auth(
            "/v1/messages",
            token,
            &json!({"message": "hi", "meta": {"pageUrl": "https://shop.example/x"}}),
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    let events = c.tenant_events(&agent, None).await;
    assert!(!events.text.contains("jane"), "{}", events.text);
    let h = c.get_auth("/v1/messages", token).await;
    assert!(
        h.json["messages"][0].get("meta").is_none_or(Value::is_null),
        "{}",
        h.text
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn pii_redact_masks_email_and_url_queries() {
    let gw = Gateway::start(&config_toml("pii_retention = \"redact\"\n")).await;
    let c = gw.client();
    let r = c
        .session_with(
            PK,
            json!({"contact": {"name": "Jane", "email": "jane.doe@example.com"},
                   "visitorContext": {"pageUrl": "https://shop.example/p?email=jane.doe@example.com#frag", "pageTitle": "Pricing"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let agent = acme_agent("a");
    let conv = conversation(&c, &agent, r.json["conversationId"].as_str().unwrap()).await;
    assert_eq!(conv["contact"]["email"], "j***@example.com");
    assert_eq!(conv["visitorContext"]["pageUrl"], "https://shop.example/p");
    assert_eq!(conv["visitorContext"]["pageTitle"], "Pricing");
    // Message metadata is redacted the same way.
    let token = r.json["sessionToken"].as_str().unwrap();
    let meta = json!({"pageUrl": "https://shop.example/cart?token=abc#x", "referrer": "https://mail.example/?to=jane", "pageTitle": "Cart"});
    let sent = c
        .post_auth(
            "/v1/messages",
            token,
            &json!({"message": "hi", "meta": meta}),
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    let h = c.get_auth("/v1/messages", token).await;
    let m = h.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["body"] == "hi")
        .cloned()
        .unwrap();
    assert_eq!(
        m["meta"],
        json!({"pageUrl": "https://shop.example/cart", "referrer": "https://mail.example/", "pageTitle": "Cart"})
    );
    let events = c.tenant_events(&agent, None).await;
    assert!(
        !events.text.contains("jane.doe") && !events.text.contains("token=abc"),
        "{}",
        events.text
    );
    gw.shutdown().await;
}
