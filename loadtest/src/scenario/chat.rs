//! `chat`: V visitors, each in its own conversation, send at a total rate R over the
//! visitor channel while A agents watch the tenant channel. Every message carries a
//! [`Stamp`], so the tool measures end-to-end latency visitor→agent (`message:new` on the
//! tenant channel), visitor→own echo (`message:new` back on the visitor channel) and
//! send→`ack` (durably stored), and counts lost, duplicated and out-of-order deliveries
//! against the acknowledged sequence numbers.
//!
//! Against `--target baseline`, visitors use `/chat` (echo + broadcast to `/sub`), there
//! are no acks, and every sent message is expected.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use futures_util::SinkExt;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::{
    create_sessions, latency_row, open_agents, per_sec, receive, source_pool, Endpoints, RecvStats,
    Stop,
};
use crate::api::{self, frame_type};
use crate::baseline_proto::{self, Role};
use crate::cli::{ChatArgs, Target};
use crate::probe::{new_run_id, now_us, Stamp};
use crate::report::{self, rate, Progress, Table, LATENCY_HEADERS};
use crate::stats::{Failures, Latency, SeqSet, SeqTracker};
use crate::ws::Ws;

/// Counters the visitor tasks share.
#[derive(Default)]
struct Visitors {
    /// Frames sent.
    sent: AtomicU64,
    /// First `ack` per message.
    acked: AtomicU64,
    /// Acks that said `duplicate: true` (the tool never resends, so these are suspicious).
    ack_duplicates: AtomicU64,
    /// send → ack, µs.
    ack_latency: Latency,
    /// How late each send was against its schedule, µs (the client's own lag).
    send_lag: Latency,
    /// `error` frames and send failures.
    errors: Failures,
    /// Own echoes (`message:new` of the visitor's own message).
    echo: RecvStats,
    /// Visitors that have stopped sending (schedule over, or their socket failed).
    done: AtomicU64,
    /// When the last message was sent (Unix µs).
    last_send_us: AtomicU64,
}

/// What one visitor task hands back.
struct VisitorOut {
    /// Sequence numbers the server acknowledged (baseline: every one sent).
    acked: SeqSet,
    /// Own echoes seen.
    echo: SeqTracker,
}

