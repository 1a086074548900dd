//! The two upstream dialects of an assistant (docs/assistants.md "Dialects"): builds the
//! request, sends it with the node's one HTTP client (reqwest: a connection pool per node,
//! keep-alive, HTTP/2 where offered), and reads the answer — a Server-Sent Events stream
//! (parsed by `eventsource-stream`) or, for webhook bots, JSON. Streamed pieces go to
//! `deltas` as they arrive; the outcome is a [`Reply`] or the [`Failure`] that makes the
//! caller store the safe fallback. The caller bounds the whole call with the assistant's
//! `timeout_secs`.

use confab_protocol::model::{AuthorKind, Conversation, Intent, Message};
use confab_protocol::token::sign_webhook;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::AssistantKind;
use crate::settings::Assistant;

/// Most bytes of a JSON answer read from a webhook bot.
const MAX_JSON_BYTES: usize = 256 * 1024;
/// Most characters of a reply (a message's limit): the rest is cut.
pub const MAX_REPLY_CHARS: usize = confab_protocol::validate::MAX_MESSAGE_CHARS;

/// What an assistant is asked.
pub struct Request<'a> {
    pub tenant: &'a str,
    pub conversation: &'a Conversation,
    /// The last `context_messages` messages, oldest first, ending with the newest one
    /// being answered.
    pub messages: &'a [Message],
    /// The intent the visitor chose (one of the tenant's), if any.
    pub intent: Option<&'a Intent>,
}

/// A complete answer.
#[derive(Debug, Default)]
pub struct Reply {
    pub text: String,
    /// `ai` or `flow`.
    pub mode: String,
    /// Pieces were sent to `deltas` (the stored message then carries the stream id).
    pub streamed: bool,
    /// The `streamId` of those pieces (set by the caller, which named the stream).
    pub stream_id: Option<String>,
    /// A webhook bot's `handoff: true`.
    pub handoff: bool,
    /// A webhook bot's `metadata`.
    pub metadata: Option<Value>,
    /// openai: the model that answered, and `usage.total_tokens`.
    pub model: Option<String>,
    pub tokens: Option<u64>,
    /// A webhook bot's `reply: null` (or a stream without text): store nothing.
    pub silent: bool,
}

/// Why an assistant did not answer (the `cause` label of the fallback metric).
#[derive(Debug)]
pub enum Failure {
    /// No connection, or it broke before the answer was complete.
    Connect(String),
    /// A non-2xx status.
    Status(u16),
    /// The answer was not what the dialect promises.
    Malformed(String),
    /// A well-formed answer without any text (openai).
    Empty,
    /// `timeout_secs` passed (decided by the caller).
    Timeout,
    /// The circuit is open (decided by the caller).
    CircuitOpen,
}

impl Failure {
    pub fn cause(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Status(_) => "status",
            Failure::Malformed(_) => "malformed",
            Failure::Empty => "empty",
            Failure::Timeout => "timeout",
            Failure::CircuitOpen => "circuit_open",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connection failed: {e}"),
            Failure::Status(s) => write!(f, "answered HTTP {s}"),
            Failure::Malformed(e) => write!(f, "malformed answer: {e}"),
            Failure::Empty => f.write_str("empty answer"),
            Failure::Timeout => f.write_str("no complete answer within timeout_secs"),
            Failure::CircuitOpen => f.write_str("circuit open after consecutive failures"),
        }
    }
}

/// Asks `assistant`; pieces of a streamed answer go to `deltas` as they arrive.
pub async fn call(
    http: &reqwest::Client,
    assistant: &Assistant,
    req: &Request<'_>,
    deltas: mpsc::Sender<String>,
) -> Result<Reply, Failure> {
    match assistant.cfg.kind {
        AssistantKind::Openai => openai(http, assistant, req, deltas).await,
        AssistantKind::Webhook => webhook(http, assistant, req, deltas).await,
    }
}

