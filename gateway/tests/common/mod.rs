//! Test harness: the real gateway on port 0, spoken to over real HTTP and WebSockets.
//!
//! - [`Gateway::start`] runs `confab_gateway::run` in-process (injectable clock);
//! - [`Process::spawn`] runs the `confab` binary (for kill -9 and SIGTERM tests), waiting
//!   for its `listening on http://ADDR` line (text or JSON logs) — never a sleep;
//! - [`Client`] is a small HTTP/1.1 client; [`Ws`] a WebSocket client with timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_gateway::state::Clock;
use confab_gateway::{Config, Options};
use confab_protocol::token::{sign_agent_jwt, AgentClaims};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PK: &str = "pk_live_0123456789abcdef0123456789abcdef";
pub const PK2: &str = "pk_live_ffffffffffffffffffffffffffffffff";
pub const AGENT_SECRET: &str = "test-agent-secret";
pub const SERVER_KEY: &str = "test-server-key";
pub const AGENT_SECRET2: &str = "other-agent-secret";
pub const SERVER_KEY2: &str = "other-server-key";

/// The sequence number of a message id (`msg_<conversation>_<seq>`): its order within
/// the conversation.
pub fn seq(id: &str) -> u64 {
    confab_store::seq_of_message_id(id).unwrap_or_else(|| panic!("not a message id: {id:?}"))
}

/// Two tenants, generous limits, bot timing off unless a test turns it on.
pub fn config_toml(extra_tenant_settings: &str) -> String {
    format!(
        r#"
store = "memory"
session_secret = "test-session-secret"

[[tenants]]
id = "acme"
name = "Acme"
public_key = "{PK}"
agent_secret = "{AGENT_SECRET}"
server_key = "{SERVER_KEY}"
min_elapsed_ms = 800
auto_reply = "Thanks! We'll be right with you."
{extra_tenant_settings}
[tenants.rate_limits]
sessions_per_hour_per_ip = 100000
messages_per_hour_per_ip = 100000
messages_per_minute_per_session = 100000
config_per_minute_per_ip = 100000
polls_per_minute_per_session = 100000
events_per_minute_per_session = 100000

[[tenants.intents]]
name = "billing"
display_label = "Billing question"
examples = ["Where is my invoice?"]

[[tenants.quick_questions]]
question = "What are your prices?"
page_type = "pricing"
intent_name = "billing"

[[tenants.quick_questions]]
question = "Unlinked"
intent_name = "nope"

[[tenants]]
id = "globex"
name = "Globex"
public_key = "{PK2}"
agent_secret = "{AGENT_SECRET2}"
server_key = "{SERVER_KEY2}"
min_elapsed_ms = 0
[tenants.rate_limits]
sessions_per_hour_per_ip = 100000
messages_per_hour_per_ip = 100000
messages_per_minute_per_session = 100000
"#
    )
}

/// A settable clock for tests (epoch ms); starts at the real time.
#[derive(Clone)]
pub struct TestClock(pub Arc<AtomicI64>);

impl TestClock {
    pub fn new() -> TestClock {
        TestClock(Arc::new(AtomicI64::new(confab_protocol::time::now_ms())))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst)
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let c = self.0.clone();
        Clock::from_fn(move || c.load(Ordering::SeqCst))
    }
}

