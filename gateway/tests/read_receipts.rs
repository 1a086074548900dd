//! Read receipts over real HTTP and WebSockets: stored, forward-only cursors for the visitor
//! and the agents; `unreadByAgent` counts the visitor's messages after the agents' cursor;
//! every move is a `conversation:read` tenant event and a frame to the visitor's sockets;
//! the cursors survive a restart (SQLite file) and work across two nodes on a real
//! `redis-server`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TENANT_WS: &str = "/v1/tenant/ws";
const VISITOR_WS: &str = "/v1/visitor/ws";

fn read_path(conversation_id: &str) -> String {
    format!("/v1/tenant/conversations/{conversation_id}/read")
}

/// Sends `n` visitor messages; their ids.
async fn visitor_sends(c: &Client, s: &Session, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = c.send(s, &format!("visitor {i}"), None).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.json["messageId"].as_str().unwrap().to_owned());
    }
    ids
}

async fn agent_replies(c: &Client, conversation_id: &str, text: &str) -> String {
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{conversation_id}/messages"),
            &acme_agent("a1"),
            &json!({"message": text}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["messageId"].as_str().unwrap().to_owned()
}

async fn conversation(c: &Client, id: &str) -> Value {
    let r = c
        .get_auth(&format!("/v1/tenant/conversations/{id}"), &acme_agent("a1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

/// The `data` of every `conversation:read` event in the tenant's log.
async fn read_events(c: &Client) -> Vec<Value> {
    let r = c.tenant_events(&acme_agent("a1"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "conversation:read")
        .map(|e| e["data"].clone())
        .collect()
}

/// The next frame of `kind`, skipping others.
async fn next_frame(ws: &mut Ws, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = ws
            .next_json_within(left)
            .await
            .unwrap_or_else(|| panic!("no {kind} frame in time"));
        if v["type"] == kind {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_move_forward_and_count_unread() {
    let gw = Gateway::start(&without_auto_reply(&config_toml(""))).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let conv = conversation(&c, &s.conversation_id).await;
    assert_eq!(conv["unreadByAgent"], 0);
    assert_eq!(conv["visitorLastReadId"], Value::Null);
    assert_eq!(conv["agentLastReadId"], Value::Null);

    let ids = visitor_sends(&c, &s, 3).await;
    let reply = agent_replies(&c, &s.conversation_id, "hello").await;
    assert_eq!(
        conversation(&c, &s.conversation_id).await["unreadByAgent"],
        3
    );
    let listed = c
        .get_auth("/v1/tenant/conversations", &acme_agent("a1"))
        .await;
    assert_eq!(listed.json["conversations"][0]["unreadByAgent"], 3);
    let updated_before = conversation(&c, &s.conversation_id).await["updatedAt"].clone();

    // The agent reads the first message: two are still unread.
    let r = c
        .post_auth(
            &read_path(&s.conversation_id),
            &acme_agent("a1"),
            &json!({"messageId": ids[0]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["agentLastReadId"], ids[0].as_str());
    assert_eq!(r.json["unreadByAgent"], 2);
    assert_eq!(
        r.json["updatedAt"], updated_before,
        "reading is not an update"
    );
    // Everything: none left.
    let r = c
        .post_auth(
            &read_path(&s.conversation_id),
            &acme_agent("a1"),
            &json!({"messageId": reply}),
        )
        .await;
    assert_eq!(r.json["unreadByAgent"], 0);
    // Backwards: accepted, nothing changes, no event.
    let r = c
        .post_auth(
            &read_path(&s.conversation_id),
            &acme_agent("a1"),
            &json!({"messageId": ids[1]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["agentLastReadId"], reply.as_str());

    // The visitor reads the agent's reply.
    let r = c
        .post(
            "/v1/read",
            &[("authorization", &s.bearer())],
            &json!({"messageId": reply}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["visitorLastReadId"], reply.as_str());

    // A new visitor message is unread again.
    visitor_sends(&c, &s, 1).await;
    assert_eq!(
        conversation(&c, &s.conversation_id).await["unreadByAgent"],
        1
    );

    let events = read_events(&c).await;
    let expected = [
        ("agent", ids[0].as_str(), 2),
        ("agent", reply.as_str(), 0),
        ("visitor", reply.as_str(), 0),
    ]
    .map(|(reader, id, unread)| {
        json!({"conversationId": s.conversation_id, "reader": reader, "messageId": id,
               "unreadByAgent": unread})
    });
    assert_eq!(events, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reads_change_nothing() {
    let gw = Gateway::start(&without_auto_reply(&config_toml(""))).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let other = c.session(PK).await;
    let ids = visitor_sends(&c, &s, 1).await;
    let others = visitor_sends(&c, &other, 1).await;
    let path = read_path(&s.conversation_id);
    let agent = acme_agent("a1");

    let beyond = ids[0].rsplit_once('_').unwrap().0.to_owned() + "_99";
    for (body, field) in [
        (json!({"messageId": others[0]}), "messageId"),
        (json!({"messageId": beyond}), "messageId"),
        (json!({"messageId": "nope"}), "messageId"),
        (json!({"messageId": ""}), "messageId"),
    ] {
        assert_invalid(&c.post_auth(&path, &agent, &body).await, field);
        let r = c
            .post("/v1/read", &[("authorization", &s.bearer())], &body)
            .await;
        assert_invalid(&r, field);
    }
    assert_error(
        &c.post_auth(&path, &agent, &json!({})).await,
        422,
        "validation_failed",
    );
    let r = c
        .request(
            "POST",
            &path,
            &[("authorization", &bearer(&agent))],
            Some(b"{".to_vec()),
        )
        .await;
    assert_error(&r, 400, "invalid_json");
    // Another tenant's agent does not see the conversation.
    let stranger = agent_jwt(AGENT_SECRET2, "globex", "g1");
    assert_error(
        &c.post_auth(&path, &stranger, &json!({"messageId": ids[0]}))
            .await,
        404,
        "conversation_not_found",
    );
    assert_error(
        &c.post_auth(
            &read_path("00000000-0000-4000-8000-000000000000"),
            &agent,
            &json!({"messageId": ids[0]}),
        )
        .await,
        404,
        "conversation_not_found",
    );
    let r = c.post("/v1/read", &[], &json!({"messageId": ids[0]})).await;
    assert_error(&r, 401, "invalid_session");

    let conv = conversation(&c, &s.conversation_id).await;
    assert_eq!(conv["agentLastReadId"], Value::Null);
    assert_eq!(conv["visitorLastReadId"], Value::Null);
    assert_eq!(conv["unreadByAgent"], 1);
    assert!(read_events(&c).await.is_empty());
}

/// Agents read over the tenant channel; the visitor sees `conversation:read` live and, after
/// reconnecting, in `ready`; agents see the visitor's reads as tenant events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_frames_on_both_channels() {
    let gw = Gateway::start(&without_auto_reply(&config_toml(""))).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut agent_ws, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("a1"), None).await;
    let (mut visitor_ws, ready) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    assert_eq!(ready["agentLastReadId"], Value::Null);
    let ids = visitor_sends(&c, &s, 2).await;

    agent_ws
        .send_json(
            &json!({"type": "read", "conversationId": s.conversation_id, "messageId": ids[1]}),
        )
        .await;
    let f = next_frame(&mut visitor_ws, "conversation:read").await;
    assert!(f.get("offset").is_none());
    assert_eq!(
        f["data"],
        json!({"conversationId": s.conversation_id, "reader": "agent", "messageId": ids[1],
               "unreadByAgent": 0})
    );
    let e = next_frame(&mut agent_ws, "conversation:read").await;
    assert!(e["offset"].is_string(), "a stored tenant event: {e}");
    assert_eq!(e["data"], f["data"]);

    // The visitor reads over its channel.
    let reply = agent_replies(&c, &s.conversation_id, "hi").await;
    visitor_ws
        .send_json(&json!({"type": "read", "messageId": reply}))
        .await;
    let e = next_frame(&mut agent_ws, "conversation:read").await;
    assert_eq!(e["data"]["reader"], "visitor");
    assert_eq!(e["data"]["messageId"], reply.as_str());

    // Bad frames get an error and the connection stays.
    visitor_ws
        .send_json(&json!({"type": "read", "messageId": "nope"}))
        .await;
    let err = next_frame(&mut visitor_ws, "error").await;
    assert_eq!(err["code"], "validation_failed");
    assert_eq!(err["field"], "messageId");
    agent_ws
        .send_json(&json!({"type": "read", "messageId": reply}))
        .await;
    assert_eq!(
        next_frame(&mut agent_ws, "error").await["code"],
        "invalid_frame"
    );

    // A new socket learns where the cursors stand.
    let (_again, ready) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    assert_eq!(ready["agentLastReadId"], ids[1].as_str());
    assert_eq!(ready["visitorLastReadId"], reply.as_str());
}

/// The cursors are stored: a restarted gateway (same SQLite file) still has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let toml = without_auto_reply(&config_toml("")).replace(
        "store = \"memory\"",
        &format!(
            "store = \"sqlite:{}\"",
            dir.path().join("confab.db").display()
        ),
    );
    let gw = Gateway::start(&toml).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let ids = visitor_sends(&c, &s, 3).await;
    let r = c
        .post_auth(
            &read_path(&s.conversation_id),
            &acme_agent("a1"),
            &json!({"messageId": ids[1]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    gw.shutdown().await;

    let gw = Gateway::start(&toml).await;
    let c = gw.client();
    let conv = conversation(&c, &s.conversation_id).await;
    assert_eq!(conv["agentLastReadId"], ids[1].as_str());
    assert_eq!(conv["unreadByAgent"], 1);
    let r = c
        .post_auth(
            &read_path(&s.conversation_id),
            &acme_agent("a1"),
            &json!({"messageId": ids[0]}),
        )
        .await;
    assert_eq!(
        r.json["agentLastReadId"],
        ids[1].as_str(),
        "still forward-only after the restart"
    );
}

/// Two nodes on one Redis: an agent reading on node B reaches the visitor on node A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cross_nodes_on_redis() {
    let Some(redis) =
        confab_store::redis::testing::RedisServer::start_or_skip("reads_cross_nodes_on_redis")
            .await
    else {
        return;
    };
    let toml = without_auto_reply(&config_toml("")).replace(
        "store = \"memory\"",
        &format!("store = \"{}\"", redis.url()),
    );
    let a = Gateway::start(&toml).await;
    let b = Gateway::start(&toml).await;
    let s = a.client().session(PK).await;
    let (mut visitor_ws, _) = Ws::open(a.addr, VISITOR_WS, &s.token, None).await;
    let ids = visitor_sends(&a.client(), &s, 2).await;
    let r = b
        .client()
        .post_auth(
            &read_path(&s.conversation_id),
            &acme_agent("a1"),
            &json!({"messageId": ids[0]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["unreadByAgent"], 1);
    let f = next_frame(&mut visitor_ws, "conversation:read").await;
    assert_eq!(f["data"]["messageId"], ids[0].as_str());
    assert_eq!(
        conversation(&a.client(), &s.conversation_id).await["agentLastReadId"],
        ids[0].as_str()
    );
}
