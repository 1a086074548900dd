//! Test support (not part of the API): a private `redis-server` per test, and a TCP proxy
//! that can go silent. Used by this crate's tests and the gateway's multi-node tests.
//!
//! ```ignore
//! let Some(redis) = RedisServer::start_or_skip("my_test").await else { return };
//! let backend = confab_store::open(&redis.url(), Retention::default()).await?;
//! ```
//!
//! The server binds 127.0.0.1 on a free port, persists nothing (`--save "" --appendonly
//! no`), lives in its own temporary directory, and is killed when dropped. Readiness is a
//! `PING` answered, never a sleep.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Set (to anything) to make a missing `redis-server` a failure instead of a skip (CI).
pub const REQUIRE_ENV: &str = "CONFAB_REQUIRE_REDIS";

/// Whether `redis-server` can be run.
pub fn redis_server_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments (cluster nodes).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server; `None` (after saying so on stderr) when `redis-server` is not
    /// installed and [`REQUIRE_ENV`] is unset. Panics when it is required but missing, or
    /// does not start.
    pub async fn start_or_skip(test: &str) -> Option<RedisServer> {
        if !redis_server_installed() {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{test}: redis-server is not installed but {REQUIRE_ENV} is set");
            }
            // Written past the test harness's capture, so a skip is never silent.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: redis-server is not installed (set {REQUIRE_ENV}=1 to make this a failure)"
            );
            return None;
        }
        Some(
            RedisServer::start()
                .await
                .unwrap_or_else(|e| panic!("{test}: cannot start redis-server: {e}")),
        )
    }

    /// Starts a server on a free port and waits until it answers `PING`.
    pub async fn start() -> io::Result<RedisServer> {
        Self::start_with(Vec::new(), free_port).await
    }

    /// Starts a server with extra arguments on a port from `port`.
    async fn start_with(
        extra: Vec<String>,
        port: fn() -> io::Result<u16>,
    ) -> io::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "confab-redis-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        // Dropped on failure: kills the child and removes the directory.
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra,
        };
        let mut last_err = None;
        // A free port can be taken by someone else between our probe and redis binding
        // it: try a few.
        for _ in 0..5 {
            server.port = port()?;
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--databases", "256", "--logfile", "redis.log", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "redis-server exited ({status}): {}",
                        self.log_tail()
                    )));
                }
            }
            if let Ok(Ok(reply)) =
                tokio::time::timeout(Duration::from_millis(500), self.command(&["PING"])).await
            {
                if reply == "PONG" {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "redis-server did not answer PING: {}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT` (database 0).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT/DB` (the server has 256 databases: one per backend gives
    /// each a fresh store).
    pub fn url_db(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one command over a fresh connection and returns the reply as text (errors as
    /// `Err`), e.g. `["CLIENT", "KILL", "TYPE", "pubsub"]`.
    pub async fn command(&self, args: &[&str]) -> io::Result<String> {
        let mut stream = TcpStream::connect(self.addr()).await?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(reply) = parse_reply(&buf)? {
                return Ok(reply);
            }
        }
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Parses one RESP reply (simple string, error, integer, bulk string); `None` when more
/// bytes are needed.
fn parse_reply(buf: &[u8]) -> io::Result<Option<String>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    match buf.first() {
        Some(b'+') | Some(b':') => Ok(Some(line)),
        Some(b'-') => Err(io::Error::other(line)),
        Some(b'$') => {
            let len: i64 = line
                .parse()
                .map_err(|_| io::Error::other("bad bulk length"))?;
            if len < 0 {
                return Ok(Some(String::new()));
            }
            let start = end + 2;
            let stop = start + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            Ok(Some(
                String::from_utf8_lossy(&buf[start..stop]).into_owned(),
            ))
        }
        _ => Err(io::Error::other(format!("unsupported reply: {line}"))),
    }
}

/// A TCP proxy in front of a server that can *freeze*: stop forwarding in both directions
/// without closing anything, like a network partition or a half-open connection. New
/// connections are accepted but stay silent while frozen.
pub struct TcpProxy {
    addr: SocketAddr,
    frozen: Arc<watch::Sender<bool>>,
    /// The accept loop; its `JoinSet` of connections dies with it.
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Proxies `127.0.0.1:RANDOM` → `target`.
    pub async fn start(target: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let frozen = Arc::new(watch::Sender::new(false));
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, f.subscribe()), pump(sr, cw, f.subscribe()));
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(TcpProxy { addr, frozen, task })
    }

    /// `redis://ADDR` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops forwarding (connections stay open and silent).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Freezing while waiting for bytes: stop reading at once.
            _ = frozen.wait_for(|f| *f) => continue,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A free port whose cluster bus port (`+10000`) is free too.
fn free_cluster_port() -> io::Result<u16> {
    for _ in 0..200 {
        let port = 20_000 + rand::random::<u16>() % 30_000;
        let a = std::net::TcpListener::bind(("127.0.0.1", port));
        let b = std::net::TcpListener::bind(("127.0.0.1", port + 10_000));
        if a.is_ok() && b.is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port pair for a cluster node"))
}

/// A Redis Cluster on loopback: 6 `redis-server` processes (`cluster-enabled yes`), made
/// into 3 masters with a replica each by `redis-cli --cluster create`. Killed when dropped.
///
/// `cluster-node-timeout` is 1 s so that a failover takes a couple of seconds. Readiness
/// is polled (`CLUSTER INFO` says `cluster_state:ok` on every node and every master has
/// its replica), never slept for.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// One master as `CLUSTER NODES` lists it.
#[derive(Clone, Debug)]
pub struct MasterInfo {
    pub port: u16,
    pub ranges: Vec<(u16, u16)>,
}

impl MasterInfo {
    pub fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

impl RedisCluster {
    /// Starts a cluster; `None` (after saying so) when `redis-server` or `redis-cli` is not
    /// installed and [`REQUIRE_ENV`] is unset.
    pub async fn start_or_skip(test: &str) -> Option<RedisCluster> {
        let cli = Command::new("redis-cli")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !redis_server_installed() || !cli {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{test}: redis-server/redis-cli are not installed but {REQUIRE_ENV} is set");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: redis-server/redis-cli are not installed (set {REQUIRE_ENV}=1 to make this a failure)"
            );
            return None;
        }
        Some(
            RedisCluster::start()
                .await
                .unwrap_or_else(|e| panic!("{test}: cannot start a Redis Cluster: {e}")),
        )
    }

    /// Starts 6 nodes and makes them a cluster of 3 masters with a replica each.
    pub async fn start() -> io::Result<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                // A replica whose link broke a while ago may still take over (tests kill
                // masters under load).
                "--cluster-replica-validity-factor",
                "0",
            ]
            .map(String::from)
            .to_vec();
            nodes.push(RedisServer::start_with(extra, free_cluster_port).await?);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let out = tokio::process::Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// `redis-cluster://127.0.0.1:P1,…` (every node as a seed).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("no such node")
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port() == port) {
            n.kill();
        }
    }

    /// Starts the node on `port` again (empty: it rejoins from its `nodes.conf`, as a
    /// replica of whoever took over its slots, and copies their data).
    pub async fn restart(&mut self, port: u16) -> io::Result<()> {
        match self.nodes.iter_mut().find(|n| n.port() == port) {
            Some(n) => n.restart().await,
            None => Err(io::Error::other("no such node")),
        }
    }

    fn alive(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// The masters that serve slots, from a live node's `CLUSTER NODES`.
    pub async fn masters(&self) -> io::Result<Vec<MasterInfo>> {
        let mut last = io::Error::other("no live node");
        for n in self.alive() {
            match n.command(&["CLUSTER", "NODES"]).await {
                Ok(text) => return Ok(parse_masters(&text)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The port of the master serving `slot`.
    pub async fn master_of(&self, slot: u16) -> io::Result<u16> {
        self.masters()
            .await?
            .into_iter()
            .find(|m| m.owns(slot))
            .map(|m| m.port)
            .ok_or_else(|| io::Error::other(format!("no master serves slot {slot}")))
    }

    /// Waits until every live node says `cluster_state:ok`, every slot is served by a live
    /// master, and every live master has a connected replica when `replicas` is set.
    pub async fn wait_ok(&self, within: Duration) -> io::Result<()> {
        self.wait(within, true).await
    }

    /// Waits until the cluster serves every slot from live masters again (after a kill),
    /// replicas or not.
    pub async fn wait_serving(&self, within: Duration) -> io::Result<()> {
        self.wait(within, false).await
    }

    async fn wait(&self, within: Duration, replicas: bool) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.check(replicas).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(io::Error::other(format!("the cluster is not ready: {e}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn check(&self, replicas: bool) -> io::Result<()> {
        let live: Vec<u16> = self.alive().map(|n| n.port()).collect();
        for n in self.alive() {
            let info = n.command(&["CLUSTER", "INFO"]).await?;
            if !info.contains("cluster_state:ok") {
                return Err(io::Error::other(format!("{}: not ok", n.port())));
            }
            let masters = parse_masters(&n.command(&["CLUSTER", "NODES"]).await?);
            let served: u32 = masters
                .iter()
                .flat_map(|m| &m.ranges)
                .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
                .sum();
            if served != 16384 || masters.iter().any(|m| !live.contains(&m.port)) {
                return Err(io::Error::other(format!(
                    "{}: slots not all served by live masters",
                    n.port()
                )));
            }
            if replicas && masters.iter().any(|m| m.port == n.port()) {
                let repl = n.command(&["INFO", "replication"]).await?;
                if !repl.contains("connected_slaves:1") || !repl.contains("state=online") {
                    return Err(io::Error::other(format!("{}: no replica yet", n.port())));
                }
            }
        }
        Ok(())
    }
}

/// The masters serving slots in a `CLUSTER NODES` text.
fn parse_masters(text: &str) -> Vec<MasterInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let Some(port) = f[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let ranges: Vec<(u16, u16)> = f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|x| (x, x)),
            })
            .collect();
        if !ranges.is_empty() {
            out.push(MasterInfo { port, ranges });
        }
    }
    out
}
