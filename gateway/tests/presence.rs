//! Agent presence over real sockets: agents see each other come, go away and leave, also
//! when a whole team connects at once;
//! `require_agent` makes availability follow the team, live on the visitor channel and in
//! `GET /v1/config`; and across two nodes on a real `redis-server`, the agents of a node
//! killed with SIGKILL drop out within 30 s.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TENANT_WS: &str = "/v1/tenant/ws";
const VISITOR_WS: &str = "/v1/visitor/ws";

/// The `data` of the next frame that `wanted` picks, skipping everything else.
async fn next_data(
    ws: &mut Ws,
    what: &str,
    within: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = ws
            .next_json_within(left)
            .await
            .unwrap_or_else(|| panic!("no {what} frame within {within:?}"));
        if wanted(&v) {
            assert!(v.get("offset").is_none(), "{what} is ephemeral: {v}");
            return v["data"].clone();
        }
    }
}

/// The next `presence` frame about `agent`.
async fn presence_of(ws: &mut Ws, agent: &str, within: Duration) -> Value {
    next_data(ws, "presence", within, |v| {
        v["type"] == "presence" && v["data"]["agentId"] == agent
    })
    .await
}

/// The next `availability` frame.
async fn availability(ws: &mut Ws, within: Duration) -> Value {
    next_data(ws, "availability", within, |v| v["type"] == "availability").await
}

fn agent(sub: &str, name: &str) -> String {
    agent_jwt_named(AGENT_SECRET, "acme", sub, name)
}

fn agent_jwt_named(secret: &str, tenant: &str, sub: &str, name: &str) -> String {
    confab_protocol::token::sign_agent_jwt(
        secret.as_bytes(),
        &confab_protocol::token::AgentClaims {
            sub: sub.into(),
            tenant: tenant.into(),
            exp: confab_protocol::time::now_ms() / 1000 + 3600,
            name: Some(name.into()),
        },
    )
}

