//! # The Redis backend
//!
//! Scale-out mode: every gateway node opens the same Redis. The store, the fan-out and the
//! rate limiter all live there, so nodes share conversations, ids, offsets, limits, the
//! challenge replay set and the session secret.
//!
//! ## Layout
//!
//! - `mod.rs` (this file) — [`open`], [`RedisStore`] (the [`Store`]) and the command
//!   connection (`Conn`: timeouts, reconnects, error mapping).
//! - `keys.rs` — every key and channel name.
//! - `codec.rs` — the JSON templates the scripts fill in, and the pub/sub payloads.
//! - `scripts.rs` + `*.lua` — the scripts; `lib.lua` holds the helpers all of them share.
//! - `pubsub.rs` — [`RedisBroker`]: the node's one subscriber connection, resync, canary.
//! - `limiter.rs` — [`RedisRateLimiter`]: GCRA in a script.
//! - `testing.rs` — a private `redis-server` per test and a freezable TCP proxy (for this
//!   crate's tests and the gateway's multi-node tests).
//!
//! ## Key layout
//!
//! `T` and `C` are the tenant and conversation ids, escaped when they hold anything but
//! `[A-Za-z0-9_.-]` (see `keys.rs`), so data never forges a key or a hash tag.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `confab:{t:T}:conv:C` | HASH | one conversation: JSON pieces `t1`…`t9` around the slots `st`, `ua`, `q`, `lm`, `h`, `vr`, `ar`, `ur`; `vrs`, `ars` (read cursors' seqs), `seq`, `lcm`, `lca`, `um`, `ver` (see `lib.lua`) |
//! | `confab:{t:T}:msgs:C` | STREAM | its messages: entry id `SEQ-CREATED_MS`, field `m` = the message JSON |
//! | `confab:{t:T}:idem:C` | HASH | clientMessageId → seq of the first message with it |
//! | `confab:{t:T}:list:open`, `…:list:closed` | ZSET | the conversation list: score 0, member `UPDATED_MS(20 digits):C` |
//! | `confab:{t:T}:visitors` | HASH | visitor-token hash → `VISITOR_ID CONVERSATION_ID` |
//! | `confab:{t:T}:meta` | HASH | `offset` (last tenant offset), `pruned` (highest offset dropped by retention) |
//! | `confab:{t:T}:log` | STREAM | tenant events: entry id `OFFSET-CREATED_MS`, fields `k` (type), `d` (data JSON) |
//! | `confab:{t:T}:webhook:W` | HASH | one webhook's delivery state: `offset` (forward only), `state` (JSON) |
//! | `confab:{t:T}:presence` | ZSET | agents with sockets: member `NODE|AGENT`, score = expiry (epoch ms) |
//! | `confab:{t:T}:presence:info` | HASH | the same members → the entry's JSON (name, away) |
//! | `confab:lease:NAME` | STRING | a lease: its holder (`SET PX ttl`, renewed by the holder, expires by itself) |
//! | `confab:tenants` | SET | tenants with a log, for `maintain` |
//! | `confab:secret` | STRING | the generated session secret (`SET NX`, then `GET`) |
//! | `confab:nonce:N` | STRING | a used challenge nonce (`SET NX PX ttl`: expires by itself) |
//! | `confab:rl:KEY` | STRING | a rate limiter's TAT in µs (`PX` until the TAT: expires by itself) |
//!
//! Channels: `confab:DB:{t:T}:conv:C` (a conversation's visitors), `confab:DB:{t:T}:events`
//! (a tenant's agents), `confab:DB:node:ID` (a node's canary). Pub/sub ignores `SELECT`,
//! hence the database number in the name.
//!
//! **Why streams for messages and events.** A conversation's messages are read by id range
//! (`after`), by creation time (`since`, `afterCreatedAt`) and never change. A stream with
//! *explicit* ids `SEQ-CREATED_MS` is exactly that: `XADD` refuses an id that does not
//! grow, the id range gives `after` in O(log n + k) (`XRANGE key SEQ+1 + COUNT k`), the
//! creation time rides in the id so a time cursor is a binary search over ids with no
//! second index (`history.lua`: (createdAt, id) grows with the id since createdAt never
//! decreases), and radix-tree/listpack storage with delta-encoded ids is the most compact
//! Redis has for an append-only log. A sorted set would need a unique member per entry
//! (the JSON itself, or a hash beside it) and a second sorted set for time. The tenant log
//! is a stream for the same reasons, plus `XTRIM MINID` for retention.
//!
//! ## Scripts, and round trips per message
//!
//! `start.lua`, `append.lua`, `status.lua`, `profile.lua`, `qualify.lua`, `event.lua`,
//! `trim.lua`, `history.lua`, `gcra.lua` (see `scripts.rs`). **A message costs one round
//! trip**: one `EVALSHA` of `append.lua` checks that the conversation exists in the tenant,
//! checks the clientMessageId, checks and charges a visitor message's rate limits (the IP's
//! and the session's, on the limiter's keys, which on a cluster carry the tenant's hash tag:
//! `Store::append_message_limited`), takes the next seq, computes `createdAt = max(now, last)`,
//! `XADD`s the message, records the idempotency key, updates the conversation (last
//! message, `updatedAt`, reopening, its list position), appends `message:new` (and
//! `conversation:updated` on reopen) to the tenant log with the next offsets, trims the log
//! and `PUBLISH`es the message, the event(s) and the conversation change. The JSON is made
//! by serde in Rust as a template around placeholders and the script splices in the id and
//! `createdAt` (see `codec.rs`), so the bytes are exactly SQLite's. Extra round trips: a
//! tenant's first event in a process adds one `SADD confab:tenants`; after a Redis restart
//! the first `EVALSHA` of each script gets `NOSCRIPT` and is followed by `SCRIPT LOAD` +
//! `EVALSHA`.
//!
//! ## Ordering
//!
//! Redis runs one script at a time, so a script is a transaction: the seq and offsets it
//! takes are the commit order, and its `PUBLISH`es reach each subscriber connection before
//! those of any later script. Every node subscribes with one connection and delivers only
//! what that connection receives — its own publications included — so every node sees
//! every channel in seq/offset order, and a stored event is always published (same script)
//! while a published one is always stored.
//!
//! **Clocks.** Timestamps come from the node's [`Clock`](crate::Clock) (as with SQLite), passed into
//! the scripts with their formatted form; the script takes `max(now, last createdAt)`, so
//! `createdAt` never decreases along a conversation even when nodes' clocks disagree (keep
//! them NTP-synced: the conversation list and retention use them too). The rate limiter
//! also uses the caller's `now_ms`.
//!
//! **Reads** are single commands (`XRANGE`, `HMGET`, an atomic `HGET`+`XRANGE` for the
//! tenant log) except the conversation list: one pipeline of `ZREVRANGEBYLEX` over the
//! status lists, then one pipeline of `HMGET`s.
//!
//! ## Faults
//!
//! - **Commands** go over one multiplexed connection (a `ConnectionManager`, which
//!   reconnects after I/O errors) and are bounded by [`COMMAND_TIMEOUT`]. While Redis is
//!   unreachable a call fails within that bound with [`StoreError::Unavailable`]; a timed
//!   out connection is replaced (it may be a half-open TCP connection that would never
//!   answer). A timeout is ambiguous — the script may have run — which is what
//!   clientMessageId idempotency is for: a client retrying gets `duplicate: true`.
//! - **Pub/sub is at-most-once.** A publication sent while the subscriber connection is
//!   down is lost, and Redis itself drops a subscriber that falls too far behind
//!   (`client-output-buffer-limit pubsub`). After every (re)subscription the broker emits
//!   [`Published::Resync`](crate::Published::Resync); the hub then re-reads each subscriber's log after the last
//!   id/offset it delivered, so the gap is filled from the stored log. A *new*
//!   subscription goes live asynchronously: [`Broker::subscribed`](crate::Broker::subscribed) says when, so the hub
//!   reads the log for its replay only after that.
//! - **Silent failures** (a half-open connection, a proxy that stopped forwarding) are
//!   caught by a canary: the node publishes to its own channel every [`pubsub::CANARY_EVERY`]
//!   and when nothing came back for [`pubsub::CANARY_DEADLINE`], it marks itself unhealthy
//!   (`/readyz` says 503), reconnects, and emits `Resync`.
//! - Everything recovers by itself when Redis returns.
//!
//! ## Persistence
//!
//! A message is acknowledged once its script ran, i.e. once Redis has it in memory. That
//! survives any gateway node crash (the SPEC's promise). Whether it survives a *Redis*
//! crash is Redis's persistence setting:
//! - `appendonly yes` + `appendfsync always`: Redis fsyncs the AOF before it replies, so an
//!   acknowledged message survives a Redis crash or power loss. Costs an fsync per write
//!   batch (Redis groups the writes of one event-loop iteration).
//! - `appendonly yes` + `appendfsync everysec` (the usual choice): at most about one second
//!   of acknowledged writes can be lost on a power loss or kernel crash; a crash of the
//!   Redis process alone loses nothing (the data is already in the OS page cache).
//! - `appendfsync no` / RDB snapshots only: acknowledged messages since the last
//!   flush/snapshot can be lost. Fine for a cache, not for chat history.
//!
//! With replicas, a failover can lose writes the replica had not received. With
//! `replica_acks = N` ([`RedisOptions`]) a commit is acknowledged only once `WAIT N`
//! (sent in the same pipeline as the script, so on the same connection) says N replicas
//! have it; otherwise the caller gets `Unavailable` — a retry with the same
//! clientMessageId is safe. A duplicate answer first writes `{t:T}:sync` so that its
//! `WAIT` covers the original write.
//!
//! ## Cluster
//!
//! Every key of a tenant carries the hash tag `{t:T}`, so all of a tenant lives in one
//! slot and every script touches one slot: the tenant is the unit of sharding. That keeps
//! a message's commit (conversation + tenant log) atomic in one script; the cost is that
//! one tenant's load cannot be spread over shards, which suits chat widgets (many modest
//! tenants). Scripts declare every key they touch in `KEYS`. The global keys
//! (`confab:tenants`, `confab:secret`, nonces, leases) are used by single-key commands or
//! single-key scripts; the limiter's keys get the tenant's tag `{t:TENANT}` on a cluster
//! so that one request's limits (one script) share a slot, the tenant's own: a tenant
//! depends on one shard only.
//! `redis-cluster://` (see `cluster.rs`) uses redis-rs's cluster connection for commands,
//! `SPUBLISH` in the scripts (channels carry the tenant's tag, so they stay in the slot)
//! and one `SSUBSCRIBE` session per master.
//!
//! Requires Redis ≥ 6.2 (`XTRIM MINID`); Redis Cluster needs Redis ≥ 7 (sharded pub/sub).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::model::{Conversation, Direction, Handler, Reader, Status, TenantEvent};
use confab_protocol::time::format_ms;
use dashmap::DashMap;
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, RedisResult, ScriptInvocation, Value};
use serde_json::Value as Json;

