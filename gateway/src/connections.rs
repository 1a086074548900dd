//! The accept loop and the rules every TCP connection lives by (SPEC "Connections and
//! abuse"): a public chat endpoint is attacked, and one client must not be able to hold
//! the node's file descriptors or stall it.
//!
//! - **Accept**: `TCP_NODELAY`; accept errors (out of file descriptors, …) are logged and
//!   retried after a back-off that doubles from 10 ms to 1 s, so a full descriptor table
//!   never turns into a busy loop, and the pending connections wait in the kernel's backlog.
//! - **Per-IP cap**: at most `max_connections_per_ip` open connections per peer address,
//!   HTTP and upgraded WebSockets together (the count is held by the socket itself, so it
//!   lasts as long as the WebSocket does). Beyond it the connection is answered with HTTP
//!   503 `too_many_connections` and closed; at most [`MAX_REFUSING`] refusals are answered
//!   at once, others are closed unanswered. A peer in `trusted_proxies` is not capped: it
//!   carries many clients, and the client behind it is only known from a request header.
//! - **Timeouts** ([`Timeouts`]): a connection must send a complete request head within
//!   `head` of being accepted, or of the first byte of its next request; a keep-alive
//!   connection with no request in flight is closed after `keep_alive`; a request body
//!   from which nothing arrives for `body_stall` is answered 408 `request_timeout` and the
//!   connection closed. A request in flight (a long-poll, an upload) is never cut by the
//!   head or idle timers. hyper's own `header_read_timeout` is not used: it starts when
//!   hyper waits for the next request, so it would also cut idle keep-alive connections at
//!   the head timeout.
//! - **Shutdown**: stop accepting; hyper's graceful shutdown closes an idle connection at
//!   once and one with a request in flight once its response is written (not merely handed
//!   over: the connection is never dropped with a response half-sent); one in the middle
//!   of a head has its head timeout; whatever still runs when the caller's deadline passes
//!   is dropped (`hard`).
//!
//! Connections are served by hyper's HTTP/1 connection directly rather than hyper-util's
//! auto builder (which `axum::serve` used): the gateway speaks HTTP/1.1 only (the
//! WebSocket upgrade included), and skipping the HTTP/2 preface sniffing spares a read
//! ahead and an IO wrapper that an upgraded socket would keep for its whole life. What a
//! socket keeps instead is one `Shared` (about 100 bytes: its per-IP place and timer
//! state); measured on debug builds with 3,000 idle visitor sockets, 10.5 KiB per socket
//! against 10.4 KiB with `axum::serve` (the ~9 KiB budget of `ws` is a release figure).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response};
use axum::Router;
use confab_protocol::{ApiError, ErrorCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::error::error_response;
use crate::policy::limits::CapGuard;
use crate::state::AppState;

/// How long a connection may take at each stage (the SPEC's values by default; tests
/// shorten them through `Options`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accept, or from the first byte of a further request, to a complete head.
    pub head: Duration,
    /// Longest gap between two pieces of a request body.
    pub body_stall: Duration,
    /// Longest wait for the next request on a keep-alive connection.
    pub keep_alive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            head: Duration::from_secs(10),
            body_stall: Duration::from_secs(30),
            keep_alive: Duration::from_secs(75),
        }
    }
}

/// Refusals (503 `too_many_connections`) being answered at once; beyond this an over-cap
/// connection is closed without an answer, so refusing costs a bounded number of files.
pub const MAX_REFUSING: usize = 64;
/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Accepts and serves `app` until the node's shutdown token is cancelled, then waits for
/// the connections to finish; `hard` drops whatever is still open.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: AppState,
    timeouts: Timeouts,
    hard: CancellationToken,
) {
    let conns = TaskTracker::new();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff = ACCEPT_BACKOFF.0;
                x
            }
            // This one connection failed (reset before we took it): nothing to wait for.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                state.metrics.accept_errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "accept failed (out of file descriptors?); retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = state.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        // No Nagle: chat frames are small and latency-bound; coalescing is done by the
        // WebSocket writer (one write per batch of queued frames), not by the kernel.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let ip = peer.ip().to_canonical();
        let guard = if state.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            None
        } else {
            match state.per_ip.try_acquire(ip) {
                Some(g) => Some(g),
                None => {
                    refuse(tcp, &state, &refusals, timeouts.head);
                    continue;
                }
            }
        };
        conns.spawn(serve_connection(
            tcp,
            peer,
            guard,
            app.clone(),
            state.clone(),
            timeouts,
            hard.clone(),
        ));
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Errors that concern one connection, not the listener (as hyper-util and axum classify
/// them).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers an over-cap connection's first request with 503 and closes it.
fn refuse(tcp: TcpStream, state: &AppState, refusals: &Arc<Semaphore>, wait: Duration) {
    state.metrics.connections_refused.fetch_add(1, Relaxed);
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
            let e = ApiError::new(
                ErrorCode::TooManyConnections,
                "too many open connections from your address; close some and retry",
            );
            Ok::<_, Infallible>(with_nosniff(error_response(&e)))
        });
        let conn = http1::Builder::new()
            .keep_alive(false)
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(tcp), svc);
        let _ = tokio::time::timeout(wait, conn).await;
    });
}

