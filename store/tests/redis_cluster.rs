//! The Redis backend on a real Redis Cluster (6 `redis-server` processes on loopback, 3
//! masters with a replica each; skipped when Redis is not installed unless
//! `CONFAB_REQUIRE_REDIS` is set). One cluster per test (nextest runs each test in its own
//! process); tenants are picked by hash slot so that they land on given masters.

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::model::{Author, AuthorKind, Contact, Direction, Handler};
use confab_store::conformance::{run_all, Factory};
use confab_store::redis::testing::RedisCluster;
use confab_store::redis::{slot, RedisNode};
use confab_store::{
    Broker, Channel, Clock, Cursor, EventSink, NewConversation, NewMessage, Published, Retention,
    Store, StoreError,
};
use serde_json::Map;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_backend_conforms() {
    let Some(cluster) = RedisCluster::start_or_skip("cluster_backend_conforms").await else {
        return;
    };
    let url = cluster.url();
    let node = RedisNode::connect(&url, Retention::default(), Clock::system())
        .await
        .unwrap();
    assert_eq!(
        node.store.replica_acks(),
        1,
        "every shard has a replica: acks wait for one by default"
    );
    // Each check uses its own random tenants, so backends share the cluster.
    let factory: Factory = Arc::new(move |retention: Retention| {
        let url = url.clone();
        Box::pin(async move { confab_store::open(&url, retention).await.unwrap() })
    });
    run_all(factory).await;
}

/// A tenant id whose slot the master on `port` serves.
async fn tenant_on(cluster: &RedisCluster, port: u16) -> String {
    loop {
        let t = format!("t{}", rand::random::<u64>());
        if cluster
            .master_of(slot(&format!("{{t:{t}}}")))
            .await
            .unwrap()
            == port
        {
            return t;
        }
    }
}

fn new_conv(tenant: &str) -> NewConversation {
    NewConversation {
        tenant: tenant.to_owned(),
        token_hash: format!("h{}", rand::random::<u64>()),
        customer_id: None,
        locale: None,
        contact: Contact::default(),
        variables: Map::new(),
        visitor_context: Map::new(),
        assistant_id: None,
        handler: Handler::Human,
    }
}

fn message(tenant: &str, conv: &str, body: &str, cmid: &str) -> NewMessage {
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
        client_message_id: Some(cmid.to_owned()),
        meta: None,
        intent: None,
        handler: None,
        attachments: Vec::new(),
    }
}

struct ChanSink(mpsc::UnboundedSender<Published>);

impl EventSink for ChanSink {
    fn publish(&self, event: Published) {
        let _ = self.0.send(event);
    }
}

/// Tenants on the three masters: each master carries only its tenants' sharded channels,
/// and publications reach a node subscribed through the shard that owns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_spreads_over_the_masters() {
    let Some(cluster) =
        RedisCluster::start_or_skip("sharded_pubsub_spreads_over_the_masters").await
    else {
        return;
    };
    let masters = cluster.masters().await.unwrap();
    assert_eq!(masters.len(), 3);
    let reader = RedisNode::connect(&cluster.url(), Retention::default(), Clock::system())
        .await
        .unwrap();
    let writer = RedisNode::connect(&cluster.url(), Retention::default(), Clock::system())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    reader.broker.set_sink(Arc::new(ChanSink(tx)));
    let mut tenants = Vec::new();
    for m in &masters {
        let t = tenant_on(&cluster, m.port).await;
        let ch = Channel::Tenant {
            tenant: t.as_str().into(),
        };
        reader.broker.subscribe(&ch);
        reader.broker.subscribed(&ch).await.unwrap();
        tenants.push((m.port, t));
    }
    for (port, t) in &tenants {
        let count = shard_channels(*port).await;
        assert!(
            count.iter().any(|c| c.contains(&format!("{{t:{t}}}"))),
            "master {port} carries its tenant's channel: {count:?}"
        );
        for (other, t2) in &tenants {
            if other != port {
                assert!(
                    !count.iter().any(|c| c.contains(&format!("{{t:{t2}}}"))),
                    "master {port} carries no other shard's tenant channel"
                );
            }
        }
    }
    assert!(reader.broker.healthy());
    for (_, t) in &tenants {
        let conv = writer.store.start_conversation(new_conv(t)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Published::Event { tenant, event }))
                    if &*tenant == t && event.kind == "conversation:new" =>
                {
                    assert!(event.data.contains(&conv.id));
                    break;
                }
                Ok(Some(_)) => continue,
                other => panic!("no event for tenant {t}: {other:?}"),
            }
        }
    }
}

