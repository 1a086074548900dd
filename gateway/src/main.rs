//! `confab` — the gateway binary: flags, logging, the signal that stops it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use confab_gateway::{Config, Options, Overrides, Settings};

/// Confab: a self-hostable real-time chat gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (without one, a demo tenant is served).
    #[arg(long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`; env CONFAB_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Store URL: `sqlite:PATH`, `memory` or `redis://HOST:PORT/DB` (env CONFAB_STORE).
    #[arg(long)]
    store: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colours only on a terminal: logs that go to files and pipes stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let flags = Overrides {
        listen: cli.listen,
        store: cli.store,
        ..Default::default()
    };
    let settings = Config::load(cli.config.as_deref(), Overrides::from_env().or(flags))
        .and_then(Settings::compile)
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&settings.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.config.listen))?;
    confab_gateway::run(listener, settings, Options::default(), shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
