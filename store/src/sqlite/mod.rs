//! The embedded backend: SQLite in WAL mode, one connection owned by a dedicated writer
//! thread ([`writer`]: group commit, with fsync and checkpoints off its path), readers off
//! the async runtime. The writer's connection writes each commit's WAL frames with one
//! write instead of two per page ([`walbuf`], a thin VFS over the default one).
//!
//! **Reads.** File databases: a small pool of read-only connections used from
//! `spawn_blocking` (WAL readers never block the writer nor each other); a read answers
//! once what it saw is durable. `memory`: reads run on the writer thread, the only
//! connection to that database.

mod rows;
mod walbuf;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use confab_protocol::model::{
    Conversation, Direction, Handler, Message, Reader, Status, TenantEvent,
};
use confab_protocol::time::format_ms;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    is_inbound_json, new_conversation, new_conversation_id, new_message, new_visitor_id, read_seq,
    record_message, to_json,
};
use crate::{
    message_id, Appended, AttachmentRecord, Broker, Channel, Clock, ConversationCursor,
    ConversationPage, Cursor, EventSink, EventsPage, MessagePage, NewConversation, NewMessage,
    OwedReply, PresenceEntry, ProfileUpdate, Published, ReadEvent, ReadMark, ReplyOutcome, Result,
    Retention, Store, StoreError, StoredMessage, VisitorRecord, WebhookState,
};

/// When a commit is durable (`sqlite:PATH?synchronous=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync at every commit (group commit shares it): an acknowledged message survives a
    /// process crash *and* a power loss or kernel crash. The default.
    Full,
    /// fsync at checkpoints only: an acknowledged message survives a process crash (kill
    /// -9: it is in the OS page cache) but the last commits may be lost on power loss.
    Normal,
}

/// Options of a database file: `sqlite:PATH?synchronous=full|normal&wal_max_mb=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub sync: Sync,
    /// The WAL's length from which the writer rewinds it (see [`writer`]): the WAL file
    /// grows to about this size and is then reused from its start. Larger: rarer short
    /// pauses of the writer (each a checkpoint of what the checkpointer has not yet
    /// copied); smaller: less disk.
    pub wal_max_bytes: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            sync: Sync::Full,
            wal_max_bytes: 256 << 20,
        }
    }
}

impl FileOptions {
    /// Parses the query part of a `sqlite:` store URL (`key=value` pairs joined by `&`).
    pub fn parse(query: &str) -> Result<FileOptions> {
        let unknown = |pair: &str| {
            StoreError::Internal(format!(
                "unknown sqlite option {pair:?}: use synchronous=full (default) or \
                 synchronous=normal, and wal_max_mb=N (1 ≤ N ≤ 1048576, default 256)"
            ))
        };
        let mut options = FileOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => options.sync = Sync::Full,
                Some(("synchronous", "normal")) => options.sync = Sync::Normal,
                // At most 1 TiB, so that the byte count fits the page arithmetic.
                Some(("wal_max_mb", n)) => match n.parse::<u64>() {
                    Ok(mb @ 1..=1_048_576) => options.wal_max_bytes = mb << 20,
                    _ => return Err(unknown(pair)),
                },
                _ => return Err(unknown(pair)),
            }
        }
        Ok(options)
    }
}

use rows::Row;
pub use writer::MAX_BATCH;
use writer::{in_savepoint, unguarded, Cmd, Progress, ReadOp, Tx, WriteOp};