/// Runs the scenario.
/// Returns the JSON document (also printed with `--json`).
pub async fn run(args: ChatArgs) -> Result<serde_json::Value> {
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    report::print_params("chat", &params, args.common.json);
    if args.visitors == 0 || args.rate <= 0.0 {
        bail!("--visitors and --rate must be positive");
    }
    let target = args.common.target;
    let endpoints = Endpoints::resolve(&args.common).await?;
    let pool = source_pool(
        &args.common,
        args.visitors + args.agents + args.sessions_concurrency,
        0,
    );
    let creds = args.common.creds();
    let run = new_run_id();
    let mut progress = Progress::new();

    // Set-up: agents first, so they see every message.
    progress.note(format!("connecting {} agents", args.agents));
    let agent_sockets = open_agents(target, &endpoints, &pool, &creds, args.agents).await?;
    progress.note(format!("connecting {} visitors", args.visitors));
    let tokens: Vec<Option<String>> = if target == Target::Gateway {
        let sessions = create_sessions(
            &endpoints,
            &pool,
            &creds,
            args.visitors,
            args.sessions_concurrency,
            None,
        )
        .await;
        let mut tokens = vec![];
        for (i, s) in sessions.into_iter().enumerate() {
            match s {
                Ok(s) => tokens.push(Some(s.session_token)),
                Err(e) => bail!("session for visitor {i} failed: {e:#}"),
            }
        }
        tokens
    } else {
        vec![None; args.visitors]
    };
    let visitor_sockets: Vec<Ws> = stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| {
            let ep = endpoints.main(i).clone();
            let local = pool.next_for(&ep.addr);
            async move {
                match token {
                    Some(t) => api::open_visitor(&ep, local, &t).await,
                    None => baseline_proto::open(&ep, Role::Chat, local).await,
                }
            }
        })
        .buffered(64)
        .try_collect()
        .await?;

    // Run.
    let (stop_tx, stop) = Stop::new();
    let agents = Arc::new(RecvStats::default());
    let visitors = Arc::new(Visitors::default());
    let agent_tasks: Vec<_> = agent_sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let needle = Stamp::needle(run);
            let classify = move |t: &str, kind: Option<&str>| match target {
                Target::Gateway if kind == Some("message:new") => Stamp::find_needle(t, &needle),
                Target::Gateway => None,
                Target::Baseline => Stamp::parse(t).filter(|s| s.run == run),
            };
            tokio::spawn(receive(ws, i, agents.clone(), stop.clone(), classify))
        })
        .collect();
    let period = Duration::from_secs_f64(args.visitors as f64 / args.rate);
    let meter = report::Meter::start(&args.common.server_pids);
    let fsync_probe = match &args.fsync_probe {
        Some(dir) => Some(crate::disk::FsyncProbe::start(dir)?),
        None => None,
    };
    let t0 = Instant::now() + Duration::from_millis(200);
    let end = t0 + args.duration.0;
    let t0_us = now_us() + 200_000;
    let visitor_tasks: Vec<_> = visitor_sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let first = t0 + period.mul_f64(i as f64 / args.visitors as f64);
            let v = VisitorRun {
                index: i,
                run,
                target,
                size: args.size,
                first,
                period,
                end,
            };
            tokio::spawn(v.run(ws, visitors.clone(), stop.clone()))
        })
        .collect();
    progress.note(format!(
        "sending {} msg/s for {:.0}s ({} visitors, one message every {:.2}s each)",
        args.rate,
        args.duration.0.as_secs_f64(),
        args.visitors,
        period.as_secs_f64()
    ));

    let expected_acked = |v: &Visitors| match target {
        Target::Gateway => v.acked.load(Relaxed),
        Target::Baseline => v.sent.load(Relaxed),
    };
    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut interrupted = false;
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut draining: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut interrupt => { interrupted = true; break; }
        }
        let now = Instant::now();
        // Visitors that fell behind catch up after `end`; the drain starts when the last
        // one has stopped sending, or late deliveries would be counted as lost.
        if draining.is_none() && visitors.done.load(Relaxed) >= args.visitors as u64 {
            draining = Some(now);
            progress.note(format!(
                "sending done ({:.1}s late); draining",
                now.saturating_duration_since(end).as_secs_f64()
            ));
        }
        let sent = visitors.sent.load(Relaxed);
        let delivered = agents.deliveries.load(Relaxed);
        let acked = expected_acked(&visitors);
        if let Some(since) = draining {
            let all_in = delivered >= acked * args.agents as u64
                && visitors.echo.deliveries.load(Relaxed) >= acked
                && (target == Target::Baseline || acked + visitors.errors.total() >= sent);
            if all_in || now >= since + args.drain.0 {
                break;
            }
        }
        progress.tick(|| {
            let dt = (now - last.0).as_secs_f64().max(1e-3);
            let line = format!(
                "sent {sent} ({:.0}/s)  acked {acked}  agent deliveries {delivered} ({:.0}/s)  echoes {}",
                (sent - last.1) as f64 / dt,
                (delivered - last.2) as f64 / dt,
                visitors.echo.deliveries.load(Relaxed),
            );
            last = (now, sent, delivered);
            line
        });
    }
    let _ = stop_tx.send(true);
    progress.finish();
    let fsync = fsync_probe.map(|p| p.finish()).transpose()?;

    let mut acked_sets = vec![];
    let mut echo_lost = 0;
    for t in visitor_tasks {
        let out = t.await?;
        echo_lost += out.echo.lost(std::slice::from_ref(&out.acked));
        acked_sets.push(out.acked);
    }
    // Echo trackers key on sender 0; agent trackers on the visitor index.
    let mut agent_lost = 0;
    for t in agent_tasks {
        agent_lost += t.await?.lost(&acked_sets);
    }

    let sent = visitors.sent.load(Relaxed);
    let acked = expected_acked(&visitors);
    let usage = meter.finish(sent, "message");
    // Visitors that fell behind finish late: rates are over the real sending span.
    let send_secs = args.duration.0.max(Duration::from_micros(
        visitors.last_send_us.load(Relaxed).saturating_sub(t0_us),
    ));
    let span = Duration::from_micros(agents.last_us.load(Relaxed).saturating_sub(t0_us));
    let agent_lat = agents.latency.summary();
    let echo_lat = visitors.echo.latency.summary();
    let ack_lat = visitors.ack_latency.summary();
    let lag = visitors.send_lag.summary();
    let errors = visitors.errors.snapshot();
    let agent_dropped = agents.dropped.snapshot();
    let visitor_dropped = visitors.echo.dropped.snapshot();
    let d = |r: &RecvStats| (r.duplicates.load(Relaxed), r.out_of_order.load(Relaxed));
    let (agent_dup, agent_ooo) = d(&agents);
    let (echo_dup, echo_ooo) = d(&visitors.echo);

    let doc = json!({
        "scenario": "chat",
        "params": params,
        "results": {
            "sent": sent,
            "sentPerSec": per_sec(sent, send_secs),
            "acked": acked,
            "ackDuplicates": visitors.ack_duplicates.load(Relaxed),
            "errors": errors,
            "agents": {
                "deliveries": agents.deliveries.load(Relaxed),
                "expected": acked * args.agents as u64,
                "deliveriesPerSec": per_sec(agents.deliveries.load(Relaxed), span),
                "lost": agent_lost, "duplicates": agent_dup, "outOfOrder": agent_ooo,
                "latency": agent_lat, "dropped": agent_dropped,
                "resumes": agents.resumes.load(Relaxed),
            },
            "echo": {
                "deliveries": visitors.echo.deliveries.load(Relaxed),
                "expected": acked,
                "lost": echo_lost, "duplicates": echo_dup, "outOfOrder": echo_ooo,
                "latency": echo_lat, "dropped": visitor_dropped,
            },
            "ackLatency": ack_lat,
            "sendLag": lag,
            "fsync": fsync,
            "usage": usage,
            "interrupted": interrupted,
        }
    });
    if args.common.json {
        report::print_json(&doc);
        return Ok(doc);
    }

    println!("chat: {} visitors → {} agents", args.visitors, args.agents);
    let mut t = Table::new(&["", "count", "per sec", "lost", "dup", "out of order"]);
    t.row(vec![
        "sent".into(),
        sent.to_string(),
        rate(per_sec(sent, send_secs)),
        "".into(),
        "".into(),
        "".into(),
    ]);
    if target == Target::Gateway {
        t.row(vec![
            "acked".into(),
            acked.to_string(),
            rate(per_sec(acked, send_secs)),
            (sent.saturating_sub(acked)).to_string(),
            visitors.ack_duplicates.load(Relaxed).to_string(),
            "".into(),
        ]);
    }
    t.row(vec![
        "agent deliveries".into(),
        agents.deliveries.load(Relaxed).to_string(),
        rate(per_sec(agents.deliveries.load(Relaxed), span)),
        agent_lost.to_string(),
        agent_dup.to_string(),
        agent_ooo.to_string(),
    ]);
    t.row(vec![
        "visitor echoes".into(),
        visitors.echo.deliveries.load(Relaxed).to_string(),
        "".into(),
        echo_lost.to_string(),
        echo_dup.to_string(),
        echo_ooo.to_string(),
    ]);
    t.print();
    println!();
    let mut h = vec!["latency"];
    h.extend(LATENCY_HEADERS);
    let mut t = Table::new(&h);
    t.row(latency_row("visitor → agent", &agent_lat));
    t.row(latency_row("visitor → own echo", &echo_lat));
    if target == Target::Gateway {
        t.row(latency_row("send → ack (stored)", &ack_lat));
    }
    t.row(latency_row("client send lag", &lag));
    if let Some(fsync) = &fsync {
        t.row(latency_row("disk fdatasync (probe)", fsync));
    }
    t.print();
    usage.print();
    super::print_problems(
        errors,
        &[("agent", agent_dropped), ("visitor", visitor_dropped)],
        agents.resumes.load(Relaxed),
        interrupted,
    );
    Ok(doc)
}

