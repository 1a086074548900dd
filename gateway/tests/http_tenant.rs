//! The tenant API: credentials (agent JWTs, server keys) and their failures, tenant
//! isolation, the conversation list (order, filter, paging), one conversation, its
//! history, replies (agent and tenant backend), close/reopen, and the tenant event stream
//! (offsets, custom events, `conversation:qualified`, retention and `recovered`,
//! long-polling).

mod common;

use std::time::{Duration, Instant};

use common::*;
use confab_protocol::token::{sign_agent_jwt, AgentClaims};
use serde_json::{json, Value};

fn quiet() -> String {
    without_auto_reply(&config_toml(""))
}

fn conv_path(id: &str) -> String {
    format!("/v1/tenant/conversations/{id}")
}

fn list_ids(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn event_types(r: &Resp) -> Vec<String> {
    r.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn last_offset(r: &Resp) -> String {
    r.json["nextCursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no nextCursor: {}", r.text))
        .to_owned()
}

const CONVERSATION_KEYS: [&str; 18] = [
    "id",
    "tenantId",
    "visitorId",
    "status",
    "createdAt",
    "updatedAt",
    "customerId",
    "locale",
    "contact",
    "variables",
    "visitorContext",
    "qualified",
    "lastMessage",
    "assistantId",
    "handler",
    "visitorLastReadId",
    "agentLastReadId",
    "unreadByAgent",
];

fn assert_conversation_shape(c: &Value) {
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    for k in CONVERSATION_KEYS {
        assert!(keys.contains(&k), "conversation without {k}: {c}");
    }
    for k in &keys {
        assert!(
            CONVERSATION_KEYS.contains(k),
            "unexpected conversation field {k}"
        );
    }
    assert!(uuid::Uuid::parse_str(c["id"].as_str().unwrap()).is_ok());
    assert_ts(&c["createdAt"]);
    assert_ts(&c["updatedAt"]);
    assert!(c["status"] == "open" || c["status"] == "closed");
    assert!(c["handler"] == "human" || c["handler"] == "bot");
    assert!(c["unreadByAgent"].is_u64());
}

#[tokio::test]
async fn bad_credentials_are_401_everywhere() {
    let (gw, clock) = start_clocked(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let id = &s.conversation_id;
    let now = clock.now() / 1000;
    let claims = json!({"sub": "ann", "tenant": "acme", "exp": now + 3600});
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let secret = AGENT_SECRET.as_bytes();
    let expired = sign_agent_jwt(
        secret,
        &AgentClaims {
            sub: "ann".into(),
            tenant: "acme".into(),
            exp: now - 1,
            name: None,
        },
    );
    let good = acme_agent("ann");
    let (head, last) = good.split_at(good.len() - 1);
    let bad_signature = format!("{head}{}", if last == "A" { "B" } else { "A" });
    let bad: Vec<(&str, String)> = vec![
        ("garbage", "garbage".into()),
        ("wrong server key", "not-the-server-key".into()),
        (
            "other tenant's secret",
            agent_jwt(AGENT_SECRET2, "acme", "ann"),
        ),
        (
            "claims another tenant",
            agent_jwt(AGENT_SECRET, "globex", "ann"),
        ),
        ("unknown tenant", agent_jwt(AGENT_SECRET, "nobody", "ann")),
        ("expired", expired),
        (
            "alg none",
            forge_jwt(&json!({"alg": "none", "typ": "JWT"}), &claims, None),
        ),
        (
            "alg none, signed",
            forge_jwt(&json!({"alg": "none"}), &claims, Some(secret)),
        ),
        (
            "alg HS512",
            forge_jwt(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims,
                Some(secret),
            ),
        ),
        (
            "alg RS256",
            forge_jwt(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &claims,
                Some(secret),
            ),
        ),
        (
            "no exp",
            forge_jwt(
                &hs256,
                &json!({"sub": "ann", "tenant": "acme"}),
                Some(secret),
            ),
        ),
        (
            "no sub",
            forge_jwt(
                &hs256,
                &json!({"tenant": "acme", "exp": now + 3600}),
                Some(secret),
            ),
        ),
        (
            "no tenant",
            forge_jwt(
                &hs256,
                &json!({"sub": "ann", "exp": now + 3600}),
                Some(secret),
            ),
        ),
        (
            "string exp",
            forge_jwt(
                &hs256,
                &json!({"sub": "ann", "tenant": "acme", "exp": "never"}),
                Some(secret),
            ),
        ),
        ("bad signature", bad_signature),
        ("a session token", s.token.clone()),
        ("a visitor token", s.visitor_token.clone()),
    ];
    // The forged-but-valid control: the same construction with HS256 works.
    let control = forge_jwt(&hs256, &claims, Some(secret));
    assert_eq!(
        c.get_auth("/v1/tenant/conversations", &control)
            .await
            .status,
        200,
        "forge_jwt signs like the gateway expects"
    );

    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/tenant/conversations".into(), None),
        ("GET", conv_path(id), None),
        ("GET", format!("{}/messages", conv_path(id)), None),
        (
            "POST",
            format!("{}/messages", conv_path(id)),
            Some(json!({"message": "x"})),
        ),
        ("POST", format!("{}/close", conv_path(id)), Some(json!({}))),
        ("GET", "/v1/tenant/events".into(), None),
        (
            "POST",
            "/v1/tenant/events".into(),
            Some(json!({"type": "a:b"})),
        ),
    ];
    for (method, path, body) in &routes {
        let body = body.as_ref().map(|b| serde_json::to_vec(b).unwrap());
        let r = c.request(method, path, &[], body.clone()).await;
        assert_error(&r, 401, "invalid_credentials");
        for (what, tok) in &bad {
            let auth = bearer(tok);
            let r = c
                .request(method, path, &[("authorization", &auth)], body.clone())
                .await;
            assert_eq!(r.status, 401, "{what} on {method} {path}: {}", r.text);
            assert_error(&r, 401, "invalid_credentials");
        }
    }
    // Nothing was written.
    let h = c
        .get_auth(&format!("{}/messages", conv_path(id)), SERVER_KEY)
        .await;
    assert_eq!(h.json["messages"], json!([]));
    let conv = c.get_auth(&conv_path(id), SERVER_KEY).await;
    assert_eq!(conv.json["status"], "open");

    // Expiry is judged by the gateway's clock.
    let jwt = agent_jwt(AGENT_SECRET, "acme", "ann"); // exp = real now + 1 h
    assert_eq!(
        c.get_auth("/v1/tenant/conversations", &jwt).await.status,
        200
    );
    clock.advance(3_601_000);
    assert_error(
        &c.get_auth("/v1/tenant/conversations", &jwt).await,
        401,
        "invalid_credentials",
    );
    // The server key does not expire.
    assert_eq!(
        c.get_auth("/v1/tenant/conversations", SERVER_KEY)
            .await
            .status,
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn another_tenants_conversations_are_not_found() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "secret acme stuff", None).await.status, 201);
    let id = &s.conversation_id;
    let acme_offset = last_offset(&c.tenant_events(&acme_agent("a"), None).await);
    for tok in [
        agent_jwt(AGENT_SECRET2, "globex", "gus"),
        SERVER_KEY2.to_string(),
    ] {
        assert_error(
            &c.get_auth(&conv_path(id), &tok).await,
            404,
            "conversation_not_found",
        );
        assert_error(
            &c.get_auth(&format!("{}/messages", conv_path(id)), &tok)
                .await,
            404,
            "conversation_not_found",
        );
        assert_error(
            &c.get_auth(&format!("{}/messages?wait=1", conv_path(id)), &tok)
                .await,
            404,
            "conversation_not_found",
        );
        let r = c
            .post_auth(
                &format!("{}/messages", conv_path(id)),
                &tok,
                &json!({"message": "hi"}),
            )
            .await;
        assert_error(&r, 404, "conversation_not_found");
        assert_error(
            &c.post_auth(&format!("{}/close", conv_path(id)), &tok, &json!({}))
                .await,
            404,
            "conversation_not_found",
        );
        let list = c.get_auth("/v1/tenant/conversations", &tok).await;
        assert!(!list.text.contains(id.as_str()), "{}", list.text);
        let ev = c.tenant_events(&tok, None).await;
        assert!(
            !ev.text.contains(id.as_str()) && !ev.text.contains("secret acme"),
            "{}",
            ev.text
        );
    }
    let r = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY2,
            &json!({"type": "conversation:qualified", "conversationId": id}),
        )
        .await;
    assert_error(&r, 404, "conversation_not_found");
    // Unknown ids are 404 too.
    for bad in ["00000000-0000-4000-8000-000000000000", "x"] {
        assert_error(
            &c.get_auth(&conv_path(bad), SERVER_KEY).await,
            404,
            "conversation_not_found",
        );
    }
    // Acme's conversation is untouched.
    let conv = c.get_auth(&conv_path(id), SERVER_KEY).await;
    assert_eq!(conv.json["status"], "open");
    assert_eq!(conv.json["qualified"], false);
    assert_eq!(c.history(&s).await.len(), 1);
    let ev = c.tenant_events(SERVER_KEY, Some(&acme_offset)).await;
    assert_eq!(ev.json["events"], json!([]));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_list_is_most_recently_updated_first_with_filter_and_paging() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let empty = c.get_auth("/v1/tenant/conversations", &agent).await;
    assert_eq!(empty.json, json!({"conversations": [], "nextCursor": null}));

    let mut sessions: Vec<Session> = Vec::new();
    let mut last_update = Value::Null;
    for _ in 0..3 {
        if !last_update.is_null() {
            tick_past(&last_update).await;
        }
        let s = c.session(PK).await;
        last_update = c
            .get_auth(&conv_path(&s.conversation_id), &agent)
            .await
            .json["updatedAt"]
            .clone();
        sessions.push(s);
    }
    let (a, b, cc) = (
        sessions[0].conversation_id.as_str(),
        sessions[1].conversation_id.as_str(),
        sessions[2].conversation_id.as_str(),
    );
    let r = c.get_auth("/v1/tenant/conversations", &agent).await;
    assert_eq!(list_ids(&r), [cc, b, a]);
    assert_eq!(r.json["nextCursor"], Value::Null);
    for conv in r.json["conversations"].as_array().unwrap() {
        assert_conversation_shape(conv);
    }
    // A message moves its conversation to the top.
    tick_past(&last_update).await;
    let sent = c.send(&sessions[0], "bump", None).await;
    assert_eq!(sent.status, 201);
    let r = c.get_auth("/v1/tenant/conversations", &agent).await;
    assert_eq!(list_ids(&r), [a, cc, b]);
    assert_eq!(r.json["conversations"][0]["lastMessage"]["body"], "bump");
    assert_eq!(
        r.json["conversations"][0]["updatedAt"],
        sent.json["createdAt"]
    );

    // Paging: one at a time, exclusive cursors, null at the end.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..3 {
        let q = match &cursor {
            Some(k) => format!("/v1/tenant/conversations?limit=1&cursor={k}"),
            None => "/v1/tenant/conversations?limit=1".into(),
        };
        let r = c.get_auth(&q, &agent).await;
        seen.extend(list_ids(&r));
        cursor = r.json["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, [a, cc, b]);
    assert!(cursor.is_none(), "the last page has no cursor");
    let r = c.get_auth("/v1/tenant/conversations?limit=2", &agent).await;
    assert_eq!(list_ids(&r), [a, cc]);
    let k = r.json["nextCursor"].as_str().unwrap();
    let r = c
        .get_auth(
            &format!("/v1/tenant/conversations?limit=2&cursor={k}"),
            &agent,
        )
        .await;
    assert_eq!(list_ids(&r), [b]);
    assert_eq!(r.json["nextCursor"], Value::Null);

    // Status filter.
    let latest = c.get_auth(&conv_path(a), &agent).await.json["updatedAt"].clone();
    tick_past(&latest).await;
    let closed = c
        .post_auth(&format!("{}/close", conv_path(cc)), &agent, &json!({}))
        .await;
    assert_eq!(closed.status, 200);
    assert_eq!(
        list_ids(&c.get_auth("/v1/tenant/conversations", &agent).await),
        [cc, a, b]
    );
    assert_eq!(
        list_ids(
            &c.get_auth("/v1/tenant/conversations?status=closed", &agent)
                .await
        ),
        [cc]
    );
    assert_eq!(
        list_ids(
            &c.get_auth("/v1/tenant/conversations?status=open", &agent)
                .await
        ),
        [a, b]
    );
    let r = c
        .get_auth("/v1/tenant/conversations?status=open&limit=1", &agent)
        .await;
    assert_eq!(list_ids(&r), [a]);
    let k = r.json["nextCursor"].as_str().unwrap();
    let r = c
        .get_auth(
            &format!("/v1/tenant/conversations?status=open&limit=1&cursor={k}"),
            &agent,
        )
        .await;
    assert_eq!(list_ids(&r), [b]);

    for (q, field) in [
        ("?status=pending", "status"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?cursor=garbage", "cursor"),
        ("?cursor=abc_def", "cursor"),
    ] {
        assert_invalid(
            &c.get_auth(&format!("/v1/tenant/conversations{q}"), &agent)
                .await,
            field,
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn one_conversation_and_its_history() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let path = format!("{}/messages", conv_path(&s.conversation_id));
    let empty = c.get_auth(&path, &agent).await;
    assert_eq!(
        empty.json,
        json!({"messages": [], "hasMore": false, "nextCursor": null})
    );
    let mut ids = Vec::new();
    let mut created = Vec::new();
    for i in 1..=4 {
        if let Some(prev) = created.last() {
            tick_past(prev).await;
        }
        let r = if i % 2 == 1 {
            c.send(&s, &format!("v{i}"), None).await
        } else {
            c.post_auth(&path, &agent, &json!({"message": format!("a{i}")}))
                .await
        };
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.json["messageId"].as_str().unwrap().to_owned());
        created.push(r.json["createdAt"].clone());
    }
    let conv = c.get_auth(&conv_path(&s.conversation_id), &agent).await;
    assert_eq!(conv.status, 200);
    assert_conversation_shape(&conv.json);
    assert_eq!(conv.json["visitorId"], s.visitor_id);
    assert_eq!(conv.json["lastMessage"]["id"], ids[3]);
    assert_eq!(conv.json["lastMessage"]["body"], "a4");

    let page = |q: String| {
        let (c, agent, path) = (c.clone(), agent.clone(), path.clone());
        async move {
            let r = c.get_auth(&format!("{path}{q}"), &agent).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r
        }
    };
    let got = |r: &Resp| -> Vec<String> {
        r.json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = page(String::new()).await;
    assert_eq!(got(&r), ids);
    assert_eq!(r.json["messages"][0]["direction"], "inbound");
    assert_eq!(r.json["messages"][1]["direction"], "outbound");
    let r = page("?limit=2".into()).await;
    assert_eq!(got(&r), ids[0..2]);
    assert_eq!(r.json["hasMore"], true);
    assert_eq!(r.json["nextCursor"], ids[1]);
    let r = page(format!("?after={}&limit=2", ids[1])).await;
    assert_eq!(got(&r), ids[2..4]);
    assert_eq!(r.json["hasMore"], false);
    let r = page(format!("?after={}", ids[3])).await;
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": ids[3]})
    );
    let enc = |v: &Value| v.as_str().unwrap().replace(':', "%3A");
    let r = page(format!(
        "?afterCreatedAt={}&afterId={}",
        enc(&created[1]),
        ids[1]
    ))
    .await;
    assert_eq!(got(&r), ids[2..4]);
    let r = page(format!("?since={}", enc(&created[2]))).await;
    assert_eq!(got(&r), ids[3..4]);
    for (q, field) in [
        ("?after=x", "after"),
        ("?limit=0", "limit"),
        ("?wait=31", "wait"),
        ("?since=nope", "since"),
        ("?afterId=1", "afterCreatedAt"),
    ] {
        assert_invalid(&c.get_auth(&format!("{path}{q}"), &agent).await, field);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn tenant_history_long_polls() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let path = format!("{}/messages", conv_path(&s.conversation_id));
    let first = c.send(&s, "hello", None).await.json["messageId"]
        .as_str()
        .unwrap()
        .to_owned();

    let (c2, agent2, q) = (
        c.clone(),
        agent.clone(),
        format!("{path}?after={first}&wait=5"),
    );
    let started = Instant::now();
    let poll = tokio::spawn(async move { (c2.get_auth(&q, &agent2).await, started.elapsed()) });
    c.wait_hub_channels(1).await;
    let sent = c.send(&s, "are you there?", None).await;
    assert_eq!(sent.status, 201);
    let (r, elapsed) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(4),
        "answered after {elapsed:?}"
    );
    assert_eq!(r.json["messages"][0]["id"], sent.json["messageId"]);
    assert_eq!(r.json["messages"][0]["body"], "are you there?");

    let last = sent.json["messageId"].as_str().unwrap();
    let t = Instant::now();
    let r = c
        .get_auth(&format!("{path}?after={last}&wait=1"), &agent)
        .await;
    let elapsed = t.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(
        r.json,
        json!({"messages": [], "hasMore": false, "nextCursor": last})
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn replies_from_agents_and_the_tenant_backend() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let path = format!("{}/messages", conv_path(&s.conversation_id));

    let r = c
        .post_auth(
            &path,
            &agent,
            &json!({"message": " Hi, Ann here ", "clientMessageId": "r-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json.as_object().unwrap().len(), 4);
    assert_eq!(r.json["success"], true);
    assert_eq!(r.json["duplicate"], false);
    assert_ts(&r.json["createdAt"]);
    let first_id = r.json["messageId"].clone();
    // Idempotent like the visitor's send.
    let again = c
        .post_auth(
            &path,
            &agent,
            &json!({"message": "other words", "clientMessageId": "r-1"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["duplicate"], true);
    assert_eq!(again.json["messageId"], first_id);
    // Even when what the retry says now would be refused.
    for body in [
        json!({"message": "", "clientMessageId": "r-1"}),
        json!({"message": "x".repeat(10_001), "clientMessageId": "r-1"}),
        json!({"message": "hi", "attachments": ["att_bogus"], "clientMessageId": "r-1"}),
    ] {
        let again = c.post_auth(&path, &agent, &body).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.json["messageId"], first_id);
    }
    // Another agent's id is its own: the refusal stands.
    let r = c
        .post_auth(
            &path,
            &acme_agent("bob"),
            &json!({"message": "", "clientMessageId": "r-1"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);

    // The tenant's backend speaks as a bot with a mode, or by default as itself.
    let bot = c
        .post_auth(
            &path,
            SERVER_KEY,
            &json!({"message": "I am the bot", "author": {"kind": "bot", "name": "Flow bot"}, "meta": {"mode": "ai"}}),
        )
        .await;
    assert_eq!(bot.status, 201, "{}", bot.text);
    for mode in ["flow", "safe_fallback"] {
        let r = c.post_auth(&path, SERVER_KEY, &json!({"message": mode, "author": {"kind": "bot", "id": "b1"}, "meta": {"mode": mode}})).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let plain = c
        .post_auth(&path, SERVER_KEY, &json!({"message": "from the backend"}))
        .await;
    assert_eq!(plain.status, 201);
    let system = c
        .post_auth(
            &path,
            SERVER_KEY,
            &json!({"message": "Chat transferred", "author": {"kind": "system"}}),
        )
        .await;
    assert_eq!(system.status, 201);

    let h = c.history(&s).await;
    let bodies: Vec<&str> = h.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        [
            "Hi, Ann here",
            "I am the bot",
            "flow",
            "safe_fallback",
            "from the backend",
            "Chat transferred"
        ]
    );
    assert_eq!(
        h[0]["author"],
        json!({"kind": "agent", "id": "ann", "name": "Agent ann"})
    );
    assert_eq!(h[0]["direction"], "outbound");
    assert_eq!(h[0]["clientMessageId"], "r-1");
    assert!(h[0].get("meta").is_none_or(Value::is_null));
    assert_eq!(h[1]["author"]["kind"], "bot");
    assert_eq!(h[1]["author"]["name"], "Flow bot");
    assert_eq!(h[1]["meta"], json!({"mode": "ai"}));
    assert_eq!(h[1]["direction"], "outbound");
    assert_eq!(h[2]["author"]["id"], "b1");
    assert_eq!(h[3]["meta"]["mode"], "safe_fallback");
    assert_eq!(h[4]["author"]["kind"], "bot");
    assert_eq!(h[5]["author"]["kind"], "system");

    // Only the server key may choose the author or meta; nobody writes as the visitor.
    let r = c
        .post_auth(
            &path,
            &agent,
            &json!({"message": "x", "author": {"kind": "bot"}}),
        )
        .await;
    assert_invalid(&r, "author");
    let r = c
        .post_auth(
            &path,
            &agent,
            &json!({"message": "x", "meta": {"mode": "ai"}}),
        )
        .await;
    assert_invalid(&r, "author");
    let r = c
        .post_auth(
            &path,
            SERVER_KEY,
            &json!({"message": "x", "author": {"kind": "visitor"}}),
        )
        .await;
    assert_invalid(&r, "author.kind");
    let r = c
        .post_auth(
            &path,
            SERVER_KEY,
            &json!({"message": "x", "author": {"kind": "robot"}}),
        )
        .await;
    assert_invalid(&r, "author.kind");
    let r = c
        .post_auth(
            &path,
            SERVER_KEY,
            &json!({"message": "x", "meta": {"mode": "magic"}}),
        )
        .await;
    assert_invalid(&r, "meta.mode");
    let r = c
        .post_auth(&path, SERVER_KEY, &json!({"message": "x", "meta": "ai"}))
        .await;
    assert_invalid(&r, "meta");
    // The message rules are the visitor's.
    assert_invalid(
        &c.post_auth(&path, &agent, &json!({"message": "  "})).await,
        "message",
    );
    assert_invalid(
        &c.post_auth(&path, &agent, &json!({"message": "😀".repeat(10_001)}))
            .await,
        "message",
    );
    assert_eq!(
        c.post_auth(&path, &agent, &json!({"message": "😀".repeat(10_000)}))
            .await
            .status,
        201
    );
    assert_invalid(
        &c.post_auth(
            &path,
            &agent,
            &json!({"message": "x", "clientMessageId": "x".repeat(65)}),
        )
        .await,
        "clientMessageId",
    );
    assert_invalid(&c.post_auth(&path, &agent, &json!({})).await, "message");
    assert_eq!(
        c.history(&s).await.len(),
        7,
        "refused replies store nothing"
    );
    // Unknown conversation.
    let r = c
        .post_auth(
            &format!(
                "{}/messages",
                conv_path("00000000-0000-4000-8000-000000000000")
            ),
            &agent,
            &json!({"message": "x"}),
        )
        .await;
    assert_error(&r, 404, "conversation_not_found");
    gw.shutdown().await;
}

#[tokio::test]
async fn close_and_reopen_by_replying() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "hi", None).await.status, 201);
    let offset = last_offset(&c.tenant_events(&agent, None).await);

    let r = c
        .post_auth(
            &format!("{}/close", conv_path(&s.conversation_id)),
            &agent,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_conversation_shape(&r.json);
    assert_eq!(r.json["status"], "closed");
    assert_eq!(r.json["id"], s.conversation_id);
    let ev = c.tenant_events(&agent, Some(&offset)).await;
    assert_eq!(event_types(&ev), ["conversation:updated"]);
    assert_eq!(ev.json["events"][0]["data"]["status"], "closed");
    assert_eq!(ev.json["events"][0]["data"]["id"], s.conversation_id);
    let offset = last_offset(&ev);
    // Closing again changes nothing and emits nothing.
    let r = c
        .post_auth(
            &format!("{}/close", conv_path(&s.conversation_id)),
            SERVER_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "closed");
    assert_eq!(
        c.tenant_events(&agent, Some(&offset)).await.json["events"],
        json!([])
    );
    // No body at all is fine too.
    let r = c
        .request(
            "POST",
            &format!("{}/close", conv_path(&s.conversation_id)),
            &[("authorization", &bearer(&agent))],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The explicit reopen route, and closing again.
    let r = c
        .post_auth(
            &format!("{}/reopen", conv_path(&s.conversation_id)),
            &agent,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "open");
    let ev = c.tenant_events(&agent, Some(&offset)).await;
    assert_eq!(event_types(&ev), ["conversation:updated"]);
    assert_eq!(ev.json["events"][0]["data"]["status"], "open");
    let r = c
        .post_auth(
            &format!("{}/close", conv_path(&s.conversation_id)),
            &agent,
            &json!({}),
        )
        .await;
    assert_eq!(r.json["status"], "closed");
    let offset = last_offset(&c.tenant_events(&agent, None).await);
    // A reply reopens.
    let reply = c
        .post_auth(
            &format!("{}/messages", conv_path(&s.conversation_id)),
            &agent,
            &json!({"message": "anything else?"}),
        )
        .await;
    assert_eq!(reply.status, 201);
    let conv = c.get_auth(&conv_path(&s.conversation_id), &agent).await;
    assert_eq!(conv.json["status"], "open");
    let ev = c.tenant_events(&agent, Some(&offset)).await;
    let types = event_types(&ev);
    assert!(types.contains(&"message:new".to_string()), "{types:?}");
    let upd = ev.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "conversation:updated")
        .expect("conversation:updated on reopen");
    assert_eq!(upd["data"]["status"], "open");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_event_stream_has_ordered_offsets_and_paging() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let empty = c.tenant_events(&agent, None).await;
    assert_eq!(empty.json["events"], json!([]));
    assert_eq!(empty.json["recovered"], true);
    assert_eq!(empty.json["nextCursor"], Value::Null);

    let s = c.session(PK).await;
    let sent = c.send(&s, "hello", None).await;
    let all = c.tenant_events(&agent, None).await;
    assert_eq!(event_types(&all), ["conversation:new", "message:new"]);
    assert_eq!(all.json["recovered"], true);
    let evs = all.json["events"].as_array().unwrap();
    assert_eq!(evs[0]["data"]["id"], s.conversation_id);
    assert_conversation_shape(&evs[0]["data"]);
    assert_eq!(evs[1]["data"]["id"], sent.json["messageId"]);
    // The checked id replaces whatever the data said.
    assert_eq!(evs[1]["data"]["conversationId"], s.conversation_id);
    assert_eq!(evs[1]["data"]["body"], "hello");
    let offsets: Vec<u64> = evs
        .iter()
        .map(|e| e["offset"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(offsets[0] < offsets[1]);
    assert_eq!(all.json["nextCursor"], evs[1]["offset"]);
    for e in evs {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3, "{e}");
    }
    // Exclusive `after`, `limit`, echo of `after` when nothing is newer.
    let first = evs[0]["offset"].as_str().unwrap();
    let r = c
        .get_auth(&format!("/v1/tenant/events?after={first}"), &agent)
        .await;
    assert_eq!(event_types(&r), ["message:new"]);
    assert_eq!(r.json["recovered"], true);
    let r = c.get_auth("/v1/tenant/events?limit=1", &agent).await;
    assert_eq!(event_types(&r), ["conversation:new"]);
    assert_eq!(r.json["nextCursor"], first);
    let last = evs[1]["offset"].as_str().unwrap();
    let r = c
        .get_auth(&format!("/v1/tenant/events?after={last}"), &agent)
        .await;
    assert_eq!(r.json["events"], json!([]));
    assert_eq!(r.json["nextCursor"], last);
    assert_eq!(r.json["recovered"], true);
    // The server key reads the same stream.
    assert_eq!(
        c.tenant_events(SERVER_KEY, None).await.json["events"],
        all.json["events"]
    );
    for (q, field) in [
        ("?after=x", "after"),
        ("?after=-1", "after"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?wait=31", "wait"),
    ] {
        assert_invalid(
            &c.get_auth(&format!("/v1/tenant/events{q}"), &agent).await,
            field,
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn custom_events_from_the_tenant_backend() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let offset = last_offset(&c.tenant_events(&agent, None).await);

    let r = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "campaign:progress", "data": {"sent": 10, "of": 100}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["accepted"], true);
    let published_at = r.json["offset"].clone();
    let r2 = c
        .post_auth("/v1/tenant/events", SERVER_KEY, &json!({"type": "crm:note_added", "data": {"note": "VIP", "conversationId": "spoofed"}, "conversationId": s.conversation_id}))
        .await;
    assert_eq!(r2.status, 202, "{}", r2.text);
    let r3 = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "a1_b:c2_d"}),
        )
        .await;
    assert_eq!(r3.status, 202, "{}", r3.text);

    let ev = c.tenant_events(&agent, Some(&offset)).await;
    assert_eq!(
        event_types(&ev),
        ["campaign:progress", "crm:note_added", "a1_b:c2_d"]
    );
    let evs = ev.json["events"].as_array().unwrap();
    assert_eq!(evs[0]["data"], json!({"sent": 10, "of": 100}));
    assert_eq!(evs[0]["offset"], published_at);
    assert_eq!(evs[1]["data"]["note"], "VIP");
    assert_eq!(evs[1]["data"]["conversationId"], s.conversation_id);
    assert_eq!(evs[2]["data"], json!({}));

    // conversation:qualified with a conversation sets its flag and carries it.
    let offset = last_offset(&ev);
    let q = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "conversation:qualified", "conversationId": s.conversation_id}),
        )
        .await;
    assert_eq!(q.status, 202, "{}", q.text);
    let conv = c.get_auth(&conv_path(&s.conversation_id), &agent).await;
    assert_eq!(conv.json["qualified"], true);
    let ev = c.tenant_events(&agent, Some(&offset)).await;
    assert_eq!(event_types(&ev), ["conversation:qualified"]);
    assert_eq!(ev.json["events"][0]["data"]["id"], s.conversation_id);
    assert_eq!(ev.json["events"][0]["data"]["qualified"], true);

    // Reserved and malformed types, agents, unknown conversations.
    let offset = last_offset(&ev);
    for t in [
        "conversation:new",
        "conversation:updated",
        "conversation:read",
        "message:new",
        "message:delta",
        "voice:requested",
    ] {
        assert_invalid(
            &c.post_auth(
                "/v1/tenant/events",
                SERVER_KEY,
                &json!({"type": t, "data": {}}),
            )
            .await,
            "type",
        );
    }
    for t in [
        "Campaign:progress",
        "campaign",
        "a:b:c",
        "1a:b",
        "a:B",
        "a:",
        ":b",
        "a-b:c",
        "a:b ",
        "",
        "typing",
    ] {
        assert_invalid(
            &c.post_auth("/v1/tenant/events", SERVER_KEY, &json!({"type": t}))
                .await,
            "type",
        );
    }
    assert_invalid(
        &c.post_auth("/v1/tenant/events", SERVER_KEY, &json!({"data": {}}))
            .await,
        "type",
    );
    let r = c
        .post_auth(
            "/v1/tenant/events",
            &agent,
            &json!({"type": "campaign:progress"}),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    let r = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "crm:x", "conversationId": "00000000-0000-4000-8000-000000000000"}),
        )
        .await;
    assert_error(&r, 404, "conversation_not_found");
    // conversation:qualified marks a conversation: it needs one.
    assert_invalid(
        &c.post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "conversation:qualified", "data": {"id": "made-up"}}),
        )
        .await,
        "conversationId",
    );
    // With a conversation, the data must be an object: the id goes into it.
    for data in [json!([1, 2]), json!("text"), json!(5)] {
        assert_invalid(
            &c.post_auth(
                "/v1/tenant/events",
                SERVER_KEY,
                &json!({"type": "crm:x", "data": data, "conversationId": s.conversation_id}),
            )
            .await,
            "data",
        );
    }
    assert_eq!(
        c.tenant_events(&agent, Some(&offset)).await.json["events"],
        json!([]),
        "nothing refused was published"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tenant_events_long_poll() {
    let gw = Gateway::start(&quiet()).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let offset = last_offset(&c.tenant_events(&agent, None).await);

    let (c2, agent2, q) = (
        c.clone(),
        agent.clone(),
        format!("/v1/tenant/events?after={offset}&wait=5"),
    );
    let started = Instant::now();
    let poll = tokio::spawn(async move { (c2.get_auth(&q, &agent2).await, started.elapsed()) });
    c.wait_hub_channels(1).await;
    let p = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "campaign:progress", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(p.status, 202);
    let (r, elapsed) = poll.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        elapsed < Duration::from_secs(4),
        "answered after {elapsed:?}"
    );
    assert_eq!(event_types(&r), ["campaign:progress"]);
    assert_eq!(r.json["events"][0]["offset"], p.json["offset"]);

    // A visitor's message wakes it too.
    let offset = last_offset(&r);
    let (c2, agent2, q) = (
        c.clone(),
        agent.clone(),
        format!("/v1/tenant/events?after={offset}&wait=5"),
    );
    let started = Instant::now();
    let poll = tokio::spawn(async move { (c2.get_auth(&q, &agent2).await, started.elapsed()) });
    c.wait_hub_channels(1).await;
    assert_eq!(c.send(&s, "ping", None).await.status, 201);
    let (r, elapsed) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(4),
        "answered after {elapsed:?}"
    );
    assert_eq!(event_types(&r)[0], "message:new");

    // Nothing new: an empty list after the wait.
    let offset = last_offset(&c.tenant_events(&agent, None).await);
    // Another tenant's activity does not count.
    let (c2, agent2, q) = (
        c.clone(),
        agent.clone(),
        format!("/v1/tenant/events?after={offset}&wait=1"),
    );
    let started = Instant::now();
    let poll = tokio::spawn(async move { (c2.get_auth(&q, &agent2).await, started.elapsed()) });
    c.wait_hub_channels(1).await;
    assert_eq!(
        c.post_auth("/v1/tenant/events", SERVER_KEY2, &json!({"type": "x:y"}))
            .await
            .status,
        202
    );
    let (r, elapsed) = poll.await.unwrap();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(r.json["events"], json!([]));
    assert_eq!(r.json["nextCursor"], offset);
    assert_eq!(r.json["recovered"], true);
    gw.shutdown().await;
}

