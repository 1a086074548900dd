//! Assistant upstreams for the tests: a real HTTP server on loopback that plays what the
//! test scripts — an OpenAI-compatible Chat Completions endpoint streaming Server-Sent
//! Events, or a tenant's webhook bot answering JSON or SSE, or a broken one (an error
//! status, a stall, garbage) — and records every request it receives. A script can hold
//! its stream at a named gate until the test opens it, so "while the reply streams" is a
//! condition the test controls, not a sleep.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The model name the fake OpenAI server reports in its chunks (not the configured one).
pub const STREAM_MODEL: &str = "fake-llm-2024-06";
/// `usage.total_tokens` of [`Script::openai`].
pub const TOTAL_TOKENS: u64 = 42;

/// One step of an answer's body.
#[derive(Clone, Debug)]
pub enum Step {
    /// These bytes, written (and flushed) as one chunk.
    Send(String),
    /// Waits until the test opens this gate.
    Gate(&'static str),
    /// Never continues; the body stays open until the upstream stops.
    Stall,
    /// Pauses this long.
    Sleep(Duration),
}

/// How the upstream answers one request.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    pub content_type: String,
    /// Never answers at all, not even the status line.
    pub hang: bool,
    pub steps: Vec<Step>,
}

/// `data: <json>\n\n`.
pub fn sse(v: &Value) -> Step {
    Step::Send(format!("data: {v}\n\n"))
}

/// The first chunk of an OpenAI stream: the role, empty content.
pub fn openai_start() -> Step {
    sse(&json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": STREAM_MODEL,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]
    }))
}

/// A chunk carrying one piece of content.
pub fn openai_piece(piece: &str) -> Step {
    sse(&json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": STREAM_MODEL,
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]
    }))
}

