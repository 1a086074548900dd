//! The conformance suite and the fault tests on the Redis backend, each test against its
//! own `redis-server` (skipped when none is installed, unless `CONFAB_REQUIRE_REDIS` is set).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_protocol::model::{Author, AuthorKind, Contact, Direction, Handler, Status};
use confab_protocol::time::now_ms;
use confab_store::conformance::{run_all, Factory};
use confab_store::domain::to_json;
use confab_store::ratelimit::{Decision, LimitSpec, MemoryRateLimiter, RateLimiter};
use confab_store::redis::testing::{RedisServer, TcpProxy};
use confab_store::redis::RedisNode;
use confab_store::{
    Channel, Clock, Cursor, EventSink, LimitedAppend, NewConversation, NewMessage, ProfileUpdate,
    Published, Retention, StoreError,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_conforms() {
    let Some(redis) = RedisServer::start_or_skip("redis_backend_conforms").await else {
        return;
    };
    let redis = Arc::new(redis);
    // A database per backend: each check starts from an empty store, as with SQLite.
    let next_db = Arc::new(AtomicU32::new(1));
    let factory: Factory = Arc::new(move |retention: Retention| {
        let url = redis.url_db(next_db.fetch_add(1, Ordering::SeqCst));
        Box::pin(async move { confab_store::open(&url, retention).await.unwrap() })
    });
    run_all(factory).await;
}

fn tenant() -> String {
    format!("t{}", rand::random::<u64>())
}

fn new_conv(tenant: &str) -> NewConversation {
    NewConversation {
        tenant: tenant.to_owned(),
        token_hash: format!("h{}", rand::random::<u64>()),
        customer_id: None,
        locale: Some("fr-CA".into()),
        contact: Contact {
            name: Some("Zoë \"Z\" </script>".into()),
            email: None,
        },
        variables: json!({"plan": "pro", "status": "open", "n": 1.5, "path": "a/b"})
            .as_object()
            .cloned()
            .unwrap(),
        visitor_context: json!({"pageUrl": "https://x.test/a?b=c&d=é"})
            .as_object()
            .cloned()
            .unwrap(),
        assistant_id: None,
        handler: Handler::Human,
    }
}

fn message(tenant: &str, conv: &str, body: &str, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        tenant: tenant.to_owned(),
        conversation_id: conv.to_owned(),
        direction: Direction::Inbound,
        author: Author {
            kind: AuthorKind::Visitor,
            id: "v_1".into(),
            name: None,
        },
        body: body.to_owned(),
        client_message_id: cmid.map(str::to_owned),
        meta: Some(json!({"pageUrl": "https://x.test/é/1", "big": 12345678901234567u64})),
        intent: Some("billing".into()),
        handler: None,
        attachments: Vec::new(),
    }
}

