//! Redis Cluster: the `redis-cluster://` URL, the slot map, and sharded pub/sub.
//!
//! **Commands** go through redis-rs's `cluster_async` connection (see `Conn`): it learns
//! the slot map from the seeds, follows `MOVED`/`ASK`, refreshes the map after
//! redirections and reconnects to nodes. Every script's keys carry one tenant's hash tag,
//! so each runs on one shard.
//!
//! **Sharded pub/sub** is ours: one plain RESP2 connection per master, on which this node
//! `SSUBSCRIBE`s the channels it wants whose slot the master owns (the channels carry the
//! tenant's hash tag, so a tenant's publications stay on its shard). redis-rs only offers
//! `SSUBSCRIBE` on its RESP3 cluster connection, which re-subscribes by itself after
//! reconnections and slot moves without telling when it is done; the gap fill needs exactly
//! that moment ("live again: re-read the logs"), so each shard session here works like the
//! single-Redis subscriber (`pubsub.rs`):
//! - it subscribes everything wanted in its slots, then emits [`Published::Resync`] (the
//!   hub re-reads each subscriber's log after the last id/offset it delivered);
//! - a canary per shard: the node `SPUBLISH`es to a channel of its own whose hash tag is
//!   picked to land in that shard's slots, and the session ends when it stays away for
//!   [`CANARY_DEADLINE`];
//! - it ends on a closed connection, an error reply (`MOVED`: the node is no longer that
//!   master), or an unsolicited `sunsubscribe` (Redis drops a slot's subscribers when the
//!   slot moves away), and is started again.
//!
//! The **supervisor** reads the slot map (`CLUSTER SLOTS`) every [`TOPOLOGY_EVERY`] and at
//! once when a session ends; when the masters or their slots changed (a failover, a slot
//! migration, a new shard) it restarts every session on the new map. The node is healthy
//! (`/readyz`) while every shard's session is live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::keys::{slot, Channels};
use super::pubsub::{Shared, CANARY_DEADLINE, CANARY_EVERY};
use super::{Conn, COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::{Published, Result, StoreError};

/// How often the supervisor reads the slot map.
pub const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between two connection attempts of a shard session.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Number of hash slots.
const SLOTS: u32 = 16384;

/// The seed nodes of a `redis-cluster://[USER:PASS@]HOST:PORT,HOST:PORT,…` URL.
#[derive(Clone, Debug)]
pub struct Seeds {
    nodes: Vec<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `Some` for a `redis-cluster://` URL (`None` for anything else).
pub(crate) fn seeds(url: &str) -> Result<Option<Seeds>> {
    let Some(rest) = url.strip_prefix("redis-cluster://") else {
        return Ok(None);
    };
    let bad = |why: &str| StoreError::Internal(format!("bad Redis Cluster URL {url:?}: {why}"));
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    // A cluster has database 0 only.
    let hosts = hosts
        .strip_suffix("/0")
        .or_else(|| hosts.strip_suffix('/'))
        .unwrap_or(hosts);
    if hosts.contains('/') || hosts.contains('?') {
        return Err(bad("no database or options: a cluster has database 0 only"));
    }
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
            None => (None, Some(a.to_owned())),
        },
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(bad("no HOST:PORT"));
    }
    Ok(Some(Seeds {
        nodes,
        username,
        password,
    }))
}

impl Seeds {
    /// The redis-rs cluster client for the command connection.
    pub(crate) fn client(&self) -> Result<ClusterClient> {
        let mut b = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            // Redirections and reconnections are retried quickly; the call as a whole is
            // bounded by `Conn::run`.
            .retries(6)
            .min_retry_wait(20)
            .max_retry_wait(400);
        if let Some(u) = &self.username {
            b = b.username(u);
        }
        if let Some(p) = &self.password {
            b = b.password(p);
        }
        b.build()
            .map_err(|e| StoreError::Internal(format!("redis cluster: {e}")))
    }
}

/// One master and the slots it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub host: String,
    pub port: u16,
    /// Inclusive slot ranges, sorted.
    pub ranges: Vec<(u16, u16)>,
    /// Replicas listed for it.
    pub replicas: usize,
}

impl Shard {
    fn owns(&self, s: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= s && s <= b)
    }

    fn same_place(&self, other: &Shard) -> bool {
        self.host == other.host && self.port == other.port && self.ranges == other.ranges
    }
}

