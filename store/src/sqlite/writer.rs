//! The SQLite backend's writer: one thread owns the only writing connection and commits
//! queued writes in groups; a *syncer* thread makes them durable and a *checkpointer* thread
//! folds the WAL back into the database, both off the writer's path.
//!
//! **Group commit.** Writes are closures queued to the writer thread. It takes whatever is
//! queued (up to [`MAX_BATCH`]), runs each in its own savepoint inside one `BEGIN IMMEDIATE …
//! COMMIT`, and answers nobody before that commit is durable. Many concurrent writes thus
//! share one fsync. A failing write rolls back its savepoint only. A message without files
//! has no savepoint ([`unguarded`]: all that can refuse it comes before its first change;
//! the savepoint's statement journal was a good part of its cost): if it fails after all,
//! the whole batch rolls back and is answered "not committed".
//!
//! **Cached rows.** The writer keeps the conversation rows it last read or wrote, and the
//! head of each tenant's log ([`super::rows`]), so that a message does not re-read and
//! re-parse its conversation nor upsert its log's head. Being the only writer, it knows
//! every change; it forgets them all when a savepoint or the transaction rolls back.
//!
//! **Durability off the writer's path** (`synchronous=full`, the default). SQLite's own
//! `FULL` fsyncs the WAL inside `COMMIT`, so the writer would sit idle through every fsync
//! and a batch arriving meanwhile would wait for it and then for its own. Instead the
//! connection commits with SQLite's `NORMAL` (`COMMIT` writes the WAL frames, no fsync) and
//! hands the batch to the syncer, which `fdatasync`s the WAL file and only then publishes the
//! batch's events and answers its callers — while the writer already runs the next batch.
//! While the syncer is busy the writer keeps its transaction open and runs what arrives in
//! it, committing once the syncer is free: one commit per fsync, so a page several writes
//! touch is written to the WAL once, not once per small commit (the next batch is
//! assembled while the previous one fsyncs). An answer still means "on
//! disk", as with `FULL`: the WAL is the same file, written and recovered the same way, and
//! since its frames carry cumulative checksums, recovery stops at the first frame that did
//! not reach the disk — a later commit never survives without an earlier one.
//!
//! **Reads see only durable data.** A WAL reader may see a commit the syncer has not yet
//! made durable. A pooled read therefore waits, after running, until every commit that can
//! be in its snapshot is durable ([`Progress::settle`]): no client ever sees a message that a
//! crash could take back (and whose id a later message would then reuse).
//!
//! **Checkpoints off the writer's path.** `wal_autocheckpoint` would run a checkpoint — page
//! copies and an fsync of the database — inside the `COMMIT` that crosses the threshold:
//! a stall for everyone queued behind it. The checkpointer thread runs a `PASSIVE`
//! checkpoint on a connection of its own every [`CHECKPOINT_EVERY`] instead. Under steady
//! writes it never quite catches up (the writer commits while it copies), and SQLite only
//! rewinds the WAL to its start when a write begins with everything copied; so once the WAL
//! holds `wal_max_mb` ([`FileOptions`](super::FileOptions)) — SQLite's WAL hook tells the
//! writer its length after every commit — the writer asks the checkpointer for a pass at
//! once and, right after it, copies the remainder itself between two batches (little: what
//! was committed during that pass, so the pause is about one fsync); the next commit
//! rewinds the WAL. Should the checkpointer not answer (a starved machine), the writer does
//! it all itself at twice the limit: the WAL stays bounded either way.
//!
//! **Order.** The writer is the only writer and the syncer finishes batches in commit
//! order, so sequence numbers are assigned in commit order and the sink sees events in that
//! order: per-conversation and per-tenant order is the order of the log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, watch};

use super::rows::{Heads, Rows};
use super::{db_err, Sync};
use crate::{EventSink, Published, Result, StoreError};

