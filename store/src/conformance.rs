//! The store conformance suite: every backend runs [`run_all`] from its own test file with
//! a factory that opens a fresh backend. Each check uses its own random tenant, so
//! backends on a shared server (Redis) need no flushing between checks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use confab_protocol::model::{
    Author, AuthorKind, Contact, Direction, Handler, Message, Reader, Status,
};
use confab_protocol::time::parse_ms;
use parking_lot::Mutex;
use serde_json::{json, Map};

use crate::{
    Appended, Backend, Channel, ConversationCursor, Cursor, EventSink, NewConversation, NewMessage,
    OwedReply, PresenceEntry, ProfileUpdate, Published, ReadEvent, ReadMark, ReplyOutcome,
    Retention, WebhookState,
};

/// Opens a fresh backend with the given retention.
pub type Factory =
    Arc<dyn Fn(Retention) -> Pin<Box<dyn Future<Output = Backend> + Send>> + Send + Sync>;

/// Records what the broker hands over.
#[derive(Default)]
pub struct Collector {
    pub events: Mutex<Vec<Published>>,
    notify: tokio::sync::Notify,
}

impl EventSink for Collector {
    fn publish(&self, event: Published) {
        self.events.lock().push(event);
        self.notify.notify_waiters();
    }
}

impl Collector {
    /// Waits (bounded) until `pred` holds over what was collected.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[Published]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            if pred(&self.events.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}; got {:?}", self.events.lock());
            }
        }
    }
}

fn tenant() -> String {
    format!("t{}", rand::random::<u64>())
}

