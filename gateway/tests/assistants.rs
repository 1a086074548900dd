//! Assistants (SPEC "Assistants — AI and bot replies", docs/assistants.md) against real
//! upstreams that the tests start on loopback (`assistants/upstream.rs`): an
//! OpenAI-compatible server streaming SSE and a tenant's webhook bot answering JSON or
//! SSE. Covers both dialects (the request, the signature, the stored reply), streaming on
//! both channels and resume without deltas, every failure mode ending in the safe
//! fallback (never a partial reply) and the circuit breaker, coalescing, handoff each way,
//! `when_unavailable`, sessions and config, `awaitReply`, intents, voice, an owed reply
//! across the SIGKILL of the streaming node (two nodes on a real `redis-server`) and across
//! a restart on SQLite, and the configs that must be refused.

mod common;
#[path = "assistants/upstream.rs"]
mod upstream;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use upstream::{dead_url, Script, Step, Upstream, STREAM_MODEL, TOTAL_TOKENS};

const VISITOR_WS: &str = "/v1/visitor/ws";
const TENANT_WS: &str = "/v1/tenant/ws";
const FALLBACK: &str = "Sorry, I can't answer right now. A person from our team will reply here.";
const OPENAI_KEY: &str = "sk-test-0123456789";
const BOT_KEY: &str = "bot-signing-key-0123456789";
const SYSTEM_PROMPT: &str = "You answer questions about Acme's anvils.";

// ---------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------

/// "ava" → "Ava": the assistants' names in these tests.
fn name_of(id: &str) -> String {
    let mut c = id.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// An `openai` assistant table (extra lines appended).
fn openai(id: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[tenants.assistants]]
id = "{id}"
name = "{name}"
kind = "openai"
url = "{url}"
api_key = "{OPENAI_KEY}"
model = "test-model"
system_prompt = "{SYSTEM_PROMPT}"
fallback_message = "{FALLBACK}"
{extra}
"#,
        name = name_of(id)
    )
}

/// A `webhook` assistant table (extra lines appended).
fn webhook(id: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[tenants.assistants]]
id = "{id}"
name = "{name}"
kind = "webhook"
url = "{url}"
api_key = "{BOT_KEY}"
fallback_message = "{FALLBACK}"
{extra}
"#,
        name = name_of(id)
    )
}

/// The test config (acme gets `tables`), without the auto-reply so counts are exact.
fn config(tables: &str) -> String {
    without_auto_reply(&config_toml(tables))
}

async fn start(tables: &str) -> (Gateway, Client) {
    let gw = Gateway::start(&config(tables)).await;
    let c = gw.client();
    (gw, c)
}

/// Where a gateway in these tests keeps its data.
#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Sqlite,
    Redis,
}

/// What must live as long as the gateway (its SQLite directory, its redis-server).
struct Backing {
    _dir: Option<tempfile::TempDir>,
    _redis: Option<confab_store::redis::testing::RedisServer>,
}

/// An in-process gateway on `store`; `None` when `redis-server` is not installed (the
/// skip is printed).
async fn start_on(store: Store, tables: &str, test: &str) -> Option<(Gateway, Client, Backing)> {
    let mut backing = Backing {
        _dir: None,
        _redis: None,
    };
    let url = match store {
        Store::Memory => "memory".to_owned(),
        Store::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join("confab.db").display());
            backing._dir = Some(dir);
            url
        }
        Store::Redis => {
            let redis = confab_store::redis::testing::RedisServer::start_or_skip(test).await?;
            let url = redis.url();
            backing._redis = Some(redis);
            url
        }
    };
    let toml = config(tables).replace("store = \"memory\"", &format!("store = \"{url}\""));
    let gw = Gateway::start(&toml).await;
    let c = gw.client();
    Some((gw, c, backing))
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn send(c: &Client, s: &Session, body: Value) -> Resp {
    c.post_auth("/v1/messages", &s.token, &body).await
}

/// A visitor message with `awaitReply`; asserts the 201.
async fn send_await(c: &Client, s: &Session, text: &str) -> Resp {
    let r = send(c, s, json!({"message": text, "awaitReply": true})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json.get("reply").is_some(), "no reply field: {}", r.text);
    r
}

