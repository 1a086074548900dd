//! The node-local hub: who is subscribed to what on this node, and fan-out to them.
//!
//! Every publication reaches the hub through [`EventSink::publish`] — from the SQLite
//! writer thread right after commit, or from the Redis subscriber task — in commit order
//! per channel. The hub encodes each frame **once** (only if someone here listens) and
//! appends it to the channel's **feed**, a ring shared by all its subscribers: publishing
//! is one append plus, per subscriber, a look at how far behind it is and a wake-up — not
//! a push into a queue of its own (which, for 1,000 agents on a tenant channel, was most of
//! the publishing thread's cost and a cache miss or four per delivery). Each subscriber
//! reads the feed at its own position. Each publication drops the frames every lossless
//! subscriber has read, and a channel's only reader (a visitor's conversation, as a rule)
//! drops each frame as it reads it. Publishing never waits for a subscriber. (Not tokio's
//! `broadcast`: it allocates every slot of its ring up front, several KiB for each idle
//! visitor's conversation, and cannot tell the publisher how far behind a receiver is, so a
//! receiver stuck in a socket write could not be kicked.)
//!
//! When a subscriber is more than its capacity behind: `typing` is counted as dropped (it
//! stays in the feed); anything else (messages, conversation and tenant events) is never
//! dropped silently — the subscriber is *kicked* (the WebSocket closes with 1013) and
//! resumes from the log without loss. A connection's own replies (acks, errors, pongs) go
//! to a short queue of its own, bounded the same way.
//!
//! The registry is a sharded map (`DashMap`) keyed by channel, so fan-out to different
//! channels does not serialise on one lock. The first local subscriber of a channel tells
//! the broker to subscribe (cross-node), the last one leaving unsubscribes; both happen
//! under the channel's entry lock, so they are ordered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use confab_protocol::frames;
use confab_store::{Broker, Channel, EventSink, Published};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::histogram::Histogram;
use crate::ws::WireFrame;

/// What a subscriber's queue carries.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The frame, encoded once and shared by every subscriber.
    pub frame: WireFrame,
    /// Message id (visitor channel) or tenant offset (tenant channel); `None` for frames
    /// outside the log (typing, conversation updates to visitors, acks).
    pub seq: Option<u64>,
    pub class: Class,
}

/// How a frame may be treated under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Never dropped: a subscriber too far behind is kicked.
    Durable,
    /// Never a reason to kick (typing).
    Ephemeral,
    /// Publications may have been lost upstream: re-read the log after the last seq.
    Resync,
}

/// Set when a subscriber fell too far behind and must be disconnected.
#[derive(Default)]
pub struct Kick {
    kicked: AtomicBool,
    notify: Notify,
}

impl Kick {
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Resolves once kicked.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_kicked() {
                return;
            }
            notified.await;
        }
    }
}

/// One channel's frames, shared by its subscribers. Positions count the channel's frames
/// on this node from 0.
#[derive(Default)]
struct Feed {
    ring: Mutex<Ring>,
    /// The position after the newest frame.
    head: AtomicU64,
    /// Lossless subscribers. With only one (a visitor's conversation, as a rule), it drops
    /// each frame as it reads it; otherwise publishing drops what all of them have read.
    lossless: AtomicUsize,
}

#[derive(Default)]
struct Ring {
    /// Position of `frames[0]`.
    first: u64,
    frames: VecDeque<Arc<Outbound>>,
}

/// A subscriber's side of the feed, shared by the hub (which looks at `next` and wakes)
/// and the subscription (which reads and advances). `next` and the waker sit together:
/// publishing touches one cache line per subscriber.
struct Reader {
    /// Position of the next frame to read.
    next: AtomicU64,
    waker: AtomicWaker,
    /// Frames a subscriber may be behind before it is kicked (and its reply queue's bound).
    capacity: u64,
    /// `None` for lossy subscribers (long-poll waiters), which only need a wake-up.
    kick: Option<Arc<Kick>>,
    /// The connection's own replies.
    replies: Mutex<VecDeque<Arc<Outbound>>>,
}