/// One visitor's schedule.
struct VisitorRun {
    /// Visitor index: the stamp's sender.
    index: usize,
    /// This run's id.
    run: u32,
    /// Gateway or baseline framing.
    target: Target,
    /// Body size.
    size: usize,
    /// First send.
    first: Instant,
    /// Time between sends.
    period: Duration,
    /// No sends scheduled at or after this.
    end: Instant,
}

impl VisitorRun {
    async fn run(self, mut ws: Ws, shared: Arc<Visitors>, mut stop: Stop) -> VisitorOut {
        let mut ticker = tokio::time::interval_at(self.first, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut seq = 0u64;
        let mut sending = true;
        let mut acked = SeqSet::default();
        let mut echo = SeqTracker::default();
        loop {
            tokio::select! {
                scheduled = ticker.tick(), if sending => {
                    if scheduled >= self.end {
                        sending = false;
                        shared.done.fetch_add(1, Relaxed);
                        continue;
                    }
                    shared.send_lag.record(self.index, scheduled.elapsed().as_micros() as u64);
                    seq += 1;
                    let stamp = Stamp { run: self.run, sender: self.index as u32, seq, sent_us: now_us() };
                    let frame = match self.target {
                        Target::Gateway => json!({
                            "type": "message",
                            "message": stamp.body(self.size),
                            "clientMessageId": stamp.encode(),
                        })
                        .to_string(),
                        Target::Baseline => stamp.body(self.size),
                    };
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        shared.errors.add(format!("send: {e}"));
                        break;
                    }
                    shared.sent.fetch_add(1, Relaxed);
                    shared.last_send_us.fetch_max(stamp.sent_us, Relaxed);
                    if self.target == Target::Baseline {
                        acked.insert(seq);
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => self.on_frame(&t, &shared, &mut acked, &mut echo),
                    Some(Ok(m)) if !m.is_close() => {}
                    other => {
                        shared.echo.dropped.add(api::close_reason(other));
                        break;
                    }
                },
                _ = stop.wait() => break,
            }
        }
        if sending {
            shared.done.fetch_add(1, Relaxed);
        }
        VisitorOut { acked, echo }
    }

    fn on_frame(&self, text: &str, shared: &Visitors, acked: &mut SeqSet, echo: &mut SeqTracker) {
        let mine = |s: &Stamp| s.sender as usize == self.index;
        match self.target {
            Target::Baseline => {
                if let Some(s) = Stamp::parse(text).filter(|s| s.run == self.run && mine(s)) {
                    shared
                        .echo
                        .record(self.index, echo, &Stamp { sender: 0, ..s });
                }
            }
            Target::Gateway => match frame_type(text) {
                Some("message:new") => {
                    if let Some(s) = Stamp::find(text, self.run).filter(mine) {
                        shared
                            .echo
                            .record(self.index, echo, &Stamp { sender: 0, ..s });
                    }
                }
                Some("ack") => {
                    if let Some(s) = Stamp::find(text, self.run).filter(mine) {
                        if text.contains("\"duplicate\":true") {
                            shared.ack_duplicates.fetch_add(1, Relaxed);
                        }
                        if acked.insert(s.seq) {
                            shared.acked.fetch_add(1, Relaxed);
                            shared.ack_latency.record(self.index, s.age_us());
                        }
                    }
                }
                Some("error") => {
                    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                    shared.errors.add(format!(
                        "error frame: {}",
                        v["code"].as_str().unwrap_or("?")
                    ));
                }
                _ => {}
            },
        }
    }
}
