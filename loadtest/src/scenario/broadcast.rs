//! `broadcast`: the tenant's backend publishes custom events (`POST /v1/tenant/events`
//! with the server key) at rate R, spread over P publishers, to A agents on the tenant
//! channel. Reports deliveries per second, publish → agent latency, publish request
//! latency, and lost / duplicated / out-of-order deliveries per publisher sequence.
//!
//! Against `--target baseline`, publishers are `/pub` sockets and agents `/sub` sockets;
//! every sent frame is expected.
//!
//! The publishers ([`Publisher`]) also drive the `webhooks` scenario, one per tenant.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::SinkExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::{latency_row, open_agents, per_sec, receive, source_pool, Endpoints, RecvStats, Stop};
use crate::baseline_proto::{self, Role};
use crate::cli::{BroadcastArgs, Target};
use crate::http::HttpClient;
use crate::net::Endpoint;
use crate::probe::{new_run_id, now_us, Stamp};
use crate::report::{self, rate, Progress, Table, LATENCY_HEADERS};
use crate::stats::{Failures, Latency, SeqSet};

/// Counters the publishers share.
#[derive(Default)]
pub(super) struct Publishers {
    /// Publish attempts.
    pub sent: AtomicU64,
    /// Publishes the server accepted (202; baseline: sent).
    pub accepted: AtomicU64,
    /// Publish request latency (HTTP round trip), µs.
    pub latency: Latency,
    /// How late each publish was against its schedule, µs.
    pub lag: Latency,
    /// Rejected or failed publishes.
    pub errors: Failures,
    /// When the last publish was sent (Unix µs): publishers that fall behind finish late.
    pub last_us: AtomicU64,
}

