//! `http`: closed-loop load on the HTTP API — C workers, each with one keep-alive
//! connection and (when sends or polls are in the mix) its own visitor session, pick a
//! route by weight and repeat until the time is up. Reports requests per second and
//! latency per route. `--only config|session|send|poll` measures one route alone: the
//! single-node floors (`GET /v1/config` req/s, acknowledged `POST /v1/messages` with 64
//! concurrent senders, `GET /v1/messages` pages of 50).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

use super::{create_sessions, per_sec, source_pool, Endpoints};
use crate::api::{self, Creds, Session};
use crate::cli::{HttpArgs, Route, Target};
use crate::http::HttpClient;
use crate::probe::{new_run_id, now_us, Stamp};
use crate::report::{self, ms, rate, Progress, Table};
use crate::stats::{Failures, Latency};

/// Figures for one route.
#[derive(Default)]
struct RouteStats {
    /// Successful requests (the route's success status).
    ok: AtomicU64,
    /// Latency of successful requests, µs.
    latency: Latency,
    /// Failed requests by reason.
    errors: Failures,
}

/// Runs the scenario.
/// Returns the JSON document (also printed with `--json`).
pub async fn run(args: HttpArgs) -> Result<serde_json::Value> {
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    report::print_params("http", &params, args.common.json);
    if args.common.target != Target::Gateway {
        bail!("the http scenario only drives a gateway");
    }
    let weights = args.weights().map_err(anyhow::Error::msg)?;
    let uses = |r: Route| weights.iter().any(|(w, _)| *w == r);
    let needs_session = uses(Route::Send) || uses(Route::Poll);
    let endpoints = Endpoints::resolve(&args.common).await?;
    let pool = source_pool(&args.common, args.concurrency * 2, 0);
    let creds = args.common.creds();
    let run = new_run_id();
    let mut progress = Progress::new();

    let sessions: Vec<Option<Session>> = if needs_session {
        progress.note(format!("creating {} sessions", args.concurrency));
        let mut out = vec![];
        for (i, s) in create_sessions(&endpoints, &pool, &creds, args.concurrency, 32, None)
            .await
            .into_iter()
            .enumerate()
        {
            match s {
                Ok(s) => out.push(Some(s)),
                Err(e) => bail!("session for worker {i} failed: {e:#}"),
            }
        }
        out
    } else {
        vec![None; args.concurrency]
    };

    let stats: Arc<BTreeMap<Route, RouteStats>> = Arc::new(
        Route::ALL
            .iter()
            .map(|r| (*r, RouteStats::default()))
            .collect(),
    );
    let seed = if uses(Route::Poll) {
        args.seed_messages
    } else {
        0
    };
    if seed > 0 {
        progress.note(format!(
            "storing {seed} messages in each of {} conversations",
            args.concurrency
        ));
    }
    // Workers seed their conversation, then wait for the common start.
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = vec![];
    for (i, session) in sessions.into_iter().enumerate() {
        let endpoint = endpoints.main(i).clone();
        let http = HttpClient::new(endpoint.clone(), pool.next_for(&endpoint.addr));
        let w = Worker {
            index: i,
            run,
            http,
            session,
            creds: creds.clone(),
            weights: weights.clone(),
            page: args.page,
            size: args.size,
            seq: 0,
            rng: StdRng::seed_from_u64(run as u64 ^ i as u64),
            checked_page: false,
            expect_page: args.page.min(if uses(Route::Poll) {
                args.seed_messages
            } else {
                0
            }),
        };
        let (stats, mut start_rx) = (stats.clone(), start_rx.clone());
        let duration = args.duration.0;
        tasks.push(tokio::spawn(async move {
            let mut w = w;
            w.seed(seed, &stats).await;
            let Ok(start) = start_rx
                .wait_for(|s| s.is_some())
                .await
                .map(|s| s.expect("set"))
            else {
                return;
            };
            w.run(start + duration, &stats).await;
        }));
    }
    // Wait until seeding is done (every worker then parks on the start signal).
    loop {
        let seeded = stats
            .get(&Route::Send)
            .map_or(0, |s| s.ok.load(Relaxed) + s.errors.total());
        if seeded >= (seed * args.concurrency) as u64 || tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Seeding counts are not part of the measurement.
    let stats_baseline: BTreeMap<Route, (u64, BTreeMap<String, u64>)> = stats
        .iter()
        .map(|(r, s)| (*r, (s.ok.load(Relaxed), s.errors.snapshot())))
        .collect();
    for s in stats.values() {
        s.latency.reset();
    }
    let meter = report::Meter::start(&args.common.server_pids);
    let start = Instant::now();
    let _ = start_tx.send(Some(start));
    progress.note(format!(
        "running {} workers for {:.0}s",
        args.concurrency,
        args.duration.0.as_secs_f64()
    ));

    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut interrupted = false;
    let mut last = (Instant::now(), 0u64);
    let total_ok = || {
        stats
            .iter()
            .map(|(r, s)| s.ok.load(Relaxed) - stats_baseline[r].0)
            .sum::<u64>()
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut interrupt => { interrupted = true; break; }
        }
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        progress.tick(|| {
            let now = Instant::now();
            let ok = total_ok();
            let line = format!(
                "ok {ok}  ({:.0} req/s)",
                (ok - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3)
            );
            last = (now, ok);
            line
        });
    }
    for t in &tasks {
        if interrupted {
            t.abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start
        .elapsed()
        .min(args.duration.0.max(Duration::from_millis(1)));
    let elapsed = if interrupted {
        start.elapsed()
    } else {
        elapsed
    };
    progress.finish();
    let usage = meter.finish(total_ok(), "request");

    let mut rows = vec![];
    for (route, _) in &weights {
        let s = &stats[route];
        let ok = s.ok.load(Relaxed) - stats_baseline[route].0;
        let mut errors = s.errors.snapshot();
        for (k, v) in &stats_baseline[route].1 {
            if let Some(n) = errors.get_mut(k) {
                *n -= v;
            }
        }
        errors.retain(|_, v| *v > 0);
        rows.push((*route, ok, errors, s.latency.summary()));
    }

    let routes: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .map(|(r, ok, errors, lat)| {
            (
                serde_json::to_value(r)
                    .expect("route")
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                json!({
                    "route": r.name(),
                    "ok": ok,
                    "okPerSec": per_sec(*ok, elapsed),
                    "errors": errors,
                    "latency": lat,
                }),
            )
        })
        .collect();
    let doc = json!({
        "scenario": "http",
        "params": params,
        "results": {
            "elapsedSecs": elapsed.as_secs_f64(),
            "okPerSec": per_sec(total_ok(), elapsed),
            "routes": routes,
            "usage": usage,
            "interrupted": interrupted,
        }
    });
    if args.common.json {
        report::print_json(&doc);
        return Ok(doc);
    }

    println!(
        "http: {} workers, {:.1}s",
        args.concurrency,
        elapsed.as_secs_f64()
    );
    let mut t = Table::new(&[
        "route", "ok", "req/s", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
    ]);
    let mut all_errors = BTreeMap::new();
    for (route, ok, errors, lat) in &rows {
        let n_err: u64 = errors.values().sum();
        t.row(vec![
            route.name().into(),
            ok.to_string(),
            rate(per_sec(*ok, elapsed)),
            n_err.to_string(),
            ms(lat.p50_ms),
            ms(lat.p90_ms),
            ms(lat.p99_ms),
            ms(lat.p999_ms),
            ms(lat.max_ms),
        ]);
        for (k, v) in errors {
            *all_errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    if rows.len() > 1 {
        t.row(vec![
            "total".into(),
            total_ok().to_string(),
            rate(per_sec(total_ok(), elapsed)),
            all_errors.values().sum::<u64>().to_string(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ]);
    }
    t.print();
    usage.print();
    super::connections::print_failures(&all_errors);
    if interrupted {
        println!("\n(interrupted: figures cover a partial run)");
    }
    Ok(doc)
}

/// One closed-loop worker.
struct Worker {
    /// Worker index (stamp sender, histogram shard).
    index: usize,
    /// This run's id.
    run: u32,
    /// The worker's keep-alive connection.
    http: HttpClient,
    /// The worker's visitor session, when sends or polls are in the mix.
    session: Option<Session>,
    /// Tenant credentials.
    creds: Creds,
    /// Route weights.
    weights: Vec<(Route, u32)>,
    /// Poll page size.
    page: usize,
    /// Send body size.
    size: usize,
    /// Per-worker send sequence (unique clientMessageIds).
    seq: u64,
    /// Route picker.
    rng: StdRng,
    /// Whether a poll's page size has been checked once.
    checked_page: bool,
    /// Messages the first poll must return at least (the seeded history, up to a page).
    expect_page: usize,
}

impl Worker {
    /// Stores `n` messages in this worker's conversation (counted as sends, then discounted).
    async fn seed(&mut self, n: usize, stats: &BTreeMap<Route, RouteStats>) {
        for _ in 0..n {
            self.call(Route::Send, stats).await;
        }
    }

    async fn run(&mut self, until: Instant, stats: &BTreeMap<Route, RouteStats>) {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        while Instant::now() < until {
            let mut pick = self.rng.random_range(0..total);
            let mut route = self.weights[0].0;
            for (r, w) in &self.weights {
                if pick < *w {
                    route = *r;
                    break;
                }
                pick -= w;
            }
            self.call(route, stats).await;
        }
    }

    async fn call(&mut self, route: Route, stats: &BTreeMap<Route, RouteStats>) {
        let s = &stats[&route];
        let token = self.session.as_ref().map(|s| s.session_token.clone());
        let t = std::time::Instant::now();
        let result = match route {
            Route::Config => self
                .http
                .get(&api::config_path(&self.creds), None)
                .await
                .map(|r| (r.status == 200, r)),
            Route::Session => match api::challenge(&mut self.http, &self.creds).await {
                Ok(challenge) => {
                    // Time the POST alone.
                    let t = std::time::Instant::now();
                    let r = api::create_session_with(&mut self.http, &self.creds, &challenge).await;
                    match r {
                        Ok(_) => {
                            s.ok.fetch_add(1, Relaxed);
                            s.latency.record(self.index, t.elapsed().as_micros() as u64);
                        }
                        Err(e) => s.errors.add(format!("{e:#}")),
                    }
                    return;
                }
                Err(e) => {
                    s.errors.add(format!("{e:#}"));
                    return;
                }
            },
            Route::Send => {
                self.seq += 1;
                let stamp = Stamp {
                    run: self.run,
                    sender: self.index as u32,
                    seq: self.seq,
                    sent_us: now_us(),
                };
                let body = api::message_body(&stamp.body(self.size), &stamp.encode());
                self.http
                    .post_json("/v1/messages", token.as_deref(), &body)
                    .await
                    .map(|r| (r.status == 201, r))
            }
            Route::Poll => {
                let path = format!("/v1/messages?limit={}", self.page);
                let r = self.http.get(&path, token.as_deref()).await;
                if let (Ok(r), false) = (&r, self.checked_page) {
                    if r.status == 200 {
                        self.checked_page = true;
                        let n = r
                            .json()
                            .ok()
                            .and_then(|v| v["messages"].as_array().map(Vec::len));
                        if n.unwrap_or(0) < self.expect_page {
                            s.errors.add(format!(
                                "poll: page of {} messages, expected {}",
                                n.unwrap_or(0),
                                self.expect_page
                            ));
                        }
                    }
                }
                r.map(|r| (r.status == 200, r))
            }
        };
        match result {
            Ok((true, _)) => {
                s.ok.fetch_add(1, Relaxed);
                s.latency.record(self.index, t.elapsed().as_micros() as u64);
            }
            Ok((false, r)) => s.errors.add(r.failure(route.name())),
            Err(e) => s.errors.add(format!("{}: {e:#}", route.name())),
        }
    }
}
