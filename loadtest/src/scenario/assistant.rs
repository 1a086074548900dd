//! `assistant`: C visitors, each in its own conversation, chat with an assistant that a fake
//! OpenAI-compatible upstream ([`crate::upstream`], started here) answers by streaming N
//! tokens. The gateway's config must give the tenant an `openai` assistant on that upstream
//! that answers `always` (`assistant-config`), so every conversation starts with the bot.
//!
//! Each visitor sends a stamped message on the visitor channel, reads the reply's
//! `message:delta` frames and the stored bot message (`message:new`), and only then sends
//! its next message (`--rounds`), so C replies stream at once. The visitors' first messages
//! are spread over `--ramp`.
//!
//! Every token the upstream streams is a probe `t<micros>.<round>.<i> ` (see
//! [`crate::upstream`]), so a visitor checks, per reply: every delta arrived once and in
//! order, on its own conversation, under one `streamId`; exactly one bot message was
//! stored, with `meta.mode = "ai"`, the deltas' `streamId` and a body equal to the
//! concatenation of the deltas (all N of them); no second reply and no stray delta later.
//! Latency per delta is the visitor's receive time − the time the upstream handed the
//! chunk to its socket (same process, same wall clock, `CLOCK_REALTIME`), i.e. what the
//! gateway adds between a delta leaving the upstream and reaching the visitor, plus two
//! loopback hops and this process's scheduling. With `--server-pid`, the gateway's CPU over
//! the measured phase is reported per reply and per delta.
//!
//! The run exits with an error when anything is lost, duplicated, reordered, mismatched or
//! late past `--reply-timeout`, after printing the figures.
//!
//! `assistant-upstream` ([`upstream`]) is the fake upstream alone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{create_sessions, latency_row, source_pool, Endpoints, Stop};
use crate::api;
use crate::cli::{AssistantArgs, AssistantUpstreamArgs, Target};
use crate::http::HttpClient;
use crate::probe::{new_run_id, now_us, Stamp};
use crate::report::{self, rate, Progress, Table, LATENCY_HEADERS};
use crate::stats::{Failures, Latency};
use crate::upstream::{Piece, Upstream};
use crate::ws::Ws;

/// Longest reply body the gateway stores (`MAX_MESSAGE_CHARS`): longer replies are cut,
/// which would read as a mismatch.
const MAX_REPLY_CHARS: usize = 10_000;

/// Counters the visitor tasks share.
#[derive(Default)]
struct Shared {
    /// Visitor messages sent (each owes a reply).
    sent: AtomicU64,
    /// Their acks.
    acked: AtomicU64,
    /// Bot messages stored in answer to the current message (the round's reply).
    stored: AtomicU64,
    /// Of those, replies that passed every check.
    complete: AtomicU64,
    /// Replies that were the safe fallback (the upstream call failed, per the gateway).
    fallbacks: AtomicU64,
    /// Replies not stored within `--reply-timeout`.
    timed_out: AtomicU64,
    /// Bot messages answering an earlier round, or arriving after the last reply.
    extra_replies: AtomicU64,
    /// Deltas received (first time, this round, this conversation).
    deltas: AtomicU64,
    /// Deltas of a stored (or timed-out) reply that never arrived.
    deltas_missing: AtomicU64,
    /// Deltas seen twice.
    deltas_dup: AtomicU64,
    /// Deltas that came after a later one of the same reply.
    deltas_ooo: AtomicU64,
    /// Deltas of another conversation, stream or round, or unreadable.
    deltas_stray: AtomicU64,
    /// Upstream → visitor, per delta, µs.
    delta_latency: Latency,
    /// Visitor send → ack, µs.
    ack_latency: Latency,
    /// Visitor send → first delta, µs.
    first_delta: Latency,
    /// Last delta → stored message, µs.
    settle: Latency,
    /// Visitor send → stored message, µs.
    reply: Latency,
    /// Replies that failed a check, by reason.
    bad_replies: Failures,
    /// Error frames, send failures, sockets that closed.
    errors: Failures,
    /// Replies whose first delta came more than `--late` after it was due.
    late_starts: AtomicU64,
    /// First and last delta received (Unix µs), for deltas per second.
    first_delta_us: AtomicU64,
    last_delta_us: AtomicU64,
    /// First and last reply stored (Unix µs), for replies per second.
    first_reply_us: AtomicU64,
    last_reply_us: AtomicU64,
    /// Visitors done with their rounds.
    done: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Shared {
            first_delta_us: AtomicU64::new(u64::MAX),
            first_reply_us: AtomicU64::new(u64::MAX),
            ..Shared::default()
        }
    }
}

