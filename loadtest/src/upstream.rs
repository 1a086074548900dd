//! A fake OpenAI-compatible Chat Completions server for the `assistant` scenario (started
//! in-process) and for `assistant-upstream` (alone): a small HTTP/1.1 server (hyper, one
//! task per keep-alive connection) that answers `POST /v1/chat/completions` with
//! `text/event-stream` — a role chunk, N content chunks spaced by a fixed gap, a
//! `finish_reason` chunk, a usage chunk and `data: [DONE]` — in the shape the OpenAI API
//! (and vLLM, llama.cpp's server, Ollama) stream.
//!
//! **Every content piece is a probe:** `t<micros>.<round>.<i> `, where `micros` is the
//! wall-clock time (Unix µs, `SystemTime`, i.e. `CLOCK_REALTIME`) at which the chunk is
//! handed to hyper to be written, `round` is the sequence number of the visitor message
//! being answered (read from the stamp of the last `user` message of the request, see
//! [`crate::probe`]) and `i` the piece's number from 1. The visitor side reads the same
//! clock (same machine), so receive time − `micros` is what the gateway adds between a
//! delta leaving the upstream and reaching the visitor (plus two loopback hops and the
//! client's own scheduling). The pieces are ASCII without escapes, so the stored reply is
//! exactly their concatenation.
//!
//! Pieces follow a schedule (first piece after `first`, then one every `gap`); a stream
//! that falls behind it (a saturated process) sends the late pieces at once and records how
//! late they were ([`UpstreamStats::lag`]) — probes are stamped when sent, so lateness does
//! not distort the latency figure, only the load.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::probe::{now_us, Stamp};
use crate::stats::{Failures, Latency};

/// Where the fake upstream listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9200";
/// The path it answers.
pub const PATH: &str = "/v1/chat/completions";
/// The `model` it reports in its chunks.
pub const MODEL: &str = "confab-loadtest-fake";
/// Largest request body read.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How the upstream answers.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    /// Content pieces per answer.
    pub tokens: usize,
    /// Between two pieces.
    pub gap: Duration,
    /// From the request to the first piece.
    pub first: Duration,
    /// Only stamps of this run identify the round (`None`: any stamp).
    pub run: Option<u32>,
}

/// What the upstream did.
#[derive(Default)]
pub struct UpstreamStats {
    /// Chat completion requests answered with a stream.
    pub requests: AtomicU64,
    /// Streams sent to the end (`[DONE]` handed to hyper).
    pub completed: AtomicU64,
    /// Streams whose client went away before the end.
    pub aborted: AtomicU64,
    /// Content pieces sent.
    pub deltas: AtomicU64,
    /// How late each piece was against its schedule, µs.
    pub lag: Latency,
    /// Requests refused or odd, by reason.
    pub problems: Failures,
}

/// A content piece: `t<micros>.<round>.<i> `.
pub fn piece(micros: u64, round: u64, i: u64) -> String {
    format!("t{micros}.{round}.{i} ")
}

/// One parsed piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// When the upstream sent it, Unix µs.
    pub sent_us: u64,
    /// The visitor message (its stamp's sequence number) it answers.
    pub round: u64,
    /// Its number in the answer, from 1.
    pub index: u64,
}

impl Piece {
    /// Parses one piece (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<Piece> {
        let mut parts = s.trim().strip_prefix('t')?.split('.');
        let p = Piece {
            sent_us: parts.next()?.parse().ok()?,
            round: parts.next()?.parse().ok()?,
            index: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(p)
    }

    /// Every piece of a stored reply, in order; `None` if something else is in it.
    pub fn parse_all(text: &str) -> Option<Vec<Piece>> {
        text.split_whitespace().map(Piece::parse).collect()
    }
}

/// The `data:` event of a chunk, given its `choices` JSON.
fn chunk(created: u64, choices: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-loadtest\",\"object\":\"chat.completion.chunk\",\
         \"created\":{created},\"model\":\"{MODEL}\",\"choices\":{choices}}}\n\n"
    )
}

fn content_chunk(created: u64, content: &str) -> String {
    chunk(
        created,
        &format!(
            "[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]"
        ),
    )
}

