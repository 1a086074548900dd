//! The visitor's message routes: `POST /v1/messages` (shape, rules counted in characters,
//! idempotency, reopening), `GET /v1/messages` (every cursor form, paging, `?sessionToken=`,
//! long-polling), session errors, and `POST /v1/events` (telemetry, typing forwarded).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Acme without its auto-reply, so a conversation holds exactly what a test wrote.
fn quiet() -> String {
    without_auto_reply(&config_toml(""))
}

async fn get(c: &Client, s: &Session, query: &str) -> Resp {
    c.get_auth(&format!("/v1/messages{query}"), &s.token).await
}

fn ids(r: &Resp) -> Vec<String> {
    r.json["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {}", r.text))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends `n` messages `m1`…; returns their ids.
async fn send_n(c: &Client, s: &Session, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=n {
        let r = c.send(s, &format!("m{i}"), None).await;
        assert_eq!(r.status, 201, "{}", r.text);
        out.push(r.json["messageId"].as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn send_and_read_have_the_spec_shapes() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let meta = json!({"pageUrl": "https://shop.example/p", "referrer": "https://r.example/", "locale": "en-GB",
                      "pageTitle": "P", "origin": "https://shop.example", "utm": {"source": "s"}});
    let r = c
        .post_auth(
            "/v1/messages",
            &s.token,
            &json!({"message": "  Hello there \n", "clientMessageId": "c-1", "meta": meta}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let obj = r.json.as_object().unwrap();
    assert_eq!(obj.len(), 4, "{}", r.text);
    assert_eq!(r.json["success"], true);
    assert_eq!(r.json["duplicate"], false);
    let id = r.json["messageId"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    let created = assert_ts(&r.json["createdAt"]);

    let r2 = c.send(&s, "second", None).await;
    assert_eq!(r2.status, 201);

    let h = get(&c, &s, "").await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["hasMore"], false);
    let msgs = h.json["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    let m = &msgs[0];
    assert_eq!(m["id"], id);
    assert_eq!(m["conversationId"], s.conversation_id);
    assert_eq!(m["direction"], "inbound");
    assert_eq!(
        m["author"],
        json!({"kind": "visitor", "id": s.visitor_id, "name": null})
    );
    assert_eq!(m["body"], "Hello there", "stored trimmed");
    assert_eq!(assert_ts(&m["createdAt"]), created);
    assert_eq!(m["clientMessageId"], "c-1");
    assert_eq!(m["meta"], meta);
    assert_eq!(m["intent"], Value::Null);
    for k in m.as_object().unwrap().keys() {
        assert!(
            [
                "id",
                "conversationId",
                "direction",
                "author",
                "attachments",
                "body",
                "createdAt",
                "clientMessageId",
                "meta",
                "intent"
            ]
            .contains(&k.as_str()),
            "unexpected field {k}"
        );
    }
    // Without a clientMessageId, the field is absent.
    assert!(msgs[1].get("clientMessageId").is_none(), "{}", msgs[1]);
    assert_eq!(h.json["nextCursor"], msgs[1]["id"]);
    // Ids are ordered: the second comes after the first.
    assert!(seq(msgs[1]["id"].as_str().unwrap()) > seq(&id));
    gw.shutdown().await;
}

#[tokio::test]
async fn message_ids_are_unique_across_conversations() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let a = c.session(PK).await;
    let b = c.session(PK).await;
    let ia = c.send(&a, "from a", None).await.json["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let ib = c.send(&b, "from b", None).await.json["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both are the first message of their conversation, and still differ.
    assert_ne!(
        ia, ib,
        "a dashboard keys messages of every conversation by id"
    );
    assert_eq!((seq(&ia), seq(&ib)), (1, 1));
    // An id is a cursor only in its own conversation.
    let r = c
        .get_auth(&format!("/v1/messages?after={ia}"), &b.token)
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.json["error"]["field"], "after");
    let r = c
        .get_auth(&format!("/v1/messages?after={ib}"), &b.token)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["messages"].as_array().unwrap().len(), 0);
    assert_eq!(r.json["nextCursor"], ib.as_str());
    gw.shutdown().await;
}

#[tokio::test]
async fn the_same_client_message_id_is_stored_once() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let first = c.send(&s, "first text", Some("cm-1")).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let offset = c.tenant_events(&agent, None).await.json["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for text in ["first text", "a completely different text"] {
        let again = c.send(&s, text, Some("cm-1")).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.json["duplicate"], true);
        assert_eq!(again.json["success"], true);
        assert_eq!(again.json["messageId"], first.json["messageId"]);
        assert_eq!(again.json["createdAt"], first.json["createdAt"]);
    }
    let h = c.history(&s).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["body"], "first text");
    // No event for the duplicates.
    let after = c.tenant_events(&agent, Some(&offset)).await;
    assert_eq!(after.json["events"], json!([]), "{}", after.text);
    // A retry is its duplicate even when what it says now would be refused.
    for body in [
        json!({"message": "", "clientMessageId": "cm-1"}),
        json!({"message": "x".repeat(10_001), "clientMessageId": "cm-1"}),
        json!({"message": "hi", "intent": "nope", "clientMessageId": "cm-1"}),
        json!({"message": "hi", "attachments": ["att_00000000000000000000000000000000"], "clientMessageId": "cm-1"}),
        json!({"message": "hi", "attachments": ["att_bogus"], "clientMessageId": "cm-1"}),
    ] {
        let again = c.post_auth("/v1/messages", &s.token, &body).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.json["duplicate"], true);
        assert_eq!(again.json["messageId"], first.json["messageId"]);
    }
    // Refused as before when no message has that id.
    let r = c
        .post_auth(
            "/v1/messages",
            &s.token,
            &json!({"message": "", "clientMessageId": "cm-new"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // The key is per conversation: another visitor may use the same one.
    let other = c.session(PK).await;
    let r = c.send(&other, "mine", Some("cm-1")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json["duplicate"], false);
    // Keys are case-sensitive and exact.
    assert_eq!(c.send(&s, "x", Some("CM-1")).await.status, 201);
    assert_eq!(c.history(&s).await.len(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn message_rules_count_characters_and_refused_messages_store_nothing() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let post = |body: Value| {
        let (c, t) = (c.clone(), s.token.clone());
        async move { c.post_auth("/v1/messages", &t, &body).await }
    };
    // 10,000 four-byte characters (40,000 bytes) are fine; padding is trimmed first.
    let emoji = "😀".repeat(10_000);
    assert_eq!(post(json!({"message": emoji})).await.status, 201);
    assert_eq!(
        post(json!({"message": format!("  \n{}\t ", "é".repeat(10_000))}))
            .await
            .status,
        201
    );
    assert_eq!(
        post(json!({"message": "x", "clientMessageId": "ü".repeat(64)}))
            .await
            .status,
        201
    );
    let stored = c.history(&s).await.len();
    assert_eq!(stored, 3);

    let bad = [
        (json!({"message": ""}), "message"),
        (json!({"message": "   \n\t  "}), "message"),
        (json!({"message": format!("{emoji}😀")}), "message"),
        (json!({"message": "é".repeat(10_001)}), "message"),
        (json!({}), "message"),
        (json!({"message": null}), "message"),
        (json!({"message": 5}), "message"),
        (
            json!({"message": "ok", "clientMessageId": "x".repeat(65)}),
            "clientMessageId",
        ),
        (
            json!({"message": "ok", "clientMessageId": "ü".repeat(65)}),
            "clientMessageId",
        ),
        (
            json!({"message": "ok", "clientMessageId": ""}),
            "clientMessageId",
        ),
        (
            json!({"message": "ok", "clientMessageId": 7}),
            "clientMessageId",
        ),
        (json!({"message": "ok", "meta": {"nope": "x"}}), "meta.nope"),
        (
            json!({"message": "ok", "meta": {"pageUrl": 5}}),
            "meta.pageUrl",
        ),
        (json!({"message": "ok", "meta": "string"}), "meta"),
    ];
    for (body, field) in bad {
        let r = post(body.clone()).await;
        assert_invalid(&r, field);
    }
    assert_eq!(
        c.history(&s).await.len(),
        stored,
        "refused messages store nothing"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_configured_maximum_applies() {
    let gw = Gateway::start(&without_auto_reply(&config_toml(
        "max_message_length = 5\n",
    )))
    .await;
    let c = gw.client();
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "ééééé", None).await.status, 201);
    assert_invalid(&c.send(&s, "éééééé", None).await, "message");
    gw.shutdown().await;
}

#[tokio::test]
async fn missing_tampered_and_foreign_session_tokens_are_refused() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let t = c.session(PK).await;
    assert_eq!(c.send(&s, "mine", None).await.status, 201);
    // Another visitor's payload under this token's signature.
    let (ps, pt): (Vec<&str>, Vec<&str>) =
        (s.token.split('.').collect(), t.token.split('.').collect());
    let forged = format!("{}.{}.{}.{}", ps[0], ps[1], pt[2], ps[3]);
    let mut flipped = s.token.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let challenge = c.challenge(PK).await;
    let bad_tokens = [
        "garbage".to_string(),
        forged,
        flipped,
        s.token.replacen("s1.", "c1.", 1),
        challenge,
        s.visitor_token.clone(),
        acme_agent("ann"),
        SERVER_KEY.to_string(),
    ];
    for tok in &bad_tokens {
        assert_error(
            &c.get_auth("/v1/messages", tok).await,
            401,
            "invalid_session",
        );
        assert_error(
            &c.post_auth("/v1/messages", tok, &json!({"message": "x"}))
                .await,
            401,
            "invalid_session",
        );
        assert_error(
            &c.post_auth("/v1/events", tok, &json!({"type": "OPEN"}))
                .await,
            401,
            "invalid_session",
        );
        let q = format!("/v1/messages?sessionToken={tok}");
        assert_error(&c.get(&q, &[]).await, 401, "invalid_session");
    }
    // Missing altogether, or another scheme.
    assert_error(&c.get("/v1/messages", &[]).await, 401, "invalid_session");
    assert_error(
        &c.post("/v1/messages", &[], &json!({"message": "x"})).await,
        401,
        "invalid_session",
    );
    assert_error(
        &c.post("/v1/events", &[], &json!({"type": "OPEN"})).await,
        401,
        "invalid_session",
    );
    let basic = format!("Basic {}", s.token);
    assert_error(
        &c.get("/v1/messages", &[("authorization", &basic)]).await,
        401,
        "invalid_session",
    );
    assert_error(
        &c.get("/v1/messages", &[("authorization", "Bearer ")]).await,
        401,
        "invalid_session",
    );
    // Nothing was written by any of it.
    assert_eq!(c.history(&s).await.len(), 1);
    assert_eq!(c.history(&t).await.len(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_session_token_may_come_in_the_query() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let r = c
        .post(
            &format!("/v1/messages?sessionToken={}", s.token),
            &[],
            &json!({"message": "legacy"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let h = c
        .get(
            &format!("/v1/messages?sessionToken={}&limit=10", s.token),
            &[],
        )
        .await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["messages"][0]["body"], "legacy");
    assert_eq!(h.json["messages"][0]["author"]["id"], s.visitor_id);
    gw.shutdown().await;
}

#[tokio::test]
async fn after_limit_has_more_and_next_cursor() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    // Empty conversation, no cursor: nothing to point at.
    let r = get(&c, &s, "").await;
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": null})
    );
    let all = send_n(&c, &s, 5).await;

    // No cursor: oldest first.
    let r = get(&c, &s, "?limit=2").await;
    assert_eq!(ids(&r), all[0..2]);
    assert_eq!(r.json["hasMore"], true);
    assert_eq!(r.json["nextCursor"], all[1]);
    assert_eq!(r.json["messages"][0]["body"], "m1");
    // `after` is exclusive.
    let r = get(&c, &s, &format!("?limit=2&after={}", all[1])).await;
    assert_eq!(ids(&r), all[2..4]);
    assert_eq!(r.json["hasMore"], true);
    assert_eq!(r.json["nextCursor"], all[3]);
    let r = get(&c, &s, &format!("?limit=2&after={}", all[3])).await;
    assert_eq!(ids(&r), all[4..5]);
    assert_eq!(r.json["hasMore"], false);
    assert_eq!(r.json["nextCursor"], all[4]);
    // Nothing newer: the `after` given comes back.
    let r = get(&c, &s, &format!("?after={}", all[4])).await;
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": all[4]})
    );
    // Exactly `limit` left: no more.
    let r = get(&c, &s, &format!("?limit=3&after={}", all[1])).await;
    assert_eq!(ids(&r), all[2..5]);
    assert_eq!(r.json["hasMore"], false);
    // Default limit 50, maximum 200.
    assert_eq!(ids(&get(&c, &s, "").await).len(), 5);
    assert_eq!(ids(&get(&c, &s, "?limit=200").await).len(), 5);
    assert_eq!(ids(&get(&c, &s, "?limit=1").await), all[0..1]);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_default_limit_is_50() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let all = send_n(&c, &s, 51).await;
    let r = get(&c, &s, "").await;
    assert_eq!(ids(&r), all[0..50]);
    assert_eq!(r.json["hasMore"], true);
    let r = get(&c, &s, &format!("?after={}", all[49])).await;
    assert_eq!(ids(&r), all[50..51]);
    gw.shutdown().await;
}

#[tokio::test]
async fn after_created_at_and_since_cursors() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    // Distinct creation times (the store's clock), so `since` has a clear answer.
    let mut msgs = Vec::new();
    for i in 1..=4 {
        if let Some(prev) = msgs.last() {
            tick_past(prev).await;
        }
        let r = c.send(&s, &format!("m{i}"), None).await;
        assert_eq!(r.status, 201);
        msgs.push(r.json["createdAt"].clone());
    }
    let all: Vec<String> = ids(&get(&c, &s, "").await);
    assert_eq!(all.len(), 4);
    let enc = |v: &Value| v.as_str().unwrap().replace('+', "%2B").replace(':', "%3A");

    // afterCreatedAt + afterId (seed 000): exclusive of that message.
    let r = get(
        &c,
        &s,
        &format!("?afterCreatedAt={}&afterId={}", enc(&msgs[1]), all[1]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r), all[2..4]);
    assert_eq!(r.json["nextCursor"], all[3]);
    let r = get(
        &c,
        &s,
        &format!(
            "?afterCreatedAt={}&afterId={}&limit=1",
            enc(&msgs[0]),
            all[0]
        ),
    )
    .await;
    assert_eq!(ids(&r), all[1..2]);
    assert_eq!(r.json["hasMore"], true);
    let r = get(
        &c,
        &s,
        &format!("?afterCreatedAt={}&afterId={}", enc(&msgs[3]), all[3]),
    )
    .await;
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": all[3]})
    );

    // since (seed 001): created strictly after that instant.
    let r = get(&c, &s, &format!("?since={}", enc(&msgs[1]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r), all[2..4]);
    assert_eq!(r.json["nextCursor"], all[3]);
    let r = get(&c, &s, &format!("?since={}", enc(&msgs[3]))).await;
    assert_eq!(ids(&r), Vec::<String>::new());
    assert_eq!(r.json["hasMore"], false);
    // Any RFC 3339 offset is accepted.
    let ms = confab_protocol::time::parse_ms(msgs[1].as_str().unwrap()).unwrap();
    let local = jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(2)))
        .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string();
    let r = get(
        &c,
        &s,
        &format!("?since={}", local.replace('+', "%2B").replace(':', "%3A")),
    )
    .await;
    assert_eq!(ids(&r), all[2..4], "{local}");
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_cursors_limits_and_waits_are_422() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let sent = send_n(&c, &s, 2).await;
    let beyond = sent[1].replace("_2", "_999");
    let after_beyond = format!("?after={beyond}");
    let cases = [
        // Past the conversation's last message: no message of it (answered at once,
        // wait or not).
        (after_beyond.as_str(), "after"),
        (&format!("{after_beyond}&wait=30"), "after"),
        ("?after=99999", "after"),
        ("?after=abc", "after"),
        ("?after=-1", "after"),
        ("?after=1.5", "after"),
        ("?after=123456789012345678901", "after"),
        ("?afterCreatedAt=yesterday&afterId=1", "afterCreatedAt"),
        ("?afterCreatedAt=2026-11-22T10:00:00.000Z", "afterId"),
        ("?afterId=1", "afterCreatedAt"),
        (
            "?afterCreatedAt=2026-11-22T10:00:00.000Z&afterId=x",
            "afterId",
        ),
        ("?since=yesterday", "since"),
        ("?since=2026-13-01T00:00:00Z", "since"),
        ("?after=1&since=2026-11-22T10:00:00Z", "after"),
        (
            "?after=1&afterCreatedAt=2026-11-22T10:00:00Z&afterId=1",
            "after",
        ),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=-5", "limit"),
        ("?limit=ten", "limit"),
        ("?wait=31", "wait"),
        ("?wait=-1", "wait"),
        ("?wait=1.5", "wait"),
    ];
    for (q, field) in cases {
        let r = get(&c, &s, q).await;
        assert_invalid(&r, field);
    }
    // Edges that are fine.
    for q in [
        "?limit=200",
        "?limit=1",
        "?wait=0",
        "?after=0",
        "?after=2",
        &format!("?after={}&wait=0", sent[1]),
        "?after=",
        "?limit=",
    ] {
        assert_eq!(get(&c, &s, q).await.status, 200, "{q}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn long_poll_wakes_as_soon_as_a_message_arrives() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let first = send_n(&c, &s, 1).await;
    let (c2, s2, after) = (c.clone(), s.clone(), first[0].clone());
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let r = get(&c2, &s2, &format!("?after={after}&wait=5")).await;
        (r, started.elapsed())
    });
    // Send only once the poll is parked (its hub subscription exists): the wake-up path.
    c.wait_hub_channels(1).await;
    let agent = acme_agent("ann");
    let reply = c
        .post_auth(
            &format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            &agent,
            &json!({"message": "wake up"}),
        )
        .await;
    assert_eq!(reply.status, 201);
    let (r, elapsed) = poll.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        elapsed < Duration::from_secs(4),
        "the long-poll answered after {elapsed:?}"
    );
    assert_eq!(
        ids(&r),
        vec![reply.json["messageId"].as_str().unwrap().to_owned()]
    );
    assert_eq!(r.json["messages"][0]["body"], "wake up");
    assert_eq!(r.json["messages"][0]["author"]["kind"], "agent");

    // Something newer already there: answered at once.
    let t = Instant::now();
    let r = get(&c, &s, &format!("?after={}&wait=5", first[0])).await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(ids(&r).len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn long_poll_times_out_with_an_empty_list() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let other = c.session(PK).await;
    let first = send_n(&c, &s, 1).await;
    let (c2, s2, after) = (c.clone(), s.clone(), first[0].clone());
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let r = get(&c2, &s2, &format!("?after={after}&wait=1")).await;
        (r, started.elapsed())
    });
    c.wait_hub_channels(1).await;
    // Another conversation's message does not answer this poll.
    assert_eq!(c.send(&other, "not for you", None).await.status, 201);
    let (r, elapsed) = poll.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        elapsed >= Duration::from_millis(900),
        "answered after only {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "answered after {elapsed:?}"
    );
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": first[0]})
    );
    // An empty conversation polled without a cursor times out the same way.
    let t = Instant::now();
    let fresh = c.session(PK).await;
    let r = get(&c, &fresh, "?wait=1").await;
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": null})
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_visitor_message_reopens_a_closed_conversation() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    send_n(&c, &s, 1).await;
    let closed = c
        .post_auth(
            &format!("/v1/tenant/conversations/{}/close", s.conversation_id),
            &agent,
            &json!({}),
        )
        .await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    assert_eq!(closed.json["status"], "closed");
    let offset = c.tenant_events(&agent, None).await.json["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(c.send(&s, "I'm back", None).await.status, 201);
    let conv = c
        .get_auth(
            &format!("/v1/tenant/conversations/{}", s.conversation_id),
            &agent,
        )
        .await;
    assert_eq!(conv.json["status"], "open");
    assert_eq!(conv.json["lastMessage"]["body"], "I'm back");
    let ev = c.tenant_events(&agent, Some(&offset)).await;
    let types: Vec<&str> = ev.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"message:new"), "{types:?}");
    let updated = ev.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "conversation:updated")
        .expect("conversation:updated");
    assert_eq!(updated["data"]["status"], "open");
    gw.shutdown().await;
}