/// The masters, their slots and replicas (`CLUSTER NODES`: unlike `CLUSTER SLOTS` it lists
/// a replica that is still loading its first copy), sorted by address.
pub(crate) async fn topology(conn: &Conn) -> Result<Vec<Shard>> {
    let reply: String = conn
        .query(redis::cmd("CLUSTER").arg("NODES").to_owned())
        .await?;
    Ok(parse_nodes(&reply))
}

fn parse_nodes(text: &str) -> Vec<Shard> {
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 8 && !f[2].split(',').any(|flag| flag == "fail"))
        .collect();
    let mut shards: Vec<(String, Shard)> = Vec::new();
    for f in &rows {
        if !f[2].split(',').any(|flag| flag == "master") {
            continue;
        }
        // `IP:PORT@BUSPORT[,HOSTNAME]`
        let addr = f[1].split('@').next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        let mut ranges: Vec<(u16, u16)> = f[8..]
            .iter()
            // `[SLOT->-NODE]`/`[SLOT-<-NODE]`: a migration in progress, not ownership.
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|x| (x, x)),
            })
            .collect();
        if ranges.is_empty() {
            continue;
        }
        ranges.sort_unstable();
        let replicas = rows
            .iter()
            .filter(|r| r[3] == f[0] && r[2].split(',').any(|flag| flag == "slave"))
            .count();
        shards.push((
            f[0].to_owned(),
            Shard {
                host: host.to_owned(),
                port,
                ranges,
                replicas,
            },
        ));
    }
    let mut shards: Vec<Shard> = shards.into_iter().map(|(_, s)| s).collect();
    shards.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    shards
}

/// Whether the map serves every slot (while it does not, the cluster is down or changing).
fn complete(shards: &[Shard]) -> bool {
    let served: u32 = shards
        .iter()
        .flat_map(|s| &s.ranges)
        .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
        .sum();
    served == SLOTS
}

fn same_map(a: &[Shard], b: &[Shard]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_place(y))
}

/// This node's canary channel on `shard`: the first `k` whose hash tag lands in its slots.
fn canary_channel(channels: &Channels, node: &str, shard: &Shard) -> String {
    (0u32..)
        .map(|k| channels.node_on_shard(node, k))
        .find(|c| shard.owns(slot(c)))
        .unwrap_or_default()
}

