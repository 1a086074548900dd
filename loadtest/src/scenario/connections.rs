//! `connections`: open N idle sockets — visitors (config + session + visitor channel) or
//! agents (tenant channel) — at a given rate, hold them, and report how many stayed open,
//! how long opening took, and the server's memory per connection.
//!
//! One process may hold 20,000 open files, so a run above ~19,000 sockets is split over
//! `--procs` client processes: the parent re-executes itself with a hidden
//! `--child-index I`, each child opens its share and reports JSON lines on stdout
//! ([`Event`]), and the parent aggregates. A child holds its sockets until its stdin
//! closes, so the parent decides when the hold ends (and children never outlive it).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::{note, source_pool, Endpoints, Stop};
use crate::api;
use crate::baseline_proto::{self, Role};
use crate::cli::{ConnRole, ConnectionsArgs, Target};
use crate::http::HttpClient;
use crate::report::{self, mib, ms, ProcStat, Progress, Table};
use crate::stats::{merge_failures, Failures, HistDump, Latency, LatencySummary};

/// Sockets one client process opens at most by default (of its 20,000 files).
const PER_PROCESS: usize = 19_000;

/// Live counters of one share (one process's part of the run).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Connections started (session creation begun, or socket connect for agents/baseline).
    pub attempted: u64,
    /// Connections that reached `ready`.
    pub opened: u64,
    /// Connections open right now.
    pub open: u64,
    /// Connections that never reached `ready`.
    pub failed: u64,
    /// Connections that reached `ready` and were closed before the hold ended.
    pub dropped: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.attempted += o.attempted;
        self.opened += o.opened;
        self.open += o.open;
        self.failed += o.failed;
        self.dropped += o.dropped;
    }
}

/// What a share reports to the parent (a JSON line each, from a child process).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Periodic counters.
    Status {
        /// Counters now.
        counts: Counts,
    },
    /// Every attempt has either opened or failed.
    Ramped {
        /// Counters at that moment.
        counts: Counts,
    },
    /// Final report, sent after the hold was released.
    Done(ShareResult),
}

/// A share's final figures.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShareResult {
    /// Counters when the hold ended (before the share closed anything).
    pub counts: Counts,
    /// Why connections failed or dropped, with counts.
    pub failures: BTreeMap<String, u64>,
    /// Session creation times (config + POST /v1/sessions), µs.
    pub session_us: HistDump,
    /// Socket open times (connect + upgrade + auth → ready), µs.
    pub open_us: HistDump,
    /// The share process's RSS at the end of the hold, KiB.
    pub client_rss_kib: u64,
}

/// Counters and histograms the tasks of one share update.
#[derive(Default)]
struct Shared {
    /// See [`Counts::attempted`].
    attempted: AtomicU64,
    /// See [`Counts::opened`].
    opened: AtomicU64,
    /// See [`Counts::open`].
    open: AtomicU64,
    /// See [`Counts::failed`].
    failed: AtomicU64,
    /// See [`Counts::dropped`].
    dropped: AtomicU64,
    /// Attempts whose socket is still connecting.
    pending: AtomicU64,
    /// Why attempts failed or sockets dropped.
    failures: Failures,
    /// Session creation times, µs.
    session_us: Latency,
    /// Socket open times, µs.
    open_us: Latency,
}

impl Shared {
    fn counts(&self) -> Counts {
        Counts {
            attempted: self.attempted.load(Relaxed),
            opened: self.opened.load(Relaxed),
            open: self.open.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }

    fn fail(&self, reason: String) {
        self.failed.fetch_add(1, Relaxed);
        self.failures.add(reason);
    }
}

/// One process's part of the run.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Which share (0-based); also the offset into the global connection numbering.
    index: usize,
    /// How many shares there are.
    of: usize,
    /// Connections this share opens.
    count: usize,
    /// This share's opening rate, per second.
    rate: f64,
    /// This share's session-creation concurrency.
    concurrency: usize,
    /// This share's bound on sockets opening at once.
    open_concurrency: usize,
}

impl Share {
    fn of_run(args: &ConnectionsArgs, index: usize, of: usize) -> Share {
        let n = args.connections;
        Share {
            index,
            of,
            count: n / of + usize::from(index < n % of),
            rate: (args.rate / of as f64).max(0.001),
            concurrency: args.sessions_concurrency.div_ceil(of).max(1),
            open_concurrency: args.open_concurrency.div_ceil(of).max(1),
        }
    }
}

