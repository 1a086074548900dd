//! `confab-baseline`: the benchmark-only room server (see `confab_loadtest::baseline`).

use clap::Parser;

/// Minimal tokio-tungstenite room-broadcast server: /sub, /pub, /chat.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: String,
    /// Broadcast backlog (messages); subscribers further behind are closed with 1013.
    #[arg(long, default_value_t = 4096)]
    queue: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    confab_loadtest::baseline::run(listener, args.queue, confab_loadtest::cli::interrupted()).await
}
