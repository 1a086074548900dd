//! Webhooks against real receivers (HTTP servers on loopback that verify signatures and
//! fail on command): every event in offset order, signed, retried with growing gaps and a
//! stable delivery id, the `events` filter, the status route, retention skips, `kill -9`
//! on SQLite, and two nodes on a real `redis-server` with the delivering node killed.

mod common;
#[path = "webhooks/receiver.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use confab_gateway::service::webhooks::WebhookTiming;
use confab_gateway::Options;
use confab_store::Retention;
use receiver::{Hit, Mode, Receiver};
use serde_json::{json, Value};

const SECRET: &str = "whsec_test_0123456789";

fn hook(url: &str, events: Option<&[&str]>) -> String {
    let mut s = format!("[[tenants.webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n");
    if let Some(list) = events {
        s.push_str(&format!("events = {}\n", json!(list)));
    }
    s
}

fn fast() -> Options {
    Options {
        webhooks: WebhookTiming {
            attempt_timeout: Duration::from_millis(700),
            first_retry: Duration::from_millis(150),
            max_retry: Duration::from_secs(2),
            lease: Duration::from_secs(3),
        },
        ..Options::default()
    }
}

/// Offsets of the 2xx deliveries, first occurrence of each, in arrival order.
fn delivered_offsets(hits: &[Hit]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    hits.iter()
        .filter(|h| h.answered.is_some_and(|s| (200..300).contains(&s)))
        .map(Hit::offset)
        .filter(|o| seen.insert(*o))
        .collect()
}

/// The tenant's last offset, through the polling API.
async fn last_offset(c: &Client) -> u64 {
    let mut after: Option<String> = None;
    let mut last = 0;
    loop {
        let r = c.tenant_events(SERVER_KEY, after.as_deref()).await;
        let events = r.json["events"].as_array().unwrap().clone();
        let Some(e) = events.last() else { return last };
        last = e["offset"].as_str().unwrap().parse().unwrap();
        after = Some(last.to_string());
    }
}

async fn webhooks_status(c: &Client) -> Value {
    webhooks_status_of(c, SERVER_KEY).await
}

