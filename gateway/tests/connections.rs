//! Connections and abuse (SPEC): slow and idle connections are closed (head, body and
//! keep-alive timeouts), one IP cannot hold more than `max_connections_per_ip`, one visitor
//! not more than `max_sockets_per_visitor` sockets, credentials that expire close their
//! sockets with 4401, `?pk=` makes that tenant's allowlist decide the upgrade, and accept
//! errors (out of file descriptors) are logged and retried without a busy loop.
//!
//! Every test runs the real gateway on port 0 and speaks raw TCP, HTTP/1.1 or WebSocket to
//! it. Timeouts are shortened through `Options` (or the credential's lifetime is short), so
//! no test waits for the SPEC's real 10/30/75 s.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use confab_gateway::Options;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const VISITOR_WS: &str = "/v1/visitor/ws";
const TENANT_WS: &str = "/v1/tenant/ws";

/// A raw HTTP/1.1 connection: what a slow or malicious client does is written by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read off a [`Raw`] connection.
#[derive(Debug)]
struct RawResp {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    /// `GET path` on this connection (kept alive), and its response.
    async fn get(&mut self, path: &str) -> RawResp {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: confab\r\n\r\n"))
            .await;
        self.response(Duration::from_secs(10))
            .await
            .expect("a response")
    }

