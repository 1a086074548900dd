//! The webhook benchmarks' tenants and the gateway config that declares them
//! (`confab-loadtest webhook-config`).
//!
//! **Naming scheme** (shared by the generator and the `webhooks` scenario, so neither has
//! to be told the other's choices): tenant `i` is `t{i}`, with server key
//! `bench-server-key-{i}`, agent secret `bench-agent-secret-{i}`, a public key unique to it,
//! and one webhook `http://RECEIVER/hook/t{i}`. The base file's first tenant (`demo` in
//! `loadtest/bench.toml`) may get K webhooks `http://RECEIVER/hook/demo/{k}`: a webhook is
//! known by its URL, so K webhooks of one tenant need K URLs.
//!
//! **The config** is the base file (by default `loadtest/bench.toml`, built in) as it is —
//! memory store, per-IP connection cap out of reach, the demo tenant — followed by the new
//! tenants, each a copy of the base file's first tenant with its own id and keys. So every
//! tenant keeps bench.toml's rate limits. (`POST /v1/tenant/events`, all the `webhooks`
//! scenario calls, is not rate limited; the copies matter when another scenario is pointed
//! at a `t{i}` tenant.) The file is edited as text, table by table, rather than parsed and
//! re-serialised: its comments survive, and the tool needs no TOML library. That needs
//! the base to start each table on a line of its own (`[…]` / `[[…]]`), as any hand-written
//! TOML does.

use anyhow::{bail, Context, Result};

/// Where the receiver listens unless told otherwise.
pub const DEFAULT_RECEIVER: &str = "127.0.0.1:9100";

/// The webhooks' signing secret unless told otherwise (the gateway wants ≥ 16 characters).
pub const DEFAULT_SECRET: &str = "bench-webhook-secret";

/// `loadtest/bench.toml`, as built into the tool: the default base of the generated config.
pub const BENCH_TOML: &str = include_str!("../bench.toml");

/// Shortest secret the gateway accepts for a webhook.
const MIN_SECRET: usize = 16;

/// Tenant `i`'s id.
pub fn tenant_id(i: usize) -> String {
    format!("t{i}")
}

/// The index of a tenant id made by [`tenant_id`].
pub fn tenant_index(id: &str) -> Option<u32> {
    let digits = id.strip_prefix('t')?;
    // Exactly the spelling `tenant_id` makes: `t01` is not tenant 1.
    if digits.starts_with('0') && digits.len() > 1 {
        return None;
    }
    digits.parse().ok()
}

/// Tenant `i`'s server key (bearer of `POST /v1/tenant/events`).
pub fn server_key(i: usize) -> String {
    format!("bench-server-key-{i}")
}

/// Tenant `i`'s agent secret.
pub fn agent_secret(i: usize) -> String {
    format!("bench-agent-secret-{i}")
}

/// Tenant `i`'s public key: `pk_live_` and 32 hex digits, never bench.toml's demo key.
pub fn public_key(i: usize) -> String {
    format!("pk_live_b0{:030x}", i)
}

/// The receiver path of tenant `tenant`'s webhook; `Some(k)` for the k-th of several.
pub fn hook_path(tenant: &str, k: Option<usize>) -> String {
    match k {
        None => format!("/hook/{tenant}"),
        Some(k) => format!("/hook/{tenant}/{k}"),
    }
}

/// The tenant a receiver path belongs to: `/hook/{tenant}` or `/hook/{tenant}/{k}`.
pub fn path_tenant(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/hook/")?;
    let tenant = rest.split('/').next()?;
    (!tenant.is_empty()).then_some(tenant)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Tenants `t0`… to add, one webhook each.
    pub tenants: usize,
    /// Webhooks to add to the base's first tenant.
    pub demo_webhooks: usize,
    /// `host:port` of the receiver.
    pub receiver: String,
    /// Every webhook's secret.
    pub secret: String,
}

/// Keys of a `[[tenants]]` table that each generated tenant sets itself.
const OWN_KEYS: [&str; 5] = ["id", "name", "public_key", "agent_secret", "server_key"];

