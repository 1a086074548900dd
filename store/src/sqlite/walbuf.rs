//! A VFS for the writer's connection that writes each commit's WAL frames with one
//! `pwrite` instead of two per page.
//!
//! SQLite writes a WAL frame as two writes: its 24-byte header, then the page. A group
//! commit of ~140 pages was ~280 `pwrite` calls, and each touches two or three page-cache
//! folios: ~0.5 ms of kernel time per commit, about a tenth of the CPU of a durable send.
//! Gathered into one buffer and written in pieces of 124 KiB (the most the default VFS
//! writes per call), the same bytes cost ~0.1 ms.
//!
//! This VFS is the default one (unix) with a different `xOpen`: files other than the WAL
//! are the default's own files, untouched. A WAL file is wrapped, and its writes are held
//! back only while SQLite appends frames:
//!
//! - a frame header starts (or continues) the pending run; everything contiguous with the
//!   run joins it;
//! - **the commit frame's page ends the run, which is written there and then**, inside the
//!   `xWrite` call: its error (a full disk) is SQLite's error, and the transaction fails
//!   as it would have. So a commit's frames are in the file before SQLite publishes the
//!   commit in the WAL index, where readers and the checkpointer (other connections, the
//!   default VFS) find them, and before the syncer's `fdatasync` (see `writer`);
//! - any other write — the WAL header, a frame rewritten in place, a checksum rewrite —
//!   and every other call (read, sync, truncate, size, close, file control) first writes
//!   what is pending, then does what it was asked, in the order SQLite asked.
//!
//! What is pending when a call fails belongs to the transaction that fails with it, and
//! is dropped. What can be pending after a call returns is only frames of a transaction
//! not yet committed (spilled pages): never something a commit or a reader relies on.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the writer's connection opens its database with.
pub(super) const NAME: &CStr = c"confab-walbuf";

const FRAME_HEADER: usize = 24;
/// A run longer than this (a huge transaction) is written out before it grows further.
const MAX_PENDING: usize = 4 << 20;
/// The most the default (unix) VFS writes per call: it masks the length with `0x1ffff`.
const MAX_WRITE: usize = 124 << 10;

/// A wrapped WAL file: SQLite's `sqlite3_file` header first, the default VFS's own file
/// object at [`REAL_OFFSET`] of the same allocation.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Bytes not yet written, meant for `start..start + len`.
    pending: Vec<u8>,
    start: i64,
    /// The last pending bytes are a commit frame's header: its page ends the run.
    commit_page_next: bool,
}

const REAL_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

/// Registers the VFS once per process (it is not the default one).
pub(super) fn register() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: `sqlite3_vfs_find` initialises SQLite; the default VFS lives for the
            // process. The new VFS is leaked on purpose: SQLite keeps a pointer to it.
            unsafe {
                let real = ffi::sqlite3_vfs_find(std::ptr::null());
                if real.is_null() {
                    return Err("SQLite has no default VFS".into());
                }
                let mut vfs: ffi::sqlite3_vfs = *real;
                vfs.szOsFile = (REAL_OFFSET + (*real).szOsFile as usize) as c_int;
                vfs.pNext = std::ptr::null_mut();
                vfs.zName = NAME.as_ptr();
                vfs.pAppData = real.cast();
                vfs.xOpen = Some(open);
                match ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0) {
                    ffi::SQLITE_OK => Ok(()),
                    rc => Err(format!("registering the WAL VFS: SQLite error {rc}")),
                }
            }
        })
        .clone()
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
    let Some(real_open) = (*real_vfs).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let real = file
        .cast::<u8>()
        .add(REAL_OFFSET)
        .cast::<ffi::sqlite3_file>();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if (*real).pMethods.is_null() {
        (*file).pMethods = std::ptr::null();
        return rc;
    }
    file.cast::<WalFile>().write(WalFile {
        base: ffi::sqlite3_file {
            pMethods: &WAL_METHODS,
        },
        real,
        pending: Vec::new(),
        start: 0,
        commit_page_next: false,
    });
    rc
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // No shared memory and no memory mapping: SQLite uses neither on a WAL file.
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// SAFETY (every function below): SQLite calls them only with a file `open` wrapped, one
/// call at a time per file (the writer's connection is used by one thread).
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *file.cast::<WalFile>()
}

impl WalFile {
    unsafe fn methods(&self) -> &ffi::sqlite3_io_methods {
        &*(*self.real).pMethods
    }

    /// Writes the pending run, if any. It is dropped either way (module doc).
    unsafe fn flush(&mut self) -> c_int {
        self.commit_page_next = false;
        if self.pending.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Some(write) = self.methods().xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut offset = self.start;
        let mut rc = ffi::SQLITE_OK;
        for chunk in self.pending.chunks(MAX_WRITE) {
            rc = write(
                self.real,
                chunk.as_ptr().cast(),
                chunk.len() as c_int,
                offset,
            );
            if rc != ffi::SQLITE_OK {
                break;
            }
            offset += chunk.len() as i64;
        }
        self.pending.clear();
        rc
    }
}