/// Runs the scenario (parent), or one share of it (child).
/// Returns the JSON document (also printed with `--json`).
pub async fn run(args: ConnectionsArgs) -> Result<serde_json::Value> {
    if let Some(index) = args.child_index {
        run_child(args, index).await?;
        return Ok(serde_json::Value::Null);
    }
    let procs = if args.procs == 0 {
        args.connections.div_ceil(PER_PROCESS).max(1)
    } else {
        args.procs
    };
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    let mut shown = params.clone();
    shown["procs"] = json!(procs);
    report::print_params("connections", &shown, args.common.json);
    if args.connections.div_ceil(procs) > PER_PROCESS {
        note(&format!(
            "{} connections per process is more than {PER_PROCESS}: expect 'Too many open files'",
            args.connections.div_ceil(procs)
        ));
    }

    let server_before = args.common.server_stat();
    let mut handles = Vec::with_capacity(procs);
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Event)>();
    if procs == 1 {
        let (release_tx, release_rx) = oneshot::channel();
        let (etx, mut erx) = mpsc::unbounded_channel();
        let share = Share::of_run(&args, 0, 1);
        let a = args.clone();
        tokio::spawn(async move {
            if let Err(e) = run_share(a, share, etx, release_rx).await {
                note(&format!("share failed: {e:#}"));
            }
        });
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = erx.recv().await {
                let _ = tx.send((0, ev));
            }
        });
        handles.push(release_tx);
    } else {
        for i in 0..procs {
            handles.push(spawn_child(i, procs, tx.clone())?);
        }
    }
    drop(tx);

    let start = Instant::now();
    let ramp_meter = report::Meter::start(&args.common.server_pids);
    let mut ramp_usage = None;
    let mut hold_meter = None;
    let mut progress = Progress::new();
    let mut latest = vec![Counts::default(); procs];
    let mut ramped = vec![false; procs];
    let mut results: Vec<Option<ShareResult>> = (0..procs).map(|_| None).collect();
    let mut ramp_time = None;
    let mut server_ramped = None;
    let hold = args.hold.0;
    let mut interrupted = false;
    let interrupt = crate::cli::interrupted();
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));

    // Ramp, then hold.
    loop {
        let total = sum(&latest);
        if ramp_time.is_none() && ramped.iter().all(|r| *r) {
            ramp_time = Some(start.elapsed());
            server_ramped = args.common.server_stat();
            ramp_usage = Some(
                ramp_meter
                    .finish(total.opened, "connection opened")
                    .server_only(procs > 1),
            );
            hold_meter = Some(report::Meter::start(&args.common.server_pids));
            progress.note(format!(
                "ramp done in {:.1}s: {} open, {} failed; holding {:.0}s",
                start.elapsed().as_secs_f64(),
                total.open,
                total.failed,
                hold.as_secs_f64()
            ));
        }
        if let Some(rt) = ramp_time {
            if start.elapsed() >= rt + hold {
                break;
            }
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((i, Event::Status { counts })) => latest[i] = counts,
                Some((i, Event::Ramped { counts })) => { latest[i] = counts; ramped[i] = true; }
                Some((i, Event::Done(r))) => { latest[i] = r.counts; ramped[i] = true; results[i] = Some(r); }
                None => break,
            },
            _ = ticker.tick() => {}
            _ = &mut interrupt => { interrupted = true; progress.note("interrupted: ending the hold now"); break; }
        }
        progress.tick(|| {
            let t = sum(&latest);
            let phase = if ramp_time.is_some() { "hold" } else { "ramp" };
            let server = args
                .common
                .server_stat()
                .map(|s| format!("  server {} {} fds", mib(s.rss_kib), s.fds))
                .unwrap_or_default();
            format!(
                "{phase}: open {}/{}  failed {}  dropped {}{server}",
                t.open, args.connections, t.failed, t.dropped
            )
        });
    }
    let held_for = ramp_time.map(|rt| start.elapsed().saturating_sub(rt));
    let server_hold_end = args.common.server_stat();
    let hold_usage = hold_meter.map(|m| {
        m.finish(sum(&latest).open, "open connection")
            .server_only(procs > 1)
    });

    // Release every share and collect its final report.
    for h in handles {
        let _ = h.send(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while results.iter().any(Option::is_none) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, Event::Done(r)))) => results[i] = Some(r),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    progress.finish();
    let missing = results.iter().filter(|r| r.is_none()).count();
    if missing > 0 {
        note(&format!(
            "{missing} client process(es) sent no final report"
        ));
    }
    let results: Vec<ShareResult> = results.into_iter().flatten().collect();
    // Give the server a moment to free what the closed sockets held.
    let server_after = if args.common.server_pids.is_empty() {
        None
    } else {
        if !interrupted {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        args.common.server_stat()
    };

    let mut counts = Counts::default();
    results.iter().for_each(|r| counts.add(&r.counts));
    let failures = merge_failures(results.iter().map(|r| &r.failures));
    let session = LatencySummary::of(&HistDump::merge(results.iter().map(|r| &r.session_us)));
    let open = LatencySummary::of(&HistDump::merge(results.iter().map(|r| &r.open_us)));
    let client_rss: u64 = results.iter().map(|r| r.client_rss_kib).sum();
    let per_conn = |before: Option<ProcStat>, at: Option<ProcStat>| match (before, at) {
        (Some(b), Some(a)) if counts.open > 0 => {
            Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / counts.open as f64)
        }
        _ => None,
    };
    let server_per_conn = per_conn(server_before, server_hold_end);
    let client_per_conn =
        (counts.open > 0).then(|| client_rss as f64 * 1024.0 / counts.open as f64);
    let ramp_secs = ramp_time.map(|d| d.as_secs_f64());

    let doc = json!({
        "scenario": "connections",
        "params": shown,
        "results": {
            "procs": procs,
            "counts": counts,
            "stayedOpen": counts.open,
            "rampSecs": ramp_secs,
            "heldSecs": held_for.map(|d| d.as_secs_f64()),
            "openedPerSec": ramp_secs.map(|s| counts.opened as f64 / s),
            "sessionLatency": session,
            "openLatency": open,
            "server": {
                "before": server_before,
                "ramped": server_ramped,
                "holdEnd": server_hold_end,
                "afterClose": server_after,
                "rssBytesPerConnection": server_per_conn,
            },
            "client": { "rssKib": client_rss, "rssBytesPerConnection": client_per_conn },
            "rampUsage": ramp_usage,
            "holdUsage": hold_usage,
            "failures": failures,
            "interrupted": interrupted,
        }
    });
    if args.common.json {
        report::print_json(&doc);
        return Ok(doc);
    }

    println!("connections");
    let mut t = Table::new(&["what", "value"]);
    let pct = |n: u64| {
        format!(
            "{n} ({:.2}%)",
            n as f64 * 100.0 / args.connections.max(1) as f64
        )
    };
    t.row(vec!["requested".into(), args.connections.to_string()]);
    t.row(vec!["opened (reached ready)".into(), pct(counts.opened)]);
    t.row(vec!["failed to open".into(), pct(counts.failed)]);
    t.row(vec![
        "dropped while held".into(),
        counts.dropped.to_string(),
    ]);
    t.row(vec!["stayed open to the end".into(), pct(counts.open)]);
    t.row(vec![
        "ramp".into(),
        ramp_secs
            .map(|s| format!("{s:.1}s ({:.0} opened/s)", counts.opened as f64 / s))
            .unwrap_or_else(|| "did not finish".into()),
    ]);
    t.row(vec![
        "held".into(),
        held_for
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
    ]);
    t.print();
    println!();
    let mut t = Table::new(&["phase", "count", "p50 ms", "p99 ms", "p99.9 ms", "max ms"]);
    for (name, s) in [
        ("session (config+POST)", session),
        ("socket open → ready", open),
    ] {
        if s.count > 0 {
            t.row(vec![
                name.into(),
                s.count.to_string(),
                ms(s.p50_ms),
                ms(s.p99_ms),
                ms(s.p999_ms),
                ms(s.max_ms),
            ]);
        }
    }
    t.print();
    println!();
    let mut t = Table::new(&["memory", "RSS", "fds", "per open connection"]);
    let row = |name: &str, s: Option<ProcStat>, per: Option<f64>| {
        vec![
            name.to_string(),
            s.map(|s| mib(s.rss_kib)).unwrap_or_else(|| "-".into()),
            s.map(|s| s.fds.to_string()).unwrap_or_else(|| "-".into()),
            per.map(|b| format!("{:.1} KiB", b / 1024.0))
                .unwrap_or_default(),
        ]
    };
    if !args.common.server_pids.is_empty() {
        t.row(row("server before", server_before, None));
        t.row(row("server after ramp", server_ramped, None));
        t.row(row(
            "server at end of hold",
            server_hold_end,
            server_per_conn,
        ));
        t.row(row("server 2s after close", server_after, None));
    }
    t.row(vec![
        format!("client ({procs} process(es))"),
        mib(client_rss),
        "-".into(),
        client_per_conn
            .map(|b| format!("{:.1} KiB", b / 1024.0))
            .unwrap_or_default(),
    ]);
    t.print();
    if let Some(u) = &ramp_usage {
        print!("\nduring the ramp:");
        u.print();
    }
    if let Some(u) = &hold_usage {
        print!("\nwhile holding (idle sockets, pings):");
        u.print();
    }
    print_failures(&failures);
    Ok(doc)
}

