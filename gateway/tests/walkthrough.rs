//! The README walk-through, end to end: config → session with the challenge → send →
//! poll → agent reply → the visitor sees it.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn readme_walkthrough() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let cfg = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(cfg.status, 200);
    assert_eq!(cfg.json["tenant"]["id"], "acme");
    assert_eq!(cfg.json["isAvailable"], true);
    let s = c.session(PK).await;
    let sent = c
        .send(&s, "Hello, I need help with billing", Some("c1"))
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    // The auto-reply follows the first message (posted right after the answer): wait for it.
    let r = c
        .get(
            "/v1/messages?after=1&wait=10",
            &[("authorization", &s.bearer())],
        )
        .await;
    assert_eq!(r.json["messages"][0]["author"]["kind"], "bot", "{}", r.text);
    assert_eq!(r.json["messages"][0]["meta"]["mode"], "flow");
    let history = c.history(&s).await;
    assert_eq!(history[0]["body"], "Hello, I need help with billing");
    let agent = acme_agent("ann");
    let reply = c
        .post(
            &format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            &[("authorization", &format!("Bearer {agent}"))],
            &json!({"message": "Sure, let me look", "clientMessageId": "r1"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let history = c.history(&s).await;
    let last = history.last().unwrap();
    assert_eq!(last["author"]["kind"], "agent");
    assert_eq!(last["author"]["id"], "ann");
    assert_eq!(last["direction"], "outbound");
    gw.shutdown().await;
}
