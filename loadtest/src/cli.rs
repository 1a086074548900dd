//! The command line. [`Common`] holds the flags every scenario shares (where the gateway
//! is, the tenant's credentials, output format); each scenario has its own `*Args`. Every
//! args struct is `Serialize`, so the parameters printed first and those in the `--json`
//! document come from one place.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::api::Creds;

/// The demo tenant's public key (SPEC.md's example config and the gateway's built-in demo).
pub const DEMO_PK: &str = "pk_live_0123456789abcdef0123456789abcdef";

/// Load generator for the Confab gateway (and the confab-baseline server).
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open N idle visitor (or agent) WebSockets, hold them, report how many stayed open
    /// and the server's memory per connection.
    Connections(ConnectionsArgs),
    /// V visitors chat at a total rate R while A agents watch the tenant channel: end-to-end
    /// latency visitor→agent and visitor→own echo, loss, duplicates, order.
    Chat(ChatArgs),
    /// The tenant backend publishes custom events at rate R to A agents: deliveries/s,
    /// latency, loss.
    Broadcast(BroadcastArgs),
    /// HTTP API mix (config, sessions, sends, polls) or one route: req/s and latency per route.
    Http(HttpArgs),
    /// The tenant backend publishes custom events for N tenants while this tool receives
    /// their webhooks: deliveries/s, publish → webhook latency, loss, order, CPU per delivery.
    Webhooks(WebhooksArgs),
    /// Only the webhook receiver (signatures checked, deliveries counted per webhook), so
    /// another scenario can run with webhooks on; prints one line on exit.
    WebhookSink(WebhookSinkArgs),
    /// Prints a gateway config (TOML): loadtest/bench.toml plus N tenants `t0…` with one
    /// webhook each, and optionally K webhooks on bench.toml's tenant.
    WebhookConfig(WebhookConfigArgs),
    /// C visitors chat with an assistant served by a fake OpenAI-compatible upstream (started
    /// here) that streams N stamped tokens: every delta and reply checked, upstream → visitor
    /// latency per delta, gateway CPU per reply and per delta.
    Assistant(AssistantArgs),
    /// Only the fake OpenAI-compatible upstream (`POST /v1/chat/completions`, streamed), to
    /// try an assistant by hand or drive it from another tool.
    AssistantUpstream(AssistantUpstreamArgs),
    /// Prints a gateway config (TOML): loadtest/bench.toml with an `openai` assistant on its
    /// tenant pointing at the fake upstream.
    AssistantConfig(AssistantConfigArgs),
    /// Upload and download throughput of one file size (raw-body uploads, sent in a
    /// message, downloaded and checked), and the gateway's peak RSS while the uploads stream.
    Attachments(AttachmentsArgs),
}

/// `attachments` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct AttachmentsArgs {
    /// The tenant needs `uploads_per_hour_per_session` ≥ 1 and a file store (not `memory`:
    /// give the gateway `--store sqlite:…`, its files then go beside the database).
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// File size, MiB.
    #[arg(long, default_value_t = 5)]
    pub size_mb: usize,
    /// Uploads (then downloads) at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Rounds of `concurrency` uploads, one after the other.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// What is being measured.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A Confab gateway (the SPEC.md protocol).
    Gateway,
    /// confab-baseline (see `baseline_proto`): the limit of tokio + tungstenite.
    Baseline,
}

/// Flags shared by every scenario.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Base URL of a gateway node; repeat for several nodes (used round-robin).
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    /// Base URL(s) agents connect to (tenant channel); defaults to --url. Lets a multi-node
    /// run publish or chat on one node and receive on another.
    #[arg(long = "agent-url")]
    pub agent_urls: Vec<String>,
    /// What to drive: a Confab gateway or the confab-baseline server.
    #[arg(long, value_enum, default_value_t = Target::Gateway)]
    pub target: Target,
    /// Tenant public key.
    #[arg(long, env = "CONFAB_PK", default_value = DEMO_PK)]
    pub pk: String,
    /// Tenant agent_secret, to sign HS256 agent JWTs.
    #[arg(
        long,
        env = "CONFAB_AGENT_SECRET",
        default_value = "bench-agent-secret"
    )]
    pub agent_secret: String,
    /// Tenant id (the `tenant` claim of agent JWTs).
    #[arg(long, env = "CONFAB_TENANT", default_value = "demo")]
    pub tenant: String,
    /// Tenant server_key, for POST /v1/tenant/events.
    #[arg(long, env = "CONFAB_SERVER_KEY", default_value = "bench-server-key")]
    pub server_key: String,
    /// Spread client sockets over 127.0.0.1..127.0.0.K (loopback servers only); 0 = enough
    /// for the run (one address per 25,000 sockets).
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// PID of the server process, to report its RSS and open files before and after;
    /// repeat for several nodes (figures are summed).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// Summed RSS and open files of the `--server-pid` processes, if any were given.
    pub fn server_stat(&self) -> Option<crate::report::ProcStat> {
        crate::report::proc_stat_sum(&self.server_pids)
    }

    /// The tenant credentials.
    pub fn creds(&self) -> Creds {
        Creds {
            pk: self.pk.clone(),
            agent_secret: self.agent_secret.clone(),
            tenant: self.tenant.clone(),
            server_key: self.server_key.clone(),
        }
    }

    /// URLs for agents: `--agent-url`, or `--url` when none was given.
    pub fn agent_urls(&self) -> &[String] {
        if self.agent_urls.is_empty() {
            &self.urls
        } else {
            &self.agent_urls
        }
    }
}