fn sum(all: &[Counts]) -> Counts {
    let mut c = Counts::default();
    all.iter().for_each(|x| c.add(x));
    c
}

/// Prints the failure tallies, most frequent first.
pub fn print_failures(failures: &BTreeMap<String, u64>) {
    if failures.is_empty() {
        return;
    }
    println!();
    let mut v: Vec<_> = failures.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    let mut t = Table::new(&["failure", "count"]);
    for (k, n) in v.into_iter().take(10) {
        t.row(vec![k.clone(), n.to_string()]);
    }
    t.print();
}

/// Starts child process `i` and forwards its events; dropping (or sending on) the returned
/// sender closes the child's stdin, which ends its hold.
fn spawn_child(
    i: usize,
    procs: usize,
    tx: mpsc::UnboundedSender<(usize, Event)>,
) -> Result<oneshot::Sender<()>> {
    let exe = std::env::current_exe().context("locating own executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        // Later flags override earlier ones (`args_override_self`), so this pins the
        // process count even when the user left it automatic.
        .args([
            "--procs",
            &procs.to_string(),
            "--child-index",
            &i.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a client process")?;
    let stdout = child.stdout.take().expect("piped");
    let mut stdin = child.stdin.take().expect("piped");
    let (release_tx, release_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = release_rx.await;
        let _ = stdin.write_all(b"release\n").await;
        drop(stdin);
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(ev) => {
                    let _ = tx.send((i, ev));
                }
                Err(_) => eprintln!("client {i}: {line}"),
            }
        }
        let _ = child.wait().await;
    });
    Ok(release_tx)
}