/// The OpenAI chat messages: the system prompt (with the chosen intent), then the context
/// (visitor → `user`, bot and agent → `assistant`; system notes left out).
pub fn openai_messages(assistant: &Assistant, req: &Request<'_>) -> Vec<Value> {
    let mut system = assistant.cfg.system_prompt.clone().unwrap_or_default();
    if let Some(intent) = req.intent {
        let label = intent.display_label.as_deref().unwrap_or(&intent.name);
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(&format!("The visitor chose the topic \"{label}\""));
        match intent.description.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => system.push_str(&format!(": {d}")),
            None => system.push('.'),
        }
    }
    let mut out = Vec::with_capacity(req.messages.len() + 1);
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for m in req.messages {
        let role = match m.author.kind {
            AuthorKind::Visitor => "user",
            AuthorKind::Agent | AuthorKind::Bot => "assistant",
            AuthorKind::System => continue,
        };
        out.push(json!({"role": role, "content": with_attachments(m)}));
    }
    out
}

/// A message's text for the model, with a line naming each file it carries: the model
/// does not get the files, but it knows they were sent (a message may be files only).
fn with_attachments(m: &Message) -> String {
    let mut text = m.body.clone();
    for a in &m.attachments {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!(
            "[attached file: {} ({}, {} bytes)]",
            a.filename, a.content_type, a.size
        ));
    }
    text
}

async fn send(builder: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
    let resp = builder
        .send()
        .await
        .map_err(|e| Failure::Connect(without_url(&e)))?;
    if !resp.status().is_success() {
        return Err(Failure::Status(resp.status().as_u16()));
    }
    Ok(resp)
}

/// reqwest's error text without the URL (it may carry credentials in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    match std::error::Error::source(e) {
        Some(src) => format!("{s}: {src}"),
        None => s,
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    total_tokens: Option<u64>,
}

async fn openai(
    http: &reqwest::Client,
    assistant: &Assistant,
    req: &Request<'_>,
    deltas: mpsc::Sender<String>,
) -> Result<Reply, Failure> {
    let body = json!({
        "model": assistant.cfg.model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": openai_messages(assistant, req),
    });
    let mut builder = http
        .post(assistant.url.clone())
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = assistant.cfg.api_key.as_deref().filter(|k| !k.is_empty()) {
        builder = builder.bearer_auth(key);
    }
    let resp = send(builder).await?;
    let mut reply = Reply {
        mode: "ai".into(),
        ..Reply::default()
    };
    let mut events = resp.bytes_stream().eventsource();
    let mut done = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| Failure::Connect(e.to_string()))?;
        let data = event.data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        if data.is_empty() {
            continue;
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| Failure::Malformed(format!("a chunk is not JSON: {e}")))?;
        if reply.model.is_none() {
            reply.model = chunk.model.filter(|m| !m.is_empty());
        }
        if let Some(t) = chunk.usage.and_then(|u| u.total_tokens) {
            reply.tokens = Some(t);
        }
        let piece = chunk
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.delta)
            .and_then(|d| d.content)
            .unwrap_or_default();
        push_piece(&mut reply, piece, &deltas).await;
    }
    if !done {
        return Err(Failure::Malformed("the stream ended without [DONE]".into()));
    }
    if reply.text.trim().is_empty() {
        return Err(Failure::Empty);
    }
    Ok(reply)
}

/// Adds a streamed piece to the reply and forwards it (within the message length).
async fn push_piece(reply: &mut Reply, piece: String, deltas: &mpsc::Sender<String>) {
    if piece.is_empty() {
        return;
    }
    let room = MAX_REPLY_CHARS.saturating_sub(reply.text.chars().count());
    let piece: String = piece.chars().take(room).collect();
    if piece.is_empty() {
        return;
    }
    reply.text.push_str(&piece);
    reply.streamed = true;
    // The receiver only goes away when the caller gave up; the reply is then dropped anyway.
    let _ = deltas.send(piece).await;
}