fn is_commit_header(bytes: &[u8]) -> bool {
    bytes.len() == FRAME_HEADER && bytes[4..8] != [0; 4]
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let w = wal(file);
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
    let contiguous = !w.pending.is_empty() && offset == w.start + w.pending.len() as i64;
    if contiguous {
        let ends_commit = w.commit_page_next;
        w.pending.extend_from_slice(bytes);
        w.commit_page_next = is_commit_header(bytes);
        if ends_commit || w.pending.len() >= MAX_PENDING {
            return w.flush();
        }
        return ffi::SQLITE_OK;
    }
    let rc = w.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // Only a frame header starts a run; a commit frame alone (a one-page commit, or its
    // header rewritten with new checksums) is written at once.
    if bytes.len() == FRAME_HEADER && !is_commit_header(bytes) {
        w.pending.extend_from_slice(bytes);
        w.start = offset;
        return ffi::SQLITE_OK;
    }
    match w.methods().xWrite {
        Some(real) => real(w.real, data, amount, offset),
        None => ffi::SQLITE_IOERR_WRITE,
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let w = wal(file);
    let flushed = w.flush();
    let rc = match w.methods().xClose {
        Some(real) => real(w.real),
        None => ffi::SQLITE_OK,
    };
    std::ptr::drop_in_place(&mut w.pending);
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        rc
    }
}

/// Writes what is pending, then forwards the call to the default VFS's file.
macro_rules! after_flush {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let w = wal(file);
            let rc = w.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match w.methods().$method {
                Some(real) => real(w.real, $($arg),*),
                None => ffi::SQLITE_IOERR,
            }
        }
    };
}

/// Forwards the call to the default VFS's file.
macro_rules! forward {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let w = wal(file);
            match w.methods().$method {
                Some(real) => real(w.real, $($arg),*),
                None => $missing,
            }
        }
    };
}

after_flush!(read, xRead, (buf: *mut c_void, amount: c_int, offset: i64));
after_flush!(truncate, xTruncate, (size: i64));
after_flush!(sync, xSync, (flags: c_int));
after_flush!(file_size, xFileSize, (size: *mut i64));
after_flush!(file_control, xFileControl, (op: c_int, arg: *mut c_void));
forward!(lock, xLock, (level: c_int), ffi::SQLITE_OK);
forward!(unlock, xUnlock, (level: c_int), ffi::SQLITE_OK);
forward!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int), ffi::SQLITE_OK);
forward!(sector_size, xSectorSize, (), 4096);
forward!(device_characteristics, xDeviceCharacteristics, (), 0);

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection, OpenFlags};

    type State = (i64, i64, String);

    fn state(c: &Connection) -> State {
        c.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0), coalesce(max(v), '') FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    /// After every commit, the files hold it: another connection reads it, and a copy of
    /// the files — what a crash right then would leave — recovers to exactly it. The
    /// transactions are larger than the writer's page cache, so pages spill into the WAL
    /// before the commit and are rewritten in place, which makes SQLite rewrite the frames'
    /// checksums after the commit frame: the paths where a held-back write would be lost.
    #[test]
    fn every_commit_is_in_the_files_when_it_returns() {
        super::register().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer =
            Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), super::NAME).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = 8;
                 PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
            )
            .unwrap();
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut last = state(&reader);
        for round in 0..6 {
            writer.execute_batch("BEGIN").unwrap();
            for k in 0..400 {
                writer
                    .execute(
                        "INSERT INTO t (k, v) VALUES (?1, ?2)
                         ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                        params![k, format!("{round}:{k}:{}", "x".repeat(200 + round))],
                    )
                    .unwrap();
            }
            writer
                .execute("UPDATE t SET v = v || '!' WHERE k < 50", [])
                .unwrap();
            assert_eq!(state(&reader), last, "nothing visible before the commit");
            writer.execute_batch("COMMIT").unwrap();
            let committed = state(&writer);
            assert_eq!(
                state(&reader),
                committed,
                "round {round}: read by another connection"
            );

            let copy = dir.path().join(format!("crash{round}.sqlite"));
            std::fs::copy(&path, &copy).unwrap();
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            let mut copy_wal = copy.clone().into_os_string();
            copy_wal.push("-wal");
            std::fs::copy(&wal, &copy_wal).unwrap();
            let recovered = Connection::open(&copy).unwrap();
            assert_eq!(
                state(&recovered),
                committed,
                "round {round}: recovered from a copy"
            );
            last = committed;
        }
    }
}
