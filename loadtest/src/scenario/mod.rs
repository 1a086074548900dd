//! The scenarios, one module each, plus what they share: endpoint lists, parallel session
//! creation and agent connects, and the run id / stop signal plumbing.
//!
//! - [`connections`] — many idle sockets; memory per connection (multi-process capable).
//! - [`chat`] — visitors chat, agents watch: end-to-end latency, loss, order.
//! - [`broadcast`] — tenant backend publishes custom events to agents.
//! - [`http`] — the HTTP API, as a mix or one route at a time.
//! - [`webhooks`] — tenant events published for N tenants, received as webhooks by this
//!   tool; also `webhook-sink`, the receiver alone.
//! - [`assistant`] — visitors chat with an assistant on a fake streaming upstream: every
//!   delta and reply checked, upstream → visitor latency; also `assistant-upstream`.

pub mod assistant;
pub mod attachments;
pub mod broadcast;
pub mod chat;
pub mod connections;
pub mod http;
pub mod webhooks;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::watch;

use crate::api::{self, Creds, Session};
use crate::baseline_proto::{self, Role};
use crate::cli::{Common, Target};
use crate::http::HttpClient;
use crate::net::{Endpoint, SourcePool};
use crate::stats::{Failures, Latency};
use crate::ws::Ws;

/// Resolved endpoints: visitors / publishers / HTTP on `--url`, agents on `--agent-url`.
pub struct Endpoints {
    /// `--url`, used round-robin.
    pub main: Vec<Arc<Endpoint>>,
    /// `--agent-url` (or `--url`), used round-robin.
    pub agents: Vec<Arc<Endpoint>>,
}

impl Endpoints {
    /// Resolves the URLs of `common`.
    pub async fn resolve(common: &Common) -> Result<Self> {
        let main: Vec<_> = Endpoint::resolve_all(&common.urls)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let agents: Vec<_> = Endpoint::resolve_all(common.agent_urls())
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        if main.is_empty() || agents.is_empty() {
            bail!("no --url given");
        }
        Ok(Self { main, agents })
    }

    /// The `i`th main endpoint, round-robin.
    pub fn main(&self, i: usize) -> &Arc<Endpoint> {
        &self.main[i % self.main.len()]
    }

    /// The `i`th agent endpoint, round-robin.
    pub fn agent(&self, i: usize) -> &Arc<Endpoint> {
        &self.agents[i % self.agents.len()]
    }
}

/// The source pool for a run of `sockets` connections (`--source-ips`, or automatic).
pub fn source_pool(common: &Common, sockets: usize, start: usize) -> Arc<SourcePool> {
    let k = if common.source_ips == 0 {
        crate::net::auto_source_ips(sockets)
    } else {
        common.source_ips
    };
    Arc::new(SourcePool::loopback(k, start))
}

/// A stop signal every task of a run watches; cheap to clone into thousands of tasks.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A signal and the function that raises it.
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Resolves once the run is stopping.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Whether the run is stopping.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

/// Creates `n` visitor sessions with `concurrency` parallel keep-alive connections,
/// spreading them over the main endpoints; index `i` is created on `endpoints.main(i)`.
/// Returns one result per visitor, in order.
pub async fn create_sessions(
    endpoints: &Endpoints,
    pool: &Arc<SourcePool>,
    creds: &Creds,
    n: usize,
    concurrency: usize,
    latency: Option<Arc<Latency>>,
) -> Vec<Result<Session>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for w in 0..concurrency.clamp(1, n.max(1)) {
        let next = next.clone();
        let eps = endpoints.main.clone();
        let pool = pool.clone();
        let creds = creds.clone();
        let latency = latency.clone();
        tasks.push(tokio::spawn(async move {
            let mut clients: Vec<Option<HttpClient>> = eps.iter().map(|_| None).collect();
            let mut out = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let e = i % eps.len();
                let client = clients[e].get_or_insert_with(|| {
                    HttpClient::new(eps[e].clone(), pool.next_for(&eps[e].addr))
                });
                let t = Instant::now();
                let r = api::create_session(client, &creds).await;
                if let (Ok(_), Some(l)) = (&r, &latency) {
                    l.record(w, t.elapsed().as_micros() as u64);
                }
                out.push((i, r));
            }
            out
        }));
    }
    let mut all: Vec<Option<Result<Session>>> = (0..n).map(|_| None).collect();
    for t in tasks {
        match t.await {
            Ok(rs) => rs.into_iter().for_each(|(i, r)| all[i] = Some(r)),
            Err(e) => note(&format!("session worker failed: {e}")),
        }
    }
    all.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("session worker failed"))))
        .collect()
}

