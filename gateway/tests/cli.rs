//! The command line (SPEC "Command line"), through the real binary: `confab token` (with a
//! config, and for the demo tenant against the store of a running gateway), `confab
//! check-config`, the per-tenant start-up lines, the access log in text and JSON, and the
//! `GET /` landing page.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::Value;

/// `confab ARGS` run to completion in `dir`, with none of the variables that would change
/// what it reads.
fn confab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(args)
        .current_dir(dir)
        .env_remove("CONFAB_CONFIG")
        .env_remove("CONFAB_STORE")
        .env_remove("CONFAB_LISTEN")
        .env_remove("CONFAB_LOG_FORMAT")
        .env_remove("WEBCHAT_ALLOWED_ORIGINS")
        .env_remove("WEBCHAT_PII_RETENTION_MODE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run confab")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JWT `confab token ARGS` printed: stdout is the token and a newline, nothing else.
fn token(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let o = confab(dir, &all);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    let out = stdout(&o);
    let jwt = out
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("newline-terminated: {out:?}"));
    assert!(
        !jwt.contains(char::is_whitespace),
        "only the token: {out:?}"
    );
    assert_eq!(jwt.split('.').count(), 3, "a JWS: {jwt}");
    jwt.to_owned()
}

/// A token's header and claims, read without verifying.
fn decode(jwt: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let raw = URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    (part(0), part(1))
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("confab.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn now_secs() -> i64 {
    confab_protocol::time::now_ms() / 1000
}

/// Waits (polling the log the process has written so far, at most 10 s) for a line with
/// every one of `parts`; returns it.
fn wait_log_line(p: &Process, parts: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = p
            .log
            .lock()
            .iter()
            .find(|l| parts.iter().all(|part| l.contains(part)))
        {
            return l.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {parts:?} in 10 s: {:#?}",
            p.log.lock()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The demo gateway (no config file) run in `dir`, on its default store or `store`.
fn spawn_demo(dir: &Path, store: Option<&str>) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.current_dir(dir).env_remove("CONFAB_CONFIG");
    if let Some(s) = store {
        cmd.args(["--store", s]);
    }
    Process::spawn_command(cmd)
}

#[tokio::test]
async fn token_with_a_config_is_accepted_by_the_gateway_with_that_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_toml(""));
    let cfg_arg = cfg.to_str().unwrap();
    let gw = Process::spawn(&cfg, &[]);
    let c = gw.client();

    let jwt = token(
        dir.path(),
        &[
            "--tenant",
            "acme",
            "--sub",
            "ann",
            "--name",
            "Ann Agent",
            "--ttl",
            "30m",
            "--config",
            cfg_arg,
        ],
    );
    let (header, claims) = decode(&jwt);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["name"], "Ann Agent");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - (now_secs() + 1800)).abs() <= 5, "exp {exp}");
    let r = c.get_auth("/v1/tenant/conversations", &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Signed with acme's agent_secret, nothing else.
    let verified =
        confab_protocol::token::verify_agent_jwt(&jwt, AGENT_SECRET.as_bytes(), 0).unwrap();
    assert_eq!(verified.sub, "ann");

    // Defaults: sub admin, no name, 8 hours; CONFAB_CONFIG works as --config does.
    let o = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["token", "--tenant", "globex"])
        .env("CONFAB_CONFIG", &cfg)
        .env_remove("CONFAB_STORE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let jwt = stdout(&o).trim().to_owned();
    let (_, claims) = decode(&jwt);
    assert_eq!(claims["sub"], "admin");
    assert_eq!(claims["tenant"], "globex");
    assert!(claims.get("name").is_none(), "{claims}");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - (now_secs() + 8 * 3600)).abs() <= 5, "exp {exp}");
    let r = c.get_auth("/v1/tenant/conversations", &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // globex's token opens globex only: the one it lists is its own (none yet).
    assert_eq!(r.json["conversations"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn demo_token_uses_the_secret_of_the_gateway_running_on_the_default_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_demo(dir.path(), None);
    let c = gw.client();
    // The gateway holds the database's lock: the command reads the secret without it.
    assert!(dir.path().join("confab-data/confab.db").exists());
    let jwt = token(
        dir.path(),
        &["--tenant", "demo", "--sub", "ops", "--name", "Ops"],
    );
    let (_, claims) = decode(&jwt);
    assert_eq!(
        (claims["tenant"].as_str(), claims["sub"].as_str()),
        (Some("demo"), Some("ops"))
    );
    let r = c.get_auth("/v1/tenant/conversations", &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The same store named with --store, from elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite:{}?synchronous=normal",
        dir.path().join("confab-data/confab.db").display()
    );
    let jwt2 = token(elsewhere.path(), &["--tenant", "demo", "--store", &url]);
    assert_eq!(
        c.get_auth("/v1/tenant/conversations", &jwt2).await.status,
        200
    );
    assert!(!elsewhere.path().join("confab-data").exists());
    // A token of another store's secret is refused by this gateway.
    let other = token(elsewhere.path(), &["--tenant", "demo"]);
    assert_eq!(
        c.get_auth("/v1/tenant/conversations", &other).await.status,
        401
    );

    // The gateway stopped, the secret is still read, and a restarted gateway accepts both
    // tokens.
    gw.sigterm();
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    let again = token(dir.path(), &["--tenant", "demo", "--sub", "ops"]);
    let gw = spawn_demo(dir.path(), None);
    for t in [&jwt, &again] {
        let r = gw.client().get_auth("/v1/tenant/conversations", t).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

#[tokio::test]
async fn demo_token_before_the_first_start_stores_the_secret_the_gateway_then_uses() {
    let dir = tempfile::tempdir().unwrap();
    let o = confab(dir.path(), &["token", "--tenant", "demo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stored a new session secret"),
        "{}",
        stderr(&o)
    );
    let jwt = stdout(&o).trim().to_owned();
    let gw = spawn_demo(dir.path(), None);
    let r = gw.client().get_auth("/v1/tenant/conversations", &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn demo_token_on_redis_uses_the_shared_secret() {
    let Some(redis) = confab_store::redis::testing::RedisServer::start_or_skip(
        "demo_token_on_redis_uses_the_shared_secret",
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = spawn_demo(dir.path(), Some(&redis.url()));
    let jwt = token(dir.path(), &["--tenant", "demo", "--store", &redis.url()]);
    let r = gw.client().get_auth("/v1/tenant/conversations", &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn unknown_tenant_exits_1_naming_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_toml(""));
    let o = confab(
        dir.path(),
        &[
            "token",
            "--tenant",
            "initech",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    for id in ["\"initech\"", "\"acme\"", "\"globex\""] {
        assert!(err.contains(id), "{err}");
    }
    // Without a config: the demo is the only tenant, and the store is left alone.
    let o = confab(dir.path(), &["token", "--tenant", "acme"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\"demo\""), "{}", stderr(&o));
    assert!(!dir.path().join("confab-data").exists());
}

#[test]
fn bad_token_arguments_exit_1_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_toml(""));
    let cfg = cfg.to_str().unwrap();
    for ttl in [
        "0h",
        "0s",
        "400d",
        "100000h",
        "8",
        "eight hours",
        "8H",
        "-1h",
        "1.5h",
    ] {
        let o = confab(
            dir.path(),
            &["token", "--tenant", "acme", "--config", cfg, "--ttl", ttl],
        );
        assert_eq!(o.status.code(), Some(1), "--ttl {ttl}");
        assert!(o.stdout.is_empty(), "--ttl {ttl}");
        assert!(stderr(&o).contains("--ttl"), "{ttl}: {}", stderr(&o));
    }
    let o = confab(
        dir.path(),
        &["token", "--tenant", "acme", "--config", cfg, "--sub", ""],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The demo's secrets on a memory store exist only inside the running process.
    let o = confab(
        dir.path(),
        &["token", "--tenant", "demo", "--store", "memory"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("memory"), "{}", stderr(&o));
    // A config that does not compile is refused with its error.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, config_toml("").replace(PK2, "pk_live_nope")).unwrap();
    let o = confab(
        dir.path(),
        &[
            "token",
            "--tenant",
            "acme",
            "--config",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("public_key"), "{}", stderr(&o));
}

/// A config exercising every column of the summary line.
fn rich_config() -> String {
    config_toml_global(
        r#"allowed_origins = ["https://shop.example"]"#,
        r#"allowed_origins = ["https://acme.example", "https://*.acme.example"]
pii_retention = "redact"
require_init_challenge = false
[tenants.availability]
mode = "business_hours"
timezone = "Europe/Berlin"
hours = { mon = ["09:00-17:00"] }
[[tenants.webhooks]]
url = "https://hooks.acme.example/confab"
secret = "whsec_0123456789abcdef"
[[tenants.webhooks]]
url = "https://bots.acme.example/in"
secret = "whsec_0123456789abcdef"
events = ["message:new"]
"#,
    )
}

#[tokio::test]
async fn check_config_prints_a_line_per_tenant_and_the_gateway_logs_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &rich_config());
    let o = confab(dir.path(), &["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let acme = lines[0];
    for part in [
        "\"acme\"",
        "Acme",
        PK,
        "origins https://acme.example https://*.acme.example",
        "availability business_hours (Europe/Berlin)",
        "webhooks 2",
        "pii redact",
        "init challenge off",
    ] {
        assert!(acme.contains(part), "{part:?} in {acme}");
    }
    let globex = lines[1];
    for part in [
        "\"globex\"",
        PK2,
        "origins https://shop.example",
        "availability always",
        "webhooks 0",
        "pii full",
        "init challenge required",
    ] {
        assert!(globex.contains(part), "{part:?} in {globex}");
    }
    // No secret is printed.
    for secret in [AGENT_SECRET, SERVER_KEY, "whsec_"] {
        assert!(!out.contains(secret), "{secret}");
    }

    // The gateway logs the same line for each tenant at start-up.
    let gw = Process::spawn(&cfg, &[]);
    for l in &lines {
        wait_log_line(&gw, &[l]);
    }
}

#[test]
fn check_config_refuses_a_bad_file_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        dir.path(),
        &config_toml(
            "[tenants.availability]\nmode = \"business_hours\"\ntimezone = \"Mars/Olympus\"\n",
        ),
    );
    let o = confab(dir.path(), &["check-config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("Mars/Olympus") && err.contains("acme"),
        "{err}"
    );
    assert!(err.contains("confab.toml"), "names the file: {err}");
    // Unknown keys, TOML syntax, a missing file.
    std::fs::write(&bad, "listne = \"127.0.0.1:1\"").unwrap();
    let o = confab(dir.path(), &["check-config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("listne"), "{}", stderr(&o));
    let o = confab(dir.path(), &["check-config", "nowhere.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nowhere.toml"), "{}", stderr(&o));
    // What the gateway could not bind or open fails the check too, environment overrides
    // included, as it would fail the start.
    let good = write_config(dir.path(), &config_toml(""));
    for (var, value) in [("CONFAB_LISTEN", "zzz"), ("CONFAB_STORE", "bogus")] {
        let o = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["check-config", good.to_str().unwrap()])
            .current_dir(dir.path())
            .env_remove("CONFAB_CONFIG")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{var}={value}");
        assert!(stderr(&o).contains(value), "{var}: {}", stderr(&o));
    }
}

#[tokio::test]
async fn access_log_has_method_route_status_latency_and_client_ip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &config_toml_global(r#"trusted_proxies = ["127.0.0.1/32"]"#, ""),
    );
    let gw = Process::spawn(&cfg, &[]);
    let c = gw.client();
    assert_eq!(c.get(&format!("/v1/config?pk={PK}"), &[]).await.status, 200);
    let l = wait_log_line(&gw, &["confab::access", "route=/v1/config "]);
    for part in ["method=GET", "status=200", "latency_ms=", "ip=127.0.0.1"] {
        assert!(l.contains(part), "{part} in {l}");
    }
    assert!(!l.contains(PK), "the query is not logged: {l}");
    // The client IP per the trusted-proxy rule; the route pattern, not the ids.
    let r = c
        .get_auth("/v1/tenant/conversations/conv_nope", &acme_agent("a"))
        .await;
    assert_eq!(r.status, 404);
    let r = c
        .request(
            "POST",
            "/v1/tenant/conversations/conv_xyz/close",
            &[("x-forwarded-for", "203.0.113.9")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(r.status, 401);
    let l = wait_log_line(&gw, &["route=/v1/tenant/conversations/{id}/close"]);
    for part in ["method=POST", "status=401", "ip=203.0.113.9"] {
        assert!(l.contains(part), "{part} in {l}");
    }
    assert!(!l.contains("conv_xyz"), "{l}");
    wait_log_line(&gw, &["route=/v1/tenant/conversations/{id} ", "status=404"]);
    // No route: the path, cut, without its query.
    let long = "x".repeat(500);
    let r = c.get(&format!("/nope/{long}?token=secret"), &[]).await;
    assert_eq!(r.status, 404);
    let l = wait_log_line(&gw, &["route=/nope/x", "status=404"]);
    assert!(l.len() < 400, "cut: {l}");
    assert!(!l.contains("secret"), "{l}");
    // A WebSocket is logged once, at its upgrade.
    let (mut ws, _) = Ws::open(gw.addr, "/v1/tenant/ws", &acme_agent("a"), None).await;
    ws.inner.close(None).await.unwrap();
    drop(ws);
    assert_eq!(c.get("/healthz?marker", &[]).await.status, 200);
    wait_log_line(&gw, &["route=/healthz", "status=200"]);
    let upgrades: Vec<String> = gw
        .log
        .lock()
        .iter()
        .filter(|l| l.contains("route=/v1/tenant/ws"))
        .cloned()
        .collect();
    assert_eq!(upgrades.len(), 1, "{upgrades:#?}");
    assert!(upgrades[0].contains("status=101"), "{}", upgrades[0]);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_toml(""));
    // The harness finds the listening line in JSON too.
    let gw = Process::spawn(&cfg, &["--log-format", "json"]);
    let c = gw.client();
    assert_eq!(c.get("/readyz", &[]).await.status, 200);
    let l = wait_log_line(&gw, &["confab::access", "/readyz"]);
    let v: Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "confab::access");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["route"], "/readyz");
    assert_eq!(v["status"], 200);
    assert_eq!(v["ip"], "127.0.0.1");
    assert!(v["latency_ms"].as_f64().is_some(), "{v}");
    assert!(v["timestamp"].as_str().is_some(), "{v}");
    let lines = gw.log.lock().clone();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.is_object(), "{l}");
    }
    let listening = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on http://"))
        })
        .expect("the listening line");
    assert_eq!(
        listening["message"],
        format!("listening on http://{}", gw.addr)
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("\"tenant \\\"acme\\\" (Acme)")));
    drop(gw);

    // CONFAB_LOG_FORMAT does the same.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.arg("--config")
        .arg(&cfg)
        .env("CONFAB_LOG_FORMAT", "json");
    let gw = Process::spawn_command(cmd);
    assert_eq!(gw.client().get("/healthz", &[]).await.status, 200);
    let l = wait_log_line(&gw, &["confab::access", "/healthz"]);
    assert_eq!(serde_json::from_str::<Value>(&l).unwrap()["status"], 200);
}

#[tokio::test]
async fn landing_page_links_to_the_demo_the_console_and_the_api() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let r = c.get("/", &[]).await;
    assert_eq!(r.status, 200);
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("x-frame-options"), "DENY");
    let csp = header("content-security-policy");
    for directive in [
        "script-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!r.text.contains("<script"), "no script at all");
    for link in ["/demo", "/console", "/openapi.json"] {
        assert!(r.text.contains(&format!("href=\"{link}\"")), "{link}");
        assert_eq!(c.get(link, &[]).await.status, 200, "{link}");
    }
    gw.shutdown().await;
}
