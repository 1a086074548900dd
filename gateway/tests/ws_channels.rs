//! The WebSocket channels against a real gateway: fan-out across tabs and agents, both
//! transports meeting, every close code, lossless resume on both channels, slow consumers,
//! tenant isolation, typing, shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const VISITOR_WS: &str = "/v1/visitor/ws";
const TENANT_WS: &str = "/v1/tenant/ws";

async fn reply_http(c: &Client, conv: &str, text: &str) -> Resp {
    c.post(
        &format!("/v1/tenant/conversations/{conv}/messages"),
        &[("authorization", &format!("Bearer {SERVER_KEY}"))],
        &json!({"message": text}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_and_two_agents_see_everything() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut tab1, ready) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    assert_eq!(ready["conversationId"], s.conversation_id.as_str());
    assert_eq!(ready["visitorId"], s.visitor_id.as_str());
    let (mut tab2, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut ann, ready) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    assert_eq!(ready["tenantId"], "acme");
    assert_eq!(ready["agent"]["id"], "ann");
    assert_eq!(ready["recovered"], true);
    let (mut bob, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("bob"), None).await;

    // Visitor sends over the socket: ack to the sender, message:new everywhere.
    tab1.send_json(
        &json!({"type": "message", "message": "hello from tab 1", "clientMessageId": "m1"}),
    )
    .await;
    // The broadcast is published at commit, the ack right after: either may come first.
    let mut seen = Vec::new();
    let ack = loop {
        let f = tab1.next_of(&["ack", "message:new"]).await;
        if f["type"] == "ack" {
            break f;
        }
        seen.push(f);
    };
    let own = if seen.is_empty() {
        tab1.next_of(&["message:new"]).await
    } else {
        seen.remove(0)
    };
    assert_eq!(ack["clientMessageId"], "m1");
    assert_eq!(ack["duplicate"], false);
    let id = ack["messageId"].as_str().unwrap().to_owned();
    assert_eq!(
        own["data"]["id"],
        id.as_str(),
        "the sender's own tab gets message:new too"
    );
    let m = tab2.next_of(&["message:new"]).await;
    assert_eq!(m["data"]["body"], "hello from tab 1");
    assert_eq!(m["data"]["id"], id.as_str());
    for ws in [&mut ann, &mut bob] {
        let m = ws.next_of(&["message:new"]).await;
        assert_eq!(m["data"]["body"], "hello from tab 1");
        assert!(
            m["offset"].as_str().is_some(),
            "tenant events carry an offset"
        );
    }
    // The same clientMessageId again: a duplicate ack, nothing new stored.
    tab1.send_json(&json!({"type": "message", "message": "again", "clientMessageId": "m1"}))
        .await;
    let dup = tab1.next_of(&["ack"]).await;
    assert_eq!(
        (dup["duplicate"].as_bool(), dup["messageId"].as_str()),
        (Some(true), Some(id.as_str()))
    );

    // An agent replies over the socket.
    ann.send_json(&json!({"type": "reply", "conversationId": s.conversation_id, "message": "hi, Ann here", "clientMessageId": "r1"})).await;
    let ack = ann.next_of(&["ack"]).await;
    assert_eq!(ack["clientMessageId"], "r1");
    for ws in [&mut tab1, &mut tab2] {
        let m = ws.next_of(&["message:new"]).await;
        // The auto-reply came first (first visitor message); skip to Ann's.
        let m = if m["data"]["author"]["kind"] == "bot" {
            ws.next_of(&["message:new"]).await
        } else {
            m
        };
        assert_eq!(m["data"]["body"], "hi, Ann here");
        assert_eq!(m["data"]["author"]["kind"], "agent");
    }
    // Socket-sent messages are in the HTTP history, HTTP-sent ones arrive on sockets.
    let bodies: Vec<Value> = c
        .history(&s)
        .await
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert!(bodies.contains(&json!("hello from tab 1")) && bodies.contains(&json!("hi, Ann here")));
    assert_eq!(c.send(&s, "sent over HTTP", None).await.status, 201);
    let m = tab2.next_of(&["message:new"]).await;
    assert_eq!(m["data"]["body"], "sent over HTTP");
    let m = bob.next_of(&["message:new"]).await;
    let m = if m["data"]["body"] == "sent over HTTP" {
        m
    } else {
        bob.next_of(&["message:new"]).await
    };
    let m = if m["data"]["body"] == "sent over HTTP" {
        m
    } else {
        bob.next_of(&["message:new"]).await
    };
    assert_eq!(m["data"]["body"], "sent over HTTP");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_close_reopen_and_ping() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut tab, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;

    tab.send_json(&json!({"type": "typing"})).await;
    let t = agent.next_of(&["typing"]).await;
    assert_eq!(t["data"]["conversationId"], s.conversation_id.as_str());
    assert_eq!(t["data"]["author"]["kind"], "visitor");
    assert!(t.get("offset").is_none(), "typing carries no offset");

    agent
        .send_json(&json!({"type": "typing", "conversationId": s.conversation_id}))
        .await;
    let t = tab.next_of(&["typing"]).await;
    assert_eq!(t["data"]["author"]["id"], "ann");

    agent
        .send_json(&json!({"type": "close", "conversationId": s.conversation_id}))
        .await;
    let u = tab.next_of(&["conversation:updated"]).await;
    assert_eq!(u["data"]["status"], "closed");
    let u = agent.next_of(&["conversation:updated"]).await;
    assert_eq!(u["data"]["status"], "closed");
    // The visitor writing reopens it.
    tab.send_json(&json!({"type": "message", "message": "still there?"}))
        .await;
    let u = tab.next_of(&["conversation:updated"]).await;
    assert_eq!(u["data"]["status"], "open");
    // It was the conversation's first message: the automatic reply follows (stored after
    // the answer), and must be in before the history is counted below.
    loop {
        let m = tab.next_of(&["message:new"]).await;
        if m["data"]["author"]["kind"] != "visitor" {
            break;
        }
    }

    for ws in [&mut tab, &mut agent] {
        ws.send_json(&json!({"type": "ping"})).await;
        ws.next_of(&["pong"]).await;
        // Garbage and unknown frames: an error, and the socket stays usable.
        ws.send_text("not json").await;
        assert_eq!(ws.next_of(&["error"]).await["code"], "invalid_frame");
        ws.send_json(&json!({"type": "dance"})).await;
        assert_eq!(ws.next_of(&["error"]).await["code"], "invalid_frame");
        ws.send_json(&json!({"type": "ping"})).await;
        ws.next_of(&["pong"]).await;
    }
    // Validation errors over the socket name the clientMessageId and store nothing.
    let before = c.history(&s).await.len();
    tab.send_json(&json!({"type": "message", "message": "   ", "clientMessageId": "empty"}))
        .await;
    let e = tab.next_of(&["error"]).await;
    assert_eq!(
        (e["code"].as_str(), e["clientMessageId"].as_str()),
        (Some("validation_failed"), Some("empty"))
    );
    assert_eq!(c.history(&s).await.len(), before);
    // So does a message of zero-width characters, on HTTP too.
    let r = c
        .send(&s, "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}", None)
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.json["error"]["field"], "message");
    assert_eq!(c.history(&s).await.len(), before);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes() {
    // Both tenants inherit the global allowlist, so no policy of the deployment allows evil.example.
    let gw = Gateway::start(&format!(
        "allowed_origins = [\"https://shop.example\"]\n{}",
        config_toml("")
    ))
    .await;
    let c = gw.client();
    let s = c.session(PK).await;

    // Bad and expired tokens: 4401.
    let mut ws = Ws::connect(gw.addr, VISITOR_WS).await;
    ws.send_json(&json!({"type": "auth", "token": "s1.nope.nope.nope"}))
        .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4401));
    let mut ws = Ws::connect(gw.addr, TENANT_WS).await;
    ws.send_json(&json!({"type": "auth", "token": agent_jwt("wrong-secret", "acme", "x")}))
        .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4401));
    // A visitor token on the tenant channel is not an agent token.
    let mut ws = Ws::connect(gw.addr, TENANT_WS).await;
    ws.send_json(&json!({"type": "auth", "token": s.token}))
        .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4401));
    // A malformed `after`: 4400.
    let mut ws = Ws::connect(gw.addr, VISITOR_WS).await;
    ws.send_json(&json!({"type": "auth", "token": s.token, "after": "yesterday"}))
        .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4400));
    // Binary frames: 1003.
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    ws.inner
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(1003));
    // Over 64 KiB: 1009.
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let huge = json!({"type": "message", "message": "x".repeat(70 * 1024)}).to_string();
    let _ = ws.inner.send(Message::Text(huge.into())).await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(1009));
    // No auth frame within 5 s: 4408.
    let mut ws = Ws::connect(gw.addr, VISITOR_WS).await;
    assert_eq!(ws.closed(Duration::from_secs(8)).await, Closed::Code(4408));

    // A disallowed Origin never gets upgraded: HTTP 403.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}{VISITOR_WS}", gw.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}{VISITOR_WS}", gw.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://shop.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_ok(),
        "an allowed origin upgrades"
    );

    // Shutdown: 1001 to every socket, one still waiting for its auth frame included (at
    // once: within 2 s, before that socket's 5 s auth deadline).
    let (mut v, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut a, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let mut unauthenticated = Ws::connect(gw.addr, VISITOR_WS).await;
    let shutdown = tokio::spawn(gw.shutdown());
    assert_eq!(v.closed(Duration::from_secs(10)).await, Closed::Code(1001));
    assert_eq!(a.closed(Duration::from_secs(10)).await, Closed::Code(1001));
    assert_eq!(
        unauthenticated.closed(Duration::from_secs(2)).await,
        Closed::Code(1001)
    );
    shutdown.await.unwrap();
}