/// The bytes the scripts splice together are exactly serde's, everywhere they end up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_json_is_exactly_serdes() {
    let Some(redis) = RedisServer::start_or_skip("stored_json_is_exactly_serdes").await else {
        return;
    };
    let b = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let read = |id: String| {
        let (store, t) = (b.store.clone(), t.clone());
        async move { to_json(&store.conversation(&t, &id).await.unwrap().unwrap()) }
    };
    assert_eq!(read(conv.id.clone()).await, to_json(&conv));
    let a = b
        .store
        .append_message(message(
            &t,
            &conv.id,
            "héllo \"/\" \u{1F600}\n\\",
            Some("c/1"),
        ))
        .await
        .unwrap()
        .unwrap();
    let closed = b
        .store
        .set_status(&t, &conv.id, Status::Closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read(conv.id.clone()).await, to_json(&closed));
    let reopening = b
        .store
        .append_message(message(&t, &conv.id, "again", None))
        .await
        .unwrap()
        .unwrap();
    let after_reopen = read(conv.id.clone()).await;
    let update = ProfileUpdate {
        locale: Some("de".into()),
        ..Default::default()
    };
    let profiled = b
        .store
        .update_profile(&t, &conv.id, update)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read(conv.id.clone()).await, to_json(&profiled));
    b.store
        .append_event(&t, "conversation:qualified", json!({}), Some(&conv.id))
        .await
        .unwrap()
        .unwrap();
    let qualified = read(conv.id.clone()).await;

    let page = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 10)
        .await
        .unwrap();
    let stored: Vec<String> = page.messages.iter().map(|m| m.json.to_string()).collect();
    assert_eq!(
        stored,
        vec![to_json(&a.message), to_json(&reopening.message)]
    );
    let dup = b
        .store
        .append_message(message(&t, &conv.id, "other", Some("c/1")))
        .await
        .unwrap()
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(to_json(&dup.message), to_json(&a.message));

    let events = b.store.events(&t, 0, 100).await.unwrap().events;
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.data.as_str()))
        .collect();
    let expected_json = [
        to_json(&conv),
        to_json(&a.message),
        to_json(&closed),
        to_json(&reopening.message),
        after_reopen.clone(),
        to_json(&profiled),
        qualified,
    ];
    let expected: Vec<(&str, &str)> = [
        "conversation:new",
        "message:new",
        "conversation:updated",
        "message:new",
        "conversation:updated",
        "conversation:updated",
        "conversation:qualified",
    ]
    .into_iter()
    .zip(expected_json.iter().map(String::as_str))
    .collect();
    assert_eq!(got, expected);
    assert_eq!(
        events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
}