/// Writes waiting for the writer thread; senders wait (async) when it is full.
const QUEUE_DEPTH: usize = 8192;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;
/// Read connections (and concurrent reads) of a file database. WAL readers do not
/// block each other; more than a few per core only adds context switches.
const READ_POOL: usize = 4;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS visitors (
    tenant TEXT NOT NULL, token_hash TEXT NOT NULL, visitor_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
    PRIMARY KEY (tenant, token_hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, status TEXT NOT NULL, updated_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, last_created_ms INTEGER NOT NULL, json TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (tenant, updated_ms DESC, id DESC);
-- A rowid table, so that new rows are appended at the end of one B-tree: a group commit
-- writes its messages into a few shared pages, and only the two small index entries land
-- in each conversation's own pages. (Keyed by (conversation_id, seq) WITHOUT ROWID, every
-- message went into the middle of a B-tree of ~0.5 KB rows and rebalanced its neighbours
-- every few rows: 3.2 pages written per message, against 1.3 now. See `create_schema`.)
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, tenant TEXT NOT NULL, created_ms INTEGER NOT NULL,
    idempotency_key TEXT, json TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (conversation_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (conversation_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- No index on created_ms: createdAt never decreases along a conversation, so time cursors
-- scan the conversation's range of messages_by_seq, and every message saves a random page write.
DROP INDEX IF EXISTS messages_by_time;
CREATE TABLE IF NOT EXISTS tenant_logs (
    tenant TEXT PRIMARY KEY, last_offset INTEGER NOT NULL, pruned_through INTEGER NOT NULL) WITHOUT ROWID;
-- A `message:new` event names its message (conversation_id, seq) and leaves `data` empty:
-- its data is that message's JSON, stored once, in `messages` (see `log_event`).
CREATE TABLE IF NOT EXISTS tenant_events (
    tenant TEXT NOT NULL, offset INTEGER NOT NULL, created_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL, conversation_id TEXT, seq INTEGER, PRIMARY KEY (tenant, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhooks (
    tenant TEXT NOT NULL, webhook TEXT NOT NULL, offset INTEGER NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (tenant, webhook)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
-- Owed assistant replies: the visitor messages up to through_seq await one; holder/lease_until
-- say who is producing it ('' / 0: nobody).
CREATE TABLE IF NOT EXISTS replies (
    tenant TEXT NOT NULL, conversation_id TEXT NOT NULL, through_seq INTEGER NOT NULL,
    holder TEXT NOT NULL, lease_until INTEGER NOT NULL, PRIMARY KEY (tenant, conversation_id)) WITHOUT ROWID;
-- Uploads: `message_seq` is NULL until a message sends it (the 24 h sweep reads the
-- partial index of unsent ones only).
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, conversation_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    message_seq INTEGER, json TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attachments_unsent ON attachments (created_ms) WHERE message_seq IS NULL;
PRAGMA user_version = 3;
"#;

/// Schema version 2 → 3: `tenant_events` gets its message reference (a version-1
/// database's table needs it too, before `SCHEMA`).
const ADD_EVENT_MESSAGE_REFS: &str = "ALTER TABLE tenant_events ADD COLUMN conversation_id TEXT;
ALTER TABLE tenant_events ADD COLUMN seq INTEGER;";

/// Schema version 1 → 2, `messages` becoming a rowid table: in one transaction, the old
/// table is set aside, `SCHEMA` creates the new one, and its rows move over.
const SET_ASIDE_V1_MESSAGES: &str =
    "ALTER TABLE messages RENAME TO messages_v1; DROP INDEX messages_idempotency;";
const MOVE_V1_MESSAGES: &str = "
INSERT INTO messages (conversation_id, seq, tenant, created_ms, idempotency_key, json)
    SELECT conversation_id, seq, tenant, created_ms, idempotency_key, json FROM messages_v1
    ORDER BY conversation_id, seq;
DROP TABLE messages_v1;";

/// Creates the schema, or brings a version-1 database up to it.
fn create_schema(conn: &Connection) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if !matches!(version, 1 | 2) {
        return conn.execute_batch(SCHEMA).map_err(db_err);
    }
    // A log without the message reference gets it (whatever the version says).
    let has_refs: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('tenant_events') WHERE name = 'seq'",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let add_refs = if has_refs { "" } else { ADD_EVENT_MESSAGE_REFS };
    let steps = match version {
        1 => format!("{SET_ASIDE_V1_MESSAGES} {add_refs} {SCHEMA} {MOVE_V1_MESSAGES}"),
        _ => format!("{add_refs} {SCHEMA}"),
    };
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {steps} COMMIT;"))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Internal(format!(
                "migrating the database from schema version {version}: {e}"
            ))
        })
}

enum Readers {
    /// File database: read-only connections, used from `spawn_blocking`.
    Pool {
        path: PathBuf,
        idle: Mutex<Vec<Connection>>,
        /// One per connection of the pool: bounds concurrent reads.
        permits: Arc<tokio::sync::Semaphore>,
    },
    /// In-memory database: reads are queued to the writer thread.
    ViaWriter,
}

/// The SQLite backend. Cheap to share (`Arc`); dropping the last handle stops the writer
/// after it has committed everything queued.
pub struct SqliteStore {
    /// Queue to the writer thread (bounded: [`QUEUE_DEPTH`]).
    writer: mpsc::Sender<Cmd>,
    /// How far commits have got: reads wait for what they saw to be durable.
    progress: Arc<Progress>,
    readers: Arc<Readers>,
    /// Where committed events go; set once by the gateway's hub.
    sink: Arc<OnceLock<Arc<dyn EventSink>>>,
    retention: Retention,
    /// The node's clock: stamps `createdAt`/`updatedAt` (the gateway's and the store's
    /// time are one).
    clock: Clock,
    /// Joined on drop so that queued writes are committed before the process exits.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The exclusive lock on `<database>.lock` (file databases), held for the store's
    /// life; the OS releases it when the process dies.
    _lock: Option<std::fs::File>,
    /// Presence lives in the process: one node is the whole deployment, and presence means
    /// nothing after a restart. Tenant → (agent, node) → (entry, expires_ms).
    presence: Mutex<PresenceMap>,
}

type PresenceMap = HashMap<String, HashMap<(String, String), (PresenceEntry, i64)>>;

/// Takes an exclusive lock on `<path>.lock`: one gateway process per database file. A
/// second one would keep its own hub (so its clients would miss the first one's events)
/// and could not tell its leases from a dead process's.
fn lock_exclusively(path: &Path) -> Result<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", lock_path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(StoreError::Unavailable(format!(
                "{} is in use by another confab process (one process per SQLite database; \
                 use Redis to run several nodes)",
                path.display()
            )));
        }
    }
    Ok(file)
}

fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                DatabaseBusy | DatabaseLocked | DiskFull | CannotOpen | SystemIoFailure | ReadOnly
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("corrupt JSON in store: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) a database file and its directory.
    pub fn open_file(
        path: &Path,
        retention: Retention,
        options: FileOptions,
        clock: Clock,
    ) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let lock = lock_exclusively(path)?;
        walbuf::register().map_err(StoreError::Internal)?;
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), walbuf::NAME)
            .map_err(db_err)?;
        // `synchronous=full` is kept by the syncer thread, which fsyncs the WAL after each
        // commit off the writer's path (see `writer`); SQLite itself only syncs at checkpoints.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -16000; PRAGMA temp_store = MEMORY;",
        )
        .map_err(db_err)?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(db_err)?;
        let readers = Readers::Pool {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(READ_POOL)),
        };
        let mut store = Self::start(
            conn,
            readers,
            retention,
            clock,
            Some(writer::FileDb {
                path,
                sync: options.sync,
                wal_max_pages: (options.wal_max_bytes as i64 / page_size.max(512)).max(1),
            }),
        )?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// A private in-memory database (tests, `--store memory`): nothing survives the process.
    pub fn open_memory(retention: Retention, clock: Clock) -> Result<SqliteStore> {
        let conn = Connection::open_in_memory().map_err(db_err)?;
        Self::start(conn, Readers::ViaWriter, retention, clock, None)
    }

    fn start(
        conn: Connection,
        readers: Readers,
        retention: Retention,
        clock: Clock,
        file: Option<writer::FileDb<'_>>,
    ) -> Result<SqliteStore> {
        create_schema(&conn)?;
        // This process is the database's only user (`lock_exclusively`): every lease in it
        // was held by a process that is gone.
        conn.execute("DELETE FROM leases", []).map_err(db_err)?;
        conn.execute("UPDATE replies SET holder = '', lease_until = 0", [])
            .map_err(db_err)?;
        // rusqlite keeps 16 by default; the writer uses more distinct statements than that,
        // and a miss re-prepares (parses and plans) the statement on every message.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        stable_plans(&conn)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let sink: Arc<OnceLock<Arc<dyn EventSink>>> = Arc::new(OnceLock::new());
        let progress = Progress::new();
        let thread = writer::start(
            conn,
            rx,
            tx.downgrade(),
            sink.clone(),
            progress.clone(),
            file,
        )?;
        Ok(SqliteStore {
            writer: tx,
            progress,
            readers: Arc::new(readers),
            sink,
            retention,
            clock,
            thread: Mutex::new(Some(thread)),
            _lock: None,
            presence: Mutex::new(HashMap::new()),
        })
    }

    /// Applies `change` to a conversation (true: it changed something); a change stamps
    /// `updatedAt` and records `conversation:updated`. `None` when it does not exist.
    async fn change(
        &self,
        tenant: &str,
        conversation_id: &str,
        change: impl FnOnce(&mut Conversation) -> Result<bool> + Send + 'static,
    ) -> Result<Option<Conversation>> {
        let (tenant, id) = (tenant.to_owned(), conversation_id.to_owned());
        let clock = self.clock.clone();
        self.write(move |c, tx| {
            let Some((mut conv, seq, created)) = load_conversation(c, tx, &tenant, &id)? else {
                return Ok(None);
            };
            if change(&mut conv)? {
                let now = clock.now_ms();
                conv.updated_at = format_ms(now);
                conversation_updated(c, tx, conv.clone(), seq, created, now)?;
            }
            Ok(Some(conv))
        })
        .await
    }

    /// Runs `f` in the writer's transaction, in its own savepoint; answers after commit.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Tx) -> Result<T> + Send + 'static,
    {
        self.submit(true, f).await
    }

    /// [`SqliteStore::write`] without a savepoint ([`writer::unguarded`]): only for a write
    /// whose expected failures all come before its first change.
    async fn write_unguarded<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Tx) -> Result<T> + Send + 'static,
    {
        self.submit(false, f).await
    }

    async fn submit<T, F>(&self, savepoint: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Tx) -> Result<T> + Send + 'static,
    {
        let (answer, rx) = oneshot::channel::<Result<T>>();
        let op: WriteOp = Box::new(move |conn, tx| {
            let result = if savepoint {
                in_savepoint(conn, tx, f)
            } else {
                unguarded(conn, tx, f)
            };
            Box::new(move |committed| {
                let _ = answer.send(if committed {
                    result
                } else {
                    Err(StoreError::Unavailable(
                        "the transaction did not commit".into(),
                    ))
                });
            })
        });
        self.writer
            .send(Cmd::Write(op))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer dropped the request".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        match &*self.readers {
            Readers::Pool { permits, .. } => {
                // At most READ_POOL reads at once, so each finds an open connection with
                // its statements prepared (opening one per read costs more than the read).
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| StoreError::Unavailable("closed".into()))?;
                let readers = self.readers.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let Readers::Pool { path, idle, .. } = &*readers else {
                        unreachable!()
                    };
                    let conn = match idle.lock().pop() {
                        Some(c) => c,
                        None => open_reader(path)?,
                    };
                    let result = f(&conn);
                    let mut idle = idle.lock();
                    if idle.len() < READ_POOL {
                        idle.push(conn);
                    }
                    result
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?;
                self.progress.settle().await;
                result
            }
            Readers::ViaWriter => {
                let (tx, rx) = oneshot::channel();
                let op: ReadOp = Box::new(move |conn| {
                    let _ = tx.send(f(conn));
                });
                self.writer
                    .send(Cmd::Read(op))
                    .await
                    .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
                rx.await
                    .map_err(|_| StoreError::Unavailable("the writer dropped the request".into()))?
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit.
        let (dead, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writer, dead));
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Plans that do not depend on bound values: otherwise a cached statement whose cursor
/// value changed is re-prepared on every read (seen as `sqlite3Reprepare` in profiles).
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
    .map_err(db_err)
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -4000;")
        .map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    stable_plans(&conn)?;
    Ok(conn)
}

/// A conversation row, for a write: from the writer's cache ([`rows`]) or else read (and
/// cached).
fn load_conversation(
    conn: &Connection,
    tx: &mut Tx,
    tenant: &str,
    id: &str,
) -> Result<Option<(Conversation, u64, i64)>> {
    let row = match tx.rows.get(id) {
        Some(row) => Some(row),
        None => read_conversation(conn, id)?.inspect(|row| tx.rows.put(row.clone())),
    };
    Ok(row
        .filter(|row| row.conversation.tenant_id == tenant)
        .map(|row| (row.conversation, row.last_seq, row.last_created_ms)))
}

