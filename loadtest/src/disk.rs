//! The disk's own durability cost, measured beside a run: a thread that writes 4 KiB and
//! `fdatasync`s it, over and over, in a file of the directory given with `--fsync-probe`
//! (the directory of the gateway's SQLite database). Durable-store latency targets are
//! stated against this figure, taken on the same disk, in the same run, under the same
//! load — a fixed number from another day or machine would mean nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::stats::{Latency, LatencySummary};

/// Pause between two probes: a steady trickle (~200/s), small next to a gateway's own
/// WAL traffic.
const PAUSE: Duration = Duration::from_millis(5);

/// A running probe; [`FsyncProbe::finish`] stops it and returns what it measured.
pub struct FsyncProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Latency>>,
    path: PathBuf,
}

impl FsyncProbe {
    /// Starts probing in `dir` (a file `confab-fsync-probe` is created there and removed
    /// at the end).
    pub fn start(dir: &Path) -> Result<FsyncProbe> {
        let path = dir.join("confab-fsync-probe");
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fsync-probe".into())
            .spawn(move || {
                let latency = Latency::new();
                let block = [0x5au8; 4096];
                while !stopping.load(Ordering::Relaxed) {
                    // Appends, as a WAL does: the size changes, so fdatasync must also
                    // persist it.
                    file.write_all(&block)?;
                    let t = Instant::now();
                    file.sync_data()?;
                    latency.record(0, t.elapsed().as_micros() as u64);
                    std::thread::sleep(PAUSE);
                }
                Ok(latency)
            })?;
        Ok(FsyncProbe { stop, thread, path })
    }

    /// Stops the probe and summarises the `fdatasync` latencies it saw.
    pub fn finish(self) -> Result<LatencySummary> {
        self.stop.store(true, Ordering::Relaxed);
        let latency = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the fsync probe panicked"))?
            .context("fsync probe")?;
        let _ = std::fs::remove_file(&self.path);
        Ok(latency.summary())
    }
}