fn new_conv(tenant: &str) -> NewConversation {
    NewConversation {
        tenant: tenant.to_owned(),
        token_hash: format!("h{}", rand::random::<u64>()),
        customer_id: Some("cust-1".into()),
        locale: Some("en-US".into()),
        contact: Contact {
            name: Some("Jane".into()),
            email: None,
        },
        variables: json!({"plan": "pro"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        visitor_context: Map::new(),
        assistant_id: None,
        handler: Handler::Human,
    }
}

fn visitor_msg(tenant: &str, conv: &str, body: &str, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        tenant: tenant.to_owned(),
        conversation_id: conv.to_owned(),
        direction: Direction::Inbound,
        author: Author {
            kind: AuthorKind::Visitor,
            id: "v".into(),
            name: None,
        },
        body: body.to_owned(),
        client_message_id: cmid.map(str::to_owned),
        meta: None,
        intent: None,
        handler: None,
        attachments: Vec::new(),
    }
}

/// Runs every check against backends made by `factory`.
pub async fn run_all(factory: Factory) {
    secret_first_writer_wins(&factory).await;
    nonces_are_single_use(&factory).await;
    visitors_and_conversations(&factory).await;
    messages_are_ordered_and_idempotent(&factory).await;
    cursors(&factory).await;
    concurrent_appends_get_contiguous_ids(&factory).await;
    tenants_are_isolated(&factory).await;
    status_changes_and_reopen(&factory).await;
    custom_and_qualified_events(&factory).await;
    event_kinds_count_a_window_of_the_log(&factory).await;
    conversation_list(&factory).await;
    retention_and_recovery(&factory).await;
    publications_reach_the_sink_in_order(&factory).await;
    webhook_state_only_moves_forward(&factory).await;
    leases_have_one_holder(&factory).await;
    presence_expires_unless_renewed(&factory).await;
    handler_changes(&factory).await;
    read_cursors_move_forward(&factory).await;
    owed_replies_are_claimed_once_and_settled(&factory).await;
    attachments_are_claimed_once(&factory).await;
    messages_are_charged_with_their_limits(&factory).await;
}

async fn charged(
    b: &Backend,
    m: NewMessage,
    limits: &[crate::ratelimit::LimitSpec<'_>],
    now_ms: i64,
) -> crate::LimitedAppend {
    b.store
        .append_message_limited(m, limits, now_ms, b.limiter.as_ref())
        .await
        .unwrap()
}

/// `append_message_limited`: the limits are charged all or nothing with the message, on
/// the backend's limiter's own keys; a refusal stores and charges nothing; a retry of a
/// stored message is answered even while limited; `gcra`'s numbers.
async fn messages_are_charged_with_their_limits(f: &Factory) {
    use crate::ratelimit::{gcra, Decision, LimitSpec};
    use crate::LimitedAppend;
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    // Keyed as the gateway keys them (PREFIX:TENANT:SUBJECT: on a Redis Cluster, in the
    // tenant's slot).
    let (ip_key, vis_key) = (format!("msg-ip:{t}:10.0.0.1"), format!("msg-vis:{t}:v"));
    let ip = LimitSpec {
        key: &ip_key,
        limit: 3,
        window_ms: 60_000,
    };
    let vis = LimitSpec {
        key: &vis_key,
        limit: 2,
        window_ms: 60_000,
    };
    let now = confab_protocol::time::now_ms();
    let send = |body: &str, cmid: &str| visitor_msg(&t, &conv.id, body, Some(cmid));
    for (i, cmid) in ["c1", "c2"].into_iter().enumerate() {
        match charged(&b, send("hi", cmid), &[ip, vis], now).await {
            LimitedAppend::Done(Some(a)) => {
                assert!(!a.duplicate);
                assert_eq!(crate::seq_of_message_id(&a.message.id), Some(i as u64 + 1));
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    // The session's allowance is spent: refused, named, with gcra's wait; nothing stored.
    let mut tat = None;
    for _ in 0..2 {
        tat = Some(gcra(tat, 2, 60_000, now).unwrap());
    }
    let wait = gcra(tat, 2, 60_000, now).unwrap_err();
    match charged(&b, send("third", "c3"), &[ip, vis], now).await {
        LimitedAppend::Limited {
            retry_after_ms,
            refused,
        } => assert_eq!((retry_after_ms, refused), (wait, 1)),
        other => panic!("expected Limited, got {other:?}"),
    }
    let page = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 10)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 2, "a refused message is not stored");
    // A retry of a stored message is answered while limited.
    match charged(&b, send("hi", "c1"), &[ip, vis], now).await {
        LimitedAppend::Done(Some(a)) => {
            assert!(a.duplicate);
            assert_eq!(crate::seq_of_message_id(&a.message.id), Some(1));
        }
        other => panic!("expected the duplicate, got {other:?}"),
    }
    // Neither the refusal nor the limited retry took from the IP's allowance: one of its
    // 3 units is left, in the limiter's own keys.
    assert_eq!(
        b.limiter.check_all(&[ip], now).await.unwrap(),
        Decision::Allowed
    );
    assert!(matches!(
        b.limiter.check_all(&[ip], now).await.unwrap(),
        Decision::Limited { refused: 0, .. }
    ));
    // A zero limit refuses everything, with gcra's wait.
    let zero_key = format!("msg-ip:{t}:10.0.0.2");
    let zero = LimitSpec {
        key: &zero_key,
        limit: 0,
        window_ms: 60_000,
    };
    match charged(&b, send("x", "c4"), &[zero], now).await {
        LimitedAppend::Limited {
            retry_after_ms,
            refused,
        } => assert_eq!((retry_after_ms, refused), (60_000, 0)),
        other => panic!("expected Limited, got {other:?}"),
    }
    // No limits: an ordinary append.
    assert!(matches!(
        charged(&b, send("free", "c5"), &[], now).await,
        LimitedAppend::Done(Some(Appended {
            duplicate: false,
            ..
        }))
    ));
}

fn upload(t: &str, conv: &str, created_ms: i64) -> crate::AttachmentRecord {
    crate::AttachmentRecord {
        id: format!("att_{:032x}", rand::random::<u128>()),
        tenant: t.to_owned(),
        conversation_id: conv.to_owned(),
        filename: "shot \"1\".png".into(),
        content_type: "image/png".into(),
        size: 42,
        sha256: "ab".repeat(32),
        created_ms,
        message_id: None,
    }
}

/// Uploads are recorded, claimed by exactly one message of their own conversation
/// (atomically with it: a refused claim stores nothing), survive as sent, and unsent ones
/// are listed for the sweep and deleted only while unsent.
async fn attachments_are_claimed_once(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let other = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let now = confab_protocol::time::now_ms();
    let (a1, a2) = (upload(&t, &conv.id, now), upload(&t, &conv.id, now));
    let foreign = upload(&t, &other.id, now);
    for a in [&a1, &a2, &foreign] {
        b.store.create_attachment(a).await.unwrap();
    }
    assert_eq!(
        b.store.attachment(&t, &a1.id).await.unwrap().as_ref(),
        Some(&a1)
    );
    assert!(
        b.store.attachment("other", &a1.id).await.unwrap().is_none(),
        "tenant-scoped"
    );

    // Another conversation's upload: refused, nothing stored.
    let mut m = visitor_msg(&t, &conv.id, "files", Some("c1"));
    m.attachments = vec![a1.wire(), foreign.wire()];
    match b.store.append_message(m.clone()).await {
        Err(crate::StoreError::Invalid { field, .. }) => assert_eq!(field, "attachments[1]"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(b
        .store
        .messages(&t, &conv.id, Cursor::Start, 10)
        .await
        .unwrap()
        .messages
        .is_empty());
    assert!(b
        .store
        .attachment(&t, &a1.id)
        .await
        .unwrap()
        .unwrap()
        .message_id
        .is_none());

    // Sent once, with the files on the message.
    m.attachments = vec![a1.wire(), a2.wire()];
    let sent = b.store.append_message(m.clone()).await.unwrap().unwrap();
    assert!(!sent.duplicate);
    assert_eq!(sent.message.attachments, vec![a1.wire(), a2.wire()]);
    let page = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 10)
        .await
        .unwrap();
    let stored: Message = serde_json::from_str(&page.messages[0].json).unwrap();
    assert_eq!(stored.attachments, vec![a1.wire(), a2.wire()]);
    assert!(
        page.messages[0].json.ends_with(r#""url":""}]}"#),
        "{}",
        page.messages[0].json
    );
    let rec = b.store.attachment(&t, &a2.id).await.unwrap().unwrap();
    assert_eq!(rec.message_id.as_deref(), Some(sent.message.id.as_str()));

    // The same clientMessageId again: the duplicate answer, not a claim error.
    let again = b.store.append_message(m.clone()).await.unwrap().unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.id, sent.message.id);

    // Sending a sent file again: refused, nothing stored.
    let mut m2 = visitor_msg(&t, &conv.id, "again", Some("c2"));
    m2.attachments = vec![a2.wire()];
    match b.store.append_message(m2).await {
        Err(crate::StoreError::Invalid { field, .. }) => assert_eq!(field, "attachments[0]"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        b.store
            .messages(&t, &conv.id, Cursor::Start, 10)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    // Without files, messages end the way the gateway's link pass relies on.
    let plain = b
        .store
        .append_message(visitor_msg(&t, &conv.id, "plain", None))
        .await
        .unwrap()
        .unwrap();
    let page = b
        .store
        .messages(&t, &conv.id, Cursor::After(1), 10)
        .await
        .unwrap();
    assert!(page.messages[0].json.ends_with(r#""attachments":[]}"#));
    assert!(plain.message.attachments.is_empty());

    // The sweep: only unsent uploads older than the cut, deleted only while unsent.
    let old = upload(&t, &conv.id, now - 25 * 3600 * 1000);
    b.store.create_attachment(&old).await.unwrap();
    let stale = b
        .store
        .stale_attachments(now - 24 * 3600 * 1000, 100)
        .await
        .unwrap();
    let ids: Vec<&str> = stale.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&old.id.as_str()), "{ids:?}");
    assert!(!ids.contains(&foreign.id.as_str()) && !ids.contains(&a1.id.as_str()));
    assert!(b.store.delete_unsent_attachment(&t, &old.id).await.unwrap());
    assert!(b.store.attachment(&t, &old.id).await.unwrap().is_none());
    assert!(
        !b.store.delete_unsent_attachment(&t, &a1.id).await.unwrap(),
        "a sent file stays"
    );
    assert!(b.store.attachment(&t, &a1.id).await.unwrap().is_some());
}

async fn secret_first_writer_wins(f: &Factory) {
    let b = f(Retention::default()).await;
    let first = b.store.session_secret(b"one".to_vec()).await.unwrap();
    let second = b.store.session_secret(b"two".to_vec()).await.unwrap();
    assert_eq!(first, second, "the stored secret must not change");
}

async fn nonces_are_single_use(f: &Factory) {
    let b = f(Retention::default()).await;
    let n = format!("n{}", rand::random::<u64>());
    let far = confab_protocol::time::now_ms() + 60_000;
    assert!(b.store.claim_nonce(&n, far).await.unwrap());
    assert!(!b.store.claim_nonce(&n, far).await.unwrap());
    b.store
        .maintain(confab_protocol::time::now_ms())
        .await
        .unwrap();
    assert!(
        !b.store.claim_nonce(&n, far).await.unwrap(),
        "an unexpired nonce survives maintenance"
    );
}

async fn visitors_and_conversations(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let new = new_conv(&t);
    let conv = b.store.start_conversation(new.clone()).await.unwrap();
    assert_eq!(conv.status, Status::Open);
    assert_eq!(conv.tenant_id, t);
    let found = b
        .store
        .find_visitor(&t, &new.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.conversation_id, conv.id);
    assert_eq!(found.visitor_id, conv.visitor_id);
    assert!(b
        .store
        .find_visitor("other", &new.token_hash)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        b.store.conversation(&t, &conv.id).await.unwrap().unwrap(),
        conv
    );

    let events = b.store.events(&t, 0, 10).await.unwrap();
    assert_eq!(events.events.len(), 1);
    assert_eq!(events.events[0].kind, "conversation:new");
    assert_eq!(events.events[0].offset, 1);
    assert!(events.recovered);

    let update = ProfileUpdate {
        locale: Some("de".into()),
        ..Default::default()
    };
    let updated = b
        .store
        .update_profile(&t, &conv.id, update)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.locale.as_deref(), Some("de"));
    assert_eq!(b.store.last_offset(&t).await.unwrap(), 2);
    // An update that changes nothing appends nothing.
    let same = ProfileUpdate {
        locale: Some("de".into()),
        ..Default::default()
    };
    b.store
        .update_profile(&t, &conv.id, same)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.store.last_offset(&t).await.unwrap(), 2);
}

async fn messages_are_ordered_and_idempotent(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let a = b
            .store
            .append_message(visitor_msg(
                &t,
                &conv.id,
                &format!("m{i}"),
                Some(&format!("c{i}")),
            ))
            .await
            .unwrap()
            .unwrap();
        assert!(!a.duplicate);
        assert_eq!(a.first_in_conversation, i == 0);
        ids.push(a.message.id.clone());
    }
    let want: Vec<String> = (1..=5).map(|n| crate::message_id(&conv.id, n)).collect();
    assert_eq!(ids, want);
    assert!(
        ids[0].starts_with("msg_") && !ids[0].contains('-'),
        "ids carry their conversation: {}",
        ids[0]
    );
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(crate::parse_message_id(&conv.id, id), Some(n as u64 + 1));
        assert_eq!(crate::seq_of_message_id(id), Some(n as u64 + 1));
        assert_eq!(
            crate::parse_message_id("00000000-0000-0000-0000-000000000000", id),
            None
        );
    }
    let dup = b
        .store
        .append_message(visitor_msg(&t, &conv.id, "other text", Some("c2")))
        .await
        .unwrap()
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.message.id, crate::message_id(&conv.id, 3));
    assert_eq!(
        dup.message.body, "m2",
        "a duplicate returns the first message, whatever the new text"
    );
    let page = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 50)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 5, "the duplicate stored nothing");
    let mut last_created = 0;
    for (i, m) in page.messages.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&m.json).unwrap();
        assert_eq!(v["id"], crate::message_id(&conv.id, i as u64 + 1));
        assert_eq!(v["body"], format!("m{i}"));
        let created = parse_ms(v["createdAt"].as_str().unwrap()).unwrap();
        assert!(created >= last_created, "createdAt never decreases");
        last_created = created;
    }
    let conv = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(
        conv.last_message.unwrap().id,
        crate::message_id(&conv.id, 5)
    );
    assert!(b
        .store
        .append_message(visitor_msg(&t, "no-such-conversation", "x", None))
        .await
        .unwrap()
        .is_none());
}