/// Most writes committed together.
pub const MAX_BATCH: usize = 512;
/// A batch this slow from `BEGIN` to durable is logged as a warning (with its `fdatasync`'s
/// share): the stall a visitor would feel, for the operator to see.
const SLOW: Duration = Duration::from_millis(50);
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// After a rewind that could not complete (a reader held an old snapshot), how long the
/// writer waits before trying again.
const REWIND_RETRY: Duration = Duration::from_millis(50);

/// The writer's and the checkpointer's hand-shake for rewinding the WAL (module doc).
#[derive(Default)]
struct Rewind {
    /// Set by the writer: the WAL is long; run a pass now.
    wanted: AtomicBool,
    /// Set by the checkpointer after a pass made while `wanted`: little is left to copy.
    ready: AtomicBool,
}

/// Answers a write's caller: `true` once its batch is durable, `false` if it never will be.
pub(super) type Completion = Box<dyn FnOnce(bool) + Send>;
/// A write: runs inside the writer's transaction, collects its events, returns its answer.
pub(super) type WriteOp = Box<dyn FnOnce(&Connection, &mut Tx) -> Completion + Send>;

/// What a write works with besides its SQL: the events its batch publishes once durable,
/// and the writer's cache of conversation rows ([`Rows`]) and log heads ([`Heads`]),
/// which live as long as the writer and are emptied whenever the database may not hold
/// what they say (a rolled-back savepoint, a failed commit).
#[derive(Default)]
pub(super) struct Tx {
    events: Vec<Published>,
    pub rows: Rows,
    pub heads: Heads,
    /// A write without a savepoint ([`unguarded`]) failed after changing something, or
    /// SQLite rolled the transaction back itself: it must end, as a whole.
    broken: bool,
}

impl Tx {
    /// Forgets what the transaction did: it rolled back.
    fn forget(&mut self) {
        self.events.clear();
        self.rows.clear();
        self.heads.clear();
    }

    /// Publishes `event` once the batch is durable (not at all if this write rolls back).
    pub fn publish(&mut self, event: Published) {
        self.events.push(event);
    }
}
/// A read of an in-memory database (which only the writer's connection can see).
pub(super) type ReadOp = Box<dyn FnOnce(&Connection) + Send>;

pub(super) enum Cmd {
    Write(WriteOp),
    Read(ReadOp),
    /// From the syncer: it has finished every batch it was given (a wake-up; the state is
    /// [`Progress::with_syncer`]).
    Synced,
}

/// A database file's writer settings.
pub(super) struct FileDb<'a> {
    pub path: &'a Path,
    /// `Full`: answers after the syncer's `fdatasync` of the WAL; `Normal`: at commit
    /// (SQLite then syncs at checkpoints only), as in-memory databases are.
    pub sync: Sync,
    /// WAL length (in pages) from which the writer finishes a checkpoint itself so that
    /// the WAL rewinds instead of growing.
    pub wal_max_pages: i64,
}

/// How far commits have got; shared by the writer, the syncer and the readers.
pub(super) struct Progress {
    /// Commits begun, numbered from 1. Counted *before* `COMMIT`, so any snapshot that
    /// includes a commit was taken after its number was counted.
    begun: AtomicU64,
    /// Every commit up to this number is durable (or rolled back).
    settled: watch::Sender<u64>,
    /// An fsync failed: what it should have made durable may be lost, and the database no
    /// longer says what was answered. No write is accepted any more (restart the process:
    /// recovery reads the WAL as the disk has it).
    failed: AtomicBool,
    /// The WAL's length in pages after the writer's last commit (file databases).
    wal_pages: AtomicI64,
    /// Committed batches the syncer has not finished yet.
    with_syncer: AtomicU64,
}