/// Which socket `connections` opens.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnRole {
    /// Visitor channel: config + session + /v1/visitor/ws (baseline: /sub).
    Visitor,
    /// Tenant channel with an agent JWT (baseline: /sub).
    Agent,
}

/// `connections` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Connections to open in total.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Opening rate, connections per second (all processes together).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to hold the connections once all are open.
    #[arg(long, default_value = "10s")]
    pub hold: Dur,
    /// Client processes; 0 = one per 19,000 connections (a process may open 20,000 files).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Concurrent session creations (config + POST /v1/sessions), all processes together.
    #[arg(long, default_value_t = 32)]
    pub sessions_concurrency: usize,
    /// Most sockets opening at once (connect + upgrade + auth), all processes together:
    /// a server slower than --rate then slows the ramp down instead of timing out auths.
    #[arg(long, default_value_t = 256)]
    pub open_concurrency: usize,
    /// Which channel to open.
    #[arg(long, value_enum, default_value_t = ConnRole::Visitor)]
    pub role: ConnRole,
    /// Internal: run as child process number I of --procs.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub child_index: Option<usize>,
}

/// `chat` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Visitors, each in its own conversation.
    #[arg(long, default_value_t = 100)]
    pub visitors: usize,
    /// Agents on the tenant channel (each receives every visitor message).
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Total visitor send rate, messages per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long visitors send.
    #[arg(long, default_value = "10s")]
    pub duration: Dur,
    /// Message body size in bytes (at least the ~60-byte stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// After sending stops, how long to wait for stragglers before counting losses.
    #[arg(long, default_value = "5s")]
    pub drain: Dur,
    /// Concurrent session creations while setting up.
    #[arg(long, default_value_t = 32)]
    pub sessions_concurrency: usize,
    /// Also measure the disk: `fdatasync` of 4 KiB appends in this directory (the gateway's
    /// database directory) throughout the sending phase, reported beside the latencies.
    #[arg(long)]
    pub fsync_probe: Option<std::path::PathBuf>,
}

/// `broadcast` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct BroadcastArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Agents on the tenant channel.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Events published per second (total).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "10s")]
    pub duration: Dur,
    /// Concurrent publishers (HTTP connections; baseline: /pub sockets), each with its own
    /// sequence so per-publisher order can be checked.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Approximate event data size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// After publishing stops, how long to wait for stragglers before counting losses.
    #[arg(long, default_value = "5s")]
    pub drain: Dur,
    /// Custom event type to publish.
    #[arg(long, default_value = "campaign:progress")]
    pub event_type: String,
    /// Slow consumers: this many agents stop reading for --stall, a third into the run, so
    /// the server must drop them (1013) and they must resume without loss.
    #[arg(long, default_value_t = 0)]
    pub stall_agents: usize,
    /// How long stalled agents stop reading.
    #[arg(long, default_value = "10s")]
    pub stall: Dur,
}

/// Where this tool's webhook receiver listens and how it checks signatures (`webhooks`
/// and `webhook-sink`).
#[derive(Args, Debug, Clone, Serialize)]
pub struct ReceiverArgs {
    /// Address the webhook receiver listens on (`POST /hook/{tenant}` and
    /// `/hook/{tenant}/{k}`); the gateway's webhook URLs must point here.
    #[arg(long, default_value = crate::webhook_config::DEFAULT_RECEIVER)]
    pub receiver: String,
    /// The webhooks' signing secret (`secret` of every `[[tenants.webhooks]]`).
    #[arg(long, env = "CONFAB_WEBHOOK_SECRET", default_value = crate::webhook_config::DEFAULT_SECRET)]
    pub secret: String,
}

