//! Property tests of the config parser: whatever the file says, `Config::from_toml` and
//! `Config::check` answer with an error, never a panic, and a config they accept is one
//! the gateway can run with (no overflow in the times it derives, a connection limit a
//! semaphore can hold, a schedule that compiles).

use confab_gateway::policy::availability::Schedule;
use confab_gateway::Config;
use proptest::prelude::*;

const VALID: &str = r#"
[[tenants]]
id = "acme"
name = "Acme"
public_key = "pk_live_0123456789abcdef0123456789abcdef"
agent_secret = "agent-secret"
server_key = "server-key-1"
"#;

/// Keys the config knows (top level and per tenant, in any table), and a few it does not.
const KEYS: &[&str] = &[
    "listen",
    "store",
    "allowed_origins",
    "trusted_proxies",
    "session_ttl_secs",
    "session_secret",
    "previous_session_secrets",
    "challenge_ttl_secs",
    "max_connections",
    "max_connections_per_ip",
    "max_sockets_per_visitor",
    "ws_write_delay_ms",
    "shutdown_grace_secs",
    "id",
    "name",
    "public_key",
    "agent_secret",
    "server_key",
    "greeting",
    "auto_reply",
    "require_init_challenge",
    "min_elapsed_ms",
    "pii_retention",
    "telemetry_sample_rate",
    "max_message_length",
    "primary_color",
    "position",
    "label",
    "logo",
    "mode",
    "timezone",
    "hours",
    "mon",
    "sun",
    "sessions_per_hour_per_ip",
    "messages_per_minute_per_session",
    "display_label",
    "examples",
    "question",
    "intent_name",
    "unknown_key",
];

const TABLES: &[&str] = &[
    "[[tenants]]",
    "[tenants.branding]",
    "[tenants.availability]",
    "[tenants.availability.hours]",
    "[tenants.rate_limits]",
    "[[tenants.intents]]",
    "[[tenants.quick_questions]]",
    "[tenants]",
    "[other]",
    "[[tenants.assistants]]",
];

fn toml_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "demo",
            "always",
            "offline",
            "business_hours",
            "full",
            "redact",
            "minimal",
            "bottom-left",
            "Europe/Berlin",
            "Mars/Olympus",
            "09:00-17:00",
            "22:00-02:00",
            "24:00-24:00",
            "9-5",
            "25:00-26:00",
            "https://shop.example",
            "https://*.example",
            "http://",
            "10.0.0.0/8",
            "::1",
            "999.1.1.1/40",
            "memory",
            "sqlite:x.db",
            "pk_live_0123456789abcdef0123456789abcdef",
            "#10A37F",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
    .prop_map(|s| format!("{s:?}")) // Rust's escaping is valid TOML basic-string escaping
}

fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        toml_string(),
        any::<i64>().prop_map(|n| n.to_string()),
        (-5i64..100_000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1.5",
            "-0.0",
            "nan",
            "inf",
            "-inf",
            "1e308",
            "0.5",
            "true",
            "false",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "0x10",
            "1_000",
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        3 => scalar.clone(),
        1 => prop::collection::vec(scalar.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => prop::collection::vec((prop::sample::select(KEYS), scalar), 0..3).prop_map(|kv| {
            let inner: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", inner.join(", "))
        }),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop::sample::select(TABLES).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[\\[\\]={}\",.#a-z0-9 ]{0,20}",
    ]
}

/// A document: sometimes the valid base with lines added, sometimes lines only.
fn document() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(line(), 0..16)).prop_map(|(base, lines)| {
        let body = lines.join("\n");
        if base {
            format!("{body}\n{VALID}")
        } else {
            body
        }
    })
}

