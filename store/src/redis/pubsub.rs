//! [`RedisBroker`]: the node's one subscriber connection.
//!
//! The hub calls [`subscribe`](Broker::subscribe) / [`unsubscribe`](Broker::unsubscribe)
//! (already reference-counted: first local subscriber, last one gone). Those only update
//! the *wanted* set and wake the subscriber task, which brings the connection's *live* set
//! in line (batched `SUBSCRIBE`/`UNSUBSCRIBE`). Publications are decoded and handed to the
//! sink in the order the connection receives them; this node's own publications arrive the
//! same way, which is what keeps every node's order identical.
//!
//! **Faults.** The task's connection is replaced whenever it ends (Redis restarted,
//! `CLIENT KILL`, network reset) or goes silent: a canary task publishes to this node's
//! channel every [`CANARY_EVERY`], and when nothing came back for [`CANARY_DEADLINE`] the
//! connection is considered dead. While it is down [`Broker::healthy`] is false. After each
//! (re)connection the task subscribes to the whole wanted set and only then emits
//! [`Published::Resync`], so re-reading the logs at that point leaves no gap.
//!
//! On a Redis Cluster the same broker runs one subscriber session per shard instead (see
//! [`cluster`](super::cluster)): `SSUBSCRIBE` on each master, a canary per shard.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::model::TenantEvent;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use redis::Msg;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::codec::{decode, encode_typing, Payload};
use super::keys::Channels;
use super::{cluster, Conn, COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::{Broker, Channel, EventSink, Published, Result, StoreError};

/// How often the node publishes its canary.
pub const CANARY_EVERY: Duration = Duration::from_secs(2);
/// How long the canary may stay away before the subscription is declared dead.
pub const CANARY_DEADLINE: Duration = Duration::from_secs(5);
/// Channels per `SUBSCRIBE`/`UNSUBSCRIBE` command.
const BATCH: usize = 512;
/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long [`Broker::subscribed`] waits for a subscription to go live.
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(3);

/// What the hub wants and what the connection has.
#[derive(Default)]
pub(super) struct Subs {
    /// Channel name → channel, for every channel the hub subscribed to. Also how an
    /// incoming publication's channel name is turned back into a [`Channel`].
    pub(super) wanted: HashMap<String, Channel>,
    /// Channel names confirmed subscribed on the current connection(s).
    pub(super) live: HashSet<String>,
}

/// State shared by the broker handle and its tasks.
pub(super) struct Shared {
    sink: OnceLock<Arc<dyn EventSink>>,
    pub(super) subs: Mutex<Subs>,
    /// Bumped when `wanted` changed: wakes the subscriber session(s) (a `watch`, so no
    /// change is missed and every shard's session sees it).
    pub(super) changed: watch::Sender<u64>,
    /// Wakes [`Broker::subscribed`] callers: `live` changed.
    pub(super) live_changed: Notify,
    /// False while the subscription is known to be broken.
    healthy: AtomicBool,
    /// When the canary last came back, in ms since `epoch`.
    canary_seen_ms: AtomicU64,
    /// The zero of `canary_seen_ms`.
    epoch: Instant,
    /// This node's own channel.
    node_channel: String,
    /// How many times the subscription was (re)established (diagnostics, tests).
    pub(super) sessions: AtomicU64,
}

impl Shared {
    pub(super) fn emit(&self, event: Published) {
        if let Some(sink) = self.sink.get() {
            sink.publish(event);
        }
    }

    fn canary_seen_now(&self) {
        self.canary_seen_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn canary_age(&self) -> Duration {
        let seen = Duration::from_millis(self.canary_seen_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(seen)
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        if !self.healthy.swap(healthy, Ordering::SeqCst) && healthy {
            tracing::info!("redis pub/sub: subscribed; subscribers resync from the logs");
        }
    }

    /// Turns one publication into what the sink gets.
    fn dispatch(&self, msg: &Msg) {
        self.dispatch_raw(msg.get_channel_name(), msg.get_payload_bytes());
    }

    /// Turns one publication (channel name, payload) into what the sink gets.
    pub(super) fn dispatch_raw(&self, name: &str, payload: &[u8]) {
        let Some(payload) = decode(payload) else {
            tracing::warn!(channel = name, "redis pub/sub: undecodable payload dropped");
            return;
        };
        if name == self.node_channel {
            if payload == Payload::Canary {
                self.canary_seen_now();
            }
            return;
        }
        let Some(channel) = self.subs.lock().wanted.get(name).cloned() else {
            return;
        };
        let event = match (payload, channel) {
            (
                Payload::Message { seq, json },
                Channel::Conversation {
                    tenant,
                    conversation_id,
                },
            ) => Published::Message {
                tenant,
                conversation_id,
                seq,
                json: json.into(),
            },
            (
                Payload::Updated { json },
                Channel::Conversation {
                    tenant,
                    conversation_id,
                },
            ) => Published::ConversationUpdated {
                tenant,
                conversation_id,
                json: json.into(),
            },
            (
                Payload::Read { json },
                Channel::Conversation {
                    tenant,
                    conversation_id,
                },
            ) => Published::ConversationRead {
                tenant,
                conversation_id,
                json: json.into(),
            },
            (
                Payload::Event {
                    offset,
                    created_ms,
                    kind,
                    data,
                },
                Channel::Tenant { tenant },
            ) => Published::Event {
                tenant,
                event: Arc::new(TenantEvent {
                    offset,
                    kind: kind.to_owned(),
                    data: data.to_owned(),
                    created_ms,
                }),
            },
            (Payload::Typing { frame }, channel) => Published::Ephemeral {
                channel,
                frame: frame.into(),
            },
            (payload, channel) => {
                tracing::warn!(
                    ?payload,
                    ?channel,
                    "redis pub/sub: publication does not fit its channel"
                );
                return;
            }
        };
        self.emit(event);
    }
}

/// The Redis [`Broker`]. Dropping it stops its tasks.
pub struct RedisBroker {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    channels: Channels,
    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    publish: &'static str,
    /// The subscriber task and the canary task.
    tasks: Vec<JoinHandle<()>>,
}

impl RedisBroker {
    fn shared(node_channel: String) -> Arc<Shared> {
        Arc::new(Shared {
            sink: OnceLock::new(),
            subs: Mutex::new(Subs::default()),
            changed: watch::Sender::new(0),
            live_changed: Notify::new(),
            healthy: AtomicBool::new(false),
            canary_seen_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            node_channel,
            sessions: AtomicU64::new(0),
        })
    }

    pub(crate) fn start(client: redis::Client, conn: Arc<Conn>, channels: Channels) -> RedisBroker {
        let node_id = format!("{:016x}", rand::random::<u64>());
        let shared = Self::shared(channels.node(&node_id));
        let tasks = vec![
            tokio::spawn(subscriber(shared.clone(), client)),
            tokio::spawn(canary(shared.clone(), conn.clone())),
        ];
        RedisBroker {
            shared,
            conn,
            channels,
            publish: "PUBLISH",
            tasks,
        }
    }

    /// The broker of a Redis Cluster node: one `SSUBSCRIBE` session per shard.
    pub(crate) fn start_cluster(
        conn: Arc<Conn>,
        channels: Channels,
        seeds: cluster::Seeds,
    ) -> RedisBroker {
        let node_id = format!("{:016x}", rand::random::<u64>());
        let shared = Self::shared(channels.node(&node_id));
        let canaries = Arc::new(Mutex::new(Vec::new()));
        let tasks = vec![
            tokio::spawn(cluster::supervise(
                shared.clone(),
                conn.clone(),
                seeds,
                channels.clone(),
                node_id,
                canaries.clone(),
            )),
            tokio::spawn(cluster::canaries(conn.clone(), canaries)),
        ];
        RedisBroker {
            shared,
            conn,
            channels,
            publish: "SPUBLISH",
            tasks,
        }
    }

    /// How many times the subscription was established (1 + reconnections).
    pub fn sessions(&self) -> u64 {
        self.shared.sessions.load(Ordering::SeqCst)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_sink(&self, sink: Arc<dyn EventSink>) {
        let _ = self.shared.sink.set(sink);
    }

    fn subscribe(&self, channel: &Channel) {
        self.shared
            .subs
            .lock()
            .wanted
            .insert(self.channels.of(channel), channel.clone());
        self.shared.changed.send_modify(|n| *n += 1);
    }

    fn unsubscribe(&self, channel: &Channel) {
        self.shared
            .subs
            .lock()
            .wanted
            .remove(&self.channels.of(channel));
        self.shared.changed.send_modify(|n| *n += 1);
    }

    async fn subscribed(&self, channel: &Channel) -> Result<()> {
        let name = self.channels.of(channel);
        let deadline = Instant::now() + SUBSCRIBED_WAIT;
        loop {
            let notified = self.shared.live_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let subs = self.shared.subs.lock();
                if subs.live.contains(&name) {
                    return Ok(());
                }
                if !subs.wanted.contains_key(&name) {
                    return Err(StoreError::Internal(format!(
                        "{channel:?} was not subscribed"
                    )));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(StoreError::Unavailable(
                    "the Redis subscription is not live yet".into(),
                ));
            }
        }
    }

    async fn publish_ephemeral(&self, event: Published) -> Result<()> {
        let Published::Ephemeral { channel, frame } = event else {
            return Err(StoreError::Internal(
                "only typing is published without being stored".into(),
            ));
        };
        let cmd = redis::cmd(self.publish)
            .arg(self.channels.of(&channel))
            .arg(encode_typing(&frame))
            .to_owned();
        let _receivers: i64 = self.conn.query(cmd).await?;
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }
}

/// Why a subscriber session ended.
enum Ended {
    Connect(String),
    Closed,
    Silent,
    Command(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Connect(e) => write!(f, "cannot connect: {e}"),
            Ended::Closed => f.write_str("the connection closed"),
            Ended::Silent => write!(f, "the canary did not come back within {CANARY_DEADLINE:?}"),
            Ended::Command(e) => write!(f, "a (un)subscribe failed: {e}"),
        }
    }
}

/// The subscriber task: one session per connection, for ever.
async fn subscriber(shared: Arc<Shared>, client: redis::Client) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let ended = session(&shared, &client).await;
        if shared.healthy.load(Ordering::SeqCst) {
            tracing::warn!(reason = %ended, "redis pub/sub: subscription lost; reconnecting");
        } else {
            tracing::debug!(reason = %ended, "redis pub/sub: not subscribed yet");
        }
        shared.set_healthy(false);
        shared.subs.lock().live.clear();
        shared.live_changed.notify_waiters();
        if started.elapsed() > CANARY_DEADLINE {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(shared: &Shared, client: &redis::Client) -> Ended {
    let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Ended::Connect(e.to_string()),
        Err(_) => return Ended::Connect("timed out".into()),
    };
    let (mut sink, mut stream) = pubsub.split();
    let mut changed = shared.changed.subscribe();
    if let Err(e) = command(sink.subscribe(&shared.node_channel)).await {
        return e;
    }
    shared.canary_seen_now();
    if let Err(e) = reconcile(shared, &mut sink).await {
        return e;
    }
    shared.sessions.fetch_add(1, Ordering::SeqCst);
    shared.set_healthy(true);
    // Live on everything wanted: whatever was missed before now is in the logs.
    shared.emit(Published::Resync);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => shared.dispatch(&msg),
                None => return Ended::Closed,
            },
            _ = changed.changed() => {
                if let Err(e) = reconcile(shared, &mut sink).await {
                    return e;
                }
            }
            _ = tick.tick() => {
                if shared.canary_age() > CANARY_DEADLINE {
                    return Ended::Silent;
                }
            }
        }
    }
}