fn names(ready: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ready["agentsOnline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agentId"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A large team: `ready` lists 100 agents (the joining one first) and counts them all;
/// the others arrive as `presence` frames right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_team_comes_as_a_capped_ready_then_presence_frames() {
    let gw = Gateway::start(&config_toml("")).await;
    let mut team = Vec::new();
    for i in 0..104 {
        let (ws, _) = Ws::open(gw.addr, TENANT_WS, &agent(&format!("a{i:03}"), "A"), None).await;
        team.push(ws);
    }
    let (mut last, ready) = Ws::open(gw.addr, TENANT_WS, &agent("zed", "Zed"), None).await;
    assert_eq!(ready["agentsOnlineTotal"], 105, "{ready}");
    let listed = ready["agentsOnline"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    assert_eq!(listed[0]["agentId"], "zed", "this agent first");
    let mut seen: std::collections::BTreeSet<String> = listed
        .iter()
        .map(|a| a["agentId"].as_str().unwrap().to_owned())
        .collect();
    while seen.len() < 105 {
        let p = next_data(&mut last, "presence", Duration::from_secs(5), |v| {
            v["type"] == "presence"
        })
        .await;
        seen.insert(p["agentId"].as_str().unwrap().to_owned());
    }
    let everyone: std::collections::BTreeSet<String> = (0..104)
        .map(|i| format!("a{i:03}"))
        .chain(["zed".to_owned()])
        .collect();
    assert_eq!(seen, everyone);
}

/// A team connecting together (as after a node restart): every agent ends up knowing
/// every other one online, from its `ready` and the announcements that follow, which
/// gather the changes of many joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_connecting_together_sees_everyone_online() {
    const TEAM: usize = 40;
    let gw = Gateway::start(&config_toml("")).await;
    let tokens: Vec<String> = (0..TEAM).map(|i| agent(&format!("t{i:02}"), "T")).collect();
    let opened = futures_util::future::join_all(
        tokens
            .iter()
            .map(|token| Ws::open(gw.addr, TENANT_WS, token, None)),
    )
    .await;
    for (mut ws, ready) in opened {
        let mut online: std::collections::BTreeSet<String> = names(&ready)
            .into_iter()
            .filter(|(_, status)| status == "online")
            .map(|(id, _)| id)
            .collect();
        while online.len() < TEAM {
            let p = next_data(&mut ws, "presence", Duration::from_secs(5), |v| {
                v["type"] == "presence"
            })
            .await;
            let id = p["agentId"].as_str().unwrap().to_owned();
            if p["status"] == "online" {
                online.insert(id);
            } else {
                online.remove(&id);
            }
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_see_each_other_come_go_away_and_leave() {
    let gw = Gateway::start(&config_toml("")).await;
    let (mut ann, ready) = Ws::open(gw.addr, TENANT_WS, &agent("ann", "Ann"), None).await;
    assert_eq!(names(&ready), vec![("ann".into(), "online".into())]);
    let (mut bob, ready) = Ws::open(gw.addr, TENANT_WS, &agent("bob", "Bob"), None).await;
    assert_eq!(
        names(&ready),
        vec![
            ("ann".into(), "online".into()),
            ("bob".into(), "online".into())
        ]
    );
    let p = presence_of(&mut ann, "bob", Duration::from_secs(5)).await;
    assert_eq!(
        p,
        json!({"agentId": "bob", "name": "Bob", "status": "online"})
    );
    bob.send_json(&json!({"type": "presence", "status": "away"}))
        .await;
    let p = presence_of(&mut ann, "bob", Duration::from_secs(5)).await;
    assert_eq!(p["status"], "away");
    // A second socket of Bob's does not make him online again, nor does closing it
    // take him offline.
    let (bob2, ready) = Ws::open(gw.addr, TENANT_WS, &agent("bob", "Bob"), None).await;
    assert!(
        names(&ready).contains(&("bob".into(), "away".into())),
        "{ready}"
    );
    drop(bob2);
    bob.send_json(&json!({"type": "presence", "status": "online"}))
        .await;
    assert_eq!(
        presence_of(&mut ann, "bob", Duration::from_secs(5)).await["status"],
        "online"
    );
    // `offline` is not something one sets.
    bob.send_json(&json!({"type": "presence", "status": "offline"}))
        .await;
    let e = bob.next_of(&["error"]).await;
    assert_eq!(e["code"], "invalid_frame");
    // Visitors cannot send presence.
    let s = gw.client().session(PK).await;
    let (mut v, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    v.send_json(&json!({"type": "presence", "status": "online"}))
        .await;
    assert_eq!(v.next_of(&["error"]).await["code"], "invalid_frame");
    drop(bob);
    let p = presence_of(&mut ann, "bob", Duration::from_secs(5)).await;
    assert_eq!(
        p,
        json!({"agentId": "bob", "name": "Bob", "status": "offline"})
    );
    gw.shutdown().await;
}

fn require_agent_config() -> String {
    config_toml("[tenants.availability]\nmode = \"always\"\nrequire_agent = true\n")
}

async fn config_available(c: &Client) -> bool {
    let r = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["isAvailable"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_agent_makes_availability_follow_the_team() {
    let gw = Gateway::start(&require_agent_config()).await;
    let c = gw.client();
    // Another tenant without the setting is available as before.
    let other = c.get(&format!("/v1/config?pk={PK2}"), &[]).await;
    assert_eq!(other.json["isAvailable"], true);
    assert!(!config_available(&c).await, "nobody online");
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut ann, _) = Ws::open(gw.addr, TENANT_WS, &agent("ann", "Ann"), None).await;
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await,
        json!({"isAvailable": true, "availabilityMode": "always"})
    );
    // The config's cache does not delay it.
    assert!(config_available(&c).await);
    ann.send_json(&json!({"type": "presence", "status": "away"}))
        .await;
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        false
    );
    assert!(!config_available(&c).await, "away is not available");
    ann.send_json(&json!({"type": "presence", "status": "online"}))
        .await;
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        true
    );
    drop(ann);
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        false
    );
    assert!(!config_available(&c).await);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_agents_drop_out_within_30_s() {
    let Some(redis) = confab_store::redis::testing::RedisServer::start_or_skip(
        "a_killed_nodes_agents_drop_out_within_30_s",
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = require_agent_config()
        .replace("session_secret = \"test-session-secret\"\n", "")
        .replace(
            "store = \"memory\"",
            &format!("store = \"{}\"", redis.url()),
        );
    let cfg = dir.path().join("confab.toml");
    std::fs::write(&cfg, toml).unwrap();
    let a = Process::spawn(&cfg, &[]);
    let mut b = Process::spawn(&cfg, &[]);
    let ca = a.client();
    assert!(!config_available(&ca).await);
    // A visitor and an agent on node A; another agent on node B.
    let s = ca.session(PK).await;
    let (mut visitor, _) = Ws::open(a.addr, VISITOR_WS, &s.token, None).await;
    let (mut ann, _) = Ws::open(a.addr, TENANT_WS, &agent("ann", "Ann"), None).await;
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        true
    );
    ann.send_json(&json!({"type": "presence", "status": "away"}))
        .await;
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        false
    );
    let (_bob, ready) = Ws::open(b.addr, TENANT_WS, &agent("bob", "Bob"), None).await;
    assert!(
        names(&ready).contains(&("ann".into(), "away".into())),
        "{ready}"
    );
    // Node A learns of Bob on node B.
    assert_eq!(
        presence_of(&mut ann, "bob", Duration::from_secs(5)).await["status"],
        "online"
    );
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        true
    );
    assert!(config_available(&ca).await);
    // Node B dies without a word: Bob drops out within 30 s.
    b.kill9();
    let killed = std::time::Instant::now();
    assert_eq!(
        presence_of(&mut ann, "bob", Duration::from_secs(30)).await["status"],
        "offline"
    );
    assert_eq!(
        availability(&mut visitor, Duration::from_secs(5)).await["isAvailable"],
        false
    );
    assert!(killed.elapsed() < Duration::from_secs(30));
    assert!(!config_available(&ca).await);
}