async fn cursors(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let mut created = Vec::new();
    for i in 0..7 {
        let a = b
            .store
            .append_message(visitor_msg(&t, &conv.id, &format!("m{i}"), None))
            .await
            .unwrap()
            .unwrap();
        created.push(parse_ms(&a.message.created_at).unwrap());
    }
    let seqs = |p: &crate::MessagePage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 3)
        .await
        .unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![1, 2, 3], true));
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::After(3), 3)
        .await
        .unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![4, 5, 6], true));
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::After(6), 3)
        .await
        .unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![7], false));
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::After(7), 3)
        .await
        .unwrap();
    assert!(p.messages.is_empty() && !p.has_more);
    let p = b
        .store
        .messages(
            &t,
            &conv.id,
            Cursor::AfterCreated {
                created_ms: created[4],
                id: 5,
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(seqs(&p), vec![6, 7]);
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::Since(created[6]), 10)
        .await
        .unwrap();
    assert!(p.messages.is_empty(), "since is exclusive");
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::Since(created[0] - 1), 10)
        .await
        .unwrap();
    assert_eq!(p.messages.len(), 7);
}

async fn concurrent_appends_get_contiguous_ids(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = b.store.clone();
        let m = visitor_msg(
            &t,
            &conv.id,
            &format!("m{i}"),
            Some(&format!("c{}", i % 150)),
        );
        tasks.push(tokio::spawn(async move {
            store.append_message(m).await.unwrap().unwrap()
        }));
    }
    let mut stored = 0;
    for task in tasks {
        if !task.await.unwrap().duplicate {
            stored += 1;
        }
    }
    assert_eq!(stored, 150, "50 of the 200 reused a clientMessageId");
    let p = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 200)
        .await
        .unwrap();
    assert_eq!(
        p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=150).collect::<Vec<_>>()
    );
}