impl Progress {
    pub(super) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            begun: AtomicU64::new(0),
            settled: watch::channel(0).0,
            failed: AtomicBool::new(false),
            wal_pages: AtomicI64::new(0),
            with_syncer: AtomicU64::new(0),
        })
    }

    /// Waits until every commit begun so far is durable: called after a read, so that what
    /// it saw cannot be taken back by a crash.
    pub(super) async fn settle(&self) {
        let need = self.begun.load(Ordering::SeqCst);
        if *self.settled.borrow() >= need {
            return;
        }
        let mut settled = self.settled.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = settled.wait_for(|n| *n >= need).await;
    }

    /// `Err` once an fsync has failed.
    pub(super) fn healthy(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "an fsync of the SQLite WAL failed; writes are refused until the gateway restarts"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One group commit on its way to its callers.
struct Batch {
    number: u64,
    /// When its transaction began: a batch that takes [`SLOW`] or more from here to durable
    /// is logged, with where the time went.
    begun_at: std::time::Instant,
    committed: bool,
    outbox: Vec<Published>,
    completions: Vec<Completion>,
}

impl Batch {
    /// Publishes the events (if the batch is durable) and answers the callers.
    fn finish(self, sink: &OnceLock<Arc<dyn EventSink>>, durable: bool) {
        let done = self.committed && durable;
        if done {
            if let Some(sink) = sink.get() {
                for event in self.outbox {
                    sink.publish(event);
                }
            }
        }
        for c in self.completions {
            c(done);
        }
    }
}

/// Starts the writer (and, for a file database at `file`, its syncer and checkpointer).
/// The writer exits once every sender of `rx` is gone and what was queued is committed;
/// joining it joins the others.
pub(super) fn start(
    conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    wake: mpsc::WeakSender<Cmd>,
    sink: Arc<OnceLock<Arc<dyn EventSink>>>,
    progress: Arc<Progress>,
    file: Option<FileDb>,
) -> Result<std::thread::JoinHandle<()>> {
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| StoreError::Internal(e.to_string()))
    };
    let mut helpers = Vec::new();
    let mut syncer = None;
    let mut stop_checkpointer = None;
    let mut rewind_at = None;
    if let Some(FileDb {
        path,
        sync,
        wal_max_pages,
    }) = file
    {
        // The writer never checkpoints on its own (see the module's doc). This must come
        // before the WAL hook: `wal_autocheckpoint` replaces the connection's hook.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(db_err)?;
        watch_wal_length(&conn, &progress.wal_pages);
        let rewind = Arc::new(Rewind::default());
        rewind_at = Some((wal_max_pages, rewind.clone()));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let checkpointer = Connection::open(path).map_err(db_err)?;
        checkpointer
            .execute_batch("PRAGMA busy_timeout = 1000; PRAGMA wal_autocheckpoint = 0;")
            .map_err(db_err)?;
        helpers.push(spawn(
            "confab-sqlite-checkpoint",
            Box::new(move || checkpoint_loop(checkpointer, stopped, &rewind)),
        )?);
        stop_checkpointer = Some(stop);
        if sync == Sync::Full {
            // The connection itself commits with `synchronous=NORMAL` (set when opened).
            let wal = open_wal(path)?;
            let (tx, batches) = std::sync::mpsc::channel::<Batch>();
            let (sink, progress) = (sink.clone(), progress.clone());
            helpers.push(spawn(
                "confab-sqlite-sync",
                Box::new(move || sync_loop(wal, batches, &sink, &progress, &wake)),
            )?);
            syncer = Some(tx);
        }
    }
    spawn(
        "confab-sqlite-writer",
        Box::new(move || {
            write_loop(&conn, rx, &sink, &progress, syncer, rewind_at.as_ref());
            drop(stop_checkpointer);
            for h in helpers {
                let _ = h.join();
            }
            // Everything is durable now; leave a short WAL for the next start.
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
            unwatch_wal_length(&conn);
        }),
    )
}

/// Called by SQLite after each commit of the writer's connection with the WAL's length.
unsafe extern "C" fn on_wal_commit(
    length: *mut std::ffi::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _schema: *const std::ffi::c_char,
    pages: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: `length` is the `AtomicI64` registered by `watch_wal_length`, which lives in
    // `Progress` and so outlives the hook (removed by `unwatch_wal_length` first).
    let length = unsafe { &*(length as *const AtomicI64) };
    length.store(pages.into(), Ordering::Relaxed);
    rusqlite::ffi::SQLITE_OK
}