async fn command(
    f: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> std::result::Result<(), Ended> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended::Command(e.to_string())),
        Err(_) => Err(Ended::Command("timed out".into())),
    }
}

/// Brings the connection's live set in line with the wanted set.
async fn reconcile(shared: &Shared, sink: &mut PubSubSink) -> std::result::Result<(), Ended> {
    loop {
        let (add, remove): (Vec<String>, Vec<String>) = {
            let subs = shared.subs.lock();
            (
                subs.wanted
                    .keys()
                    .filter(|n| !subs.live.contains(*n))
                    .take(BATCH)
                    .cloned()
                    .collect(),
                subs.live
                    .iter()
                    .filter(|n| !subs.wanted.contains_key(*n))
                    .take(BATCH)
                    .cloned()
                    .collect(),
            )
        };
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        if !add.is_empty() {
            command(sink.subscribe(&add)).await?;
            shared.subs.lock().live.extend(add);
            shared.live_changed.notify_waiters();
        }
        if !remove.is_empty() {
            command(sink.unsubscribe(&remove)).await?;
            let mut subs = shared.subs.lock();
            for name in &remove {
                subs.live.remove(name);
            }
        }
    }
}

/// The canary task: publishes to the node's own channel; the subscriber task watches for it.
async fn canary(shared: Arc<Shared>, conn: Arc<Conn>) {
    let mut tick = tokio::time::interval(CANARY_EVERY);
    // A publish stuck on a dead connection must not be followed by a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let cmd = redis::cmd("PUBLISH")
            .arg(&shared.node_channel)
            .arg(format!("p|{n}"))
            .to_owned();
        if let Err(e) = conn.query::<i64>(cmd).await {
            tracing::debug!(error = %e, "redis pub/sub: canary not published");
        }
    }
}