#[tokio::test]
async fn recovered_is_false_once_retention_dropped_the_requested_events() {
    let options = confab_gateway::Options {
        retention: confab_store::Retention {
            min_events: 2,
            min_age_ms: 0,
        },
        maintenance_every: Duration::from_millis(20),
        ..Default::default()
    };
    let gw = Gateway::start_with(&quiet(), options).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    for i in 0..4 {
        assert_eq!(c.send(&s, &format!("m{i}"), None).await.status, 201);
    }
    let all = c.tenant_events(&agent, None).await;
    let first = all.json["events"][0]["offset"].as_str().unwrap().to_owned();
    let last = last_offset(&all);
    // Wait (bounded) for housekeeping to drop all but the last two events.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.tenant_events(&agent, Some(&first)).await;
        if r.json["recovered"] == false {
            // What is still retained is served, and the flag says a gap precedes it.
            assert_eq!(r.json["events"].as_array().unwrap().len(), 2, "{}", r.text);
            break;
        }
        assert!(Instant::now() < deadline, "retention never ran: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From a retained offset, nothing was lost.
    let r = c.tenant_events(&agent, Some(&last)).await;
    assert_eq!(r.json["recovered"], true);
    let without_after = c.tenant_events(&agent, None).await;
    assert_eq!(without_after.json["recovered"], true);
    assert_eq!(without_after.json["events"].as_array().unwrap().len(), 2);
    gw.shutdown().await;
}

/// A cursor beyond the log's end (from a wiped or another store) is answered at once, not
/// after the wait, with `recovered: false` and the log's end as `nextCursor`, from which
/// the client goes on.
#[tokio::test]
async fn a_tenant_events_cursor_beyond_the_end_is_not_recovered() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let agent = acme_agent("ann");
    let s = c.session(PK).await;
    let end = c.tenant_events(&agent, None).await.json["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let r = c
        .get_auth("/v1/tenant/events?after=999999999&wait=20", &agent)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once, not after the wait"
    );
    assert_eq!(r.json["recovered"], false);
    assert_eq!(r.json["events"], json!([]));
    assert_eq!(r.json["nextCursor"], end.as_str());
    assert_eq!(c.send(&s, "hi", None).await.status, 201);
    let next = c.tenant_events(&agent, Some(&end)).await;
    assert_eq!(next.json["recovered"], true);
    assert!(
        next.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "message:new"),
        "{}",
        next.text
    );
    gw.shutdown().await;
}