use crate::domain::{new_conversation, new_conversation_id, new_message, new_visitor_id, to_json};
use crate::ratelimit::{LimitSpec, RateLimiter};
use crate::{
    message_id, Appended, AttachmentRecord, Backend, Clock, ConversationCursor, ConversationPage,
    Cursor, EventsPage, LimitedAppend, MessagePage, NewConversation, NewMessage, OwedReply,
    PresenceEntry, ProfileUpdate, ReadMark, ReplyOutcome, Result, Retention, Store, StoreError,
    StoredMessage, VisitorRecord, WebhookState,
};

pub mod cluster;
mod codec;
mod keys;
mod limiter;
pub mod pubsub;
mod scripts;
#[doc(hidden)]
#[cfg(feature = "testkit")]
pub mod testing;

use codec::{
    conversation_template, fill_conversation, message_template, parse_conversation, parse_message,
    ConvSlots, LEGACY_TAIL, PIECES,
};
pub use keys::slot;
use keys::{Channels, TenantKeys};
pub use limiter::RedisRateLimiter;
pub use pubsub::RedisBroker;

/// The longest a store call waits for Redis before it answers `Unavailable`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Optimistic retries of `update_profile` against concurrent profile updates.
const PROFILE_ATTEMPTS: usize = 8;
/// Events `maintain` drops per script call (keeps each call short).
const TRIM_BUDGET: usize = 1000;

/// How long an acknowledged write waits for `redis_replica_acks` replicas (`WAIT`) before
/// the caller gets `Unavailable` (below [`COMMAND_TIMEOUT`], which bounds the round trip).
pub const REPLICA_ACK_TIMEOUT: Duration = Duration::from_millis(1000);

/// Connections (per Redis node) reserved for acknowledged writes when
/// `redis_replica_acks > 0`. `WAIT` blocks the connection it is sent on until the replicas
/// answer, and Redis reads nothing more from a blocked client: on the node's one shared
/// connection every other command to that master (rate limits, reads, other tenants'
/// writes) would queue behind each message's replica round trip. Measured on a cluster,
/// 2 nodes: with the shared connection, p99 visitor→agent 350 ms at 2,000 msg/s.
const ACK_CONNECTIONS: usize = 8;

/// What the Redis backends take beyond the URL.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `redis_replica_acks`: how many replicas must hold a message before it is
    /// acknowledged (`WAIT` after the append script). `None`: 1 on a cluster whose every
    /// shard has a replica, 0 otherwise.
    pub replica_acks: Option<u32>,
}

/// Opens the Redis backend: the store, the broker and the rate limiter of one node.
/// Fails with `Unavailable` when Redis does not answer a `PING` in time (after that,
/// outages are survived: calls fail fast and everything reconnects by itself).
pub async fn open(
    url: &str,
    retention: Retention,
    clock: Clock,
    options: &RedisOptions,
) -> Result<Backend> {
    let node = RedisNode::connect_with(url, retention, clock, options).await?;
    Ok(Backend {
        store: node.store,
        broker: node.broker,
        limiter: node.limiter,
    })
}

/// The three halves of a node, with their concrete types (tests look inside).
pub struct RedisNode {
    pub store: Arc<RedisStore>,
    pub broker: Arc<RedisBroker>,
    pub limiter: Arc<RedisRateLimiter>,
}

impl RedisNode {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]` or
    /// `redis-cluster://[user:pass@]host:port,host:port,…`) with the default options.
    pub async fn connect(url: &str, retention: Retention, clock: Clock) -> Result<RedisNode> {
        Self::connect_with(url, retention, clock, &RedisOptions::default()).await
    }

    /// Connects to `url` (see [`connect`](Self::connect)).
    pub async fn connect_with(
        url: &str,
        retention: Retention,
        clock: Clock,
        options: &RedisOptions,
    ) -> Result<RedisNode> {
        if let Some(seeds) = cluster::seeds(url)? {
            return Self::connect_cluster(seeds, retention, clock, options).await;
        }
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Internal(format!("bad Redis URL {url:?}: {e}")))?;
        let db = client.get_connection_info().redis_settings().db();
        let conn = Arc::new(Conn::new(client.clone())?);
        let _: String = conn.query(redis::cmd("PING")).await?;
        let channels = Channels::new(db);
        let store = Arc::new(RedisStore {
            conn: conn.clone(),
            channels: channels.clone(),
            retention,
            clock,
            registered: DashMap::new(),
            sharded: false,
            replica_acks: options.replica_acks.unwrap_or(0),
            ackers: match options.replica_acks.unwrap_or(0) {
                0 => Vec::new(),
                _ => (0..ACK_CONNECTIONS)
                    .map(|_| Conn::new(client.clone()).map(Arc::new))
                    .collect::<Result<_>>()?,
            },
            next_acker: AtomicUsize::new(0),
        });
        let broker = Arc::new(RedisBroker::start(client, conn.clone(), channels));
        let limiter = Arc::new(RedisRateLimiter::new(conn, false));
        Ok(RedisNode {
            store,
            broker,
            limiter,
        })
    }

    async fn connect_cluster(
        seeds: cluster::Seeds,
        retention: Retention,
        clock: Clock,
        options: &RedisOptions,
    ) -> Result<RedisNode> {
        let client = seeds.client()?;
        let conn = Arc::new(Conn::new_cluster(client).await?);
        // PING goes to every master: all shards answer, or opening fails.
        let _: String = conn.query(redis::cmd("PING")).await?;
        let shards = cluster::topology(&conn).await?;
        let replica_acks = options.replica_acks.unwrap_or_else(|| {
            u32::from(!shards.is_empty() && shards.iter().all(|s| s.replicas > 0))
        });
        // Pub/sub ignores databases, and a cluster has only database 0.
        let channels = Channels::new(0);
        let store = Arc::new(RedisStore {
            conn: conn.clone(),
            channels: channels.clone(),
            retention,
            clock,
            registered: DashMap::new(),
            sharded: true,
            replica_acks,
            ackers: match replica_acks {
                0 => Vec::new(),
                _ => (0..ACK_CONNECTIONS)
                    .map(|_| Ok(Arc::new(Conn::lazy_cluster(seeds.client()?))))
                    .collect::<Result<_>>()?,
            },
            next_acker: AtomicUsize::new(0),
        });
        let broker = Arc::new(RedisBroker::start_cluster(conn.clone(), channels, seeds));
        let limiter = Arc::new(RedisRateLimiter::new(conn, true));
        Ok(RedisNode {
            store,
            broker,
            limiter,
        })
    }
}

