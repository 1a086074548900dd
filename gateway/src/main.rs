//! `confab` — the gateway binary: flags, logging, the signal that stops it, and the operator
//! commands `confab token` and `confab check-config` (their work is in
//! [`confab_gateway::cli`]).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use confab_gateway::cli::{self, Cli, Command, LogTo, ServeArgs};
use confab_gateway::{Config, Options, Overrides, Settings};

/// mimalloc instead of glibc's allocator: the message path allocates and frees many small
/// buffers (JSON, frames, strings) across threads, and glibc's `malloc`/`free`/consolidation
/// took ~14 % of a durable send's CPU. Measured in BENCHMARKS.md ("mimalloc", session 8):
/// ~5-10 % less CPU per durable send and ~10 % less user CPU in broadcast, for ~11 MiB more
/// resident at start and 0.1-0.3 KiB more per idle socket. (SQLite keeps its own, glibc: making
/// mimalloc the process-wide `malloc` measured no better.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            let _logs = cli::init_logging(cli.log_format, LogTo::Stdout, "info");
            match serve(cli.serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e:?}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Token(args)) => {
            let _logs = cli::init_logging(cli.log_format, LogTo::Stderr, "warn");
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail("token", &e.to_string()),
            };
            match runtime.block_on(cli::token(&args)) {
                Ok(jwt) => {
                    println!("{jwt}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail("token", &e),
            }
        }
        Some(Command::CheckConfig(args)) => {
            let _logs = cli::init_logging(cli.log_format, LogTo::Stderr, "warn");
            match cli::check_config(&args.file) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("check-config", &e),
            }
        }
    }
}

fn fail(command: &str, message: &str) -> ExitCode {
    eprintln!("confab {command}: {message}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let flags = Overrides {
        listen: args.listen,
        store: args.store,
        ..Default::default()
    };
    let settings = Config::load(args.config.as_deref(), Overrides::from_env().or(flags))
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