async fn tenants_are_isolated(f: &Factory) {
    let b = f(Retention::default()).await;
    let (t, u) = (tenant(), tenant());
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    b.store
        .append_message(visitor_msg(&t, &conv.id, "secret", None))
        .await
        .unwrap()
        .unwrap();
    assert!(b.store.conversation(&u, &conv.id).await.unwrap().is_none());
    assert!(b
        .store
        .messages(&u, &conv.id, Cursor::Start, 10)
        .await
        .unwrap()
        .messages
        .is_empty());
    assert!(b
        .store
        .append_message(visitor_msg(&u, &conv.id, "x", None))
        .await
        .unwrap()
        .is_none());
    assert!(b
        .store
        .set_status(&u, &conv.id, Status::Closed)
        .await
        .unwrap()
        .is_none());
    assert!(b
        .store
        .conversations(&u, None, None, 10)
        .await
        .unwrap()
        .conversations
        .is_empty());
    assert!(b.store.events(&u, 0, 10).await.unwrap().events.is_empty());
}

async fn status_changes_and_reopen(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let closed = b
        .store
        .set_status(&t, &conv.id, Status::Closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.status, Status::Closed);
    let before = b.store.last_offset(&t).await.unwrap();
    b.store
        .set_status(&t, &conv.id, Status::Closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.store.last_offset(&t).await.unwrap(),
        before,
        "no change, no event"
    );
    let mut reply = visitor_msg(&t, &conv.id, "we're back", None);
    reply.direction = Direction::Outbound;
    reply.author = Author {
        kind: AuthorKind::Agent,
        id: "a1".into(),
        name: Some("Ann".into()),
    };
    b.store.append_message(reply).await.unwrap().unwrap();
    assert_eq!(
        b.store
            .conversation(&t, &conv.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Open
    );
    let kinds: Vec<String> = b
        .store
        .events(&t, 0, 100)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "conversation:new",
            "conversation:updated",
            "message:new",
            "conversation:updated"
        ]
    );
}

async fn custom_and_qualified_events(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let e = b
        .store
        .append_event(&t, "campaign:progress", json!({"sent": 5}), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, "campaign:progress");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["sent"],
        5
    );
    let q = b
        .store
        .append_event(&t, "conversation:qualified", json!({}), Some(&conv.id))
        .await
        .unwrap()
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(&q.data).unwrap();
    assert_eq!(data["id"], conv.id);
    assert_eq!(data["qualified"], true);
    assert!(
        b.store
            .conversation(&t, &conv.id)
            .await
            .unwrap()
            .unwrap()
            .qualified
    );
    assert!(b
        .store
        .append_event(&t, "x:y", json!({}), Some("missing"))
        .await
        .unwrap()
        .is_none());
}

/// `event_kinds`: the kinds of at most `limit` events after `after`, counted, the same as
/// reading them.
async fn event_kinds_count_a_window_of_the_log(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap(); // conversation:new
    for i in 0..3 {
        let cmid = format!("k{i}");
        b.store
            .append_message(visitor_msg(&t, &conv.id, "hello", Some(&cmid)))
            .await
            .unwrap()
            .unwrap();
        b.store
            .append_event(&t, "campaign:progress", json!({"i": i}), None)
            .await
            .unwrap()
            .unwrap();
    }
    let kinds = |after, limit| {
        let store = &b.store;
        let t = &t;
        async move { store.event_kinds(t, after, limit).await.unwrap() }
    };
    let counted = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let all = b.store.events(&t, 0, 100).await.unwrap().events;
    let mut read = std::collections::BTreeMap::new();
    for e in &all {
        *read.entry(e.kind.clone()).or_insert(0u64) += 1;
    }
    assert_eq!(kinds(0, 100).await, read, "the same as reading the events");
    assert_eq!(read["message:new"], 3);
    assert_eq!(read["campaign:progress"], 3);
    // A window: after the first event, at most 2.
    let second = &all[1];
    let third = &all[2];
    let mut window = counted(&[(&second.kind, 1)]);
    *window.entry(third.kind.clone()).or_insert(0) += 1;
    assert_eq!(kinds(all[0].offset, 2).await, window);
    assert_eq!(kinds(all.last().unwrap().offset, 100).await, counted(&[]));
    assert_eq!(kinds(0, 0).await, counted(&[]));
    assert_eq!(kinds(0, 100).await.values().sum::<u64>(), all.len() as u64);
    assert!(b
        .store
        .event_kinds("other-tenant", 0, 100)
        .await
        .unwrap()
        .is_empty());
}