/// Per second over a span of Unix µs (0 when empty).
fn span_rate(count: u64, first: &AtomicU64, last: &AtomicU64) -> f64 {
    let (f, l) = (first.load(Relaxed), last.load(Relaxed));
    if count < 2 || l <= f {
        return 0.0;
    }
    (count - 1) as f64 * 1e6 / (l - f) as f64
}

/// The envelope of a server frame: its type and its raw `data`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// `data` of a `message:delta` frame.
#[derive(Deserialize)]
struct DeltaData<'a> {
    #[serde(rename = "conversationId", borrow)]
    conversation_id: &'a str,
    #[serde(rename = "streamId", borrow)]
    stream_id: &'a str,
    #[serde(borrow)]
    delta: std::borrow::Cow<'a, str>,
}

/// The reply a visitor is waiting for.
struct Current {
    round: u64,
    sent_us: u64,
    acked: bool,
    stream: Option<String>,
    /// The deltas' text, in arrival order.
    text: String,
    /// Which pieces arrived (index 1..=tokens).
    seen: Vec<bool>,
    unique: u64,
    highest: u64,
    last_delta_us: Option<u64>,
}

impl Current {
    fn new(round: u64, sent_us: u64, tokens: u64) -> Self {
        Current {
            round,
            sent_us,
            acked: false,
            stream: None,
            text: String::new(),
            seen: vec![false; tokens as usize + 1],
            unique: 0,
            highest: 0,
            last_delta_us: None,
        }
    }
}

/// What a frame meant for the current reply.
enum Next {
    /// Keep reading.
    Wait,
    /// The reply was stored: on to the next round.
    Stored,
    /// The conversation cannot go on (a fallback handed it to people, an error frame).
    Stop,
}

/// One visitor.
struct VisitorJob {
    index: usize,
    run: u32,
    rounds: usize,
    tokens: u64,
    size: usize,
    /// First send.
    start: Instant,
    reply_timeout: Duration,
    /// Request → first token at the upstream, plus `--late`.
    late_after_us: u64,
    conversation_id: String,
}

