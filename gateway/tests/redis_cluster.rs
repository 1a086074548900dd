//! Two `confab` processes on a real Redis Cluster (6 `redis-server` processes on loopback,
//! 3 masters with a replica each, made by `redis-cli --cluster create`; skipped when Redis
//! is not installed unless `CONFAB_REQUIRE_REDIS` is set).
//!
//! Starting a cluster takes seconds, and nextest runs every test in its own process, so
//! the scenarios share two tests (each with its own cluster, run in parallel):
//! - `two_nodes_chat_across_the_shards`: tenants on each of the three masters; chat and
//!   tenant events across the nodes, sharded channels on the owning master only, agents
//!   resuming with `after`, `/readyz`, and a migration of a busy tenant's slot to another
//!   master under traffic;
//! - `a_master_failover_through_the_gateway_loses_no_ack`: SIGKILL the master of a busy
//!   tenant while a visitor sends continuously (retrying with the same clientMessageId on
//!   503);
//! - `message_limits_ride_in_the_append_script_on_the_tenants_shard`: a visitor message is
//!   one script call on its tenant's master, rate limits included, across both nodes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use confab_store::redis::slot;
use confab_store::redis::testing::RedisCluster;
use serde_json::{json, Value};
use tokio::time::Instant;

const TENANT_WS: &str = "/v1/tenant/ws";
const VISITOR_WS: &str = "/v1/visitor/ws";

/// A tenant of the test config, placed on a given master.
#[derive(Clone, Debug)]
struct Tenant {
    id: String,
    pk: String,
    agent_secret: String,
    /// The master that serves its slot when the test started.
    master: u16,
}

impl Tenant {
    fn slot(&self) -> u16 {
        slot(&format!("{{t:{}}}", self.id))
    }

    fn agent(&self, sub: &str) -> String {
        agent_jwt(&self.agent_secret, &self.id, sub)
    }

    /// Its sharded channels carry this hash tag.
    fn tag(&self) -> String {
        format!("{{t:{}}}", self.id)
    }
}

/// One tenant per given master: ids drawn until their hash slot lands there.
async fn tenants_on(cluster: &RedisCluster, masters: &[u16]) -> Vec<Tenant> {
    let mut out = Vec::new();
    for (i, &port) in masters.iter().enumerate() {
        loop {
            let id = format!("t{}x{i}", rand::random::<u32>());
            if cluster
                .master_of(slot(&format!("{{t:{id}}}")))
                .await
                .unwrap()
                == port
            {
                out.push(Tenant {
                    id,
                    pk: format!("pk_live_{:032x}", rand::random::<u128>()),
                    agent_secret: format!("agent-secret-{i}"),
                    master: port,
                });
                break;
            }
        }
    }
    out
}