    /// Reads more bytes; `false` at end of stream (or a reset).
    async fn fill(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("nothing from the server in time"),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response (head and `Content-Length` body); `None` if the server closes
    /// first.
    async fn response(&mut self, within: Duration) -> Option<RawResp> {
        let deadline = Instant::now() + within;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill(deadline).await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        while self.buf.len() < end + len {
            assert!(self.fill(deadline).await, "closed inside a body");
        }
        let body = serde_json::from_slice(&self.buf[end..end + len]).unwrap_or(Value::Null);
        self.buf.drain(..end + len);
        Some(RawResp { status, head, body })
    }

    /// Waits until the server closes the connection; panics if it does not within `within`.
    /// Returns how long it took.
    async fn closed(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + within;
        while self.fill(deadline).await {}
        start.elapsed()
    }
}

impl RawResp {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

fn options(head_ms: u64, body_ms: u64, keep_alive_ms: u64) -> Options {
    Options {
        head_timeout: Duration::from_millis(head_ms),
        body_timeout: Duration::from_millis(body_ms),
        keep_alive_timeout: Duration::from_millis(keep_alive_ms),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_half_sent_heads_are_closed() {
    let gw = Gateway::start_with(&config_toml(""), options(400, 30_000, 75_000)).await;
    // Connected, nothing sent.
    let mut idle = Raw::connect(gw.addr).await;
    // A head that never ends.
    let mut half = Raw::connect(gw.addr).await;
    half.send("GET /healthz HTTP/1.1\r\nHost: confab\r\nX-Slow: ")
        .await;
    // A head sent a byte at a time, each well within the timeout, never finishes either:
    // the limit is on the whole head, not on the gap between bytes.
    let mut drip = Raw::connect(gw.addr).await;
    let dripping = tokio::spawn(async move {
        let start = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nHost: confab\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if drip.stream.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = drip.closed(Duration::from_secs(5)).await;
        start.elapsed()
    });
    let t = idle.closed(Duration::from_secs(5)).await;
    assert!(t >= Duration::from_millis(300), "closed early: {t:?}");
    half.closed(Duration::from_secs(5)).await;
    let t = dripping.await.unwrap();
    assert!(
        t < Duration::from_millis(1500),
        "a dripped head lived {t:?}"
    );
    // A prompt client is unaffected.
    let mut ok = Raw::connect(gw.addr).await;
    assert_eq!(ok.get("/healthz").await.status, 200);
    assert!(gw.client().metric("confab_connection_timeouts_total").await >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_but_requests_in_flight_are_not() {
    let gw = Gateway::start_with(&config_toml(""), options(300, 30_000, 1_000)).await;
    let mut c = Raw::connect(gw.addr).await;
    assert_eq!(c.get("/healthz").await.status, 200);
    // Idle for longer than the head timeout but within keep-alive: still usable.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.get("/healthz").await.status, 200);
    // Closed by the keep-alive timer (1 s from the server's side), not the head timer.
    let t = c.closed(Duration::from_secs(5)).await;
    assert!(
        t >= Duration::from_millis(600),
        "closed before keep-alive: {t:?}"
    );

    // A long-poll outlasts both timers: a request in flight is never cut.
    let s = gw.client().session(PK).await;
    let mut poll = Raw::connect(gw.addr).await;
    poll.send(&format!(
        "GET /v1/messages?wait=2 HTTP/1.1\r\nHost: confab\r\nAuthorization: Bearer {}\r\n\r\n",
        s.token
    ))
    .await;
    let started = Instant::now();
    let r = poll
        .response(Duration::from_secs(10))
        .await
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Shutdown does not wait for an idle keep-alive connection.
    let mut idle = Raw::connect(gw.addr).await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    let started = Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    idle.closed(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    // The head timeout is shorter than the stall limit: a request in flight is the body
    // timer's alone.
    let gw = Gateway::start_with(&config_toml(""), options(200, 500, 75_000)).await;
    let mut c = Raw::connect(gw.addr).await;
    c.send(
        "POST /v1/sessions HTTP/1.1\r\nHost: confab\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{\"publicKey\": ",
    )
    .await;
    let started = Instant::now();
    let r = c.response(Duration::from_secs(5)).await.expect("a 408");
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.code(), "request_timeout", "{r:?}");
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        r.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        r.head
    );
    c.closed(Duration::from_secs(2)).await;

    // A body that keeps arriving, slowly, is not stalled.
    let challenge = gw.client().challenge(PK).await;
    let body = json!({"publicKey": PK, "initChallenge": challenge,
        "botSignals": {"elapsedMs": 5000}})
    .to_string();
    let mut c = Raw::connect(gw.addr).await;
    c.send(&format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: confab\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    ))
    .await;
    let started = Instant::now();
    for piece in body.as_bytes().chunks(body.len() / 5 + 1) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.stream.write_all(piece).await.unwrap();
    }
    let r = c.response(Duration::from_secs(5)).await.expect("answered");
    // Longer than the stall limit in all, never that long between two pieces.
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(r.status, 201, "{r:?}");
}

/// `confab_connections_open`, read over `m` (which counts itself).
async fn metric_value(m: &mut Raw) -> i64 {
    // Metrics are text, not JSON: read the raw body.
    m.send("GET /metrics HTTP/1.1\r\nHost: confab\r\n\r\n")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        if let Some(i) = m.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(m.fill(deadline).await, "closed");
    };
    let head = String::from_utf8_lossy(&m.buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap();
    while m.buf.len() < end + len {
        assert!(m.fill(deadline).await, "closed");
    }
    let text = String::from_utf8_lossy(&m.buf[end..end + len]).to_string();
    m.buf.drain(..end + len);
    text.lines()
        .find_map(|l| l.strip_prefix("confab_connections_open "))
        .expect("the gauge")
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the node holds exactly `n` connections (closes are noticed asynchronously).
async fn wait_open(m: &mut Raw, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric_value(m).await;
        if open == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections open, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type WsRequest = tokio_tungstenite::tungstenite::handshake::client::Request;

fn ws_request(addr: SocketAddr, path: &str, origin: Option<&str>) -> WsRequest {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}{path}"),
    )
    .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    req
}

/// An upgraded socket to `path` with that `Origin` (panics if it was refused).
async fn upgraded(addr: SocketAddr, path: &str, origin: Option<&str>) -> Ws {
    let (inner, _) = tokio_tungstenite::connect_async(ws_request(addr, path, origin))
        .await
        .unwrap();
    Ws { inner }
}

/// The HTTP status of a refused upgrade (panics if it was accepted).
async fn refused_upgrade(req: WsRequest) -> (u16, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Ok(_) => panic!("upgraded"),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_holds_at_most_max_connections_per_ip() {
    let gw = Gateway::start(&config_toml_global("max_connections_per_ip = 3", "")).await;
    let mut m = Raw::connect(gw.addr).await;
    // Only `m` (the start-up probe's connection closes on its own).
    wait_open(&mut m, 1).await;
    let mut c2 = Raw::connect(gw.addr).await;
    assert_eq!(c2.get("/healthz").await.status, 200);
    let mut c3 = Raw::connect(gw.addr).await;
    assert_eq!(c3.get("/healthz").await.status, 200);

    // The fourth: 503 with the SPEC's error body, then closed.
    let mut c4 = Raw::connect(gw.addr).await;
    c4.send("GET /healthz HTTP/1.1\r\nHost: confab\r\n\r\n")
        .await;
    let r = c4.response(Duration::from_secs(5)).await.expect("a 503");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.code(), "too_many_connections", "{r:?}");
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    c4.closed(Duration::from_secs(2)).await;
    // An upgrade is refused the same way.
    let (status, body) = refused_upgrade(ws_request(gw.addr, VISITOR_WS, None)).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "too_many_connections");

    // WebSockets count too — even one that never authenticates.
    drop(c3);
    wait_open(&mut m, 2).await;
    let ws = Ws::connect(gw.addr, VISITOR_WS).await;
    wait_open(&mut m, 3).await;
    let mut c5 = Raw::connect(gw.addr).await;
    c5.send("GET /healthz HTTP/1.1\r\nHost: confab\r\n\r\n")
        .await;
    assert_eq!(
        c5.response(Duration::from_secs(5)).await.unwrap().status,
        503
    );

    // A closed connection frees its place.
    drop(ws);
    wait_open(&mut m, 2).await;
    let mut c6 = Raw::connect(gw.addr).await;
    assert_eq!(c6.get("/healthz").await.status, 200);
    drop((c2, c6));
    wait_open(&mut m, 1).await;
    assert!(gw.client().metric("confab_connections_refused_total").await >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_not_capped() {
    let gw = Gateway::start(&config_toml_global(
        "max_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1/32\"]",
        "",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = Raw::connect(gw.addr).await;
        assert_eq!(c.get("/healthz").await.status, 200);
        held.push(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_visitor_holds_at_most_ten_sockets() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let mut tabs = Vec::new();
    for _ in 0..10 {
        tabs.push(Ws::open(gw.addr, VISITOR_WS, &s.token, None).await.0);
    }
    // The 11th tab of the same visitor: 4429.
    let mut extra = Ws::connect(gw.addr, VISITOR_WS).await;
    extra
        .send_json(&json!({"type": "auth", "token": s.token}))
        .await;
    assert_eq!(
        extra.closed(Duration::from_secs(5)).await,
        Closed::Code(4429)
    );
    // The same visitor with a renewed token is the same visitor.
    let renewed = c
        .session_with(PK, json!({"visitorToken": s.visitor_token}))
        .await;
    assert_eq!(renewed.status, 201, "{}", renewed.text);
    assert_eq!(renewed.json["resumed"], true);
    let mut extra = Ws::connect(gw.addr, VISITOR_WS).await;
    extra
        .send_json(&json!({"type": "auth", "token": renewed.json["sessionToken"]}))
        .await;
    assert_eq!(
        extra.closed(Duration::from_secs(5)).await,
        Closed::Code(4429)
    );
    // Another visitor is not affected.
    let other = c.session(PK).await;
    let _other_tab = Ws::open(gw.addr, VISITOR_WS, &other.token, None).await;
    // Closing a tab frees its place (noticed asynchronously: retry until it is).
    let mut closing = tabs.pop().unwrap();
    closing.inner.close(None).await.unwrap();
    let _ = closing.closed(Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = Ws::connect(gw.addr, VISITOR_WS).await;
        ws.send_json(&json!({"type": "auth", "token": s.token}))
            .await;
        match ws.next_json_within_or_close(Duration::from_secs(5)).await {
            Ok(ready) => {
                assert_eq!(ready["type"], "ready");
                break;
            }
            Err(code) => assert_eq!(code, 4429),
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every tab still works.
    for t in &mut tabs {
        t.send_json(&json!({"type": "ping"})).await;
        assert_eq!(t.next_of(&["pong"]).await["type"], "pong");
    }
}

trait NextOrClose {
    /// The next text frame, or the close code if the server closes first.
    async fn next_json_within_or_close(&mut self, d: Duration) -> Result<Value, u16>;
}

impl NextOrClose for Ws {
    async fn next_json_within_or_close(&mut self, d: Duration) -> Result<Value, u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => panic!("nothing within {d:?}"),
                Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Close(Some(f))))) => return Err(u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                Ok(_) => return Err(0),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_socket_closes_4401_when_its_session_expires() {
    // Real time: a session of 2 s.
    let gw = Gateway::start(&config_toml_global("session_ttl_secs = 2", "")).await;
    let s = gw.client().session(PK).await;
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    let started = Instant::now();
    assert_eq!(ws.closed(Duration::from_secs(6)).await, Closed::Code(4401));
    // At expiry, not at the next ping (25 s).
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.shutdown().await;

    // The node's clock: a message sent after expiry is refused (4401), never stored.
    let (gw, clock) = start_clocked(&without_auto_reply(&config_toml(""))).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let (mut ws, _) = Ws::open(gw.addr, VISITOR_WS, &s.token, None).await;
    ws.send_json(&json!({"type": "message", "message": "before", "clientMessageId": "a"}))
        .await;
    assert_eq!(ws.next_of(&["ack"]).await["clientMessageId"], "a");
    clock.advance(86_400_000 + 1_000);
    ws.send_json(&json!({"type": "message", "message": "after expiry", "clientMessageId": "b"}))
        .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4401));
    let r = c
        .get_auth(
            &format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            SERVER_KEY,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bodies: Vec<&str> = r.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_socket_closes_4401_when_its_jwt_expires() {
    // Real time: a JWT that expires in 1-2 s.
    let gw = Gateway::start(&config_toml("")).await;
    let exp = confab_protocol::time::now_ms() / 1000 + 2;
    let jwt = confab_protocol::token::sign_agent_jwt(
        AGENT_SECRET.as_bytes(),
        &confab_protocol::token::AgentClaims {
            sub: "ann".into(),
            tenant: "acme".into(),
            exp,
            name: None,
        },
    );
    let (mut ws, _) = Ws::open(gw.addr, TENANT_WS, &jwt, None).await;
    assert_eq!(ws.closed(Duration::from_secs(6)).await, Closed::Code(4401));
    assert!(confab_protocol::time::now_ms() >= exp * 1000);
    gw.shutdown().await;

    // The node's clock: a reply after expiry is refused, never stored.
    let (gw, clock) = start_clocked(&without_auto_reply(&config_toml(""))).await;
    let c = gw.client();
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "hello", None).await.status, 201);
    let (mut ws, _) = Ws::open(gw.addr, TENANT_WS, &acme_agent("ann"), None).await;
    clock.advance(3_600_000 + 1_000);
    ws.send_json(
        &json!({"type": "reply", "conversationId": s.conversation_id,
        "message": "too late", "clientMessageId": "r1"}),
    )
    .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4401));
    let bodies: Vec<String> = c
        .history(&s)
        .await
        .iter()
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(bodies, ["hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pk_makes_that_tenants_allowlist_decide_the_upgrade() {
    // Acme allows one origin; Globex allows any (its list and the global one are empty).
    let gw = Gateway::start(&config_toml("allowed_origins = [\"https://shop.example\"]")).await;
    let c = gw.client();
    let acme = c.session(PK).await;
    let globex = c.session(PK2).await;
    let with_pk = format!("{VISITOR_WS}?pk={PK}");

    // Before the upgrade: Acme's list decides, Globex's permissiveness does not leak.
    let (status, body) =
        refused_upgrade(ws_request(gw.addr, &with_pk, Some("https://evil.example"))).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    let (status, body) = refused_upgrade(ws_request(
        gw.addr,
        &format!("{TENANT_WS}?pk={PK}"),
        Some("https://evil.example"),
    ))
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("origin_not_allowed"))
    );
    // Unknown and malformed keys are refused as on /v1/config.
    let unknown = format!("{VISITOR_WS}?pk=pk_live_{}", "a".repeat(32));
    let (status, body) = refused_upgrade(ws_request(gw.addr, &unknown, None)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("unknown_public_key"))
    );
    let (status, _) =
        refused_upgrade(ws_request(gw.addr, &format!("{VISITOR_WS}?pk=nope"), None)).await;
    assert_eq!(status, 422);

    // An allowed origin upgrades, and Acme's token works…
    let mut ws = upgraded(gw.addr, &with_pk, Some("https://shop.example")).await;
    ws.send_json(&json!({"type": "auth", "token": acme.token}))
        .await;
    assert_eq!(ws.next_json().await["type"], "ready");
    // …but a token of another tenant than pk closes 4401, on both channels.
    for (path, token) in [
        (with_pk.clone(), globex.token.clone()),
        (
            format!("{TENANT_WS}?pk={PK}"),
            agent_jwt(AGENT_SECRET2, "globex", "gus"),
        ),
    ] {
        let mut ws = upgraded(gw.addr, &path, None).await;
        ws.send_json(&json!({"type": "auth", "token": token})).await;
        assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4401));
    }