/// Child process: run one share, talk JSON lines on stdout, end the hold on stdin EOF.
async fn run_child(args: ConnectionsArgs, index: usize) -> Result<()> {
    let procs = args.procs.max(1);
    let share = Share::of_run(&args, index, procs);
    // Ctrl-C reaches the whole process group; the parent handles it and ends the hold,
    // so children must survive it to send their final report.
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    let (release_tx, release_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        // Any line, EOF or error ends the hold.
        let _ = stdin.next_line().await;
        let _ = release_tx.send(());
    });
    let (etx, mut erx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(run_share(args, share, etx, release_rx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = erx.recv().await {
        let mut line = serde_json::to_vec(&ev)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
        if matches!(ev, Event::Done(_)) {
            break;
        }
    }
    worker.await??;
    Ok(())
}

/// Opens one share's connections at its rate, reports progress, holds until `release`.
async fn run_share(
    args: ConnectionsArgs,
    share: Share,
    events: mpsc::UnboundedSender<Event>,
    release: oneshot::Receiver<()>,
) -> Result<()> {
    let endpoints = Arc::new(Endpoints::resolve(&args.common).await?);
    let pool = source_pool(&args.common, args.connections, share.index);
    let creds = args.common.creds();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop) = Stop::new();
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let opening = Arc::new(tokio::sync::Semaphore::new(share.open_concurrency));
    let needs_session = args.common.target == Target::Gateway && args.role == ConnRole::Visitor;

    let mut openers = vec![];
    let opener_count = if needs_session {
        share.concurrency
    } else {
        share.concurrency.max(64)
    };
    for w in 0..opener_count.min(share.count.max(1)) {
        let (next, shared, pool, endpoints, creds, mut stop) = (
            next.clone(),
            shared.clone(),
            pool.clone(),
            endpoints.clone(),
            creds.clone(),
            stop.clone(),
        );
        let args = args.clone();
        let opening = opening.clone();
        openers.push(tokio::spawn(async move {
            let mut http: Vec<Option<HttpClient>> = endpoints.main.iter().map(|_| None).collect();
            loop {
                let k = next.fetch_add(1, Relaxed);
                if k >= share.count as u64 || stop.is_set() {
                    break;
                }
                let at = start + Duration::from_secs_f64(k as f64 / share.rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = stop.wait() => break,
                }
                shared.attempted.fetch_add(1, Relaxed);
                let global = share.index + k as usize * share.of;
                let endpoint = match args.role {
                    ConnRole::Visitor => endpoints.main(global).clone(),
                    ConnRole::Agent => endpoints.agent(global).clone(),
                };
                let token = if needs_session {
                    let e = global % endpoints.main.len();
                    let client = http[e].get_or_insert_with(|| {
                        HttpClient::new(endpoint.clone(), pool.next_for(&endpoint.addr))
                    });
                    let t = Instant::now();
                    match api::create_session(client, &creds).await {
                        Ok(s) => {
                            shared.session_us.record(w, t.elapsed().as_micros() as u64);
                            Some(s.session_token)
                        }
                        Err(e) => {
                            shared.fail(format!("{e:#}"));
                            continue;
                        }
                    }
                } else if args.common.target == Target::Gateway {
                    Some(creds.agent_token(global))
                } else {
                    None
                };
                let permit = tokio::select! {
                    p = opening.clone().acquire_owned() => p.expect("never closed"),
                    _ = stop.wait() => break,
                };
                shared.pending.fetch_add(1, Relaxed);
                let local = pool.next_for(&endpoint.addr);
                let (shared, stop, target, role) =
                    (shared.clone(), stop.clone(), args.common.target, args.role);
                tokio::spawn(async move {
                    let open = Opening {
                        target,
                        role,
                        endpoint,
                        local,
                        token,
                        global,
                        permit,
                    };
                    hold_one(shared, stop, open).await
                });
            }
        }));
    }

    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut openers_done = false;
    let mut ramped = false;
    let mut release = release;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut release => break,
        }
        if !openers_done && openers.iter().all(|h| h.is_finished()) {
            openers_done = true;
        }
        if !ramped && openers_done && shared.pending.load(Relaxed) == 0 {
            ramped = true;
            let _ = events.send(Event::Ramped {
                counts: shared.counts(),
            });
        } else {
            let _ = events.send(Event::Status {
                counts: shared.counts(),
            });
        }
    }
    let counts = shared.counts();
    let client_rss_kib = report::self_rss_kib();
    let _ = stop_tx.send(true);
    let result = ShareResult {
        counts,
        failures: shared.failures.snapshot(),
        session_us: shared.session_us.dump(),
        open_us: shared.open_us.dump(),
        client_rss_kib,
    };
    let _ = events.send(Event::Done(result));
    Ok(())
}