/// `webhooks` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct WebhooksArgs {
    /// Where the gateway is, CPU and output flags. The tenant flags are not used: tenants
    /// are `t0`…`t{N-1}` with server keys `bench-server-key-{i}` (see `webhook-config`).
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub receiver: ReceiverArgs,
    /// Tenants to publish for, each with one webhook (the gateway's config must have them:
    /// `webhook-config --tenants N`).
    #[arg(long, default_value_t = 1)]
    pub tenants: usize,
    /// Events published per second, all tenants together; 0 = as fast as the webhooks
    /// deliver, with at most --concurrency events published and not yet delivered.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// With --rate 0: most events published but not yet received, all tenants together.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s")]
    pub duration: Dur,
    /// Approximate event data size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// After publishing stops, how long to wait for stragglers before counting losses.
    #[arg(long, default_value = "5s")]
    pub drain: Dur,
    /// Custom event type to publish.
    #[arg(long, default_value = "campaign:progress")]
    pub event_type: String,
}

/// `webhook-sink` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct WebhookSinkArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub receiver: ReceiverArgs,
    /// Stop after this long; by default run until SIGINT or SIGTERM.
    #[arg(long)]
    pub duration: Option<Dur>,
}

/// `webhook-config` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct WebhookConfigArgs {
    /// Tenants `t0`…`t{N-1}` to add, each with one webhook to `http://RECEIVER/hook/t{i}`.
    #[arg(long, default_value_t = 100)]
    pub tenants: usize,
    /// Webhooks to add to the base file's first tenant (`demo`), to
    /// `http://RECEIVER/hook/demo/{k}` (a webhook is known by its URL, so each needs its own).
    #[arg(long, default_value_t = 0)]
    pub demo_webhooks: usize,
    /// Address of the webhook receiver (`webhooks` or `webhook-sink`).
    #[arg(long, default_value = crate::webhook_config::DEFAULT_RECEIVER)]
    pub receiver: String,
    /// Signing secret of every webhook (at least 16 characters).
    #[arg(long, env = "CONFAB_WEBHOOK_SECRET", default_value = crate::webhook_config::DEFAULT_SECRET)]
    pub secret: String,
    /// Config to start from; default: the copy of loadtest/bench.toml built into the tool.
    #[arg(long)]
    pub base: Option<std::path::PathBuf>,
}

/// What the fake upstream streams (`assistant`, `assistant-upstream`).
#[derive(Args, Debug, Clone, Serialize)]
pub struct UpstreamArgs {
    /// Address the fake OpenAI-compatible upstream listens on; the assistant's `url` must
    /// point here (`assistant-config --upstream`).
    #[arg(long, default_value = crate::upstream::DEFAULT_ADDR)]
    pub upstream: String,
    /// Content pieces (tokens) per reply.
    #[arg(long, default_value_t = 20)]
    pub tokens: usize,
    /// Time between two pieces.
    #[arg(long, default_value = "50ms")]
    pub gap: Dur,
    /// Time from the request to the first piece; default: one --gap.
    #[arg(long)]
    pub first_token: Option<Dur>,
}

impl UpstreamArgs {
    /// The upstream's script.
    pub fn script(&self, run: Option<u32>) -> crate::upstream::Script {
        crate::upstream::Script {
            tokens: self.tokens,
            gap: self.gap.0,
            first: self.first_token.unwrap_or(self.gap).0,
            run,
        }
    }
}

/// `assistant` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct AssistantArgs {
    /// Where the gateway is, CPU and output flags; the tenant's default assistant must be an
    /// `openai` one pointing at --upstream that answers `always` (`assistant-config`).
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    pub upstream: UpstreamArgs,
    /// Visitors, each in its own conversation with one reply streaming at a time: the
    /// number of concurrent streams.
    #[arg(long, default_value_t = 100)]
    pub concurrent: usize,
    /// Messages each visitor sends, each once the reply to the previous one is stored.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The visitors' first messages are spread evenly over this long.
    #[arg(long, default_value = "1s")]
    pub ramp: Dur,
    /// Longest wait for one complete reply (its stored message), past which it counts as
    /// lost; default: the reply's nominal duration (first token + tokens × gap) + 40 s
    /// (the SPEC answers an owed reply within `timeout_secs` + 30 s; a claim lease is 10 s).
    #[arg(long)]
    pub reply_timeout: Option<Dur>,
    /// After the last reply, how long to listen for anything extra (a second reply…).
    #[arg(long, default_value = "1s")]
    pub drain: Dur,
    /// Visitor message size in bytes (at least the ~60-byte stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// A reply whose first delta comes this much later than the upstream's first token
    /// is due counts as a late start (reported, not a failure).
    #[arg(long, default_value = "500ms")]
    pub late: Dur,
    /// Concurrent session creations while setting up.
    #[arg(long, default_value_t = 32)]
    pub sessions_concurrency: usize,
}

