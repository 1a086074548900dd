//! Attachments in Redis mode: two gateway processes on one redis-server, and a real
//! S3-compatible server on loopback (moto's standalone server, which `.ci/run` installs
//! into `target/moto-venv`): a file uploaded on one node is sent, and downloaded — whole
//! and by range — on the other.
//!
//! moto is found at `$CONFAB_MOTO_SERVER`, `target/moto-venv/bin/moto_server`, or
//! `moto_server` on `PATH`. Without it the test is skipped — except under `CI` or
//! `CONFAB_REQUIRE_REDIS`, like the Redis tests, where it fails.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use confab_store::redis::testing::RedisServer;
use serde_json::json;

/// The moto server process; killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("CONFAB_MOTO_SERVER") {
        return Some(p.into());
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/moto-venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| "moto_server".into())
}

/// Starts moto on a free loopback port and waits until it answers HTTP.
async fn start_moto(test: &str) -> Option<Moto> {
    let Some(bin) = moto_binary() else {
        let strict = std::env::var_os("CI").is_some()
            || std::env::var_os(confab_store::redis::testing::REQUIRE_ENV).is_some();
        assert!(
            !strict,
            "{test}: moto_server not found (install it: .ci/run puts it in target/moto-venv)"
        );
        eprintln!("{test}: skipped (no moto_server; `pip install 'moto[server]'`)");
        return None;
    };
    // moto cannot report a port it chose itself: take a free one and hand it over.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moto_server");
    let moto = Moto {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(moto.addr).await.is_ok() {
            let c = Client::new(moto.addr);
            let r = c.get("/moto-api/", &[]).await;
            if r.status < 500 {
                return Some(moto);
            }
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_node(config: &std::path::Path) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.arg("--config")
        .arg(config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    Process::spawn_command(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_on_one_node_download_on_the_other_through_s3() {
    let test = "upload_on_one_node_download_on_the_other_through_s3";
    let Some(redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let Some(moto) = start_moto(test).await else {
        return;
    };
    let bucket = format!("confab-{}", rand::random::<u32>());
    let created = Client::new(moto.addr)
        .request(
            "PUT",
            &format!("/{bucket}"),
            &[("content-type", "application/xml")],
            Some(Vec::new()),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);

    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml("").replace(
        "store = \"memory\"",
        &format!(
            "store = \"{}\"\nattachments_store = \"s3://{bucket}?endpoint=http://{}&region=us-east-1\"",
            redis.url(),
            moto.addr
        ),
    );
    let config = dir.path().join("confab.toml");
    std::fs::write(&config, toml).unwrap();
    let (a, b) = (spawn_node(&config), spawn_node(&config));
    let (ca, cb) = (a.client(), b.client());
    let s = ca.session(PK).await;

    // 6 MB: more than one S3 part.
    let mut big = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    big.resize(6_000_000, 9);
    let up = ca
        .request(
            "POST",
            "/v1/attachments?filename=big.png",
            &[
                ("authorization", &s.bearer()),
                ("content-type", "image/png"),
            ],
            Some(big.clone()),
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let id = up.json["id"].as_str().unwrap().to_owned();
    let sent = ca
        .post(
            "/v1/messages",
            &[("authorization", &s.bearer())],
            &json!({"message": "see file", "attachments": [id], "clientMessageId": "s3-1"}),
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text);

    // Node B: the history's link, a credential, a range.
    let history = cb.history(&s).await;
    let m = history
        .iter()
        .find(|m| m["clientMessageId"] == "s3-1")
        .unwrap();
    let url = m["attachments"][0]["url"].as_str().unwrap();
    let whole = cb.get(url, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.headers["content-length"].to_str().unwrap(), "6000000");
    let part = cb
        .get(
            &format!("/v1/attachments/{id}"),
            &[("authorization", &s.bearer()), ("range", "bytes=0-7")],
        )
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.headers["content-length"].to_str().unwrap(), "8");
    // Sent once, across nodes.
    let again = cb
        .post(
            "/v1/messages",
            &[("authorization", &s.bearer())],
            &json!({"message": "again", "attachments": [id], "clientMessageId": "s3-2"}),
        )
        .await;
    assert_invalid(&again, "attachments[0]");
}

/// Redis mode without an `attachments_store`: the node starts and says at start that
/// uploads are off, and an upload's 503 says what is missing rather than "retry later".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_without_an_attachments_store_says_so() {
    let test = "redis_mode_without_an_attachments_store_says_so";
    let Some(redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml("").replace(
        "store = \"memory\"",
        &format!("store = \"{}\"", redis.url()),
    );
    let config = dir.path().join("confab.toml");
    std::fs::write(&config, toml).unwrap();
    let node = spawn_node(&config);
    let c = node.client();
    let s = c.session(PK).await;
    let up = c
        .request(
            "POST",
            "/v1/attachments?filename=a.txt",
            &[
                ("authorization", &s.bearer()),
                ("content-type", "text/plain"),
            ],
            Some(b"hello".to_vec()),
        )
        .await;
    assert_eq!(up.status, 503, "{}", up.text);
    assert_eq!(up.code(), "store_unavailable");
    let message = up.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("attachments_store") && !message.contains("retry"),
        "{message}"
    );
    let log = node.log.lock().clone();
    assert!(
        log.iter().any(|l| l.contains("no attachments_store")),
        "warned at start: {log:#?}"
    );
}