/// One socket to open.
struct Opening {
    /// Gateway or baseline.
    target: Target,
    /// Visitor or agent channel.
    role: ConnRole,
    /// Where to connect.
    endpoint: Arc<crate::net::Endpoint>,
    /// Source address.
    local: Option<std::net::IpAddr>,
    /// Session token or agent JWT (gateway only).
    token: Option<String>,
    /// Global connection number (histogram shard).
    global: usize,
    /// A slot of `--open-concurrency`, released once the socket is ready or failed.
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Opens one socket and keeps reading it (so pings are answered) until the run stops.
async fn hold_one(shared: Arc<Shared>, mut stop: Stop, open: Opening) {
    let Opening {
        target,
        role,
        endpoint,
        local,
        token,
        global,
        permit,
    } = open;
    let t = Instant::now();
    let opening = async {
        match (target, role, token) {
            (Target::Gateway, ConnRole::Visitor, Some(tok)) => {
                api::open_visitor(&endpoint, local, &tok).await
            }
            (Target::Gateway, ConnRole::Agent, Some(tok)) => {
                api::open_agent(&endpoint, local, &tok).await
            }
            _ => baseline_proto::open(&endpoint, Role::Sub, local).await,
        }
    };
    let opened = tokio::select! {
        r = opening => { drop(permit); r }
        _ = stop.wait() => {
            shared.pending.fetch_sub(1, Relaxed);
            return;
        }
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            shared.fail(format!("{e:#}"));
            shared.pending.fetch_sub(1, Relaxed);
            return;
        }
    };
    shared
        .open_us
        .record(global, t.elapsed().as_micros() as u64);
    shared.opened.fetch_add(1, Relaxed);
    shared.open.fetch_add(1, Relaxed);
    shared.pending.fetch_sub(1, Relaxed);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(m)) if !m.is_close() => continue,
                other => {
                    shared.open.fetch_sub(1, Relaxed);
                    shared.dropped.fetch_add(1, Relaxed);
                    shared.failures.add(api::close_reason(other));
                    return;
                }
            },
            _ = stop.wait() => return,
        }
    }
}
