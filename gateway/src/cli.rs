//! The command line (SPEC "Command line"): `confab` serves; `confab token` prints an agent
//! JWT; `confab check-config FILE` validates a configuration. Also the logging set-up the
//! binary uses (`--log-format text|json`).
//!
//! The binary (`main.rs`) parses [`Cli`] and dispatches; the work of the two operator
//! commands is here, as functions that return their output or an error message, so they
//! are tested without a process.
//!
//! **Where `confab token` finds the demo tenant's secret.** Without a config file the demo
//! tenant's agent secret is derived from the deployment's session secret, which the first
//! gateway to start generates and keeps in its store. A running gateway holds the SQLite
//! database's exclusive lock (`<db>.lock`), so the command does not open the store: it
//! reads the `meta` table's `session_secret` row through a read-only SQLite connection (WAL
//! readers never block the writer, and the lock is not taken). Only when no secret is
//! stored yet (no gateway ever ran on that database) does it open the store as a gateway
//! would and store a fresh one, which the gateway then uses. In Redis mode it asks the store
//! for the secret (`SET NX` of a fresh one, then `GET confab:secret`, as every node does),
//! which needs no lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use confab_protocol::token::{sign_agent_jwt, AgentClaims};
use rand::RngCore;

use crate::config::{Config, Overrides};
use crate::settings::Settings;