async fn webhooks_status_of(c: &Client, key: &str) -> Value {
    let r = c.get_auth("/v1/tenant/webhooks", key).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

/// Waits (5 s at most) until webhook number `index`'s status satisfies `pred`; returns it.
async fn wait_status(c: &Client, index: usize, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let w = webhooks_status(c).await["webhooks"][index].clone();
        if pred(&w) {
            return w;
        }
        assert!(tokio::time::Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_in_order() {
    let rx = Receiver::start(SECRET).await;
    let gw = Gateway::start_with(&config_toml(&hook(&rx.url(), None)), fast()).await;
    let c = gw.client();
    // Three visitors writing at once: hundreds of events from concurrent sources.
    let mut tasks = Vec::new();
    for v in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let s = c.session(PK).await;
            for i in 0..60 {
                let r = c.send(&s, &format!("visitor {v} message {i}"), None).await;
                assert_eq!(r.status, 201, "{}", r.text);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "campaign:progress", "data": {"sent": 3}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let last = last_offset(&c).await;
    assert!(last >= 180, "only {last} events");
    rx.wait_for("every event", Duration::from_secs(30), |h| {
        delivered_offsets(h).len() as u64 == last
    })
    .await;
    let hits = rx.hits();
    assert_eq!(
        delivered_offsets(&hits),
        (1..=last).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    // The bodies are the tenant channel's events.
    let polled = c.tenant_events(SERVER_KEY, None).await.json["events"].clone();
    for h in &hits {
        assert!(h.signature_ok, "bad signature on {:?}", h.body);
        assert_eq!(h.header("content-type"), "application/json");
        assert_eq!(h.header("user-agent"), "Confab-Webhooks/1");
        assert_eq!(h.header("x-confab-event"), h.body["type"]);
        assert_eq!(h.header("x-confab-delivery"), h.body["id"]);
        assert_eq!(h.body["tenantId"], "acme");
        assert_ts(&h.body["createdAt"]);
        let o = h.offset();
        if let Some(p) = polled
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["offset"].as_str() == Some(o.to_string().as_str()))
        {
            assert_eq!(h.body["type"], p["type"]);
            assert_eq!(h.body["data"], p["data"]);
        }
    }
    let ids: BTreeSet<_> = hits.iter().map(|h| h.header("x-confab-delivery")).collect();
    assert_eq!(ids.len(), hits.len(), "one delivery id per event");
    assert!(hits.iter().any(|h| h.body["type"] == "campaign:progress"));
    // The status route agrees (the position is stored once the log is idle).
    let w = &wait_status(&c, 0, |w| {
        w["offset"].as_str() == Some(last.to_string().as_str())
    })
    .await;
    assert_eq!(w["url"], rx.url());
    assert_eq!(w["lag"], 0);
    assert_eq!(w["failing"], false);
    assert_eq!(w["lastStatus"], 200);
    assert_eq!(w["lastError"], Value::Null);
    assert_eq!(w["events"], Value::Null);
    assert_ts(&w["lastAttemptAt"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_growing_gaps_and_one_id() {
    let rx = Receiver::start(SECRET).await;
    let gw = Gateway::start_with(
        &without_auto_reply(&config_toml(&hook(&rx.url(), None))),
        fast(),
    )
    .await;
    let c = gw.client();
    rx.fail_next(4);
    let s = c.session(PK).await; // conversation:new
    assert_eq!(c.send(&s, "first", None).await.status, 201); // message:new
    assert_eq!(c.send(&s, "second", None).await.status, 201);
    rx.wait_for("4 failures then a success", Duration::from_secs(20), |h| {
        h.iter().filter(|h| h.answered == Some(200)).count() >= 1
    })
    .await;
    // While failing, the status route says so.
    let hits = rx.hits();
    let first: Vec<&Hit> = hits.iter().take(5).collect();
    assert!(
        first.iter().all(|h| h.offset() == 1),
        "later events wait for the first"
    );
    let ids: BTreeSet<_> = first
        .iter()
        .map(|h| h.header("x-confab-delivery"))
        .collect();
    assert_eq!(ids.len(), 1, "the same delivery id on every retry");
    let gaps: Vec<f64> = first
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    // 150 ms doubling, each gap within ±20 %: every gap is longer than the one before.
    for w in gaps.windows(2) {
        assert!(w[1] > w[0] * 1.2, "gaps do not grow: {gaps:?}");
    }
    assert!(gaps[0] >= 0.1, "retried too soon: {gaps:?}");
    rx.wait_for("all three events", Duration::from_secs(10), |h| {
        delivered_offsets(h) == vec![1, 2, 3]
    })
    .await;
    let st = webhooks_status(&c).await;
    assert_eq!(st["webhooks"][0]["failing"], false);
    assert_eq!(st["webhooks"][0]["lastStatus"], 200);
    let m = c.get("/metrics", &[]).await.text;
    assert!(
        m.contains(
            r#"confab_webhook_attempts_total{tenant="acme",webhook="0",outcome="failed"} 4"#
        ),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_time_out_and_errors_are_shown() {
    let rx = Receiver::start(SECRET).await;
    let gw = Gateway::start_with(
        &without_auto_reply(&config_toml(&hook(&rx.url(), None))),
        fast(),
    )
    .await;
    let c = gw.client();
    rx.set_mode(Mode::Hang);
    c.session(PK).await;
    rx.wait_for("two hung attempts", Duration::from_secs(10), |h| {
        h.len() >= 2
    })
    .await;
    let w = webhooks_status(&c).await["webhooks"][0].clone();
    assert_eq!(w["failing"], true, "{w}");
    assert_eq!(w["lastStatus"], Value::Null);
    assert_eq!(w["lastError"], "timed out");
    assert_eq!(w["lag"], 1);
    assert_eq!(w["offset"], "0");
    rx.set_mode(Mode::Status(503));
    rx.wait_for("a 503", Duration::from_secs(10), |h| {
        h.iter().any(|h| h.answered == Some(503))
    })
    .await;
    // The status is written after the attempt: wait for it.
    let w = wait_status(&c, 0, |w| w["lastStatus"] == 503).await;
    assert_eq!(w["lastError"], "HTTP 503");
    // A redirect is not followed and not a delivery.
    rx.set_mode(Mode::Status(307));
    rx.wait_for("a 307", Duration::from_secs(10), |h| {
        h.iter().any(|h| h.answered == Some(307))
    })
    .await;
    rx.set_mode(Mode::Ok);
    rx.wait_for("delivered", Duration::from_secs(10), |h| {
        delivered_offsets(h) == vec![1]
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_and_back_on_its_port_gets_everything() {
    let rx = Receiver::start(SECRET).await;
    let gw = Gateway::start_with(&config_toml(&hook(&rx.url(), None)), fast()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    rx.wait_for("the first event", Duration::from_secs(10), |h| {
        !delivered_offsets(h).is_empty()
    })
    .await;
    let parked = rx.stop().await;
    for i in 0..20 {
        assert_eq!(c.send(&s, &format!("m{i}"), None).await.status, 201);
    }
    // Connection refused meanwhile.
    let w = wait_status(&c, 0, |w| w["failing"] == true).await;
    assert_eq!(w["lastError"], "connection failed", "{w}");
    assert_eq!(w["lastStatus"], Value::Null);
    assert!(w["lag"].as_u64().unwrap() >= 20, "{w}");
    let rx = Receiver::restart(parked).await;
    let last = last_offset(&c).await;
    rx.wait_for("everything", Duration::from_secs(20), |h| {
        delivered_offsets(h).len() as u64 == last
    })
    .await;
    assert_eq!(
        delivered_offsets(&rx.hits()),
        (1..=last).collect::<Vec<_>>()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_picks_event_types_and_the_lag_counts_them() {
    let all = Receiver::start(SECRET).await;
    let some = Receiver::start(SECRET).await;
    let hooks = format!(
        "{}{}",
        hook(&all.url(), None),
        hook(
            &some.url(),
            Some(&["conversation:new", "campaign:progress"])
        )
    );
    let gw = Gateway::start_with(&config_toml(&hooks), fast()).await;
    let c = gw.client();
    let s = c.session(PK).await;
    for i in 0..5 {
        assert_eq!(c.send(&s, &format!("m{i}"), None).await.status, 201);
    }
    let r = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "campaign:progress", "data": {}}),
        )
        .await;
    assert_eq!(r.status, 202);
    let last = last_offset(&c).await;
    all.wait_for("everything", Duration::from_secs(10), |h| {
        delivered_offsets(h).len() as u64 == last
    })
    .await;
    some.wait_for("two events", Duration::from_secs(10), |h| {
        delivered_offsets(h).len() == 2
    })
    .await;
    let types: Vec<Value> = some
        .delivered()
        .iter()
        .map(|h| h.body["type"].clone())
        .collect();
    assert_eq!(
        types,
        vec![json!("conversation:new"), json!("campaign:progress")]
    );
    // Its position passes the events it does not want.
    let w = wait_status(&c, 1, |w| {
        w["offset"].as_str() == Some(last.to_string().as_str())
    })
    .await;
    assert_eq!(
        w["events"],
        json!(["conversation:new", "campaign:progress"])
    );
    assert_eq!(w["lag"], 0);
    // Lag counts only the events of the filter.
    some.set_mode(Mode::Status(500));
    all.set_mode(Mode::Status(500));
    for i in 0..3 {
        assert_eq!(c.send(&s, &format!("n{i}"), None).await.status, 201);
    }
    let r = c
        .post_auth(
            "/v1/tenant/events",
            SERVER_KEY,
            &json!({"type": "campaign:progress", "data": {}}),
        )
        .await;
    assert_eq!(r.status, 202);
    let st = webhooks_status(&c).await;
    assert_eq!(st["webhooks"][1]["lag"], 1, "{st}");
    assert!(st["webhooks"][0]["lag"].as_u64().unwrap() >= 4, "{st}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_route_needs_the_server_key() {
    let rx = Receiver::start(SECRET).await;
    let gw = Gateway::start_with(&config_toml(&hook(&rx.url(), None)), fast()).await;
    let c = gw.client();
    let agent = agent_jwt(AGENT_SECRET, "acme", "agent-1");
    assert_error(
        &c.get_auth("/v1/tenant/webhooks", &agent).await,
        403,
        "forbidden",
    );
    assert_error(
        &c.get("/v1/tenant/webhooks", &[]).await,
        401,
        "invalid_credentials",
    );
    // Another tenant sees its own (none).
    let other = webhooks_status_of(&c, SERVER_KEY2).await;
    assert_eq!(other, json!({"webhooks": []}));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_leave_retention_first_are_skipped_and_counted() {
    let rx = Receiver::start(SECRET).await;
    rx.set_mode(Mode::Status(500));
    let options = Options {
        retention: Retention {
            min_events: 3,
            min_age_ms: 0,
        },
        maintenance_every: Duration::from_millis(100),
        ..fast()
    };
    let gw = Gateway::start_with(
        &without_auto_reply(&config_toml(&hook(&rx.url(), None))),
        options,
    )
    .await;
    let c = gw.client();
    let s = c.session(PK).await;
    for i in 0..9 {
        assert_eq!(c.send(&s, &format!("m{i}"), None).await.status, 201);
    }
    // Offset 1 is retried while maintenance drops everything but the last 3 events.
    rx.wait_for("a few failures", Duration::from_secs(10), |h| h.len() >= 3)
        .await;
    rx.set_mode(Mode::Ok);
    rx.wait_for("the retained tail", Duration::from_secs(20), |h| {
        delivered_offsets(h).last() == Some(&10)
    })
    .await;
    let got = delivered_offsets(&rx.hits());
    assert!(got.ends_with(&[8, 9, 10]), "{got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    let m = c.get("/metrics", &[]).await.text;
    let skipped: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"confab_webhook_skipped_events_total{tenant="acme",webhook="0"} "#)
        })
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        skipped as usize + got.len(),
        10,
        "{got:?}, {skipped} skipped"
    );
    gw.shutdown().await;
}

#[test]
fn bad_webhooks_are_refused_at_start() {
    for (hook_toml, complaint) in [
        (
            format!("[[tenants.webhooks]]\nurl = \"ftp://x.example/h\"\nsecret = \"{SECRET}\"\n"),
            "only http",
        ),
        (
            "[[tenants.webhooks]]\nurl = \"https://x.example/h\"\nsecret = \"short\"\n".into(),
            "at least 16",
        ),
        (
            "[[tenants.webhooks]]\nurl = \"not a url\"\nsecret = \"0123456789abcdef\"\n".into(),
            "not a url",
        ),
        (
            format!(
                "{}events = [\"message:delta\"]\n",
                hook("https://x.example/h", None)
            ),
            "ephemeral",
        ),
        (
            format!("{}events = [\"Nope\"]\n", hook("https://x.example/h", None)),
            "not an event type",
        ),
        (
            format!("{}events = []\n", hook("https://x.example/h", None)),
            "events is empty",
        ),
        (
            format!(
                "{}{}",
                hook("https://x.example/h", None),
                hook("https://x.example/h", None)
            ),
            "twice",
        ),
    ] {
        let c = confab_gateway::Config::from_toml(&config_toml(&hook_toml)).unwrap();
        let e = c.check().unwrap_err();
        assert!(e.contains("webhooks") && e.contains(complaint), "{e}");
    }
}

/// The config of a `confab` process with a webhook, on `store`.
fn process_config(dir: &std::path::Path, store: &str, url: &str) -> std::path::PathBuf {
    let toml = config_toml(&hook(url, None))
        .replace("session_secret = \"test-session-secret\"\n", "")
        .replace("store = \"memory\"", &format!("store = \"{store}\""));
    let path = dir.join("confab.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_sqlite_resumes_from_the_stored_position() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(SECRET).await;
    let store = format!("sqlite:{}", dir.path().join("data/confab.db").display());
    let cfg = process_config(dir.path(), &store, &rx.url());
    let mut p = Process::spawn(&cfg, &[]);
    let c = p.client();
    let s = c.session(PK).await;
    for i in 0..10 {
        assert_eq!(c.send(&s, &format!("before {i}"), None).await.status, 201);
    }
    let first = last_offset(&c).await;
    rx.wait_for("the first batch", Duration::from_secs(10), |h| {
        delivered_offsets(h).len() as u64 == first
    })
    .await;
    // Now undelivered events pile up behind a failing receiver, and the node dies.
    rx.set_mode(Mode::Status(500));
    for i in 0..10 {
        assert_eq!(c.send(&s, &format!("pending {i}"), None).await.status, 201);
    }
    let last = last_offset(&c).await;
    rx.wait_for("a failed attempt", Duration::from_secs(10), |h| {
        h.iter().any(|h| h.answered == Some(500))
    })
    .await;
    p.kill9();
    rx.set_mode(Mode::Ok);
    let p = Process::spawn(&cfg, &[]);
    rx.wait_for(
        "everything after the restart",
        Duration::from_secs(30),
        |h| delivered_offsets(h).len() as u64 == last,
    )
    .await;
    assert_eq!(
        delivered_offsets(&rx.hits()),
        (1..=last).collect::<Vec<_>>()
    );
    // Nothing delivered before the kill was sent again.
    let twice = rx
        .delivered()
        .iter()
        .filter(|h| h.offset() <= first)
        .count();
    assert_eq!(twice as u64, first, "delivered events were sent again");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_one_delivers_and_the_other_takes_over() {
    let Some(redis) = confab_store::redis::testing::RedisServer::start_or_skip(
        "two_nodes_on_redis_one_delivers_and_the_other_takes_over",
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(SECRET).await;
    let cfg = process_config(dir.path(), &redis.url(), &rx.url());
    let mut a = Process::spawn(&cfg, &[]);
    let mut b = Process::spawn(&cfg, &[]);
    let (ca, cb) = (a.client(), b.client());
    let s = ca.session(PK).await;
    for i in 0..10 {
        let c = if i % 2 == 0 { &ca } else { &cb };
        assert_eq!(c.send(&s, &format!("m{i}"), None).await.status, 201);
    }
    let first = last_offset(&ca).await;
    rx.wait_for("the first batch", Duration::from_secs(20), |h| {
        delivered_offsets(h).len() as u64 == first
    })
    .await;
    let delivering = |p: &Process| {
        p.log
            .lock()
            .iter()
            .any(|l| l.contains("delivering webhook"))
    };
    assert!(delivering(&a) ^ delivering(&b), "exactly one node delivers");
    // Kill the delivering node while events are pending behind a failing receiver.
    rx.set_mode(Mode::Status(500));
    let (survivor, dead) = if delivering(&a) {
        (&cb, &mut a)
    } else {
        (&ca, &mut b)
    };
    for i in 0..10 {
        assert_eq!(
            survivor
                .send(&s, &format!("pending {i}"), None)
                .await
                .status,
            201
        );
    }
    rx.wait_for("a failed attempt", Duration::from_secs(10), |h| {
        h.iter().any(|h| h.answered == Some(500))
    })
    .await;
    dead.kill9();
    let killed_at = std::time::Instant::now();
    rx.set_mode(Mode::Ok);
    let last = last_offset(survivor).await;
    rx.wait_for(
        "everything, from the survivor",
        Duration::from_secs(30),
        |h| delivered_offsets(h).len() as u64 == last,
    )
    .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(16), "takeover took {took:?}");
    assert_eq!(
        delivered_offsets(&rx.hits()),
        (1..=last).collect::<Vec<_>>()
    );
}