/// The end of an OpenAI stream: `finish_reason`, the usage chunk (`include_usage`), `[DONE]`.
pub fn openai_end(total_tokens: u64) -> Vec<Step> {
    vec![
        sse(&json!({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": STREAM_MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        })),
        sse(&json!({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": STREAM_MODEL, "choices": [],
            "usage": {"prompt_tokens": total_tokens - 2, "completion_tokens": 2, "total_tokens": total_tokens}
        })),
        Step::Send("data: [DONE]\n\n".into()),
    ]
}

impl Script {
    fn stream(content_type: &str, steps: Vec<Step>) -> Script {
        Script {
            status: 200,
            content_type: content_type.into(),
            hang: false,
            steps,
        }
    }

    /// A whole OpenAI answer streaming `pieces`, with usage ([`TOTAL_TOKENS`]).
    pub fn openai(pieces: &[&str]) -> Script {
        let mut steps = vec![openai_start()];
        steps.extend(pieces.iter().map(|p| openai_piece(p)));
        steps.extend(openai_end(TOTAL_TOKENS));
        Script::stream("text/event-stream", steps)
    }

    /// An OpenAI answer streaming `pieces`, then holding at `gate`, then the rest of it
    /// (`rest` pieces and the proper end).
    pub fn openai_gated(pieces: &[&str], gate: &'static str, rest: &[&str]) -> Script {
        let mut steps = vec![openai_start()];
        steps.extend(pieces.iter().map(|p| openai_piece(p)));
        steps.push(Step::Gate(gate));
        steps.extend(rest.iter().map(|p| openai_piece(p)));
        steps.extend(openai_end(TOTAL_TOKENS));
        Script::stream("text/event-stream", steps)
    }

    /// An OpenAI stream of `pieces` followed by `then` (a stall, garbage, an early end…).
    pub fn openai_then(pieces: &[&str], then: Vec<Step>) -> Script {
        let mut steps = vec![openai_start()];
        steps.extend(pieces.iter().map(|p| openai_piece(p)));
        steps.extend(then);
        Script::stream("text/event-stream", steps)
    }

    /// Any status, with a JSON error body.
    pub fn status(status: u16) -> Script {
        Script {
            status,
            content_type: "application/json".into(),
            hang: false,
            steps: vec![Step::Send(
                json!({"error": {"message": "upstream says no", "type": "server_error"}})
                    .to_string(),
            )],
        }
    }

    /// These bytes as the whole body, with this content type.
    pub fn raw(content_type: &str, body: &str) -> Script {
        Script::stream(content_type, vec![Step::Send(body.into())])
    }

    /// A 200 with these steps as the body.
    pub fn steps(content_type: &str, steps: Vec<Step>) -> Script {
        Script::stream(content_type, steps)
    }

    /// Never answers.
    pub fn hang() -> Script {
        Script {
            status: 200,
            content_type: "text/event-stream".into(),
            hang: true,
            steps: vec![],
        }
    }

    /// A webhook bot's JSON answer.
    pub fn json(v: Value) -> Script {
        Script::stream("application/json", vec![Step::Send(v.to_string())])
    }

    /// A webhook bot's SSE answer: one `data:` event per value.
    pub fn sse(events: &[Value]) -> Script {
        Script::stream("text/event-stream", events.iter().map(sse).collect())
    }
}

/// One request received.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: Value,
    /// `X-Confab-Signature` checked against the upstream's signing key (HMAC-SHA256 over
    /// `"<t>.<body>"`, `t` within 5 minutes), when it has one.
    pub signature_ok: bool,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `messages` of an OpenAI request, as (role, content) pairs.
    pub fn chat(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages in {}", self.body))
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap_or("").to_owned(),
                    m["content"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

struct Shared {
    signing_key: Option<String>,
    hits: Mutex<Vec<Hit>>,
    /// Scripts for the next requests, in order; then `default`.
    queue: Mutex<VecDeque<Script>>,
    default: Mutex<Script>,
    gates: Mutex<HashSet<&'static str>>,
    /// Answers whose body was sent to the end.
    finished: Mutex<usize>,
    notify: Notify,
    stop: CancellationToken,
}

pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Upstream {
    /// An upstream answering every request with `default` (unless a queued script comes
    /// first).
    pub async fn start(default: Script) -> Upstream {
        Upstream::start_with(None, default).await
    }

    /// A webhook bot that verifies signatures made with `signing_key`.
    pub async fn start_signed(signing_key: &str, default: Script) -> Upstream {
        Upstream::start_with(Some(signing_key.to_owned()), default).await
    }

    async fn start_with(signing_key: Option<String>, default: Script) -> Upstream {
        let shared = Arc::new(Shared {
            signing_key,
            hits: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            gates: Mutex::new(HashSet::new()),
            finished: Mutex::new(0),
            notify: Notify::new(),
            stop: CancellationToken::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Upstream { addr, shared }
    }

    /// The OpenAI-style URL of this upstream.
    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    /// The webhook-bot URL of this upstream.
    pub fn bot_url(&self) -> String {
        format!("http://{}/bot", self.addr)
    }

    /// The next request (after those already queued) gets `script`.
    pub fn then(&self, script: Script) {
        self.shared.queue.lock().push_back(script);
    }

    /// Requests with no queued script get `script` from now on.
    pub fn set_default(&self, script: Script) {
        *self.shared.default.lock() = script;
    }

    /// Lets every stream held at `gate` go on (and any that reaches it later).
    pub fn open(&self, gate: &'static str) {
        self.shared.gates.lock().insert(gate);
        self.shared.notify.notify_waiters();
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().clone()
    }

    pub fn hit_count(&self) -> usize {
        self.shared.hits.lock().len()
    }

    /// Waits until at least `n` answers were sent to their end (the client read them).
    pub async fn wait_finished(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.notify.notified();
            if *self.shared.finished.lock() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("upstream: {n} answers not read to the end within {within:?}");
            }
        }
    }

    /// Waits until at least `n` requests have arrived; returns them all.
    pub async fn wait_hits(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.notify.notified();
            if self.hit_count() >= n {
                return self.hits();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "upstream: {n} requests not seen within {within:?} (got {})",
                    self.hit_count()
                );
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.notify.notify_waiters();
    }
}

/// A port on loopback where nothing listens (bound, then released).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/v1/chat/completions")
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature_ok = shared.signing_key.as_deref().is_some_and(|key| {
        headers
            .get("x-confab-signature")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|sig| signature_valid(key.as_bytes(), sig, &body))
    });
    let script = shared
        .queue
        .lock()
        .pop_front()
        .unwrap_or_else(|| shared.default.lock().clone());
    shared.hits.lock().push(Hit {
        at: Instant::now(),
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body,
        signature_ok,
    });
    shared.notify.notify_waiters();
    if script.hang {
        shared.stop.cancelled().await;
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Body::empty())
            .unwrap();
    }
    let steps: VecDeque<Step> = script.steps.into();
    let stream = futures_util::stream::unfold((steps, shared), |(mut steps, shared)| async move {
        loop {
            let Some(step) = steps.pop_front() else {
                *shared.finished.lock() += 1;
                shared.notify.notify_waiters();
                return None;
            };
            match step {
                Step::Send(s) => {
                    return Some((Ok::<Bytes, std::io::Error>(Bytes::from(s)), (steps, shared)))
                }
                Step::Gate(g) => loop {
                    let notified = shared.notify.notified();
                    if shared.gates.lock().contains(g) || shared.stop.is_cancelled() {
                        break;
                    }
                    notified.await;
                },
                Step::Stall => {
                    shared.stop.cancelled().await;
                    return None;
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
            }
        }
    });
    Response::builder()
        .status(StatusCode::from_u16(script.status).unwrap())
        .header("content-type", script.content_type)
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// HMAC-SHA256 (RFC 2104), written out here so the check does not lean on Confab's code.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`, `t` within 5 minutes.
pub fn signature_valid(key: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - t).abs() > 300 {
        return false;
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = hex(&hmac_sha256(key, &signed));
    v1.contains(&expected)
}

#[test]
fn hmac_matches_rfc_4231_case_2() {
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// The fake server itself: chunk by chunk, held at its gate until opened, recorded.
#[tokio::test]
async fn the_fake_openai_server_streams_and_holds_at_its_gate() {
    use http_body_util::{BodyExt, Full};
    let up = Upstream::start(Script::openai_gated(&["a"], "g", &["b"])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = axum::http::Request::post(up.url())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    while !text.contains("\"content\":\"a\"") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first piece in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), body.frame())
            .await
            .is_err(),
        "held at the gate"
    );
    up.open("g");
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"content\":\"b\""), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    assert!(
        rest.contains(&format!("\"total_tokens\":{TOTAL_TOKENS}")),
        "{rest}"
    );
    let hits = up.wait_hits(1, Duration::from_secs(1)).await;
    assert_eq!(hits[0].body, json!({"stream": true}));
    assert_eq!(hits[0].path, "/v1/chat/completions");
}
