//! Crash and shutdown of the real `confab` process on a SQLite file: every acknowledged
//! message survives `kill -9`, in order, and sessions and visitor tokens stay valid
//! (the generated session secret is kept in the store), and so are the tenant's log and
//! the conversation's last message, which name the stored messages. SIGTERM closes sockets
//! with 1001 and exits 0.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    // No session_secret: it is generated once and kept in the store.
    let toml = config_toml("")
        .replace("session_secret = \"test-session-secret\"\n", "")
        .replace(
            "store = \"memory\"",
            &format!(
                "store = \"sqlite:{}\"",
                dir.join("data/confab.db").display()
            ),
        );
    let path = dir.join("confab.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut gw = Process::spawn(&config, &[]);
    let c = gw.client();
    let s = c.session(PK).await;
    const N: usize = 400;
    // 16 concurrent senders share group commits; every 201 is a promise.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (c, s) = (c.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..N / 16 {
                let r = c
                    .send(&s, &format!("t{t}-m{i}"), Some(&format!("t{t}-m{i}")))
                    .await;
                assert_eq!(r.status, 201, "{}", r.text);
                acked.push(seq(r.json["messageId"].as_str().unwrap()));
            }
            acked
        }));
    }
    let mut acked: Vec<u64> = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let reply = c
        .post(
            &format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            &[("authorization", &format!("Bearer {}", acme_agent("ann")))],
            &json!({"message": "last words", "clientMessageId": "r1"}),
        )
        .await;
    assert_eq!(reply.status, 201);
    gw.kill9();

    let gw = Process::spawn(&config, &[]);
    let c = gw.client();
    // The old session token is still valid, and the history has every acknowledged message.
    let history = c.history(&s).await;
    let ids: Vec<u64> = history
        .iter()
        .map(|m| seq(m["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "ids are contiguous and ordered"
    );
    for id in &acked {
        assert!(ids.contains(id), "acknowledged message {id} was lost");
    }
    let bodies: Vec<&str> = history
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    for t in 0..16 {
        let mine: Vec<&str> = bodies
            .iter()
            .copied()
            .filter(|b| b.starts_with(&format!("t{t}-")))
            .collect();
        let expected: Vec<String> = (0..N / 16).map(|i| format!("t{t}-m{i}")).collect();
        assert_eq!(
            mine, expected,
            "each sender's messages, once each, in its order"
        );
    }
    assert_eq!(*bodies.last().unwrap(), "last words");
    // The conversation's last message and the tenant's log are joined back from the
    // messages (each message's JSON is stored once): the same messages, in the same order.
    let agent = acme_agent("ann");
    let conv = c
        .get_auth(
            &format!("/v1/tenant/conversations/{}", s.conversation_id),
            &agent,
        )
        .await;
    assert_eq!(
        conv.json["lastMessage"]["body"], "last words",
        "{}",
        conv.text
    );
    let mut logged: Vec<String> = Vec::new();
    let mut after = String::from("0");
    loop {
        let page = c
            .get_auth(
                &format!("/v1/tenant/events?after={after}&limit=200"),
                &agent,
            )
            .await;
        assert_eq!(page.status, 200, "{}", page.text);
        let events = page.json["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        logged.extend(
            events
                .iter()
                .filter(|e| e["type"] == "message:new")
                .map(|e| e["data"]["body"].as_str().unwrap().to_owned()),
        );
        after = page.json["nextCursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(logged, bodies, "the log's message:new events");
    // Idempotency keys survived too.
    let again = c.send(&s, "t0-m0", Some("t0-m0")).await;
    assert_eq!(
        (again.status, again.json["duplicate"].as_bool()),
        (200, Some(true))
    );
    // The visitor token resumes the same conversation.
    let r = c
        .session_with(PK, json!({"visitorToken": s.visitor_token}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resumed"], true);
    assert_eq!(r.json["conversationId"], s.conversation_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut gw = Process::spawn(&config, &[]);
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, "/v1/visitor/ws", &s.token, None).await;
    let (mut agent, _) = Ws::open(gw.addr, "/v1/tenant/ws", &acme_agent("ann"), None).await;
    // A long-poll in flight answers (empty) instead of being cut.
    let s2 = c.session(PK).await;
    let poll = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get(
                "/v1/messages?after=0&wait=30",
                &[("authorization", &s2.bearer())],
            )
            .await
        })
    };
    // The long-poll is parked once its conversation is the hub's third channel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c
        .get("/metrics", &[])
        .await
        .text
        .lines()
        .any(|l| l == "confab_hub_channels 3")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long-poll never parked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.sigterm();
    assert_eq!(
        visitor.closed(Duration::from_secs(10)).await,
        Closed::Code(1001)
    );
    assert_eq!(
        agent.closed(Duration::from_secs(10)).await,
        Closed::Code(1001)
    );
    let r = poll.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(gw.log.lock().iter().any(|l| l.contains("stopped")));
}