/// Two `open`s are two nodes: they draw from one allowance, with `gcra`'s numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_across_nodes() {
    let Some(redis) = RedisServer::start_or_skip("rate_limits_are_shared_across_nodes").await
    else {
        return;
    };
    let n1 = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let n2 = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let nodes = [n1.limiter.clone(), n2.limiter.clone()];
    let hour = 3_600_000;
    let now = now_ms();
    for i in 0..10 {
        assert_eq!(
            nodes[i % 2]
                .check("ip:1.2.3.4", 10, hour, now)
                .await
                .unwrap(),
            Decision::Allowed,
            "request {i}"
        );
    }
    for node in &nodes {
        assert_eq!(
            node.check("ip:1.2.3.4", 10, hour, now).await.unwrap(),
            Decision::Limited {
                retry_after_ms: 360_000,
                refused: 0
            }
        );
    }
    assert_eq!(
        nodes[1]
            .check("ip:1.2.3.4", 10, hour, now + 360_000)
            .await
            .unwrap(),
        Decision::Allowed
    );
    assert!(matches!(
        nodes[0].check("ip:1.2.3.4", 0, hour, now).await.unwrap(),
        Decision::Limited { .. }
    ));

    // The same decisions as the in-process limiter, step by step.
    let memory = MemoryRateLimiter::default();
    let mut t = now_ms();
    for step in 0..400 {
        t += rand::random_range(0..40);
        let (limit, window) = if step % 3 == 0 { (3, 500) } else { (7, 1_000) };
        let key = format!("walk:{limit}");
        let want = memory.check(&key, limit, window, t).await.unwrap();
        let got = nodes[step % 2].check(&key, limit, window, t).await.unwrap();
        assert_eq!(got, want, "step {step} at {t}");
    }

    // Several limits at once: all or nothing, and the refusal names the limit that made it.
    let (a, b) = (
        LimitSpec {
            key: "multi:a",
            limit: 5,
            window_ms: 60_000,
        },
        LimitSpec {
            key: "multi:b",
            limit: 1,
            window_ms: 60_000,
        },
    );
    let t = now_ms();
    assert_eq!(
        nodes[0].check_all(&[a, b], t).await.unwrap(),
        Decision::Allowed
    );
    assert!(matches!(
        nodes[1].check_all(&[a, b], t).await.unwrap(),
        Decision::Limited { refused: 1, .. }
    ));
    assert!(matches!(
        nodes[1].check_all(&[b, a], t).await.unwrap(),
        Decision::Limited { refused: 0, .. }
    ));

    // A key expires at its TAT: idle keys cost nothing.
    nodes[0].check("short", 2, 300, now_ms()).await.unwrap();
    assert_eq!(
        redis.command(&["EXISTS", "confab:rl:short"]).await.unwrap(),
        "1"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while redis.command(&["EXISTS", "confab:rl:short"]).await.unwrap() != "0" {
        assert!(Instant::now() < deadline, "the limiter key never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A visitor message's limits, charged in its append script (one round trip), make the
/// same decisions as the in-process limiter, step by step, from two nodes; and draw from
/// the allowance the limiter's own calls use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_charges_limits_with_gcra_numbers() {
    let Some(redis) = RedisServer::start_or_skip("append_charges_limits_with_gcra_numbers").await
    else {
        return;
    };
    let n1 = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let n2 = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let nodes = [&n1, &n2];
    let t = tenant();
    let conv = n1.store.start_conversation(new_conv(&t)).await.unwrap();
    let memory = MemoryRateLimiter::default();
    let (ka, kb) = (format!("msg-ip:{t}:a"), format!("msg-vis:{t}:b"));
    let mut now = now_ms();
    let mut stored = 0;
    for step in 0..300 {
        now += rand::random_range(0..40);
        let specs = [
            LimitSpec {
                key: &ka,
                limit: 7,
                window_ms: 1_000,
            },
            LimitSpec {
                key: &kb,
                limit: 3,
                window_ms: 500,
            },
        ];
        // Every third step also takes from `a` through the limiter itself.
        if step % 3 == 0 {
            let want = memory.check_all(&specs[..1], now).await.unwrap();
            let got = nodes[step % 2]
                .limiter
                .check_all(&specs[..1], now)
                .await
                .unwrap();
            assert_eq!(got, want, "limiter step {step} at {now}");
        }
        let want = memory.check_all(&specs, now).await.unwrap();
        let node = nodes[(step + 1) % 2];
        let m = message(&t, &conv.id, &format!("m{step}"), Some(&format!("c{step}")));
        let got = match node
            .store
            .append_message_limited(m, &specs, now, node.limiter.as_ref())
            .await
            .unwrap()
        {
            LimitedAppend::Done(Some(a)) => {
                assert!(!a.duplicate);
                stored += 1;
                Decision::Allowed
            }
            LimitedAppend::Done(None) => panic!("the conversation exists"),
            LimitedAppend::Limited {
                retry_after_ms,
                refused,
            } => Decision::Limited {
                retry_after_ms,
                refused,
            },
        };
        assert_eq!(got, want, "append step {step} at {now}");
    }
    let page = n1
        .store
        .messages(&t, &conv.id, Cursor::Start, 1000)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), stored, "exactly the allowed ones");
    assert!(
        stored > 10 && stored < 300,
        "both outcomes were seen: {stored}"
    );
    // On a single Redis the keys are the limiter's own.
    assert_eq!(
        redis
            .command(&["EXISTS", &format!("confab:rl:{ka}")])
            .await
            .unwrap(),
        "1"
    );
}

/// Hands every publication to a channel the test reads.
struct ChanSink(mpsc::UnboundedSender<Published>);

impl EventSink for ChanSink {
    fn publish(&self, event: Published) {
        let _ = self.0.send(event);
    }
}