impl AssistantArgs {
    /// The reply timeout in effect.
    pub fn reply_timeout(&self) -> Duration {
        self.reply_timeout.map(|d| d.0).unwrap_or_else(|| {
            let s = self.upstream.script(None);
            s.first + s.gap * self.upstream.tokens as u32 + Duration::from_secs(40)
        })
    }
}

/// `assistant-upstream` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct AssistantUpstreamArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub upstream: UpstreamArgs,
    /// Stop after this long; by default run until SIGINT or SIGTERM.
    #[arg(long)]
    pub duration: Option<Dur>,
}

/// `assistant-config` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct AssistantConfigArgs {
    /// Address of the fake upstream (`assistant` or `assistant-upstream`).
    #[arg(long, default_value = crate::upstream::DEFAULT_ADDR)]
    pub upstream: String,
    /// The assistant's `timeout_secs` (for the whole reply).
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// The assistant's `context_messages`.
    #[arg(long, default_value_t = 20)]
    pub context_messages: usize,
    /// Config to start from; default: the copy of loadtest/bench.toml built into the tool.
    #[arg(long)]
    pub base: Option<std::path::PathBuf>,
}

/// One HTTP route of the `http` scenario.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// `GET /v1/config?pk=`.
    Config,
    /// `GET /v1/config` for a challenge, then `POST /v1/sessions` (timed on its own).
    Session,
    /// `POST /v1/messages`, acknowledged (201) sends.
    Send,
    /// `GET /v1/messages?limit=PAGE`, a page of history.
    Poll,
}

impl Route {
    /// All routes, in table order.
    pub const ALL: [Route; 4] = [Route::Config, Route::Session, Route::Send, Route::Poll];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Route::Config => "GET /v1/config",
            Route::Session => "POST /v1/sessions",
            Route::Send => "POST /v1/messages",
            Route::Poll => "GET /v1/messages",
        }
    }
}

/// `http` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct HttpArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Drive a single route (the single-node floors) instead of the mix.
    #[arg(long, value_enum)]
    pub only: Option<Route>,
    /// Weights of the mix, e.g. `config=10,session=5,send=45,poll=40`.
    #[arg(long, default_value = "config=10,session=5,send=45,poll=40")]
    pub mix: String,
    /// Concurrent workers, each with one keep-alive connection and one session.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "10s")]
    pub duration: Dur,
    /// `limit` of each poll.
    #[arg(long, default_value_t = 50)]
    pub page: usize,
    /// Messages each worker stores in its conversation before a run with polls, so a poll
    /// returns a full page.
    #[arg(long, default_value_t = 50)]
    pub seed_messages: usize,
    /// Message body size in bytes for sends.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

impl HttpArgs {
    /// The route weights to use: `--only`, or the parsed `--mix`.
    pub fn weights(&self) -> Result<Vec<(Route, u32)>, String> {
        if let Some(r) = self.only {
            return Ok(vec![(r, 1)]);
        }
        let mut out = vec![];
        for part in self.mix.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("bad mix entry {part:?}"))?;
            let route = Route::from_str(name.trim(), true)?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {part:?}"))?;
            if w > 0 {
                out.push((route, w));
            }
        }
        if out.is_empty() {
            return Err("the mix has no route with a positive weight".into());
        }
        Ok(out)
    }
}

/// A duration flag: `10` (seconds), `250ms`, `10s`, `2m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
        let secs = match unit {
            "" | "s" => n,
            "ms" => n / 1000.0,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("bad duration {s:?}"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Resolves when the user asks the run to stop early (SIGINT or SIGTERM).
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_durations() {
        assert_eq!("10".parse::<Dur>().unwrap().0, Duration::from_secs(10));
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert!("2d".parse::<Dur>().is_err());
    }

    #[test]
    fn parses_the_mix_and_defaults() {
        let cli = Cli::parse_from(["t", "http", "--mix", "config=1, send=3,poll=0"]);
        let Command::Http(a) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.weights().unwrap(),
            vec![(Route::Config, 1), (Route::Send, 3)]
        );
        assert_eq!(a.common.urls, ["http://127.0.0.1:8080"]);
        assert_eq!(a.common.pk, DEMO_PK);
        let cli = Cli::parse_from(["t", "chat", "--url", "http://a:1", "--url", "http://b:2"]);
        let Command::Chat(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.common.urls, ["http://a:1", "http://b:2"]);
        assert_eq!(a.common.agent_urls(), ["http://a:1", "http://b:2"]);
    }
}
