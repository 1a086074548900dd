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
        };
        let mut last_err = None;
        // A free port can be taken by someone else between our probe and redis binding
        // it: try a few.
        for _ in 0..5 {
            server.port = free_port()?;
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