/// Connects agent `i` (tenant channel with a JWT, or baseline `/sub`).
pub async fn open_agent(
    target: Target,
    endpoint: &Arc<Endpoint>,
    pool: &SourcePool,
    creds: &Creds,
    i: usize,
) -> Result<Agent> {
    let local = pool.next_for(&endpoint.addr);
    match target {
        Target::Gateway => {
            let jwt = creds.agent_token(i);
            let ws = api::open_agent(endpoint, local, &jwt).await?;
            let resume = Some(Resume {
                endpoint: endpoint.clone(),
                local,
                jwt,
            });
            Ok(Agent {
                ws,
                resume,
                stall: None,
            })
        }
        Target::Baseline => {
            let ws = baseline_proto::open(endpoint, Role::Sub, local).await?;
            Ok(Agent {
                ws,
                resume: None,
                stall: None,
            })
        }
    }
}

/// Opens `n` agents, 64 at a time; fails if any cannot connect.
pub async fn open_agents(
    target: Target,
    endpoints: &Endpoints,
    pool: &Arc<SourcePool>,
    creds: &Creds,
    n: usize,
) -> Result<Vec<Agent>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..n)
        .map(|i| open_agent(target, endpoints.agent(i), pool, creds, i))
        .buffered(64)
        .try_collect()
        .await
}

/// Sleeps for `d`, or less if the user interrupts; returns true when interrupted.
pub async fn sleep_or_interrupt(d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = crate::cli::interrupted() => true,
    }
}

/// A one-line note on stderr (the tool has no logger).
pub fn note(msg: &str) {
    eprintln!("note: {msg}");
}

/// Messages per second over `elapsed`.
pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// Counters a group of receivers (agents) shares.
#[derive(Default)]
pub struct RecvStats {
    /// First-time deliveries of this run's stamps.
    pub deliveries: std::sync::atomic::AtomicU64,
    /// Deliveries of a stamp the receiver had already seen.
    pub duplicates: std::sync::atomic::AtomicU64,
    /// First-time deliveries that came after a later sequence number of the same sender.
    pub out_of_order: std::sync::atomic::AtomicU64,
    /// Send → receive latency, µs.
    pub latency: Latency,
    /// When the last delivery arrived (Unix µs), for deliveries per second.
    pub last_us: std::sync::atomic::AtomicU64,
    /// Receivers whose socket closed before the run ended (and resume troubles), and why.
    pub dropped: Failures,
    /// Successful resumes after a close.
    pub resumes: std::sync::atomic::AtomicU64,
}