    // Globex's own pk admits any origin.
    let mut ws = upgraded(
        gw.addr,
        &format!("{VISITOR_WS}?pk={PK2}"),
        Some("https://evil.example"),
    )
    .await;
    ws.send_json(&json!({"type": "auth", "token": globex.token}))
        .await;
    assert_eq!(ws.next_json().await["type"], "ready");

    // Without pk: upgraded because some tenant allows the origin, then checked against the
    // token's tenant (4403).
    let mut ws = upgraded(gw.addr, VISITOR_WS, Some("https://evil.example")).await;
    ws.send_json(&json!({"type": "auth", "token": acme.token}))
        .await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Closed::Code(4403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pk_an_origin_no_tenant_allows_is_refused() {
    let gw = Gateway::start(&config_toml_global(
        "allowed_origins = [\"https://shop.example\"]",
        "",
    ))
    .await;
    let (status, body) = refused_upgrade(ws_request(
        gw.addr,
        VISITOR_WS,
        Some("https://evil.example"),
    ))
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("origin_not_allowed"))
    );
}

/// The binary with at most `nofile` open files, its stdout collected.
fn spawn_with_file_limit(config: &std::path::Path, nofile: u32) -> Process {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_confab"))
        .arg("--config")
        .arg(config);
    Process::spawn_command(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_is_logged_and_retried_without_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.toml");
    std::fs::write(
        &path,
        config_toml_global("max_connections_per_ip = 10000", "").replace(
            "store = \"memory\"",
            "store = \"memory\"\nshutdown_grace_secs = 1",
        ),
    )
    .unwrap();
    let p = spawn_with_file_limit(&path, 128);
    p.client().wait_ready().await;
    let failures = || {
        p.log
            .lock()
            .iter()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    // More idle connections than the process may open files: the kernel completes the
    // handshakes, the gateway runs out of descriptors accepting them.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(p.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures() == 0 {
        assert!(Instant::now() < deadline, "no accept failure was logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held at the limit for 2 s: the retries back off (10 ms doubling to 1 s), so a
    // handful of lines, not thousands.
    let first = failures();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = failures() - first;
    assert!(
        during <= 12,
        "{during} accept failures logged in 2 s: a busy loop"
    );
    // Once descriptors are free again, the gateway serves.
    drop(held);
    p.client().wait_ready().await;
    assert_eq!(p.client().get("/healthz", &[]).await.status, 200);
}

#[test]
fn limits_must_be_positive() {
    for key in [
        "max_connections_per_ip",
        "max_sockets_per_visitor",
        "max_connections",
    ] {
        let c = confab_gateway::Config::from_toml(&config_toml_global(&format!("{key} = 0"), ""))
            .unwrap();
        assert!(c.check().unwrap_err().contains(key));
    }
}