/// [`load_conversation`] for a write that saves it again: moved out of the cache, not
/// copied (the save puts it back).
fn take_conversation(
    conn: &Connection,
    tx: &mut Tx,
    tenant: &str,
    id: &str,
) -> Result<Option<Row>> {
    let row = match tx.rows.take(id) {
        Some(row) => Some(row),
        None => read_conversation(conn, id)?,
    };
    match row {
        Some(row) if row.conversation.tenant_id == tenant => Ok(Some(row)),
        Some(row) => {
            tx.rows.put(row);
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Reads a conversation row, whatever its tenant (reads cannot use the writer's cache).
fn read_conversation(conn: &Connection, id: &str) -> Result<Option<Row>> {
    let row = conn
        .prepare_cached(
            "SELECT c.json, m.json, c.last_seq, c.last_created_ms FROM conversations c
             LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq
             WHERE c.id = ?1",
        )
        .map_err(db_err)?
        .query_row(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()
        .map_err(db_err)?;
    row.map(|(json, last, seq, created)| {
        Ok(Row {
            conversation: parse_conversation(&json, last.as_deref())?,
            last_seq: seq as u64,
            last_created_ms: created,
        })
    })
    .transpose()
}

/// A conversation from its row's JSON and the JSON of the message at its `last_seq` (its
/// `lastMessage`, not kept in the row: see [`write_conversation_row`]). A row written before
/// that (schema 2 from an older build) has its `lastMessage` inside, the same message.
fn parse_conversation(row: &str, last_message: Option<&str>) -> Result<Conversation> {
    let mut c: Conversation = serde_json::from_str(row).map_err(json_err)?;
    if let Some(m) = last_message {
        c.last_message = Some(serde_json::from_str(m).map_err(json_err)?);
    }
    Ok(c)
}

/// Writes a conversation row and caches it (see [`rows`]).
fn save_conversation(
    conn: &Connection,
    tx: &mut Tx,
    mut c: Conversation,
    last_seq: u64,
    last_created_ms: i64,
    updated_ms: i64,
) -> Result<()> {
    write_conversation_row(conn, &mut c, last_seq, last_created_ms, updated_ms)?;
    tx.rows.put(Row {
        conversation: c,
        last_seq,
        last_created_ms,
    });
    Ok(())
}

/// Writes a conversation row without caching it: for a conversation just started, which
/// may never be written again (a visitor who opens the widget and says nothing). Cached
/// from its creation, every such session would hold a row in the writer's cache until it
/// was evicted (+1.0 KiB per idle socket at 19,000 new sessions: 8.5 against 7.5 KiB).
///
/// The row's JSON leaves out `lastMessage`: that is the message at `last_seq`, stored once
/// in `messages`, and reads join it back ([`parse_conversation`]). Inside the row, every
/// message would be written twice — serialized again, and making the row grow with the
/// body: a 10,000-character message made it spill onto overflow pages, rewritten with
/// every message. Returns the row's JSON.
fn write_conversation_row(
    conn: &Connection,
    c: &mut Conversation,
    last_seq: u64,
    last_created_ms: i64,
    updated_ms: i64,
) -> Result<String> {
    let last_message = c.last_message.take();
    let json = to_json(&*c);
    c.last_message = last_message;
    conn.prepare_cached(
        "INSERT INTO conversations (id, tenant, status, updated_ms, last_seq, last_created_ms, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET status = ?3, updated_ms = ?4, last_seq = ?5, last_created_ms = ?6, json = ?7",
    )
    .map_err(db_err)?
    .execute(params![c.id, c.tenant_id, c.status.as_str(), updated_ms, last_seq as i64, last_created_ms, json])
    .map_err(db_err)?;
    Ok(json)
}

/// The commit of one message (inside the writer's transaction): idempotency, the message,
/// its events, the conversation, and the owed reply a visitor message to a bot makes.
fn append_tx(c: &Connection, tx: &mut Tx, now: i64, new: &NewMessage) -> Result<Option<Appended>> {
    let Some(Row {
        conversation: mut conv,
        last_seq,
        last_created_ms: last_created,
    }) = take_conversation(c, tx, &new.tenant, &new.conversation_id)?
    else {
        return Ok(None);
    };
    let seq = last_seq + 1;
    let created = now.max(last_created);
    let message = new_message(new, seq, created);
    let idempotency_key = new.idempotency_key();
    let json = to_json(&message);
    // The unique index on the idempotency key finds a duplicate (then nothing is
    // inserted): no lookup before every insert. Whatever can refuse the message comes
    // before this first change (see `append_message`), the attachments excepted: a
    // message with files has a savepoint.
    let inserted = c
        .prepare_cached(
            "INSERT INTO messages (conversation_id, seq, tenant, created_ms, idempotency_key, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .map_err(db_err)?
        .execute(params![
            new.conversation_id,
            seq as i64,
            new.tenant,
            created,
            idempotency_key,
            json
        ])
        .map_err(db_err)?;
    if inserted == 0 {
        let existing: Option<String> = match &idempotency_key {
            Some(key) => c
                .prepare_cached(
                    "SELECT json FROM messages WHERE conversation_id = ?1 AND idempotency_key = ?2",
                )
                .map_err(db_err)?
                .query_row(params![new.conversation_id, key], |r| r.get(0))
                .optional()
                .map_err(db_err)?,
            None => None,
        };
        let Some(json) = existing else {
            return Err(StoreError::Internal(format!(
                "message {seq} of conversation {} is stored already",
                new.conversation_id
            )));
        };
        let message: Message = serde_json::from_str(&json).map_err(json_err)?;
        tx.rows.put(Row {
            conversation: conv,
            last_seq,
            last_created_ms: last_created,
        });
        return Ok(Some(Appended {
            message,
            duplicate: true,
            first_in_conversation: false,
            reply_owed: false,
        }));
    }
    let json: Arc<str> = json.into();
    tx.publish(Published::Message {
        tenant: new.tenant.as_str().into(),
        conversation_id: new.conversation_id.as_str().into(),
        seq,
        json: json.clone(),
    });
    let named = Some((new.conversation_id.as_str(), seq));
    log_event(
        c,
        tx,
        &new.tenant,
        "message:new",
        json.to_string(),
        named,
        now,
    )?;
    let changed = record_message(&mut conv, &message, new.handler);
    let reply_owed = new.direction == Direction::Inbound && conv.handler == Handler::Bot;
    if changed {
        conversation_updated(c, tx, conv, seq, created, now)?;
    } else {
        save_conversation(c, tx, conv, seq, created, now)?;
    }
    if reply_owed {
        c.prepare_cached(
            "INSERT INTO replies (tenant, conversation_id, through_seq, holder, lease_until) VALUES (?1, ?2, ?3, '', 0)
             ON CONFLICT (tenant, conversation_id) DO UPDATE SET through_seq = excluded.through_seq",
        )
        .map_err(db_err)?
        .execute(params![new.tenant, new.conversation_id, seq as i64])
        .map_err(db_err)?;
    }
    // Last, so that a refused file rolls back (with the savepoint) everything above —
    // the conversation row the writer cached included (see `rows`).
    claim_attachments(c, new, seq, &message.id)?;
    Ok(Some(Appended {
        message,
        duplicate: false,
        first_in_conversation: seq == 1,
        reply_owed,
    }))
}

fn append_event_tx(
    conn: &Connection,
    tx: &mut Tx,
    tenant: &str,
    kind: &str,
    data: String,
    now: i64,
) -> Result<TenantEvent> {
    log_event(conn, tx, tenant, kind, data, None, now)
}

/// Appends an event to the tenant's log. With `message` (conversation id, seq), `data` is
/// that message's JSON and the row only names the message: reads join its JSON back (see
/// `events`), so that each message is stored once — a 10,000-character one was written
/// twice.
fn log_event(
    conn: &Connection,
    tx: &mut Tx,
    tenant: &str,
    kind: &str,
    data: String,
    message: Option<(&str, u64)>,
    now: i64,
) -> Result<TenantEvent> {
    // Written to `tenant_logs` before the commit (see `rows`).
    let offset = tx.heads.next(conn, tenant)?;
    let (stored, conversation_id, seq) = match message {
        Some((conversation_id, seq)) => ("", Some(conversation_id), Some(seq as i64)),
        None => (data.as_str(), None, None),
    };
    conn.prepare_cached(
        "INSERT INTO tenant_events (tenant, offset, created_ms, kind, data, conversation_id, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(db_err)?
    .execute(params![
        tenant,
        offset,
        now,
        kind,
        stored,
        conversation_id,
        seq
    ])
    .map_err(db_err)?;
    let event = TenantEvent {
        offset: offset as u64,
        kind: kind.to_owned(),
        data,
        created_ms: now,
    };
    tx.publish(Published::Event {
        tenant: tenant.into(),
        event: Arc::new(event.clone()),
    });
    Ok(event)
}

/// Records a conversation change: saves it, appends `conversation:updated`, tells its visitors.
fn conversation_updated(
    conn: &Connection,
    tx: &mut Tx,
    c: Conversation,
    seq: u64,
    created: i64,
    now: i64,
) -> Result<()> {
    let json = to_json(&c);
    append_event_tx(
        conn,
        tx,
        &c.tenant_id,
        "conversation:updated",
        json.clone(),
        now,
    )?;
    tx.publish(Published::ConversationUpdated {
        tenant: c.tenant_id.as_str().into(),
        conversation_id: c.id.as_str().into(),
        json: json.into(),
    });
    save_conversation(conn, tx, c, seq, created, now)
}

/// Marks each attachment of `new` as sent by message `seq` — only if it is an unsent
/// upload of that conversation; otherwise the whole write rolls back (its savepoint).
fn claim_attachments(
    conn: &Connection,
    new: &NewMessage,
    seq: u64,
    message_id: &str,
) -> Result<()> {
    for (i, a) in new.attachments.iter().enumerate() {
        let row: Option<(String, Option<i64>, String)> = conn
            .prepare_cached("SELECT conversation_id, message_seq, json FROM attachments WHERE id = ?1 AND tenant = ?2")
            .map_err(db_err)?
            .query_row(params![a.id, new.tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db_err)?;
        let field = format!("attachments[{i}]");
        let refuse = |message: &str| StoreError::Invalid {
            field: field.clone(),
            message: message.to_owned(),
        };
        let Some((conv, sent, json)) = row else {
            return Err(refuse("no such upload"));
        };
        if conv != new.conversation_id {
            return Err(refuse("uploaded in another conversation"));
        }
        if sent.is_some() {
            return Err(refuse("already sent"));
        }
        let mut record: AttachmentRecord = serde_json::from_str(&json).map_err(json_err)?;
        record.message_id = Some(message_id.to_owned());
        conn.prepare_cached("UPDATE attachments SET message_seq = ?1, json = ?2 WHERE id = ?3")
            .map_err(db_err)?
            .execute(params![seq as i64, to_json(&record), a.id])
            .map_err(db_err)?;
    }
    Ok(())
}

fn pruned_through(conn: &Connection, tenant: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT pruned_through FROM tenant_logs WHERE tenant = ?1")
        .map_err(db_err)?
        .query_row(params![tenant], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db_err)?
        .unwrap_or(0) as u64)
}

/// Most tenant events one write of [`prune_logs`] deletes.
const PRUNE_SLICE: i64 = 2_000;

/// Drops up to [`PRUNE_SLICE`] events of each tenant's log prefix that is both beyond the
/// count floor and older than the age floor. True when some tenant has more to drop.
fn prune_logs(c: &Connection, retention: Retention, now: i64) -> Result<bool> {
    let logs = c
        .prepare_cached("SELECT tenant, last_offset, pruned_through FROM tenant_logs")
        .map_err(db_err)?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    let mut more = false;
    for (tenant, last, pruned) in logs {
        let keep_from = last - retention.min_events as i64;
        let through: Option<i64> = c
            .prepare_cached(
                "SELECT MAX(offset) FROM tenant_events
                 WHERE tenant = ?1 AND offset <= ?2 AND created_ms < ?3",
            )
            .map_err(db_err)?
            .query_row(
                params![
                    tenant,
                    keep_from.min(pruned + PRUNE_SLICE),
                    now - retention.min_age_ms
                ],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let Some(through) = through else { continue };
        c.prepare_cached("DELETE FROM tenant_events WHERE tenant = ?1 AND offset <= ?2")
            .map_err(db_err)?
            .execute(params![tenant, through])
            .map_err(db_err)?;
        c.prepare_cached(
            "UPDATE tenant_logs SET pruned_through = MAX(pruned_through, ?2) WHERE tenant = ?1",
        )
        .map_err(db_err)?
        .execute(params![tenant, through])
        .map_err(db_err)?;
        more |= through == pruned + PRUNE_SLICE && through < keep_from;
    }
    Ok(more)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.progress.healthy()?;
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }

    async fn session_secret(&self, generated: Vec<u8>) -> Result<Vec<u8>> {
        self.write(move |c, _| {
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('session_secret', ?1)",
                params![generated],
            )
            .map_err(db_err)?;
            c.query_row(
                "SELECT value FROM meta WHERE key = 'session_secret'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)
        })
        .await
    }

    async fn claim_nonce(&self, nonce: &str, expires_ms: i64) -> Result<bool> {
        let nonce = nonce.to_owned();
        self.write(move |c, _| {
            let n = c
                .prepare_cached("INSERT OR IGNORE INTO nonces (nonce, expires_ms) VALUES (?1, ?2)")
                .map_err(db_err)?
                .execute(params![nonce, expires_ms])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn find_visitor(&self, tenant: &str, token_hash: &str) -> Result<Option<VisitorRecord>> {
        let (tenant, hash) = (tenant.to_owned(), token_hash.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT visitor_id, conversation_id FROM visitors WHERE tenant = ?1 AND token_hash = ?2")
                .map_err(db_err)?
                .query_row(params![tenant, hash], |r| Ok(VisitorRecord { visitor_id: r.get(0)?, conversation_id: r.get(1)? }))
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn start_conversation(&self, new: NewConversation) -> Result<Conversation> {
        let clock = self.clock.clone();
        self.write(move |c, tx| {
            let now = clock.now_ms();
            let mut conv = new_conversation(&new, new_conversation_id(), new_visitor_id(), now);
            c.prepare_cached(
                "INSERT INTO visitors (tenant, token_hash, visitor_id, conversation_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, token_hash) DO UPDATE SET visitor_id = ?3, conversation_id = ?4",
            )
            .map_err(db_err)?
            .execute(params![new.tenant, new.token_hash, conv.visitor_id, conv.id])
            .map_err(db_err)?;
            // No last message yet: the row's JSON is the whole conversation.
            let json = write_conversation_row(c, &mut conv, 0, 0, now)?;
            append_event_tx(c, tx, &new.tenant, "conversation:new", json, now)?;
            Ok(conv)
        })
        .await
    }

    async fn update_profile(
        &self,
        tenant: &str,
        conversation_id: &str,
        update: ProfileUpdate,
    ) -> Result<Option<Conversation>> {
        self.change(tenant, conversation_id, move |c| update.apply(c))
            .await
    }

    async fn append_message(&self, new: NewMessage) -> Result<Option<Appended>> {
        let clock = self.clock.clone();
        let guarded = !new.attachments.is_empty();
        let append = move |c: &Connection, tx: &mut Tx| append_tx(c, tx, clock.now_ms(), &new);
        if !guarded {
            // Nothing can be refused once it has begun writing (`append_tx`).
            self.write_unguarded(append).await
        } else {
            self.write(append).await
        }
    }

    async fn find_duplicate(&self, new: &NewMessage) -> Result<Option<Message>> {
        let Some(key) = new.idempotency_key() else {
            return Ok(None);
        };
        let (tenant, conv) = (new.tenant.clone(), new.conversation_id.clone());
        self.read(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT json FROM messages WHERE conversation_id = ?1 AND tenant = ?2 AND idempotency_key = ?3")
                .map_err(db_err)?
                .query_row(params![conv, tenant, key], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            json.map(|j| serde_json::from_str(&j).map_err(json_err)).transpose()
        })
        .await
    }

    async fn messages(
        &self,
        tenant: &str,
        conversation_id: &str,
        cursor: Cursor,
        limit: usize,
    ) -> Result<MessagePage> {
        let (tenant, id) = (tenant.to_owned(), conversation_id.to_owned());
        self.read(move |c| {
            let fetch = (limit + 1) as i64;
            let (sql, a, b) = match cursor {
                Cursor::Start => ("seq > ?3", 0i64, 0i64),
                Cursor::After(seq) => ("seq > ?3", seq.min(i64::MAX as u64) as i64, 0),
                Cursor::Since(ms) => ("created_ms > ?3", ms, 0),
                Cursor::AfterCreated { created_ms, id } => (
                    "(created_ms > ?3 OR (created_ms = ?3 AND seq > ?4))",
                    created_ms,
                    id.min(i64::MAX as u64) as i64,
                ),
            };
            let query = format!(
                "SELECT seq, json FROM messages WHERE conversation_id = ?1 AND tenant = ?2 AND {sql}
                 ORDER BY seq LIMIT ?5"
            );
            let mut stmt = c.prepare_cached(&query).map_err(db_err)?;
            let mut messages = stmt
                .query_map(params![id, tenant, a, b, fetch], |r| {
                    Ok(StoredMessage {
                        seq: r.get::<_, i64>(0)? as u64,
                        json: Arc::from(r.get_ref(1)?.as_str().map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                1,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        })?),
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            let has_more = messages.len() > limit;
            messages.truncate(limit);
            Ok(MessagePage { messages, has_more })
        })
        .await
    }

    async fn conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<Option<Conversation>> {
        let (tenant, id) = (tenant.to_owned(), conversation_id.to_owned());
        self.read(move |c| {
            Ok(read_conversation(c, &id)?
                .map(|row| row.conversation)
                .filter(|conv| conv.tenant_id == tenant))
        })
        .await
    }

    async fn conversations(
        &self,
        tenant: &str,
        status: Option<Status>,
        cursor: Option<ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationPage> {
        let tenant = tenant.to_owned();
        self.read(move |c| {
            let (after_ms, after_id) = cursor
                .map(|k| (k.updated_ms, k.id))
                .unwrap_or((i64::MAX, String::new()));
            let mut stmt = c
                .prepare_cached(
                    "SELECT c.json, m.json, c.updated_ms, c.id FROM conversations c
                     LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq
                     WHERE c.tenant = ?1 AND (?2 IS NULL OR c.status = ?2)
                       AND (c.updated_ms < ?3 OR (c.updated_ms = ?3 AND c.id < ?4))
                     ORDER BY c.updated_ms DESC, c.id DESC LIMIT ?5",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    params![
                        tenant,
                        status.map(|s| s.as_str()),
                        after_ms,
                        after_id,
                        (limit + 1) as i64
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    },
                )
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            let more = rows.len() > limit;
            let mut conversations = Vec::with_capacity(limit);
            let mut next_cursor = None;
            for (json, last, updated_ms, id) in rows.into_iter().take(limit) {
                conversations.push(parse_conversation(&json, last.as_deref())?);
                next_cursor = Some(ConversationCursor { updated_ms, id }.encode());
            }
            Ok(ConversationPage {
                conversations,
                next_cursor: if more { next_cursor } else { None },
            })
        })
        .await
    }

    async fn set_status(
        &self,
        tenant: &str,
        conversation_id: &str,
        status: Status,
    ) -> Result<Option<Conversation>> {
        self.change(tenant, conversation_id, move |c| {
            Ok(std::mem::replace(&mut c.status, status) != status)
        })
        .await
    }

    async fn set_handler(
        &self,
        tenant: &str,
        conversation_id: &str,
        handler: Handler,
    ) -> Result<Option<Conversation>> {
        self.change(tenant, conversation_id, move |c| {
            Ok(std::mem::replace(&mut c.handler, handler) != handler)
        })
        .await
    }

    async fn mark_read(
        &self,
        tenant: &str,
        conversation_id: &str,
        reader: Reader,
        seq: u64,
    ) -> Result<Option<ReadMark>> {
        let (tenant, id) = (tenant.to_owned(), conversation_id.to_owned());
        let clock = self.clock.clone();
        self.write(move |c, tx| {
            let Some((mut conv, last_seq, last_created)) = load_conversation(c, tx, &tenant, &id)?
            else {
                return Ok(None);
            };
            if seq == 0 || seq > last_seq {
                return Ok(Some(ReadMark::NoSuchMessage));
            }
            if seq <= read_seq(&conv, reader) {
                return Ok(Some(ReadMark::Unchanged(conv)));
            }
            let message_id = message_id(&id, seq);
            match reader {
                Reader::Visitor => conv.visitor_last_read_id = Some(message_id.clone()),
                Reader::Agent => {
                    let mut stmt = c
                        .prepare_cached(
                            "SELECT json FROM messages WHERE conversation_id = ?1 AND seq > ?2",
                        )
                        .map_err(db_err)?;
                    let mut rows = stmt.query(params![id, seq as i64]).map_err(db_err)?;
                    let mut unread = 0;
                    while let Some(row) = rows.next().map_err(db_err)? {
                        if is_inbound_json(&row.get::<_, String>(0).map_err(db_err)?) {
                            unread += 1;
                        }
                    }
                    conv.agent_last_read_id = Some(message_id.clone());
                    conv.unread_by_agent = unread;
                }
            }
            // Only the JSON: the list order (updated_ms) and the log position stay.
            c.prepare_cached("UPDATE conversations SET json = ?1 WHERE id = ?2")
                .map_err(db_err)?
                .execute(params![to_json(&conv), id])
                .map_err(db_err)?;
            tx.rows.put(Row {
                conversation: conv.clone(),
                last_seq,
                last_created_ms: last_created,
            });
            let now = clock.now_ms();
            let data = to_json(&ReadEvent {
                conversation_id: id.clone(),
                reader,
                message_id,
                unread_by_agent: conv.unread_by_agent,
            });
            append_event_tx(c, tx, &tenant, "conversation:read", data.clone(), now)?;
            tx.publish(Published::ConversationRead {
                tenant: tenant.as_str().into(),
                conversation_id: id.as_str().into(),
                json: data.into(),
            });
            Ok(Some(ReadMark::Moved(conv)))
        })
        .await
    }

    async fn claim_reply(
        &self,
        tenant: &str,
        conversation_id: Option<&str>,
        holder: &str,
        lease_ms: i64,
    ) -> Result<Option<OwedReply>> {
        let (tenant, conv, holder) = (
            tenant.to_owned(),
            conversation_id.map(str::to_owned),
            holder.to_owned(),
        );
        let clock = self.clock.clone();
        self.write(move |c, _| {
            let now = clock.now_ms();
            let target: Option<String> = match conv {
                Some(id) => Some(id),
                None => c
                    .prepare_cached(
                        "SELECT conversation_id FROM replies WHERE tenant = ?1 AND lease_until <= ?2
                         ORDER BY lease_until LIMIT 1",
                    )
                    .map_err(db_err)?
                    .query_row(params![tenant, now], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?,
            };
            let Some(id) = target else { return Ok(None) };
            let through: Option<i64> = c
                .prepare_cached(
                    "UPDATE replies SET holder = ?3, lease_until = ?4
                     WHERE tenant = ?1 AND conversation_id = ?2 AND (lease_until <= ?5 OR holder = ?3)
                     RETURNING through_seq",
                )
                .map_err(db_err)?
                .query_row(params![tenant, id, holder, now + lease_ms, now], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            Ok(through.map(|t| OwedReply { conversation_id: id, through_seq: t as u64 }))
        })
        .await
    }

    async fn renew_reply(
        &self,
        tenant: &str,
        conversation_id: &str,
        holder: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        let (tenant, id, holder) = (
            tenant.to_owned(),
            conversation_id.to_owned(),
            holder.to_owned(),
        );
        let clock = self.clock.clone();
        self.write(move |c, _| {
            let n = c
                .prepare_cached(
                    "UPDATE replies SET lease_until = ?4 WHERE tenant = ?1 AND conversation_id = ?2 AND holder = ?3",
                )
                .map_err(db_err)?
                .execute(params![tenant, id, holder, clock.now_ms() + lease_ms])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn complete_reply(
        &self,
        tenant: &str,
        conversation_id: &str,
        holder: &str,
        through_seq: u64,
        reply: Option<NewMessage>,
    ) -> Result<ReplyOutcome> {
        let (tenant, id, holder) = (
            tenant.to_owned(),
            conversation_id.to_owned(),
            holder.to_owned(),
        );
        let clock = self.clock.clone();
        self.write(move |c, tx| {
            let record: Option<(i64, String)> = c
                .prepare_cached("SELECT through_seq, holder FROM replies WHERE tenant = ?1 AND conversation_id = ?2")
                .map_err(db_err)?
                .query_row(params![tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(db_err)?;
            let Some((through, _)) = record.filter(|(_, owner)| *owner == holder) else {
                return Ok(ReplyOutcome::Lost);
            };
            let handled_by_bot = load_conversation(c, tx, &tenant, &id)?
                .is_some_and(|(conv, _, _)| conv.handler == Handler::Bot);
            let outcome = if !handled_by_bot {
                ReplyOutcome::HandedOver
            } else if let Some(new) = &reply {
                match append_tx(c, tx, clock.now_ms(), new)? {
                    Some(a) => ReplyOutcome::Stored(Box::new(a)),
                    None => ReplyOutcome::HandedOver,
                }
            } else {
                ReplyOutcome::Silent
            };
            let more = through as u64 > through_seq && matches!(outcome, ReplyOutcome::Stored(_) | ReplyOutcome::Silent);
            let sql = if more {
                "UPDATE replies SET holder = '', lease_until = 0 WHERE tenant = ?1 AND conversation_id = ?2"
            } else {
                "DELETE FROM replies WHERE tenant = ?1 AND conversation_id = ?2"
            };
            c.prepare_cached(sql).map_err(db_err)?.execute(params![tenant, id]).map_err(db_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn append_event(
        &self,
        tenant: &str,
        kind: &str,
        data: Value,
        conversation_id: Option<&str>,
    ) -> Result<Option<TenantEvent>> {
        let (tenant, kind, conv_id) = (
            tenant.to_owned(),
            kind.to_owned(),
            conversation_id.map(str::to_owned),
        );
        let clock = self.clock.clone();
        self.write(move |c, tx| {
            let now = clock.now_ms();
            let mut data = data;
            if let Some(id) = &conv_id {
                let Some((mut conv, seq, created)) = load_conversation(c, tx, &tenant, id)? else {
                    return Ok(None);
                };
                if kind == "conversation:qualified" {
                    conv.qualified = true;
                    conv.updated_at = format_ms(now);
                    let json = to_json(&conv);
                    save_conversation(c, tx, conv, seq, created, now)?;
                    tx.publish(Published::ConversationUpdated {
                        tenant: tenant.as_str().into(),
                        conversation_id: id.as_str().into(),
                        json: json.clone().into(),
                    });
                    return append_event_tx(c, tx, &tenant, &kind, json, now).map(Some);
                }
                if let Value::Object(map) = &mut data {
                    // The checked id, whatever the data said.
                    map.insert("conversationId".into(), Value::String(id.clone()));
                }
            }
            append_event_tx(c, tx, &tenant, &kind, to_json(&data), now).map(Some)
        })
        .await
    }

    async fn events(&self, tenant: &str, after: u64, limit: usize) -> Result<EventsPage> {
        let tenant = tenant.to_owned();
        self.read(move |c| {
            let pruned = pruned_through(c, &tenant)?;
            let mut stmt = c
                .prepare_cached(
                    "SELECT e.offset, e.created_ms, e.kind, COALESCE(m.json, e.data) FROM tenant_events e
                     LEFT JOIN messages m ON m.conversation_id = e.conversation_id AND m.seq = e.seq
                     WHERE e.tenant = ?1 AND e.offset > ?2 ORDER BY e.offset LIMIT ?3",
                )
                .map_err(db_err)?;
            let mut events = stmt
                .query_map(params![tenant, after.min(i64::MAX as u64) as i64, (limit + 1) as i64], |r| {
                    Ok(TenantEvent { offset: r.get::<_, i64>(0)? as u64, created_ms: r.get(1)?, kind: r.get(2)?, data: r.get(3)? })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            let has_more = events.len() > limit;
            events.truncate(limit);
            Ok(EventsPage { events, has_more, recovered: after >= pruned })
        })
        .await
    }

    async fn event_kinds(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let tenant = tenant.to_owned();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT kind, COUNT(*) FROM (SELECT kind FROM tenant_events
                     WHERE tenant = ?1 AND offset > ?2 ORDER BY offset LIMIT ?3) GROUP BY kind",
                )
                .map_err(db_err)?;
            let kinds = stmt
                .query_map(
                    params![
                        tenant,
                        after.min(i64::MAX as u64) as i64,
                        limit.min(i64::MAX as usize) as i64
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
                )
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)?;
            Ok(kinds)
        })
        .await
    }

    async fn last_offset(&self, tenant: &str) -> Result<u64> {
        let tenant = tenant.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT last_offset FROM tenant_logs WHERE tenant = ?1")
                    .map_err(db_err)?
                    .query_row(params![tenant], |r| r.get::<_, i64>(0))
                    .optional()
                    .map_err(db_err)?
                    .unwrap_or(0) as u64,
            )
        })
        .await
    }

    async fn maintain(&self, now: i64) -> Result<()> {
        let retention = self.retention;
        self.write(move |c, _| {
            c.execute("DELETE FROM nonces WHERE expires_ms < ?1", params![now])
                .map_err(db_err)?;
            Ok(())
        })
        .await?;
        // The log's prefix goes in slices of PRUNE_SLICE events, each its own write: one
        // big delete would hold every message queued behind it.
        while self
            .write(move |c, _| prune_logs(c, retention, now))
            .await?
        {}
        Ok(())
    }

    async fn webhook_state(&self, tenant: &str, webhook: &str) -> Result<Option<WebhookState>> {
        let (tenant, webhook) = (tenant.to_owned(), webhook.to_owned());
        self.read(move |c| {
            let row: Option<(i64, String)> = c
                .prepare_cached(
                    "SELECT offset, state FROM webhooks WHERE tenant = ?1 AND webhook = ?2",
                )
                .map_err(db_err)?
                .query_row(params![tenant, webhook], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(db_err)?;
            row.map(|(offset, state)| {
                let mut state: WebhookState = serde_json::from_str(&state).map_err(json_err)?;
                state.offset = offset as u64;
                Ok(state)
            })
            .transpose()
        })
        .await
    }

    async fn save_webhook_state(
        &self,
        tenant: &str,
        webhook: &str,
        state: &WebhookState,
    ) -> Result<()> {
        let (tenant, webhook) = (tenant.to_owned(), webhook.to_owned());
        let offset = state.offset.min(i64::MAX as u64) as i64;
        let json = serde_json::to_string(state).map_err(json_err)?;
        self.write(move |c, _| {
            c.prepare_cached(
                "INSERT INTO webhooks (tenant, webhook, offset, state) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, webhook) DO UPDATE SET offset = MAX(offset, excluded.offset), state = excluded.state",
            )
            .map_err(db_err)?
            .execute(params![tenant, webhook, offset, json])
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let now = self.clock.now_ms();
        self.write(move |c, _| {
            let n = c
                .prepare_cached(
                    "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4",
                )
                .map_err(db_err)?
                .execute(params![name, holder, now.saturating_add(ttl_ms), now])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |c, _| {
            c.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn create_attachment(&self, record: &AttachmentRecord) -> Result<()> {
        let record = record.clone();
        self.write(move |c, _| {
            c.prepare_cached(
                "INSERT INTO attachments (id, tenant, conversation_id, created_ms, message_seq, json)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            )
            .map_err(db_err)?
            .execute(params![record.id, record.tenant, record.conversation_id, record.created_ms, to_json(&record)])
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn attachment(&self, tenant: &str, id: &str) -> Result<Option<AttachmentRecord>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.read(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT json FROM attachments WHERE id = ?1 AND tenant = ?2")
                .map_err(db_err)?
                .query_row(params![id, tenant], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            json.map(|j| serde_json::from_str(&j).map_err(json_err))
                .transpose()
        })
        .await
    }

    async fn stale_attachments(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<AttachmentRecord>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT json FROM attachments WHERE message_seq IS NULL AND created_ms < ?1
                     ORDER BY created_ms LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map(params![before_ms, limit as i64], |r| r.get::<_, String>(0))
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            rows.iter()
                .map(|j| serde_json::from_str(j).map_err(json_err))
                .collect()
        })
        .await
    }

    async fn delete_unsent_attachment(&self, tenant: &str, id: &str) -> Result<bool> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.write(move |c, _| {
            let n = c
                .prepare_cached(
                    "DELETE FROM attachments WHERE id = ?1 AND tenant = ?2 AND message_seq IS NULL",
                )
                .map_err(db_err)?
                .execute(params![id, tenant])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn presence_beat(
        &self,
        tenant: &str,
        entries: &[PresenceEntry],
        expires_ms: i64,
    ) -> Result<()> {
        let mut all = self.presence.lock();
        let t = all.entry(tenant.to_owned()).or_default();
        for e in entries {
            t.insert(
                (e.agent_id.clone(), e.node.clone()),
                (e.clone(), expires_ms),
            );
        }
        Ok(())
    }

    async fn presence_leave(&self, tenant: &str, agent_id: &str, node: &str) -> Result<()> {
        if let Some(t) = self.presence.lock().get_mut(tenant) {
            t.remove(&(agent_id.to_owned(), node.to_owned()));
        }
        Ok(())
    }

    async fn presence(&self, tenant: &str, now_ms: i64) -> Result<Vec<PresenceEntry>> {
        let mut all = self.presence.lock();
        let Some(t) = all.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        t.retain(|_, (_, expires)| *expires > now_ms);
        Ok(t.values().map(|(e, _)| e.clone()).collect())
    }
}

#[async_trait]
impl Broker for SqliteStore {
    fn set_sink(&self, sink: Arc<dyn EventSink>) {
        let _ = self.sink.set(sink);
    }

    /// One node: every event is local, nothing to subscribe to.
    fn subscribe(&self, _channel: &Channel) {}

    fn unsubscribe(&self, _channel: &Channel) {}

    async fn publish_ephemeral(&self, event: Published) -> Result<()> {
        if let Some(sink) = self.sink.get() {
            sink.publish(event);
        }
        Ok(())
    }
}
