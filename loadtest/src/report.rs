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
        for key in ["agent_secret", "server_key", "secret"] {
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

/// Memory, descriptors and CPU time of a process, from `/proc/PID/{status,fd,stat}`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcStat {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open file descriptors (0 when unreadable).
    pub fds: u64,
    /// User + system CPU time so far, ms (clock-tick resolution, usually 10 ms).
    #[serde(default)]
    pub cpu_ms: u64,
}

/// Reads a process's RSS, open descriptors and CPU time; `None` when the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = parse_vm_rss(&status)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let cpu_ms = cpu_ms_of(&format!("/proc/{pid}/stat")).unwrap_or(0);
    Some(ProcStat {
        rss_kib,
        fds,
        cpu_ms,
    })
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
        cpu_ms: stats.iter().map(|s| s.cpu_ms).sum(),
    })
}

/// User + system CPU ms from a `/proc/…/stat` file.
fn cpu_ms_of(path: &str) -> Option<u64> {
    parse_cpu_ms(&std::fs::read_to_string(path).ok()?)
}

fn parse_cpu_ms(stat: &str) -> Option<u64> {
    // Fields after "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime stime … — comm may hold spaces, so split after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1000 / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            return t as u64;
        }
    }
    100
}

/// This process's own CPU time so far, ms.
pub fn self_cpu_ms() -> u64 {
    cpu_ms_of("/proc/self/stat").unwrap_or(0)
}

/// Measures CPU used over one phase of a run — by the server(s) given with
/// `--server-pid` and by this tool — so runs on a shared machine can be compared by cost
/// per unit of work, not only by latency.
pub struct Meter {
    /// The server processes.
    pids: Vec<u32>,
    /// When the phase started.
    start: std::time::Instant,
    /// Server figures at the start.
    server: Option<ProcStat>,
    /// This process's CPU at the start.
    client_cpu_ms: u64,
}

impl Meter {
    /// Starts measuring now.
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: std::time::Instant::now(),
            server: proc_stat_sum(pids),
            client_cpu_ms: self_cpu_ms(),
        }
    }

    /// Ends the phase; `units` of work (deliveries, requests…) were done in it.
    pub fn finish(&self, units: u64, unit: &str) -> Usage {
        let wall_secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let after = proc_stat_sum(&self.pids);
        let server_cpu_secs = match (self.server, after) {
            (Some(b), Some(a)) => Some(a.cpu_ms.saturating_sub(b.cpu_ms) as f64 / 1000.0),
            _ => None,
        };
        let client_cpu_secs = self_cpu_ms().saturating_sub(self.client_cpu_ms) as f64 / 1000.0;
        let per_unit = |secs: f64| (units > 0).then(|| secs * 1e6 / units as f64);
        Usage {
            wall_secs,
            units,
            unit: unit.to_string(),
            server_cpu_secs,
            server_core_pct: server_cpu_secs.map(|c| c * 100.0 / wall_secs),
            server_cpu_us_per_unit: server_cpu_secs.and_then(per_unit),
            client_cpu_secs,
            client_core_pct: client_cpu_secs * 100.0 / wall_secs,
            client_cpu_us_per_unit: per_unit(client_cpu_secs),
            server_before: self.server,
            server_after: after,
            show_client: true,
        }
    }
}

/// CPU and memory over one phase (see [`Meter`]).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Length of the phase, s.
    pub wall_secs: f64,
    /// Units of work done in it.
    pub units: u64,
    /// What a unit is ("delivery", "request"…).
    pub unit: String,
    /// Server CPU used, s (all `--server-pid` processes).
    pub server_cpu_secs: Option<f64>,
    /// Server CPU as a percentage of one core.
    pub server_core_pct: Option<f64>,
    /// Server CPU per unit, µs.
    pub server_cpu_us_per_unit: Option<f64>,
    /// This tool's CPU used, s (this process only).
    pub client_cpu_secs: f64,
    /// This tool's CPU as a percentage of one core: near 100% per core it has, the load
    /// generator is the bottleneck.
    pub client_core_pct: f64,
    /// This tool's CPU per unit, µs.
    pub client_cpu_us_per_unit: Option<f64>,
    /// Server figures at the start of the phase.
    pub server_before: Option<ProcStat>,
    /// Server figures at the end of the phase.
    pub server_after: Option<ProcStat>,
    /// Whether the client figures mean anything (not when the load ran in child processes).
    #[serde(skip)]
    pub show_client: bool,
}

impl Usage {
    /// Hides the client figures when `yes` (the load ran in other processes).
    pub fn server_only(mut self, yes: bool) -> Self {
        self.show_client = !yes;
        self
    }

    /// Prints the CPU / memory table.
    pub fn print(&self) {
        println!();
        let per = format!("CPU µs per {}", self.unit);
        let mut t = Table::new(&["cpu", "seconds", "% of a core", per.as_str(), "RSS at end"]);
        if let Some(secs) = self.server_cpu_secs {
            t.row(vec![
                "server".into(),
                format!("{secs:.2}"),
                format!("{:.0}%", self.server_core_pct.unwrap_or(0.0)),
                self.server_cpu_us_per_unit
                    .map(|u| format!("{u:.1}"))
                    .unwrap_or_default(),
                self.server_after
                    .map(|s| mib(s.rss_kib))
                    .unwrap_or_default(),
            ]);
        }
        if self.show_client {
            t.row(vec![
                "client (this process)".into(),
                format!("{:.2}", self.client_cpu_secs),
                format!("{:.0}%", self.client_core_pct),
                self.client_cpu_us_per_unit
                    .map(|u| format!("{u:.1}"))
                    .unwrap_or_default(),
                mib(self_rss_kib()),
            ]);
        }
        t.print();
    }
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
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(parse_cpu_ms(stat), Some(300 * 1000 / clock_ticks_per_sec()));
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