/// `PUBSUB SHARDCHANNELS` of one node, via `redis-cli` (the array reply).
async fn shard_channels(port: u16) -> Vec<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PUBSUB", "SHARDCHANNELS"])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// SIGKILL the master of a busy tenant while messages keep coming (each retried with the
/// same clientMessageId while the store says `Unavailable`): after the failover every
/// acknowledged message is in the history exactly once, in order, and a subscribed node
/// delivered each once, in order (live or by the resync after the shard came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_no_acknowledged_message() {
    let Some(mut cluster) =
        RedisCluster::start_or_skip("a_master_failover_loses_no_acknowledged_message").await
    else {
        return;
    };
    let masters = cluster.masters().await.unwrap();
    let victim = masters[0].port;
    let t = tenant_on(&cluster, victim).await;
    let writer = Arc::new(
        RedisNode::connect(&cluster.url(), Retention::default(), Clock::system())
            .await
            .unwrap(),
    );
    let reader = RedisNode::connect(&cluster.url(), Retention::default(), Clock::system())
        .await
        .unwrap();
    assert_eq!(writer.store.replica_acks(), 1);
    let conv = writer.store.start_conversation(new_conv(&t)).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    reader.broker.set_sink(Arc::new(ChanSink(tx)));
    let channel = Channel::Conversation {
        tenant: t.as_str().into(),
        conversation_id: conv.id.as_str().into(),
    };
    reader.broker.subscribe(&channel);
    reader.broker.subscribed(&channel).await.unwrap();

    const N: usize = 120;
    let (w, tt, cid) = (writer.clone(), t.clone(), conv.id.clone());
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::spawn(async move {
        let mut kill_tx = Some(kill_tx);
        let mut acked = Vec::new();
        let mut refusals = 0;
        for i in 1..=N {
            if i == 30 {
                let _ = kill_tx.take().unwrap().send(());
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let m = message(&tt, &cid, &format!("m{i}"), &format!("k{i}"));
                match w.store.append_message(m).await {
                    Ok(Some(a)) => {
                        acked.push((a.message.id.clone(), format!("m{i}")));
                        break;
                    }
                    Err(StoreError::Unavailable(e)) => {
                        refusals += 1;
                        assert!(Instant::now() < deadline, "the store never came back: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("append {i}: {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (acked, refusals)
    });
    kill_rx.await.unwrap();
    cluster.kill(victim);
    let killed_at = Instant::now();
    // Once a replica took over, the old master comes back empty as its replica: until
    // then the new master has no replica, and `WAIT 1` refuses every ack (503).
    let cluster = tokio::spawn(async move {
        cluster.wait_serving(Duration::from_secs(20)).await.unwrap();
        eprintln!("failover done after {:?}", killed_at.elapsed());
        cluster.restart(victim).await.unwrap();
        cluster
    });

    // Follow the conversation on the reader while the producer runs.
    let mut last = 0u64;
    let mut delivered = Vec::new();
    let mut resyncs = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last < N as u64 {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("delivery stalled at {last}"))
            .unwrap();
        match event {
            Published::Message { seq, .. } if seq == last + 1 => {
                delivered.push(seq);
                last = seq;
            }
            Published::Resync => {
                resyncs += 1;
                let page = match reader
                    .store
                    .messages(&t, &conv.id, Cursor::After(last), 500)
                    .await
                {
                    Ok(p) => p,
                    // The shard may flap while the failover settles: the next Resync
                    // reads again.
                    Err(_) => continue,
                };
                for m in &page.messages {
                    delivered.push(m.seq);
                    last = m.seq;
                }
            }
            _ => {}
        }
    }
    let (acked, refusals) = producer.await.unwrap();
    let cluster = cluster.await.unwrap();
    eprintln!(
        "failover: {refusals} refusals while the master was down; resyncs {resyncs}; \
         back after {:?}",
        killed_at.elapsed()
    );
    cluster.wait_serving(Duration::from_secs(20)).await.unwrap();
    assert_ne!(
        cluster
            .master_of(slot(&format!("{{t:{t}}}")))
            .await
            .unwrap(),
        victim,
        "a replica took over"
    );
    let page = reader
        .store
        .messages(&t, &conv.id, Cursor::Start, 1000)
        .await
        .unwrap();
    let history: Vec<(String, String)> = page
        .messages
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_str(&m.json).unwrap();
            (
                v["id"].as_str().unwrap().to_owned(),
                v["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        history, acked,
        "every acked message once, in order, nothing else"
    );
    assert_eq!(
        delivered,
        (1..=N as u64).collect::<Vec<_>>(),
        "the subscriber saw each once, in order"
    );
    assert!(resyncs >= 1, "the shard's re-subscription was announced");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.broker.healthy() {
        assert!(Instant::now() < deadline, "the reader never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