/// Confab: a self-hostable real-time chat gateway.
///
/// Without a subcommand, runs the gateway.
#[derive(Parser, Debug)]
#[command(
    name = "confab",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log format: `text`, or `json` (one JSON object per line) (env CONFAB_LOG_FORMAT).
    #[arg(long, env = "CONFAB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The flags of the gateway itself.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (without one, a demo tenant is served).
    #[arg(long, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`; env CONFAB_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
    /// Store URL: `sqlite:PATH`, `memory`, `redis://HOST:PORT/DB` or
    /// `redis-cluster://HOST:PORT,HOST:PORT,…` (env CONFAB_STORE).
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Prints an agent JWT (HS256, signed with the tenant's agent_secret) for a tenant.
    Token(TokenArgs),
    /// Validates a configuration file and prints one line per tenant; exit 1 on error.
    CheckConfig(CheckConfigArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The tenant's id (`demo` without a config file).
    #[arg(long)]
    pub tenant: String,
    /// The agent's id (the `sub` claim).
    #[arg(long, default_value = "admin")]
    pub sub: String,
    /// The agent's display name (the `name` claim).
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token is valid: a number and a unit, s, m, h or d (`30m`, `8h`, `7d`,
    /// `3600s`); at most 366d.
    #[arg(long, default_value = "8h", allow_hyphen_values = true)]
    pub ttl: String,
    /// TOML configuration file (without one: the demo tenant of the store's gateway).
    #[arg(long, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store URL, for the demo tenant: where the gateway keeps its session secret
    /// (env CONFAB_STORE; default `sqlite:confab-data/confab.db`).
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// The TOML configuration file to check (environment overrides apply, as when serving).
    pub file: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `LEVEL target: message fields`, one event per line.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the event's fields,
    /// `target`.
    Json,
}

/// Where log lines go: the gateway logs to stdout; the operator commands to stderr, so
/// that their stdout is only their output (`JWT=$(confab token …)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `default_filter`; the
/// access log is the `confab::access` target), `format` formats. Lines are written by a
/// background thread (`tracing-appender`), so a request never waits for the terminal or
/// the pipe; keep the returned guard alive until exit — dropping it flushes what is queued.
pub fn init_logging(
    format: LogFormat,
    to: LogTo,
    default_filter: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    // Not lossy: with 128k lines queued, logging waits rather than drops a line.
    let queue = tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false);
    let (writer, guard, terminal) = match to {
        LogTo::Stdout => {
            let (w, g) = queue.finish(std::io::stdout());
            (w, g, std::io::stdout().is_terminal())
        }
        LogTo::Stderr => {
            let (w, g) = queue.finish(std::io::stderr());
            (w, g, std::io::stderr().is_terminal())
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // Colours only on a terminal: logs that go to files and pipes stay plain text.
        LogFormat::Text => builder.with_ansi(terminal).init(),
    }
    guard
}

/// Longest agent token `confab token` signs: agent JWTs cannot be revoked short of
/// changing the tenant's `agent_secret`.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// `30m`, `8h`, `7d`, `3600s`: a positive whole number and a unit, at most
/// [`MAX_TOKEN_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad =
        || format!("--ttl {text:?}: give a number and a unit, s, m, h or d (30m, 8h, 7d, 3600s)");
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = t.split_at(unit_at);
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = n.saturating_mul(scale);
    if secs == 0 {
        return Err(format!("--ttl {text:?}: a token must live at least 1s"));
    }
    if secs > MAX_TOKEN_TTL.as_secs() {
        return Err(format!(
            "--ttl {text:?}: at most 366d (an agent JWT cannot be revoked short of changing \
             the tenant's agent_secret)"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// `confab token`: the signed JWT, or why there is none.
pub async fn token(args: &TokenArgs) -> Result<String, String> {
    let ttl = parse_ttl(&args.ttl)?;
    if args.sub.trim().is_empty() {
        return Err("--sub must not be empty".into());
    }
    let overrides = Overrides::from_env().or(Overrides {
        store: args.store.clone(),
        ..Default::default()
    });
    let config = Config::load(args.config.as_deref(), overrides)?;
    let demo = config.demo;
    let settings = Settings::compile(config).map_err(|e| match &args.config {
        Some(p) => format!("{}: {e}", p.display()),
        None => e,
    })?;
    let Some(tenant) = settings.tenants.by_id(&args.tenant) else {
        let known: Vec<String> = settings
            .tenants
            .all()
            .iter()
            .map(|t| format!("{:?}", t.cfg.id))
            .collect();
        let source = match &args.config {
            Some(p) => format!("in {}", p.display()),
            None => "without a config file (the demo)".to_owned(),
        };
        return Err(format!(
            "unknown tenant {:?} {source}; known tenants: {}",
            args.tenant,
            known.join(", ")
        ));
    };
    let secret = if demo {
        let session_secret = demo_session_secret(&settings.config.store).await?;
        crate::server::demo_agent_secret(&session_secret)
    } else {
        tenant.cfg.agent_secret.clone()
    };
    let now = confab_protocol::time::now_ms() / 1000;
    let claims = AgentClaims {
        sub: args.sub.clone(),
        tenant: tenant.cfg.id.clone(),
        exp: now + ttl.as_secs() as i64,
        name: args.name.clone(),
    };
    Ok(sign_agent_jwt(secret.as_bytes(), &claims))
}

/// The session secret the demo gateway of `store` uses (see the module documentation).
async fn demo_session_secret(store: &str) -> Result<Vec<u8>, String> {
    if store == "memory" {
        return Err(
            "the store is `memory`: the demo's secrets live only inside the running gateway; \
             use the agent JWT it logged at start-up, or run it on sqlite:PATH or Redis"
                .into(),
        );
    }
    if let Some(rest) = store.strip_prefix("sqlite:") {
        let path = Path::new(rest.split_once('?').map_or(rest, |(p, _)| p));
        if let Some(secret) = read_sqlite_secret(path)? {
            return Ok(secret);
        }
    }
    // No gateway ever stored one (SQLite), or Redis: ask the store as a gateway does.
    let backend = confab_store::open(store, confab_store::Retention::default())
        .await
        .map_err(|e| format!("store {store}: {e}"))?;
    let mut fresh = vec![0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let secret = backend
        .store
        .session_secret(fresh)
        .await
        .map_err(|e| format!("store {store}: {e}"))?;
    // SQLite: joins the writer after its commit and releases the database's lock.
    drop(backend);
    if store.starts_with("sqlite:") {
        eprintln!(
            "confab token: no gateway has run on {store} yet: stored a new session secret \
             there, which the gateway will use"
        );
    }
    Ok(secret)
}

/// The `session_secret` row of a SQLite store, read without its lock (read-only; a
/// running gateway may hold the database). `None` when there is no database yet or no
/// secret in it.
fn read_sqlite_secret(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use rusqlite::types::ValueRef;
    use rusqlite::{Connection, OpenFlags, OptionalExtension};
    if !path.exists() {
        return Ok(None);
    }
    let err = |e: rusqlite::Error| format!("{}: {e}", path.display());
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let has_meta = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(err)?
        .is_some();
    if !has_meta {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'session_secret'",
        [],
        |row| {
            Ok(match row.get_ref(0)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                _ => Vec::new(),
            })
        },
    )
    .optional()
    .map_err(err)
    .map(|s| s.filter(|s| !s.is_empty()))
}

/// `confab check-config FILE`: one line per tenant, or the error that makes the file
/// unusable. Environment overrides apply, as they would when the gateway starts.
pub fn check_config(file: &Path) -> Result<Vec<String>, String> {
    let config = Config::load(Some(file), Overrides::from_env())?;
    let settings = Settings::compile(config).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(settings
        .tenants
        .all()
        .iter()
        .map(|t| crate::server::tenant_summary(t))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ttl_units() {
        let secs = |t: &str| parse_ttl(t).map(|d| d.as_secs());
        assert_eq!(secs("30m"), Ok(1800));
        assert_eq!(secs("8h"), Ok(28_800));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("3600s"), Ok(3600));
        assert_eq!(secs(" 1s "), Ok(1));
        assert_eq!(secs("366d"), Ok(366 * 86_400));
        for bad in [
            "",
            "8",
            "h",
            "0h",
            "0s",
            "-1h",
            "1.5h",
            "8H",
            "8 h",
            "8hours",
            "367d",
            "9000h",
            "99999999999999999999d",
            "18446744073709551615s",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        assert!(parse_ttl("0m").unwrap_err().contains("at least"));
        assert!(parse_ttl("400d").unwrap_err().contains("366d"));
    }

    #[test]
    fn subcommands_do_not_take_the_gateway_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["confab", "--listen", "x", "token", "--tenant", "a"]).is_err());
        let cli = parse(&["confab", "token", "--tenant", "a", "--ttl", "30m"]).unwrap();
        match cli.command {
            Some(Command::Token(t)) => {
                assert_eq!((t.tenant.as_str(), t.sub.as_str()), ("a", "admin"));
                assert_eq!(t.ttl, "30m");
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["confab", "check-config", "f.toml", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(matches!(cli.command, Some(Command::CheckConfig(_))));
        let cli = parse(&["confab", "--log-format", "json", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.as_deref(), Some("127.0.0.1:0"));
    }
}