/// The base config with the plan's tenants and webhooks added.
pub fn generate(base: &str, plan: &Plan) -> Result<String> {
    if plan.secret.chars().count() < MIN_SECRET {
        bail!("--secret must be at least {MIN_SECRET} characters (the gateway refuses shorter)");
    }
    if plan.receiver.is_empty() || plan.receiver.contains('/') {
        bail!("--receiver is host:port, e.g. {DEFAULT_RECEIVER}");
    }
    let tables = split_tables(base);
    // `tables[0]` holds the top-level keys; each tenant starts at a `[[tenants]]` table and
    // owns the sub-tables (`[tenants.rate_limits]`…) that follow it.
    let Some(first) = tables
        .iter()
        .position(|t| t.header() == Some("[[tenants]]"))
    else {
        bail!("the base config has no [[tenants]] table to copy");
    };
    let template_end = tables[first + 1..]
        .iter()
        .position(|t| t.header() == Some("[[tenants]]"))
        .map_or(tables.len(), |p| first + 1 + p);
    let template = &tables[first..template_end];
    let demo_id = template[0]
        .value_of("id")
        .unwrap_or_else(|| "demo".to_owned());
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let webhook = |path: String| {
        format!(
            "[[tenants.webhooks]]\nurl = {}\nsecret = {}\n",
            q(&format!("http://{}{path}", plan.receiver)),
            q(&plan.secret)
        )
    };

    let mut out = format!(
        "# Generated by `confab-loadtest webhook-config --tenants {} --demo-webhooks {} \
         --receiver {}`:\n# the base config, {} webhook(s) added to tenant {demo_id:?}, then \
         {} tenant(s) t0, t1… with one webhook each.\n\n",
        plan.tenants, plan.demo_webhooks, plan.receiver, plan.demo_webhooks, plan.tenants,
    );
    for t in &tables[..template_end] {
        out.push_str(&t.text());
    }
    for k in 0..plan.demo_webhooks {
        out.push('\n');
        out.push_str(&webhook(hook_path(&demo_id, Some(k))));
    }
    for i in 0..plan.tenants {
        let id = tenant_id(i);
        out.push('\n');
        for t in template {
            match t.header() {
                Some("[[tenants]]") => {
                    out.push_str("[[tenants]]\n");
                    for (key, value) in [
                        ("id", id.clone()),
                        ("name", format!("Webhook bench tenant {i}")),
                        ("public_key", public_key(i)),
                        ("agent_secret", agent_secret(i)),
                        ("server_key", server_key(i)),
                    ] {
                        out.push_str(&format!("{key} = {}\n", q(&value)));
                    }
                    for line in &t.lines[1..] {
                        if !key_of(line).is_some_and(|k| OWN_KEYS.contains(&k)) {
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                }
                // The base tenant's own webhooks are not copied.
                Some("[[tenants.webhooks]]") => {}
                _ => out.push_str(&t.text()),
            }
        }
        out.push('\n');
        out.push_str(&webhook(hook_path(&id, None)));
    }
    for t in &tables[template_end..] {
        out.push_str(&t.text());
    }
    Ok(out)
}

/// `webhook-config`: prints the generated config on stdout.
pub fn run(args: &crate::cli::WebhookConfigArgs) -> Result<()> {
    let base = match &args.base {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => BENCH_TOML.to_owned(),
    };
    let plan = Plan {
        tenants: args.tenants,
        demo_webhooks: args.demo_webhooks,
        receiver: args.receiver.clone(),
        secret: args.secret.clone(),
    };
    print!("{}", generate(&base, &plan)?);
    Ok(())
}

/// One table of a TOML file: its header line (none for the top-level keys) and the lines
/// up to the next header.
pub(crate) struct Table<'a> {
    pub(crate) lines: Vec<&'a str>,
    headed: bool,
}

impl Table<'_> {
    /// `[[tenants]]`, `[tenants.rate_limits]`… (trimmed, comments after it removed).
    pub(crate) fn header(&self) -> Option<&str> {
        self.headed
            .then(|| self.lines[0].split('#').next().unwrap_or("").trim())
    }

    /// The value of `key = "…"` in this table, if it is a basic string (a comment may
    /// follow it).
    pub(crate) fn value_of(&self, key: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let (_, v) = l.split_once('=').filter(|_| key_of(l) == Some(key))?;
            // A TOML basic string reads as a JSON string; the first value ends it.
            let mut values = serde_json::Deserializer::from_str(v.trim()).into_iter::<String>();
            values.next()?.ok()
        })
    }

    pub(crate) fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// The key of a `key = value` line (not of comments, headers or blank lines).
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    Some(t.split_once('=')?.0.trim())
}