fn with_nosniff(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// How a connection's task ended.
enum End {
    Served,
    TimedOut,
    Dropped,
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    guard: Option<CapGuard<std::net::IpAddr>>,
    app: Router,
    state: AppState,
    timeouts: Timeouts,
    hard: CancellationToken,
) {
    let shared = Arc::new(Shared::new(state.clone(), guard));
    let io = TokioIo::new(Tracked {
        tcp,
        shared: shared.clone(),
    });
    let svc = ConnService {
        app,
        shared: shared.clone(),
        peer,
        body_stall: timeouts.body_stall,
    };
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let shutdown = state.shutdown.cancelled();
    let hard = hard.cancelled();
    let mut armed = shared
        .activity
        .deadline(&timeouts)
        .unwrap_or_else(Instant::now);
    let timer = tokio::time::sleep_until(armed);
    tokio::pin!(shutdown, hard, timer);
    let mut draining = false;
    // Every change of the connection's state (a head parsed, a response finished, bytes
    // read) happens while `conn` is polled here, so the deadline is recomputed right after.
    let end = std::future::poll_fn(|cx| {
        if hard.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Dropped);
        }
        if !draining && shutdown.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            return Poll::Ready(End::Served);
        }
        if let Some(deadline) = shared.activity.deadline(&timeouts) {
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::TimedOut);
            }
        }
        Poll::Pending
    })
    .await;
    if let End::TimedOut = end {
        state.metrics.connection_timeouts.fetch_add(1, Relaxed);
        tracing::debug!(%peer, "connection closed: no complete request head in time, or idle");
    }
}

/// What the connection's task, its IO and its service share (one allocation per
/// connection, kept by an upgraded WebSocket for its IO and its per-IP place).
struct Shared {
    /// For the open-connections gauge, given back on drop.
    state: AppState,
    /// This connection's place under `max_connections_per_ip` (`None` for a trusted proxy).
    _ip: Option<CapGuard<std::net::IpAddr>>,
    /// Where the connection stands, for its timers.
    activity: Activity,
    /// Set by a request body whose stall timer fired; the response becomes a 408.
    body_stalled: AtomicBool,
}

impl Shared {
    fn new(state: AppState, guard: Option<CapGuard<std::net::IpAddr>>) -> Shared {
        state.metrics.connections_open.fetch_add(1, Relaxed);
        Shared {
            state,
            _ip: guard,
            activity: Activity::new(),
            body_stalled: AtomicBool::new(false),
        }
    }
}