impl VisitorJob {
    async fn run(self, mut ws: Ws, shared: Arc<Shared>, mut stop: Stop) {
        let mut open = true;
        tokio::select! {
            _ = tokio::time::sleep_until(self.start) => {}
            _ = stop.wait() => {
                shared.done.fetch_add(1, Relaxed);
                return;
            }
        }
        'rounds: for round in 1..=self.rounds as u64 {
            let stamp = Stamp {
                run: self.run,
                sender: self.index as u32,
                seq: round,
                sent_us: now_us(),
            };
            let frame = json!({
                "type": "message",
                "message": stamp.body(self.size),
                "clientMessageId": stamp.encode(),
            })
            .to_string();
            if let Err(e) = ws.send(Message::text(frame)).await {
                shared.errors.add(format!("send: {e}"));
                open = false;
                break;
            }
            shared.sent.fetch_add(1, Relaxed);
            let mut cur = Current::new(round, stamp.sent_us, self.tokens);
            let deadline = Instant::now() + self.reply_timeout;
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => match self.on_frame(&t, Some(&mut cur), &shared) {
                            Next::Wait => {}
                            Next::Stored => break,
                            Next::Stop => break 'rounds,
                        },
                        Some(Ok(m)) if !m.is_close() => {}
                        other => {
                            shared.errors.add(format!("visitor {}", api::close_reason(other)));
                            open = false;
                            self.give_up(&cur, &shared);
                            break 'rounds;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        shared.timed_out.fetch_add(1, Relaxed);
                        self.give_up(&cur, &shared);
                        break 'rounds;
                    }
                    _ = stop.wait() => {
                        self.give_up(&cur, &shared);
                        break 'rounds;
                    }
                }
            }
        }
        shared.done.fetch_add(1, Relaxed);
        // Anything after the last reply is extra: a second reply, a late delta.
        while open {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        self.on_frame(&t, None, &shared);
                    }
                    Some(Ok(m)) if !m.is_close() => {}
                    _ => open = false,
                },
                _ = stop.wait() => break,
            }
        }
    }

    /// The reply never completed: its missing deltas are lost.
    fn give_up(&self, cur: &Current, shared: &Shared) {
        shared
            .deltas_missing
            .fetch_add(self.tokens - cur.unique, Relaxed);
    }

    fn on_frame(&self, text: &str, cur: Option<&mut Current>, shared: &Shared) -> Next {
        let now = now_us();
        let Ok(env) = serde_json::from_str::<Envelope<'_>>(text) else {
            return Next::Wait;
        };
        match env.kind {
            "message:delta" => {
                self.on_delta(now, env.data, cur, shared);
                Next::Wait
            }
            "message:new" => {
                let data: serde_json::Value = env
                    .data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .unwrap_or_default();
                if data["author"]["kind"] != "bot" {
                    return Next::Wait; // the visitor's own message, echoed
                }
                self.on_reply(now, &data, cur, shared)
            }
            "ack" => {
                if let Some(cur) = cur {
                    let mine = Stamp::find(text, self.run)
                        .is_some_and(|s| s.sender as usize == self.index && s.seq == cur.round);
                    if mine && !cur.acked {
                        cur.acked = true;
                        shared.acked.fetch_add(1, Relaxed);
                        shared
                            .ack_latency
                            .record(self.index, now.saturating_sub(cur.sent_us));
                    }
                }
                Next::Wait
            }
            "error" => {
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                shared.errors.add(format!(
                    "error frame: {}",
                    v["code"]
                        .as_str()
                        .or(v["data"]["code"].as_str())
                        .unwrap_or("?")
                ));
                match cur {
                    Some(cur) => {
                        self.give_up(cur, shared);
                        Next::Stop
                    }
                    None => Next::Wait,
                }
            }
            _ => Next::Wait,
        }
    }

    fn on_delta(
        &self,
        now: u64,
        data: Option<&RawValue>,
        cur: Option<&mut Current>,
        shared: &Shared,
    ) {
        let stray = |why: &str| {
            shared.deltas_stray.fetch_add(1, Relaxed);
            shared.bad_replies.add(format!("stray delta: {why}"));
        };
        let Some(d) = data.and_then(|d| serde_json::from_str::<DeltaData<'_>>(d.get()).ok()) else {
            return stray("unreadable frame");
        };
        if d.conversation_id != self.conversation_id {
            return stray("another conversation's");
        }
        let Some(p) = Piece::parse(&d.delta) else {
            return stray("not a piece of the fake upstream");
        };
        let Some(cur) = cur.filter(|c| c.round == p.round) else {
            return stray("of an earlier reply, or after the last one");
        };
        match &cur.stream {
            None => cur.stream = Some(d.stream_id.to_owned()),
            Some(s) if s.as_str() != d.stream_id => {
                return stray("a second streamId for one reply")
            }
            Some(_) => {}
        }
        let i = p.index as usize;
        if i == 0 || i >= cur.seen.len() {
            return stray("index out of range");
        }
        if cur.seen[i] {
            shared.deltas_dup.fetch_add(1, Relaxed);
            return;
        }
        cur.seen[i] = true;
        cur.unique += 1;
        if p.index < cur.highest {
            shared.deltas_ooo.fetch_add(1, Relaxed);
        }
        cur.highest = cur.highest.max(p.index);
        if cur.last_delta_us.is_none() {
            let wait = now.saturating_sub(cur.sent_us);
            shared.first_delta.record(self.index, wait);
            if wait > self.late_after_us {
                shared.late_starts.fetch_add(1, Relaxed);
            }
        }
        shared.first_delta_us.fetch_min(now, Relaxed);
        shared.last_delta_us.fetch_max(now, Relaxed);
        cur.last_delta_us = Some(now);
        cur.text.push_str(&d.delta);
        shared.deltas.fetch_add(1, Relaxed);
        shared
            .delta_latency
            .record(self.index, now.saturating_sub(p.sent_us));
    }

    fn on_reply(
        &self,
        now: u64,
        data: &serde_json::Value,
        cur: Option<&mut Current>,
        shared: &Shared,
    ) -> Next {
        let body = data["body"].as_str().unwrap_or("");
        let mode = data["meta"]["mode"].as_str().unwrap_or("");
        let pieces = Piece::parse_all(body);
        let round = pieces.as_ref().and_then(|p| p.first()).map(|p| p.round);
        let Some(cur) = cur else {
            shared.extra_replies.fetch_add(1, Relaxed);
            return Next::Wait;
        };
        if mode == "safe_fallback" {
            // The gateway gave up on the upstream and handed the conversation to people:
            // nothing more will be answered here.
            shared.stored.fetch_add(1, Relaxed);
            shared.fallbacks.fetch_add(1, Relaxed);
            self.give_up(cur, shared);
            return Next::Stop;
        }
        if round.is_some_and(|r| r < cur.round) {
            shared.extra_replies.fetch_add(1, Relaxed);
            return Next::Wait;
        }
        shared.stored.fetch_add(1, Relaxed);
        shared.first_reply_us.fetch_min(now, Relaxed);
        shared.last_reply_us.fetch_max(now, Relaxed);
        shared
            .reply
            .record(self.index, now.saturating_sub(cur.sent_us));
        if let Some(last) = cur.last_delta_us {
            shared.settle.record(self.index, now.saturating_sub(last));
        }
        shared
            .deltas_missing
            .fetch_add(self.tokens - cur.unique, Relaxed);
        let stored_ok = pieces.as_ref().is_some_and(|p| {
            p.len() as u64 == self.tokens
                && p.iter()
                    .enumerate()
                    .all(|(k, p)| p.round == cur.round && p.index == k as u64 + 1)
        });
        let problem = if mode != "ai" {
            Some(format!("meta.mode {mode:?}, not \"ai\""))
        } else if data["meta"]["streamId"].as_str() != cur.stream.as_deref() {
            Some("meta.streamId is not the deltas' streamId".to_owned())
        } else if !stored_ok {
            Some("the stored body is not the N pieces of this reply".to_owned())
        } else if body != cur.text {
            Some("the stored body is not the concatenation of the deltas received".to_owned())
        } else {
            None
        };
        match problem {
            None => {
                shared.complete.fetch_add(1, Relaxed);
            }
            Some(p) => shared.bad_replies.add(p),
        }
        Next::Stored
    }
}

