//! Several `confab` processes on one real `redis-server`: every guarantee of the SPEC
//! across nodes — fan-out both ways, history and long-poll from any node, single-use
//! challenges and rate limits across nodes, nothing lost when a node's pub/sub connection
//! is killed, when a node is killed, or when Redis itself restarts (with AOF).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use confab_store::redis::testing::RedisServer;
use serde_json::json;

/// A config for nodes sharing `redis_url` (no session_secret: generated once, kept in Redis).
fn node_config(dir: &Path, redis_url: &str, extra_tenant: &str) -> PathBuf {
    let toml = config_toml(extra_tenant)
        .replace("session_secret = \"test-session-secret\"\n", "")
        .replace("store = \"memory\"", &format!("store = \"{redis_url}\""));
    let path = dir.join(format!("node-{}.toml", rand::random::<u32>()));
    std::fs::write(&path, toml).unwrap();
    path
}

async fn redis_or_skip(test: &str) -> Option<RedisServer> {
    RedisServer::start_or_skip(test).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_on_a_agents_on_b_both_ways() {
    let Some(redis) = redis_or_skip("visitor_on_a_agents_on_b_both_ways").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    // A challenge issued by A is accepted at B (shared secret and replay set)…
    let challenge = ca.challenge(PK).await;
    let body =
        json!({"publicKey": PK, "initChallenge": challenge, "botSignals": {"elapsedMs": 1500}});
    let r = cb.post("/v1/sessions", &[], &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // …and reusing it at A is refused.
    let again = ca.post("/v1/sessions", &[], &body).await;
    assert_eq!((again.status, again.code()), (403, "invalid_challenge"));
    let s = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: r.json["visitorToken"].as_str().unwrap().into(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: r.json["visitorId"].as_str().unwrap().into(),
    };

    let (mut visitor, _) = Ws::open(a.addr, "/v1/visitor/ws", &s.token, None).await;
    let (mut agent, _) = Ws::open(b.addr, "/v1/tenant/ws", &acme_agent("ann"), None).await;
    visitor
        .send_json(&json!({"type": "message", "message": "from A", "clientMessageId": "v1"}))
        .await;
    let m = agent.next_of(&["message:new"]).await;
    assert_eq!(m["data"]["body"], "from A");
    agent.send_json(&json!({"type": "reply", "conversationId": s.conversation_id, "message": "from B", "clientMessageId": "r1"})).await;
    loop {
        let m = visitor.next_of(&["message:new"]).await;
        if m["data"]["body"] == "from B" {
            break;
        }
    }
    agent
        .send_json(&json!({"type": "typing", "conversationId": s.conversation_id}))
        .await;
    visitor.next_of(&["typing"]).await;

    // History from either node; a long-poll on B wakes for a send on A.
    let poll = {
        let (cb, s) = (cb.clone(), s.clone());
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let h = cb.history(&s).await;
            let after = h.last().unwrap()["id"].as_str().unwrap().to_owned();
            let r = cb
                .get(
                    &format!("/v1/messages?after={after}&wait=20"),
                    &[("authorization", &s.bearer())],
                )
                .await;
            (r, start.elapsed())
        })
    };
    // Let the poll park, then send on A (the poll also works if the send lands first).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ca.send(&s, "wake up B", None).await.status, 201);
    let (r, took) = poll.await.unwrap();
    assert_eq!(r.json["messages"][0]["body"], "wake up B", "{}", r.text);
    assert!(took < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_nodes() {
    let Some(redis) = redis_or_skip("rate_limits_hold_across_nodes").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let toml = std::fs::read_to_string(&cfg).unwrap().replacen(
        "sessions_per_hour_per_ip = 100000",
        "sessions_per_hour_per_ip = 3",
        1,
    );
    std::fs::write(&cfg, toml).unwrap();
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let mut statuses = Vec::new();
    for i in 0..5 {
        let c = if i % 2 == 0 { a.client() } else { b.client() };
        statuses.push(c.session_with(PK, json!({})).await.status);
    }
    assert_eq!(
        statuses,
        vec![201, 201, 201, 429, 429],
        "3 per hour per IP, counted across both nodes"
    );
}

/// A visitor message's rate limits are charged in its append script (one round trip):
/// the per-session limit holds across nodes and both transports, a refused message is
/// neither stored nor charged, a retry of a stored message is answered while limited, and
/// refusals are counted as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limits_hold_across_nodes_in_the_append_script() {
    let Some(redis) = redis_or_skip("message_limits_hold_across_nodes_in_the_append_script").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    let toml = with_limit(
        &with_limit(
            &without_auto_reply(&toml),
            "messages_per_minute_per_session",
            3,
        ),
        "messages_per_hour_per_ip",
        10,
    );
    std::fs::write(&cfg, toml).unwrap();
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    let s = ca.session(PK).await;
    let (mut ws, _) = Ws::open(b.addr, "/v1/visitor/ws", &s.token, None).await;

    // Three allowed, from both nodes and both transports.
    let first = ca.send(&s, "one", Some("c1")).await;
    assert_eq!(first.status, 201, "{}", first.text);
    ws.send_json(&json!({"type": "message", "message": "two", "clientMessageId": "c2"}))
        .await;
    let ack = ws.next_of(&["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(cb.send(&s, "three", Some("c3")).await.status, 201);

    // The fourth is refused on either node, either way, with Retry-After.
    let r = ca.send(&s, "four", Some("c4")).await;
    assert_error(&r, 429, "rate_limited");
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    ws.send_json(&json!({"type": "message", "message": "five", "clientMessageId": "c5"}))
        .await;
    let e = ws.next_of(&["ack", "error"]).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{e}"
    );

    // Retries of stored messages are answered with the originals while limited.
    let again = cb.send(&s, "one", Some("c1")).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["duplicate"], true);
    assert_eq!(again.json["messageId"], first.json["messageId"]);
    ws.send_json(&json!({"type": "message", "message": "two", "clientMessageId": "c2"}))
        .await;
    let dup = ws.next_of(&["ack", "error"]).await;
    assert_eq!(
        (dup["type"].as_str(), dup["duplicate"].as_bool()),
        (Some("ack"), Some(true)),
        "{dup}"
    );
    assert_eq!(dup["messageId"], ack["messageId"]);

    let bodies: Vec<_> = cb
        .history(&s)
        .await
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!("one"), json!("two"), json!("three")]);
    // Counted under the limit that refused, on the node that refused.
    for c in [&ca, &cb] {
        let metrics = c.get("/metrics", &[]).await.text;
        assert!(
            metrics.contains("confab_rate_limited_total{limit=\"msg-vis\"} 1"),
            "{metrics}"
        );
        assert!(!metrics.contains("limit=\"msg-ip\""), "{metrics}");
    }
    // Neither the refusals nor the retries took from the IP's allowance (10 an hour: one
    // unit is 6 minutes), kept under the limiter's own key: 3 units, 18 minutes.
    let ip_key = "confab:rl:msg-ip:acme:127.0.0.1";
    let pttl: i64 = redis
        .command(&["PTTL", ip_key])
        .await
        .unwrap()
        .parse()
        .unwrap();
    let unit = 360_000;
    assert!(
        pttl > 3 * unit - 60_000 && pttl <= 3 * unit,
        "{ip_key} expires in {pttl} ms"
    );
}

