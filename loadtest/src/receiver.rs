//! The webhook receiver of the `webhooks` scenario and of `webhook-sink`: a small HTTP/1.1
//! server (hyper, one task per keep-alive connection) that answers `POST /hook/…` at once —
//! 200 with an empty body, or 401 when `X-Confab-Signature` does not verify
//! (`confab_protocol::token::verify_webhook`, as a tenant's backend would check it; the
//! gateway then retries, so a wrong secret shows as a stall, not as deliveries) — and
//! counts what arrives the way agents count frames ([`RecvStats`]: first deliveries,
//! duplicates, out of order, latency).
//!
//! Deliveries are told apart in one of two ways:
//! - [`Mode::Stamped`] (`webhooks`): this run published the events, so each carries a
//!   [`Stamp`] in its `data` — sender = tenant index, sequence = the tenant's publish
//!   number, send time = when the publish request started. Loss is judged against what the
//!   gateway accepted; a stamp must arrive at its own tenant's webhook.
//! - [`Mode::Offsets`] (`webhook-sink`): events of any origin (chat messages…). Each
//!   webhook (receiver path) is a sender, the event's `offset` its sequence, and latency is
//!   counted from `createdAt` (the commit, to the millisecond). Nothing says what to expect,
//!   so there is no loss count.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use confab_protocol::token::verify_webhook;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::probe::{now_us, Stamp};
use crate::scenario::RecvStats;
use crate::stats::{Arrival, Failures, SeqSet, SeqTracker};
use crate::webhook_config::{path_tenant, tenant_index};

/// Oldest signature timestamp accepted, in seconds (what `docs/webhooks.md` suggests).
pub const TOLERANCE_SECS: i64 = 300;

/// How deliveries are identified (see the module docs).
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// By the stamp of run `run`, per tenant.
    Stamped { run: u32 },
    /// By `offset`, per webhook.
    Offsets,
}

/// The receiver's state: what arrived, and what was wrong.
pub struct Receiver {
    /// The webhooks' signing secret.
    secret: Vec<u8>,
    mode: Mode,
    /// First deliveries, duplicates, out of order, latency, last arrival.
    pub stats: RecvStats,
    /// Sequence tracking (and, in `Offsets` mode, the webhook numbering), behind one lock:
    /// a few hundred nanoseconds per delivery, far below a delivery's cost.
    tally: Mutex<Tally>,
    /// Refused or unexpected requests, by reason.
    pub problems: Failures,
    /// Verified deliveries that are not this run's (another event type, an earlier run).
    pub other: AtomicU64,
    /// When the first delivery of the run arrived (Unix µs; `u64::MAX` before).
    pub first_us: AtomicU64,
    /// `webhooks --rate 0`: a permit back to the publishers per first delivery.
    window: Option<Arc<Semaphore>>,
}

#[derive(Default)]
struct Tally {
    tracker: SeqTracker,
    /// `Offsets` mode: receiver path → sender index.
    hooks: HashMap<String, u32>,
}

/// The fields `Offsets` mode reads from a webhook body.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    offset: &'a str,
    #[serde(rename = "createdAt", borrow)]
    created_at: &'a str,
}

impl Receiver {
    /// A receiver checking signatures with `secret`.
    pub fn new(secret: &str, mode: Mode, window: Option<Arc<Semaphore>>) -> Arc<Receiver> {
        Arc::new(Receiver {
            secret: secret.as_bytes().to_vec(),
            mode,
            stats: RecvStats::default(),
            tally: Mutex::default(),
            problems: Failures::default(),
            other: AtomicU64::new(0),
            first_us: AtomicU64::new(u64::MAX),
            window,
        })
    }