/// The nodes' config: the cluster store, no session secret (one is generated and kept in
/// the cluster, so both nodes agree), generous limits.
fn cluster_config(dir: &Path, url: &str, tenants: &[Tenant]) -> PathBuf {
    let mut toml = format!("store = \"{url}\"\n");
    for (i, t) in tenants.iter().enumerate() {
        toml.push_str(&format!(
            r#"
[[tenants]]
id = "{id}"
name = "Tenant {i}"
public_key = "{pk}"
agent_secret = "{secret}"
server_key = "server-key-{i}"
min_elapsed_ms = 0
[tenants.rate_limits]
sessions_per_hour_per_ip = 100000
messages_per_hour_per_ip = 100000
messages_per_minute_per_session = 100000
config_per_minute_per_ip = 100000
polls_per_minute_per_session = 100000
events_per_minute_per_session = 100000
"#,
            id = t.id,
            pk = t.pk,
            secret = t.agent_secret,
        ));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn wait_readyz(c: &Client, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = c.get("/readyz", &[]).await.status;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `PUBSUB SHARDCHANNELS` of one node.
async fn shard_channels(port: u16) -> Vec<String> {
    redis_cli(port, &["PUBSUB", "SHARDCHANNELS"]).await
}

/// Runs `redis-cli -p PORT ARGS…`; its reply, one line per element.
async fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.starts_with("ERR") && !text.starts_with("MOVED"),
        "redis-cli -p {port} {args:?}: {text}"
    );
    text.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Waits until `port` carries a sharded channel with `tag` (or none, when `present` is
/// false).
async fn wait_shard_channel(port: u16, tag: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let channels = shard_channels(port).await;
        if channels.iter().any(|c| c.contains(tag)) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "master {port}: channel {tag} present={present} never held: {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends until the message is acknowledged, retrying with the same clientMessageId while
/// the gateway answers 503 `store_unavailable`. Returns the message id; counts refusals.
async fn send_acked(c: &Client, s: &Session, body: &str, refusals: &mut u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = c.send(s, body, Some(body)).await;
        match r.status {
            201 | 200 => {
                assert_eq!(r.json["duplicate"], r.status == 200, "{}", r.text);
                return r.json["messageId"].as_str().unwrap().to_owned();
            }
            503 => {
                assert_eq!(r.code(), "store_unavailable", "{}", r.text);
                *refusals += 1;
                assert!(Instant::now() < deadline, "{body} never acknowledged");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{body}: unexpected {other}: {}", r.text),
        }
    }
}

/// What an agent socket saw: every offset, and the `(id, body)` of each `message:new`.
#[derive(Default)]
struct Seen {
    offsets: Vec<u64>,
    messages: Vec<(String, String)>,
}

impl Seen {
    fn take(&mut self, frame: &Value) {
        if let Some(o) = frame["offset"].as_str() {
            self.offsets.push(o.parse().unwrap());
        }
        if frame["type"] == "message:new" {
            self.messages.push((
                frame["data"]["id"].as_str().unwrap().to_owned(),
                frame["data"]["body"].as_str().unwrap().to_owned(),
            ));
        }
    }

    /// Reads `ws` until `done` holds (frames within 20 s each).
    async fn read_until(&mut self, ws: &mut Ws, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            let f = ws
                .next_json_within(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "agent stalled after {} messages, offsets {:?}",
                        self.messages.len(),
                        self.offsets.last()
                    )
                });
            self.take(&f);
        }
    }

    fn last_offset(&self) -> u64 {
        *self.offsets.last().expect("an offset")
    }

    /// Offsets only grow by one.
    fn assert_contiguous(&self, from: u64) {
        let want: Vec<u64> = (from..from + self.offsets.len() as u64).collect();
        assert_eq!(self.offsets, want, "offsets without gap or duplicate");
    }
}

/// Moves `slot` from the master on `from` to the one on `to` (what `redis-cli --cluster
/// reshard` does for each slot): IMPORTING/MIGRATING, MIGRATE its keys in batches, then
/// SETSLOT NODE on every node.
async fn migrate_slot(cluster: &RedisCluster, slot: u16, from: u16, to: u16) -> usize {
    let s = slot.to_string();
    let from_id = redis_cli(from, &["CLUSTER", "MYID"]).await.remove(0);
    let to_id = redis_cli(to, &["CLUSTER", "MYID"]).await.remove(0);
    redis_cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).await;
    redis_cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;
    let mut moved = 0;
    loop {
        let keys = redis_cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "1"]).await;
        if keys.is_empty() {
            break;
        }
        moved += keys.len();
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        redis_cli(from, &args).await;
        // One key at a time, traffic going on in between: the slot stays half-moved
        // for a while (scripts whose keys are split get `TRYAGAIN`, new keys `ASK`).
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for port in [to, from] {
        redis_cli(port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
    }
    for n in &cluster.nodes {
        if n.port() != to && n.port() != from {
            // Replicas and the third master learn it here or by gossip.
            let _ = n.command(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
        }
    }
    moved
}

/// Tenants on each of the three masters, visitors on node A and agents on node B (and
/// back): chat, tenant events, sharded channels on the owning master only, resuming with
/// `after`, `/readyz`; then a tenant's slot moves to another master while its visitor keeps
/// sending, and nothing is lost, duplicated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_chat_across_the_shards() {
    let Some(cluster) = RedisCluster::start_or_skip("two_nodes_chat_across_the_shards").await
    else {
        return;
    };
    let masters: Vec<u16> = cluster
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port)
        .collect();
    assert_eq!(masters.len(), 3);
    let tenants = tenants_on(&cluster, &masters).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster_config(dir.path(), &cluster.url(), &tenants);
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    // Ready once every shard's subscription is live.
    wait_readyz(&ca, 200, Duration::from_secs(10)).await;
    wait_readyz(&cb, 200, Duration::from_secs(10)).await;

    let mut visitors = Vec::new();
    for t in &tenants {
        // A challenge issued by A is accepted at B (the generated secret and the replay
        // set live in the cluster) and only once.
        let challenge = ca.challenge(&t.pk).await;
        let body = json!({"publicKey": t.pk, "initChallenge": challenge, "botSignals": {"elapsedMs": 1500}});
        let (mut agent, _) = Ws::open(b.addr, TENANT_WS, &t.agent("ann"), None).await;
        let r = cb.post("/v1/sessions", &[], &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let again = ca.post("/v1/sessions", &[], &body).await;
        assert_eq!((again.status, again.code()), (403, "invalid_challenge"));
        let s = Session {
            token: r.json["sessionToken"].as_str().unwrap().into(),
            visitor_token: r.json["visitorToken"].as_str().unwrap().into(),
            conversation_id: r.json["conversationId"].as_str().unwrap().into(),
            visitor_id: r.json["visitorId"].as_str().unwrap().into(),
        };
        // The new conversation's tenant event reaches the agent on the other node.
        let e = agent.next_of(&["conversation:new"]).await;
        assert_eq!(e["data"]["id"], s.conversation_id.as_str(), "{e}");
        // Visitor on A → agent on B; agent on B → visitor on A.
        let (mut visitor, _) = Ws::open(a.addr, VISITOR_WS, &s.token, None).await;
        visitor
            .send_json(&json!({"type": "message", "message": format!("hello {}", t.id), "clientMessageId": "v1"}))
            .await;
        let m = agent.next_of(&["message:new"]).await;
        assert_eq!(m["data"]["body"], format!("hello {}", t.id));
        agent
            .send_json(&json!({"type": "reply", "conversationId": s.conversation_id, "message": "from B", "clientMessageId": "r1"}))
            .await;
        loop {
            let m = visitor.next_of(&["message:new"]).await;
            if m["data"]["body"] == "from B" {
                break;
            }
        }
        visitors.push((s, agent));
    }
    // Each master carries its own tenant's sharded channels and no other tenant's.
    for t in &tenants {
        let channels = shard_channels(t.master).await;
        assert!(
            channels
                .iter()
                .any(|c| c.ends_with(&format!("{}:events", t.tag()))),
            "master {} carries tenant {}'s channel: {channels:?}",
            t.master,
            t.id
        );
        for other in tenants.iter().filter(|o| o.id != t.id) {
            assert!(
                !channels.iter().any(|c| c.contains(&other.tag())),
                "master {} carries no channel of {} (on {}): {channels:?}",
                t.master,
                other.id,
                other.master
            );
        }
    }

    // An agent who leaves and resumes with `after` gets exactly what it missed, in order.
    for (t, (s, agent)) in tenants.iter().zip(visitors.iter_mut()) {
        let mut seen = Seen::default();
        // Up to the agent's own reply's event.
        while seen.messages.last().is_none_or(|m| m.1 != "from B") {
            let f = agent.next_json().await;
            seen.take(&f);
        }
        let last = seen.last_offset();
        // The agent leaves.
        let _ = agent.inner.close(None).await;
        let mut sent = Vec::new();
        let mut refusals = 0;
        for i in 0..5 {
            let body = format!("missed {i}");
            let id = send_acked(&ca, s, &body, &mut refusals).await;
            sent.push((id, body));
        }
        let (mut back, ready) =
            Ws::open(b.addr, TENANT_WS, &t.agent("ann"), Some(&last.to_string())).await;
        assert_eq!(ready["recovered"], true, "{ready}");
        let mut replay = Seen::default();
        replay
            .read_until(&mut back, |s| s.messages.len() == sent.len())
            .await;
        replay.assert_contiguous(last + 1);
        assert_eq!(
            replay.messages, sent,
            "exactly the missed messages, in order"
        );
        // The same as the log says.
        let log = cb
            .tenant_events(&t.agent("ann"), Some(&last.to_string()))
            .await;
        let logged: Vec<u64> = log.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["offset"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(replay.offsets, logged);
        *agent = back;
    }

    // A busy tenant's slot moves to another master while its visitor sends through A and
    // agents watch on B (live) and on A (the visitor's own socket, live).
    let t = tenants[0].clone();
    let to = tenants[1].master;
    let (s, agent) = &mut visitors[0];
    let s = s.clone();
    let before = ca.history(&s).await.len();
    let (mut visitor, _) = Ws::open(a.addr, VISITOR_WS, &s.token, Some(&before.to_string())).await;
    const N: usize = 200;
    let producer = {
        let (ca, s) = (ca.clone(), s.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refusals = 0;
            for i in 0..N {
                let body = format!("mig {i}");
                let id = send_acked(&ca, &s, &body, &mut refusals).await;
                acked.push((id, body));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, refusals)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let moved = migrate_slot(&cluster, t.slot(), t.master, to).await;
    let took = started.elapsed();
    assert!(moved > 3, "the tenant's keys moved ({moved})");
    assert!(!producer.is_finished(), "the move happened under traffic");
    let mut live = Seen::default();
    live.read_until(agent, |s| {
        s.messages
            .iter()
            .filter(|m| m.1.starts_with("mig "))
            .count()
            == N
    })
    .await;
    let (acked, refusals) = producer.await.unwrap();
    eprintln!(
        "slot {} moved {} → {to} ({moved} keys) in {took:?}; {refusals} sends refused meanwhile",
        t.slot(),
        t.master
    );
    assert_eq!(cluster.master_of(t.slot()).await.unwrap(), to);
    let live_msgs: Vec<(String, String)> = live
        .messages
        .iter()
        .filter(|m| m.1.starts_with("mig "))
        .cloned()
        .collect();
    assert_eq!(live_msgs, acked, "the agent on B saw each once, in order");
    let history: Vec<(String, String)> = ca
        .history(&s)
        .await
        .iter()
        .skip(before)
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(history, acked, "every acked message once, in order");
    let mut on_visitor = Vec::new();
    while on_visitor.len() < N {
        let m = visitor.next_of(&["message:new"]).await;
        on_visitor.push((
            m["data"]["id"].as_str().unwrap().to_owned(),
            m["data"]["body"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        on_visitor, acked,
        "the visitor's socket on A saw each once, in order"
    );
    // Both nodes followed the move: the tenant's channels now live on the new master.
    wait_shard_channel(to, &t.tag(), true).await;
    wait_shard_channel(t.master, &t.tag(), false).await;
    wait_readyz(&ca, 200, Duration::from_secs(10)).await;
    wait_readyz(&cb, 200, Duration::from_secs(10)).await;
    // And chat goes on there.
    let mut refusals = 0;
    send_acked(&ca, &s, "after the move", &mut refusals).await;
    loop {
        let m = agent.next_of(&["message:new"]).await;
        if m["data"]["body"] == "after the move" {
            break;
        }
    }
}

/// SIGKILL the master of a busy tenant while a visitor sends continuously through node A
/// (retrying with the same clientMessageId on 503): after the failover every acknowledged
/// message is in the history exactly once, in order; the agent socket on B that stayed
/// open saw each once, in order; an agent that left before the kill and resumes on A with
/// `after` gets exactly the rest; `/readyz` is 200 again on both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_through_the_gateway_loses_no_ack() {
    let Some(mut cluster) =
        RedisCluster::start_or_skip("a_master_failover_through_the_gateway_loses_no_ack").await
    else {
        return;
    };
    let masters = cluster.masters().await.unwrap();
    let victim = masters[0].port;
    let tenants = tenants_on(&cluster, &[victim, masters[1].port]).await;
    let t = tenants[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster_config(dir.path(), &cluster.url(), &tenants);
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    wait_readyz(&ca, 200, Duration::from_secs(10)).await;
    wait_readyz(&cb, 200, Duration::from_secs(10)).await;
    let s = ca.session(&t.pk).await;
    let (mut agent, _) = Ws::open(b.addr, TENANT_WS, &t.agent("ann"), Some("0")).await;
    let (mut leaver, _) = Ws::open(b.addr, TENANT_WS, &t.agent("bob"), Some("0")).await;
    // Another tenant on another shard keeps working throughout.
    let other = ca.session(&tenants[1].pk).await;

    const N: usize = 150;
    const KILL_AT: usize = 40;
    let (at_tx, at_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = {
        let (ca, s) = (ca.clone(), s.clone());
        tokio::spawn(async move {
            let mut at_tx = Some(at_tx);
            let mut acked = Vec::new();
            let mut refusals = 0;
            for i in 0..N {
                if i == KILL_AT {
                    let _ = at_tx.take().unwrap().send(());
                }
                let body = format!("f{i}");
                let id = send_acked(&ca, &s, &body, &mut refusals).await;
                acked.push((id, body));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, refusals)
        })
    };
    // The leaver reads a while, then goes away before the kill.
    let mut left = Seen::default();
    left.read_until(&mut leaver, |s| s.messages.len() >= KILL_AT / 2)
        .await;
    drop(leaver);
    at_rx.await.unwrap();
    cluster.kill(victim);
    let killed = Instant::now();
    // The other shard is not affected, not even while the failover is under way (its
    // tenant's rate limits live on its own shard too).
    let mut refusals_other = 0;
    for i in 0..10 {
        send_acked(&ca, &other, &format!("elsewhere {i}"), &mut refusals_other).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refusals_other, 0, "the other shard answered at once");
    wait_readyz(&cb, 503, Duration::from_secs(10)).await;
    // Once a replica took over, the old master comes back (empty) as its replica: until
    // then the new master has no replica and `WAIT 1` refuses every ack (503).
    cluster.wait_serving(Duration::from_secs(20)).await.unwrap();
    let failed_over = killed.elapsed();
    cluster.restart(victim).await.unwrap();
    let (acked, refusals) = producer.await.unwrap();
    eprintln!(
        "failover after {failed_over:?}; all {N} acked after {:?}; {refusals} refusals",
        killed.elapsed()
    );
    assert!(refusals > 0, "sends met the failover");
    assert_ne!(
        cluster.master_of(t.slot()).await.unwrap(),
        victim,
        "a replica took over"
    );

    let history: Vec<(String, String)> = ca
        .history(&s)
        .await
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        history, acked,
        "every acked message once, in order, nothing else"
    );
    assert_eq!(cb.history(&s).await.len(), N, "the same history from B");

    // The socket that stayed open on B saw each once, in order.
    let mut live = Seen::default();
    live.read_until(&mut agent, |s| s.messages.len() == N).await;
    assert_eq!(
        live.messages, acked,
        "the agent on B saw each once, in order"
    );
    assert!(agent
        .next_json_within(Duration::from_millis(300))
        .await
        .is_none_or(|v| v["type"] != "message:new"));

    // The leaver resumes on A after the last offset it saw: exactly the rest.
    let last = left.last_offset();
    let (mut back, ready) =
        Ws::open(a.addr, TENANT_WS, &t.agent("bob"), Some(&last.to_string())).await;
    assert_eq!(ready["recovered"], true, "{ready}");
    let mut rest = Seen::default();
    rest.read_until(&mut back, |s| s.messages.len() + left.messages.len() == N)
        .await;
    rest.assert_contiguous(last + 1);
    let mut all = left.messages.clone();
    all.extend(rest.messages.iter().cloned());
    assert_eq!(
        all, acked,
        "before and after the resume: each once, in order"
    );

    wait_readyz(&ca, 200, Duration::from_secs(15)).await;
    wait_readyz(&cb, 200, Duration::from_secs(15)).await;
}

/// `calls` of one command in `INFO commandstats` of one master (0 when never called).
async fn command_calls(port: u16, command: &str) -> u64 {
    redis_cli(port, &["INFO", "commandstats"])
        .await
        .iter()
        .find_map(|l| {
            l.strip_prefix(&format!("cmdstat_{command}:calls="))
                .map(str::to_owned)
        })
        .and_then(|rest| rest.split(',').next().map(str::to_owned))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limits_ride_in_the_append_script_on_the_tenants_shard() {
    let Some(cluster) = RedisCluster::start_or_skip(
        "message_limits_ride_in_the_append_script_on_the_tenants_shard",
    )
    .await
    else {
        return;
    };
    let masters: Vec<u16> = cluster
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port)
        .collect();
    let tenants = tenants_on(&cluster, &masters[..1]).await;
    let t = &tenants[0];
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster_config(dir.path(), &cluster.url(), &tenants);
    let toml = std::fs::read_to_string(&cfg).unwrap().replacen(
        "messages_per_minute_per_session = 100000",
        "messages_per_minute_per_session = 4",
        1,
    );
    std::fs::write(&cfg, toml).unwrap();
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    wait_readyz(&ca, 200, Duration::from_secs(10)).await;
    wait_readyz(&cb, 200, Duration::from_secs(10)).await;
    // No agent, webhook or assistant, and maintenance runs a minute after start: nothing
    // but the visitor's requests runs scripts during the test.
    let s = ca.session(&t.pk).await;
    // Loads the script on the master (the first EVALSHA there is a NOSCRIPT).
    assert_eq!(ca.send(&s, "warm-up", Some("w")).await.status, 201);

    for &port in &masters {
        assert_eq!(redis_cli(port, &["CONFIG", "RESETSTAT"]).await, ["OK"]);
    }
    // Three more fit the session's 4 a minute, from either node; the next is refused.
    for (i, c) in [&ca, &cb, &ca].into_iter().enumerate() {
        let r = c.send(&s, &format!("m{i}"), Some(&format!("m{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = cb.send(&s, "over", Some("over")).await;
    assert_error(&r, 429, "rate_limited");
    // A retry of a stored message is answered while limited.
    let r = ca.send(&s, "m0", Some("m0")).await;
    assert_eq!(
        (r.status, &r.json["duplicate"]),
        (200, &json!(true)),
        "{}",
        r.text
    );
    // Five requests, five script calls, all on the tenant's master (its limits live
    // there too: the shard keys carry the tenant's hash tag).
    assert_eq!(
        command_calls(t.master, "evalsha").await + command_calls(t.master, "eval").await,
        5
    );
    for &port in &masters[1..] {
        assert_eq!(command_calls(port, "evalsha").await, 0, "master {port}");
    }
    assert_eq!(ca.history(&s).await.len(), 4);
}
