//! The SQLite writer's housekeeping on a real database file: the WAL is rewound under
//! steady writes (not left to grow), the log's prefix is pruned in slices, what was
//! acknowledged is there after a reopen, and its cache of conversation rows never keeps
//! what a rollback undid.

use std::path::Path;
use std::sync::Arc;

use confab_protocol::model::{Author, AuthorKind, Contact, Direction, Handler};
use confab_store::{
    Appended, AttachmentRecord, Cursor, NewConversation, NewMessage, Retention, Store, StoreError,
};
use serde_json::json;

/// Many concurrent writers of ~2 KiB events, so that commits follow each other with no
/// idle moment for a checkpoint to catch up in: `writers × per_writer` events.
async fn write_steadily(store: Arc<dyn Store>, writers: usize, per_writer: usize) {
    let pad = "x".repeat(2048);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, pad) = (store.clone(), pad.clone());
            tokio::spawn(async move {
                for i in 0..per_writer {
                    store
                        .append_event(
                            "t1",
                            "custom:load",
                            json!({ "w": w, "i": i, "pad": pad }),
                            None,
                        )
                        .await
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn wal_len(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// ~50 MB go through the WAL. With `wal_max_mb=1` the writer rewinds it, so the file stays
/// a few MB long; with the default (256 MB) it holds everything — which shows that the
/// first figure is the rewind's doing and not the load's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_rewound_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lengths = vec![];
    for query in ["?wal_max_mb=1", ""] {
        let path = dir.path().join(format!("db{}.sqlite", lengths.len()));
        let backend = confab_store::open(
            &format!("sqlite:{}{query}", path.display()),
            Retention::default(),
        )
        .await
        .unwrap();
        write_steadily(backend.store.clone(), 16, 1_500).await;
        lengths.push(wal_len(&path));
        assert_eq!(backend.store.last_offset("t1").await.unwrap(), 24_000);
    }
    let (bounded, unbounded) = (lengths[0], lengths[1]);
    assert!(
        bounded < 8 << 20,
        "with wal_max_mb=1 the WAL grew to {bounded} bytes"
    );
    assert!(
        unbounded > 40 << 20,
        "without a small limit the WAL should hold the whole run, it has {unbounded} bytes"
    );
}

/// Pruning deletes the log's prefix in slices (each its own write), all of it in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_prefix_is_pruned_completely() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("db.sqlite").display());
    let retention = Retention {
        min_events: 100,
        min_age_ms: 0,
    };
    let backend = confab_store::open(&url, retention).await.unwrap();
    let store = backend.store.clone();
    for i in 0..5_500 {
        store
            .append_event("t1", "custom:load", json!({ "i": i }), None)
            .await
            .unwrap();
    }
    store.maintain(i64::MAX / 2).await.unwrap();
    let page = store.events("t1", 0, 10).await.unwrap();
    assert!(!page.recovered, "the pruned prefix is reported as gone");
    assert_eq!(
        page.events[0].offset, 5_401,
        "exactly the last 100 are kept"
    );
}

/// Acknowledged writes are in the file after the store is dropped and reopened (the
/// syncer, not SQLite's COMMIT, made them durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_there_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("db.sqlite").display());
    {
        let backend = confab_store::open(&url, Retention::default())
            .await
            .unwrap();
        write_steadily(backend.store.clone(), 8, 200).await;
    }
    let backend = confab_store::open(&url, Retention::default())
        .await
        .unwrap();
    assert_eq!(backend.store.last_offset("t1").await.unwrap(), 1_600);
}

/// Store URL options: bad ones are refused with the valid ones named; good ones combine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_store_url_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    for bad in [
        "wal_max_mb=0",
        "wal_max_mb=x",
        "wal_max_mb=99999999999",
        "synchronous=off",
        "x",
    ] {
        let Err(e) = confab_store::open(
            &format!("sqlite:{}?{bad}", db.display()),
            Retention::default(),
        )
        .await
        else {
            panic!("{bad} was accepted");
        };
        assert!(e.to_string().contains("wal_max_mb=N"), "{bad}: {e}");
    }
    confab_store::open(
        &format!("sqlite:{}?synchronous=normal&wal_max_mb=64", db.display()),
        Retention::default(),
    )
    .await
    .unwrap();
}