impl RecvStats {
    /// Records one delivery of `stamp` at receiver `hint` into `tracker`; says whether it
    /// was new.
    pub fn record(
        &self,
        hint: usize,
        tracker: &mut crate::stats::SeqTracker,
        stamp: &crate::probe::Stamp,
    ) -> crate::stats::Arrival {
        use crate::stats::Arrival;
        let now = crate::probe::now_us();
        let arrival = tracker.record(stamp.sender, stamp.seq);
        match arrival {
            Arrival::Duplicate => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return arrival;
            }
            Arrival::OutOfOrder => {
                self.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            Arrival::InOrder => {}
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.latency.record(hint, now.saturating_sub(stamp.sent_us));
        self.last_us.fetch_max(now, Ordering::Relaxed);
        arrival
    }
}

/// How an agent gets back in after its socket closes: what it needs to reconnect with
/// `after` = the last tenant event offset it saw, as a dashboard does.
#[derive(Clone)]
pub struct Resume {
    /// The node it was connected to.
    pub endpoint: Arc<Endpoint>,
    /// Its source address.
    pub local: Option<std::net::IpAddr>,
    /// Its agent JWT.
    pub jwt: String,
}

/// A connected agent.
pub struct Agent {
    /// The tenant channel (or baseline `/sub`).
    pub ws: Ws,
    /// How to resume it (gateway only).
    pub resume: Option<Resume>,
    /// When to stop reading, and for how long (a deliberately slow consumer).
    pub stall: Option<(tokio::time::Instant, Duration)>,
}

/// Reconnect attempts in a row before an agent gives up.
const RESUME_ATTEMPTS: u32 = 5;

/// Reads an agent's socket until the run stops, recording every frame `classify` finds a
/// stamp in (`classify` gets the raw text and the frame's `type`, when it is JSON). When
/// the server closes the socket — e.g. 1013 for a client that fell behind — a gateway agent
/// resumes from the last offset it saw, so only real losses count as lost. Returns what
/// this receiver saw, for the loss count.
pub async fn receive(
    agent: Agent,
    hint: usize,
    stats: Arc<RecvStats>,
    mut stop: Stop,
    classify: impl Fn(&str, Option<&str>) -> Option<crate::probe::Stamp>,
) -> crate::stats::SeqTracker {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let Agent {
        mut ws,
        resume,
        mut stall,
    } = agent;
    let mut tracker = crate::stats::SeqTracker::default();
    let mut last_offset: Option<String> = None;
    loop {
        let stall_at = stall.map(|(at, _)| at);
        tokio::select! {
            _ = async { tokio::time::sleep_until(stall_at.expect("guarded")).await }, if stall_at.is_some() => {
                // A slow consumer: read nothing for a while, then carry on.
                let (_, d) = stall.take().expect("guarded");
                tokio::time::sleep(d).await;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let head = api::head(&t);
                    if let Some(offset) = head.as_ref().and_then(|h| h.offset) {
                        // Reusing the buffer: no allocation per frame.
                        let last = last_offset.get_or_insert_with(String::new);
                        last.clear();
                        last.push_str(offset);
                    }
                    if let Some(stamp) = classify(&t, head.as_ref().map(|h| h.kind)) {
                        stats.record(hint, &mut tracker, &stamp);
                    }
                }
                Some(Ok(m)) if !m.is_close() => {}
                other => {
                    stats.dropped.add(api::close_reason(other));
                    let Some(r) = &resume else { break };
                    match reopen(r, last_offset.as_deref(), &stats, &mut stop).await {
                        Some(new) => ws = new,
                        None => break,
                    }
                }
            },
            _ = stop.wait() => break,
        }
    }
    tracker
}

/// Reconnects an agent after `after`; `None` when the run stops or every attempt failed.
async fn reopen(r: &Resume, after: Option<&str>, stats: &RecvStats, stop: &mut Stop) -> Option<Ws> {
    for attempt in 0..RESUME_ATTEMPTS {
        if stop.is_set() {
            return None;
        }
        let opened = tokio::select! {
            o = api::open_agent_after(&r.endpoint, r.local, &r.jwt, after) => o,
            _ = stop.wait() => return None,
        };
        match opened {
            Ok((ws, ready)) => {
                stats.resumes.fetch_add(1, Ordering::Relaxed);
                if ready.contains("\"recovered\":false") {
                    stats.dropped.add("resume: ready said recovered=false");
                }
                return Some(ws);
            }
            Err(e) => stats.dropped.add(format!("resume: {e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    None
}

/// A latency table row.
pub fn latency_row(name: &str, s: &crate::stats::LatencySummary) -> Vec<String> {
    let mut row = vec![name.to_string()];
    row.extend(crate::report::latency_cells(s));
    row
}

/// The closing lines of a run with agents: problems (request errors, plus each group's
/// dropped connections under its label), agent resumes, and whether the run was cut short.
pub fn print_problems(
    errors: std::collections::BTreeMap<String, u64>,
    dropped: &[(&str, std::collections::BTreeMap<String, u64>)],
    resumes: u64,
    interrupted: bool,
) {
    let mut problems = errors;
    for (who, map) in dropped {
        for (k, v) in map {
            *problems.entry(format!("{who} {k}")).or_default() += v;
        }
    }
    if resumes > 0 {
        problems.insert(
            "agent resumed with `after` (counted, not a failure)".into(),
            resumes,
        );
    }
    connections::print_failures(&problems);
    if interrupted {
        println!("\n(interrupted: figures cover a partial run)");
    }
}