/// The opening chunk (the role, empty content), as OpenAI sends it.
fn role_chunk(created: u64) -> String {
    chunk(
        created,
        "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]",
    )
}

/// `finish_reason`, the usage chunk (`stream_options.include_usage`), `[DONE]`.
fn end_chunks(created: u64, prompt_tokens: u64, tokens: u64) -> String {
    let mut s = chunk(
        created,
        "[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]",
    );
    s.push_str(&format!(
        "data: {{\"id\":\"chatcmpl-loadtest\",\"object\":\"chat.completion.chunk\",\
         \"created\":{created},\"model\":\"{MODEL}\",\"choices\":[],\"usage\":{{\
         \"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{tokens},\
         \"total_tokens\":{}}}}}\n\n",
        prompt_tokens + tokens
    ));
    s.push_str("data: [DONE]\n\n");
    s
}

/// Counts a stream as aborted unless it reached its end.
struct Finish {
    stats: Arc<UpstreamStats>,
    done: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.done {
            self.stats.completed.fetch_add(1, Relaxed);
        } else {
            self.stats.aborted.fetch_add(1, Relaxed);
        }
    }
}

/// One answer being streamed.
struct Answer {
    script: Script,
    round: u64,
    created: u64,
    prompt_tokens: u64,
    /// Pieces sent so far.
    sent: usize,
    /// When piece `sent + 1` is due.
    next: Instant,
    opened: bool,
    finish: Finish,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The fake upstream.
pub struct Upstream {
    script: Script,
    /// What it did.
    pub stats: Arc<UpstreamStats>,
}

impl Upstream {
    /// An upstream answering with `script`.
    pub fn new(script: Script) -> Arc<Upstream> {
        Arc::new(Upstream {
            script,
            stats: Arc::default(),
        })
    }

    /// Binds its address.
    pub async fn bind(addr: &str) -> Result<TcpListener> {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("fake upstream: binding {addr}"))
    }

    /// Serves until the task is dropped or aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    self.stats.problems.add(format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Each piece is one small segment: Nagle would hold the next one back.
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| me.clone().answer(req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let (parts, body) = req.into_parts();
        if parts.method != Method::POST || parts.uri.path() != PATH {
            self.stats.problems.add(format!(
                "{} {} (not POST {PATH})",
                parts.method,
                parts.uri.path()
            ));
            return Ok(status(StatusCode::NOT_FOUND, "not found"));
        }
        let bytes = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.stats.problems.add(format!("reading a request: {e}"));
                return Ok(status(StatusCode::BAD_REQUEST, "unreadable body"));
            }
        };
        let request: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                self.stats.problems.add("a request body that is not JSON");
                return Ok(status(StatusCode::BAD_REQUEST, "not JSON"));
            }
        };
        if request["stream"] != true {
            self.stats
                .problems
                .add("a request without \"stream\": true");
            return Ok(status(StatusCode::BAD_REQUEST, "only streaming is served"));
        }
        let round = self.round_of(&request);
        self.stats.requests.fetch_add(1, Relaxed);
        let now = Instant::now();
        let answer = Answer {
            script: self.script,
            round,
            created: now_us() / 1_000_000,
            // Roughly a token per 4 bytes of prompt: only reported back in `usage`.
            prompt_tokens: bytes.len() as u64 / 4,
            sent: 0,
            next: now + self.script.first,
            opened: false,
            finish: Finish {
                stats: self.stats.clone(),
                done: false,
            },
        };
        let body = StreamBody::new(stream::unfold(answer, next_frame)).boxed_unsync();
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert("content-type", "text/event-stream".parse().expect("valid"));
        h.insert("cache-control", "no-cache".parse().expect("valid"));
        Ok(resp)
    }

    /// The round of the request: the sequence number of the stamp in its last `user`
    /// message (0 when there is none).
    fn round_of(&self, request: &serde_json::Value) -> u64 {
        let last_user = request["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str());
        let stamp = last_user.and_then(|text| match self.script.run {
            Some(run) => Stamp::find(text, run),
            None => text.find("lt:").and_then(|at| Stamp::parse(&text[at..])),
        });
        match stamp {
            Some(s) => s.seq,
            None => {
                if self.script.run.is_some() {
                    self.stats
                        .problems
                        .add("a request whose last user message has no stamp of this run");
                }
                0
            }
        }
    }
}

