//! End-to-end: the scenarios against a real `confab-baseline` server on port 0, as the
//! command line would run them, checking that nothing is lost and the figures add up.

use clap::Parser;
use confab_loadtest::cli::{Cli, Command};
use confab_loadtest::scenario;
use serde_json::Value;
use tokio::net::TcpListener;

/// Starts the baseline room server on an ephemeral port; returns its base URL.
async fn baseline() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(confab_loadtest::baseline::run(
        listener,
        4096,
        std::future::pending::<()>(),
    ));
    url
}

async fn run(args: &[&str]) -> Value {
    let argv = std::iter::once("confab-loadtest").chain(args.iter().copied());
    let doc = match Cli::parse_from(argv).command {
        Command::Connections(a) => scenario::connections::run(a).await,
        Command::Chat(a) => scenario::chat::run(a).await,
        Command::Broadcast(a) => scenario::broadcast::run(a).await,
        Command::Http(a) => scenario::http::run(a).await,
        Command::Webhooks(a) => scenario::webhooks::run(a).await,
        Command::Assistant(a) => scenario::assistant::run(a).await,
        Command::Attachments(a) => scenario::attachments::run(a).await,
        Command::WebhookSink(_)
        | Command::WebhookConfig(_)
        | Command::AssistantUpstream(_)
        | Command::AssistantConfig(_) => unreachable!("not a scenario"),
    };
    doc.unwrap()["results"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_open() {
    let url = baseline().await;
    let r = run(&[
        "connections",
        "--target",
        "baseline",
        "--url",
        &url,
        "-n",
        "300",
        "--rate",
        "3000",
        "--hold",
        "300ms",
        "--source-ips",
        "3",
        "--server-pid",
        &std::process::id().to_string(),
        "--json",
    ])
    .await;
    assert_eq!(r["counts"]["opened"], 300, "{r:#}");
    assert_eq!(r["stayedOpen"], 300, "{r:#}");
    assert_eq!(r["counts"]["failed"], 0, "{r:#}");
    assert_eq!(r["openLatency"]["count"], 300, "{r:#}");
    assert!(
        r["server"]["holdEnd"]["fds"].as_u64().unwrap() >= 600,
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_delivers_everything_in_order() {
    let url = baseline().await;
    let r = run(&[
        "broadcast",
        "--target",
        "baseline",
        "--url",
        &url,
        "--agents",
        "10",
        "--rate",
        "200",
        "--duration",
        "500ms",
        "--publishers",
        "2",
        "--json",
    ])
    .await;
    let accepted = r["accepted"].as_u64().unwrap();
    assert!(accepted >= 90, "{r:#}");
    assert_eq!(r["deliveries"].as_u64().unwrap(), accepted * 10, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["duplicates"], 0, "{r:#}");
    assert_eq!(r["outOfOrder"], 0, "{r:#}");
    assert_eq!(
        r["deliveryLatency"]["count"].as_u64().unwrap(),
        accepted * 10,
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_echoes_and_fans_out() {
    let url = baseline().await;
    let r = run(&[
        "chat",
        "--target",
        "baseline",
        "--url",
        &url,
        "--visitors",
        "20",
        "--agents",
        "3",
        "--rate",
        "200",
        "--duration",
        "500ms",
        "--size",
        "200",
        "--json",
    ])
    .await;
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 90, "{r:#}");
    assert_eq!(
        r["agents"]["deliveries"].as_u64().unwrap(),
        sent * 3,
        "{r:#}"
    );
    assert_eq!(r["agents"]["lost"], 0, "{r:#}");
    assert_eq!(r["echo"]["deliveries"].as_u64().unwrap(), sent, "{r:#}");
    assert_eq!(r["echo"]["lost"], 0, "{r:#}");
}