struct Subscriber {
    id: u64,
    reader: Arc<Reader>,
}

/// A channel's feed and the subscribers reading it.
struct Listeners {
    feed: Arc<Feed>,
    subscribers: Vec<Subscriber>,
}

/// The registry. Shared as `Arc<Hub>`.
pub struct Hub {
    channels: DashMap<Channel, Listeners>,
    next_id: AtomicU64,
    /// Frames handed to subscribers (for `/metrics`).
    pub deliveries: AtomicU64,
    /// Subscribers disconnected for falling behind.
    pub kicks: AtomicU64,
    /// Typing frames published to subscribers already at their bound.
    pub dropped_ephemeral: AtomicU64,
    /// Signs attachment links in the messages it encodes (set once at start; unset in unit
    /// tests, where messages go out as stored).
    links: std::sync::OnceLock<Arc<crate::service::attachments::Links>>,
    /// Frames a subscriber had yet to read when one more was published (for `/metrics`:
    /// how close consumers run to their bound).
    pub queue_depth: Histogram,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            channels: DashMap::new(),
            next_id: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            dropped_ephemeral: AtomicU64::new(0),
            links: std::sync::OnceLock::new(),
            queue_depth: Histogram::depth(),
        }
    }
}

impl Hub {
    /// Gives the hub the node's link signer (once; later calls are ignored).
    pub fn set_links(&self, links: Arc<crate::service::attachments::Links>) {
        let _ = self.links.set(links);
    }

    /// A message's JSON with fresh attachment links (see `service::attachments`): minted
    /// once per encoded frame, which every subscriber then shares.
    fn signed<'a>(&self, tenant: &str, json: &'a str) -> std::borrow::Cow<'a, str> {
        match self.links.get() {
            Some(l) => l.message_json(tenant, json),
            None => json.into(),
        }
    }
}

/// A subscriber's end. Dropping it unsubscribes.
pub struct Subscription {
    feed: Arc<Feed>,
    reader: Arc<Reader>,
    _guard: Guard,
}

struct Guard {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    channel: Channel,
    id: u64,
    lossy: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.hub.channels.entry(self.channel.clone()) {
            e.get_mut().subscribers.retain(|s| s.id != self.id);
            if !self.lossy {
                e.get().feed.lossless.fetch_sub(1, Ordering::Relaxed);
            }
            if e.get().subscribers.is_empty() {
                self.broker.unsubscribe(&self.channel);
                e.remove();
            }
        }
    }
}

/// A clone of a subscription's kick flag, to wait on while its queue is borrowed.
#[derive(Clone)]
pub struct KickHandle(Option<Arc<Kick>>);

impl KickHandle {
    /// Resolves when the hub kicked this subscriber; never for lossy ones.
    pub async fn wait(&self) {
        match &self.0 {
            Some(k) => k.wait().await,
            None => std::future::pending().await,
        }
    }
}

impl Subscription {
    /// Resolves when the hub kicked this subscriber; never for lossy ones.
    pub async fn kicked(&self) {
        self.kick_handle().wait().await
    }

    /// The kick flag, detached from the subscription's borrow.
    pub fn kick_handle(&self) -> KickHandle {
        KickHandle(self.reader.kick.clone())
    }

    /// Queues one of the connection's own frames; more than the subscription's capacity
    /// waiting kicks, like a publication.
    pub fn reply(&self, text: impl Into<WireFrame>) {
        let out = Arc::new(Outbound {
            frame: text.into(),
            seq: None,
            class: Class::Durable,
        });
        let mut replies = self.reader.replies.lock();
        if replies.len() as u64 >= self.reader.capacity {
            drop(replies);
            if let Some(k) = &self.reader.kick {
                k.kick();
            }
            return;
        }
        replies.push_back(out);
        drop(replies);
        self.reader.waker.wake();
    }