/// A command connection: a single Redis's `ConnectionManager`, or a cluster connection
/// (redis-rs `cluster_async`: slot map from the seeds, `MOVED`/`ASK` followed, slot map
/// refreshed after redirections and reconnections).
#[derive(Clone)]
pub(crate) enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Handle::Single(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

/// Where new connections come from.
enum Source {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// The command connection: one multiplexed connection (per Redis node) shared by every
/// call of the node.
pub(crate) struct Conn {
    source: Source,
    /// The connection and its generation; replaced after a timeout. `None`: a cluster
    /// connection to be made by the next call (making one takes round trips).
    current: RwLock<(u64, Option<Handle>)>,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        // Fail fast while Redis is down: callers get `Unavailable` and the next call
        // starts a new attempt.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

impl Conn {
    fn new(client: redis::Client) -> Result<Conn> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(map_err)?;
        Ok(Conn {
            source: Source::Single(client),
            current: RwLock::new((0, Some(Handle::Single(manager)))),
        })
    }

    async fn new_cluster(client: ClusterClient) -> Result<Conn> {
        let conn = Conn::lazy_cluster(client);
        conn.handle().await?;
        Ok(conn)
    }

    /// A cluster connection made by its first call.
    fn lazy_cluster(client: ClusterClient) -> Conn {
        Conn {
            source: Source::Cluster(Box::new(client)),
            current: RwLock::new((0, None)),
        }
    }

    /// The current connection, made first when there is none.
    async fn handle(&self) -> Result<(u64, Handle)> {
        let (generation, current) = self.current.read().clone();
        if let Some(h) = current {
            return Ok((generation, h));
        }
        let Source::Cluster(client) = &self.source else {
            return Err(StoreError::Internal("redis: no connection".into()));
        };
        let made = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| StoreError::Unavailable("Redis Cluster did not answer in time".into()))?
            .map_err(map_err)?;
        let mut current = self.current.write();
        match &current.1 {
            // Someone else made one meanwhile: use theirs.
            Some(h) => Ok((current.0, h.clone())),
            None => {
                current.1 = Some(Handle::Cluster(made.clone()));
                Ok((current.0, Handle::Cluster(made)))
            }
        }
    }

    /// Runs `f` on the connection, bounded by [`COMMAND_TIMEOUT`] (plus the time to connect).
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (generation, handle) = self.handle().await?;
        match tokio::time::timeout(COMMAND_TIMEOUT + CONNECT_TIMEOUT, f(handle)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_timeout() {
                    self.renew(generation);
                }
                Err(map_err(e))
            }
            Err(_) => {
                self.renew(generation);
                Err(StoreError::Unavailable(
                    "Redis did not answer in time".into(),
                ))
            }
        }
    }

    /// Replaces a connection that timed out: it may be half-open and never answer again
    /// (the manager itself only reconnects after an I/O error).
    fn renew(&self, generation: u64) {
        let mut current = self.current.write();
        if current.0 != generation {
            return;
        }
        match &self.source {
            Source::Single(client) => {
                match ConnectionManager::new_lazy_with_config(client.clone(), manager_config()) {
                    Ok(m) => {
                        tracing::warn!("redis: a command timed out; replacing the connection");
                        *current = (generation + 1, Some(Handle::Single(m)));
                    }
                    Err(e) => tracing::error!(error = %e, "redis: cannot make a new connection"),
                }
            }
            Source::Cluster(_) => {
                tracing::warn!("redis: a command timed out; replacing the cluster connection");
                *current = (generation + 1, None);
            }
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T> {
        let once = || {
            self.run_raw(|mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
        };
        once().await.or_else_moved(once).await
    }

    pub(crate) async fn pipe<T: FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T> {
        let once = || self.pipe_once(&pipe);
        once().await.or_else_moved(once).await
    }

    async fn pipe_once<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> std::result::Result<T, Redirected> {
        self.run_raw(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// [`run`](Self::run), but a redirection (`MOVED`/`ASK`, which redis-rs's cluster
    /// connection hands back for pipelines) is told apart: the slot map this connection
    /// holds is stale (a failover, a slot migration), so the connection is replaced (the
    /// new one reads the map afresh) and the caller may try once more — a redirected
    /// command did not run.
    async fn run_raw<T, F, Fut>(&self, f: F) -> std::result::Result<T, Redirected>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut generation = None;
        let r = self
            .run(|c| {
                generation = Some(self.current.read().0);
                f(c)
            })
            .await;
        match r {
            Err(StoreError::Internal(msg)) if msg.starts_with(REDIRECTED) => {
                if let Some(g) = generation {
                    self.renew(g);
                }
                Err(Redirected::Moved(StoreError::Unavailable(msg)))
            }
            Err(e) => Err(Redirected::Other(e)),
            Ok(v) => Ok(v),
        }
    }

    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        inv: ScriptInvocation<'static>,
    ) -> Result<T> {
        let once = || {
            self.run_raw(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
        };
        once().await.or_else_moved(once).await
    }

    /// Runs a write script, then `WAIT replicas` on the *same connection* (one pipeline):
    /// `WAIT` counts the replicas that reached this connection's last write, so no other
    /// connection (a reconnection in between) can stand in for it and ack a write no
    /// replica has. Returns the script's reply and how many replicas confirmed.
    async fn eval_then_wait(
        &self,
        inv: &ScriptInvocation<'static>,
        replicas: u32,
    ) -> Result<(Value, u32)> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(inv)
            .cmd("WAIT")
            .arg(replicas)
            .arg(REPLICA_ACK_TIMEOUT.as_millis() as u64);
        let once = || {
            self.run_raw(|mut c| {
                let pipe = &pipe;
                async move {
                    use redis::{ErrorKind, ServerErrorKind};
                    match pipe.query_async::<(Value, u32)>(&mut c).await {
                        // After a restart or a failover to a replica without it: load, run
                        // again.
                        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                            inv.load_async(&mut c).await?;
                            pipe.query_async(&mut c).await
                        }
                        r => r,
                    }
                }
            })
        };
        once().await.or_else_moved(once).await
    }

    /// `SET KEY` + `WAIT replicas` in one pipeline: makes the connection's replication
    /// offset cover everything stored before (a duplicate's original write), then waits.
    async fn sync_then_wait(&self, key: String, replicas: u32) -> Result<u32> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(replicas)
            .arg(REPLICA_ACK_TIMEOUT.as_millis() as u64);
        let (acked,): (u32,) = self.pipe(pipe).await?;
        Ok(acked)
    }
}