/// Where a connection stands between requests: waiting for a head (since accept, or since
/// the first byte of the next request), idle between requests, or busy with one. Updated
/// by the IO (bytes read) and the service (head parsed, response done); read by the
/// connection's task to arm its one timer. Atomics only because the three live in
/// different objects: all of them run in the connection's task.
struct Activity {
    /// When the connection was accepted; the origin of `since`.
    born: Instant,
    /// Requests whose head was parsed and whose response is not completely handed over.
    busy: AtomicU32,
    /// Milliseconds after `born` at which the current wait began: the accept, the end of
    /// the last response, or the first byte of a new request head.
    since: AtomicU64,
    /// Whether the current wait is for the rest of a head (bytes of it arrived, or the
    /// connection is new) rather than for a new request.
    in_head: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            busy: AtomicU32::new(0),
            since: AtomicU64::new(0),
            // A new connection owes its first head from the moment it is accepted.
            in_head: AtomicBool::new(true),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// When the connection is to be closed if nothing changes; `None` while a request is
    /// in flight.
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        if self.busy.load(Relaxed) > 0 {
            return None;
        }
        let since = self.born + Duration::from_millis(self.since.load(Relaxed));
        let limit = if self.in_head.load(Relaxed) {
            t.head
        } else {
            t.keep_alive
        };
        Some(since + limit)
    }

    fn on_bytes_read(&self) {
        if self.busy.load(Relaxed) == 0 && !self.in_head.load(Relaxed) {
            self.since.store(self.now(), Relaxed);
            self.in_head.store(true, Relaxed);
        }
    }

    fn on_request(&self) {
        self.busy.fetch_add(1, Relaxed);
        self.in_head.store(false, Relaxed);
    }

    fn on_response_done(&self) {
        if self.busy.fetch_sub(1, Relaxed) == 1 {
            self.since.store(self.now(), Relaxed);
            self.in_head.store(false, Relaxed);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.state.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// The TCP stream, noting when bytes arrive (the start of a request head).
struct Tracked {
    tcp: TcpStream,
    shared: Arc<Shared>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.shared.activity.on_bytes_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: adds `ConnectInfo`, times the request
/// body, and marks the request in flight until its response is written.
struct ConnService {
    app: Router,
    shared: Arc<Shared>,
    peer: SocketAddr,
    body_stall: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.shared.activity.on_request();
        let shared = self.shared.clone();
        let stall = self.body_stall;
        let mut req = req.map(|body| {
            Body::new(StallTimer {
                inner: body,
                limit: stall,
                timer: None,
                armed: false,
                shared: shared.clone(),
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(async move {
            let resp = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let resp = if shared.body_stalled.swap(false, Relaxed) {
                shared
                    .state
                    .metrics
                    .connection_timeouts
                    .fetch_add(1, Relaxed);
                let e = ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the request body stalled; send it without pauses",
                );
                let mut r = with_nosniff(error_response(&e));
                // hyper closes the connection after a response that says so.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            } else {
                resp
            };
            Ok(resp.map(|inner| Body::new(Finished { inner, shared })))
        })
    }
}

/// A request body that fails when nothing arrives for `limit` (hyper has no body timeout).
struct StallTimer {
    inner: Incoming,
    limit: Duration,
    /// Allocated at the first wait only: most bodies arrive with their head.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the current wait (reset after every piece that arrives).
    armed: bool,
    shared: Arc<Shared>,
}

impl HttpBody for StallTimer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(r.map(|f| f.map_err(axum::Error::new)));
        }
        if !this.armed {
            let deadline = Instant::now() + this.limit;
            match &mut this.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.armed = true;
        }
        if let Some(t) = &mut this.timer {
            if t.as_mut().poll(cx).is_ready() {
                this.shared.body_stalled.store(true, Relaxed);
                return Poll::Ready(Some(Err(axum::Error::new("request body stalled"))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends the request's time in flight when hyper is done with it
/// (hyper drops a body once it is written, or at once when it is empty).
struct Finished {
    inner: Body,
    shared: Arc<Shared>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.shared.activity.on_response_done();
    }
}

impl HttpBody for Finished {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        body_stall: Duration::from_secs(30),
        keep_alive: Duration::from_secs(75),
    };

    /// Which timer runs, and since when (tokio's paused clock would need tokio's
    /// `test-util` for the whole build; the phases are what matters here).
    fn phase(a: &Activity) -> Option<(Duration, Duration)> {
        let d = a.deadline(&T)?;
        let since = Duration::from_millis(a.since.load(Relaxed));
        Some((since, d - a.born - since))
    }

    #[test]
    fn the_timer_follows_the_connection() {
        let a = Activity::new();
        // New: the first head is owed within `head` of the accept, however it trickles in.
        assert_eq!(phase(&a), Some((Duration::ZERO, T.head)));
        std::thread::sleep(Duration::from_millis(5));
        a.on_bytes_read();
        assert_eq!(phase(&a), Some((Duration::ZERO, T.head)));
        // Busy: no timer at all (a long-poll, a slow upload).
        a.on_request();
        assert_eq!(phase(&a), None);
        a.on_bytes_read();
        assert_eq!(phase(&a), None);
        // Done: idle, on the keep-alive timer from then.
        a.on_response_done();
        let (idle_from, limit) = phase(&a).unwrap();
        assert!(idle_from >= Duration::from_millis(5));
        assert_eq!(limit, T.keep_alive);
        // The next request's first byte: on the head timer from then, not reset by more.
        std::thread::sleep(Duration::from_millis(5));
        a.on_bytes_read();
        let (head_from, limit) = phase(&a).unwrap();
        assert!(head_from >= idle_from + Duration::from_millis(5));
        assert_eq!(limit, T.head);
        std::thread::sleep(Duration::from_millis(5));
        a.on_bytes_read();
        assert_eq!(phase(&a), Some((head_from, T.head)));
        // Pipelined requests: idle only once the last response is done.
        a.on_request();
        a.on_request();
        a.on_response_done();
        assert_eq!(phase(&a), None);
        a.on_response_done();
        assert_eq!(phase(&a).unwrap().1, T.keep_alive);
    }
}