    /// The next frame, if one is waiting: the channel's frames first, then the connection's
    /// replies (a reply follows whatever was published before it was queued: an `ack`
    /// comes after the `message:new` its own commit published).
    pub fn try_recv(&self) -> Option<Arc<Outbound>> {
        let r = &self.reader;
        let next = r.next.load(Ordering::Relaxed);
        if next < self.feed.head.load(Ordering::SeqCst) {
            let mut ring = self.feed.ring.lock();
            let out = if self.feed.lossless.load(Ordering::Relaxed) == 1 && next == ring.first {
                // The only reader: nobody else needs it.
                ring.first += 1;
                ring.frames.pop_front()
            } else {
                next.checked_sub(ring.first)
                    .and_then(|i| ring.frames.get(i as usize))
                    .map(Arc::clone)
            };
            drop(ring);
            match out {
                Some(out) => {
                    r.next.store(next + 1, Ordering::SeqCst);
                    return Some(out);
                }
                // Dropped from the feed: only a kicked subscriber's frames are, and it is
                // on its way out.
                None => {
                    if let Some(k) = &r.kick {
                        k.kick();
                    }
                    return None;
                }
            }
        }
        r.replies.lock().pop_front()
    }

    /// The next frame, waiting for one.
    pub async fn recv(&self) -> Arc<Outbound> {
        self.wake_for(|| self.try_recv()).await
    }

    /// For lossy subscribers: resolves once anything was published since the last call
    /// (or since subscribing), skipping it all.
    pub async fn changed(&self) {
        self.wake_for(|| {
            let head = self.feed.head.load(Ordering::SeqCst);
            let next = self.reader.next.swap(head, Ordering::SeqCst);
            (next < head).then_some(())
        })
        .await
    }

    /// Waits until `look` finds something, woken by the hub.
    async fn wake_for<T>(&self, look: impl Fn() -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            if let Some(found) = look() {
                return Poll::Ready(found);
            }
            self.reader.waker.register(cx.waker());
            // A publication between the first look and the registration woke nobody.
            match look() {
                Some(found) => Poll::Ready(found),
                None => Poll::Pending,
            }
        })
        .await
    }
}