/// The next frame of an answer, once it is due.
async fn next_frame(
    mut a: Answer,
) -> Option<(std::result::Result<Frame<Bytes>, Infallible>, Answer)> {
    if !a.opened {
        a.opened = true;
        return Some((Ok(Frame::data(Bytes::from(role_chunk(a.created)))), a));
    }
    if a.sent < a.script.tokens {
        tokio::time::sleep_until(a.next).await;
        let due = a.next;
        a.sent += 1;
        a.next += a.script.gap;
        let stats = &a.finish.stats;
        stats.lag.record(
            a.sent,
            Instant::now().saturating_duration_since(due).as_micros() as u64,
        );
        let text = content_chunk(a.created, &piece(now_us(), a.round, a.sent as u64));
        stats.deltas.fetch_add(1, Relaxed);
        return Some((Ok(Frame::data(Bytes::from(text))), a));
    }
    if a.finish.done {
        return None;
    }
    a.finish.done = true;
    let end = end_chunks(a.created, a.prompt_tokens, a.script.tokens as u64);
    Some((Ok(Frame::data(Bytes::from(end))), a))
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *resp.status_mut() = code;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full as ReqBody;

    #[test]
    fn pieces_round_trip() {
        let p = piece(1_733_000_000_123_456, 3, 17);
        assert_eq!(p, "t1733000000123456.3.17 ");
        assert_eq!(
            Piece::parse(&p),
            Some(Piece {
                sent_us: 1_733_000_000_123_456,
                round: 3,
                index: 17
            })
        );
        let all = format!("{}{}", piece(1, 2, 1), piece(5, 2, 2));
        let parsed = Piece::parse_all(&all).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].index, 2);
        assert!(Piece::parse_all("t1.2.3 hello").is_none());
        assert!(Piece::parse("t1.2.3.4").is_none());
    }

    /// The stream as the gateway reads it: SSE events whose `data` is JSON with
    /// `choices[0].delta.content`, then usage, then `[DONE]`.
    #[tokio::test]
    async fn streams_stamped_pieces_then_usage_and_done() {
        let run = 0xabcd;
        let up = Upstream::new(Script {
            tokens: 3,
            gap: Duration::from_millis(5),
            first: Duration::from_millis(1),
            run: Some(run),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(up.clone().serve(listener));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let stamp = Stamp {
            run,
            sender: 4,
            seq: 2,
            sent_us: now_us(),
        };
        let body = serde_json::json!({
            "model": "m", "stream": true,
            "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": stamp.body(80)}],
        });
        let req = Request::post(PATH)
            .header("host", "up")
            .body(ReqBody::new(Bytes::from(body.to_string())))
            .unwrap();
        let t0 = now_us();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(events.len(), 1 + 3 + 2 + 1, "{text}");
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let mut content = String::new();
        for e in &events[..events.len() - 1] {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            assert_eq!(v["model"], MODEL);
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                content.push_str(c);
            }
        }
        let usage: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        let pieces = Piece::parse_all(&content).unwrap();
        assert_eq!(
            pieces.iter().map(|p| p.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(pieces.iter().all(|p| p.round == 2 && p.sent_us >= t0));
        // On a schedule (a late piece does not push the next ones back): ~2 gaps apart.
        assert!(pieces[2].sent_us - pieces[0].sent_us >= 5_000);
        assert_eq!(up.stats.requests.load(Relaxed), 1);
        assert_eq!(up.stats.deltas.load(Relaxed), 3);
        // The stream's end is counted when hyper drops the body.
        for _ in 0..100 {
            if up.stats.completed.load(Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(up.stats.completed.load(Relaxed), 1);
        assert_eq!(up.stats.aborted.load(Relaxed), 0);

        // Not streaming, or elsewhere: refused.
        let req = Request::post(PATH)
            .header("host", "up")
            .body(ReqBody::new(Bytes::from(r#"{"messages":[]}"#)))
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 400);
        server.abort();
    }
}