/// A webhook bot's JSON answer, and the `done` event of its stream.
#[derive(Deserialize)]
struct BotAnswer {
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    handoff: bool,
    #[serde(default)]
    metadata: Option<Value>,
}

/// One event of a webhook bot's stream.
#[derive(Deserialize)]
struct BotEvent {
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    handoff: bool,
    #[serde(default)]
    metadata: Option<Value>,
}

fn bot_mode(mode: Option<String>) -> Result<String, Failure> {
    match mode.as_deref() {
        None | Some("flow") => Ok("flow".into()),
        Some("ai") => Ok("ai".into()),
        Some(other) => Err(Failure::Malformed(format!(
            "mode {other:?} is neither flow nor ai"
        ))),
    }
}

fn bot_metadata(v: Option<Value>) -> Result<Option<Value>, Failure> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.is_empty() => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(Failure::Malformed("metadata must be an object".into())),
    }
}

async fn webhook(
    http: &reqwest::Client,
    assistant: &Assistant,
    req: &Request<'_>,
    deltas: mpsc::Sender<String>,
) -> Result<Reply, Failure> {
    let body = json!({
        "type": "message:new",
        "tenantId": req.tenant,
        "assistantId": assistant.cfg.id,
        "conversation": req.conversation,
        "messages": req.messages,
        "intent": req.intent.map(|i| i.name.as_str()),
    })
    .to_string();
    let key = assistant.cfg.api_key.as_deref().unwrap_or_default();
    let now = confab_protocol::time::now_ms() / 1000;
    let builder = http
        .post(assistant.url.clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-confab-event", "message:new")
        .header(
            "x-confab-delivery",
            confab_protocol::token::random_id("dlv_", 16),
        )
        .header(
            "x-confab-signature",
            sign_webhook(key.as_bytes(), now, body.as_bytes()),
        )
        .body(body);
    let resp = send(builder).await?;
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") {
        return webhook_stream(resp, deltas).await;
    }
    if !content_type.starts_with("application/json") {
        return Err(Failure::Malformed(format!(
            "content type {content_type:?} is neither application/json nor text/event-stream"
        )));
    }
    let bytes = read_limited(resp, MAX_JSON_BYTES).await?;
    let answer: BotAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Malformed(format!("the JSON answer does not parse: {e}")))?;
    let text: String = answer
        .reply
        .unwrap_or_default()
        .chars()
        .take(MAX_REPLY_CHARS)
        .collect();
    Ok(Reply {
        silent: text.trim().is_empty(),
        text,
        mode: bot_mode(answer.mode)?,
        handoff: answer.handoff,
        metadata: bot_metadata(answer.metadata)?,
        ..Reply::default()
    })
}

async fn webhook_stream(
    resp: reqwest::Response,
    deltas: mpsc::Sender<String>,
) -> Result<Reply, Failure> {
    let mut reply = Reply::default();
    let mut events = resp.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| Failure::Connect(e.to_string()))?;
        let data = event.data.trim();
        if data.is_empty() {
            continue;
        }
        let ev: BotEvent = serde_json::from_str(data)
            .map_err(|e| Failure::Malformed(format!("an event is not JSON: {e}")))?;
        if let Some(piece) = ev.delta {
            push_piece(&mut reply, piece, &deltas).await;
        }
        if ev.done {
            reply.mode = bot_mode(ev.mode)?;
            reply.handoff = ev.handoff;
            reply.metadata = bot_metadata(ev.metadata)?;
            reply.silent = reply.text.trim().is_empty();
            return Ok(reply);
        }
    }
    Err(Failure::Malformed(
        "the stream ended without a done event".into(),
    ))
}

async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::Connect(e.to_string()))?;
        if out.len() + chunk.len() > max {
            return Err(Failure::Malformed(format!(
                "the answer is larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