impl Hub {
    /// Subscribes to `channel`, allowed to fall `capacity` frames behind. `lossy` subscribers
    /// are never kicked and hold no frame back: they only need to know something changed.
    pub fn subscribe(
        self: &Arc<Self>,
        broker: &Arc<dyn Broker>,
        channel: Channel,
        capacity: usize,
        lossy: bool,
    ) -> Subscription {
        let kick = (!lossy).then(|| Arc::new(Kick::default()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let reader = |feed: &Feed| {
            Arc::new(Reader {
                // A new subscriber starts at the newest frame: what came before is in the log.
                next: AtomicU64::new(feed.head.load(Ordering::SeqCst)),
                waker: AtomicWaker::new(),
                capacity: capacity.max(1) as u64,
                kick: kick.clone(),
                replies: Mutex::new(VecDeque::new()),
            })
        };
        let (feed, reader) = match self.channels.entry(channel.clone()) {
            Entry::Occupied(mut e) => {
                let feed = e.get().feed.clone();
                let reader = reader(&feed);
                e.get_mut().subscribers.push(Subscriber {
                    id,
                    reader: reader.clone(),
                });
                (feed, reader)
            }
            Entry::Vacant(v) => {
                broker.subscribe(&channel);
                let feed = Arc::new(Feed::default());
                let reader = reader(&feed);
                v.insert(Listeners {
                    feed: feed.clone(),
                    subscribers: vec![Subscriber {
                        id,
                        reader: reader.clone(),
                    }],
                });
                (feed, reader)
            }
        };
        if !lossy {
            feed.lossless.fetch_add(1, Ordering::Relaxed);
        }
        Subscription {
            feed,
            reader,
            _guard: Guard {
                hub: self.clone(),
                broker: broker.clone(),
                channel,
                id,
                lossy,
            },
        }
    }

    /// [`subscribe`](Self::subscribe), then waits until the broker's subscription is live
    /// (Redis subscribes asynchronously), so that a log read after this misses nothing.
    /// If it does not become live in time, the broker sends a `Resync` once it does.
    pub async fn subscribe_live(
        self: &Arc<Self>,
        broker: &Arc<dyn Broker>,
        channel: Channel,
        capacity: usize,
        lossy: bool,
    ) -> Subscription {
        let sub = self.subscribe(broker, channel.clone(), capacity, lossy);
        if let Err(e) = broker.subscribed(&channel).await {
            tracing::debug!(error = %e, "subscription not live yet; a resync will follow");
        }
        sub
    }

    /// Hands an ephemeral frame to this node's subscribers of `channel` (typing arriving
    /// from the broker; presence and availability, which every node computes itself).
    pub fn local_ephemeral(&self, channel: &Channel, frame: &str) {
        self.local_ephemeral_frame(channel, WireFrame::text(frame));
    }

    /// [`local_ephemeral`](Self::local_ephemeral) with a frame encoded already.
    pub fn local_ephemeral_frame(&self, channel: &Channel, frame: WireFrame) {
        self.deliver(channel, || Outbound {
            frame,
            seq: None,
            class: Class::Ephemeral,
        });
    }

    /// The conversation channels of `tenant` with subscribers on this node.
    pub fn conversation_channels(&self, tenant: &str) -> Vec<Channel> {
        self.channels
            .iter()
            .filter(
                |e| matches!(e.key(), Channel::Conversation { tenant: t, .. } if &**t == tenant),
            )
            .map(|e| e.key().clone())
            .collect()
    }

    /// Number of channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn deliver(&self, channel: &Channel, encode: impl FnOnce() -> Outbound) {
        let Some(listeners) = self.channels.get(channel) else {
            return;
        };
        let Listeners { feed, subscribers } = &*listeners;
        let out = encode();
        let class = out.class;
        let head = {
            let mut ring = feed.ring.lock();
            ring.frames.push_back(Arc::new(out));
            let head = ring.first + ring.frames.len() as u64;
            feed.head.store(head, Ordering::SeqCst);
            head
        };
        let mut keep_from = head;
        let mut delivered = 0;
        for s in subscribers {
            let r = &s.reader;
            let Some(kick) = &r.kick else {
                // Lossy: a wake-up is all it needs, and it holds no frame back.
                r.waker.wake();
                continue;
            };
            if kick.is_kicked() {
                continue;
            }
            let next = r.next.load(Ordering::SeqCst);
            // Frames it has yet to read, this one included — or 0: a reader on another
            // worker thread may have taken this frame already, since it was pushed.
            let behind = head.saturating_sub(next);
            if behind > r.capacity && class != Class::Ephemeral {
                self.kicks.fetch_add(1, Ordering::Relaxed);
                kick.kick();
                continue;
            }
            if behind > r.capacity {
                self.dropped_ephemeral.fetch_add(1, Ordering::Relaxed);
            } else {
                delivered += 1;
                self.queue_depth.observe(behind.saturating_sub(1));
            }
            keep_from = keep_from.min(next);
            r.waker.wake();
        }
        // What every lossless subscriber has read goes.
        let mut ring = feed.ring.lock();
        while ring.first < keep_from && ring.frames.pop_front().is_some() {
            ring.first += 1;
        }
        drop(ring);
        self.deliveries.fetch_add(delivered, Ordering::Relaxed);
    }
}

impl EventSink for Hub {
    fn publish(&self, event: Published) {
        match event {
            Published::Message {
                tenant,
                conversation_id,
                seq,
                json,
            } => {
                let t = tenant.clone();
                let ch = Channel::Conversation {
                    tenant,
                    conversation_id,
                };
                self.deliver(&ch, || Outbound {
                    frame: frames::visitor_message_new(&self.signed(&t, &json)).into(),
                    seq: Some(seq),
                    class: Class::Durable,
                });
            }
            Published::Event { tenant, event } => {
                let t = tenant.clone();
                self.deliver(&Channel::Tenant { tenant }, || {
                    let data = match self.links.get() {
                        Some(l) => l.event_data(&t, &event.kind, &event.data),
                        None => event.data.as_str().into(),
                    };
                    Outbound {
                        frame: frames::tenant_event(&event.kind, event.offset, &data).into(),
                        seq: Some(event.offset),
                        class: Class::Durable,
                    }
                });
            }
            Published::ConversationUpdated {
                tenant,
                conversation_id,
                json,
            } => {
                let ch = Channel::Conversation {
                    tenant,
                    conversation_id,
                };
                self.deliver(&ch, || Outbound {
                    frame: frames::visitor_conversation_updated(&json).into(),
                    seq: None,
                    class: Class::Durable,
                });
            }
            Published::ConversationRead {
                tenant,
                conversation_id,
                json,
            } => {
                let ch = Channel::Conversation {
                    tenant,
                    conversation_id,
                };
                self.deliver(&ch, || Outbound {
                    frame: frames::visitor_conversation_read(&json).into(),
                    seq: None,
                    class: Class::Durable,
                });
            }
            Published::Ephemeral { channel, frame } => self.local_ephemeral(&channel, &frame),
            Published::Resync => {
                let channels: Vec<Channel> =
                    self.channels.iter().map(|e| e.key().clone()).collect();
                for ch in channels {
                    self.deliver(&ch, || Outbound {
                        frame: WireFrame::NONE,
                        seq: None,
                        class: Class::Resync,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_protocol::model::TenantEvent;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[derive(Default)]
    struct CountingBroker {
        subs: AtomicUsize,
        unsubs: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Broker for CountingBroker {
        fn set_sink(&self, _: Arc<dyn EventSink>) {}
        fn subscribe(&self, _: &Channel) {
            self.subs.fetch_add(1, Ordering::SeqCst);
        }
        fn unsubscribe(&self, _: &Channel) {
            self.unsubs.fetch_add(1, Ordering::SeqCst);
        }
        async fn publish_ephemeral(&self, _: Published) -> confab_store::Result<()> {
            Ok(())
        }
    }

    /// A hub with a tenant channel `t` and a broker that only counts.
    fn tenant_hub() -> (Arc<Hub>, Arc<dyn Broker>, Channel) {
        let broker: Arc<dyn Broker> = Arc::new(CountingBroker::default());
        (
            Arc::new(Hub::default()),
            broker,
            Channel::Tenant { tenant: "t".into() },
        )
    }

    fn event(offset: u64) -> Published {
        Published::Event {
            tenant: "t".into(),
            event: Arc::new(TenantEvent {
                offset,
                kind: "x:y".into(),
                data: "{}".into(),
                created_ms: 0,
            }),
        }
    }

    #[tokio::test]
    async fn broker_interest_is_reference_counted() {
        let hub = Arc::new(Hub::default());
        let counting = Arc::new(CountingBroker::default());
        let broker: Arc<dyn Broker> = counting.clone();
        let ch = Channel::Tenant { tenant: "t".into() };
        let a = hub.subscribe(&broker, ch.clone(), 8, false);
        let b = hub.subscribe(&broker, ch.clone(), 8, false);
        assert_eq!(counting.subs.load(Ordering::SeqCst), 1);
        drop(a);
        assert_eq!(counting.unsubs.load(Ordering::SeqCst), 0);
        drop(b);
        assert_eq!(counting.unsubs.load(Ordering::SeqCst), 1);
        assert_eq!(hub.channel_count(), 0);
    }

    #[tokio::test]
    async fn same_bytes_to_everyone_and_slow_ones_are_kicked() {
        let (hub, broker, ch) = tenant_hub();
        let fast = hub.subscribe(&broker, ch.clone(), 8, false);
        let slow = hub.subscribe(&broker, ch.clone(), 2, false);
        for i in 1..=2 {
            hub.publish(event(i));
        }
        // Typing to a subscriber at its bound is counted as dropped, not a reason to kick.
        hub.publish(Published::Ephemeral {
            channel: ch.clone(),
            frame: "{}".into(),
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), slow.kicked())
                .await
                .is_err()
        );
        hub.publish(event(3));
        tokio::time::timeout(std::time::Duration::from_secs(1), slow.kicked())
            .await
            .expect("kicked");
        let a = fast.recv().await;
        assert_eq!(a.seq, Some(1));
        assert!(a.frame.as_text().contains(r#""offset":"1""#));
        assert_eq!(hub.kicks.load(Ordering::Relaxed), 1);
        assert_eq!(hub.dropped_ephemeral.load(Ordering::Relaxed), 1);
    }

    fn feed_len(hub: &Hub, ch: &Channel) -> usize {
        hub.channels.get(ch).unwrap().feed.ring.lock().frames.len()
    }

    #[tokio::test]
    async fn the_feed_keeps_only_what_a_subscriber_has_yet_to_read() {
        let (hub, broker, ch) = tenant_hub();
        let early = hub.subscribe(&broker, ch.clone(), 8, false);
        hub.publish(event(1));
        // A late subscriber starts at the newest frame (what came before is in the log).
        let late = hub.subscribe(&broker, ch.clone(), 8, false);
        let waiter = hub.subscribe(&broker, ch.clone(), 1, true);
        hub.publish(event(2));
        hub.publish(event(3));
        assert_eq!(early.recv().await.seq, Some(1));
        assert_eq!(late.recv().await.seq, Some(2));
        // Frames every lossless subscriber has read go at the next publication; a lossy
        // one holds nothing back.
        hub.publish(event(4));
        assert_eq!(feed_len(&hub, &ch), 3, "2 (early), 3 and 4 (both)");
        assert_eq!(early.recv().await.seq, Some(2));
        hub.publish(event(5));
        assert_eq!(feed_len(&hub, &ch), 3, "3, 4 and 5");
        for want in [3, 4, 5] {
            assert_eq!(early.recv().await.seq, Some(want));
            assert_eq!(late.recv().await.seq, Some(want));
        }
        assert!(early.try_recv().is_none() && late.try_recv().is_none());
        hub.publish(event(6));
        assert_eq!(feed_len(&hub, &ch), 1, "6");
        // The only reader left drops each frame as it reads it.
        drop(late);
        assert_eq!(early.recv().await.seq, Some(6));
        assert_eq!(feed_len(&hub, &ch), 0);
        // Several publications are one change for a lossy waiter, then it waits again.
        tokio::time::timeout(Duration::from_secs(1), waiter.changed())
            .await
            .expect("changed");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiter.changed())
                .await
                .is_err()
        );
        assert_eq!(hub.kicks.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_reply_comes_after_what_was_published_before_it() {
        let (hub, broker, ch) = tenant_hub();
        let sub = hub.subscribe(&broker, ch.clone(), 2, false);
        hub.publish(event(1));
        sub.reply("ack");
        assert_eq!(sub.recv().await.seq, Some(1));
        assert_eq!(sub.recv().await.frame.as_text(), "ack");
        // Replies are bounded like publications: beyond the capacity, the subscriber is
        // kicked.
        for _ in 0..3 {
            sub.reply("pong");
        }
        tokio::time::timeout(Duration::from_secs(1), sub.kicked())
            .await
            .expect("kicked");
    }
}