/// A conversation handled by humans, for `start_conversation`.
fn human_conversation(tenant: &str) -> NewConversation {
    NewConversation {
        tenant: tenant.into(),
        token_hash: "h".into(),
        customer_id: None,
        locale: None,
        contact: Contact::default(),
        variables: Default::default(),
        visitor_context: Default::default(),
        assistant_id: None,
        handler: Handler::Human,
    }
}

fn visitor_message(tenant: &str, conversation: &str, body: &str, id: &str) -> NewMessage {
    NewMessage {
        tenant: tenant.into(),
        conversation_id: conversation.into(),
        direction: Direction::Inbound,
        author: Author {
            kind: AuthorKind::Visitor,
            id: "v".into(),
            name: None,
        },
        body: body.into(),
        client_message_id: Some(id.into()),
        meta: None,
        intent: None,
        handler: None,
        attachments: Vec::new(),
    }
}

/// Appends a visitor message that must be stored (a new one or a duplicate).
async fn append(
    store: &dyn Store,
    tenant: &str,
    conversation: &str,
    body: &str,
    id: &str,
) -> Appended {
    store
        .append_message(visitor_message(tenant, conversation, body, id))
        .await
        .unwrap()
        .unwrap()
}

/// Opens the store at `url` and starts a conversation of tenant `t1` with `messages`
/// (body, `clientMessageId`).
async fn open_with_conversation(
    url: &str,
    messages: &[(&str, &str)],
) -> (confab_store::Backend, String) {
    let backend = confab_store::open(url, Retention::default()).await.unwrap();
    let conv = backend
        .store
        .start_conversation(human_conversation("t1"))
        .await
        .unwrap();
    for (body, id) in messages {
        append(&*backend.store, "t1", &conv.id, body, id).await;
    }
    (backend, conv.id)
}

fn upload(tenant: &str, conversation: &str, n: u32) -> AttachmentRecord {
    AttachmentRecord {
        id: format!("att_{n:032x}"),
        tenant: tenant.into(),
        conversation_id: conversation.into(),
        filename: "a.png".into(),
        content_type: "image/png".into(),
        size: 1,
        sha256: "ab".repeat(32),
        created_ms: confab_protocol::time::now_ms(),
        message_id: None,
    }
}

/// A message refused half-way (its first file claimed, its second one unknown: its
/// savepoint rolls back the message and the claim) leaves no trace in the writer's cached
/// conversation: the next message gets the next number, and the conversation (unread
/// count, last message) is the one the database holds — also after a reopen, where the
/// cache starts empty. Both on a file and in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_append_leaves_no_trace_in_the_cached_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("sqlite:{}", dir.path().join("db.sqlite").display());
    for url in [file.as_str(), "memory"] {
        let backend = confab_store::open(url, Retention::default()).await.unwrap();
        let store = backend.store.clone();
        let conv = store
            .start_conversation(human_conversation("t1"))
            .await
            .unwrap();
        let first = append(&*store, "t1", &conv.id, "one", "c1").await;
        assert_eq!(first.message.id, confab_store::message_id(&conv.id, 1));

        let good = upload("t1", &conv.id, 1);
        store.create_attachment(&good).await.unwrap();
        let mut refused = visitor_message("t1", &conv.id, "refused", "c2");
        refused.attachments = vec![good.wire(), upload("t1", &conv.id, 2).wire()];
        match store.append_message(refused).await {
            Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "attachments[1]"),
            other => panic!("expected Invalid, got {other:?}"),
        }
        let unclaimed = store.attachment("t1", &good.id).await.unwrap().unwrap();
        assert_eq!(unclaimed.message_id, None, "the claim was rolled back");

        let second = append(&*store, "t1", &conv.id, "two", "c3").await;
        assert!(!second.duplicate);
        assert_eq!(second.message.id, confab_store::message_id(&conv.id, 2));
        let again = append(&*store, "t1", &conv.id, "two", "c3").await;
        assert!(again.duplicate, "the idempotency key is found by its index");
        assert_eq!(again.message.id, second.message.id);

        let check = |store: Arc<dyn Store>| {
            let id = conv.id.clone();
            async move {
                let c = store.conversation("t1", &id).await.unwrap().unwrap();
                assert_eq!(c.unread_by_agent, 2, "{url}");
                let last = c.last_message.unwrap();
                assert_eq!(
                    (last.id.as_str(), last.body.as_str()),
                    (second.message.id.as_str(), "two")
                );
                let page = store.messages("t1", &id, Cursor::Start, 10).await.unwrap();
                let bodies: Vec<String> = page
                    .messages
                    .iter()
                    .map(|m| {
                        serde_json::from_str::<serde_json::Value>(&m.json).unwrap()["body"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    })
                    .collect();
                assert_eq!(bodies, ["one", "two"], "{url}");
                // The rolled-back message took no offset of the tenant's log.
                let events: Vec<(u64, String)> = store
                    .events("t1", 0, 100)
                    .await
                    .unwrap()
                    .events
                    .into_iter()
                    .map(|e| (e.offset, e.kind))
                    .collect();
                let expected = [
                    (1, "conversation:new"),
                    (2, "message:new"),
                    (3, "message:new"),
                ];
                assert_eq!(events, expected.map(|(o, k)| (o, k.to_owned())), "{url}");
                assert_eq!(store.last_offset("t1").await.unwrap(), 3, "{url}");
            }
        };
        check(store.clone()).await;
        // The next write reads the conversation from the cache, then from the database.
        let third = append(&*store, "t1", &conv.id, "three", "c4").await;
        assert_eq!(third.message.id, confab_store::message_id(&conv.id, 3));
        if url == "memory" {
            continue;
        }
        drop((store, backend));
        let backend = confab_store::open(url, Retention::default()).await.unwrap();
        let fourth = append(&*backend.store, "t1", &conv.id, "four", "c5").await;
        assert_eq!(fourth.message.id, confab_store::message_id(&conv.id, 4));
        let c = backend
            .store
            .conversation("t1", &conv.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.unread_by_agent, 4);
        let offsets: Vec<u64> = backend
            .store
            .events("t1", 0, 100)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5]);
        assert_eq!(backend.store.last_offset("t1").await.unwrap(), 5);
    }
}

