//! `webhooks`: the tenants' backends publish custom events (`POST /v1/tenant/events`) for
//! N tenants `t0`…`t{N-1}` (naming and gateway config: [`crate::webhook_config`]), each
//! tenant with one webhook pointing at this tool's own receiver ([`crate::receiver`]),
//! which checks every signature. Reports deliveries per second, publish → webhook latency
//! (publish request start → receipt), publish request latency, lost / duplicated /
//! out-of-order deliveries per tenant, and the server's CPU per delivery.
//!
//! Each tenant has one publisher — one keep-alive connection, one request in flight — so
//! a tenant's events are stored in the order of their sequence numbers, and any disorder at
//! the receiver is the gateway's. `--rate R` spreads R events/s over the tenants' schedules
//! (the publishers of `broadcast`). `--rate 0` closes the loop instead: at most
//! `--concurrency` events published and not yet received, so the run goes as fast as the
//! gateway delivers, and the backlog (hence the drain) stays bounded.
//!
//! `webhook-sink` ([`sink`]) is the receiver alone, to measure another scenario (`chat`)
//! with webhooks on.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::broadcast::{Publisher, Publishers, Sink};
use super::{latency_row, per_sec, source_pool, Endpoints, Stop};
use crate::cli::{Target, WebhookSinkArgs, WebhooksArgs};
use crate::http::HttpClient;
use crate::probe::{new_run_id, now_us};
use crate::receiver::{Mode, Receiver};
use crate::report::{self, rate, Progress, Table, LATENCY_HEADERS};
use crate::webhook_config::server_key;