/// Runs the scenario.
/// Returns the JSON document (also printed with `--json`).
pub async fn run(args: AssistantArgs) -> Result<serde_json::Value> {
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    report::print_params("assistant", &params, args.common.json);
    let tokens = args.upstream.tokens;
    if args.concurrent == 0 || args.rounds == 0 || tokens == 0 {
        bail!("--concurrent, --rounds and --tokens must be positive");
    }
    // `t` + 16 digits of µs + `.round.i ` per piece.
    let piece_len = 20 + args.rounds.to_string().len() + tokens.to_string().len();
    if tokens * piece_len > MAX_REPLY_CHARS {
        bail!(
            "--tokens {tokens}: a reply of {} characters would be cut at the gateway's {MAX_REPLY_CHARS}",
            tokens * piece_len
        );
    }
    if args.common.target != Target::Gateway {
        bail!("assistant drives a Confab gateway only (--target gateway)");
    }
    let endpoints = Endpoints::resolve(&args.common).await?;
    let pool = source_pool(&args.common, args.concurrent + args.sessions_concurrency, 0);
    let creds = args.common.creds();
    let run = new_run_id();
    let mut progress = Progress::new();

    // The upstream listens before the first message, so nothing is refused.
    let up = Upstream::new(args.upstream.script(Some(run)));
    let listener = Upstream::bind(&args.upstream.upstream).await?;
    let server = tokio::spawn(up.clone().serve(listener));

    progress.note(format!("connecting {} visitors", args.concurrent));
    let sessions = create_sessions(
        &endpoints,
        &pool,
        &creds,
        args.concurrent,
        args.sessions_concurrency,
        None,
    )
    .await;
    let mut visitors = vec![];
    for (i, s) in sessions.into_iter().enumerate() {
        match s {
            Ok(s) => visitors.push(s),
            Err(e) => bail!("session for visitor {i} failed: {e:#}"),
        }
    }
    let sockets: Vec<Ws> = stream::iter(visitors.iter().enumerate())
        .map(|(i, s)| {
            let ep = endpoints.main(i).clone();
            let local = pool.next_for(&ep.addr);
            let token = s.session_token.clone();
            async move { api::open_visitor(&ep, local, &token).await }
        })
        .buffered(64)
        .try_collect()
        .await?;

    let (stop_tx, stop) = Stop::new();
    let shared = Arc::new(Shared::new());
    let reply_timeout = args.reply_timeout();
    let meter = report::Meter::start(&args.common.server_pids);
    let t0 = Instant::now() + Duration::from_millis(200);
    let tasks: Vec<_> = sockets
        .into_iter()
        .zip(visitors)
        .enumerate()
        .map(|(i, (ws, s))| {
            let job = VisitorJob {
                index: i,
                run,
                rounds: args.rounds,
                tokens: tokens as u64,
                size: args.size,
                start: t0 + args.ramp.0.mul_f64(i as f64 / args.concurrent as f64),
                reply_timeout,
                late_after_us: (args.upstream.script(None).first + args.late.0).as_micros() as u64,
                conversation_id: s.conversation_id,
            };
            tokio::spawn(job.run(ws, shared.clone(), stop.clone()))
        })
        .collect();
    let nominal = args.upstream.script(None);
    progress.note(format!(
        "{} visitors × {} messages; replies of {tokens} tokens, one every {:?} after {:?} (≈ {:.1}s each)",
        args.concurrent,
        args.rounds,
        nominal.gap,
        nominal.first,
        (nominal.first + nominal.gap * (tokens as u32 - 1)).as_secs_f64()
    ));

    // Every visitor bounds each of its waits; this is a safety net on top.
    let deadline = t0 + args.ramp.0 + reply_timeout * args.rounds as u32 + Duration::from_secs(5);
    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut interrupted = false;
    let mut overran = false;
    let mut finished: Option<(Instant, report::Usage, u64)> = None;
    let mut last = (Instant::now(), 0u64);
    // Peaks over 1 s windows: the run's rates, without the set-up and the stragglers.
    let mut window: std::collections::VecDeque<(Instant, u64, u64)> = Default::default();
    let (mut peak_deltas, mut peak_replies, mut peak_streams) = (0f64, 0f64, 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut interrupt => { interrupted = true; break; }
        }
        let now = Instant::now();
        let deltas = shared.deltas.load(Relaxed);
        let stored = shared.stored.load(Relaxed);
        let streams = up.stats.requests.load(Relaxed)
            - up.stats.completed.load(Relaxed)
            - up.stats.aborted.load(Relaxed);
        peak_streams = peak_streams.max(streams);
        window.push_back((now, deltas, stored));
        while window.len() > 2 && now - window[1].0 >= Duration::from_secs(1) {
            window.pop_front();
        }
        if let Some(&(then, d0, r0)) = window.front() {
            let dt = (now - then).as_secs_f64();
            if dt >= 0.99 {
                peak_deltas = peak_deltas.max((deltas - d0) as f64 / dt);
                peak_replies = peak_replies.max((stored - r0) as f64 / dt);
            }
        }
        if finished.is_none() && shared.done.load(Relaxed) >= args.concurrent as u64 {
            // The measured phase ends with the last reply; the drain only listens.
            let sent = up.stats.deltas.load(Relaxed);
            finished = Some((now, meter.finish(sent, "delta"), sent));
            progress.note(format!(
                "all replies in (or given up); listening {:.1}s for anything extra",
                args.drain.0.as_secs_f64()
            ));
        }
        if let Some((at, _, _)) = &finished {
            if now >= *at + args.drain.0 {
                break;
            }
        }
        if now >= deadline {
            overran = true;
            break;
        }
        progress.tick(|| {
            let dt = (now - last.0).as_secs_f64().max(1e-3);
            let line = format!(
                "sent {}  replies stored {}  deltas {deltas} ({:.0}/s)  upstream streams {} sent {}",
                shared.sent.load(Relaxed),
                shared.stored.load(Relaxed),
                (deltas - last.1) as f64 / dt,
                up.stats.requests.load(Relaxed),
                up.stats.deltas.load(Relaxed),
            );
            last = (now, deltas);
            line
        });
    }
    let _ = stop_tx.send(true);
    progress.finish();
    for t in tasks {
        t.await?;
    }
    let (usage, upstream_deltas) = match finished {
        Some((_, u, sent)) => (u, sent),
        None => {
            let sent = up.stats.deltas.load(Relaxed);
            (meter.finish(sent, "delta"), sent)
        }
    };
    // Streams the gateway was still reading when the run ended count as aborted below.
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.abort();
    let gateway_metrics = assistant_metrics(&endpoints).await;

    let s = &*shared;
    let load = |a: &AtomicU64| a.load(Relaxed);
    let (sent, stored, complete) = (load(&s.sent), load(&s.stored), load(&s.complete));
    let planned = (args.concurrent * args.rounds) as u64;
    let deltas = load(&s.deltas);
    let lost_deltas = load(&s.deltas_missing);
    let dup = load(&s.deltas_dup);
    let ooo = load(&s.deltas_ooo);
    let stray = load(&s.deltas_stray);
    let extra = load(&s.extra_replies);
    let fallbacks = load(&s.fallbacks);
    let timed_out = load(&s.timed_out);
    let up_requests = load(&up.stats.requests);
    let up_aborted = load(&up.stats.aborted);
    let reply_rate = span_rate(stored, &s.first_reply_us, &s.last_reply_us);
    let delta_rate = span_rate(deltas, &s.first_delta_us, &s.last_delta_us);
    let late_starts = load(&s.late_starts);
    let cpu_per_reply = usage
        .server_cpu_secs
        .filter(|_| stored > 0)
        .map(|c| c * 1e6 / stored as f64);
    let delta_lat = s.delta_latency.summary();
    let first_lat = s.first_delta.summary();
    let settle_lat = s.settle.summary();
    let reply_lat = s.reply.summary();
    let ack_lat = s.ack_latency.summary();
    let up_lag = up.stats.lag.summary();
    let errors = s.errors.snapshot();
    let bad = s.bad_replies.snapshot();
    let up_problems = up.stats.problems.snapshot();

    let doc = json!({
        "scenario": "assistant",
        "params": params,
        "results": {
            "replies": {
                "planned": planned, "sent": sent, "acked": load(&s.acked),
                "stored": stored, "complete": complete, "fallbacks": fallbacks,
                "timedOut": timed_out, "extra": extra,
                "perSec": reply_rate, "peakPerSec": peak_replies, "lateStarts": late_starts,
            },
            "deltas": {
                "upstreamSent": upstream_deltas, "received": deltas, "lost": lost_deltas,
                "duplicates": dup, "outOfOrder": ooo, "stray": stray,
                "perSec": delta_rate, "peakPerSec": peak_deltas,
            },
            "upstream": {
                "requests": up_requests, "completed": load(&up.stats.completed),
                "aborted": up_aborted, "problems": up_problems,
                "peakConcurrentStreams": peak_streams,
            },
            "latency": {
                "upstreamToVisitor": delta_lat,
                "sendToAck": ack_lat,
                "sendToFirstDelta": first_lat,
                "lastDeltaToStored": settle_lat,
                "sendToStored": reply_lat,
                "upstreamLag": up_lag,
            },
            "usage": usage,
            "serverCpuUsPerReply": cpu_per_reply,
            "badReplies": bad,
            "errors": errors,
            "gatewayMetrics": gateway_metrics,
            "interrupted": interrupted,
            "overran": overran,
        }
    });
    if args.common.json {
        report::print_json(&doc);
    } else {
        println!(
            "assistant: {} concurrent streams × {} rounds, {tokens} tokens per reply",
            args.concurrent, args.rounds
        );
        let mut t = Table::new(&[
            "",
            "count",
            "per sec",
            "peak/s (1 s)",
            "expected",
            "lost",
            "dup",
            "out of order",
        ]);
        t.row(vec![
            "replies stored".into(),
            stored.to_string(),
            rate(reply_rate),
            rate(peak_replies),
            planned.to_string(),
            (planned - complete.min(planned)).to_string(),
            extra.to_string(),
            "".into(),
        ]);
        t.row(vec![
            "… complete and correct".into(),
            complete.to_string(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            "deltas to visitors".into(),
            deltas.to_string(),
            rate(delta_rate),
            rate(peak_deltas),
            upstream_deltas.to_string(),
            lost_deltas.to_string(),
            dup.to_string(),
            ooo.to_string(),
        ]);
        t.print();
        println!(
            "  most streams open at the upstream at once: {peak_streams} (sampled every 250 ms)"
        );
        println!();
        let mut h = vec!["latency"];
        h.extend(LATENCY_HEADERS);
        let mut t = Table::new(&h);
        t.row(latency_row("upstream → visitor (delta)", &delta_lat));
        t.row(latency_row("send → ack (stored)", &ack_lat));
        t.row(latency_row("send → first delta", &first_lat));
        t.row(latency_row("last delta → stored reply", &settle_lat));
        t.row(latency_row("send → stored reply", &reply_lat));
        t.row(latency_row("upstream lag (client health)", &up_lag));
        t.print();
        usage.print();
        if let Some(c) = cpu_per_reply {
            println!(
                "  server CPU per reply: {c:.0} µs ({} replies, {upstream_deltas} deltas)",
                stored
            );
        }
        if !gateway_metrics.is_empty() {
            println!("\n  gateway /metrics:");
            for l in &gateway_metrics {
                println!("    {l}");
            }
        }
        let mut notes = errors.clone();
        for (k, v) in &bad {
            notes.insert(format!("reply: {k}"), *v);
        }
        for (k, v) in &up_problems {
            notes.insert(format!("upstream: {k}"), *v);
        }
        for (what, n) in [
            ("replies that were the safe fallback", fallbacks),
            ("replies not stored within --reply-timeout", timed_out),
            (
                "replies whose first delta came later than --late after it was due (not a failure)",
                late_starts,
            ),
            ("bot messages beyond one per visitor message", extra),
            ("deltas of another conversation/stream/round", stray),
            (
                "upstream streams the gateway left before the end",
                up_aborted,
            ),
        ] {
            if n > 0 {
                notes.insert(what.into(), n);
            }
        }
        super::print_problems(notes, &[], 0, interrupted);
        if overran {
            println!("\n(stopped at the run's deadline: some visitor never finished)");
        }
    }

    let mut wrong = vec![];
    for (what, n) in [
        (
            "replies not complete and correct",
            planned - complete.min(planned),
        ),
        ("deltas lost", lost_deltas),
        ("deltas duplicated", dup),
        ("deltas out of order", ooo),
        ("stray deltas", stray),
        ("extra replies", extra),
        ("upstream streams aborted", up_aborted),
    ] {
        if n > 0 {
            wrong.push(format!("{n} {what}"));
        }
    }
    if interrupted || overran {
        wrong.push("the run did not finish".into());
    }
    if !wrong.is_empty() {
        bail!("assistant: {}", wrong.join(", "));
    }
    Ok(doc)
}

