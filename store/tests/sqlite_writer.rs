//! The SQLite writer's housekeeping on a real database file: the WAL is rewound under
//! steady writes (not left to grow), the log's prefix is pruned in slices, and what was
//! acknowledged is there after a reopen.

use std::path::Path;
use std::sync::Arc;

use confab_store::{Retention, Store};
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