/// Runs the scenario.
/// Returns the JSON document (also printed with `--json`).
pub async fn run(args: BroadcastArgs) -> Result<serde_json::Value> {
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    report::print_params("broadcast", &params, args.common.json);
    if args.publishers == 0 || args.rate <= 0.0 {
        bail!("--publishers and --rate must be positive");
    }
    let target = args.common.target;
    let endpoints = Endpoints::resolve(&args.common).await?;
    let pool = source_pool(&args.common, args.agents + args.publishers, 0);
    let creds = args.common.creds();
    let run = new_run_id();
    let mut progress = Progress::new();

    progress.note(format!("connecting {} agents", args.agents));
    let sockets = open_agents(target, &endpoints, &pool, &creds, args.agents).await?;
    let (stop_tx, stop) = Stop::new();
    let agents = Arc::new(RecvStats::default());
    let event_type = args.event_type.clone();
    let meter = report::Meter::start(&args.common.server_pids);
    let t0 = Instant::now() + Duration::from_millis(200);
    let t0_us = now_us() + 200_000;
    let end = t0 + args.duration.0;
    let stall_at = t0 + args.duration.0 / 3;
    let agent_tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            if i < args.stall_agents {
                ws.stall = Some((stall_at, args.stall.0));
            }
            let event_type = event_type.clone();
            let needle = Stamp::needle(run);
            let classify = move |t: &str, kind: Option<&str>| match target {
                Target::Gateway if kind == Some(event_type.as_str()) => {
                    Stamp::find_needle(t, &needle)
                }
                Target::Gateway => None,
                Target::Baseline => Stamp::parse(t).filter(|s| s.run == run),
            };
            tokio::spawn(receive(ws, i, agents.clone(), stop.clone(), classify))
        })
        .collect();

    let publishers = Arc::new(Publishers::default());
    let period = Duration::from_secs_f64(args.publishers as f64 / args.rate);
    let mut publisher_tasks = vec![];
    for p in 0..args.publishers {
        let endpoint = endpoints.main(p).clone();
        let local = pool.next_for(&endpoint.addr);
        let sink = match target {
            Target::Gateway => Sink::Http(HttpClient::new(endpoint.clone(), local)),
            Target::Baseline => Sink::Ws(Box::new(
                baseline_proto::open(&endpoint, Role::Pub, local).await?,
            )),
        };
        let job = Publisher {
            index: p,
            run,
            size: args.size,
            event_type: args.event_type.clone(),
            server_key: creds.server_key.clone(),
            first: t0 + period.mul_f64(p as f64 / args.publishers as f64),
            period,
            end,
            endpoint,
            window: None,
        };
        publisher_tasks.push(tokio::spawn(job.run(
            sink,
            publishers.clone(),
            stop.clone(),
        )));
    }
    progress.note(format!(
        "publishing {} events/s for {:.0}s to {} agents ({} publishers, {} stalling)",
        args.rate,
        args.duration.0.as_secs_f64(),
        args.agents,
        args.publishers,
        args.stall_agents
    ));

    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut interrupted = false;
    let mut draining: Option<Instant> = None;
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut interrupt => { interrupted = true; break; }
        }
        let now = Instant::now();
        let delivered = agents.deliveries.load(Relaxed);
        let accepted = publishers.accepted.load(Relaxed);
        // Publishers that fell behind catch up after `end`; the drain starts when the last
        // one has finished, or late deliveries would be counted as lost.
        if draining.is_none() && now >= end && publisher_tasks.iter().all(|t| t.is_finished()) {
            draining = Some(now);
            progress.note(format!(
                "publishing done ({:.1}s late); draining",
                (now - end).as_secs_f64()
            ));
        }
        if let Some(since) = draining {
            if delivered >= accepted * args.agents as u64 || now >= since + args.drain.0 {
                break;
            }
        }
        progress.tick(|| {
            let dt = (now - last.0).as_secs_f64().max(1e-3);
            let line = format!(
                "published {} accepted {accepted}  deliveries {delivered} ({:.0}/s)",
                publishers.sent.load(Relaxed),
                (delivered - last.1) as f64 / dt
            );
            last = (now, delivered);
            line
        });
    }
    let _ = stop_tx.send(true);
    progress.finish();

    let mut accepted_sets = vec![];
    for t in publisher_tasks {
        accepted_sets.push(t.await?);
    }
    let mut lost = 0;
    for t in agent_tasks {
        lost += t.await?.lost(&accepted_sets);
    }
    let sent = publishers.sent.load(Relaxed);
    let accepted = publishers.accepted.load(Relaxed);
    let deliveries = agents.deliveries.load(Relaxed);
    let usage = meter.finish(deliveries, "delivery");
    let span = Duration::from_micros(agents.last_us.load(Relaxed).saturating_sub(t0_us));
    let publish_span = args.duration.0.max(Duration::from_micros(
        publishers.last_us.load(Relaxed).saturating_sub(t0_us),
    ));
    let delivery_lat = agents.latency.summary();
    let publish_lat = publishers.latency.summary();
    let lag = publishers.lag.summary();
    let dup = agents.duplicates.load(Relaxed);
    let ooo = agents.out_of_order.load(Relaxed);
    let errors = publishers.errors.snapshot();
    let dropped = agents.dropped.snapshot();

    let doc = json!({
        "scenario": "broadcast",
        "params": params,
        "results": {
            "published": sent,
            "accepted": accepted,
            "publishedPerSec": per_sec(accepted, publish_span),
            "deliveries": deliveries,
            "expected": accepted * args.agents as u64,
            "deliveriesPerSec": per_sec(deliveries, span),
            "lost": lost, "duplicates": dup, "outOfOrder": ooo,
            "resumes": agents.resumes.load(Relaxed),
            "deliveryLatency": delivery_lat,
            "publishLatency": publish_lat,
            "publishLag": lag,
            "errors": errors,
            "dropped": dropped,
            "usage": usage,
            "interrupted": interrupted,
        }
    });
    if args.common.json {
        report::print_json(&doc);
        return Ok(doc);
    }

    println!(
        "broadcast: {} publishers → {} agents",
        args.publishers, args.agents
    );
    let mut t = Table::new(&["", "count", "per sec", "lost", "dup", "out of order"]);
    t.row(vec![
        "published (accepted)".into(),
        format!("{accepted}/{sent}"),
        rate(per_sec(accepted, publish_span)),
        "".into(),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        "agent deliveries".into(),
        format!("{deliveries}/{}", accepted * args.agents as u64),
        rate(per_sec(deliveries, span)),
        lost.to_string(),
        dup.to_string(),
        ooo.to_string(),
    ]);
    t.print();
    println!();
    let mut h = vec!["latency"];
    h.extend(LATENCY_HEADERS);
    let mut t = Table::new(&h);
    t.row(latency_row("publish → agent", &delivery_lat));
    if target == Target::Gateway {
        t.row(latency_row("publish request", &publish_lat));
    }
    t.row(latency_row("client publish lag", &lag));
    t.print();
    usage.print();
    super::print_problems(
        errors,
        &[("agent", dropped)],
        agents.resumes.load(Relaxed),
        interrupted,
    );
    Ok(doc)
}