    /// Binds the receiver's address (`--receiver`).
    pub async fn bind(addr: &str) -> Result<TcpListener> {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("webhook receiver: binding {addr}"))
    }

    /// Serves until the task is dropped or aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, typically: let some close.
                    self.problems.add(format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // An answer is one small segment; Nagle would hold it (and the latency) back.
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| me.clone().answer(req));
                // Ends when the gateway closes the connection.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn answer(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let status = match (parts.method == Method::POST)
            .then(|| path_tenant(parts.uri.path()))
            .flatten()
        {
            None => {
                self.problems
                    .add(format!("{} to a path other than /hook/…", parts.method));
                StatusCode::NOT_FOUND
            }
            Some(tenant) => match body.collect().await {
                Ok(b) => {
                    let signature = parts
                        .headers
                        .get("x-confab-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    self.receive(parts.uri.path(), tenant, signature, &b.to_bytes())
                }
                Err(e) => {
                    self.problems.add(format!("reading a webhook body: {e}"));
                    StatusCode::BAD_REQUEST
                }
            },
        };
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = status;
        Ok(resp)
    }

    /// Checks and counts one delivery to `path` (of `tenant`); the status to answer.
    pub fn receive(&self, path: &str, tenant: &str, signature: &str, body: &[u8]) -> StatusCode {
        let now = now_us();
        if !verify_webhook(
            &self.secret,
            signature,
            body,
            (now / 1_000_000) as i64,
            TOLERANCE_SECS,
        ) {
            self.problems
                .add("signature did not verify (answered 401; the gateway retries)");
            return StatusCode::UNAUTHORIZED;
        }
        let mut stamp = match self.mode {
            Mode::Stamped { run } => {
                let Some(s) = std::str::from_utf8(body)
                    .ok()
                    .and_then(|t| Stamp::find(t, run))
                else {
                    self.other.fetch_add(1, Relaxed);
                    return StatusCode::OK;
                };
                if tenant_index(tenant) != Some(s.sender) {
                    self.problems
                        .add("an event delivered to another tenant's webhook");
                    return StatusCode::OK;
                }
                s
            }
            Mode::Offsets => {
                let parsed = serde_json::from_slice::<Envelope<'_>>(body)
                    .ok()
                    .and_then(|e| {
                        Some((
                            e.offset.parse::<u64>().ok()?,
                            confab_protocol::time::parse_ms(e.created_at)?,
                        ))
                    });
                let Some((offset, created_ms)) = parsed else {
                    self.problems
                        .add("a body without a decimal `offset` and a `createdAt`");
                    return StatusCode::OK;
                };
                Stamp {
                    run: 0,
                    sender: 0, // the webhook's number, below
                    seq: offset,
                    sent_us: u64::try_from(created_ms).unwrap_or(0) * 1000,
                }
            }
        };
        let mut tally = self.tally.lock().expect("receiver lock");
        if let Mode::Offsets = self.mode {
            let next = tally.hooks.len() as u32;
            stamp.sender = *tally.hooks.entry(path.to_owned()).or_insert(next);
        }
        let arrival = self
            .stats
            .record(stamp.sender as usize, &mut tally.tracker, &stamp);
        drop(tally);
        if arrival != Arrival::Duplicate {
            self.first_us.fetch_min(now, Relaxed);
            if let Some(w) = &self.window {
                w.add_permits(1);
            }
        }
        StatusCode::OK
    }

    /// How many of each sender's `expected` sequence numbers never arrived.
    pub fn lost(&self, expected: &[SeqSet]) -> u64 {
        self.tally
            .lock()
            .expect("receiver lock")
            .tracker
            .lost(expected)
    }

    /// Webhooks heard from (`Offsets` mode).
    pub fn webhooks(&self) -> usize {
        self.tally.lock().expect("receiver lock").hooks.len()
    }

    /// From the first delivery to the last (zero before two arrived).
    pub fn span(&self) -> Duration {
        let (first, last) = (
            self.first_us.load(Relaxed),
            self.stats.last_us.load(Relaxed),
        );
        Duration::from_micros(last.saturating_sub(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_protocol::token::sign_webhook;

    const SECRET: &str = "0123456789abcdef";

    fn now_secs() -> i64 {
        (now_us() / 1_000_000) as i64
    }

    fn body_of(stamp: &Stamp) -> String {
        format!(
            r#"{{"id":"dlv_1","type":"campaign:progress","offset":"{}","tenantId":"t{}","createdAt":"2026-11-30T10:00:00.000Z","data":{{"stamp":"{}"}}}}"#,
            stamp.seq,
            stamp.sender,
            stamp.body(80)
        )
    }

    #[test]
    fn counts_loss_duplicates_and_order_per_tenant() {
        let rx = Receiver::new(SECRET, Mode::Stamped { run: 7 }, None);
        let deliver = |tenant: u32, seq: u64| {
            let s = Stamp {
                run: 7,
                sender: tenant,
                seq,
                sent_us: now_us(),
            };
            let body = body_of(&s);
            let sig = sign_webhook(SECRET.as_bytes(), now_secs(), body.as_bytes());
            let path = format!("/hook/t{tenant}");
            rx.receive(&path, &format!("t{tenant}"), &sig, body.as_bytes())
        };
        for (tenant, seq) in [(0, 1), (0, 3), (0, 2), (0, 3), (1, 1), (1, 2)] {
            assert_eq!(deliver(tenant, seq), StatusCode::OK);
        }
        assert_eq!(rx.stats.deliveries.load(Relaxed), 5);
        assert_eq!(rx.stats.duplicates.load(Relaxed), 1);
        assert_eq!(rx.stats.out_of_order.load(Relaxed), 1);
        // Accepted: tenant 0 published 1..=4, tenant 1 1..=2 → only t0's 4 is missing.
        assert_eq!(rx.lost(&[SeqSet::first_n(4), SeqSet::first_n(2)]), 1);
        assert_eq!(rx.stats.latency.summary().count, 5);

        // An earlier run's event is answered and set aside; a stamp at the wrong tenant's
        // webhook and a bad signature are problems.
        let old = body_of(&Stamp {
            run: 6,
            sender: 0,
            seq: 9,
            sent_us: 0,
        });
        let sig = sign_webhook(SECRET.as_bytes(), now_secs(), old.as_bytes());
        assert_eq!(
            rx.receive("/hook/t0", "t0", &sig, old.as_bytes()),
            StatusCode::OK
        );
        assert_eq!(rx.other.load(Relaxed), 1);
        let stray = body_of(&Stamp {
            run: 7,
            sender: 1,
            seq: 3,
            sent_us: 0,
        });
        let sig = sign_webhook(SECRET.as_bytes(), now_secs(), stray.as_bytes());
        assert_eq!(
            rx.receive("/hook/t0", "t0", &sig, stray.as_bytes()),
            StatusCode::OK
        );
        let forged = sign_webhook(b"another secret!!", now_secs(), stray.as_bytes());
        assert_eq!(
            rx.receive("/hook/t1", "t1", &forged, stray.as_bytes()),
            StatusCode::UNAUTHORIZED
        );
        let stale = sign_webhook(SECRET.as_bytes(), now_secs() - 3600, stray.as_bytes());
        assert_eq!(
            rx.receive("/hook/t1", "t1", &stale, stray.as_bytes()),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(rx.problems.total(), 3, "{:?}", rx.problems.snapshot());
        assert_eq!(rx.stats.deliveries.load(Relaxed), 5);
    }

    #[tokio::test]
    async fn serves_signed_posts_and_counts_offsets_per_webhook() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let window = Arc::new(Semaphore::new(0));
        let rx = Receiver::new(SECRET, Mode::Offsets, Some(window.clone()));
        let server = tokio::spawn(rx.clone().serve(listener));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let created = confab_protocol::time::format_ms(confab_protocol::time::now_ms() - 5);
        let post = |path: &str, offset: u64| {
            let body = format!(r#"{{"offset":"{offset}","createdAt":"{created}","data":{{}}}}"#);
            let sig = sign_webhook(SECRET.as_bytes(), now_secs(), body.as_bytes());
            Request::post(path)
                .header("host", "receiver")
                .header("x-confab-signature", sig)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        for (path, offset) in [
            ("/hook/demo/0", 1),
            ("/hook/demo/1", 1),
            ("/hook/demo/0", 2),
            ("/hook/demo/0", 2),
        ] {
            let resp = send.send_request(post(path, offset)).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        let resp = send.send_request(post("/elsewhere", 3)).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(rx.webhooks(), 2);
        assert_eq!(rx.stats.deliveries.load(Relaxed), 3);
        assert_eq!(rx.stats.duplicates.load(Relaxed), 1);
        assert_eq!(rx.stats.out_of_order.load(Relaxed), 0);
        assert_eq!(rx.problems.total(), 1);
        // Latency from createdAt: at least the 5 ms the event was "old".
        assert!(rx.stats.latency.summary().p50_ms >= 5.0);
        // One permit per first delivery.
        assert_eq!(window.available_permits(), 3);
        server.abort();
    }
}