/// Reads `message:new` frames until `n` distinct ids were seen or the socket is dropped
/// after `drop_after`; returns the ids in arrival order.
async fn read_visitor_ids(ws: &mut Ws, until: usize, ids: &mut Vec<u64>) {
    while ids.len() < until {
        let m = ws.next_of(&["message:new"]).await;
        ids.push(seq(m["data"]["id"].as_str().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_resume_mid_stream_loses_nothing() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, Some("0")).await;
    let sender = {
        let (c, conv) = (c.clone(), s.conversation_id.clone());
        tokio::spawn(async move {
            for i in 0..1000 {
                assert_eq!(reply_http(&c, &conv, &format!("m{i}")).await.status, 201);
            }
        })
    };
    let mut ids = Vec::new();
    read_visitor_ids(&mut ws, 300, &mut ids).await;
    drop(ws); // mid-stream, without a close handshake
    let after = ids.last().unwrap().to_string();
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, Some(&after)).await;
    read_visitor_ids(&mut ws, 1000, &mut ids).await;
    sender.await.unwrap();
    assert_eq!(
        ids,
        (1..=1000).collect::<Vec<u64>>(),
        "every message once, in order"
    );
    assert!(
        ws.next_json_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing more, no duplicates"
    );
    gw.shutdown().await;
}

/// Publishes `campaign:progress` events `{"i": i}` for each `i`, one after another.
async fn publish_progress(c: &Client, range: std::ops::Range<i64>) {
    for i in range {
        let r = c
            .post(
                "/v1/tenant/events",
                &[("authorization", &format!("Bearer {SERVER_KEY}"))],
                &json!({"type": "campaign:progress", "data": {"i": i}}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_resume_mid_stream_loses_nothing() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let jwt = acme_agent("ann");
    let (mut ws, _) = Ws::open(gw.addr, TENANT_WS, &jwt, Some("0")).await;
    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            publish_progress(&c, 0..1000).await;
        })
    };
    let mut seen: Vec<(u64, i64)> = Vec::new();
    async fn read(ws: &mut Ws, until: usize, seen: &mut Vec<(u64, i64)>) {
        while seen.len() < until {
            let e = ws.next_of(&["campaign:progress"]).await;
            seen.push((
                e["offset"].as_str().unwrap().parse().unwrap(),
                e["data"]["i"].as_i64().unwrap(),
            ));
        }
    }
    read(&mut ws, 250, &mut seen).await;
    drop(ws);
    let after = seen.last().unwrap().0.to_string();
    let (mut ws, ready) = Ws::open(gw.addr, TENANT_WS, &jwt, Some(&after)).await;
    assert_eq!(ready["recovered"], true);
    read(&mut ws, 1000, &mut seen).await;
    sender.await.unwrap();
    assert_eq!(
        seen.iter().map(|s| s.1).collect::<Vec<_>>(),
        (0..1000).collect::<Vec<i64>>()
    );
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "offsets are contiguous"
    );
    gw.shutdown().await;
}