async fn agent_reply(c: &Client, conv: &str, text: &str) -> Resp {
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{conv}/messages"),
            &acme_agent("ann"),
            &json!({"message": text, "clientMessageId": format!("agent-{text}")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r
}

async fn set_handler(c: &Client, conv: &str, handler: &str) -> Resp {
    c.post_auth(
        &format!("/v1/tenant/conversations/{conv}/handler"),
        SERVER_KEY,
        &json!({"handler": handler}),
    )
    .await
}

async fn conversation(c: &Client, conv: &str) -> Value {
    let r = c
        .get_auth(&format!("/v1/tenant/conversations/{conv}"), SERVER_KEY)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

fn is_bot(m: &Value) -> bool {
    m["author"]["kind"] == "bot"
}

async fn bot_messages(c: &Client, s: &Session) -> Vec<Value> {
    c.history(s).await.into_iter().filter(is_bot).collect()
}

/// Waits until the conversation holds at least `n` bot messages; returns them.
async fn wait_bot_messages(c: &Client, s: &Session, n: usize, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let bots = bot_messages(c, s).await;
        if bots.len() >= n {
            return bots;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} bot messages not stored within {within:?}; history: {:#}",
            json!(c.history(s).await)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads frames until `done` picks one; returns every frame read, that one last.
async fn frames_until(
    ws: &mut Ws,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_json_within(left).await {
            Some(v) => {
                let stop = done(&v);
                seen.push(v);
                if stop {
                    return seen;
                }
            }
            None => panic!(
                "{what} not seen within {within:?}; frames: {:#}",
                json!(seen)
            ),
        }
    }
}

fn is_bot_new(v: &Value) -> bool {
    v["type"] == "message:new" && is_bot(&v["data"])
}

fn is_handler_update(conv: &str, handler: &str) -> impl Fn(&Value) -> bool {
    let (conv, handler) = (conv.to_owned(), handler.to_owned());
    move |v: &Value| {
        v["type"] == "conversation:updated"
            && v["data"]["id"] == conv.as_str()
            && v["data"]["handler"] == handler.as_str()
    }
}

/// The `message:delta` frames among `frames`, checked to be ephemeral (no offset).
fn deltas(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message:delta")
        .map(|f| {
            assert!(f.get("offset").is_none(), "a delta has no offset: {f}");
            f["data"].clone()
        })
        .collect()
}

/// The non-empty delta texts.
fn texts(deltas: &[Value]) -> Vec<String> {
    deltas
        .iter()
        .map(|d| {
            d["delta"]
                .as_str()
                .unwrap_or_else(|| panic!("{d}"))
                .to_owned()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// Sends a ping and returns every frame up to the pong.
async fn frames_until_pong(ws: &mut Ws) -> Vec<Value> {
    ws.send_json(&json!({"type": "ping"})).await;
    frames_until(ws, "pong", Duration::from_secs(10), |v| v["type"] == "pong").await
}

/// `/metrics` lines of the assistants, for failure messages.
async fn assistant_metrics(c: &Client) -> String {
    let r = c.get("/metrics", &[]).await;
    r.text
        .lines()
        .filter(|l| l.starts_with("confab_assistant"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `name{k="v",…}` → (name, [k="v", …]).
fn split_series(s: &str) -> (&str, Vec<&str>) {
    match s.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (s, Vec::new()),
    }
}

/// The value of the series `query` (`name` or `name{k="v",…}`) in `/metrics`: the first
/// series of that name whose labels include the query's (others, e.g. `tenant`, may be
/// there too), if present.
async fn series(c: &Client, query: &str) -> Option<f64> {
    let (name, want) = split_series(query);
    let r = c.get("/metrics", &[]).await;
    assert_eq!(r.status, 200);
    r.text.lines().find_map(|l| {
        let (s, value) = l.rsplit_once(' ')?;
        let (n, labels) = split_series(s);
        (n == name && want.iter().all(|w| labels.contains(w)))
            .then(|| value.trim().parse().unwrap())
    })
}

async fn assert_series(c: &Client, name: &str, want: f64) {
    let got = series(c, name).await;
    assert_eq!(
        got,
        Some(want),
        "{name}; assistant metrics:\n{}",
        assistant_metrics(c).await
    );
}

/// The bot author of an assistant.
fn bot_author(id: &str) -> Value {
    json!({"kind": "bot", "id": id, "name": name_of(id)})
}

/// Checks the shape of a stored safe fallback by `id`.
fn assert_is_fallback(m: &Value, id: &str) {
    assert_eq!(m["body"], FALLBACK, "{m}");
    assert_eq!(m["author"], bot_author(id), "{m}");
    assert_eq!(m["direction"], "outbound", "{m}");
    assert_eq!(m["meta"]["mode"], "safe_fallback", "{m}");
}

// ---------------------------------------------------------------------------------------
// The openai dialect
// ---------------------------------------------------------------------------------------

/// The model gets no files, but a line per file tells it what was sent: a message of files
/// only is not an empty turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_reach_the_model_as_a_line_each() {
    let up = Upstream::start(Script::openai(&["Got it."])).await;
    let (gw, c) = start(&openai("ava", &up.url(), "")).await;
    let s = c.session(PK).await;
    let up_r = c
        .request(
            "POST",
            "/v1/attachments?filename=notes.txt",
            &[
                ("authorization", &s.bearer()),
                ("content-type", "text/plain"),
            ],
            Some(b"see attached text".to_vec()),
        )
        .await;
    assert_eq!(up_r.status, 201, "{}", up_r.text);
    let id = up_r.json["id"].as_str().unwrap().to_owned();
    let r = send(
        &c,
        &s,
        json!({"message": "", "attachments": [id], "awaitReply": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let chat = up.hits()[0].chat();
    assert_eq!(
        chat.last().unwrap(),
        &(
            "user".to_string(),
            "[attached file: notes.txt (text/plain, 17 bytes)]".to_string()
        ),
        "{chat:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_reply_streams_to_both_channels_then_is_stored() {
    let pieces = ["Hel", "lo", " there", "!"];
    let up = Upstream::start(Script::openai(&pieces)).await;
    let (gw, c) = start(&openai("ava", &up.url(), "context_messages = 3")).await;
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    // Neither another visitor nor another tenant's agents hear the stream.
    let other = c.session(PK).await;
    let (mut other_visitor, _) = Ws::open(gw.addr, VISITOR_WS, &other.token, None).await;
    let (mut globex_agent, _) = Ws::open(
        gw.addr,
        TENANT_WS,
        &agent_jwt(AGENT_SECRET2, "globex", "gus"),
        None,
    )
    .await;
    let r = send(&c, &s, json!({"message": "Do you sell anvils?"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let first_id = r.json["messageId"].as_str().unwrap().to_owned();

    let within = Duration::from_secs(10);
    let vframes = frames_until(
        &mut visitor,
        "the reply on the visitor channel",
        within,
        is_bot_new,
    )
    .await;
    let aframes = frames_until(
        &mut agent,
        "the reply on the tenant channel",
        within,
        is_bot_new,
    )
    .await;
    let stored = vframes.last().unwrap()["data"].clone();
    assert_eq!(stored["body"], "Hello there!");
    assert_eq!(stored["author"], bot_author("ava"));
    assert_eq!(stored["direction"], "outbound");
    assert_eq!(stored["conversationId"], s.conversation_id.as_str());
    assert_eq!(stored["meta"]["mode"], "ai", "{stored}");
    assert_eq!(
        stored["meta"]["tokens"], TOTAL_TOKENS,
        "usage total_tokens: {stored}"
    );
    assert_eq!(
        stored["meta"]["model"], STREAM_MODEL,
        "the stream's model: {stored}"
    );
    let stream_id = stored["meta"]["streamId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("meta.streamId: {stored}"))
        .to_owned();
    assert_eq!(
        aframes.last().unwrap()["data"],
        stored,
        "the same message for agents"
    );
    for (who, frames) in [("visitor", &vframes), ("agent", &aframes)] {
        let ds = deltas(frames);
        assert_eq!(texts(&ds), pieces, "{who}: every piece, in order");
        for d in &ds {
            assert_eq!(
                d["conversationId"],
                s.conversation_id.as_str(),
                "{who}: {d}"
            );
            assert_eq!(d["streamId"], stream_id.as_str(), "{who}: {d}");
            assert_eq!(d["author"], bot_author("ava"), "{who}: {d}");
        }
    }
    let history = c.history(&s).await;
    assert_eq!(history.len(), 2, "{:#}", json!(history));
    assert_eq!(history[1], stored, "the stored reply is what was delivered");
    for ws in [&mut other_visitor, &mut globex_agent] {
        let frames = frames_until_pong(ws).await;
        assert!(deltas(&frames).is_empty(), "{:#}", json!(frames));
    }

    // What the upstream received.
    let hits = up.hits();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.header("authorization"), format!("Bearer {OPENAI_KEY}"));
    assert!(hit.header("content-type").starts_with("application/json"));
    assert_eq!(hit.body["model"], "test-model");
    assert_eq!(hit.body["stream"], true);
    assert_eq!(hit.body["stream_options"]["include_usage"], true);
    let chat = hit.chat();
    assert_eq!(chat.len(), 2, "{chat:?}");
    assert_eq!(chat[0].0, "system");
    assert!(chat[0].1.contains(SYSTEM_PROMPT), "{chat:?}");
    assert_eq!(chat[1], ("user".into(), "Do you sell anvils?".into()));

    // An agent answers (the conversation goes to people), gives it back; the next request
    // carries the last 3 messages, oldest first, agent and bot as `assistant`.
    agent_reply(&c, &s.conversation_id, "Our anvils ship worldwide.").await;
    assert_eq!(set_handler(&c, &s.conversation_id, "bot").await.status, 200);
    assert_eq!(
        send(&c, &s, json!({"message": "And to Mars?"}))
            .await
            .status,
        201
    );
    wait_bot_messages(&c, &s, 2, within).await;
    let chat = up.hits()[1].chat();
    assert_eq!(chat[0].0, "system");
    assert_eq!(
        chat[1..].to_vec(),
        vec![
            ("assistant".to_owned(), "Hello there!".to_owned()),
            (
                "assistant".to_owned(),
                "Our anvils ship worldwide.".to_owned()
            ),
            ("user".to_owned(), "And to Mars?".to_owned()),
        ]
    );

    // Resuming never replays deltas: only the stored messages after `after`.
    let history = c.history(&s).await;
    let last_id = history.last().unwrap()["id"].clone();
    let (mut resumed, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, Some(&first_id)).await;
    let mut frames = frames_until(&mut resumed, "the replay", within, |v| {
        v["type"] == "message:new" && v["data"]["id"] == last_id
    })
    .await;
    frames.extend(frames_until_pong(&mut resumed).await);
    assert!(
        deltas(&frames).is_empty(),
        "replayed deltas: {:#}",
        json!(frames)
    );
    let replayed: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "message:new")
        .map(|f| &f["data"]["id"])
        .collect();
    let expected: Vec<&Value> = history[1..].iter().map(|m| &m["id"]).collect();
    assert_eq!(replayed, expected);
    let (mut agent2, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("bob"), Some("0")).await;
    let frames = frames_until_pong(&mut agent2).await;
    assert!(
        deltas(&frames).is_empty(),
        "replayed deltas: {:#}",
        json!(frames)
    );
    assert!(
        frames
            .iter()
            .any(|f| is_bot_new(f) && f["data"]["id"] == last_id),
        "the tenant replay has the stored replies: {:#}",
        json!(frames)
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The webhook dialect
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_json_answer_is_signed_and_stored_as_flow() {
    let bot = Upstream::start_signed(
        BOT_KEY,
        Script::json(json!({"reply": "Step one: pick an anvil.", "mode": "flow",
            "handoff": false, "metadata": {"step": "pick", "score": 3}})),
    )
    .await;
    let (gw, c) = start(&webhook("flowbot", &bot.bot_url(), "")).await;
    let s = c.session(PK).await;
    let r = send_await(&c, &s, "Hi bot").await;
    let reply = r.json["reply"].clone();
    assert_eq!(reply["body"], "Step one: pick an anvil.", "{reply}");
    assert_eq!(reply["author"], bot_author("flowbot"));
    assert_eq!(reply["meta"]["mode"], "flow");
    assert_eq!(
        reply["meta"]["metadata"],
        json!({"step": "pick", "score": 3})
    );
    let history = c.history(&s).await;
    assert_eq!(history.len(), 2, "{:#}", json!(history));
    assert_eq!(history[1], reply);

    let hit = &bot.hits()[0];
    assert!(
        hit.signature_ok,
        "signature {:?}",
        hit.header("x-confab-signature")
    );
    assert!(
        !upstream::signature_valid(
            b"another-key-0123456789",
            hit.header("x-confab-signature"),
            &hit.raw
        ),
        "the check is a check"
    );
    assert!(hit.header("content-type").starts_with("application/json"));
    assert_eq!(hit.header("x-confab-event"), "message:new");
    assert!(!hit.header("x-confab-delivery").is_empty());
    let b = &hit.body;
    assert_eq!(b["type"], "message:new", "{b}");
    assert_eq!(b["tenantId"], "acme");
    assert_eq!(b["assistantId"], "flowbot");
    assert_eq!(b["intent"], Value::Null);
    assert_eq!(b["conversation"]["id"], s.conversation_id.as_str());
    assert_eq!(b["conversation"]["assistantId"], "flowbot");
    assert_eq!(b["conversation"]["handler"], "bot");
    let msgs = b["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{b}");
    assert_eq!(msgs[0]["id"], r.json["messageId"]);
    assert_eq!(msgs[0]["body"], "Hi bot");
    assert_eq!(msgs[0]["author"]["kind"], "visitor");

    // The next one: the context ends with the new message, and a fresh delivery id.
    let r2 = send_await(&c, &s, "Second").await;
    assert_eq!(r2.json["reply"]["meta"]["mode"], "flow");
    let hits = bot.hits();
    assert_eq!(hits.len(), 2);
    assert!(hits[1].signature_ok);
    assert_ne!(
        hits[0].header("x-confab-delivery"),
        hits[1].header("x-confab-delivery")
    );
    let bodies: Vec<&Value> = hits[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, ["Hi bot", "Step one: pick an anvil.", "Second"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sse_answer_streams_then_is_stored() {
    let bot = Upstream::start_signed(
        BOT_KEY,
        Script::sse(&[
            json!({"delta": "Let me "}),
            json!({"delta": "check that."}),
            json!({"done": true, "mode": "ai", "handoff": false, "metadata": {"ticket": 7}}),
        ]),
    )
    .await;
    let (gw, c) = start(&webhook("flowbot", &bot.bot_url(), "")).await;
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    assert_eq!(
        send(&c, &s, json!({"message": "Where is my anvil?"}))
            .await
            .status,
        201
    );
    let within = Duration::from_secs(10);
    let vframes = frames_until(&mut visitor, "the reply", within, is_bot_new).await;
    let aframes = frames_until(&mut agent, "the reply", within, is_bot_new).await;
    let stored = vframes.last().unwrap()["data"].clone();
    assert_eq!(stored["body"], "Let me check that.");
    assert_eq!(stored["author"], bot_author("flowbot"));
    assert_eq!(stored["meta"]["mode"], "ai");
    assert_eq!(stored["meta"]["metadata"], json!({"ticket": 7}));
    let stream_id = stored["meta"]["streamId"].clone();
    assert!(stream_id.is_string(), "deltas were sent: {stored}");
    for frames in [&vframes, &aframes] {
        let ds = deltas(frames);
        assert_eq!(texts(&ds), ["Let me ", "check that."]);
        assert!(ds.iter().all(|d| d["streamId"] == stream_id), "{ds:?}");
    }
    assert!(bot.hits()[0].signature_ok);
    assert_eq!(c.history(&s).await.len(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_null_reply_is_deliberate_silence() {
    let silent = json!({"reply": null, "mode": "flow", "handoff": false, "metadata": {}});
    let bot = Upstream::start_signed(BOT_KEY, Script::json(silent.clone())).await;
    // A stream without any delta is silence too; then silence that hands over.
    bot.then(Script::json(silent));
    bot.then(Script::sse(&[
        json!({"done": true, "mode": "flow", "handoff": false, "metadata": {}}),
    ]));
    bot.then(Script::json(
        json!({"reply": null, "mode": "flow", "handoff": true, "metadata": {}}),
    ));
    let (gw, c) = start(&webhook("flowbot", &bot.bot_url(), "timeout_secs = 3")).await;
    let s = c.session(PK).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let mut took = Vec::new();
    for (i, text) in ["Just saying hi", "Still here"].into_iter().enumerate() {
        let t0 = std::time::Instant::now();
        let r = send_await(&c, &s, text).await;
        took.push(t0.elapsed());
        assert_eq!(r.json["reply"], Value::Null, "{}", r.text);
        assert_eq!(bot.hit_count(), i + 1, "the bot was asked");
    }
    let history = c.history(&s).await;
    assert_eq!(history.len(), 2, "nothing stored: {:#}", json!(history));
    assert!(history.iter().all(|m| m["author"]["kind"] == "visitor"));
    assert_eq!(
        conversation(&c, &s.conversation_id).await["handler"],
        "bot",
        "silence is no handoff"
    );
    assert_series(&c, "confab_assistant_replies_total{mode=\"silent\"}", 2.0).await;
    // Silence with `handoff: true`: nothing stored, the conversation goes to people.
    assert_eq!(
        send(&c, &s, json!({"message": "Human please"}))
            .await
            .status,
        201
    );
    frames_until(
        &mut agent,
        "conversation:updated (human)",
        Duration::from_secs(10),
        is_handler_update(&s.conversation_id, "human"),
    )
    .await;
    assert_eq!(
        conversation(&c, &s.conversation_id).await["handler"],
        "human"
    );
    assert_eq!(bot_messages(&c, &s).await.len(), 0);
    // awaitReply knew it at once, not when its wait (timeout_secs + 5 s) ran out.
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(3)),
        "awaitReply took {took:?} to report deliberate silence"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_handoff_stores_the_reply_and_hands_over() {
    let bot = Upstream::start_signed(
        BOT_KEY,
        Script::json(
            json!({"reply": "A person will take it from here.", "mode": "flow",
            "handoff": true, "metadata": {}}),
        ),
    )
    .await;
    let (gw, c) = start(&webhook("flowbot", &bot.bot_url(), "")).await;
    let s = c.session(PK).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let r = send_await(&c, &s, "I want a refund").await;
    assert_eq!(r.json["reply"]["body"], "A person will take it from here.");
    assert_eq!(r.json["reply"]["meta"]["mode"], "flow");
    frames_until(
        &mut agent,
        "conversation:updated (human)",
        Duration::from_secs(10),
        is_handler_update(&s.conversation_id, "human"),
    )
    .await;
    assert_eq!(
        conversation(&c, &s.conversation_id).await["handler"],
        "human"
    );
    // People answer now: the bot is not asked again.
    let r = send_await(&c, &s, "Hello?").await;
    assert_eq!(r.json["reply"], Value::Null);
    assert_eq!(bot.hit_count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Failure is never silence
// ---------------------------------------------------------------------------------------

enum Dialect {
    OpenAi,
    Webhook,
}

/// A visitor message to an assistant behind `script` (or behind a dead port when `None`),
/// with `timeout_secs = 1`: the fallback is stored (never a partial reply), the handler
/// becomes human, the agents hear of it, and the fallback is counted under `cause`.
/// `streamed` are the pieces the upstream sends before failing (seen as deltas).
async fn falls_back(dialect: Dialect, script: Option<Script>, cause: &str, streamed: &[&str]) {
    let up = match script {
        Some(s) => Some(match dialect {
            Dialect::OpenAi => Upstream::start(s).await,
            Dialect::Webhook => Upstream::start_signed(BOT_KEY, s).await,
        }),
        None => None,
    };
    let url = match (&up, &dialect) {
        (None, _) => dead_url(),
        (Some(u), Dialect::OpenAi) => u.url(),
        (Some(u), Dialect::Webhook) => u.bot_url(),
    };
    let table = match dialect {
        Dialect::OpenAi => openai("ava", &url, "timeout_secs = 1"),
        Dialect::Webhook => webhook("ava", &url, "timeout_secs = 1"),
    };
    let (gw, c) = start(&table).await;
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    // The visitor's message is acknowledged whatever the assistant does.
    let r = send(&c, &s, json!({"message": "Are you there?"})).await;
    assert_eq!(r.status, 201, "{}", r.text);

    let within = Duration::from_secs(10);
    let vframes = frames_until(&mut visitor, "the fallback", within, is_bot_new).await;
    let fallback = vframes.last().unwrap()["data"].clone();
    assert_is_fallback(&fallback, "ava");
    assert_eq!(
        texts(&deltas(&vframes)),
        streamed,
        "the pieces streamed before the failure"
    );
    // Pieces that went out name their stream, and the fallback names it too, so that a
    // client replaces the draft they made with the fallback.
    let stream = deltas(&vframes).first().map(|d| d["streamId"].clone());
    assert_eq!(
        fallback["meta"].get("streamId").cloned(),
        stream,
        "{fallback}"
    );
    // The agents see the fallback and the handoff (in either order).
    let mut aframes = Vec::new();
    let human = is_handler_update(&s.conversation_id, "human");
    while !(aframes.iter().any(is_bot_new) && aframes.iter().any(&human)) {
        aframes.extend(
            frames_until(
                &mut agent,
                "the fallback and conversation:updated (human)",
                within,
                |v| is_bot_new(v) || human(v),
            )
            .await,
        );
    }
    let history = c.history(&s).await;
    assert_eq!(history.len(), 2, "no partial reply: {:#}", json!(history));
    assert_eq!(history[1], fallback);
    for piece in streamed {
        assert!(
            !history[1]["body"].as_str().unwrap().contains(piece),
            "partial {piece:?} stored"
        );
    }
    let conv = conversation(&c, &s.conversation_id).await;
    assert_eq!(conv["handler"], "human", "{conv}");
    assert_series(
        &c,
        &format!("confab_assistant_fallbacks_total{{cause=\"{cause}\"}}"),
        1.0,
    )
    .await;
    assert_series(
        &c,
        "confab_assistant_replies_total{mode=\"safe_fallback\"}",
        1.0,
    )
    .await;
    if let Some(up) = &up {
        assert!(up.hit_count() >= 1);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_falls_back() {
    falls_back(Dialect::OpenAi, None, "connect", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_falls_back() {
    falls_back(Dialect::OpenAi, Some(Script::status(500)), "status", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_times_out() {
    falls_back(Dialect::OpenAi, Some(Script::hang()), "timeout", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_midway_times_out_and_nothing_partial_is_stored() {
    let script = Script::openai_then(&["Our anvils ", "are"], vec![Step::Stall]);
    falls_back(
        Dialect::OpenAi,
        Some(script),
        "timeout",
        &["Our anvils ", "are"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_turning_to_garbage_is_malformed() {
    let script = Script::openai_then(
        &["Half an "],
        vec![Step::Send(
            "data: {\"choices\": [{\"delta\": {\"content\": oops\n\n".into(),
        )],
    );
    falls_back(Dialect::OpenAi, Some(script), "malformed", &["Half an "]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stream_falls_back() {
    // A role chunk, a finish, usage and [DONE]: no content at all.
    falls_back(Dialect::OpenAi, Some(Script::openai(&[])), "empty", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_error_status_falls_back() {
    falls_back(Dialect::Webhook, Some(Script::status(503)), "status", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bad_json_falls_back() {
    let script = Script::raw("application/json", "{\"reply\": \"unterminated");
    falls_back(Dialect::Webhook, Some(script), "malformed", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_other_content_type_falls_back() {
    let script = Script::raw("text/html", "<p>Hello</p>");
    falls_back(Dialect::Webhook, Some(script), "malformed", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_stream_without_done_falls_back() {
    let script = Script::sse(&[json!({"delta": "Almost "}), json!({"delta": "finished"})]);
    falls_back(
        Dialect::Webhook,
        Some(script),
        "malformed",
        &["Almost ", "finished"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_secs_bounds_the_whole_reply_not_each_read() {
    // A piece every 250 ms for 3 s: every read is quick, the whole is too slow.
    let mut steps = Vec::new();
    for i in 0..12 {
        steps.push(Step::Sleep(Duration::from_millis(250)));
        steps.push(upstream::openai_piece(&format!("w{i} ")));
    }
    steps.extend(upstream::openai_end(TOTAL_TOKENS));
    let up = Upstream::start(Script::openai_then(&[], steps)).await;
    let (gw, c) = start(&openai("ava", &up.url(), "timeout_secs = 1")).await;
    let s = c.session(PK).await;
    let t0 = std::time::Instant::now();
    let r = send_await(&c, &s, "slowly please").await;
    let took = t0.elapsed();
    assert_is_fallback(&r.json["reply"], "ava");
    assert!(
        took < Duration::from_millis(2500),
        "the fallback came after {took:?}"
    );
    assert_series(
        &c,
        "confab_assistant_fallbacks_total{cause=\"timeout\"}",
        1.0,
    )
    .await;
    assert_eq!(bot_messages(&c, &s).await.len(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_five_consecutive_failures() {
    let up = Upstream::start(Script::status(500)).await;
    let (gw, c) = start(&openai("ava", &up.url(), "")).await;
    for i in 1..=6 {
        let s = c.session(PK).await;
        let r = send_await(&c, &s, &format!("question {i}")).await;
        assert_is_fallback(&r.json["reply"], "ava");
        assert_eq!(
            conversation(&c, &s.conversation_id).await["handler"],
            "human"
        );
        assert_eq!(
            up.hit_count(),
            i.min(5),
            "after {i} messages; the 6th must not reach the upstream"
        );
    }
    assert_series(
        &c,
        "confab_assistant_fallbacks_total{cause=\"status\"}",
        5.0,
    )
    .await;
    assert_series(
        &c,
        "confab_assistant_fallbacks_total{cause=\"circuit_open\"}",
        1.0,
    )
    .await;
    assert_series(&c, "confab_assistant_circuit_open{assistant=\"ava\"}", 1.0).await;
    assert_series(
        &c,
        "confab_assistant_replies_total{mode=\"safe_fallback\"}",
        6.0,
    )
    .await;
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// One reply in flight; messages meanwhile are answered together
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_reply_streams_are_answered_together() {
    coalescing_on(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_reply_streams_are_answered_together_on_sqlite() {
    coalescing_on(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_reply_streams_are_answered_together_on_redis() {
    coalescing_on(Store::Redis).await;
}

/// Three visitor messages, the 2nd and 3rd sent while the 1st one's reply streams: two
/// replies, the second made from both.
async fn coalescing_on(store: Store) {
    let up = Upstream::start(Script::openai(&["Answer ", "two."])).await;
    up.then(Script::openai_gated(&["Answer "], "first", &["one."]));
    let Some((gw, c, _backing)) =
        start_on(store, &openai("ava", &up.url(), ""), "coalescing_on_redis").await
    else {
        return;
    };
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    assert_eq!(
        send(&c, &s, json!({"message": "first question"}))
            .await
            .status,
        201
    );
    // The first reply is streaming (and held by the upstream) …
    up.wait_hits(1, Duration::from_secs(10)).await;
    frames_until(
        &mut visitor,
        "the first delta",
        Duration::from_secs(10),
        |v| v["type"] == "message:delta",
    )
    .await;
    // … while two more arrive, the first of them waiting for its reply.
    let waiting = {
        let (c, s) = (c.clone(), s.clone());
        tokio::spawn(async move {
            send(
                &c,
                &s,
                json!({"message": "second question", "awaitReply": true}),
            )
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c
        .history(&s)
        .await
        .iter()
        .any(|m| m["body"] == "second question")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second question not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        send(&c, &s, json!({"message": "third question"}))
            .await
            .status,
        201
    );
    assert_eq!(up.hit_count(), 1, "one reply in flight per conversation");
    up.open("first");
    let bots = wait_bot_messages(&c, &s, 2, Duration::from_secs(10)).await;
    assert_eq!(bots[0]["body"], "Answer one.");
    assert_eq!(bots[1]["body"], "Answer two.");
    let hits = up.hits();
    assert_eq!(hits.len(), 2, "exactly two requests");
    let users = |h: &upstream::Hit| -> Vec<String> {
        h.chat()
            .into_iter()
            .filter(|(role, _)| role == "user")
            .map(|(_, text)| text)
            .collect()
    };
    assert_eq!(users(&hits[0]), ["first question"]);
    eprintln!("the coalesced request: {:?}", hits[1].chat());
    let second = users(&hits[1]);
    assert!(
        second.contains(&"second question".to_owned())
            && second.contains(&"third question".to_owned()),
        "the second reply answers both: {:?}",
        hits[1].chat()
    );
    assert!(
        hits[1]
            .chat()
            .contains(&("assistant".into(), "Answer one.".into())),
        "the second request starts after the first reply is stored: {:?}",
        hits[1].chat()
    );
    // Exactly two replies: once everything is answered nothing more is owed.
    let history = c.history(&s).await;
    let kinds: Vec<&str> = history
        .iter()
        .map(|m| m["author"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["visitor", "visitor", "visitor", "bot", "bot"],
        "{:#}",
        json!(history)
    );
    // The second question's reply is the one that answers it, not the first reply
    // (stored after it, but made without it).
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json["reply"]["body"], "Answer two.",
        "awaitReply of a coalesced message: {}",
        r.text
    );
    assert_series(&c, "confab_assistant_replies_total{mode=\"ai\"}", 2.0).await;
    assert_eq!(up.hit_count(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_request_ends_with_the_visitors_turn() {
    // Reply 1 is stored after message 2 (its id is later), but it answers message 1: the
    // next request must still end with the visitor's turn, or an OpenAI-compatible
    // server continues the assistant's last message instead of answering.
    let up = Upstream::start(Script::openai(&["Answer ", "two."])).await;
    up.then(Script::openai_gated(&["Answer "], "first", &["one."]));
    let (gw, c) = start(&openai("ava", &up.url(), "")).await;
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    assert_eq!(
        send(&c, &s, json!({"message": "first question"}))
            .await
            .status,
        201
    );
    frames_until(
        &mut visitor,
        "the first delta",
        Duration::from_secs(10),
        |v| v["type"] == "message:delta",
    )
    .await;
    assert_eq!(
        send(&c, &s, json!({"message": "second question"}))
            .await
            .status,
        201
    );
    up.open("first");
    wait_bot_messages(&c, &s, 2, Duration::from_secs(10)).await;
    let chat = up.hits()[1].chat();
    let at = |m: (&str, &str)| {
        chat.iter()
            .position(|(r, t)| r == m.0 && t == m.1)
            .unwrap_or_else(|| panic!("{m:?} missing: {chat:?}"))
    };
    assert!(
        at(("user", "first question")) < at(("assistant", "Answer one."))
            && at(("assistant", "Answer one.")) < at(("user", "second question")),
        "each reply after the messages it answers: {chat:?}"
    );
    assert_eq!(chat.last().unwrap().0, "user", "{chat:?}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Handoff
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reply_takes_over_and_the_bot_stops_answering() {
    let up = Upstream::start(Script::openai(&["Bot ", "answer."])).await;
    let (gw, c) = start(&openai("ava", &up.url(), "")).await;
    let s = c.session(PK).await;
    let conv = s.conversation_id.clone();
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let r = send_await(&c, &s, "Hello").await;
    assert_eq!(r.json["reply"]["body"], "Bot answer.");
    // A bot message the tenant's backend posts is no agent's reply: the bot keeps it.
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{conv}/messages"),
            SERVER_KEY,
            &json!({"message": "Your order #12 shipped.", "author": {"kind": "bot", "name": "Orders"},
                "meta": {"mode": "flow"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(conversation(&c, &conv).await["handler"], "bot");
    let r = send_await(&c, &s, "Great").await;
    assert_eq!(r.json["reply"]["body"], "Bot answer.");
    assert_eq!(up.hit_count(), 2);
    // An agent's reply over the tenant channel takes over.
    agent
        .send_json(
            &json!({"type": "reply", "conversationId": conv, "message": "Ann here, I'll take it.",
            "clientMessageId": "ann-1"}),
        )
        .await;
    let frames = frames_until(
        &mut agent,
        "conversation:updated (human)",
        Duration::from_secs(10),
        is_handler_update(&conv, "human"),
    )
    .await;
    assert!(
        frames.last().unwrap().get("offset").is_some(),
        "a stored event"
    );
    assert_eq!(conversation(&c, &conv).await["handler"], "human");
    let r = send_await(&c, &s, "Thanks Ann").await;
    assert_eq!(r.json["reply"], Value::Null, "people answer now");
    assert_eq!(up.hit_count(), 2, "the bot is not asked again");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_still_streaming_when_people_take_over_is_dropped() {
    dropped_on(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_still_streaming_when_people_take_over_is_dropped_on_sqlite() {
    dropped_on(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_still_streaming_when_people_take_over_is_dropped_on_redis() {
    dropped_on(Store::Redis).await;
}

/// An agent replies while the bot's reply streams: the reply is not stored.
async fn dropped_on(store: Store) {
    let up = Upstream::start(Script::openai(&["Later."])).await;
    up.then(Script::openai_gated(
        &["The bot was "],
        "g",
        &["saying this."],
    ));
    let Some((gw, c, _backing)) =
        start_on(store, &openai("ava", &up.url(), ""), "dropped_on_redis").await
    else {
        return;
    };
    let s = c.session(PK).await;
    let (mut visitor, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    assert_eq!(send(&c, &s, json!({"message": "Hi"})).await.status, 201);
    frames_until(
        &mut visitor,
        "the first delta",
        Duration::from_secs(10),
        |v| v["type"] == "message:delta",
    )
    .await;
    agent_reply(&c, &s.conversation_id, "Ann takes this one.").await;
    up.open("g");
    // The upstream's answer was read to its end; nothing of it is stored, and the
    // conversation stays with people.
    up.wait_finished(1, Duration::from_secs(10)).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        assert_eq!(bot_messages(&c, &s).await, Vec::<Value>::new());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        conversation(&c, &s.conversation_id).await["handler"],
        "human"
    );
    assert_eq!(send_await(&c, &s, "ok").await.json["reply"], Value::Null);
    assert_eq!(up.hit_count(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_reply_ends_when_people_take_over() {
    let up = Upstream::start(Script::openai(&["Later."])).await;
    up.then(Script::openai_gated(
        &["The bot was "],
        "g",
        &["saying this."],
    ));
    let (gw, c) = start(&openai("ava", &up.url(), "timeout_secs = 5")).await;
    let s = c.session(PK).await;
    let waiting = {
        let (c, s) = (c.clone(), s.clone());
        tokio::spawn(
            async move { send(&c, &s, json!({"message": "Hi", "awaitReply": true})).await },
        )
    };
    up.wait_hits(1, Duration::from_secs(10)).await;
    agent_reply(&c, &s.conversation_id, "Ann takes this one.").await;
    up.open("g");
    let t0 = std::time::Instant::now();
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["reply"], Value::Null, "{}", r.text);
    // Once the reply is dropped nothing more can come: not when the wait (timeout_secs +
    // 5 s) runs out.
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "awaitReply answered {:?} after the dropped reply",
        t0.elapsed()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_route_switches_both_ways() {
    let up = Upstream::start(Script::openai(&["Back ", "again."])).await;
    let (gw, c) = start(&openai("ava", &up.url(), "")).await;
    let s = c.session(PK).await;
    let conv = s.conversation_id.clone();
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let within = Duration::from_secs(10);

    let r = set_handler(&c, &conv, "human").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["id"], conv.as_str());
    assert_eq!(r.json["handler"], "human");
    assert_eq!(r.json["assistantId"], "ava");
    frames_until(
        &mut agent,
        "updated (human)",
        within,
        is_handler_update(&conv, "human"),
    )
    .await;
    assert_eq!(
        send_await(&c, &s, "anyone?").await.json["reply"],
        Value::Null
    );
    assert_eq!(up.hit_count(), 0);

    // An agent JWT may switch too.
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{conv}/handler"),
            &acme_agent("ann"),
            &json!({"handler": "bot"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["handler"], "bot");
    frames_until(
        &mut agent,
        "updated (bot)",
        within,
        is_handler_update(&conv, "bot"),
    )
    .await;
    let r = send_await(&c, &s, "hello again").await;
    assert_eq!(r.json["reply"]["body"], "Back again.");

    // Bad requests.
    assert_invalid(&set_handler(&c, &conv, "robot").await, "handler");
    let r = set_handler(&c, "00000000-0000-4000-8000-000000000000", "human").await;
    assert_error(&r, 404, r.code());
    // Another tenant's conversation is not found.
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{conv}/handler"),
            SERVER_KEY2,
            &json!({"handler": "human"}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    // `bot` needs an assistant: globex has none.
    let g = c.session(PK2).await;
    let r = c
        .post_auth(
            &format!("/v1/tenant/conversations/{}/handler", g.conversation_id),
            SERVER_KEY2,
            &json!({"handler": "bot"}),
        )
        .await;
    assert_error(&r, 422, "validation_failed");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_asks_for_a_person() {
    let up = Upstream::start(Script::openai(&["Hi."])).await;
    let (gw, c) = start(&openai("ava", &up.url(), "")).await;
    let s = c.session(PK).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let r = c.post_auth("/v1/handoff", &s.token, &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["id"], s.conversation_id.as_str());
    assert_eq!(r.json["handler"], "human");
    frames_until(
        &mut agent,
        "conversation:updated (human)",
        Duration::from_secs(10),
        is_handler_update(&s.conversation_id, "human"),
    )
    .await;
    assert_eq!(
        send_await(&c, &s, "a person please").await.json["reply"],
        Value::Null
    );
    assert_eq!(up.hit_count(), 0);
    // Without a session: 401.
    let r = c.post("/v1/handoff", &[], &json!({})).await;
    assert_error(&r, 401, "invalid_session");
    gw.shutdown().await;
}

async fn config_assistant(c: &Client) -> Value {
    let r = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json.get("assistant").is_some(),
        "no assistant field: {}",
        r.text
    );
    r.json["assistant"].clone()
}

/// Waits (10 s at most) until `GET /v1/config` says `isAvailable == want`; returns it.
async fn wait_available(c: &Client, want: bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(&format!("/v1/config?pk={PK}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.json["isAvailable"] == want {
            return r.json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "isAvailable not {want} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_unavailable_the_bot_answers_only_while_nobody_is_available() {
    let up = Upstream::start(Script::openai(&["Nobody's ", "in; I am."])).await;
    let tables = format!(
        "{}\n[tenants.availability]\nmode = \"always\"\nrequire_agent = true\n",
        openai("ava", &up.url(), "answers = \"when_unavailable\"")
    );
    let (gw, c) = start(&tables).await;
    let within = Duration::from_secs(10);
    // Nobody online: the bot answers.
    assert_eq!(
        config_assistant(&c).await,
        json!({"id": "ava", "name": "Ava", "voice": false})
    );
    let r = c.session_with(PK, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["assistantId"], "ava");
    assert_eq!(r.json["handler"], "bot");
    let night = c.session(PK).await;
    assert_eq!(
        send_await(&c, &night, "late question").await.json["reply"]["body"],
        "Nobody's in; I am."
    );

    // An agent comes online: new conversations start with people.
    let (mut ann, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let cfg = wait_available(&c, true).await;
    assert_eq!(cfg["assistant"], Value::Null, "none answers now: {cfg}");
    let r = c.session_with(PK, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json["assistantId"], "ava",
        "the assistant is chosen, it just does not answer now"
    );
    assert_eq!(r.json["handler"], "human");
    let day = c.session(PK).await;
    assert_eq!(
        send_await(&c, &day, "day question").await.json["reply"],
        Value::Null
    );
    assert_eq!(up.hit_count(), 1);

    // The agent steps away: the next visitor message hands the conversation to the bot.
    ann.send_json(&json!({"type": "presence", "status": "away"}))
        .await;
    let cfg = wait_available(&c, false).await;
    assert_eq!(cfg["assistant"]["id"], "ava", "it answers again: {cfg}");
    let r = send_await(&c, &day, "still there?").await;
    assert_eq!(r.json["reply"]["body"], "Nobody's in; I am.", "{}", r.text);
    frames_until(
        &mut ann,
        "updated (bot)",
        within,
        is_handler_update(&day.conversation_id, "bot"),
    )
    .await;
    assert_eq!(
        conversation(&c, &day.conversation_id).await["handler"],
        "bot"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Sessions, config, awaitReply, intents, voice
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_config_name_the_assistant() {
    let ava = Upstream::start(Script::openai(&["Ava ", "here."])).await;
    let max = Upstream::start(Script::openai(&["Max ", "here."])).await;
    let tables = format!(
        "{}{}",
        openai("ava", &ava.url(), ""),
        openai("max", &max.url(), "phone_number = \"+14165559999\"")
    );
    let (gw, c) = start(&tables).await;
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    // The first assistant is the default.
    assert_eq!(
        config_assistant(&c).await,
        json!({"id": "ava", "name": "Ava", "voice": false})
    );
    let r = c.session_with(PK, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["assistantId"], "ava");
    assert_eq!(r.json["handler"], "bot");
    let conv = r.json["conversationId"].as_str().unwrap().to_owned();
    let new = frames_until(
        &mut agent,
        "conversation:new",
        Duration::from_secs(10),
        |v| v["type"] == "conversation:new" && v["data"]["id"] == conv.as_str(),
    )
    .await;
    let data = &new.last().unwrap()["data"];
    assert_eq!(data["assistantId"], "ava");
    assert_eq!(data["handler"], "bot");
    let got = conversation(&c, &conv).await;
    assert_eq!(
        (got["assistantId"].clone(), got["handler"].clone()),
        (json!("ava"), json!("bot"))
    );

    // Another one by id: it answers.
    let r = c.session_with(PK, json!({"assistantId": "max"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["assistantId"], "max");
    assert_eq!(r.json["handler"], "bot");
    let s = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: r.json["visitorToken"].as_str().unwrap().into(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: r.json["visitorId"].as_str().unwrap_or("").into(),
    };
    let reply = send_await(&c, &s, "who's there?").await.json["reply"].clone();
    assert_eq!(reply["body"], "Max here.");
    assert_eq!(reply["author"], bot_author("max"));
    assert_eq!((ava.hit_count(), max.hit_count()), (0, 1));
    // Resuming keeps the conversation's assistant.
    let r = c
        .session_with(PK, json!({"visitorToken": s.visitor_token}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resumed"], true);
    assert_eq!(r.json["conversationId"], s.conversation_id.as_str());
    assert_eq!(r.json["assistantId"], "max");

    // The session's first message is answered too.
    let r = c.session_with(PK, json!({"message": "first words"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let first = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: String::new(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: String::new(),
    };
    let bots = wait_bot_messages(&c, &first, 1, Duration::from_secs(10)).await;
    assert_eq!(bots[0]["body"], "Ava here.");
    assert_eq!(ava.hit_count(), 1);

    // An unknown one: 422.
    let r = c.session_with(PK, json!({"assistantId": "nobody"})).await;
    assert_invalid(&r, "assistantId");
    let r = c.session_with(PK, json!({"assistantId": 7})).await;
    assert!(r.status == 422 || r.status == 400, "{}", r.text);

    // A tenant without assistants: people answer.
    let r = c.session_with(PK2, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["assistantId"], Value::Null);
    assert_eq!(r.json["handler"], "human");
    let g = c.get(&format!("/v1/config?pk={PK2}"), &[]).await;
    assert_eq!(g.json["assistant"], Value::Null, "{}", g.text);
    assert!(g.json.get("assistant").is_some(), "{}", g.text);
    let r = c.session_with(PK2, json!({"assistantId": "ava"})).await;
    assert_invalid(&r, "assistantId");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_reply_carries_the_reply_or_the_fallback_or_null() {
    let up = Upstream::start(Script::openai(&["Sync ", "answer."])).await;
    let tables = format!(
        "{}{}",
        openai("ava", &up.url(), ""),
        openai("broken", &dead_url(), "timeout_secs = 2")
    );
    let (gw, c) = start(&tables).await;
    // The reply, exactly as stored.
    let s = c.session(PK).await;
    let r = send_await(&c, &s, "sync please").await;
    assert_eq!(r.json["success"], true);
    assert_eq!(r.json["duplicate"], false);
    let reply = r.json["reply"].clone();
    assert_eq!(reply["body"], "Sync answer.");
    assert_eq!(reply["meta"]["mode"], "ai");
    let history = c.history(&s).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["id"], r.json["messageId"]);
    assert_eq!(history[1], reply);
    // Without awaitReply, no reply field is promised; the answer comes later.
    let r = send(&c, &s, json!({"message": "async", "awaitReply": false})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json.get("reply").is_none_or(Value::is_null), "{}", r.text);
    wait_bot_messages(&c, &s, 2, Duration::from_secs(10)).await;

    // The fallback.
    let r = c.session_with(PK, json!({"assistantId": "broken"})).await;
    let b = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: String::new(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: String::new(),
    };
    let r = send_await(&c, &b, "are you broken?").await;
    assert_is_fallback(&r.json["reply"], "broken");
    assert_eq!(c.history(&b).await[1], r.json["reply"]);

    // Handler human: null, at once.
    let r = send_await(&c, &b, "hello people").await;
    assert_eq!(r.json["reply"], Value::Null);
    // No assistant at all: null.
    let g = c.session(PK2).await;
    let r = send_await(&c, &g, "hello globex").await;
    assert_eq!(r.json["reply"], Value::Null);
    // A duplicate (same clientMessageId) is answered 200 and stores nothing.
    let body = json!({"message": "dup", "clientMessageId": "dup-1", "awaitReply": true});
    let first = send(&c, &s, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = send(&c, &s, body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["duplicate"], true);
    assert_eq!(
        bot_messages(&c, &s).await.len(),
        3,
        "one reply to the duplicate pair"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_are_validated_stored_and_passed_on() {
    let up = Upstream::start(Script::openai(&["Refunds ", "take 3 days."])).await;
    let bot = Upstream::start_signed(
        BOT_KEY,
        Script::json(
            json!({"reply": "Billing flow.", "mode": "flow", "handoff": false, "metadata": {}}),
        ),
    )
    .await;
    let tables = format!(
        "{}{}\n[[tenants.intents]]\nname = \"refund\"\ndisplay_label = \"Refund request\"\n\
         description = \"The visitor wants their money back\"\n",
        openai("ava", &up.url(), ""),
        webhook("hook", &bot.bot_url(), "")
    );
    let (gw, c) = start(&tables).await;
    let s = c.session(PK).await;
    // Unknown: 422, nothing stored, nobody asked.
    let r = send(
        &c,
        &s,
        json!({"message": "money back", "intent": "nope", "awaitReply": true}),
    )
    .await;
    assert_invalid(&r, "intent");
    assert!(c.history(&s).await.is_empty());
    // Known: stored on the message, and its label and description reach the system prompt.
    let r = send(
        &c,
        &s,
        json!({"message": "money back", "intent": "refund", "awaitReply": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["reply"]["body"], "Refunds take 3 days.");
    let history = c.history(&s).await;
    assert_eq!(history[0]["intent"], "refund");
    assert_eq!(history[1]["intent"], Value::Null);
    let hits = up.hits();
    assert_eq!(hits.len(), 1, "the refused message reached nobody");
    let chat = hits[0].chat();
    assert_eq!(chat[0].0, "system");
    for part in [
        SYSTEM_PROMPT,
        "Refund request",
        "The visitor wants their money back",
    ] {
        assert!(
            chat[0].1.contains(part),
            "{part:?} in the system prompt: {:?}",
            chat[0].1
        );
    }
    // Over the WebSocket too.
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    ws.send_json(
        &json!({"type": "message", "message": "ws bad", "clientMessageId": "w1", "intent": "nope"}),
    )
    .await;
    let e = ws.next_of(&["error", "ack"]).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "validation_failed", "{e}");
    assert_eq!(e["field"], "intent", "{e}");
    ws.send_json(&json!({"type": "message", "message": "ws billing", "clientMessageId": "w2", "intent": "billing"}))
        .await;
    let ack = ws.next_of(&["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let bots = wait_bot_messages(&c, &s, 2, Duration::from_secs(10)).await;
    assert_eq!(bots.len(), 2);
    let stored = c.history(&s).await;
    let m = stored.iter().find(|m| m["id"] == ack["messageId"]).unwrap();
    assert_eq!(m["intent"], "billing");
    assert!(up.hits()[1].chat()[0].1.contains("Billing question"));
    assert!(!stored.iter().any(|m| m["body"] == "ws bad"));

    // The webhook dialect gets the intent's name.
    let r = c.session_with(PK, json!({"assistantId": "hook"})).await;
    let h = Session {
        token: r.json["sessionToken"].as_str().unwrap().into(),
        visitor_token: String::new(),
        conversation_id: r.json["conversationId"].as_str().unwrap().into(),
        visitor_id: String::new(),
    };
    let r = send(
        &c,
        &h,
        json!({"message": "invoice?", "intent": "billing", "awaitReply": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["reply"]["body"], "Billing flow.");
    let hit = &bot.hits()[0];
    assert_eq!(hit.body["intent"], "billing");
    assert_eq!(
        hit.body["messages"].as_array().unwrap().last().unwrap()["intent"],
        "billing"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_requests_a_call_and_tells_the_agents() {
    let up = Upstream::start(Script::openai(&["x"])).await;
    let tables = format!(
        "{}{}",
        openai("ava", &up.url(), "phone_number = \"+14165559999\""),
        openai("quiet", &up.url(), "")
    );
    let toml = with_limit(&config(&tables), "events_per_minute_per_session", 1);
    let gw = Gateway::start(&toml).await;
    let c = gw.client();
    assert_eq!(config_assistant(&c).await["voice"], true);
    let (mut agent, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let s = c.session(PK).await;
    let r = c.post_auth("/v1/voice", &s.token, &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let want = json!({"conversationId": s.conversation_id, "assistantId": "ava", "phoneNumber": "+14165559999"});
    assert_eq!(r.json, want);
    let frames = frames_until(
        &mut agent,
        "voice:requested",
        Duration::from_secs(10),
        |v| v["type"] == "voice:requested",
    )
    .await;
    let ev = frames.last().unwrap();
    assert!(ev.get("offset").is_some(), "a tenant event: {ev}");
    assert_eq!(ev["data"], want);
    // Counted in the session's events limit (1 per minute here).
    let r = c.post_auth("/v1/voice", &s.token, &json!({})).await;
    assert_error(&r, 429, "rate_limited");
    // An assistant without a number: 404 voice_unavailable.
    let s2 = c.session(PK).await;
    let r = c
        .post_auth("/v1/voice", &s2.token, &json!({"assistantId": "quiet"}))
        .await;
    assert_error(&r, 404, "voice_unavailable");
    // No session: 401. A tenant without assistants: 404.
    assert_error(
        &c.post("/v1/voice", &[], &json!({})).await,
        401,
        "invalid_session",
    );
    let g = c.session(PK2).await;
    assert_error(
        &c.post_auth("/v1/voice", &g.token, &json!({})).await,
        404,
        "voice_unavailable",
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// An answer is owed: node death and restart
// ---------------------------------------------------------------------------------------

/// A config file for real processes on `store`, with `tables` for acme.
fn write_process_config(dir: &std::path::Path, store: &str, tables: &str) -> std::path::PathBuf {
    let toml = config(tables).replace("store = \"memory\"", &format!("store = \"{store}\""));
    let path = dir.join("confab.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The last lines of a process's log, for failure messages.
fn log_tail(p: &Process) -> String {
    let log = p.log.lock();
    log[log.len().saturating_sub(40)..].join("\n")
}

/// Waits until the conversation has a bot message (`within`), through `c`; panics with
/// `p`'s log otherwise.
async fn wait_answer(c: &Client, s: &Session, within: Duration, p: &Process) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let bots = bot_messages(c, s).await;
        if !bots.is_empty() {
            return bots;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer within {within:?}; log:\n{}",
            log_tail(p)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const RECOVERED: &str = "Recovered answer.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_reply_survives_the_death_of_the_streaming_node() {
    let Some(redis) = confab_store::redis::testing::RedisServer::start_or_skip(
        "an_owed_reply_survives_the_death_of_the_streaming_node",
    )
    .await
    else {
        return;
    };
    // The first request streams a piece and then holds; any later one answers at once.
    let up = Upstream::start(Script::openai(&["Recovered ", "answer."])).await;
    up.then(Script::openai_gated(&["Partial "], "never", &["words."]));
    let timeout_secs = 5;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_process_config(
        dir.path(),
        &redis.url(),
        &openai("ava", &up.url(), &format!("timeout_secs = {timeout_secs}")),
    );
    let a = Process::spawn(&cfg, &[]);
    let b = Process::spawn(&cfg, &[]);
    let (ca, cb) = (a.client(), b.client());
    let s = ca.session(PK).await;
    let (mut agent_b, _) = Ws::open(b.addr, TENANT_WS, &acme_agent("ann"), None).await;
    let (mut visitor_b, _) = Ws::open(b.addr, VISITOR_WS, &s.token, None).await;
    let r = send(&ca, &s, json!({"message": "Will you answer?"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    up.wait_hits(1, Duration::from_secs(10)).await;
    // Deltas cross nodes: the agent on B sees the piece A streams.
    let frames = frames_until(
        &mut agent_b,
        "a delta from the other node",
        Duration::from_secs(10),
        |v| v["type"] == "message:delta",
    )
    .await;
    assert_eq!(texts(&deltas(&frames)), ["Partial "]);
    // The streaming node is the one that claimed the owed reply (the one posted to).
    let claims = |v: Option<f64>| v.unwrap_or(0.0);
    let on_a = claims(series(&ca, "confab_assistant_owed_claims_total").await);
    let on_b = claims(series(&cb, "confab_assistant_owed_claims_total").await);
    assert_eq!(
        (on_a, on_b),
        (1.0, 0.0),
        "node A claimed it; A:\n{}\nB:\n{}",
        log_tail(&a),
        log_tail(&b)
    );
    let (mut dead, survivor, cs) = (a, b, cb);
    dead.kill9();
    let killed = std::time::Instant::now();

    let within = Duration::from_secs(timeout_secs + 30);
    let bots = wait_answer(&cs, &s, within, &survivor).await;
    let took = killed.elapsed();
    assert!(took < within, "answered after {took:?}");
    assert_eq!(bots.len(), 1, "{:#}", json!(bots));
    let answer = &bots[0];
    assert_eq!(answer["author"], bot_author("ava"));
    assert!(
        answer["body"] == RECOVERED || answer["meta"]["mode"] == "safe_fallback",
        "the reply or the fallback, never the partial one: {answer}"
    );
    assert!(
        !answer["body"].as_str().unwrap().contains("Partial"),
        "{answer}"
    );
    // Its message:new reaches the visitor on the surviving node.
    let frames = frames_until(
        &mut visitor_b,
        "the answer",
        Duration::from_secs(10),
        is_bot_new,
    )
    .await;
    assert_eq!(frames.last().unwrap()["data"]["id"], answer["id"]);
    assert_eq!(
        series(&cs, "confab_assistant_owed_claims_total").await,
        Some(1.0),
        "the survivor took it over once"
    );
    assert_eq!(up.hit_count(), 2, "asked once by each node");
    // Exactly once: nothing more is owed, so nothing more is stored.
    let history = cs.history(&s).await;
    assert_eq!(
        history.iter().filter(|m| is_bot(m)).count(),
        1,
        "{:#}",
        json!(history)
    );
    eprintln!("the surviving node answered {took:?} after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_reply_is_answered_after_a_restart() {
    let up = Upstream::start(Script::openai(&["Recovered ", "answer."])).await;
    up.then(Script::openai_gated(&["Partial "], "never", &["words."]));
    let timeout_secs = 5;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/confab.db");
    let cfg = write_process_config(
        dir.path(),
        &format!("sqlite:{}", db.display()),
        &openai("ava", &up.url(), &format!("timeout_secs = {timeout_secs}")),
    );
    let mut first = Process::spawn(&cfg, &[]);
    let c = first.client();
    let s = c.session(PK).await;
    let r = send(&c, &s, json!({"message": "Will you answer?"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    up.wait_hits(1, Duration::from_secs(10)).await;
    first.kill9();
    let killed = std::time::Instant::now();

    let second = Process::spawn(&cfg, &[]);
    let c = second.client();
    let within = Duration::from_secs(timeout_secs + 30);
    let bots = wait_answer(&c, &s, within, &second).await;
    assert!(killed.elapsed() < within);
    assert_eq!(bots.len(), 1, "{:#}", json!(bots));
    assert!(
        bots[0]["body"] == RECOVERED || bots[0]["meta"]["mode"] == "safe_fallback",
        "{}",
        bots[0]
    );
    assert_eq!(up.hit_count(), 2);
    let history = c.history(&s).await;
    assert_eq!(history.len(), 2, "{:#}", json!(history));
    assert_eq!(history[0]["body"], "Will you answer?");
    eprintln!("answered {:?} after the kill", killed.elapsed());
}

// ---------------------------------------------------------------------------------------
// Configs that must be refused
// ---------------------------------------------------------------------------------------

fn compile(tables: &str) -> Result<(), String> {
    let config = confab_gateway::Config::from_toml(&config(tables))?;
    confab_gateway::Settings::compile(config).map(|_| ())
}

fn table(lines: &[&str]) -> String {
    format!("\n[[tenants.assistants]]\n{}\n", lines.join("\n"))
}

const GOOD_OPENAI: [&str; 5] = [
    "id = \"ava\"",
    "name = \"Ava\"",
    "kind = \"openai\"",
    "url = \"http://127.0.0.1:9/v1/chat/completions\"",
    "model = \"m\"",
];

/// `GOOD_OPENAI` with the line starting with `key =` replaced (or dropped when `line` is
/// empty).
fn openai_with(key: &str, line: &str) -> String {
    let mut lines: Vec<&str> = GOOD_OPENAI
        .iter()
        .copied()
        .filter(|l| !l.starts_with(&format!("{key} =")))
        .collect();
    if !line.is_empty() {
        lines.push(line);
    }
    table(&lines)
}

#[test]
fn good_assistant_configs_are_accepted() {
    compile(&table(&GOOD_OPENAI)).expect("a minimal openai assistant");
    compile(&table(&[
        "id = \"Bot_2-x\"",
        "name = \"Flow\"",
        "kind = \"webhook\"",
        "url = \"https://bots.acme.example/in\"",
        "api_key = \"0123456789abcdef\"",
        "answers = \"when_unavailable\"",
        "context_messages = 200",
        "timeout_secs = 600",
        "fallback_message = \"Later!\"",
        "phone_number = \"+14165559999\"",
    ]))
    .expect("a full webhook assistant");
    let two = format!(
        "{}{}",
        table(&GOOD_OPENAI),
        openai_with("id", "id = \"max\"")
    );
    compile(&two).expect("two assistants");
}

#[test]
fn bad_assistant_configs_are_refused() {
    let long_id = format!("id = \"{}\"", "a".repeat(65));
    // (what, the tables, a word the error must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an id with a space",
            openai_with("id", "id = \"bad id\""),
            "id",
        ),
        ("an empty id", openai_with("id", "id = \"\""), "id"),
        ("a 65-char id", openai_with("id", &long_id), "id"),
        ("no id", openai_with("id", ""), "id"),
        (
            "a non-http url",
            openai_with("url", "url = \"ftp://127.0.0.1/x\""),
            "url",
        ),
        (
            "a url that is no url",
            openai_with("url", "url = \"not a url\""),
            "url",
        ),
        ("no url", openai_with("url", ""), "url"),
        (
            "an unknown kind",
            openai_with("kind", "kind = \"grpc\""),
            "grpc",
        ),
        ("openai without model", openai_with("model", ""), "model"),
        (
            "an unknown key",
            openai_with("modle", "modle = \"m\""),
            "modle",
        ),
        (
            "answers sometimes",
            openai_with("answers", "answers = \"sometimes\""),
            "sometimes",
        ),
        (
            "context_messages 0",
            openai_with("context_messages", "context_messages = 0"),
            "context_messages",
        ),
        (
            "context_messages 201",
            openai_with("context_messages", "context_messages = 201"),
            "context_messages",
        ),
        (
            "timeout_secs 0",
            openai_with("timeout_secs", "timeout_secs = 0"),
            "timeout_secs",
        ),
        (
            "timeout_secs 601",
            openai_with("timeout_secs", "timeout_secs = 601"),
            "timeout_secs",
        ),
        (
            "webhook without api_key",
            table(&[
                "id = \"hook\"",
                "name = \"Hook\"",
                "kind = \"webhook\"",
                "url = \"http://127.0.0.1:9/bot\"",
            ]),
            "api_key",
        ),
        (
            "webhook with a short api_key",
            table(&[
                "id = \"hook\"",
                "name = \"Hook\"",
                "kind = \"webhook\"",
                "url = \"http://127.0.0.1:9/bot\"",
                "api_key = \"short\"",
            ]),
            "api_key",
        ),
        (
            "duplicate ids",
            format!("{}{}", table(&GOOD_OPENAI), table(&GOOD_OPENAI)),
            "duplicate",
        ),
    ];
    let mut accepted = Vec::new();
    for (what, tables, needle) in &cases {
        match compile(tables) {
            Ok(()) => accepted.push(*what),
            Err(e) => {
                eprintln!("{what}: {e}");
                assert!(
                    e.contains(needle),
                    "{what}: the error names {needle:?}: {e}"
                );
            }
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

#[test]
fn check_config_refuses_a_bad_assistant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.toml");
    std::fs::write(&path, config(&openai_with("model", ""))).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["check-config", path.to_str().unwrap()])
        .env_remove("CONFAB_CONFIG")
        .env_remove("CONFAB_STORE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("model"), "names the missing key: {err}");
    std::fs::write(&path, config(&table(&GOOD_OPENAI))).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["check-config", path.to_str().unwrap()])
        .env_remove("CONFAB_CONFIG")
        .env_remove("CONFAB_STORE")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