/// Keeps `length` up to date with the WAL's length (in pages) after every commit of
/// `conn`. rusqlite has no safe wrapper for SQLite's WAL hook.
fn watch_wal_length(conn: &Connection, length: &AtomicI64) {
    // SAFETY: the handle is valid while `conn` is; `length` outlives the registration
    // (see `on_wal_commit`), and the hook only runs on the thread using `conn`.
    unsafe {
        rusqlite::ffi::sqlite3_wal_hook(
            conn.handle(),
            Some(on_wal_commit),
            length as *const AtomicI64 as *mut std::ffi::c_void,
        );
    }
}

fn unwatch_wal_length(conn: &Connection) {
    // SAFETY: removes the hook; the handle is valid while `conn` is.
    unsafe {
        rusqlite::ffi::sqlite3_wal_hook(conn.handle(), None, std::ptr::null_mut());
    }
}

/// The WAL file, for the syncer's `fdatasync`s. SQLite keeps it (same inode) while any
/// connection is open, and the writer's connection outlives the syncer. Its directory is
/// synced once, so that the file itself survives a power loss.
fn open_wal(db: &Path) -> Result<File> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let unavailable =
        |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", wal.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal)
        .map_err(unavailable)?;
    let dir = match db.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_owned(),
        None => PathBuf::from("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(unavailable)?;
    Ok(file)
}

fn write_loop(
    conn: &Connection,
    mut rx: mpsc::Receiver<Cmd>,
    sink: &OnceLock<Arc<dyn EventSink>>,
    progress: &Progress,
    syncer: Option<std::sync::mpsc::Sender<Batch>>,
    rewind_at: Option<&(i64, Arc<Rewind>)>,
) {
    let mut next_rewind = std::time::Instant::now();
    let mut tx = Tx::default();
    // The transaction being filled (`None` before its first write), and its write count.
    let mut open: Option<(Batch, usize)> = None;
    let mut reads: Vec<ReadOp> = Vec::new();
    loop {
        // With a transaction open, this also wakes on the syncer's `Synced`.
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write(op) => {
                    let (batch, writes) = open.get_or_insert_with(|| (begin(conn, progress), 0));
                    // A write that cannot run is dropped: its caller gets `Unavailable`.
                    if batch.committed {
                        batch.completions.push(op(conn, &mut tx));
                    }
                    *writes += 1;
                    if std::mem::take(&mut tx.broken) {
                        tracing::error!(
                            "sqlite: a write failed half-way; its batch is rolled back"
                        );
                        let _ = conn.execute_batch("ROLLBACK");
                        tx.forget();
                        if let Some((mut batch, _)) = open.take() {
                            // Answered "not committed"; the next write begins a new batch.
                            batch.committed = false;
                            commit(conn, batch, &mut tx, sink, progress, syncer.as_ref());
                        }
                    }
                }
                Cmd::Read(op) => reads.push(op),
                Cmd::Synced => {}
            }
            if open
                .as_ref()
                .is_some_and(|(_, writes)| *writes >= MAX_BATCH)
            {
                break;
            }
            next = rx.try_recv().ok();
        }
        let syncer_busy = progress.with_syncer.load(Ordering::SeqCst) > 0;
        if let Some((batch, _)) = open.take_if(|(_, writes)| !syncer_busy || *writes >= MAX_BATCH) {
            commit(conn, batch, &mut tx, sink, progress, syncer.as_ref());
        }
        if open.is_some() {
            continue; // until the syncer is free
        }
        // Reads (in-memory databases only, which have no syncer) follow the commit.
        for r in reads.drain(..) {
            r(conn);
        }
        if let Some((max, rewind)) = rewind_at {
            let pages = progress.wal_pages.load(Ordering::Relaxed);
            let now = std::time::Instant::now();
            if pages >= *max && now >= next_rewind {
                if rewind.ready.swap(false, Ordering::SeqCst) || pages >= 2 * max {
                    // Copies what the checkpointer has not copied yet; the next commit then
                    // rewinds the WAL. If a reader holds an old snapshot it cannot: the
                    // next attempt comes a bit later.
                    let r = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
                    tracing::debug!(took = ?now.elapsed(), "sqlite: the writer finished a checkpoint to rewind the WAL");
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "sqlite: checkpoint failed");
                    }
                    rewind.wanted.store(false, Ordering::SeqCst);
                    next_rewind = std::time::Instant::now() + REWIND_RETRY;
                } else {
                    rewind.wanted.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    if let Some((batch, _)) = open.take() {
        commit(conn, batch, &mut tx, sink, progress, syncer.as_ref());
    }
    for r in reads {
        r(conn);
    }
}