/// What the gateway derives from an accepted config must not overflow or panic.
fn runnable(c: &Config) -> Result<(), TestCaseError> {
    let now_ms = 4_102_444_800_000i64; // 2100-01-01
    for secs in [c.session_ttl_secs, c.challenge_ttl_secs] {
        let ms = i64::try_from(secs)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .and_then(|ms| ms.checked_add(now_ms));
        prop_assert!(ms.is_some(), "a ttl of {} s overflows", secs);
    }
    prop_assert!(
        (1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&c.max_connections),
        "max_connections {} is no semaphore size",
        c.max_connections
    );
    prop_assert!(!c.tenants.is_empty());
    for t in &c.tenants {
        prop_assert!(Schedule::parse(&t.availability).is_ok());
        prop_assert!((0.0..=1.0).contains(&t.telemetry_sample_rate));
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_text_is_an_error_not_a_panic(text in any::<String>()) {
        if let Ok(c) = Config::from_toml(&text) {
            let _ = c.check();
        }
    }

    #[test]
    fn toml_ish_documents_are_checked_without_panicking(doc in document()) {
        if let Ok(c) = Config::from_toml(&doc) {
            if c.check().is_ok() {
                runnable(&c)?;
            }
        }
    }

    /// One setting of the valid base changed to any value: accepted only when runnable.
    #[test]
    fn one_setting_any_value(key in prop::sample::select(KEYS), value in toml_value()) {
        let doc = format!("{key} = {value}\n{VALID}");
        let tenant_doc = format!("{VALID}{key} = {value}\n");
        for d in [doc, tenant_doc] {
            if let Ok(c) = Config::from_toml(&d) {
                if c.check().is_ok() {
                    runnable(&c)?;
                }
            }
        }
    }

    /// Well-formed tenants are accepted.
    #[test]
    fn valid_tenants_are_accepted(
        id in "[A-Za-z0-9_-]{1,64}",
        key in "[a-f0-9]{32}",
        secret in "[ -~]{8,40}",
        ttl in 1u64..=86_400 * 365,
        hours in prop::collection::vec((0u32..24, 0u32..60, 0u32..=24, 0u32..60), 0..3),
    ) {
        let ranges: Vec<String> = hours
            .iter()
            .map(|(a, b, c, d)| format!("\"{a:02}:{b:02}-{c:02}:{:02}\"", if *c == 24 { 0 } else { *d }))
            .filter(|r| !r.starts_with("\"24"))
            .collect();
        let doc = format!(
            "session_ttl_secs = {ttl}\n[[tenants]]\nid = {id:?}\nname = \"N\"\npublic_key = \"pk_live_{key}\"\n\
             agent_secret = {secret:?}\nserver_key = {secret:?}\n[tenants.availability]\nmode = \"business_hours\"\n\
             hours = {{ mon = [{}] }}\n",
            ranges.join(", ")
        );
        let c = Config::from_toml(&doc).map_err(|e| TestCaseError::fail(format!("{e}\n{doc}")))?;
        prop_assert_eq!(c.check(), Ok(()), "{}", doc);
        runnable(&c)?;
    }
}

/// What the properties found: these used to pass `check` and then overflow an expiry
/// (a panic in a debug build, an instantly expired token in a release build) or panic in
/// `Semaphore::new` at start-up.
#[test]
fn overflowing_settings_are_refused() {
    for setting in [
        "session_ttl_secs = 9223372036854775807",
        "challenge_ttl_secs = 9223372036854775807",
        "session_ttl_secs = 9300000000000000",
        "max_connections = 9223372036854775807",
        "max_connections = 0",
        "ws_write_delay_ms = 101",
        "ws_write_delay_ms = 18446744073709551615",
        // What the gateway could not bind or open.
        "listen = \"not-an-addr\"",
        "listen = \"127.0.0.1:99999\"",
        "listen = \":8080\"",
        "store = \"postgres://x\"",
        "store = \"sqlite:\"",
        "store = \"sqlite:a.db?synchronous=sometimes\"",
    ] {
        let c = Config::from_toml(&format!("{setting}\n{VALID}")).unwrap();
        assert!(c.check().is_err(), "{setting} accepted");
    }
    let c = Config::from_toml(&format!("session_ttl_secs = 315360000\n{VALID}")).unwrap();
    assert_eq!(c.check(), Ok(()), "ten years is fine");
    let c = Config::from_toml(&format!("ws_write_delay_ms = 100\n{VALID}")).unwrap();
    assert_eq!(c.check(), Ok(()), "the longest write delay is fine");
    // A wrong type is named in words, not as a Rust type.
    let e = Config::from_toml(&format!("ws_write_delay_ms = 50.5\n{VALID}")).unwrap_err();
    assert!(e.contains("ws_write_delay_ms") && !e.contains("u64"), "{e}");
}

/// Tenant settings that parse but could never work are refused at start, naming the key.
#[test]
fn settings_that_could_never_work_are_refused() {
    for (setting, named) in [
        (
            "[tenants.attachments]\nallowed_types = [\"image/jpg\"]",
            "image/jpg",
        ),
        (
            "[tenants.attachments]\nallowed_types = [\"application/x-msdownload\"]",
            "application/x-msdownload",
        ),
        (
            "[tenants.rate_limits]\nuploads_per_hour_per_session = 0",
            "uploads_per_hour_per_session",
        ),
        (
            "[tenants.rate_limits]\nmessages_per_minute_per_session = 0",
            "messages_per_minute_per_session",
        ),
    ] {
        let c = Config::from_toml(&format!("{VALID}{setting}\n")).unwrap();
        let e = c.check().unwrap_err();
        assert!(e.contains(named), "{setting}: {e}");
    }
    let ok = "[tenants.attachments]\nallowed_types = [\"image/jpeg\", \"application/pdf\", \"text/plain\"]";
    let c = Config::from_toml(&format!("{VALID}{ok}\n")).unwrap();
    assert_eq!(c.check(), Ok(()));
}

/// Settings that would open a hole are refused at start, naming what is wrong: a trivial
/// session secret (anyone could sign challenges and session tokens), a server key or agent
/// secret shared by two tenants, and an origin pattern that is not one.
#[test]
fn settings_that_would_open_a_hole_are_refused() {
    let second = |server_key: &str, agent_secret: &str| {
        format!(
            "[[tenants]]\nid = \"beta\"\nname = \"B\"\n\
             public_key = \"pk_live_ffffffffffffffffffffffffffffffff\"\n\
             agent_secret = \"{agent_secret}\"\nserver_key = \"{server_key}\"\n"
        )
    };
    for (toml, named) in [
        (format!("session_secret = \"\"\n{VALID}"), "session_secret"),
        (format!("session_secret = \"x\"\n{VALID}"), "session_secret"),
        (
            format!("session_secret = \"long-enough-secret\"\nprevious_session_secrets = [\"old\"]\n{VALID}"),
            "previous_session_secrets",
        ),
        (
            format!("{VALID}{}", second("server-key-1", "beta-agent-secret")),
            "server_key is used by another tenant",
        ),
        (
            format!("{VALID}{}", second("beta-server-key", "agent-secret")),
            "agent_secret is used by another tenant",
        ),
        (
            format!("allowed_origins = [\"https://*\"]\n{VALID}"),
            "https://*",
        ),
    ] {
        let c = Config::from_toml(&toml).unwrap();
        let e = c.check().unwrap_err();
        assert!(e.contains(named), "{toml}: {e}");
    }
    let ok = format!(
        "session_secret = \"s3cret-s3cret\"\n{VALID}{}",
        second("beta-server-key", "beta-agent-secret")
    );
    assert_eq!(Config::from_toml(&ok).unwrap().check(), Ok(()));
}