/// How `map_err` words a redirection (`MOVED`/`ASK`) that reached us.
const REDIRECTED: &str = "redis: redirected: ";

/// A call's failure, telling apart a redirection (retry once on a fresh slot map).
enum Redirected {
    Moved(StoreError),
    Other(StoreError),
}

trait OrElseMoved<T> {
    /// Tries `again` after a redirection; gives the error otherwise.
    async fn or_else_moved<F, Fut>(self, again: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, Redirected>>;
}

impl<T> OrElseMoved<T> for std::result::Result<T, Redirected> {
    async fn or_else_moved<F, Fut>(self, again: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, Redirected>>,
    {
        match self {
            Ok(v) => Ok(v),
            Err(Redirected::Other(e)) => Err(e),
            Err(Redirected::Moved(_)) => match again().await {
                Ok(v) => Ok(v),
                Err(Redirected::Moved(e) | Redirected::Other(e)) => Err(e),
            },
        }
    }
}

/// Who is at fault: Redis being away or busy is `Unavailable`; anything else (a script
/// error, an unexpected reply) is a bug or corrupt data.
fn map_err(e: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind as S};
    if matches!(e.kind(), ErrorKind::Server(S::Moved | S::Ask)) {
        return StoreError::Internal(format!("{REDIRECTED}{e}"));
    }
    let unavailable = match e.kind() {
        ErrorKind::Io | ErrorKind::AuthenticationFailed | ErrorKind::ClusterConnectionNotFound => {
            true
        }
        ErrorKind::Server(k) => matches!(
            k,
            S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly
        ),
        ErrorKind::Extension => matches!(e.code(), Some("OOM" | "BUSY" | "NOREPLICAS" | "MISCONF")),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Internal(format!("redis: {e}"))
    }
}

/// A script's array reply.
fn array(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(what, &[other])),
    }
}