/// Begins the writer's next transaction; `committed` (so far) says whether it began.
fn begin(conn: &Connection, progress: &Progress) -> Batch {
    let began = progress.healthy().is_ok()
        && match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "sqlite: cannot begin a transaction");
                false
            }
        };
    Batch {
        number: 0,
        begun_at: std::time::Instant::now(),
        committed: began,
        outbox: Vec::new(),
        completions: Vec::new(),
    }
}

/// Commits the writer's transaction and hands it to the syncer, or (without one) finishes
/// it at once.
fn commit(
    conn: &Connection,
    mut batch: Batch,
    tx: &mut Tx,
    sink: &OnceLock<Arc<dyn EventSink>>,
    progress: &Progress,
    syncer: Option<&std::sync::mpsc::Sender<Batch>>,
) {
    batch.number = progress.begun.fetch_add(1, Ordering::SeqCst) + 1;
    batch.committed = batch.committed
        && match tx
            .heads
            .flush(conn)
            .and_then(|()| conn.execute_batch("COMMIT").map_err(db_err))
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "sqlite: commit failed; the batch is rolled back");
                let _ = conn.execute_batch("ROLLBACK");
                tx.forget();
                false
            }
        };
    batch.outbox = std::mem::take(&mut tx.events);
    let number = batch.number;
    if let Some(syncer) = syncer {
        progress.with_syncer.fetch_add(1, Ordering::SeqCst);
        // The syncer only stops after the writer: a failed send cannot happen, but must
        // not leave callers waiting if it did.
        let Err(std::sync::mpsc::SendError(batch)) = syncer.send(batch) else {
            return;
        };
        progress.with_syncer.fetch_sub(1, Ordering::SeqCst);
        batch.finish(sink, false);
    } else {
        batch.finish(sink, true);
    }
    progress.settled.send_replace(number);
}

/// Makes committed batches durable, in order, then finishes them (see the module's doc).
fn sync_loop(
    wal: File,
    batches: std::sync::mpsc::Receiver<Batch>,
    sink: &OnceLock<Arc<dyn EventSink>>,
    progress: &Progress,
    wake: &mpsc::WeakSender<Cmd>,
) {
    let mut slow = SlowLog::default();
    while let Ok(first) = batches.recv() {
        let mut ready = vec![first];
        ready.extend(batches.try_iter());
        let mut fsync_took = None;
        let durable = if ready.iter().any(|b| b.committed) {
            let t0 = std::time::Instant::now();
            let r = wal.sync_data();
            let took = t0.elapsed();
            tracing::trace!(?took, batches = ready.len(), "sqlite: WAL fsync");
            fsync_took = Some(took);
            match r {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "sqlite: fsync of the WAL failed; refusing writes until restarted");
                    progress.failed.store(true, Ordering::SeqCst);
                    false
                }
            }
        } else {
            true
        };
        let (last, count) = (ready.last().map_or(0, |b| b.number), ready.len() as u64);
        let age = ready[0].begun_at.elapsed();
        if age >= SLOW {
            if let Some(more) = slow.note() {
                tracing::warn!(
                    ?age,
                    fsync = ?fsync_took,
                    batches = count,
                    slow_batches_not_logged = more,
                    "sqlite: a batch took long from BEGIN to durable"
                );
            }
        }
        for batch in ready {
            batch.finish(sink, durable);
        }
        progress.settled.send_replace(last);
        if progress.with_syncer.fetch_sub(count, Ordering::SeqCst) == count {
            // Free: the writer may be holding a transaction open for us. A full queue
            // needs no wake-up (the writer is busy draining it), a closed one none either.
            if let Some(writer) = wake.upgrade() {
                let _ = writer.try_send(Cmd::Synced);
            }
        }
    }
}