async fn conversation_list(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(b.store.start_conversation(new_conv(&t)).await.unwrap().id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Writing to the oldest makes it the most recently updated.
    tokio::time::sleep(Duration::from_millis(2)).await;
    b.store
        .append_message(visitor_msg(&t, &ids[0], "bump", None))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    b.store
        .set_status(&t, &ids[1], Status::Closed)
        .await
        .unwrap()
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<ConversationCursor> = None;
    loop {
        let page = b
            .store
            .conversations(&t, None, cursor.clone(), 2)
            .await
            .unwrap();
        seen.extend(page.conversations.iter().map(|c| c.id.clone()));
        match page.next_cursor {
            Some(c) => {
                cursor = Some(ConversationCursor::decode(&c).expect("our own cursor decodes"))
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            ids[1].clone(),
            ids[0].clone(),
            ids[4].clone(),
            ids[3].clone(),
            ids[2].clone()
        ]
    );
    let closed = b
        .store
        .conversations(&t, Some(Status::Closed), None, 10)
        .await
        .unwrap();
    assert_eq!(
        closed
            .conversations
            .iter()
            .map(|c| c.id.clone())
            .collect::<Vec<_>>(),
        vec![ids[1].clone()]
    );
    let open = b
        .store
        .conversations(&t, Some(Status::Open), None, 10)
        .await
        .unwrap();
    assert_eq!(open.conversations.len(), 4);
}

async fn retention_and_recovery(f: &Factory) {
    let b = f(Retention {
        min_events: 3,
        min_age_ms: 0,
    })
    .await;
    let t = tenant();
    for i in 0..10 {
        b.store
            .append_event(&t, "campaign:progress", json!({"i": i}), None)
            .await
            .unwrap()
            .unwrap();
    }
    b.store
        .maintain(confab_protocol::time::now_ms() + 1)
        .await
        .unwrap();
    let all = b.store.events(&t, 0, 100).await.unwrap();
    assert!(!all.recovered, "offset 0 is older than what is retained");
    assert!(
        all.events.len() >= 3,
        "at least the last min_events are kept"
    );
    assert_eq!(all.events.last().unwrap().offset, 10);
    let tail = b.store.events(&t, 7, 100).await.unwrap();
    assert!(tail.recovered);
    assert_eq!(
        tail.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    // The age floor protects young events whatever their number. (A tenant of its own:
    // backends on a cluster share one keyspace.)
    let b = f(Retention {
        min_events: 3,
        min_age_ms: 3_600_000,
    })
    .await;
    let t = tenant();
    for i in 0..10 {
        b.store
            .append_event(&t, "campaign:progress", json!({"i": i}), None)
            .await
            .unwrap()
            .unwrap();
    }
    b.store
        .maintain(confab_protocol::time::now_ms())
        .await
        .unwrap();
    let all = b.store.events(&t, 0, 100).await.unwrap();
    assert!(all.recovered);
    assert_eq!(all.events.len(), 10);
}

async fn webhook_state_only_moves_forward(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    assert_eq!(b.store.webhook_state(&t, "w1").await.unwrap(), None);
    let failing = WebhookState {
        offset: 7,
        failing: true,
        last_status: Some(503),
        last_error: Some("HTTP 503".into()),
        last_attempt_ms: Some(1_700_000_000_000),
    };
    b.store
        .save_webhook_state(&t, "w1", &failing)
        .await
        .unwrap();
    assert_eq!(
        b.store.webhook_state(&t, "w1").await.unwrap().as_ref(),
        Some(&failing)
    );
    // A late writer with an older offset updates the attempt but not the position.
    let stale = WebhookState {
        offset: 3,
        failing: false,
        last_status: Some(200),
        ..WebhookState::default()
    };
    b.store.save_webhook_state(&t, "w1", &stale).await.unwrap();
    let now = b.store.webhook_state(&t, "w1").await.unwrap().unwrap();
    assert_eq!((now.offset, now.last_status), (7, Some(200)));
    assert_eq!(
        b.store.webhook_state(&t, "w2").await.unwrap(),
        None,
        "per webhook"
    );
    assert_eq!(
        b.store.webhook_state(&tenant(), "w1").await.unwrap(),
        None,
        "per tenant"
    );
}

async fn leases_have_one_holder(f: &Factory) {
    let b = f(Retention::default()).await;
    let name = format!("lease-{}", rand::random::<u64>());
    assert!(b.store.lease(&name, "node-a", 60_000).await.unwrap());
    assert!(
        !b.store.lease(&name, "node-b", 60_000).await.unwrap(),
        "held by a"
    );
    assert!(
        b.store.lease(&name, "node-a", 60_000).await.unwrap(),
        "a renews"
    );
    b.store.release_lease(&name, "node-b").await.unwrap();
    assert!(
        !b.store.lease(&name, "node-b", 60_000).await.unwrap(),
        "b cannot release a's"
    );
    b.store.release_lease(&name, "node-a").await.unwrap();
    assert!(
        b.store.lease(&name, "node-b", 150).await.unwrap(),
        "released: b takes it"
    );
    // It lapses by itself when its holder stops renewing.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.store.lease(&name, "node-a", 60_000).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.store.lease(&name, "node-b", 60_000).await.unwrap());
}

async fn presence_expires_unless_renewed(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let entry = |agent: &str, node: &str, away: bool| PresenceEntry {
        agent_id: agent.into(),
        node: node.into(),
        name: Some(format!("{agent} on {node}")),
        away,
    };
    let now = 1_000_000;
    let sorted = |mut v: Vec<PresenceEntry>| {
        v.sort_by(|a, b| (&a.agent_id, &a.node).cmp(&(&b.agent_id, &b.node)));
        v
    };
    assert_eq!(b.store.presence(&t, now).await.unwrap(), vec![]);
    let a1 = entry("ann", "n1", false);
    let a2 = entry("ann|x", "n2", false);
    let b1 = entry("bob", "n1", true);
    b.store
        .presence_beat(&t, &[a1.clone(), b1.clone()], now + 100)
        .await
        .unwrap();
    b.store
        .presence_beat(&t, std::slice::from_ref(&a2), now + 50)
        .await
        .unwrap();
    assert_eq!(
        sorted(b.store.presence(&t, now).await.unwrap()),
        vec![a1.clone(), a2.clone(), b1.clone()]
    );
    assert_eq!(
        b.store.presence(&tenant(), now).await.unwrap(),
        vec![],
        "per tenant"
    );
    // A node's newer word replaces its older one.
    let a1_away = entry("ann", "n1", true);
    b.store
        .presence_beat(&t, std::slice::from_ref(&a1_away), now + 100)
        .await
        .unwrap();
    // Past n2's expiry only n1's entries remain.
    assert_eq!(
        sorted(b.store.presence(&t, now + 60).await.unwrap()),
        vec![a1_away.clone(), b1.clone()]
    );
    b.store.presence_leave(&t, "bob", "n1").await.unwrap();
    assert_eq!(b.store.presence(&t, now + 60).await.unwrap(), vec![a1_away]);
    assert_eq!(
        b.store.presence(&t, now + 100).await.unwrap(),
        vec![],
        "expired"
    );
}

async fn publications_reach_the_sink_in_order(f: &Factory) {
    let b = f(Retention::default()).await;
    let sink = Arc::new(Collector::default());
    b.broker.set_sink(sink.clone());
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    b.broker.subscribe(&Channel::Tenant {
        tenant: t.as_str().into(),
    });
    b.broker.subscribe(&Channel::Conversation {
        tenant: t.as_str().into(),
        conversation_id: conv.id.as_str().into(),
    });
    // Subscriptions may take effect asynchronously (Redis): probe until one arrives.
    let probe_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        b.store
            .append_event(&t, "probe:ping", json!({}), None)
            .await
            .unwrap();
        let got = sink
            .events
            .lock()
            .iter()
            .any(|e| matches!(e, Published::Event { event, .. } if event.kind == "probe:ping"));
        if got {
            break;
        }
        assert!(
            tokio::time::Instant::now() < probe_deadline,
            "subscription never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.events.lock().clear();
    for i in 0..20 {
        b.store
            .append_message(visitor_msg(&t, &conv.id, &format!("m{i}"), None))
            .await
            .unwrap()
            .unwrap();
    }
    sink.wait_until("20 messages and 20 events", |evs| {
        evs.iter()
            .filter(|e| matches!(e, Published::Message { .. }))
            .count()
            == 20
            && evs
                .iter()
                .filter(
                    |e| matches!(e, Published::Event { event, .. } if event.kind == "message:new"),
                )
                .count()
                == 20
    })
    .await;
    let evs = sink.events.lock().clone();
    let seqs: Vec<u64> = evs
        .iter()
        .filter_map(|e| {
            if let Published::Message { seq, .. } = e {
                Some(*seq)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let offsets: Vec<u64> = evs
        .iter()
        .filter_map(|e| {
            if let Published::Event { event, .. } = e {
                Some(event.offset)
            } else {
                None
            }
        })
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "offsets arrive contiguous and in order: {offsets:?}"
    );
}

fn agent_msg(tenant: &str, conv: &str, body: &str) -> NewMessage {
    let mut m = visitor_msg(tenant, conv, body, None);
    m.direction = Direction::Outbound;
    m.author = Author {
        kind: AuthorKind::Agent,
        id: "a1".into(),
        name: Some("Ann".into()),
    };
    m
}

async fn event_kinds(b: &Backend, t: &str) -> Vec<String> {
    let page = b.store.events(t, 0, 1000).await.unwrap();
    page.events.into_iter().map(|e| e.kind).collect()
}

/// The handler is set at start, by `set_handler`, and by a message that names one; each
/// change is one `conversation:updated`, no change is no event.
async fn handler_changes(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let mut new = new_conv(&t);
    new.assistant_id = Some("ava".into());
    new.handler = Handler::Bot;
    let conv = b.store.start_conversation(new).await.unwrap();
    assert_eq!(conv.assistant_id.as_deref(), Some("ava"));
    assert_eq!(conv.handler, Handler::Bot);
    let read = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(read, conv, "the stored conversation is the one returned");
    let same = b
        .store
        .set_handler(&t, &conv.id, Handler::Bot)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.handler, Handler::Bot);
    assert_eq!(
        event_kinds(&b, &t).await,
        ["conversation:new"],
        "no change, no event"
    );
    let human = b
        .store
        .set_handler(&t, &conv.id, Handler::Human)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(human.handler, Handler::Human);
    assert_eq!(human.assistant_id.as_deref(), Some("ava"));
    b.store
        .set_handler(&t, &conv.id, Handler::Bot)
        .await
        .unwrap()
        .unwrap();
    let mut reply = agent_msg(&t, &conv.id, "I'll take it from here");
    reply.handler = Some(Handler::Human);
    b.store.append_message(reply).await.unwrap().unwrap();
    let after = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(after.handler, Handler::Human);
    assert_eq!(
        event_kinds(&b, &t).await,
        [
            "conversation:new",
            "conversation:updated",
            "conversation:updated",
            "message:new",
            "conversation:updated"
        ]
    );
    assert!(b
        .store
        .set_handler(&t, "nope", Handler::Bot)
        .await
        .unwrap()
        .is_none());
    // The message's intent is stored with it.
    let mut m = visitor_msg(&t, &conv.id, "invoice?", None);
    m.intent = Some("billing".into());
    let stored = b.store.append_message(m).await.unwrap().unwrap().message;
    assert_eq!(stored.intent.as_deref(), Some("billing"));
    let page = b
        .store
        .messages(&t, &conv.id, Cursor::Start, 10)
        .await
        .unwrap();
    let last: confab_protocol::model::Message =
        serde_json::from_str(&page.messages.last().unwrap().json).unwrap();
    assert_eq!(last, stored);
}

/// Read cursors only move forward, count the visitor's unread messages for agents, emit
/// `conversation:read` (tenant event and visitor publication), and leave the list order.
async fn read_cursors_move_forward(f: &Factory) {
    let b = f(Retention::default()).await;
    let collector = Arc::new(Collector::default());
    b.broker.set_sink(collector.clone());
    let t = tenant();
    let conv = b.store.start_conversation(new_conv(&t)).await.unwrap();
    let ch = Channel::Conversation {
        tenant: t.as_str().into(),
        conversation_id: conv.id.as_str().into(),
    };
    b.broker.subscribe(&ch);
    b.broker.subscribed(&ch).await.unwrap();
    for body in ["one", "two"] {
        b.store
            .append_message(visitor_msg(&t, &conv.id, body, None))
            .await
            .unwrap();
    }
    b.store
        .append_message(agent_msg(&t, &conv.id, "three"))
        .await
        .unwrap();
    b.store
        .append_message(visitor_msg(&t, &conv.id, "four", None))
        .await
        .unwrap();
    let c = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(c.unread_by_agent, 3);
    assert_eq!(
        (
            c.visitor_last_read_id.as_deref(),
            c.agent_last_read_id.as_deref()
        ),
        (None, None)
    );
    let listed = b
        .store
        .conversations(&t, None, None, 10)
        .await
        .unwrap()
        .conversations;
    assert_eq!(listed[0], c);

    let Some(ReadMark::Moved(c)) = b
        .store
        .mark_read(&t, &conv.id, Reader::Agent, 2)
        .await
        .unwrap()
    else {
        panic!("the agent's cursor moves to 2");
    };
    assert_eq!(c.agent_last_read_id, Some(crate::message_id(&conv.id, 2)));
    assert_eq!(
        c.unread_by_agent, 1,
        "only the visitor's fourth message is unread"
    );
    assert_eq!(
        c.updated_at, listed[0].updated_at,
        "reading does not touch updatedAt"
    );
    let back = b
        .store
        .mark_read(&t, &conv.id, Reader::Agent, 1)
        .await
        .unwrap();
    assert_eq!(
        back,
        Some(ReadMark::Unchanged(c.clone())),
        "cursors never move back"
    );
    assert_eq!(
        b.store
            .mark_read(&t, &conv.id, Reader::Agent, 5)
            .await
            .unwrap(),
        Some(ReadMark::NoSuchMessage)
    );
    assert_eq!(
        b.store
            .mark_read(&t, &conv.id, Reader::Visitor, 0)
            .await
            .unwrap(),
        Some(ReadMark::NoSuchMessage)
    );
    assert!(b
        .store
        .mark_read(&t, "nope", Reader::Agent, 1)
        .await
        .unwrap()
        .is_none());
    let Some(ReadMark::Moved(c)) = b
        .store
        .mark_read(&t, &conv.id, Reader::Visitor, 3)
        .await
        .unwrap()
    else {
        panic!("the visitor's cursor moves to 3");
    };
    assert_eq!(c.visitor_last_read_id, Some(crate::message_id(&conv.id, 3)));
    assert_eq!(
        c.unread_by_agent, 1,
        "the visitor reading changes nothing for agents"
    );
    let Some(ReadMark::Moved(c)) = b
        .store
        .mark_read(&t, &conv.id, Reader::Agent, 4)
        .await
        .unwrap()
    else {
        panic!("the agent's cursor moves to 4");
    };
    assert_eq!(c.unread_by_agent, 0);
    let stored = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(stored, c, "the cursors are stored");
    // A new visitor message counts again; the list order is still by updates only.
    b.store
        .append_message(visitor_msg(&t, &conv.id, "five", None))
        .await
        .unwrap();
    let c = b.store.conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(c.unread_by_agent, 1);

    let events = b.store.events(&t, 0, 1000).await.unwrap().events;
    let reads: Vec<ReadEvent> = events
        .iter()
        .filter(|e| e.kind == "conversation:read")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let expected = [
        (Reader::Agent, 2, 1),
        (Reader::Visitor, 3, 1),
        (Reader::Agent, 4, 0),
    ]
    .map(|(reader, seq, unread)| ReadEvent {
        conversation_id: conv.id.clone(),
        reader,
        message_id: crate::message_id(&conv.id, seq),
        unread_by_agent: unread,
    });
    assert_eq!(reads, expected);
    for e in events.iter().filter(|e| e.kind == "conversation:read") {
        assert_eq!(
            e.data,
            crate::domain::to_json(&serde_json::from_str::<ReadEvent>(&e.data).unwrap()),
            "the event's bytes are serde's on every backend"
        );
    }
    collector
        .wait_until("three conversation:read publications", |got| {
            got.iter()
                .filter(|p| matches!(p, Published::ConversationRead { .. }))
                .count()
                == 3
        })
        .await;
}

fn bot_msg(tenant: &str, conv: &str, body: &str) -> NewMessage {
    let mut m = visitor_msg(tenant, conv, body, None);
    m.direction = Direction::Outbound;
    m.author = Author {
        kind: AuthorKind::Bot,
        id: "ava".into(),
        name: Some("Ava".into()),
    };
    m
}

/// A visitor message to a bot-handled conversation makes a reply owed in the same commit;
/// one holder at a time claims it; completing stores the reply once, and keeps the record
/// owed when more visitor messages arrived meanwhile.
async fn owed_replies_are_claimed_once_and_settled(f: &Factory) {
    let b = f(Retention::default()).await;
    let t = tenant();
    let mut new = new_conv(&t);
    new.assistant_id = Some("ava".into());
    new.handler = Handler::Bot;
    let conv = b.store.start_conversation(new).await.unwrap();
    let id = conv.id.as_str();
    const LEASE: i64 = 60_000;
    assert!(
        b.store
            .claim_reply(&t, None, "n1", LEASE)
            .await
            .unwrap()
            .is_none(),
        "nothing owed yet"
    );
    let a = b
        .store
        .append_message(visitor_msg(&t, id, "hi bot", None))
        .await
        .unwrap()
        .unwrap();
    assert!(a.reply_owed);
    let agent_note = b
        .store
        .append_message(agent_msg(&t, id, "just watching"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !agent_note.reply_owed,
        "only visitor messages are owed a reply"
    );
    let owed = OwedReply {
        conversation_id: id.to_owned(),
        through_seq: 1,
    };
    assert_eq!(
        b.store.claim_reply(&t, None, "n1", LEASE).await.unwrap(),
        Some(owed.clone())
    );
    assert!(
        b.store
            .claim_reply(&t, None, "n2", LEASE)
            .await
            .unwrap()
            .is_none(),
        "leased"
    );
    assert!(
        b.store
            .claim_reply(&t, Some(id), "n2", LEASE)
            .await
            .unwrap()
            .is_none(),
        "leased"
    );
    assert_eq!(
        b.store
            .claim_reply(&t, Some(id), "n1", LEASE)
            .await
            .unwrap(),
        Some(owed),
        "the holder may claim again"
    );
    assert!(b.store.renew_reply(&t, id, "n1", LEASE).await.unwrap());
    assert!(!b.store.renew_reply(&t, id, "n2", LEASE).await.unwrap());

    // The visitor writes again meanwhile: still n1's, and owed through 3 now.
    b.store
        .append_message(visitor_msg(&t, id, "are you there?", None))
        .await
        .unwrap();
    assert!(b
        .store
        .claim_reply(&t, None, "n2", LEASE)
        .await
        .unwrap()
        .is_none());
    let lost = b
        .store
        .complete_reply(&t, id, "n2", 1, Some(bot_msg(&t, id, "x")))
        .await
        .unwrap();
    assert!(matches!(lost, ReplyOutcome::Lost), "{lost:?}");
    let mut reply = bot_msg(&t, id, "Hello! How can I help?");
    reply.client_message_id = Some("reply-1".into());
    let ReplyOutcome::Stored(stored) = b
        .store
        .complete_reply(&t, id, "n1", 1, Some(reply.clone()))
        .await
        .unwrap()
    else {
        panic!("the holder's reply is stored");
    };
    assert_eq!(stored.message.body, "Hello! How can I help?");
    assert!(!stored.reply_owed);
    // Messages 3 ("are you there?") is still owed, and free for anyone.
    let again = b.store.claim_reply(&t, None, "n2", LEASE).await.unwrap();
    assert_eq!(
        again,
        Some(OwedReply {
            conversation_id: id.to_owned(),
            through_seq: 3
        })
    );
    let silent = b.store.complete_reply(&t, id, "n2", 3, None).await.unwrap();
    assert!(matches!(silent, ReplyOutcome::Silent), "{silent:?}");
    assert!(
        b.store
            .claim_reply(&t, None, "n1", LEASE)
            .await
            .unwrap()
            .is_none(),
        "settled"
    );
    let page = b.store.messages(&t, id, Cursor::Start, 100).await.unwrap();
    assert_eq!(
        page.messages.len(),
        4,
        "visitor, agent, visitor, one reply; silence stores nothing"
    );

    // An expired lease is anyone's.
    b.store
        .append_message(visitor_msg(&t, id, "hello?", None))
        .await
        .unwrap();
    assert!(b
        .store
        .claim_reply(&t, Some(id), "n1", 1)
        .await
        .unwrap()
        .is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        b.store
            .claim_reply(&t, None, "n2", LEASE)
            .await
            .unwrap()
            .is_some(),
        "taken over"
    );
    let lost = b
        .store
        .complete_reply(&t, id, "n1", 6, Some(bot_msg(&t, id, "late")))
        .await
        .unwrap();
    assert!(
        matches!(lost, ReplyOutcome::Lost),
        "the first holder lost it: {lost:?}"
    );

    // Handed to people meanwhile: nothing stored, nothing owed.
    b.store.set_handler(&t, id, Handler::Human).await.unwrap();
    let handed = b
        .store
        .complete_reply(&t, id, "n2", 6, Some(bot_msg(&t, id, "too late")))
        .await
        .unwrap();
    assert!(matches!(handed, ReplyOutcome::HandedOver), "{handed:?}");
    assert!(b
        .store
        .claim_reply(&t, None, "n1", LEASE)
        .await
        .unwrap()
        .is_none());
    let human = b
        .store
        .append_message(visitor_msg(&t, id, "a person please", None))
        .await
        .unwrap()
        .unwrap();
    assert!(!human.reply_owed, "people answer now");
    assert_eq!(
        b.store
            .messages(&t, id, Cursor::Start, 100)
            .await
            .unwrap()
            .messages
            .len(),
        6
    );

    // A fallback hands over in the same commit.
    b.store.set_handler(&t, id, Handler::Bot).await.unwrap();
    b.store
        .append_message(visitor_msg(&t, id, "bot again", None))
        .await
        .unwrap();
    let claimed = b
        .store
        .claim_reply(&t, None, "n1", LEASE)
        .await
        .unwrap()
        .unwrap();
    let mut fallback = bot_msg(&t, id, "Sorry, a person will reply.");
    fallback.handler = Some(Handler::Human);
    let ReplyOutcome::Stored(_) = b
        .store
        .complete_reply(&t, id, "n1", claimed.through_seq, Some(fallback))
        .await
        .unwrap()
    else {
        panic!("the fallback is stored");
    };
    let c = b.store.conversation(&t, id).await.unwrap().unwrap();
    assert_eq!(c.handler, Handler::Human);
    assert!(b
        .store
        .claim_reply(&t, None, "n1", LEASE)
        .await
        .unwrap()
        .is_none());
}
