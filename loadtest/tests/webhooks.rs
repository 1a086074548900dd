//! End-to-end: the `webhooks` scenario as the command line runs it, against a stand-in for
//! the gateway that accepts `POST /v1/tenant/events` and delivers each event, signed, to
//! the scenario's own receiver — in order, one at a time per tenant, as the gateway does —
//! checking that the figures add up at a fixed rate and in the closed loop (`--rate 0`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use confab_loadtest::cli::{Cli, Command};
use confab_loadtest::scenario;
use confab_protocol::token::sign_webhook;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &str = "bench-webhook-secret";

/// Per tenant: the last offset and the queue of its delivery task.
type Tenants = Mutex<HashMap<usize, (u64, mpsc::UnboundedSender<String>)>>;

/// Starts the stand-in; returns its base URL. Webhooks go to `receiver`.
async fn fake_gateway(receiver: SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tenants: Arc<Tenants> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tenants = tenants.clone();
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let tenants = tenants.clone();
                async move {
                    let key = req.headers()["authorization"].to_str().unwrap().to_owned();
                    let i: usize = key.rsplit('-').next().unwrap().parse().unwrap();
                    let body: Value = serde_json::from_slice(
                        &req.into_body().collect().await.unwrap().to_bytes(),
                    )
                    .unwrap();
                    let offset = {
                        let mut t = tenants.lock().unwrap();
                        let (offset, queue) = t
                            .entry(i)
                            .or_insert_with(|| (0, deliver(receiver, format!("/hook/t{i}"))));
                        *offset += 1;
                        let event = serde_json::json!({
                            "id": format!("dlv_{i}_{offset}"), "type": body["type"],
                            "offset": offset.to_string(), "tenantId": format!("t{i}"),
                            "createdAt": "2026-11-30T10:00:00.000Z", "data": body["data"],
                        });
                        queue.send(event.to_string()).unwrap();
                        *offset
                    };
                    let answer = format!(r#"{{"accepted":true,"offset":"{offset}"}}"#);
                    let mut resp = Response::new(Full::new(Bytes::from(answer)));
                    *resp.status_mut() = hyper::StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    url
}

/// One webhook's deliverer: POSTs what it is given to `path`, one at a time, in order.
fn deliver(receiver: SocketAddr, path: String) -> mpsc::UnboundedSender<String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let stream = TcpStream::connect(receiver).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        while let Some(body) = rx.recv().await {
            let t = (confab_loadtest::probe::now_us() / 1_000_000) as i64;
            let req = Request::post(path.as_str())
                .header("host", "receiver")
                .header(
                    "x-confab-signature",
                    sign_webhook(SECRET.as_bytes(), t, body.as_bytes()),
                )
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
    });
    tx
}

/// A free loopback address for the receiver.
async fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn run(args: &[&str]) -> Value {
    let argv = std::iter::once("confab-loadtest").chain(args.iter().copied());
    let Command::Webhooks(a) = Cli::parse_from(argv).command else {
        panic!("not the webhooks scenario")
    };
    scenario::webhooks::run(a).await.unwrap()["results"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_at_a_fixed_rate_and_in_the_closed_loop() {
    for rate in ["300", "0"] {
        let receiver = free_addr().await;
        let url = fake_gateway(receiver).await;
        let receiver = receiver.to_string();
        let r = run(&[
            "webhooks",
            "--json",
            "--url",
            &url,
            "--receiver",
            &receiver,
            "--tenants",
            "3",
            "--rate",
            rate,
            "--concurrency",
            "8",
            "--duration",
            "1s",
            "--drain",
            "2s",
        ])
        .await;
        let accepted = r["accepted"].as_u64().unwrap();
        assert!(
            accepted >= if rate == "0" { 30 } else { 250 },
            "{rate}: {r}"
        );
        assert_eq!(r["deliveries"].as_u64(), Some(accepted), "{rate}: {r}");
        for k in ["lost", "duplicates", "outOfOrder", "otherDeliveries"] {
            assert_eq!(r[k].as_u64(), Some(0), "{rate} {k}: {r}");
        }
        assert_eq!(r["receiverProblems"], serde_json::json!({}), "{rate}: {r}");
        assert_eq!(r["deliveryLatency"]["count"].as_u64(), Some(accepted));
    }
}