pub(crate) fn split_tables(text: &str) -> Vec<Table<'_>> {
    let mut tables = vec![Table {
        lines: vec![],
        headed: false,
    }];
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            tables.push(Table {
                lines: vec![line],
                headed: true,
            });
        } else {
            tables.last_mut().expect("never empty").lines.push(line);
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(tenants: usize, demo_webhooks: usize) -> Plan {
        Plan {
            tenants,
            demo_webhooks,
            receiver: "127.0.0.1:9100".into(),
            secret: DEFAULT_SECRET.into(),
        }
    }

    /// The `[[tenants]]` blocks of a generated file, each as its text.
    fn tenants(out: &str) -> Vec<String> {
        out.split("\n[[tenants]]\n")
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(tenant_index(&tenant_id(42)), Some(42));
        assert_eq!(tenant_index("t0"), Some(0));
        assert_eq!(tenant_index("t01"), None);
        assert_eq!(tenant_index("demo"), None);
        assert_eq!(path_tenant(&hook_path("t7", None)), Some("t7"));
        assert_eq!(path_tenant(&hook_path("demo", Some(3))), Some("demo"));
        assert_eq!(path_tenant("/other"), None);
        let pk = public_key(99);
        assert!(
            pk.len() == 40 && pk[8..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{pk}"
        );
        assert_ne!(public_key(0), crate::cli::DEMO_PK);
        assert_ne!(public_key(1), public_key(10));
    }

    #[test]
    fn adds_tenants_and_webhooks_to_bench_toml() {
        let out = generate(BENCH_TOML, &plan(3, 2)).unwrap();
        // The base's settings come through untouched, comments included.
        assert!(out.contains("store = \"memory\"\n"), "{out}");
        assert!(out.contains("max_connections_per_ip = 1000000\n"));
        assert!(out.contains("# Gateway config for load tests"));
        let blocks = tenants(&out);
        assert_eq!(blocks.len(), 4, "{out}");
        // The demo tenant keeps its keys and gets its webhooks, each with its own URL.
        assert!(blocks[0].starts_with("id = \"demo\"\n"));
        assert!(blocks[0].contains("url = \"http://127.0.0.1:9100/hook/demo/0\"\n"));
        assert!(blocks[0].contains("url = \"http://127.0.0.1:9100/hook/demo/1\"\n"));
        assert_eq!(blocks[0].matches("[[tenants.webhooks]]").count(), 2);
        let limits = "[tenants.rate_limits]\nsessions_per_hour_per_ip = 1000000000\n";
        for (i, b) in blocks[1..].iter().enumerate() {
            assert!(b.starts_with(&format!("id = \"t{i}\"\n")), "{b}");
            assert!(b.contains(&format!("server_key = \"bench-server-key-{i}\"\n")));
            assert!(b.contains(&format!("public_key = \"{}\"\n", public_key(i))));
            // Set once: the template's own values are dropped.
            assert_eq!(b.matches("\nserver_key = ").count(), 1, "{b}");
            assert!(!b.contains("bench-server-key\""), "{b}");
            // Copied from demo: challenge settings and the rate limits.
            assert!(b.contains("min_elapsed_ms = 0\n"));
            assert!(b.contains(limits), "{b}");
            // One webhook, after the tenant's tables (so it belongs to this tenant).
            assert_eq!(b.matches("[[tenants.webhooks]]").count(), 1);
            assert!(b.ends_with(&format!(
                "[[tenants.webhooks]]\nurl = \"http://127.0.0.1:9100/hook/t{i}\"\n\
                 secret = \"bench-webhook-secret\"\n"
            )));
        }
    }

    #[test]
    fn the_base_tenants_webhooks_are_not_copied_and_bad_input_is_refused() {
        let base = "store = \"memory\"\n\n[[tenants]]\nid = \"a\"  # the first\nname = \"A\"\n\
                    [[tenants.webhooks]]\nurl = \"http://x/1\"\nsecret = \"0123456789abcdef\"\n\
                    [tenants.branding]\nposition = \"bottom-left\"\n";
        let out = generate(base, &plan(1, 1)).unwrap();
        let blocks = tenants(&out);
        assert_eq!(blocks.len(), 2, "{out}");
        assert!(blocks[0].contains("url = \"http://127.0.0.1:9100/hook/a/0\""));
        assert!(!blocks[1].contains("http://x/1"), "{}", blocks[1]);
        assert!(blocks[1].contains("[tenants.branding]\nposition = \"bottom-left\"\n"));
        assert!(generate("store = \"memory\"\n", &plan(1, 0)).is_err());
        let short = Plan {
            secret: "short".into(),
            ..plan(1, 0)
        };
        assert!(generate(BENCH_TOML, &short).is_err());
    }
}