/// The supervisor task: one session task per master, restarted whenever the map changes.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    seeds: Seeds,
    channels: Channels,
    node: String,
    canaries: Arc<Mutex<Vec<String>>>,
) {
    let auth = Arc::new((seeds.username.clone(), seeds.password.clone()));
    let wake = Arc::new(Notify::new());
    loop {
        let shards = match topology(&conn).await {
            Ok(s) if complete(&s) => s,
            Ok(_) => {
                tracing::debug!("redis cluster: not every slot is served; waiting");
                tokio::time::sleep(TOPOLOGY_EVERY / 4).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis cluster: cannot read the slot map");
                tokio::time::sleep(TOPOLOGY_EVERY / 4).await;
                continue;
            }
        };
        let up: Arc<Vec<AtomicBool>> =
            Arc::new(shards.iter().map(|_| AtomicBool::new(false)).collect());
        let plan: Vec<(Shard, String)> = shards
            .iter()
            .map(|s| (s.clone(), canary_channel(&channels, &node, s)))
            .collect();
        *canaries.lock() = plan.iter().map(|(_, c)| c.clone()).collect();
        let tasks: Vec<JoinHandle<()>> = plan
            .into_iter()
            .enumerate()
            .map(|(i, (shard, canary))| {
                tokio::spawn(shard_loop(
                    shared.clone(),
                    shard,
                    canary,
                    auth.clone(),
                    up.clone(),
                    i,
                    wake.clone(),
                ))
            })
            .collect();
        // Watch the map; a session that ended asks for an early look.
        loop {
            tokio::select! {
                () = tokio::time::sleep(TOPOLOGY_EVERY) => {}
                () = wake.notified() => {}
            }
            match topology(&conn).await {
                Ok(now) if complete(&now) && !same_map(&now, &shards) => {
                    tracing::info!(
                        masters = now.len(),
                        "redis cluster: the slot map changed; re-subscribing on every shard"
                    );
                    break;
                }
                _ => {}
            }
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        shared.set_healthy(false);
        shared.subs.lock().live.clear();
        shared.live_changed.notify_waiters();
    }
}

/// Publishes this node's canary to every shard, every [`CANARY_EVERY`].
pub(super) async fn canaries(conn: Arc<Conn>, channels: Arc<Mutex<Vec<String>>>) {
    let mut tick = tokio::time::interval(CANARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let targets = channels.lock().clone();
        // Concurrently: a shard that is down must not delay the others' canaries.
        let sends = targets.into_iter().map(|c| {
            let conn = conn.clone();
            async move {
                let cmd = redis::cmd("SPUBLISH")
                    .arg(&c)
                    .arg(format!("p|{n}"))
                    .to_owned();
                if let Err(e) = conn.query::<i64>(cmd).await {
                    tracing::debug!(error = %e, channel = c, "redis cluster: canary not published");
                }
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// One shard's sessions, for ever (until the supervisor aborts it).
async fn shard_loop(
    shared: Arc<Shared>,
    shard: Shard,
    canary: String,
    auth: Arc<(Option<String>, Option<String>)>,
    up: Arc<Vec<AtomicBool>>,
    index: usize,
    wake: Arc<Notify>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let mut session = Session {
            shared: &shared,
            shard: &shard,
            canary: &canary,
            mine: Default::default(),
            adding: Default::default(),
            removing: Default::default(),
        };
        let ended = session.run(&auth, &up, index).await;
        session.forget();
        let was_up = up[index].swap(false, Ordering::SeqCst);
        shared.set_healthy(false);
        if was_up {
            tracing::warn!(
                shard = %format!("{}:{}", shard.host, shard.port),
                reason = %ended,
                "redis cluster pub/sub: shard subscription lost; reconnecting"
            );
        } else {
            tracing::debug!(reason = %ended, "redis cluster pub/sub: shard not subscribed yet");
        }
        wake.notify_one();
        if started.elapsed() > CANARY_DEADLINE {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a shard session ended.
#[derive(Debug)]
enum Ended {
    Connect(String),
    Closed,
    Silent,
    Refused(String),
    SlotMoved(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Connect(e) => write!(f, "cannot connect: {e}"),
            Ended::Closed => f.write_str("the connection closed"),
            Ended::Silent => write!(f, "the canary did not come back within {CANARY_DEADLINE:?}"),
            Ended::Refused(e) => write!(f, "the shard refused a command: {e}"),
            Ended::SlotMoved(c) => write!(f, "the shard dropped {c:?} (its slot moved)"),
        }
    }
}

/// One connection to one master.
struct Session<'a> {
    shared: &'a Shared,
    shard: &'a Shard,
    canary: &'a str,
    /// Channels confirmed on this connection (also in `shared.subs.live`).
    mine: std::collections::HashSet<String>,
    /// `SSUBSCRIBE`s sent, not confirmed yet.
    adding: std::collections::HashSet<String>,
    /// `SUNSUBSCRIBE`s sent, not confirmed yet.
    removing: std::collections::HashSet<String>,
}

impl Session<'_> {
    /// Takes this session's channels out of the live set.
    fn forget(&mut self) {
        let mut subs = self.shared.subs.lock();
        for c in self.mine.drain() {
            subs.live.remove(&c);
        }
        drop(subs);
        self.shared.live_changed.notify_waiters();
    }

    async fn run(
        &mut self,
        auth: &(Option<String>, Option<String>),
        up: &[AtomicBool],
        index: usize,
    ) -> Ended {
        let addr = format!("{}:{}", self.shard.host, self.shard.port);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ended::Connect(e.to_string()),
            Err(_) => return Ended::Connect("timed out".into()),
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        if let (user, Some(pass)) = auth {
            let mut cmd = redis::cmd("AUTH");
            if let Some(u) = user {
                cmd.arg(u);
            }
            cmd.arg(pass);
            if let Err(e) = wr.write_all(&cmd.get_packed_command()).await {
                return Ended::Connect(e.to_string());
            }
            match tokio::time::timeout(COMMAND_TIMEOUT, next_frame(&mut rd, &mut buf)).await {
                Ok(Ok(Frame::Simple(_))) => {}
                Ok(Ok(other)) => return Ended::Connect(format!("AUTH: {other:?}")),
                Ok(Err(e)) => return e,
                Err(_) => return Ended::Connect("AUTH timed out".into()),
            }
        }
        let mut changed = self.shared.changed.subscribe();
        // The canary first, then everything wanted in this shard's slots.
        self.adding.insert(self.canary.to_owned());
        let mut out = redis::cmd("SSUBSCRIBE")
            .arg(self.canary)
            .get_packed_command();
        out.extend(self.reconcile_commands());
        if let Err(e) = wr.write_all(&out).await {
            return Ended::Connect(e.to_string());
        }
        let mut established = false;
        // Publications received before the initial subscriptions are all confirmed: handed
        // over after the Resync, as the single-Redis subscriber does.
        let mut early: Vec<(String, Vec<u8>)> = Vec::new();
        let mut canary_seen = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            tokio::select! {
                frame = next_frame(&mut rd, &mut buf) => {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => return e,
                    };
                    match self.handle(frame) {
                        Err(e) => return e,
                        Ok(Some((channel, payload))) => {
                            if channel == self.canary {
                                canary_seen = Instant::now();
                            } else if established {
                                self.shared.dispatch_raw(&channel, &payload);
                            } else {
                                early.push((channel, payload));
                            }
                        }
                        Ok(None) => {}
                    }
                    if !established && self.adding.is_empty() {
                        established = true;
                        canary_seen = Instant::now();
                        self.shared.sessions.fetch_add(1, Ordering::SeqCst);
                        up[index].store(true, Ordering::SeqCst);
                        if up.iter().all(|u| u.load(Ordering::SeqCst)) {
                            self.shared.set_healthy(true);
                        }
                        // Live on everything wanted here: whatever was missed is in the logs.
                        self.shared.emit(Published::Resync);
                        for (c, p) in early.drain(..) {
                            self.shared.dispatch_raw(&c, &p);
                        }
                    }
                }
                r = changed.changed() => {
                    if r.is_err() {
                        return Ended::Closed;
                    }
                    let out = self.reconcile_commands();
                    if !out.is_empty() {
                        if let Err(e) = wr.write_all(&out).await {
                            return Ended::Refused(e.to_string());
                        }
                    }
                }
                _ = tick.tick() => {
                    if !established && Instant::now() > deadline {
                        return Ended::Refused("subscriptions not confirmed in time".into());
                    }
                    if established && canary_seen.elapsed() > CANARY_DEADLINE {
                        return Ended::Silent;
                    }
                }
            }
        }
    }

    /// The `SSUBSCRIBE`/`SUNSUBSCRIBE` commands that bring this connection in line with
    /// the wanted channels in this shard's slots (one channel per command: channels of
    /// different slots cannot share one).
    fn reconcile_commands(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let subs = self.shared.subs.lock();
        for name in subs.wanted.keys() {
            if !self.mine.contains(name)
                && !self.adding.contains(name)
                && self.shard.owns(slot(name))
            {
                self.adding.insert(name.clone());
                out.extend(redis::cmd("SSUBSCRIBE").arg(name).get_packed_command());
            }
        }
        for name in &self.mine {
            if !subs.wanted.contains_key(name) && !self.removing.contains(name) {
                self.removing.insert(name.clone());
                out.extend(redis::cmd("SUNSUBSCRIBE").arg(name).get_packed_command());
            }
        }
        out
    }

    /// Applies one frame; returns a publication `(channel, payload)`.
    fn handle(&mut self, frame: Frame) -> std::result::Result<Option<(String, Vec<u8>)>, Ended> {
        let items = match frame {
            Frame::Array(items) => items,
            Frame::Error(e) => return Err(Ended::Refused(e)),
            other => return Err(Ended::Refused(format!("unexpected reply {other:?}"))),
        };
        let mut it = items.into_iter();
        let kind = it.next().and_then(Frame::into_text).unwrap_or_default();
        let channel = it.next().and_then(Frame::into_text).unwrap_or_default();
        match kind.as_str() {
            "smessage" => {
                let payload = match it.next() {
                    Some(Frame::Bulk(b)) => b,
                    _ => return Err(Ended::Refused("a message without payload".into())),
                };
                Ok(Some((channel, payload)))
            }
            "ssubscribe" => {
                self.adding.remove(&channel);
                if channel != self.canary {
                    // Still wanted? (Unsubscribed meanwhile: the next reconcile removes it.)
                    self.mine.insert(channel.clone());
                    self.shared.subs.lock().live.insert(channel);
                    self.shared.live_changed.notify_waiters();
                }
                Ok(None)
            }
            "sunsubscribe" => {
                if self.removing.remove(&channel) {
                    self.mine.remove(&channel);
                    self.shared.subs.lock().live.remove(&channel);
                    Ok(None)
                } else {
                    // Not asked for: Redis drops the subscribers of a slot that moved away.
                    Err(Ended::SlotMoved(channel))
                }
            }
            _ => Err(Ended::Refused(format!("unexpected push {kind:?}"))),
        }
    }
}

/// A RESP2 frame (what a subscribed connection receives).
#[derive(Debug)]
enum Frame {
    Simple(String),
    Error(String),
    Int(#[allow(dead_code)] i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Frame>),
}

impl Frame {
    fn into_text(self) -> Option<String> {
        match self {
            Frame::Simple(s) => Some(s),
            Frame::Bulk(b) => String::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Reads the next frame from `rd`, keeping unread bytes in `buf`.
async fn next_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> std::result::Result<Frame, Ended> {
    loop {
        match parse(buf) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => return Err(Ended::Refused(e)),
        }
        let mut chunk = [0u8; 16 * 1024];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Ended::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses one frame at the start of `buf`: `Ok(None)` when more bytes are needed.
fn parse(buf: &[u8]) -> std::result::Result<Option<(Frame, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = || String::from_utf8_lossy(&buf[1..end]).into_owned();
    let number = || -> std::result::Result<i64, String> {
        line()
            .parse()
            .map_err(|_| format!("bad length {:?}", line()))
    };
    match buf.first() {
        Some(b'+') => Ok(Some((Frame::Simple(line()), end + 2))),
        Some(b'-') => Ok(Some((Frame::Error(line()), end + 2))),
        Some(b':') => Ok(Some((Frame::Int(number()?), end + 2))),
        Some(b'$') => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Frame::Nil, end + 2)));
            }
            let start = end + 2;
            let stop = start + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            Ok(Some((Frame::Bulk(buf[start..stop].to_vec()), stop + 2)))
        }
        Some(b'*') => {
            let n = number()?;
            let mut at = end + 2;
            let mut items = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n.max(0) {
                match parse(&buf[at..])? {
                    Some((f, used)) => {
                        items.push(f);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Frame::Array(items), at)))
        }
        _ => Err(format!("unexpected RESP type in {:?}", line())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = seeds("redis-cluster://a:1,b:2").unwrap().unwrap();
        assert_eq!(s.nodes, ["redis://a:1", "redis://b:2"]);
        assert!(s.password.is_none());
        let s = seeds("redis-cluster://u:p@a:1/").unwrap().unwrap();
        assert_eq!(s.nodes, ["redis://a:1"]);
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert!(seeds("redis-cluster://a:1/3").is_err());
        assert!(seeds("redis://a:1").unwrap().is_none());
    }

    #[test]
    fn frames() {
        let msg = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n";
        let (f, used) = parse(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        let Frame::Array(items) = f else {
            panic!("{f:?}")
        };
        assert!(matches!(&items[2], Frame::Bulk(b) if b == b"a\r\nb"));
        assert!(parse(&msg[..msg.len() - 1]).unwrap().is_none());
        assert!(matches!(
            parse(b"-MOVED 1 x:2\r\n").unwrap().unwrap().0,
            Frame::Error(e) if e.starts_with("MOVED")
        ));
    }

    #[test]
    fn cluster_nodes() {
        let text = "f3 127.0.0.1:32105@42105 slave 90 0 1 1 connected\n\
            90 127.0.0.1:32101@42101 myself,master - 0 0 1 connected 0-5460 [5461->-fe]\n\
            21 127.0.0.1:32103@42103 master - 0 1 3 connected 10923-16383\n\
            fe 127.0.0.1:32102@42102 master - 0 1 2 connected 5461-10922\n\
            dd 127.0.0.1:32109@42109 master,fail - 0 1 2 disconnected\n";
        let shards = parse_nodes(text);
        assert_eq!(shards.len(), 3);
        assert_eq!((shards[0].port, shards[0].replicas), (32101, 1));
        assert_eq!(shards[0].ranges, [(0, 5460)]);
        assert_eq!(shards[1].replicas, 0);
        assert!(complete(&shards));
    }

    #[test]
    fn canary_channels_land_on_their_shard() {
        let shard = Shard {
            host: "h".into(),
            port: 1,
            ranges: vec![(5461, 10922)],
            replicas: 1,
        };
        let c = canary_channel(&Channels::new(0), "abc", &shard);
        assert!(shard.owns(slot(&c)), "{c}");
    }
}