fn unexpected(what: &str, v: &[Value]) -> StoreError {
    StoreError::Internal(format!("redis: unexpected reply to {what}: {v:?}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// Splits a stream entry id `A-B`.
fn split_id(id: &str) -> Option<(u64, i64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A stream entry as `XRANGE` returns it.
type Entry = (String, Vec<String>);

/// The value of `field` in a stream entry.
fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry
        .1
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

const CONV_READ: [&str; 18] = [
    "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "st", "ua", "q", "lm", "h", "vr", "ar",
    "ur", "ver",
];

/// A conversation and its template version, from `HMGET key CONV_READ…`. A hash stored
/// before the handler and read receipts existed (no `t6`) reads as `lib.lua` upgrades it.
fn assemble(fields: Vec<Option<String>>) -> Result<Option<(Conversation, String)>> {
    let mut f: Vec<Option<String>> = fields;
    f.resize(CONV_READ.len(), None);
    if f[0].is_none() {
        return Ok(None);
    }
    if f[5].is_none() {
        for (i, piece) in LEGACY_TAIL.iter().enumerate() {
            f[4 + i] = Some((*piece).to_owned());
        }
        for (i, v) in ["human", "null", "null", "0"].into_iter().enumerate() {
            f[13 + i] = Some(v.to_owned());
        }
    }
    let mut it = f.into_iter().map(Option::unwrap_or_default);
    let t: [String; PIECES] = std::array::from_fn(|_| it.next().unwrap_or_default());
    let mut next = || it.next().unwrap_or_default();
    let slots = ConvSlots {
        status: next(),
        updated_at: next(),
        qualified: next(),
        last: next(),
        handler: next(),
        visitor_read: next(),
        agent_read: next(),
        unread: next(),
    };
    let ver = next();
    Ok(Some((
        parse_conversation(&fill_conversation(&t, &slots))?,
        ver,
    )))
}

/// `append_fn.lua`'s answer: `{'dup', json}`, `{'att', index, reason}` or
/// `{'ok', seq, created_ms, owed}`.
fn appended(new: &NewMessage, reply: &[Value]) -> Result<Appended> {
    match reply.first().and_then(text).as_deref() {
        Some("att") => {
            let (Some(i), Some(reason)) = (reply.get(1).and_then(int), reply.get(2).and_then(text))
            else {
                return Err(unexpected("append", reply));
            };
            Err(StoreError::Invalid {
                field: format!("attachments[{i}]"),
                message: reason,
            })
        }
        Some("dup") => {
            let json = reply
                .get(1)
                .and_then(text)
                .ok_or_else(|| unexpected("append", reply))?;
            Ok(Appended {
                message: parse_message(&json)?,
                duplicate: true,
                first_in_conversation: false,
                reply_owed: false,
            })
        }
        Some("ok") => {
            let (Some(seq), Some(created)) =
                (reply.get(1).and_then(int), reply.get(2).and_then(int))
            else {
                return Err(unexpected("append", reply));
            };
            let seq = seq as u64;
            Ok(Appended {
                message: new_message(new, seq, created),
                duplicate: false,
                first_in_conversation: seq == 1,
                reply_owed: reply.get(3).and_then(int) == Some(1),
            })
        }
        _ => Err(unexpected("append", reply)),
    }
}

/// The Redis [`Store`].
pub struct RedisStore {
    conn: Arc<Conn>,
    channels: Channels,
    retention: Retention,
    /// The node's clock: stamps `createdAt`/`updatedAt` and computes TTLs (one time for
    /// the gateway and its store).
    clock: Clock,
    /// Tenants this process already added to `confab:tenants` (one `SADD` per tenant).
    registered: DashMap<String, ()>,
    /// On a Redis Cluster: scripts `SPUBLISH` (sharded pub/sub).
    sharded: bool,
    /// `redis_replica_acks`: replicas that must hold a commit before it is acknowledged.
    replica_acks: u32,
    /// With `replica_acks > 0`: the connections that carry the script + `WAIT` pipelines
    /// (see [`ACK_CONNECTIONS`]), taken in turn.
    ackers: Vec<Arc<Conn>>,
    next_acker: AtomicUsize,
}

impl RedisStore {
    /// One page of the set of tenants with data (`SSCAN` from `cursor`; 0 when done).
    async fn tenants_page(&self, cursor: u64) -> Result<(u64, Vec<String>)> {
        self.conn
            .query(
                redis::cmd("SSCAN")
                    .arg(keys::TENANTS)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(200)
                    .to_owned(),
            )
            .await
    }

    /// How many replicas must confirm a commit before it is acknowledged.
    pub fn replica_acks(&self) -> u32 {
        self.replica_acks
    }

    /// Runs a committing script (a message, a new conversation). With `replica_acks > 0`
    /// the commit is acknowledged only once that many replicas hold it: otherwise the
    /// caller gets `Unavailable` (503 `store_unavailable`; a retry with the same
    /// clientMessageId is safe), never a false ack.
    async fn eval_acked(&self, tenant: &str, inv: ScriptInvocation<'static>) -> Result<Value> {
        if self.replica_acks == 0 || self.ackers.is_empty() {
            return self.conn.eval(inv).await;
        }
        let i = self.next_acker.fetch_add(1, Ordering::Relaxed) % self.ackers.len();
        let conn = &self.ackers[i];
        let (reply, mut acked) = conn.eval_then_wait(&inv, self.replica_acks).await?;
        let first = match &reply {
            Value::Array(items) => items.first().and_then(text),
            _ => None,
        };
        match first.as_deref() {
            // Nothing was written: nothing to wait for.
            Some("none" | "att" | "limited") => return Ok(reply),
            // A read-only answer: the write it refers to may not have reached a replica
            // yet (its first ack failed); one more write on this connection, then WAIT.
            Some("dup") => {
                acked = conn
                    .sync_then_wait(TenantKeys::new(tenant).sync(), self.replica_acks)
                    .await?;
            }
            _ => {}
        }
        if acked < self.replica_acks {
            return Err(StoreError::Unavailable(format!(
                "redis: only {acked} of {} replicas confirmed the write within {:?}",
                self.replica_acks, REPLICA_ACK_TIMEOUT
            )));
        }
        Ok(reply)
    }

    /// Makes sure `maintain` will find this tenant's log.
    async fn register(&self, tenant: &str) -> Result<()> {
        if self.registered.contains_key(tenant) {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .query(redis::cmd("SADD").arg(keys::TENANTS).arg(tenant).to_owned())
            .await?;
        self.registered.insert(tenant.to_owned(), ());
        Ok(())
    }

    async fn load(&self, tenant: &str, id: &str) -> Result<Option<(Conversation, String)>> {
        let key = TenantKeys::new(tenant).conversation(id);
        let fields: Vec<Option<String>> = self
            .conn
            .query(redis::cmd("HMGET").arg(key).arg(&CONV_READ[..]).to_owned())
            .await?;
        assemble(fields)
    }

    /// The keys and arguments of `append_fn.lua` (the append and complete_reply scripts).
    fn append_invocation<'a>(
        &self,
        script: &'a redis::Script,
        new: &NewMessage,
        complete: Option<(&str, u64, bool)>,
    ) -> Result<ScriptInvocation<'a>> {
        let t = message_template(new)?;
        let k = TenantKeys::new(&new.tenant);
        let id = &new.conversation_id;
        let (min_events, min_age) = self.retention_args();
        let now = self.clock.now_ms();
        let mut inv = script.prepare_invoke();
        inv.key(k.conversation(id))
            .key(k.messages(id))
            .key(k.idempotency(id));
        inv.key(k.list("open"))
            .key(k.list("closed"))
            .key(k.meta())
            .key(k.log())
            .key(k.owed())
            .key(k.owed_due())
            .key(k.unsent_attachments());
        inv.arg(id)
            .arg(now)
            .arg(format_ms(now))
            .arg(&t[..])
            .arg(new.idempotency_key().unwrap_or_default());
        inv.arg(min_events)
            .arg(min_age)
            .arg(self.channels.conversation(&new.tenant, id))
            .arg(self.channels.tenant(&new.tenant))
            .arg(if new.direction == Direction::Inbound {
                "1"
            } else {
                "0"
            })
            .arg(new.handler.map_or("", Handler::as_str));
        // ARGV 14-16: complete_reply's holder, claimed through_seq and has_message.
        let (holder, through, has_message) = complete.unwrap_or(("", 0, false));
        inv.arg(holder)
            .arg(through)
            .arg(if has_message { "1" } else { "0" });
        inv.arg(crate::message_id_prefix(id))
            .arg(new.attachments.len());
        for a in &new.attachments {
            inv.key(k.attachment(&a.id)).arg(&a.id);
        }
        Ok(inv)
    }

    /// `set_status` and `set_handler` (`""` keeps the field as it is).
    async fn set_state(
        &self,
        tenant: &str,
        conversation_id: &str,
        status: &str,
        handler: &str,
    ) -> Result<Option<Conversation>> {
        let k = TenantKeys::new(tenant);
        let (min_events, min_age) = self.retention_args();
        let now = self.clock.now_ms();
        let mut inv = scripts::STATE.of(self.sharded).prepare_invoke();
        inv.key(k.conversation(conversation_id))
            .key(k.list("open"))
            .key(k.list("closed"))
            .key(k.meta())
            .key(k.log());
        inv.arg(conversation_id)
            .arg(status)
            .arg(handler)
            .arg(now)
            .arg(format_ms(now))
            .arg(min_events)
            .arg(min_age);
        inv.arg(self.channels.conversation(tenant, conversation_id))
            .arg(self.channels.tenant(tenant));
        self.register(tenant).await?;
        let reply: Vec<Value> = self.conn.eval(inv).await?;
        match reply.first().and_then(text).as_deref() {
            Some("none") => Ok(None),
            Some("ok") => {
                let json = reply
                    .get(1)
                    .and_then(text)
                    .ok_or_else(|| unexpected("state", &reply))?;
                parse_conversation(&json).map(Some)
            }
            _ => Err(unexpected("state", &reply)),
        }
    }

    fn retention_args(&self) -> (u64, i64) {
        (self.retention.min_events, self.retention.min_age_ms)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<()> {
        let _: String = self.conn.query(redis::cmd("PING")).await?;
        Ok(())
    }

    async fn session_secret(&self, generated: Vec<u8>) -> Result<Vec<u8>> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::SECRET)
            .arg(generated)
            .arg("NX")
            .ignore();
        pipe.cmd("GET").arg(keys::SECRET);
        let (secret,): (Vec<u8>,) = self.conn.pipe(pipe).await?;
        Ok(secret)
    }

    async fn claim_nonce(&self, nonce: &str, expires_ms: i64) -> Result<bool> {
        let ttl = (expires_ms - self.clock.now_ms()).max(1);
        let reply: Value = self
            .conn
            .query(
                redis::cmd("SET")
                    .arg(keys::nonce(nonce))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .to_owned(),
            )
            .await?;
        Ok(!matches!(reply, Value::Nil))
    }

    async fn find_visitor(&self, tenant: &str, token_hash: &str) -> Result<Option<VisitorRecord>> {
        let key = TenantKeys::new(tenant).visitors();
        let found: Option<String> = self
            .conn
            .query(redis::cmd("HGET").arg(key).arg(token_hash).to_owned())
            .await?;
        Ok(found.and_then(|v| {
            let (visitor_id, conversation_id) = v.split_once(' ')?;
            Some(VisitorRecord {
                visitor_id: visitor_id.to_owned(),
                conversation_id: conversation_id.to_owned(),
            })
        }))
    }

    async fn start_conversation(&self, new: NewConversation) -> Result<Conversation> {
        let now = self.clock.now_ms();
        let conv = new_conversation(&new, new_conversation_id(), new_visitor_id(), now);
        let t = conversation_template(&conv)?;
        self.register(&new.tenant).await?;
        let k = TenantKeys::new(&new.tenant);
        let (min_events, min_age) = self.retention_args();
        let mut inv = scripts::START.of(self.sharded).prepare_invoke();
        inv.key(k.visitors())
            .key(k.conversation(&conv.id))
            .key(k.list("open"))
            .key(k.meta())
            .key(k.log());
        inv.arg(&new.token_hash)
            .arg(&conv.visitor_id)
            .arg(&conv.id)
            .arg(conv.handler.as_str());
        inv.arg(now)
            .arg(format_ms(now))
            .arg(min_events)
            .arg(min_age)
            .arg(self.channels.tenant(&new.tenant))
            .arg(&t[..]);
        self.eval_acked(&new.tenant, inv).await?;
        Ok(conv)
    }

    async fn update_profile(
        &self,
        tenant: &str,
        conversation_id: &str,
        update: ProfileUpdate,
    ) -> Result<Option<Conversation>> {
        let k = TenantKeys::new(tenant);
        let (min_events, min_age) = self.retention_args();
        for _ in 0..PROFILE_ATTEMPTS {
            let Some((mut conv, ver)) = self.load(tenant, conversation_id).await? else {
                return Ok(None);
            };
            if !update.clone().apply(&mut conv)? {
                return Ok(Some(conv));
            }
            let now = self.clock.now_ms();
            conv.updated_at = format_ms(now);
            let t = conversation_template(&conv)?;
            let mut inv = scripts::PROFILE.of(self.sharded).prepare_invoke();
            inv.key(k.conversation(conversation_id))
                .key(k.list("open"))
                .key(k.list("closed"))
                .key(k.meta())
                .key(k.log());
            inv.arg(conversation_id)
                .arg(ver)
                .arg(now)
                .arg(format_ms(now))
                .arg(min_events)
                .arg(min_age);
            inv.arg(self.channels.conversation(tenant, conversation_id))
                .arg(self.channels.tenant(tenant))
                .arg(&t[..]);
            self.register(tenant).await?;
            let reply: Vec<Value> = self.conn.eval(inv).await?;
            match reply.first().and_then(text).as_deref() {
                Some("none") => return Ok(None),
                Some("conflict") => continue,
                Some("ok") => {
                    let json = reply
                        .get(1)
                        .and_then(text)
                        .ok_or_else(|| unexpected("profile", &reply))?;
                    return parse_conversation(&json).map(Some);
                }
                _ => return Err(unexpected("profile", &reply)),
            }
        }
        Err(StoreError::Unavailable(
            "the conversation is being updated concurrently; try again".into(),
        ))
    }

    async fn append_message(&self, new: NewMessage) -> Result<Option<Appended>> {
        let inv = self.append_invocation(scripts::APPEND.of(self.sharded), &new, None)?;
        let reply = array(self.eval_acked(&new.tenant, inv).await?, "append")?;
        match reply.first().and_then(text).as_deref() {
            Some("none") => Ok(None),
            _ => appended(&new, &reply).map(Some),
        }
    }

    /// One script (`append.lua`) for the message and its limits: the idempotency key, then
    /// the limits (on the keys [`RedisRateLimiter`] uses, with `gcra_fn.lua`), then the
    /// attachments, then the writes. On a Redis Cluster the limit keys carry the tenant's
    /// hash tag, as the conversation's keys do (`keys::rate_clustered`); a limit key outside
    /// that slot (not shaped `PREFIX:TENANT:SUBJECT`, never the gateway's) takes the
    /// two-step way.
    async fn append_message_limited(
        &self,
        new: NewMessage,
        limits: &[LimitSpec<'_>],
        now_ms: i64,
        limiter: &dyn RateLimiter,
    ) -> Result<LimitedAppend> {
        let limit_keys: Vec<String> = limits
            .iter()
            .map(|l| keys::rate_key(l.key, self.sharded))
            .collect();
        if self.sharded {
            let conv = slot(&TenantKeys::new(&new.tenant).conversation(&new.conversation_id));
            if limit_keys.iter().any(|k| slot(k) != conv) {
                return crate::charge_then_append(self, new, limits, now_ms, limiter).await;
            }
        }
        let mut inv = self.append_invocation(scripts::APPEND.of(self.sharded), &new, None)?;
        inv.arg(limits.len()).arg(now_ms);
        for (l, key) in limits.iter().zip(limit_keys) {
            inv.key(key).arg(l.limit).arg(l.window_ms);
        }
        let reply = array(self.eval_acked(&new.tenant, inv).await?, "append")?;
        match reply.first().and_then(text).as_deref() {
            Some("none") => Ok(LimitedAppend::Done(None)),
            Some("limited") => {
                let (Some(wait), Some(refused)) =
                    (reply.get(1).and_then(int), reply.get(2).and_then(int))
                else {
                    return Err(unexpected("append", &reply));
                };
                Ok(LimitedAppend::Limited {
                    retry_after_ms: wait.max(0) as u64,
                    // Lua counts from 1.
                    refused: (refused.max(1) - 1) as usize,
                })
            }
            _ => appended(&new, &reply).map(|a| LimitedAppend::Done(Some(a))),
        }
    }

    async fn find_duplicate(
        &self,
        new: &NewMessage,
    ) -> Result<Option<confab_protocol::model::Message>> {
        let Some(key) = new.idempotency_key() else {
            return Ok(None);
        };
        let idem = TenantKeys::new(&new.tenant).idempotency(&new.conversation_id);
        let seq: Option<u64> = self
            .conn
            .query(redis::cmd("HGET").arg(idem).arg(key).to_owned())
            .await?;
        let Some(seq) = seq else { return Ok(None) };
        let page = self
            .messages(&new.tenant, &new.conversation_id, Cursor::After(seq - 1), 1)
            .await?;
        match page.messages.first() {
            Some(m) if m.seq == seq => {
                Ok(Some(serde_json::from_str(&m.json).map_err(|e| {
                    StoreError::Internal(format!("corrupt message JSON: {e}"))
                })?))
            }
            _ => Ok(None),
        }
    }

    async fn messages(
        &self,
        tenant: &str,
        conversation_id: &str,
        cursor: Cursor,
        limit: usize,
    ) -> Result<MessagePage> {
        let key = TenantKeys::new(tenant).messages(conversation_id);
        let count = limit.saturating_add(1);
        let entries: Vec<Entry> = match cursor {
            Cursor::Start => {
                self.conn
                    .query(
                        redis::cmd("XRANGE")
                            .arg(key)
                            .arg("-")
                            .arg("+")
                            .arg("COUNT")
                            .arg(count)
                            .to_owned(),
                    )
                    .await?
            }
            Cursor::After(u64::MAX) => Vec::new(),
            Cursor::After(seq) => {
                self.conn
                    .query(
                        redis::cmd("XRANGE")
                            .arg(key)
                            .arg(seq + 1)
                            .arg("+")
                            .arg("COUNT")
                            .arg(count)
                            .to_owned(),
                    )
                    .await?
            }
            Cursor::AfterCreated { created_ms, id } => {
                self.history(key, created_ms, id, count).await?
            }
            Cursor::Since(ms) => self.history(key, ms, u64::MAX, count).await?,
        };
        let mut messages = Vec::with_capacity(entries.len());
        for e in &entries {
            let (Some((seq, _)), Some(json)) = (split_id(&e.0), field(e, "m")) else {
                return Err(StoreError::Internal(format!(
                    "redis: malformed message entry {e:?}"
                )));
            };
            messages.push(StoredMessage {
                seq,
                json: json.into(),
            });
        }
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok(MessagePage { messages, has_more })
    }

    async fn conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<Option<Conversation>> {
        Ok(self.load(tenant, conversation_id).await?.map(|(c, _)| c))
    }

    async fn conversations(
        &self,
        tenant: &str,
        status: Option<Status>,
        cursor: Option<ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationPage> {
        let k = TenantKeys::new(tenant);
        let max = cursor
            .map(|c| format!("({:020}:{}", c.updated_ms, c.id))
            .unwrap_or_else(|| "+".to_owned());
        let lists: Vec<&str> = match status {
            Some(s) => vec![s.as_str()],
            None => vec!["open", "closed"],
        };
        let count = limit.saturating_add(1);
        let mut pipe = redis::pipe();
        for list in &lists {
            pipe.cmd("ZREVRANGEBYLEX")
                .arg(k.list(list))
                .arg(&max)
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(count);
        }
        let found: Vec<Vec<String>> = self.conn.pipe(pipe).await?;
        // Each list is in order; their union, re-sorted, is the page.
        let mut members: Vec<String> = found.into_iter().flatten().collect();
        members.sort_unstable_by(|a, b| b.cmp(a));
        let more = members.len() > limit;
        members.truncate(limit);
        let mut entries = Vec::with_capacity(members.len());
        let mut pipe = redis::pipe();
        for m in &members {
            let (ms, id) = m
                .split_once(':')
                .ok_or_else(|| StoreError::Internal(format!("redis: bad list member {m:?}")))?;
            let ms: i64 = ms
                .parse()
                .map_err(|_| StoreError::Internal(format!("redis: bad list member {m:?}")))?;
            pipe.cmd("HMGET")
                .arg(k.conversation(id))
                .arg(&CONV_READ[..]);
            entries.push(ConversationCursor {
                updated_ms: ms,
                id: id.to_owned(),
            });
        }
        let rows: Vec<Vec<Option<String>>> = if members.is_empty() {
            Vec::new()
        } else {
            self.conn.pipe(pipe).await?
        };
        let mut conversations = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some((c, _)) = assemble(row)? {
                conversations.push(c);
            }
        }
        let next_cursor = if more {
            entries.last().map(ConversationCursor::encode)
        } else {
            None
        };
        Ok(ConversationPage {
            conversations,
            next_cursor,
        })
    }

    async fn set_status(
        &self,
        tenant: &str,
        conversation_id: &str,
        status: Status,
    ) -> Result<Option<Conversation>> {
        self.set_state(tenant, conversation_id, status.as_str(), "")
            .await
    }

    async fn set_handler(
        &self,
        tenant: &str,
        conversation_id: &str,
        handler: Handler,
    ) -> Result<Option<Conversation>> {
        self.set_state(tenant, conversation_id, "", handler.as_str())
            .await
    }

    async fn mark_read(
        &self,
        tenant: &str,
        conversation_id: &str,
        reader: Reader,
        seq: u64,
    ) -> Result<Option<ReadMark>> {
        let k = TenantKeys::new(tenant);
        let (min_events, min_age) = self.retention_args();
        let now = self.clock.now_ms();
        let mut inv = scripts::READ.of(self.sharded).prepare_invoke();
        inv.key(k.conversation(conversation_id))
            .key(k.messages(conversation_id))
            .key(k.meta())
            .key(k.log());
        let reader_name = match reader {
            Reader::Visitor => "visitor",
            Reader::Agent => "agent",
        };
        inv.arg(conversation_id)
            .arg(reader_name)
            .arg(seq)
            .arg(message_id(conversation_id, seq))
            .arg(now)
            .arg(min_events)
            .arg(min_age);
        inv.arg(self.channels.conversation(tenant, conversation_id))
            .arg(self.channels.tenant(tenant));
        self.register(tenant).await?;
        let reply: Vec<Value> = self.conn.eval(inv).await?;
        let conv = || {
            reply
                .get(1)
                .and_then(text)
                .ok_or_else(|| unexpected("read", &reply))
                .and_then(|j| parse_conversation(&j))
        };
        match reply.first().and_then(text).as_deref() {
            Some("none") => Ok(None),
            Some("nosuch") => Ok(Some(ReadMark::NoSuchMessage)),
            Some("same") => Ok(Some(ReadMark::Unchanged(conv()?))),
            Some("moved") => Ok(Some(ReadMark::Moved(conv()?))),
            _ => Err(unexpected("read", &reply)),
        }
    }

    async fn claim_reply(
        &self,
        tenant: &str,
        conversation_id: Option<&str>,
        holder: &str,
        lease_ms: i64,
    ) -> Result<Option<OwedReply>> {
        let k = TenantKeys::new(tenant);
        let mut inv = scripts::CLAIM.of(self.sharded).prepare_invoke();
        inv.key(k.owed()).key(k.owed_due());
        inv.arg(conversation_id.unwrap_or(""))
            .arg(holder)
            .arg(self.clock.now_ms())
            .arg(lease_ms);
        let reply: Vec<Value> = self.conn.eval(inv).await?;
        if reply.is_empty() {
            return Ok(None);
        }
        match (reply.first().and_then(text), reply.get(1).and_then(text)) {
            (Some(id), Some(through)) => Ok(Some(OwedReply {
                conversation_id: id,
                through_seq: through.parse().map_err(|_| unexpected("claim", &reply))?,
            })),
            _ => Err(unexpected("claim", &reply)),
        }
    }

    async fn renew_reply(
        &self,
        tenant: &str,
        conversation_id: &str,
        holder: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        let k = TenantKeys::new(tenant);
        let mut inv = scripts::RENEW.of(self.sharded).prepare_invoke();
        inv.key(k.owed()).key(k.owed_due());
        inv.arg(conversation_id)
            .arg(holder)
            .arg(self.clock.now_ms() + lease_ms);
        let renewed: i64 = self.conn.eval(inv).await?;
        Ok(renewed == 1)
    }

    async fn complete_reply(
        &self,
        tenant: &str,
        conversation_id: &str,
        holder: &str,
        through_seq: u64,
        reply: Option<NewMessage>,
    ) -> Result<ReplyOutcome> {
        // Without a message the append part of the script is not run; it still needs the
        // same keys and arguments, so an empty message to this conversation fills them.
        let new = reply.clone().unwrap_or_else(|| NewMessage {
            tenant: tenant.to_owned(),
            conversation_id: conversation_id.to_owned(),
            direction: Direction::Outbound,
            author: confab_protocol::model::Author {
                kind: confab_protocol::model::AuthorKind::Bot,
                id: String::new(),
                name: None,
            },
            body: String::new(),
            client_message_id: None,
            meta: None,
            intent: None,
            handler: None,
            attachments: Vec::new(),
        });
        self.register(tenant).await?;
        let inv = self.append_invocation(
            scripts::COMPLETE.of(self.sharded),
            &new,
            Some((holder, through_seq, reply.is_some())),
        )?;
        let answer = array(self.eval_acked(tenant, inv).await?, "complete")?;
        match answer.first().and_then(text).as_deref() {
            Some("lost") => Ok(ReplyOutcome::Lost),
            Some("handed") => Ok(ReplyOutcome::HandedOver),
            Some("silent") => Ok(ReplyOutcome::Silent),
            _ => appended(&new, &answer).map(|a| ReplyOutcome::Stored(Box::new(a))),
        }
    }

    async fn append_event(
        &self,
        tenant: &str,
        kind: &str,
        data: Json,
        conversation_id: Option<&str>,
    ) -> Result<Option<TenantEvent>> {
        let k = TenantKeys::new(tenant);
        let (min_events, min_age) = self.retention_args();
        self.register(tenant).await?;
        let now = self.clock.now_ms();
        if let (Some(id), "conversation:qualified") = (conversation_id, kind) {
            let mut inv = scripts::QUALIFY.of(self.sharded).prepare_invoke();
            inv.key(k.conversation(id))
                .key(k.list("open"))
                .key(k.list("closed"))
                .key(k.meta())
                .key(k.log());
            inv.arg(id)
                .arg(kind)
                .arg(now)
                .arg(format_ms(now))
                .arg(min_events)
                .arg(min_age);
            inv.arg(self.channels.conversation(tenant, id))
                .arg(self.channels.tenant(tenant));
            let reply: Vec<Value> = self.conn.eval(inv).await?;
            return match (
                reply.first().and_then(text).as_deref(),
                reply.get(1).and_then(int),
                reply.get(2).and_then(text),
            ) {
                (Some("none"), _, _) => Ok(None),
                (Some("ok"), Some(offset), Some(data)) => Ok(Some(TenantEvent {
                    offset: offset as u64,
                    kind: kind.to_owned(),
                    data,
                    created_ms: now,
                })),
                _ => Err(unexpected("qualify", &reply)),
            };
        }
        let mut data = data;
        if let (Some(id), Json::Object(map)) = (conversation_id, &mut data) {
            // The checked id, whatever the data said.
            map.insert("conversationId".into(), Json::String(id.to_owned()));
        }
        let data = to_json(&data);
        let mut inv = scripts::EVENT.of(self.sharded).prepare_invoke();
        inv.key(k.meta()).key(k.log()).key(
            conversation_id
                .map(|id| k.conversation(id))
                .unwrap_or_else(|| k.meta()),
        );
        inv.arg(kind)
            .arg(&data)
            .arg(if conversation_id.is_some() { "1" } else { "0" });
        inv.arg(now)
            .arg(min_events)
            .arg(min_age)
            .arg(self.channels.tenant(tenant));
        let reply: Vec<Value> = self.conn.eval(inv).await?;
        match (
            reply.first().and_then(text).as_deref(),
            reply.get(1).and_then(int),
        ) {
            (Some("none"), _) => Ok(None),
            (Some("ok"), Some(offset)) => Ok(Some(TenantEvent {
                offset: offset as u64,
                kind: kind.to_owned(),
                data,
                created_ms: now,
            })),
            _ => Err(unexpected("event", &reply)),
        }
    }

    async fn events(&self, tenant: &str, after: u64, limit: usize) -> Result<EventsPage> {
        let k = TenantKeys::new(tenant);
        if after == u64::MAX {
            return Ok(EventsPage {
                events: Vec::new(),
                has_more: false,
                recovered: true,
            });
        }
        // One snapshot: retention cannot run between the two reads.
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HGET").arg(k.meta()).arg("pruned");
        pipe.cmd("XRANGE")
            .arg(k.log())
            .arg(after + 1)
            .arg("+")
            .arg("COUNT")
            .arg(limit.saturating_add(1));
        let (pruned, entries): (Option<u64>, Vec<Entry>) = self.conn.pipe(pipe).await?;
        let mut events = Vec::with_capacity(entries.len());
        for e in &entries {
            let (Some((offset, created_ms)), Some(kind), Some(data)) =
                (split_id(&e.0), field(e, "k"), field(e, "d"))
            else {
                return Err(StoreError::Internal(format!(
                    "redis: malformed event entry {e:?}"
                )));
            };
            events.push(TenantEvent {
                offset,
                kind: kind.to_owned(),
                data: data.to_owned(),
                created_ms,
            });
        }
        let has_more = events.len() > limit;
        events.truncate(limit);
        Ok(EventsPage {
            events,
            has_more,
            recovered: after >= pruned.unwrap_or(0),
        })
    }

    async fn last_offset(&self, tenant: &str) -> Result<u64> {
        let k = TenantKeys::new(tenant);
        let offset: Option<u64> = self
            .conn
            .query(redis::cmd("HGET").arg(k.meta()).arg("offset").to_owned())
            .await?;
        Ok(offset.unwrap_or(0))
    }

    async fn maintain(&self, now: i64) -> Result<()> {
        // Nonces and limiter keys expire by themselves; the appends trim their log as they
        // go. This pass catches up tenants that went quiet.
        let (min_events, min_age) = self.retention_args();
        let mut cursor = 0u64;
        loop {
            let (next, tenants) = self.tenants_page(cursor).await?;
            for tenant in tenants {
                let k = TenantKeys::new(&tenant);
                loop {
                    let mut inv = scripts::TRIM.of(self.sharded).prepare_invoke();
                    inv.key(k.meta())
                        .key(k.log())
                        .arg(now)
                        .arg(min_events)
                        .arg(min_age)
                        .arg(TRIM_BUDGET);
                    let dropped: usize = self.conn.eval(inv).await?;
                    if dropped < TRIM_BUDGET {
                        break;
                    }
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn webhook_state(&self, tenant: &str, webhook: &str) -> Result<Option<WebhookState>> {
        let key = TenantKeys::new(tenant).webhook(webhook);
        let (offset, state): (Option<u64>, Option<String>) = self
            .conn
            .query(
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("offset")
                    .arg("state")
                    .to_owned(),
            )
            .await?;
        let (Some(offset), Some(state)) = (offset, state) else {
            return Ok(None);
        };
        let mut state: WebhookState = serde_json::from_str(&state)
            .map_err(|e| StoreError::Internal(format!("webhook state: {e}")))?;
        state.offset = offset;
        Ok(Some(state))
    }

    async fn save_webhook_state(
        &self,
        tenant: &str,
        webhook: &str,
        state: &WebhookState,
    ) -> Result<()> {
        let json = serde_json::to_string(state)
            .map_err(|e| StoreError::Internal(format!("webhook state: {e}")))?;
        let mut inv = scripts::WEBHOOK.prepare_invoke();
        inv.key(TenantKeys::new(tenant).webhook(webhook))
            .arg(state.offset)
            .arg(json);
        let _: i64 = self.conn.eval(inv).await?;
        Ok(())
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let mut inv = scripts::LEASE.prepare_invoke();
        inv.key(keys::lease(name)).arg(holder).arg(ttl_ms.max(1));
        let held: i64 = self.conn.eval(inv).await?;
        Ok(held == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut inv = scripts::RELEASE.prepare_invoke();
        inv.key(keys::lease(name)).arg(holder);
        let _: i64 = self.conn.eval(inv).await?;
        Ok(())
    }

    async fn create_attachment(&self, record: &AttachmentRecord) -> Result<()> {
        self.register(&record.tenant).await?;
        let k = TenantKeys::new(&record.tenant);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(k.attachment(&record.id))
            .arg("r")
            .arg(to_json(record))
            .arg("conv")
            .arg(&record.conversation_id)
            .ignore()
            .cmd("ZADD")
            .arg(k.unsent_attachments())
            .arg(record.created_ms)
            .arg(&record.id)
            .ignore();
        self.conn.pipe::<()>(pipe).await
    }

    async fn attachment(&self, tenant: &str, id: &str) -> Result<Option<AttachmentRecord>> {
        let key = TenantKeys::new(tenant).attachment(id);
        let (r, msg): (Option<String>, Option<String>) = self
            .conn
            .query(redis::cmd("HMGET").arg(key).arg("r").arg("msg").to_owned())
            .await?;
        let Some(r) = r else { return Ok(None) };
        let mut record: AttachmentRecord = serde_json::from_str(&r)
            .map_err(|e| StoreError::Internal(format!("corrupt attachment record: {e}")))?;
        record.message_id = msg;
        Ok(Some(record))
    }

    async fn stale_attachments(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<AttachmentRecord>> {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, tenants) = self.tenants_page(cursor).await?;
            for tenant in tenants {
                if out.len() >= limit {
                    return Ok(out);
                }
                let k = TenantKeys::new(&tenant);
                let ids: Vec<String> = self
                    .conn
                    .query(
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(k.unsent_attachments())
                            .arg("-inf")
                            .arg(format!("({before_ms}"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(limit - out.len())
                            .to_owned(),
                    )
                    .await?;
                for id in ids {
                    match self.attachment(&tenant, &id).await? {
                        Some(r) if r.message_id.is_none() => out.push(r),
                        // A record gone or sent whose index entry lingered: drop the entry.
                        _ => {
                            let _: i64 = self
                                .conn
                                .query(
                                    redis::cmd("ZREM")
                                        .arg(k.unsent_attachments())
                                        .arg(&id)
                                        .to_owned(),
                                )
                                .await?;
                        }
                    }
                }
            }
            if next == 0 || out.len() >= limit {
                return Ok(out);
            }
            cursor = next;
        }
    }

    async fn delete_unsent_attachment(&self, tenant: &str, id: &str) -> Result<bool> {
        let k = TenantKeys::new(tenant);
        let mut inv = scripts::DELETE_UNSENT.prepare_invoke();
        inv.key(k.attachment(id))
            .key(k.unsent_attachments())
            .arg(id);
        let deleted: i64 = self.conn.eval(inv).await?;
        Ok(deleted == 1)
    }

    async fn presence_beat(
        &self,
        tenant: &str,
        entries: &[PresenceEntry],
        expires_ms: i64,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let k = TenantKeys::new(tenant);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in entries {
            let member = presence_member(&e.node, &e.agent_id);
            let json = serde_json::to_string(e)
                .map_err(|e| StoreError::Internal(format!("presence: {e}")))?;
            pipe.cmd("ZADD")
                .arg(k.presence())
                .arg(expires_ms)
                .arg(&member)
                .ignore();
            pipe.cmd("HSET")
                .arg(k.presence_info())
                .arg(&member)
                .arg(json)
                .ignore();
        }
        let () = self.conn.pipe(pipe).await?;
        Ok(())
    }

    async fn presence_leave(&self, tenant: &str, agent_id: &str, node: &str) -> Result<()> {
        let k = TenantKeys::new(tenant);
        let member = presence_member(node, agent_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ZREM").arg(k.presence()).arg(&member).ignore();
        pipe.cmd("HDEL")
            .arg(k.presence_info())
            .arg(&member)
            .ignore();
        let () = self.conn.pipe(pipe).await?;
        Ok(())
    }

    async fn presence(&self, tenant: &str, now_ms: i64) -> Result<Vec<PresenceEntry>> {
        let k = TenantKeys::new(tenant);
        let mut inv = scripts::PRESENCE.prepare_invoke();
        inv.key(k.presence()).key(k.presence_info()).arg(now_ms);
        let raw: Vec<Option<String>> = self.conn.eval(inv).await?;
        Ok(raw
            .iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }
}

/// A presence member: the node first (our ids never hold `|`), then the agent id as given.
fn presence_member(node: &str, agent_id: &str) -> String {
    format!("{node}|{agent_id}")
}

impl RedisStore {
    async fn history(
        &self,
        key: String,
        created_ms: i64,
        after: u64,
        count: usize,
    ) -> Result<Vec<Entry>> {
        let mut inv = scripts::HISTORY.of(self.sharded).prepare_invoke();
        inv.key(key).arg(created_ms).arg(after).arg(count);
        self.conn.eval(inv).await
    }
}
