//! A webhook receiver for the tests: a real HTTP server on loopback that checks every
//! delivery's signature and answers as the test tells it (2xx, an error status, a hang),
//! and can go down and come back on the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Ok,
    /// This status to every request.
    Status(u16),
    /// Never answers (until the receiver stops).
    Hang,
}

/// One request received.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Value,
    /// `X-Confab-Signature` verified with the receiver's secret, within 5 minutes.
    pub signature_ok: bool,
    /// What the receiver answered (`None`: it hung).
    pub answered: Option<u16>,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn offset(&self) -> u64 {
        self.body["offset"].as_str().unwrap().parse().unwrap()
    }
}

struct Shared {
    secret: String,
    hits: Mutex<Vec<Hit>>,
    mode: Mutex<Mode>,
    /// Answers this many requests with 500 before following `mode`.
    fail_next: Mutex<u32>,
    notify: Notify,
    stop: CancellationToken,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        Receiver::start_on(secret, 0, Vec::new()).await
    }

    async fn start_on(secret: &str, port: u16, hits: Vec<Hit>) -> Receiver {
        let shared = Arc::new(Shared {
            secret: secret.to_owned(),
            hits: Mutex::new(hits),
            mode: Mutex::new(Mode::Ok),
            fail_next: Mutex::new(0),
            notify: Notify::new(),
            stop: CancellationToken::new(),
        });
        // The port of a receiver that just stopped may linger briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot bind {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        let stop = shared.stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Receiver {
            addr,
            shared,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock() = mode;
    }

    /// The next `n` requests get 500, then `mode` applies again.
    pub fn fail_next(&self, n: u32) {
        *self.shared.fail_next.lock() = n;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().clone()
    }

    /// Answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.answered.is_some_and(|s| (200..300).contains(&s)))
            .collect()
    }

    /// Waits until `pred` holds over every request received so far.
    pub async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[Hit]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.notify.notified();
            if pred(&self.shared.hits.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let hits = self.hits();
                panic!(
                    "receiver: {what} not seen within {within:?}; {} requests, offsets {:?}",
                    hits.len(),
                    hits.iter()
                        .map(|h| h.body["offset"].clone())
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Stops listening and closes every connection (the port is free afterwards).
    /// Returns what it had received, for [`Receiver::restart`].
    pub async fn stop(mut self) -> (u16, String, Vec<Hit>) {
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        (self.addr.port(), self.shared.secret.clone(), self.hits())
    }

    /// Back on the same port, keeping what was received before.
    pub async fn restart((port, secret, hits): (u16, String, Vec<Hit>)) -> Receiver {
        Receiver::start_on(&secret, port, hits).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = confab_protocol::time::now_ms() / 1000;
    let signature_ok = headers
        .get("x-confab-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sig| {
            confab_protocol::token::verify_webhook(shared.secret.as_bytes(), sig, &body, now, 300)
        });
    let answer = {
        let mut fail = shared.fail_next.lock();
        if *fail > 0 {
            *fail -= 1;
            Some(500)
        } else {
            match *shared.mode.lock() {
                Mode::Ok => Some(200),
                Mode::Status(s) => Some(s),
                Mode::Hang => None,
            }
        }
    };
    shared.hits.lock().push(Hit {
        at: Instant::now(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature_ok,
        answered: answer,
    });
    shared.notify.notify_waiters();
    match answer {
        Some(s) => StatusCode::from_u16(s).unwrap(),
        None => {
            shared.stop.cancelled().await;
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