/// Where a publisher sends.
pub(super) enum Sink {
    /// `POST /v1/tenant/events` over one keep-alive connection.
    Http(HttpClient),
    /// A baseline `/pub` socket.
    Ws(Box<crate::ws::Ws>),
}

/// One publisher's schedule.
pub(super) struct Publisher {
    /// The stamp's sender.
    pub index: usize,
    /// This run's id.
    pub run: u32,
    /// Approximate data size.
    pub size: usize,
    /// Custom event type.
    pub event_type: String,
    /// Bearer key for the tenant API.
    pub server_key: String,
    /// First publish.
    pub first: Instant,
    /// Time between publishes.
    pub period: Duration,
    /// No publishes scheduled at or after this.
    pub end: Instant,
    /// Kept for error messages.
    pub endpoint: Arc<Endpoint>,
    /// Closed loop instead of the schedule: each publish first takes a permit, which the
    /// receiver gives back when the event arrives (`webhooks --rate 0`), so the run goes as
    /// fast as deliveries do with a bounded backlog.
    pub window: Option<Arc<Semaphore>>,
}

impl Publisher {
    /// Publishes until `end`; returns the accepted sequence numbers.
    pub async fn run(self, mut sink: Sink, shared: Arc<Publishers>, mut stop: Stop) -> SeqSet {
        let mut ticker = tokio::time::interval_at(self.first, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut accepted = SeqSet::default();
        let mut seq = 0u64;
        if self.window.is_some() {
            tokio::select! {
                _ = tokio::time::sleep_until(self.first) => {}
                _ = stop.wait() => return accepted,
            }
        }
        loop {
            let scheduled = match &self.window {
                None => tokio::select! {
                    s = ticker.tick() => s,
                    _ = stop.wait() => break,
                },
                Some(window) => tokio::select! {
                    permit = window.acquire() => match permit {
                        Ok(p) => { p.forget(); Instant::now() }
                        Err(_) => break,
                    },
                    // Deliveries stalled: the run still ends on time.
                    _ = tokio::time::sleep_until(self.end) => break,
                    _ = stop.wait() => break,
                },
            };
            if scheduled >= self.end {
                break;
            }
            if self.window.is_none() {
                shared
                    .lag
                    .record(self.index, scheduled.elapsed().as_micros() as u64);
            }
            seq += 1;
            let stamp = Stamp {
                run: self.run,
                sender: self.index as u32,
                seq,
                sent_us: now_us(),
            };
            shared.sent.fetch_add(1, Relaxed);
            shared.last_us.fetch_max(stamp.sent_us, Relaxed);
            let t = std::time::Instant::now();
            let ok = match &mut sink {
                Sink::Http(http) => {
                    let body = json!({ "type": self.event_type, "data": { "stamp": stamp.body(self.size) } });
                    match http
                        .post_json("/v1/tenant/events", Some(&self.server_key), &body)
                        .await
                    {
                        Ok(r) if r.status == 202 || r.status == 200 => true,
                        Ok(r) => {
                            shared.errors.add(r.failure("publish"));
                            false
                        }
                        Err(e) => {
                            shared
                                .errors
                                .add(format!("publish to {}: {e:#}", self.endpoint.url));
                            false
                        }
                    }
                }
                Sink::Ws(ws) => match ws.send(Message::text(stamp.body(self.size))).await {
                    Ok(()) => true,
                    Err(e) => {
                        shared.errors.add(format!("publish: {e}"));
                        break;
                    }
                },
            };
            if ok {
                shared
                    .latency
                    .record(self.index, t.elapsed().as_micros() as u64);
                shared.accepted.fetch_add(1, Relaxed);
                accepted.insert(seq);
            } else if let Some(window) = &self.window {
                // Nothing will arrive for it.
                window.add_permits(1);
            }
        }
        accepted
    }
}
