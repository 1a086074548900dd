//! The node-local hub: who is subscribed to what on this node, and fan-out to them.
//!
//! Every publication reaches the hub through [`EventSink::publish`] — from the SQLite
//! writer thread right after commit, or from the Redis subscriber task — in commit order
//! per channel. The hub encodes each frame **once** (only if someone here listens) and
//! hands the same refcounted bytes to every subscriber's bounded queue with `try_send`:
//! publishing never waits for a subscriber.
//!
//! When a queue is full: `typing` is dropped; anything else (messages, conversation and
//! tenant events) is never dropped silently — the subscriber is *kicked* (the WebSocket
//! closes with 1013) and resumes from the log without loss.
//!
//! The registry is a sharded map (`DashMap`) keyed by channel, so fan-out to different
//! channels does not serialise on one lock. The first local subscriber of a channel tells
//! the broker to subscribe (cross-node), the last one leaving unsubscribes; both happen
//! under the channel's entry lock, so they are ordered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use confab_protocol::frames;
use confab_store::{Broker, Channel, EventSink, Published};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};

use crate::histogram::Histogram;

/// What a subscriber's queue carries.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The encoded frame, shared by every subscriber.
    pub text: Utf8Bytes,
    /// Message id (visitor channel) or tenant offset (tenant channel); `None` for frames
    /// outside the log (typing, conversation updates to visitors, acks).
    pub seq: Option<u64>,
    pub class: Class,
}

/// How a frame may be treated under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Never dropped: a full queue kicks the subscriber.
    Durable,
    /// Dropped first when the queue is full (typing).
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

    /// Resolves once kicked.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.kicked.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<Outbound>>,
    /// `None` for lossy subscribers (long-poll waiters), which only need a wake-up.
    kick: Option<Arc<Kick>>,
}

/// The registry. Shared as `Arc<Hub>`.
pub struct Hub {
    channels: DashMap<Channel, Vec<Subscriber>>,
    next_id: AtomicU64,
    /// Frames handed to subscriber queues (for `/metrics`).
    pub deliveries: AtomicU64,
    /// Subscribers disconnected for falling behind.
    pub kicks: AtomicU64,
    /// Typing frames dropped on full queues.
    pub dropped_ephemeral: AtomicU64,
    /// Signs attachment links in the messages it encodes (set once at start; unset in unit
    /// tests, where messages go out as stored).
    links: std::sync::OnceLock<Arc<crate::service::attachments::Links>>,
    /// Frames already queued for a subscriber when one more is added (for `/metrics`:
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
    /// Frames to deliver, in order.
    pub rx: mpsc::Receiver<Arc<Outbound>>,
    /// The sender side, for the connection's own replies (acks, errors, pongs), so they are
    /// ordered with, and bounded like, everything else.
    pub tx: mpsc::Sender<Arc<Outbound>>,
    kick: Option<Arc<Kick>>,
    _guard: Guard,
}

struct Guard {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    channel: Channel,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.hub.channels.entry(self.channel.clone()) {
            e.get_mut().retain(|s| s.id != self.id);
            if e.get().is_empty() {
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
        KickHandle(self.kick.clone())
    }

    /// Queues one of the connection's own frames; a full queue kicks, like a publication.
    pub fn reply(&self, text: impl Into<Utf8Bytes>) {
        let out = Arc::new(Outbound {
            text: text.into(),
            seq: None,
            class: Class::Durable,
        });
        if self.tx.try_send(out).is_err() {
            if let Some(k) = &self.kick {
                k.kick();
            }
        }
    }
}

impl Hub {
    /// Subscribes to `channel` with a queue of `capacity` frames. `lossy` subscribers are
    /// never kicked: a full queue just means they already have a reason to wake up.
    pub fn subscribe(
        self: &Arc<Self>,
        broker: &Arc<dyn Broker>,
        channel: Channel,
        capacity: usize,
        lossy: bool,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let kick = (!lossy).then(|| Arc::new(Kick::default()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Subscriber {
            id,
            tx: tx.clone(),
            kick: kick.clone(),
        };
        match self.channels.entry(channel.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push(sub),
            Entry::Vacant(v) => {
                broker.subscribe(&channel);
                v.insert(vec![sub]);
            }
        }
        Subscription {
            rx,
            tx,
            kick,
            _guard: Guard {
                hub: self.clone(),
                broker: broker.clone(),
                channel,
                id,
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
        self.deliver(channel, || Outbound {
            text: frame.to_owned().into(),
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
        let Some(subs) = self.channels.get(channel) else {
            return;
        };
        // One allocation per publication; each subscriber's queue slot is a pointer to it
        // (which also keeps an idle socket's first queue block small).
        let out = Arc::new(encode());
        let mut delivered = 0;
        for s in subs.iter() {
            match s.tx.try_send(out.clone()) {
                Ok(()) => {
                    delivered += 1;
                    let queued = s.tx.max_capacity() - s.tx.capacity();
                    self.queue_depth.observe(queued.saturating_sub(1) as u64);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if out.class == Class::Ephemeral {
                        self.dropped_ephemeral.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(k) = &s.kick {
                        if !k.kicked.load(Ordering::Relaxed) {
                            self.kicks.fetch_add(1, Ordering::Relaxed);
                        }
                        k.kick();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
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
                    text: frames::visitor_message_new(&self.signed(&t, &json)).into(),
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
                        text: frames::tenant_event(&event.kind, event.offset, &data).into(),
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
                    text: frames::visitor_conversation_updated(&json).into(),
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
                    text: frames::visitor_conversation_read(&json).into(),
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
                        text: Utf8Bytes::from_static(""),
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
        let hub = Arc::new(Hub::default());
        let broker: Arc<dyn Broker> = Arc::new(CountingBroker::default());
        let ch = Channel::Tenant { tenant: "t".into() };
        let mut fast = hub.subscribe(&broker, ch.clone(), 8, false);
        let slow = hub.subscribe(&broker, ch.clone(), 2, false);
        for i in 1..=2 {
            hub.publish(event(i));
        }
        // Typing on a full queue is dropped, not a reason to kick.
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
        let a = fast.rx.recv().await.unwrap();
        assert_eq!(a.seq, Some(1));
        assert!(a.text.as_str().contains(r#""offset":"1""#));
        assert_eq!(hub.kicks.load(Ordering::Relaxed), 1);
        assert_eq!(hub.dropped_ephemeral.load(Ordering::Relaxed), 1);
    }
}