/// A database written before schema version 2 — `messages` keyed by (conversation, seq)
/// WITHOUT ROWID — opens with its messages: history in order, an old `clientMessageId`
/// still found as a duplicate, the next message numbered after the last; and the table
/// is a rowid table afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_with_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let url = format!("sqlite:{}", path.display());
    let conversation = {
        let messages = [("one", "c1"), ("two", "c2"), ("three", "c3")];
        open_with_conversation(&url, &messages).await.1
    };
    // Put the table back in its version-1 layout, as that version's schema made it.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "BEGIN;
         ALTER TABLE messages RENAME TO m2;
         DROP INDEX messages_by_seq; DROP INDEX messages_idempotency;
         CREATE TABLE messages (
             conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, tenant TEXT NOT NULL,
             created_ms INTEGER NOT NULL, idempotency_key TEXT, json TEXT NOT NULL,
             PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID;
         CREATE UNIQUE INDEX messages_idempotency ON messages (conversation_id, idempotency_key)
             WHERE idempotency_key IS NOT NULL;
         INSERT INTO messages SELECT conversation_id, seq, tenant, created_ms, idempotency_key, json FROM m2;
         DROP TABLE m2;
         PRAGMA user_version = 1;
         COMMIT;",
    )
    .unwrap();
    drop(db);

    let backend = confab_store::open(&url, Retention::default())
        .await
        .unwrap();
    let store = backend.store.clone();
    let page = store
        .messages("t1", &conversation, Cursor::Start, 10)
        .await
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let again = append(&*store, "t1", &conversation, "two again", "c2").await;
    assert!(again.duplicate);
    assert_eq!(again.message.id, confab_store::message_id(&conversation, 2));
    let fourth = append(&*store, "t1", &conversation, "four", "c4").await;
    assert_eq!(
        fourth.message.id,
        confab_store::message_id(&conversation, 4)
    );
    drop(backend);

    let db = rusqlite::Connection::open(&path).unwrap();
    let (version, sql): (i64, String) = db
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), sql FROM sqlite_schema
             WHERE name = 'messages'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(version, 3);
    assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
}