/// `calls` of one command in `INFO commandstats` (0 when it was never called).
fn command_calls(stats: &str, command: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// One round trip per visitor message: K messages (HTTP on one node, WebSocket on the
/// other), K script calls in Redis's own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_message_is_one_script_call() {
    let Some(redis) = redis_or_skip("a_visitor_message_is_one_script_call").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No auto-reply, webhook, assistant or agent, and maintenance first runs a minute after
    // start: nothing but the visitor's requests runs scripts during the test.
    let cfg = node_config(dir.path(), &redis.url(), "");
    let toml = without_auto_reply(&std::fs::read_to_string(&cfg).unwrap());
    std::fs::write(&cfg, toml).unwrap();
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    let s = ca.session(PK).await;
    let (mut ws, _) = Ws::open(b.addr, "/v1/visitor/ws", &s.token, None).await;
    // Loads the script into Redis (the first EVALSHA of a fresh Redis is a NOSCRIPT).
    assert_eq!(cb.send(&s, "warm-up", Some("w")).await.status, 201);

    assert_eq!(redis.command(&["CONFIG", "RESETSTAT"]).await.unwrap(), "OK");
    const K: u64 = 10;
    for i in 0..K {
        let cmid = format!("m{i}");
        if i % 2 == 0 {
            let r = ca.send(&s, &format!("http {i}"), Some(&cmid)).await;
            assert_eq!(r.status, 201, "{}", r.text);
        } else {
            ws.send_json(
                &json!({"type": "message", "message": format!("ws {i}"), "clientMessageId": cmid}),
            )
            .await;
            let ack = ws.next_of(&["ack", "error"]).await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
    }
    let stats = redis.command(&["INFO", "commandstats"]).await.unwrap();
    assert_eq!(
        command_calls(&stats, "evalsha") + command_calls(&stats, "eval"),
        K,
        "one script call per visitor message: {stats}"
    );
    assert_eq!(cb.history(&s).await.len() as u64, K + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_loses_nothing() {
    let Some(redis) = redis_or_skip("killed_pubsub_connection_loses_nothing").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let ca = a.client();
    let s = ca.session(PK).await;
    let (mut agent, _) = Ws::open(b.addr, "/v1/tenant/ws", &acme_agent("ann"), None).await;
    let sender = {
        let (ca, s) = (ca.clone(), s.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let r = ca.send(&s, &format!("n{i}"), Some(&format!("n{i}"))).await;
                assert_eq!(r.status, 201, "{}", r.text);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Mid-stream, kill every pub/sub connection (node B's among them), twice.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis
            .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        let m = agent.next_of(&["message:new"]).await;
        let body = m["data"]["body"].as_str().unwrap().to_owned();
        if let Some(n) = body.strip_prefix('n') {
            got.push(n.parse::<u32>().unwrap());
        }
    }
    sender.await.unwrap();
    assert_eq!(
        got,
        (0..200).collect::<Vec<u32>>(),
        "all 200, in order, no duplicates"
    );
    assert!(agent
        .next_json_within(Duration::from_millis(500))
        .await
        .is_none_or(|v| v["type"] != "message:new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_on_another() {
    let Some(redis) = redis_or_skip("killed_node_clients_resume_on_another").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let a = Process::spawn(&cfg, &[]);
    let mut b = Process::spawn(&cfg, &[]);
    let ca = a.client();
    let s = ca.session(PK).await;
    let jwt = acme_agent("ann");
    let (mut visitor, _) = Ws::open(b.addr, "/v1/visitor/ws", &s.token, Some("0")).await;
    let (mut agent, _) = Ws::open(b.addr, "/v1/tenant/ws", &jwt, Some("0")).await;
    let sender = {
        let (ca, conv) = (ca.clone(), s.conversation_id.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let r = ca
                    .post(
                        &format!("/v1/tenant/conversations/{conv}/messages"),
                        &[("authorization", &format!("Bearer {SERVER_KEY}"))],
                        &json!({"message": format!("k{i}")}),
                    )
                    .await;
                assert_eq!(r.status, 201);
            }
        })
    };
    let mut ids = Vec::new();
    let mut offsets = Vec::new();
    while ids.len() < 50 {
        let m = visitor.next_of(&["message:new"]).await;
        ids.push(seq(m["data"]["id"].as_str().unwrap()));
    }
    while offsets.len() < 50 {
        let e = agent.next_json().await;
        if let Some(o) = e["offset"].as_str() {
            offsets.push(o.parse::<u64>().unwrap());
        }
    }
    b.kill9();
    // Both resume on A with what they last saw.
    let (mut visitor, _) = Ws::open(
        a.addr,
        "/v1/visitor/ws",
        &s.token,
        Some(&ids.last().unwrap().to_string()),
    )
    .await;
    let (mut agent, ready) = Ws::open(
        a.addr,
        "/v1/tenant/ws",
        &jwt,
        Some(&offsets.last().unwrap().to_string()),
    )
    .await;
    assert_eq!(ready["recovered"], true);
    sender.await.unwrap();
    while ids.len() < 300 {
        let m = visitor.next_of(&["message:new"]).await;
        ids.push(seq(m["data"]["id"].as_str().unwrap()));
    }
    assert_eq!(ids, (1..=300).collect::<Vec<u64>>());
    loop {
        let e = agent.next_json().await;
        if let Some(o) = e["offset"].as_str() {
            let o: u64 = o.parse().unwrap();
            assert_eq!(
                o,
                offsets.last().unwrap() + 1,
                "offsets continue without gap or duplicate"
            );
            offsets.push(o);
            if e["type"] == "message:new" && e["data"]["body"] == "k299" {
                break;
            }
        }
    }
}

/// A redis-server with AOF (`appendfsync always`) that can be killed and restarted on
/// the same port and directory.
struct AofRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl AofRedis {
    async fn start() -> Option<AofRedis> {
        if !confab_store::redis::testing::redis_server_installed() {
            assert!(
                std::env::var_os("CONFAB_REQUIRE_REDIS").is_none(),
                "redis-server required"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = AofRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn().await;
        Some(r)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").await.is_ok() {
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                    {
                        if buf[..n].starts_with(b"+PONG") {
                            return;
                        }
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn readyz(c: &Client) -> u16 {
    c.get("/readyz", &[]).await.status
}

async fn wait_readyz(c: &Client, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while readyz(c).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acknowledged_message() {
    let Some(mut redis) = AofRedis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let a = Process::spawn(&cfg, &[]);
    let ca = a.client();
    let s = ca.session(PK).await;
    let (mut visitor, _) = Ws::open(a.addr, "/v1/visitor/ws", &s.token, Some("0")).await;
    assert_eq!(readyz(&ca).await, 200);
    let sender = {
        let (ca, s) = (ca.clone(), s.clone());
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0);
            for i in 0..400 {
                let r = ca.send(&s, &format!("q{i}"), Some(&format!("q{i}"))).await;
                match r.status {
                    201 => acked.push(format!("q{i}")),
                    503 => {
                        assert_eq!(r.code(), "store_unavailable");
                        refused += 1;
                    }
                    other => panic!("unexpected {other}: {}", r.text),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    wait_readyz(&ca, 503).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.spawn().await;
    wait_readyz(&ca, 200).await;
    let (acked, refused) = sender.await.unwrap();
    assert!(refused > 0, "some sends met the outage");
    let history: Vec<String> = ca
        .history(&s)
        .await
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    for body in &acked {
        assert!(history.contains(body), "acknowledged {body} was lost");
    }
    // The socket stayed open and received everything stored, in order.
    let mut seen = Vec::new();
    while seen.len() < history.len() {
        let m = visitor.next_of(&["message:new"]).await;
        seen.push(m["data"]["body"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, history);
}

/// After a Redis outage a node fills the gap at once, not when the next live message
/// happens to arrive: an agent on B receives what A stored right after Redis came back,
/// though nothing is sent after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_after_a_redis_outage_is_filled_without_further_traffic() {
    let Some(mut redis) = AofRedis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(dir.path(), &redis.url(), "");
    let (a, b) = (Process::spawn(&cfg, &[]), Process::spawn(&cfg, &[]));
    let (ca, cb) = (a.client(), b.client());
    let s = ca.session(PK).await;
    let (mut agent, _) = Ws::open(b.addr, "/v1/tenant/ws", &acme_agent("ann"), None).await;
    assert_eq!(ca.send(&s, "before", Some("b0")).await.status, 201);
    let m = agent.next_of(&["message:new"]).await;
    assert_eq!(m["data"]["body"], "before");

    redis.kill();
    wait_readyz(&cb, 503).await;
    // Long enough for the reconnect back-offs to grow apart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.spawn().await;
    // As soon as A can store again, a short burst, then silence.
    let mut sent = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sent.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never stored again"
        );
        let body = format!("after {}", sent.len());
        let r = ca.send(&s, &body, Some(&body)).await;
        if r.status == 201 {
            sent.push(body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < sent.len() {
        let m = agent.next_of(&["message:new"]).await;
        let body = m["data"]["body"].as_str().unwrap().to_owned();
        if body.starts_with("after ") && !seen.contains(&body) {
            seen.push(body);
        }
    }
    assert_eq!(seen, sent);
}