/// At most one warning per second about slow batches (a slow disk makes every batch slow),
/// counting the ones it did not log.
#[derive(Default)]
struct SlowLog {
    last: Option<std::time::Instant>,
    missed: u64,
}

impl SlowLog {
    /// `Some(slow batches not logged since the last warning)` when this one may be logged.
    fn note(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            self.missed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.missed))
    }
}

/// Copies the WAL into the database every [`CHECKPOINT_EVERY`], or at once when the writer
/// wants to rewind it, until `stop`'s sender is dropped.
fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>, rewind: &Rewind) {
    let pause = || {
        if rewind.wanted.load(Ordering::SeqCst) {
            Duration::from_millis(1)
        } else {
            CHECKPOINT_EVERY
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(pause()) {
        let wanted = rewind.wanted.load(Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        });
        match pass {
            Ok(pass) => {
                tracing::trace!(took = ?t0.elapsed(), ?pass, "sqlite: checkpoint (busy, WAL pages)")
            }
            Err(e) => tracing::warn!(error = %e, "sqlite: checkpoint failed"),
        }
        if wanted {
            rewind.ready.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs one write in its own savepoint of the batch's transaction: if it fails, only its
/// own changes (and events) are undone — and the cached rows forgotten, since some may
/// be what it wrote.
pub(super) fn in_savepoint<T>(
    conn: &Connection,
    tx: &mut Tx,
    f: impl FnOnce(&Connection, &mut Tx) -> Result<T>,
) -> Result<T> {
    // Cached statements: a savepoint per write is on the hot path of every message.
    let exec = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map_err(db_err)
    };
    // The heads are written first: they may be read, and a rollback then only has to
    // forget those the write took.
    if let Err(e) = tx.heads.flush(conn) {
        tx.broken = true;
        return Err(e);
    }
    exec("SAVEPOINT op")?;
    let published = tx.events.len();
    let result = f(conn, tx).and_then(|r| exec("RELEASE op").map(|_| r));
    if result.is_err() {
        let _ = exec("ROLLBACK TO op");
        let _ = exec("RELEASE op");
        tx.events.truncate(published);
        tx.rows.clear();
        tx.heads.clear();
        // Some errors (I/O, a full disk) make SQLite roll back the whole transaction.
        tx.broken = conn.is_autocommit();
    }
    result
}

/// Runs one write without a savepoint of its own: for writes whose expected failures all
/// come before their first change, on the hot path, where the savepoint is a good part of
/// their cost (SQLite copies every page the write touches into its statement journal, and
/// runs two more statements). Should such a write fail after changing something anyway
/// (an I/O error), the whole transaction is rolled back: every write of its batch is
/// answered "not committed", none is half-done.
pub(super) fn unguarded<T>(
    conn: &Connection,
    tx: &mut Tx,
    f: impl FnOnce(&Connection, &mut Tx) -> Result<T>,
) -> Result<T> {
    let (changes, published, taken) = (conn.total_changes(), tx.events.len(), tx.heads.taken);
    let result = f(conn, tx);
    if result.is_err() {
        tx.events.truncate(published);
        tx.rows.clear();
        // In autocommit, SQLite has rolled the transaction back itself (some I/O errors).
        tx.broken =
            conn.total_changes() != changes || tx.heads.taken != taken || conn.is_autocommit();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_batches_are_logged_once_a_second_with_a_count_of_the_rest() {
        let mut log = SlowLog::default();
        assert_eq!(log.note(), Some(0));
        assert_eq!(log.note(), None);
        assert_eq!(log.note(), None);
        log.last = Some(std::time::Instant::now() - Duration::from_secs(2));
        assert_eq!(log.note(), Some(2), "the two not logged are counted");
        assert_eq!(log.note(), None);
    }
}