#[tokio::test]
async fn telemetry_events() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    for t in ["OPEN", "CLOSE", "TYPING", "ERROR", "MESSAGE"] {
        let r = c
            .post_auth(
                "/v1/events",
                &s.token,
                &json!({"type": t, "data": {"x": 1}}),
            )
            .await;
        assert_eq!(r.status, 202, "{t}: {}", r.text);
        assert_eq!(
            r.json,
            json!({"accepted": true, "sampled": true, "sampleRate": 1.0})
        );
    }
    assert_eq!(
        c.post_auth("/v1/events", &s.token, &json!({"type": "OPEN"}))
            .await
            .status,
        202
    );
    for (body, field) in [
        (json!({"type": "CLICK"}), "type"),
        (json!({"type": "open"}), "type"),
        (json!({"type": ""}), "type"),
        (json!({}), "type"),
        (json!({"type": 1}), "type"),
        (json!({"type": "OPEN", "data": [1]}), "data"),
        (json!({"type": "OPEN", "data": "x"}), "data"),
    ] {
        assert_invalid(&c.post_auth("/v1/events", &s.token, &body).await, field);
    }
    let m = c.get("/metrics", &[]).await;
    assert!(
        m.text
            .contains(r#"confab_widget_events_total{type="OPEN"} 2"#),
        "{}",
        m.text
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn telemetry_sampling_follows_the_tenant_rate() {
    let gw = Gateway::start(&config_toml("telemetry_sample_rate = 0.0\n")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let r = c
        .post_auth("/v1/events", &s.token, &json!({"type": "OPEN"}))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.json,
        json!({"accepted": true, "sampled": false, "sampleRate": 0.0})
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn typing_telemetry_reaches_the_agents_but_is_never_stored() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let before = c.tenant_events(&agent, None).await.json["nextCursor"].clone();
    let (mut ws, _) = Ws::open(gw.addr, "/v1/tenant/ws", &agent, before.as_str()).await;
    let r = c
        .post_auth("/v1/events", &s.token, &json!({"type": "TYPING"}))
        .await;
    assert_eq!(r.status, 202);
    let f = ws.next_of(&["typing"]).await;
    assert_eq!(f["data"]["conversationId"], s.conversation_id);
    assert_eq!(f["data"]["author"]["kind"], "visitor");
    assert_eq!(f["data"]["author"]["id"], s.visitor_id);
    assert!(f.get("offset").is_none(), "typing carries no offset: {f}");
    let after = c.tenant_events(&agent, before.as_str()).await;
    assert_eq!(
        after.json["events"],
        json!([]),
        "typing is not stored: {}",
        after.text
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_shutdown_answers_parked_long_polls() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (c2, s2) = (c.clone(), s.clone());
    let started = Instant::now();
    let poll = tokio::spawn(async move { (get(&c2, &s2, "?wait=30").await, started.elapsed()) });
    c.wait_hub_channels(1).await;
    gw.shutdown().await;
    let (r, elapsed) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "the poll was held for {elapsed:?}"
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["messages"], json!([]));
}

#[tokio::test]
async fn client_message_ids_of_different_authors_do_not_collide() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let agent = acme_agent("ann");
    let path = format!("/v1/tenant/conversations/{}/messages", s.conversation_id);
    let r = c
        .post_auth(
            &path,
            &agent,
            &json!({"message": "Hello from Ann", "clientMessageId": "1"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let v = c.send(&s, "Hello from the visitor", Some("1")).await;
    assert_eq!(
        v.status, 201,
        "the visitor's message must be stored: {}",
        v.text
    );
    assert_eq!(v.json["duplicate"], false);
    let v = c
        .send(&s, "my own auto_reply key", Some("auto_reply"))
        .await;
    assert_eq!(v.status, 201, "{}", v.text);
    let bodies: Vec<Value> = c
        .history(&s)
        .await
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert!(
        bodies.contains(&json!("Hello from the visitor")),
        "{bodies:?}"
    );
    gw.shutdown().await;
}