/// Samples `healthy()` until dropped; returns the distinct states seen, in order.
fn watch_health(
    node: &RedisNode,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<parking_lot::Mutex<Vec<bool>>>,
) {
    use confab_store::Broker;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (broker, s) = (node.broker.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let h = broker.healthy();
            {
                let mut seen = s.lock();
                if seen.last() != Some(&h) {
                    seen.push(h);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (task, seen)
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the hub does for one conversation subscriber: deliver in order, drop what was
/// already delivered, and on `Resync` re-read the log after the last delivered id.
struct Follower {
    last: u64,
    delivered: Vec<u64>,
    resyncs: usize,
    /// Live messages beyond `last + 1` before any `Resync` (a loss nobody announced).
    unannounced_gaps: usize,
}

impl Follower {
    fn new() -> Follower {
        Follower {
            last: 0,
            delivered: Vec::new(),
            resyncs: 0,
            unannounced_gaps: 0,
        }
    }

    async fn handle(&mut self, node: &RedisNode, tenant: &str, conv: &str, event: Published) {
        use confab_store::Store;
        match event {
            Published::Message { seq, .. } if seq == self.last + 1 => {
                self.delivered.push(seq);
                self.last = seq;
            }
            Published::Message { seq, .. } if seq > self.last + 1 => self.unannounced_gaps += 1,
            Published::Resync => {
                self.resyncs += 1;
                loop {
                    let page = node
                        .store
                        .messages(tenant, conv, Cursor::After(self.last), 50)
                        .await
                        .unwrap();
                    for m in &page.messages {
                        self.delivered.push(m.seq);
                        self.last = m.seq;
                    }
                    if !page.has_more {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Pub/sub connections killed mid-stream: the sink gets a Resync, the log fills the gap,
/// every message is delivered once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_kill_mid_stream_resyncs_without_loss() {
    use confab_store::Broker;
    let Some(redis) =
        RedisServer::start_or_skip("pubsub_kill_mid_stream_resyncs_without_loss").await
    else {
        return;
    };
    let redis = Arc::new(redis);
    let reader = RedisNode::connect(&redis.url(), Retention::default(), Clock::system())
        .await
        .unwrap();
    let writer = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    reader.broker.set_sink(Arc::new(ChanSink(tx)));
    let t = tenant();
    let conv = writer.store.start_conversation(new_conv(&t)).await.unwrap();
    let channel = Channel::Conversation {
        tenant: t.as_str().into(),
        conversation_id: conv.id.as_str().into(),
    };
    reader.broker.subscribe(&channel);
    reader.broker.subscribed(&channel).await.unwrap();
    let sessions_before = reader.broker.sessions();
    let (health_task, health) = watch_health(&reader);

    let (w, r, tt, cid) = (writer.clone(), redis.clone(), t.clone(), conv.id.clone());
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 1..=200 {
            tick.tick().await;
            w.store
                .append_message(message(&tt, &cid, &format!("m{i}"), Some(&format!("k{i}"))))
                .await
                .unwrap()
                .unwrap();
            if i == 70 {
                let killed = r
                    .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
                    .await
                    .unwrap();
                assert_ne!(killed, "0", "no pub/sub connection was killed");
            }
        }
    });

    let mut f = Follower::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.last < 200 {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("delivery stalled")
            .unwrap();
        f.handle(&reader, &t, &conv.id, event).await;
    }
    producer.await.unwrap();
    assert_eq!(
        f.delivered,
        (1..=200).collect::<Vec<_>>(),
        "each message once, in order"
    );
    assert!(f.resyncs >= 1, "the reconnection was announced");
    assert_eq!(f.unannounced_gaps, 0, "no loss went unannounced");
    assert!(
        reader.broker.sessions() > sessions_before,
        "the subscription was re-established"
    );
    wait_for("healthy again", Duration::from_secs(5), || {
        reader.broker.healthy()
    })
    .await;
    health_task.abort();
    let seen = health.lock().clone();
    assert!(
        seen.windows(2).any(|w| w == [false, true]),
        "unhealthy, then healthy: {seen:?}"
    );
}

/// A connection that goes silent (no reset, no error): the canary notices, the node says
/// it is unhealthy, store calls fail fast, and everything recovers when traffic flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_detects_a_silent_connection() {
    use confab_store::{Broker, Store};
    let Some(redis) = RedisServer::start_or_skip("canary_detects_a_silent_connection").await else {
        return;
    };
    let proxy = TcpProxy::start(redis.addr()).await.unwrap();
    let reader = RedisNode::connect(&proxy.url(), Retention::default(), Clock::system())
        .await
        .unwrap();
    let writer = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    reader.broker.set_sink(Arc::new(ChanSink(tx)));
    let t = tenant();
    let channel = Channel::Tenant {
        tenant: t.as_str().into(),
    };
    reader.broker.subscribe(&channel);
    reader.broker.subscribed(&channel).await.unwrap();
    writer
        .store
        .append_event(&t, "campaign:progress", json!({"i": 0}), None)
        .await
        .unwrap()
        .unwrap();
    wait_for(
        "the first event",
        Duration::from_secs(5),
        || matches!(rx.try_recv(), Ok(Published::Event { ref event, .. }) if event.offset == 1),
    )
    .await;
    assert!(reader.broker.healthy());

    proxy.freeze();
    let started = Instant::now();
    let err = reader.store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "failed fast: {:?}",
        started.elapsed()
    );
    for i in 1..=5 {
        writer
            .store
            .append_event(&t, "campaign:progress", json!({"i": i}), None)
            .await
            .unwrap()
            .unwrap();
    }
    wait_for(
        "the canary to mark the node unhealthy",
        Duration::from_secs(10),
        || !reader.broker.healthy(),
    )
    .await;
    let unhealthy_after = started.elapsed();
    assert!(
        unhealthy_after < Duration::from_secs(8),
        "{unhealthy_after:?}"
    );

    proxy.thaw();
    wait_for("healthy again", Duration::from_secs(10), || {
        reader.broker.healthy()
    })
    .await;
    // The Resync came, and the log has what pub/sub missed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no Resync")
            .unwrap()
        {
            Published::Resync => break,
            _ => continue,
        }
    }
    let page = reader.store.events(&t, 1, 100).await.unwrap();
    assert!(page.recovered);
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    // And live delivery works again.
    writer
        .store
        .append_event(&t, "campaign:progress", json!({"i": 6}), None)
        .await
        .unwrap()
        .unwrap();
    wait_for(
        "live delivery after recovery",
        Duration::from_secs(5),
        || matches!(rx.try_recv(), Ok(Published::Event { ref event, .. }) if event.offset == 7),
    )
    .await;
}

/// Redis stopped: every call fails fast with `Unavailable`; Redis back: everything works
/// again by itself, subscriptions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_recover() {
    use confab_store::{Broker, Store};
    let Some(mut redis) =
        RedisServer::start_or_skip("calls_fail_fast_while_redis_is_down_and_recover").await
    else {
        return;
    };
    let node = RedisNode::connect(&redis.url(), Retention::default(), Clock::system())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.broker.set_sink(Arc::new(ChanSink(tx)));
    let t = tenant();
    let conv = node.store.start_conversation(new_conv(&t)).await.unwrap();
    let channel = Channel::Tenant {
        tenant: t.as_str().into(),
    };
    node.broker.subscribe(&channel);
    node.broker.subscribed(&channel).await.unwrap();

    redis.kill();
    let fast = Duration::from_millis(3500);
    for round in 0..3 {
        let started = Instant::now();
        let results = [
            node.store.ping().await.map(|_| ()),
            node.store
                .append_message(message(&t, &conv.id, "x", None))
                .await
                .map(|_| ()),
            node.store.events(&t, 0, 10).await.map(|_| ()),
            node.store.conversation(&t, &conv.id).await.map(|_| ()),
            node.store
                .claim_nonce("n", now_ms() + 1000)
                .await
                .map(|_| ()),
            node.limiter.check("k", 1, 1000, now_ms()).await.map(|_| ()),
        ];
        for (i, r) in results.iter().enumerate() {
            assert!(
                matches!(r, Err(StoreError::Unavailable(_))),
                "round {round}, call {i}: {r:?}"
            );
        }
        eprintln!(
            "redis down, round {round}: 6 calls failed in {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < fast * 2,
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let r = node.store.ping().await;
    assert!(
        r.is_err() && started.elapsed() < fast,
        "{r:?} after {:?}",
        started.elapsed()
    );
    wait_for("unhealthy", Duration::from_secs(10), || {
        !node.broker.healthy()
    })
    .await;
    while rx.try_recv().is_ok() {}

    redis.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("healthy again", Duration::from_secs(10), || {
        node.broker.healthy()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no Resync after the restart")
            .unwrap()
        {
            Published::Resync => break,
            _ => continue,
        }
    }
    // The restarted server is empty (nothing persisted): start over, scripts reload.
    let conv = node.store.start_conversation(new_conv(&t)).await.unwrap();
    let a = node
        .store
        .append_message(message(&t, &conv.id, "back", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.message.id, confab_store::message_id(&conv.id, 1));
    wait_for("live events after the restart", Duration::from_secs(5), || {
        matches!(rx.try_recv(), Ok(Published::Event { ref event, .. }) if event.kind == "message:new")
    })
    .await;
    assert_eq!(
        node.limiter.check("k", 1, 1000, now_ms()).await.unwrap(),
        Decision::Allowed
    );
}

/// Not a check: how many appends per second one node commits (run with `--ignored
/// --nocapture`; build with `--release` for meaningful figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_throughput() {
    let Some(redis) = RedisServer::start_or_skip("append_throughput").await else {
        return;
    };
    let b = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let t = tenant();
    let mut convs = Vec::new();
    for _ in 0..64 {
        convs.push(b.store.start_conversation(new_conv(&t)).await.unwrap().id);
    }
    let started = Instant::now();
    let per_task = 300;
    let tasks: Vec<_> = convs
        .into_iter()
        .map(|c| {
            let (store, t) = (b.store.clone(), t.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    let m = message(&t, &c, &format!("message {i}"), Some(&format!("k{i}")));
                    store.append_message(m).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    let n = tasks.len() * per_task;
    for task in tasks {
        task.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{n} appends in {secs:.2} s: {:.0}/s", n as f64 / secs);
}

/// A conversation stored before the handler and read receipts existed (pieces `t1`…`t5`
/// only, `t5 = "}"`) reads with their defaults and is upgraded in place by the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_of_the_old_layout_are_upgraded() {
    let Some(redis) =
        RedisServer::start_or_skip("conversations_of_the_old_layout_are_upgraded").await
    else {
        return;
    };
    let b = confab_store::open(&redis.url(), Retention::default())
        .await
        .unwrap();
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let key = format!("confab:{{t:{t}}}:conv:{}", conv.id);
    // What the previous release stored: the tail after `lastMessage` was just `}`.
    redis.command(&["HSET", &key, "t5", "}"]).await.unwrap();
    let gone = ["t6", "t7", "t8", "t9", "h", "vr", "ar", "ur", "vrs", "ars"];
    let mut hdel = vec!["HDEL", key.as_str()];
    hdel.extend(gone);
    redis.command(&hdel).await.unwrap();
    let old: serde_json::Value = serde_json::from_str(&to_json(&conv)).unwrap();
    let read = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(
        read, conv,
        "an old hash reads with the new fields' defaults"
    );
    assert_eq!(serde_json::to_value(&read).unwrap(), old);

    let m = b
        .store
        .append_message(message(&t, &conv.id, "after the upgrade", None))
        .await
        .unwrap()
        .unwrap();
    let after = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(after.unread_by_agent, 1);
    assert_eq!(after.last_message, Some(m.message.clone()));
    assert_eq!(
        redis.command(&["HGET", &key, "t9"]).await.unwrap(),
        "}",
        "the hash now has the new layout"
    );
    let seq = confab_store::seq_of_message_id(&m.message.id).unwrap();
    let marked = b
        .store
        .mark_read(&t, &conv.id, confab_protocol::model::Reader::Agent, seq)
        .await
        .unwrap();
    let Some(confab_store::ReadMark::Moved(c)) = marked else {
        panic!("the cursor moves on an upgraded hash: {marked:?}");
    };
    assert_eq!(c.unread_by_agent, 0);
    assert_eq!(
        b.store.conversation(&t, &conv.id).await.unwrap().unwrap(),
        c
    );
}
