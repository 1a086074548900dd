//! `confab-loadtest`: parses flags and runs one scenario (see the library's `scenario`),
//! the webhook sink, the fake assistant upstream, or a config generator.

use clap::Parser;
use confab_loadtest::cli::{Cli, Command};
use confab_loadtest::{assistant_config, scenario, webhook_config};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::WebhookConfig(a) = &cli.command {
        return webhook_config::run(a);
    }
    if let Command::AssistantConfig(a) = &cli.command {
        return assistant_config::run(a);
    }
    // Two cores: a multi-threaded runtime still helps (one core can parse while the other
    // writes), and child processes of `connections` each get their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Connections(a) => scenario::connections::run(a).await,
            Command::Chat(a) => scenario::chat::run(a).await,
            Command::Broadcast(a) => scenario::broadcast::run(a).await,
            Command::Http(a) => scenario::http::run(a).await,
            Command::Webhooks(a) => scenario::webhooks::run(a).await,
            Command::WebhookSink(a) => scenario::webhooks::sink(a)
                .await
                .map(|()| Default::default()),
            Command::Assistant(a) => scenario::assistant::run(a).await,
            Command::Attachments(a) => scenario::attachments::run(a).await,
            Command::AssistantUpstream(a) => scenario::assistant::upstream(a)
                .await
                .map(|()| Default::default()),
            Command::WebhookConfig(_) | Command::AssistantConfig(_) => {
                unreachable!("handled above")
            }
        }
    })?;
    Ok(())
}
