//! Output: the run's parameters first (stdout), a progress line on stderr while it runs,
//! readable tables at the end, or one JSON document with `--json`. Also reads a server's
//! resident memory and open file count from `/proc`, so memory per connection can be
//! reported beside the throughput figures.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stats::LatencySummary;

/// Prints `name: value` lines for every parameter (secrets masked), unless JSON output
/// was asked for — then the parameters go into the final document instead.
pub fn print_params(scenario: &str, params: &Value, json: bool) {
    if json {
        return;
    }
    println!("== confab-loadtest {scenario} ==");
    if let Value::Object(map) = params {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in map {
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("  {k:<width$}  {shown}");
        }
    }
    println!();
}

/// Masks secret-bearing fields in a parameter object.
pub fn mask_secrets(mut params: Value) -> Value {
    if let Value::Object(map) = &mut params {
        for key in ["agent_secret", "server_key"] {
            if let Some(v) = map.get_mut(key) {
                *v = Value::String("***".into());
            }
        }
    }
    params
}

/// A progress reporter: at most one line per interval on stderr, overwritten in place on
/// a terminal and appended otherwise (so logs stay readable).
pub struct Progress {
    /// When the run started, for the elapsed-time prefix.
    start: Instant,
    /// When the last line was printed.
    last: Option<Instant>,
    /// Minimum time between lines.
    every: Duration,
    /// Whether stderr is a terminal (use `\r` and no newline).
    tty: bool,
    /// Whether a `\r` line is pending a newline.
    dirty: bool,
}

impl Progress {
    /// A reporter that prints at most once a second on a terminal, every 5 s otherwise.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        Self {
            start: Instant::now(),
            last: None,
            every,
            tty,
            dirty: false,
        }
    }

    /// Prints `line` if the interval has passed.
    pub fn tick(&mut self, line: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l < self.every) {
            return;
        }
        self.last = Some(now);
        let elapsed = (now - self.start).as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K[{elapsed:7.1}s] {}", line());
            self.dirty = true;
        } else {
            let _ = writeln!(err, "[{elapsed:7.1}s] {}", line());
        }
        let _ = err.flush();
    }

    /// Prints a one-off note on its own line (phase changes).
    pub fn note(&mut self, msg: impl AsRef<str>) {
        self.finish();
        let elapsed = self.start.elapsed().as_secs_f64();
        eprintln!("[{elapsed:7.1}s] {}", msg.as_ref());
    }

    /// Ends an in-place line with a newline.
    pub fn finish(&mut self) {
        if self.dirty {
            eprintln!();
            self.dirty = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A plain-text table with right-aligned numeric columns.
pub struct Table {
    /// Column titles.
    headers: Vec<String>,
    /// Cells, row by row.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    /// Renders to a string.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: &[String], out: &mut String| {
            for (i, c) in cells.iter().enumerate().take(cols) {
                if i == 0 {
                    out.push_str(&format!("  {c:<w$}", w = width[i]));
                } else {
                    out.push_str(&format!("  {c:>w$}", w = width[i]));
                }
            }
            out.push('\n');
        };
        line(&self.headers, &mut out);
        let total: usize = width.iter().map(|w| w + 2).sum();
        out.push_str(&format!("  {}\n", "-".repeat(total.saturating_sub(2))));
        for r in &self.rows {
            line(r, &mut out);
        }
        out
    }

    /// Prints to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Cells for a latency row: count, p50, p90, p99, p99.9, max (ms).
pub fn latency_cells(s: &LatencySummary) -> Vec<String> {
    vec![
        s.count.to_string(),
        ms(s.p50_ms),
        ms(s.p90_ms),
        ms(s.p99_ms),
        ms(s.p999_ms),
        ms(s.max_ms),
    ]
}

/// Column titles matching [`latency_cells`].
pub const LATENCY_HEADERS: [&str; 6] =
    ["count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"];

/// A millisecond figure with sensible precision.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A rate with one decimal.
pub fn rate(v: f64) -> String {
    format!("{v:.1}")
}

/// Memory and descriptors of a process, from `/proc/PID/status` and `/proc/PID/fd`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, Default)]
pub struct ProcStat {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open file descriptors (0 when unreadable).
    pub fds: u64,
}

/// Reads a process's RSS and open descriptors; `None` when the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = parse_vm_rss(&status)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcStat { rss_kib, fds })
}

/// [`proc_stat`] summed over several processes (the nodes of a cluster); `None` when
/// the list is empty or none of them can be read.
pub fn proc_stat_sum(pids: &[u32]) -> Option<ProcStat> {
    let stats: Vec<ProcStat> = pids.iter().filter_map(|p| proc_stat(*p)).collect();
    if stats.is_empty() {
        return None;
    }
    Some(ProcStat {
        rss_kib: stats.iter().map(|s| s.rss_kib).sum(),
        fds: stats.iter().map(|s| s.fds).sum(),
    })
}

/// This process's own RSS in KiB.
pub fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_rss(&s))
        .unwrap_or(0)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// KiB as a human-readable MiB figure.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints the final JSON document.
pub fn print_json(doc: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).expect("JSON value serialises")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\n"), Some(12345));
        assert!(self_rss_kib() > 0);
        assert!(proc_stat(std::process::id()).unwrap().fds > 0);
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["route", "req/s"]);
        t.row(vec!["config".into(), "12.5".into()]);
        let s = t.render();
        assert!(s.contains("  route   req/s\n"), "{s}");
        assert!(s.contains("  config   12.5\n"), "{s}");
    }
}