/// `ws_write_delay_ms`: sockets hold frames that come in a burst and write them together;
/// over real sockets, every agent still gets every event, in order, with contiguous offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_sockets_deliver_every_event_in_order() {
    let gw = Gateway::start(&format!("ws_write_delay_ms = 20\n{}", config_toml(""))).await;
    let c = gw.client();
    let mut agents = Vec::new();
    for name in ["ann", "bob", "cid"] {
        agents.push(
            Ws::open(gw.addr, TENANT_WS, &acme_agent(name), Some("0"))
                .await
                .0,
        );
    }
    publish_progress(&c, 0..300).await;
    for ws in &mut agents {
        let mut last_offset = None;
        for i in 0..300 {
            let e = ws.next_of(&["campaign:progress"]).await;
            assert_eq!(e["data"]["i"], i);
            let offset: u64 = e["offset"].as_str().unwrap().parse().unwrap();
            if let Some(last) = last_offset {
                assert_eq!(offset, last + 1, "offsets are contiguous");
            }
            last_offset = Some(offset);
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_resume_beyond_retention_is_not_recovered() {
    let opts = confab_gateway::Options {
        retention: confab_store::Retention {
            min_events: 5,
            min_age_ms: 0,
        },
        maintenance_every: Duration::from_millis(50),
        ..Default::default()
    };
    let gw = Gateway::start_with(&config_toml(""), opts).await;
    let c = gw.client();
    for i in 0..30 {
        c.post(
            "/v1/tenant/events",
            &[("authorization", &format!("Bearer {SERVER_KEY}"))],
            &json!({"type": "campaign:progress", "data": {"i": i}}),
        )
        .await;
    }
    // Wait (bounded) for maintenance to prune: the HTTP stream says so.
    let jwt = acme_agent("ann");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get(
                "/v1/tenant/events?after=1",
                &[("authorization", &format!("Bearer {jwt}"))],
            )
            .await;
        if r.json["recovered"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ws, ready) = Ws::open(gw.addr, TENANT_WS, &jwt, Some("1")).await;
    assert_eq!(ready["recovered"], false);
    // What is retained is still replayed, ending with the newest.
    let mut last = 0;
    while last < 30 {
        let e = ws.next_of(&["campaign:progress"]).await;
        last = e["offset"].as_str().unwrap().parse().unwrap();
    }
    // A future offset (another deployment's) is not recovered either.
    let (_ws, ready) = Ws::open(gw.addr, TENANT_WS, &jwt, Some("999999")).await;
    assert_eq!(ready["recovered"], false);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_1013_and_resumes_without_loss() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut slow, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, Some("0")).await;
    let (mut healthy, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, Some("0")).await;
    // The healthy tab drains concurrently and must see everything.
    let big = "y".repeat(9000);
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            match healthy.next_json_within(Duration::from_secs(5)).await {
                Some(m) if m["type"] == "message:new" => {
                    ids.push(seq(m["data"]["id"].as_str().unwrap()))
                }
                Some(_) => {}
                None => return ids,
            }
        }
    });
    // `slow` never reads: fill its TCP buffers and its queue until the hub kicks it.
    let mut sent = 0u64;
    loop {
        for _ in 0..100 {
            assert_eq!(reply_http(&c, &s.conversation_id, &big).await.status, 201);
            sent += 1;
        }
        let m = c.get("/metrics", &[]).await.text;
        if m.lines()
            .any(|l| l.starts_with("confab_hub_kicks_total") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(sent < 20_000, "never kicked");
    }
    // The slow tab now reads what it had buffered, then the 1013.
    let mut ids = Vec::new();
    let code = loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut slow.inner),
        )
        .await
        .expect("frames or close")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message:new" {
                    ids.push(seq(v["data"]["id"].as_str().unwrap()));
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(
        code,
        Some(1013),
        "the slow consumer is told to come back later"
    );
    assert!(ids.len() < sent as usize);
    // It resumes from the last id it saw and gets exactly the rest.
    let after = ids.last().copied().unwrap_or(0).to_string();
    let (mut again, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, Some(&after)).await;
    while (ids.len() as u64) < sent {
        let m = again.next_of(&["message:new"]).await;
        ids.push(seq(m["data"]["id"].as_str().unwrap()));
    }
    assert_eq!(ids, (1..=sent).collect::<Vec<u64>>());
    let healthy_ids = reader.await.unwrap();
    assert_eq!(
        healthy_ids,
        (1..=sent).collect::<Vec<u64>>(),
        "the other subscriber was unaffected"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let (mut acme, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let (mut globex, ready) = Ws::open(
        gw.addr,
        TENANT_WS,
        &agent_jwt(AGENT_SECRET2, "globex", "gil"),
        None,
    )
    .await;
    assert_eq!(ready["tenantId"], "globex");
    let s = c.session(PK).await;
    c.send(&s, "acme secret", None).await;
    let s2 = c.session(PK2).await;
    c.send(&s2, "globex hello", None).await;
    let new = globex.next_of(&["conversation:new"]).await;
    assert_eq!(new["data"]["tenantId"], "globex");
    let m = globex.next_of(&["message:new"]).await;
    assert_eq!(m["data"]["body"], "globex hello");
    // Acme sees only its own.
    acme.next_of(&["conversation:new"]).await;
    assert_eq!(
        acme.next_of(&["message:new"]).await["data"]["body"],
        "acme secret"
    );
    // A globex agent cannot reply into an acme conversation, nor make it typing.
    globex.send_json(&json!({"type": "reply", "conversationId": s.conversation_id, "message": "hi", "clientMessageId": "x"})).await;
    assert_eq!(
        globex.next_of(&["error"]).await["code"],
        "conversation_not_found"
    );
    assert!(c.history(&s).await.iter().all(|m| m["body"] != "hi"));
    while let Some(v) = globex.next_json_within(Duration::from_millis(300)).await {
        assert_ne!(v["data"]["tenantId"], "acme", "{v}");
        assert_ne!(v["data"]["body"], "acme secret", "{v}");
    }
    gw.shutdown().await;
}