/// A conversation's row leaves its last message out — it is the message at `last_seq`,
/// stored once in `messages` — so a long message does not make the row grow; reads (one
/// conversation, the list, the writer's own after a reopen) join it back. A row written
/// by an older build, with `lastMessage` inside, reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_row_keeps_its_last_message_in_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let url = format!("sqlite:{}", path.display());
    let long = "x".repeat(10_000);
    let conversation = {
        let backend = confab_store::open(&url, Retention::default())
            .await
            .unwrap();
        let conv = backend
            .store
            .start_conversation(human_conversation("t1"))
            .await
            .unwrap();
        append(&*backend.store, "t1", &conv.id, &long, "c1").await;
        let read = backend.store.conversation("t1", &conv.id).await.unwrap();
        assert_eq!(read.unwrap().last_message.unwrap().body, long);
        conv.id
    };
    let row = |db: &rusqlite::Connection| -> String {
        db.query_row(
            "SELECT json FROM conversations WHERE id = ?1",
            [&conversation],
            |r| r.get(0),
        )
        .unwrap()
    };
    let db = rusqlite::Connection::open(&path).unwrap();
    let json = row(&db);
    assert!(json.contains("\"lastMessage\":null"), "{json}");
    assert!(json.len() < 1_000, "{} bytes", json.len());

    // The older layout: the whole conversation, its last message included.
    let backend = confab_store::open(&url, Retention::default())
        .await
        .unwrap();
    let whole = backend
        .store
        .conversation("t1", &conversation)
        .await
        .unwrap()
        .unwrap();
    drop(backend);
    db.execute(
        "UPDATE conversations SET json = ?1 WHERE id = ?2",
        [&serde_json::to_string(&whole).unwrap(), &conversation],
    )
    .unwrap();
    let backend = confab_store::open(&url, Retention::default())
        .await
        .unwrap();
    let store = backend.store.clone();
    let read = store.conversation("t1", &conversation).await.unwrap();
    assert_eq!(read.unwrap().last_message.unwrap().body, long);
    // The writer reads the row (its cache starts empty), and saves it without.
    let second = append(&*store, "t1", &conversation, "two", "c2").await;
    assert_eq!(
        second.message.id,
        confab_store::message_id(&conversation, 2)
    );
    let page = store.conversations("t1", None, None, 10).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    let listed = &page.conversations[0];
    assert_eq!(listed.last_message.as_ref().unwrap().body, "two");
    assert_eq!(listed.unread_by_agent, 2);
    assert!(row(&db).contains("\"lastMessage\":null"));
}

/// Schema 3: a `message:new` row in the tenant's log names its message instead of holding
/// its JSON; reads give the same events. A version-2 database (JSON inside every row)
/// is migrated in place and reads the same, old rows and new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_events_name_their_message_and_a_version_2_log_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let url = format!("sqlite:{}", path.display());
    let (conversation, before) = {
        let (backend, conv) = open_with_conversation(&url, &[("one", "c1"), ("two", "c2")]).await;
        (
            conv,
            backend.store.events("t1", 0, 100).await.unwrap().events,
        )
    };
    let kinds: Vec<&str> = before.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["conversation:new", "message:new", "message:new"]);
    let two: serde_json::Value = serde_json::from_str(&before[2].data).unwrap();
    assert_eq!(two["body"], "two");
    assert_eq!(
        two["id"].as_str().unwrap(),
        confab_store::message_id(&conversation, 2)
    );
    let db = rusqlite::Connection::open(&path).unwrap();
    let empty: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM tenant_events WHERE kind = 'message:new' AND data = ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(empty, 2, "message rows hold no copy of the message");

    // Put the log back in its version-2 layout: the JSON inside every row.
    db.execute_batch(
        "BEGIN;
         CREATE TABLE v2 (
             tenant TEXT NOT NULL, offset INTEGER NOT NULL, created_ms INTEGER NOT NULL,
             kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (tenant, offset)) WITHOUT ROWID;
         INSERT INTO v2 SELECT e.tenant, e.offset, e.created_ms, e.kind, COALESCE(m.json, e.data)
             FROM tenant_events e
             LEFT JOIN messages m ON m.conversation_id = e.conversation_id AND m.seq = e.seq;
         DROP TABLE tenant_events;
         ALTER TABLE v2 RENAME TO tenant_events;
         PRAGMA user_version = 2;
         COMMIT;",
    )
    .unwrap();
    let backend = confab_store::open(&url, Retention::default())
        .await
        .unwrap();
    let store = backend.store.clone();
    let same = store.events("t1", 0, 100).await.unwrap().events;
    assert_eq!(same.len(), before.len());
    for (a, b) in before.iter().zip(&same) {
        assert_eq!((a.offset, &a.kind, &a.data), (b.offset, &b.kind, &b.data));
    }
    append(&*store, "t1", &conversation, "three", "c3").await;
    let page = store.events("t1", 3, 100).await.unwrap();
    let three: serde_json::Value = serde_json::from_str(&page.events[0].data).unwrap();
    assert_eq!(three["body"], "three");
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
}