/// The gateway's assistant counters (`/metrics`: replies by mode, fallbacks by cause).
async fn assistant_metrics(endpoints: &Endpoints) -> Vec<String> {
    let mut http = HttpClient::new(endpoints.main(0).clone(), None);
    match http.get("/metrics", None).await {
        Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| {
                l.starts_with("confab_assistant_replies_total")
                    || l.starts_with("confab_assistant_fallbacks_total")
                    || l.starts_with("confab_assistant_owed_claims_total")
            })
            .map(str::to_owned)
            .collect(),
        _ => vec![],
    }
}

/// `assistant-upstream`: the fake upstream until SIGINT / SIGTERM or `--duration`, then
/// one line: streams, pieces, lag.
pub async fn upstream(args: AssistantUpstreamArgs) -> Result<()> {
    let up = Upstream::new(args.upstream.script(None));
    let listener = Upstream::bind(&args.upstream.upstream).await?;
    let server = tokio::spawn(up.clone().serve(listener));
    let mut progress = Progress::new();
    progress.note(format!(
        "fake OpenAI-compatible upstream on http://{}{}: {} tokens, one every {}",
        args.upstream.upstream,
        crate::upstream::PATH,
        args.upstream.tokens,
        args.upstream.gap
    ));
    let deadline = args.duration.map(|d| Instant::now() + d.0);
    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut interrupt => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        progress.tick(|| {
            format!(
                "streams {} (done {}, aborted {})  pieces {}",
                up.stats.requests.load(Relaxed),
                up.stats.completed.load(Relaxed),
                up.stats.aborted.load(Relaxed),
                up.stats.deltas.load(Relaxed)
            )
        });
    }
    progress.finish();
    server.abort();
    let lag = up.stats.lag.summary();
    println!(
        "assistant-upstream: {} streams ({} to the end, {} left by the client), {} pieces; \
         lag behind schedule p50 {} p99 {} max {} ms; {} refused/odd",
        up.stats.requests.load(Relaxed),
        up.stats.completed.load(Relaxed),
        up.stats.aborted.load(Relaxed),
        up.stats.deltas.load(Relaxed),
        report::ms(lag.p50_ms),
        report::ms(lag.p99_ms),
        report::ms(lag.max_ms),
        up.stats.problems.total()
    );
    Ok(())
}