/// Runs the scenario.
/// Returns the JSON document (also printed with `--json`).
pub async fn run(args: WebhooksArgs) -> Result<serde_json::Value> {
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    report::print_params("webhooks", &params, args.common.json);
    if args.tenants == 0
        || args.rate.is_nan()
        || args.rate < 0.0
        || (args.rate == 0.0 && args.concurrency == 0)
    {
        bail!("--tenants must be positive, --rate at least 0, and --concurrency positive with --rate 0");
    }
    if args.common.target != Target::Gateway {
        bail!("webhooks drives a Confab gateway only (--target gateway)");
    }
    let endpoints = Endpoints::resolve(&args.common).await?;
    let pool = source_pool(&args.common, args.tenants, 0);
    let run = new_run_id();
    let mut progress = Progress::new();

    // The receiver listens before the first publish, so nothing is refused.
    let window = (args.rate == 0.0).then(|| Arc::new(Semaphore::new(args.concurrency)));
    let receiver = Receiver::new(&args.receiver.secret, Mode::Stamped { run }, window.clone());
    let listener = Receiver::bind(&args.receiver.receiver).await?;
    let server = tokio::spawn(receiver.clone().serve(listener));

    let (stop_tx, stop) = Stop::new();
    let publishers = Arc::new(Publishers::default());
    let meter = report::Meter::start(&args.common.server_pids);
    let t0 = Instant::now() + Duration::from_millis(200);
    let t0_us = now_us() + 200_000;
    let end = t0 + args.duration.0;
    // Closed loop (`--rate 0`): the schedule is not used, any period will do.
    let period = match args.rate {
        r if r > 0.0 => Duration::from_secs_f64(args.tenants as f64 / r),
        _ => Duration::from_secs(1),
    };
    let publisher_tasks: Vec<_> = (0..args.tenants)
        .map(|i| {
            let endpoint = endpoints.main(i).clone();
            let http = HttpClient::new(endpoint.clone(), pool.next_for(&endpoint.addr));
            let job = Publisher {
                index: i,
                run,
                size: args.size,
                event_type: args.event_type.clone(),
                server_key: server_key(i),
                first: t0 + period.mul_f64(i as f64 / args.tenants as f64),
                period,
                end,
                endpoint,
                window: window.clone(),
            };
            tokio::spawn(job.run(Sink::Http(http), publishers.clone(), stop.clone()))
        })
        .collect();
    progress.note(match args.rate {
        r if r > 0.0 => format!(
            "publishing {r} events/s for {:.0}s for {} tenants; webhooks → {}",
            args.duration.0.as_secs_f64(),
            args.tenants,
            args.receiver.receiver
        ),
        _ => format!(
            "publishing as fast as webhooks deliver (≤ {} undelivered) for {:.0}s for {} tenants; webhooks → {}",
            args.concurrency,
            args.duration.0.as_secs_f64(),
            args.tenants,
            args.receiver.receiver
        ),
    });

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
        let delivered = receiver.stats.deliveries.load(Relaxed);
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
            if delivered >= accepted || now >= since + args.drain.0 {
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
    let lost = receiver.lost(&accepted_sets);
    let sent = publishers.sent.load(Relaxed);
    let accepted = publishers.accepted.load(Relaxed);
    let stats = &receiver.stats;
    let deliveries = stats.deliveries.load(Relaxed);
    let usage = meter.finish(deliveries, "delivery");
    server.abort();
    // What the gateway still holds, to tell "slow" from "lost".
    let backlog = if lost > 0 {
        Some(backlog(&endpoints, args.tenants).await)
    } else {
        None
    };
    let span = Duration::from_micros(stats.last_us.load(Relaxed).saturating_sub(t0_us));
    let publish_span = args.duration.0.max(Duration::from_micros(
        publishers.last_us.load(Relaxed).saturating_sub(t0_us),
    ));
    let delivery_lat = stats.latency.summary();
    let publish_lat = publishers.latency.summary();
    let lag = publishers.lag.summary();
    let dup = stats.duplicates.load(Relaxed);
    let ooo = stats.out_of_order.load(Relaxed);
    let other = receiver.other.load(Relaxed);
    let errors = publishers.errors.snapshot();
    let problems = receiver.problems.snapshot();

    let doc = json!({
        "scenario": "webhooks",
        "params": params,
        "results": {
            "published": sent,
            "accepted": accepted,
            "publishedPerSec": per_sec(accepted, publish_span),
            "deliveries": deliveries,
            "deliveriesPerSec": per_sec(deliveries, span),
            "lost": lost, "duplicates": dup, "outOfOrder": ooo,
            "otherDeliveries": other,
            "backlogAtEnd": backlog,
            "deliveryLatency": delivery_lat,
            "publishLatency": publish_lat,
            "publishLag": lag,
            "errors": errors,
            "receiverProblems": problems,
            "usage": usage,
            "interrupted": interrupted,
        }
    });
    if args.common.json {
        report::print_json(&doc);
        return Ok(doc);
    }

    println!(
        "webhooks: {} tenant(s), one webhook each → {}",
        args.tenants, args.receiver.receiver
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
        "webhook deliveries".into(),
        format!("{deliveries}/{accepted}"),
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
    t.row(latency_row("publish → webhook", &delivery_lat));
    t.row(latency_row("publish request", &publish_lat));
    if window.is_none() {
        t.row(latency_row("client publish lag", &lag));
    }
    t.print();
    usage.print();
    let mut notes = errors;
    if other > 0 {
        notes.insert(
            "webhook deliveries not of this run (answered, not counted)".into(),
            other,
        );
    }
    if let Some(b) = &backlog {
        notes.insert(
            "events the gateway still had to deliver at the end (webhook lag)".into(),
            b.lag,
        );
        for (e, n) in &b.errors {
            notes.insert(format!("webhook failing at the end: {e}"), *n);
        }
    }
    super::print_problems(notes, &[("webhook", problems)], 0, interrupted);
    Ok(doc)
}

/// The gateway's own view of the tenants' webhooks at the end (`GET /v1/tenant/webhooks`).
#[derive(Debug, Default, serde::Serialize)]
struct Backlog {
    /// Events not delivered yet, all webhooks together.
    lag: u64,
    /// `lastError` of the webhooks still failing, with how many.
    errors: std::collections::BTreeMap<String, u64>,
}

async fn backlog(endpoints: &Endpoints, tenants: usize) -> Backlog {
    let mut out = Backlog::default();
    let mut http = HttpClient::new(endpoints.main(0).clone(), None);
    for i in 0..tenants {
        let status = match http.get("/v1/tenant/webhooks", Some(&server_key(i))).await {
            Ok(r) if r.status == 200 => r.json().unwrap_or_default(),
            Ok(r) => {
                *out.errors.entry(r.failure("status")).or_default() += 1;
                continue;
            }
            Err(e) => {
                *out.errors.entry(format!("status: {e:#}")).or_default() += 1;
                continue;
            }
        };
        for hook in status["webhooks"].as_array().into_iter().flatten() {
            out.lag += hook["lag"].as_u64().unwrap_or(0);
            if hook["failing"].as_bool() == Some(true) {
                let e = hook["lastError"].as_str().unwrap_or("?").to_owned();
                *out.errors.entry(e).or_default() += 1;
            }
        }
    }
    out
}

/// `webhook-sink`: receives webhooks until SIGINT / SIGTERM or `--duration`, then prints
/// one line: deliveries, webhooks, rate, duplicates, disorder, refusals, latency.
pub async fn sink(args: WebhookSinkArgs) -> Result<()> {
    let receiver = Receiver::new(&args.receiver.secret, Mode::Offsets, None);
    let listener = Receiver::bind(&args.receiver.receiver).await?;
    let server = tokio::spawn(receiver.clone().serve(listener));
    let mut progress = Progress::new();
    progress.note(format!(
        "webhook-sink listening on http://{}",
        args.receiver.receiver
    ));
    let deadline = args.duration.map(|d| Instant::now() + d.0);
    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut interrupt => break,
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let delivered = receiver.stats.deliveries.load(Relaxed);
        progress.tick(|| {
            let dt = (now - last.0).as_secs_f64().max(1e-3);
            let line = format!(
                "deliveries {delivered} ({:.0}/s) to {} webhooks",
                (delivered - last.1) as f64 / dt,
                receiver.webhooks()
            );
            last = (now, delivered);
            line
        });
    }
    progress.finish();
    server.abort();
    println!("{}", sink_summary(&receiver));
    Ok(())
}

/// The sink's one line.
fn sink_summary(r: &Receiver) -> String {
    let s = &r.stats;
    let deliveries = s.deliveries.load(Relaxed);
    let lat = s.latency.summary();
    let problems = r.problems.snapshot();
    let problems = if problems.is_empty() {
        "0 refused/odd".to_owned()
    } else {
        let list: Vec<String> = problems.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        format!("{} refused/odd ({})", r.problems.total(), list.join("; "))
    };
    format!(
        "webhook-sink: {deliveries} deliveries to {} webhooks, {}/s over {:.1}s (first → last); \
         {} dup, {} out of order, {problems}; createdAt → receipt (ms resolution) \
         p50 {} p99 {} p99.9 {} max {} ms",
        r.webhooks(),
        rate(per_sec(deliveries, r.span())),
        r.span().as_secs_f64(),
        s.duplicates.load(Relaxed),
        s.out_of_order.load(Relaxed),
        report::ms(lat.p50_ms),
        report::ms(lat.p99_ms),
        report::ms(lat.p999_ms),
        report::ms(lat.max_ms),
    )
}