/// An in-process gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(toml: &str) -> Gateway {
        Gateway::start_with(toml, Options::default()).await
    }

    pub async fn start_with(toml: &str, options: Options) -> Gateway {
        let config = Config::from_toml(toml).expect("test config parses");
        Gateway::start_config(config, options).await
    }

    pub async fn start_config(config: Config, options: Options) -> Gateway {
        let settings = confab_gateway::Settings::compile(config).expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            confab_gateway::run(listener, settings, options, async move {
                let _ = rx.await;
            })
            .await
            .expect("gateway runs");
        });
        let gw = Gateway {
            addr,
            stop: Some(tx),
            task: Some(task),
        };
        // The listener is bound already; this waits until the app answers.
        gw.client().wait_ready().await;
        gw
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("shutdown within 20 s")
                .unwrap();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A response: status, headers, body (JSON when it parses).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// A minimal HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Client { addr, inner }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(40), self.inner.request(req))
            .await
            .expect("response in time")
            .expect("request ok");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, None).await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
        self.request(
            "POST",
            path,
            headers,
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let req = hyper::Request::get(format!("http://{}/healthz", self.addr))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), self.inner.request(req)).await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh challenge for `pk`.
    pub async fn challenge(&self, pk: &str) -> String {
        let r = self.get(&format!("/v1/config?pk={pk}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["initChallenge"]["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Starts a session (challenge included) with extra body fields.
    pub async fn session_with(&self, pk: &str, extra: Value) -> Resp {
        let mut body = json!({"publicKey": pk, "initChallenge": self.challenge(pk).await, "botSignals": {"elapsedMs": 1500}});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        self.post("/v1/sessions", &[], &body).await
    }

    /// A new visitor session: (sessionToken, visitorToken, conversationId).
    pub async fn session(&self, pk: &str) -> Session {
        let r = self.session_with(pk, json!({})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        Session {
            token: r.json["sessionToken"].as_str().unwrap().to_owned(),
            visitor_token: r.json["visitorToken"].as_str().unwrap().to_owned(),
            conversation_id: r.json["conversationId"].as_str().unwrap().to_owned(),
            visitor_id: r.json["visitorId"].as_str().unwrap().to_owned(),
        }
    }

    /// A visitor sends; returns the response.
    pub async fn send(&self, s: &Session, text: &str, cmid: Option<&str>) -> Resp {
        let mut body = json!({"message": text});
        if let Some(c) = cmid {
            body["clientMessageId"] = c.into();
        }
        self.post(
            "/v1/messages",
            &[("authorization", &format!("Bearer {}", s.token))],
            &body,
        )
        .await
    }

    /// All messages of a visitor's conversation (paging through).
    pub async fn history(&self, s: &Session) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let q = if after.is_empty() {
                "/v1/messages?limit=200".to_string()
            } else {
                format!("/v1/messages?limit=200&after={after}")
            };
            let r = self
                .get(&q, &[("authorization", &format!("Bearer {}", s.token))])
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            out.extend(r.json["messages"].as_array().unwrap().iter().cloned());
            if !r.json["hasMore"].as_bool().unwrap() {
                return out;
            }
            after = r.json["nextCursor"].as_str().unwrap().to_owned();
        }
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub visitor_token: String,
    pub conversation_id: String,
    pub visitor_id: String,
}

impl Session {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// An agent JWT for `tenant`, valid for an hour.
pub fn agent_jwt(secret: &str, tenant: &str, sub: &str) -> String {
    let exp = confab_protocol::time::now_ms() / 1000 + 3600;
    sign_agent_jwt(
        secret.as_bytes(),
        &AgentClaims {
            sub: sub.into(),
            tenant: tenant.into(),
            exp,
            name: Some(format!("Agent {sub}")),
        },
    )
}

pub fn acme_agent(sub: &str) -> String {
    agent_jwt(AGENT_SECRET, "acme", sub)
}

/// A WebSocket client with bounded waits.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16),
    NoFrame,
}

impl Ws {
    pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
        let (inner, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
        )
        .await
        .expect("connect in time")
        .expect("upgrade ok");
        Ws { inner }
    }

    /// Connects and authenticates; returns the socket and its `ready` frame.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        token: &str,
        after: Option<&str>,
    ) -> (Ws, Value) {
        let mut ws = Ws::connect(addr, path).await;
        let mut auth = json!({"type": "auth", "token": token});
        if let Some(a) = after {
            auth["after"] = a.into();
        }
        ws.send_json(&auth).await;
        let ready = ws.next_json().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        (ws, ready)
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.inner
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.inner
            .send(Message::Text(s.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next text frame as JSON (pings are answered by tungstenite); panics after 10 s
    /// or if the socket closes.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(Duration::from_secs(10))
            .await
            .expect("a frame in time")
    }

    pub async fn next_json_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("socket closed while waiting for a frame"),
                Ok(Some(Err(e))) => panic!("socket error while waiting for a frame: {e}"),
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Close(c) => panic!("socket closed while waiting for a frame: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next frame of one of `types`, skipping others.
    pub async fn next_of(&mut self, types: &[&str]) -> Value {
        loop {
            let v = self.next_json().await;
            if types.contains(&v["type"].as_str().unwrap_or("")) {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns its close code. Skips data frames.
    pub async fn closed(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => panic!("socket not closed within {within:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::NoFrame,
                Ok(Some(Ok(Message::Close(Some(f))))) => return Closed::Code(u16::from(f.code)),
                Ok(Some(Ok(Message::Close(None)))) => return Closed::NoFrame,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// The `confab` binary as a child process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Process {
    /// Spawns `confab --config FILE --listen 127.0.0.1:0` and waits for its listening line.
    pub fn spawn(config_path: &std::path::Path, extra_args: &[&str]) -> Process {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.arg("--config").arg(config_path).args(extra_args);
        Process::spawn_command(cmd)
    }

    /// Runs `cmd` (the binary, or a wrapper that execs it with the arguments it is given)
    /// with `--listen 127.0.0.1:0`, and waits for the listening line.
    pub fn spawn_command(mut cmd: Command) -> Process {
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("CONFAB_STORE")
            .env_remove("CONFAB_LISTEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn confab");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    // The address ends the text line; in a JSON line a quote follows it.
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    let _ = tx.send(addr);
                }
                log2.lock().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway printed its listening line");
        Process {
            child,
            addr: addr.parse().unwrap(),
            log,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// HTTP-suite helpers (http_*.rs).
// ---------------------------------------------------------------------------------------

/// `config_toml(extra)` with top-level settings (`allowed_origins`, `trusted_proxies`, …)
/// put before the first table.
pub fn config_toml_global(global_settings: &str, extra_tenant_settings: &str) -> String {
    format!("{global_settings}\n{}", config_toml(extra_tenant_settings))
}

/// Sets one of acme's (the first tenant's) `[tenants.rate_limits]` keys.
pub fn with_limit(toml: &str, key: &str, value: u32) -> String {
    let from = format!("{key} = 100000");
    assert!(
        toml.contains(&from),
        "{key} is not among the generous test limits"
    );
    toml.replacen(&from, &format!("{key} = {value}"), 1)
}

/// The config without acme's auto-reply (so message counts are exact).
pub fn without_auto_reply(toml: &str) -> String {
    let line = "auto_reply = \"Thanks! We'll be right with you.\"\n";
    assert!(toml.contains(line));
    toml.replacen(line, "", 1)
}

/// A gateway with an injected, settable clock.
pub async fn start_clocked(toml: &str) -> (Gateway, TestClock) {
    let clock = TestClock::new();
    let gw = Gateway::start_with(
        toml,
        Options {
            clock: clock.clock(),
            ..Default::default()
        },
    )
    .await;
    (gw, clock)
}

/// Asserts the SPEC's error body: `{error: {code, message, field?}}` with `status`.
pub fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}, got {}", r.text);
    let e = r.json["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {}", r.text));
    assert_eq!(
        e.get("code").and_then(Value::as_str),
        Some(code),
        "{}",
        r.text
    );
    assert!(
        e.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        r.text
    );
    assert!(
        e.keys()
            .all(|k| ["code", "message", "field"].contains(&k.as_str())),
        "unexpected keys: {}",
        r.text
    );
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "error content-type {ct:?}"
    );
}

/// Asserts a 422 `validation_failed` naming `field`.
pub fn assert_invalid(r: &Resp, field: &str) {
    assert_error(r, 422, "validation_failed");
    assert_eq!(r.json["error"]["field"], field, "{}", r.text);
}

/// Asserts a wire timestamp: RFC 3339 UTC, exactly three fractional digits, `Z`.
pub fn assert_ts(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    let b = s.as_bytes();
    let digit = |i: usize| b[i].is_ascii_digit();
    let ok = b.len() == 24
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22]
            .into_iter()
            .all(digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    assert!(ok, "not a wire timestamp: {s}");
    confab_protocol::time::parse_ms(s).unwrap_or_else(|| panic!("unparseable timestamp {s}"))
}

/// Waits (polling the system clock, never longer than 2 s) until it is past `ts`, so the
/// next thing the store records gets a strictly later timestamp.
pub async fn tick_past(ts: &Value) {
    let ms =
        confab_protocol::time::parse_ms(ts.as_str().expect("a timestamp")).expect("a timestamp");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while confab_protocol::time::now_ms() <= ms {
        assert!(
            std::time::Instant::now() < deadline,
            "system clock does not advance"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// URL-safe base64 without padding (to forge JWTs).
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWT with any header and claims, HMAC-SHA256-signed with `secret` (or with an empty
/// signature when `secret` is `None`).
pub fn forge_jwt(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
    match secret {
        Some(s) => confab_protocol::token::sign_hs256(s, &header.to_string(), &claims.to_string()),
        None => format!(
            "{}.{}.",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        ),
    }
}

/// `("authorization", "Bearer …")` value.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

impl Client {
    /// GET with `Authorization: Bearer token`.
    pub async fn get_auth(&self, path: &str, token: &str) -> Resp {
        self.get(path, &[("authorization", &bearer(token))]).await
    }

    /// POST JSON with `Authorization: Bearer token`.
    pub async fn post_auth(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.post(path, &[("authorization", &bearer(token))], body)
            .await
    }

    /// The value of a metric line without labels (`name value`) in `/metrics`.
    pub async fn metric(&self, name: &str) -> i64 {
        let r = self.get("/metrics", &[]).await;
        assert_eq!(r.status, 200);
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name} in {}", r.text))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until at least `n` hub channels have local subscribers (a long-poll is parked);
    /// gives up after 10 s.
    pub async fn wait_hub_channels(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.metric("confab_hub_channels").await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no long-poll parked within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Tenant events after `after` (all of them, one page of 200).
    pub async fn tenant_events(&self, token: &str, after: Option<&str>) -> Resp {
        let q = match after {
            Some(a) => format!("/v1/tenant/events?limit=200&after={a}"),
            None => "/v1/tenant/events?limit=200".to_string(),
        };
        let r = self.get_auth(&q, token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r
    }
}

impl TestClock {
    /// The clock's current reading (epoch ms).
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Writes `request` (raw HTTP/1.1 bytes, possibly an unfinished body) to a new connection
/// and reads the answer until it contains `until`; fails unless that happens within 5 s.
/// For answers that must come before the client has sent all it announced.
pub async fn raw_answer(addr: SocketAddr, request: &str, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&answer).contains(until) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no answer within 5 s: {text:?}");
    text
}
