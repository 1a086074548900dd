//! The WebSocket channels. [`visitor`] and [`tenant`] supply what differs (credential,
//! log, client frames); this module drives a connection from upgrade to close:
//!
//! 1. Before the upgrade: `Origin` (HTTP 403 — CORS does not protect upgrades), a
//!    connection slot (HTTP 503 at `max_connections`). With `?pk=PUBLIC_KEY` that tenant's
//!    allowlist decides; without it, an origin no tenant allows is refused (one permissive
//!    tenant must not open the upgrade to every origin for the others: see [`Upgrade`]).
//! 2. The auth frame within [`AUTH_TIMEOUT`] (else 4408); a bad credential, or one of
//!    another tenant than `pk`, closes 4401, an origin the tenant does not allow 4403, a
//!    malformed `after` 4400.
//! 3. Subscribe to the channel *first*, then read the log after `after` and send it, then
//!    the live queue — dropping whatever the replay already covered (`seq <= last`) and
//!    filling any hole (`seq > last + 1`, or a broker `Resync`) from the log. This is
//!    what makes resume lossless and duplicate-free at the seam.
//! 4. Until the end: frames in, the channel's feed out, pings every [`PING_EVERY`],
//!    close after [`IDLE_LIMIT`] of silence, 1013 when the hub kicks a consumer that cannot
//!    keep up, 1001 at shutdown, 1009 for frames over 64 KiB, 1003 for binary frames, 4401 when
//!    the credential expires (by the node's clock, checked before every client frame too,
//!    so nothing is accepted on an expired credential).
//!
//! Buffers are small on purpose (an idle socket should cost a few KiB): tungstenite reads
//! in [`READ_BUFFER`] chunks, and frames are written from the buffers they were encoded in
//! ([`wire`]), without a per-socket copy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;
use confab_protocol::frames::{self, ClientFrame};
use confab_protocol::{ApiError, Disconnect, ErrorCode};
use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::time::{timeout, Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, Utf8Bytes};

use crate::error::{error_response, Params};
use crate::hub::{Class, Subscription};
use crate::settings::Tenant;
use crate::state::AppState;

pub mod handshake;
pub mod tenant;
pub mod visitor;
pub mod wire;

pub use handshake::WsUpgrade;
pub use wire::{Socket, WireFrame, WireSocket};

/// The first frame must arrive within this.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The server pings this often.
pub const PING_EVERY: Duration = Duration::from_secs(25);
/// A connection that sends nothing (not even a pong) for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Largest accepted frame / message.
pub const MAX_FRAME: usize = 64 * 1024;
/// tungstenite's read chunk, which every socket holds (its default, 128 KiB, would
/// dominate an idle socket's cost; 2 KiB was 1.5 KiB of a visitor socket's 7.1). Client
/// frames are mostly smaller; a larger one takes a read per 512 bytes.
pub const READ_BUFFER: usize = 512;
/// Frames are coalesced up to this many bytes before a write (a burst to one socket costs
/// one syscall, not one per frame); every batch ends with a flush, so nothing waits. A
/// socket that cannot take them makes its connection wait (backpressure then comes from
/// the hub: a connection too far behind its channel is closed, see `hub`).
pub const WRITE_BUFFER: usize = 8 * 1024;
/// Most queued frames written in one batch.
const WRITE_BATCH: usize = 64;
/// A kicked or closing connection gets this long to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A page of a channel's log: (seq, encoded frame) in order, and whether more follows;
/// `None` when that part of the log is gone (retention).
pub type Backlog = Option<(Vec<(u64, WireFrame)>, bool)>;

/// What a channel supplies to the driver.
pub trait ChannelLogic: Send + 'static {
    /// A page of the log after `after`: (seq, encoded frame) in order, and whether more
    /// follows. `None` when that part of the log is gone (retention).
    fn backlog(
        &self,
        state: &AppState,
        after: u64,
    ) -> impl std::future::Future<Output = Result<Backlog, ApiError>> + Send;

    /// Handles a client frame after auth; replies go through `sub.reply`.
    fn on_frame(
        &mut self,
        state: &AppState,
        frame: ClientFrame,
        sub: &Subscription,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// What the upgrade request said that still matters after auth. Only this travels into
/// the socket's task: header values are slices of hyper's read buffer, and keeping the map
/// would keep that buffer (8-16 KiB) alive per socket.
pub struct Upgrade {
    /// The request's `Origin`, checked against the token's tenant after auth.
    pub origin: Option<String>,
    /// The tenant named by `?pk=`, whose allowlist already admitted the origin; a token
    /// of another tenant is refused.
    pub tenant: Option<Arc<Tenant>>,
}

impl Upgrade {
    /// Checks the authenticated tenant against the upgrade: the `pk` tenant (4401 for a
    /// token of another tenant) and the origin (4403).
    pub fn admits(&self, tenant: &Tenant) -> Result<(), Disconnect> {
        if self
            .tenant
            .as_ref()
            .is_some_and(|t| t.cfg.id != tenant.cfg.id)
        {
            return Err(Disconnect::OtherTenant);
        }
        if self
            .origin
            .as_deref()
            .is_some_and(|o| !tenant.policy.allows(o))
        {
            return Err(Disconnect::OriginNotAllowed);
        }
        Ok(())
    }
}

/// Upgrades a checked request: the socket is tracked for shutdown, counted in `gauge`, and
/// handed to `setup` with what the request said ([`Upgrade`]); what `setup` makes of it
/// (`None`: it closed the socket) is then [`serve`]d. `ip` is the client's (for the
/// unknown-`pk` limit).
///
/// The set-up (auth, subscribing, reading where the log stands) runs boxed and is freed
/// before the connection settles: a task is as large as its largest await point, and an
/// idle socket's task should hold only what [`serve`] needs, not the set-up's locals and
/// a second copy of everything it moved into `serve` (about 3.5 KiB per socket otherwise).
pub async fn accept<L, F, Fut>(
    state: AppState,
    ip: std::net::IpAddr,
    headers: HeaderMap,
    params: Params,
    ws: WsUpgrade,
    gauge: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicI64,
    setup: F,
) -> Response
where
    L: ChannelLogic + Sync,
    F: FnOnce(AppState, Conn, Upgrade) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Serving<L>>> + Send + 'static,
{
    let tenant = match pk_tenant(&state, params.get("pk"), ip).await {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let permit = match prepare(&state, &headers, &tenant) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let upgrade = Upgrade {
        origin: origin_of(&headers),
        tenant,
    };
    drop((headers, params));
    let (response, switched) = ws.accept();
    // Boxed, so that the task keeps room only for a pointer to it: the connection is
    // opened and set up inside (upgrade, socket, auth, subscribing), and all of that is
    // freed before the connection settles into `serve`.
    let opening = {
        let state = state.clone();
        Box::pin(async move {
            let io = TokioIo::new(switched.await.ok()?);
            let socket = WireSocket::server(io, socket_config());
            let conn =
                Conn::new(socket).paced(Duration::from_millis(state.config.ws_write_delay_ms));
            setup(state, conn, upgrade).await
        })
    };
    state.sockets.clone().spawn(async move {
        let _permit = permit;
        use std::sync::atomic::Ordering::Relaxed;
        gauge(&state.metrics).fetch_add(1, Relaxed);
        if let Some(s) = opening.await {
            serve(
                state.clone(),
                s.conn,
                s.sub,
                s.logic,
                s.last,
                s.ready,
                s.expires_ms,
            )
            .await;
        }
        gauge(&state.metrics).fetch_sub(1, Relaxed);
    });
    response
}

/// What tungstenite may read: frames and messages up to [`MAX_FRAME`], in
/// [`READ_BUFFER`] chunks.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

/// An authenticated, subscribed connection, ready for [`serve`]: what a channel's set-up
/// hands to [`accept`].
pub struct Serving<L> {
    pub conn: Conn,
    pub sub: Subscription,
    pub logic: L,
    /// The last seq the client has (replay starts after it).
    pub last: u64,
    /// The `ready` frame.
    pub ready: String,
    /// When the credential expires (epoch ms, node clock).
    pub expires_ms: i64,
}

/// The request's `Origin` as an owned string (already checked to be text by [`prepare`]).
pub fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The auth frame's `after`, read by the channel's `parse` (a message id of the
/// conversation, or a tenant event offset): absent or empty means none; anything else the
/// channel does not recognise is an error (the channel closes with 4400 rather than
/// silently starting live).
pub fn parse_after(
    after: Option<&str>,
    parse: impl Fn(&str) -> Option<u64>,
) -> Result<Option<u64>, BadAfter> {
    match after.filter(|a| !a.is_empty()) {
        None => Ok(None),
        Some(a) => parse(a).map(Some).ok_or(BadAfter),
    }
}

/// An `after` that is not one of our ids/offsets.
#[derive(Debug)]
pub struct BadAfter;

fn refuse(e: ApiError) -> Box<Response> {
    Box::new(error_response(&e))
}

/// The tenant a `?pk=` names: absent or empty is none; malformed 422, unknown 404 (as on
/// `GET /v1/config`, and likewise charged to the client IP's allowance for unknown keys,
/// so that upgrades are no way around the enumeration limit).
async fn pk_tenant(
    state: &AppState,
    pk: Option<&str>,
    ip: std::net::IpAddr,
) -> Result<Option<Arc<Tenant>>, ApiError> {
    let Some(pk) = pk.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    if !confab_protocol::validate::is_public_key(pk) {
        return Err(ApiError::invalid(
            "pk",
            "public key must match ^pk_live_[a-f0-9]{32}$",
        ));
    }
    match state.tenants.by_public_key(pk) {
        Some(t) => Ok(Some(t.clone())),
        None => {
            crate::service::limits::charge_unknown_key(state, &ip.to_string()).await?;
            Err(ApiError::new(
                ErrorCode::UnknownPublicKey,
                "no widget has this public key",
            ))
        }
    }
}

/// Checks what can be checked before upgrading: the origin (by the `pk` tenant's allowlist
/// if one was named), shutdown, and a connection slot, which it returns.
pub fn prepare(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &Option<Arc<Tenant>>,
) -> Result<tokio::sync::OwnedSemaphorePermit, Box<Response>> {
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| match tenant {
            Some(t) => t.policy.allows(o),
            None => state.tenants.any_policy_allows(o),
        });
        if !allowed {
            return Err(refuse(ApiError::new(
                ErrorCode::OriginNotAllowed,
                "origin not allowed",
            )));
        }
    }
    if state.shutdown.is_cancelled() {
        return Err(refuse(ApiError::new(
            ErrorCode::Unavailable,
            "shutting down",
        )));
    }
    state.connections.clone().try_acquire_owned().map_err(|_| {
        refuse(ApiError::new(
            ErrorCode::Unavailable,
            "connection limit reached",
        ))
    })
}

/// The socket of a connection in production.
pub type LiveSocket = WireSocket<TokioIo<hyper::upgrade::Upgraded>>;

/// The socket plus liveness bookkeeping. Not split into halves: the connection loop reads
/// and writes from one task, never at once (a write runs in a `select!` arm, after the
/// read's future is dropped), so the lock a split puts around every read and write would
/// be paid for nothing. Boxed, as the split's shared half was: inline, the socket would
/// take room in the connection task's every state (+0.6 KiB per idle socket, measured).
///
/// **Paced writes** (`ws_write_delay_ms`, off by default). Each write to a loopback or
/// LAN peer costs a syscall, a TCP segment and usually a wake-up of the reader, whatever
/// it carries; in a broadcast to a big team that cost per write is most of the node's
/// CPU. A paced socket written to less than `write_delay` ago holds its next frames until
/// `write_delay` after that write, and whatever its channel queued meanwhile goes out in
/// the same write: at most one write per socket per `write_delay`, each frame late by at
/// most that, order unchanged. A socket that was quiet longer writes at once. A held
/// socket keeps reading its client's frames; what they answer waits with the rest.
pub struct Conn<S: Socket = LiveSocket> {
    socket: Box<S>,
    last_heard: Instant,
    read: Arc<ReadWake>,
    /// Zero: not paced.
    write_delay: Duration,
    /// When a paced socket may write its next frames (its last write + `write_delay`).
    next_write: Instant,
}

/// Wakes the connection's task when its socket may have something to read, and remembers
/// that it did. The loop wakes far more often for frames to write than for frames to read
/// (an agent hardly ever sends), and every read attempt goes through tungstenite, which
/// zero-fills its read buffer first: with this, a wake-up for writing leaves the socket's
/// read side alone.
struct ReadWake {
    maybe_readable: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.maybe_readable.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Why a connection loop ended, and how to say so.
enum End {
    Close(Disconnect),
    /// The peer is gone: nothing to send.
    Gone,
}

impl<S: Socket> Conn<S> {
    pub fn new(socket: S) -> Conn<S> {
        Conn {
            socket: Box::new(socket),
            last_heard: Instant::now(),
            read: Arc::new(ReadWake {
                maybe_readable: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
            write_delay: Duration::ZERO,
            next_write: Instant::now(),
        }
    }

    /// Paces this socket's writes of its channel's frames (see the type's doc).
    pub fn paced(mut self, write_delay: Duration) -> Conn<S> {
        self.write_delay = write_delay;
        self
    }

    /// When a paced socket that wrote less than its delay ago may write again.
    fn held_until(&self) -> Option<Instant> {
        (!self.write_delay.is_zero() && self.next_write > Instant::now()).then_some(self.next_write)
    }

    /// The socket's next message. Tries the socket only if the last try found something
    /// or the socket woke [`ReadWake`] since; otherwise just waits for that.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        self.read.task.register(cx.waker());
        if !self.read.maybe_readable.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.read.clone());
        let polled = self.socket.poll_next(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            // More may be buffered already, and no wake-up would come for it.
            self.read.maybe_readable.store(true, Ordering::Release);
        }
        polled
    }

    async fn send(&mut self, frame: WireFrame) -> Result<(), End> {
        self.socket.queue(frame);
        self.flush().await
    }

    /// Queues a frame (written once the queue exceeds [`WRITE_BUFFER`], or at
    /// [`flush`](Self::flush)).
    async fn feed(&mut self, frame: WireFrame) -> Result<(), End> {
        self.socket.queue(frame);
        if self.socket.queued() > WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.write_delay.is_zero() {
            self.next_write = Instant::now() + self.write_delay;
        }
        std::future::poll_fn(|cx| self.socket.poll_flush(cx))
            .await
            .map_err(|_| End::Gone)
    }

    pub async fn close(mut self, why: Disconnect) {
        let _ = timeout(CLOSE_GRACE, async {
            self.socket
                .queue(WireFrame::close(why.code(), why.reason()));
            if self.flush().await.is_ok() {
                let _ = std::future::poll_fn(|cx| self.socket.poll_shutdown(cx)).await;
            }
        })
        .await;
    }

    /// Reads until a text frame, handling control frames. `Err` ends the connection.
    async fn next_text(&mut self) -> Result<Utf8Bytes, End> {
        loop {
            let msg = match std::future::poll_fn(|cx| self.poll_message(cx)).await {
                None => return Err(End::Gone),
                Some(Err(e)) => return Err(classify(e)),
                Some(Ok(m)) => m,
            };
            self.last_heard = Instant::now();
            match msg {
                Message::Text(t) if t.len() > MAX_FRAME => {
                    return Err(End::Close(Disconnect::FrameTooBig))
                }
                Message::Text(t) => return Ok(t),
                Message::Binary(_) => return Err(End::Close(Disconnect::BinaryFrame)),
                Message::Close(_) => return Err(End::Gone),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Waits for the auth frame: `(token, after)`. `Err(None)`: the peer is gone. A node
    /// shutting down (`shutdown`) closes it meanwhile, as it does every other socket.
    pub async fn authenticate(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(String, Option<String>), Option<Disconnect>> {
        let deadline = Instant::now() + AUTH_TIMEOUT;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(Some(Disconnect::ShuttingDown)),
                next = tokio::time::timeout_at(deadline, self.next_text()) => next,
            };
            let text = match next {
                Err(_) => return Err(Some(Disconnect::AuthTimeout)),
                Ok(Err(End::Close(why))) => return Err(Some(why)),
                Ok(Err(End::Gone)) => return Err(None),
                Ok(Ok(t)) => t,
            };
            match ClientFrame::parse(&text) {
                Ok(ClientFrame::Auth { token, after }) => return Ok((token, after)),
                Ok(_) => {
                    let _ = self
                        .send(
                            frames::error(ErrorCode::InvalidFrame, "the first frame must be auth")
                                .into(),
                        )
                        .await;
                }
                Err(msg) => {
                    let _ = self
                        .send(frames::error(ErrorCode::InvalidFrame, &msg).into())
                        .await;
                }
            }
        }
    }
}

/// Closes `conn` for `why`: the end of a set-up that refused the connection.
pub async fn closed<L>(conn: Conn, why: Disconnect) -> Option<Serving<L>> {
    conn.close(why).await;
    None
}

fn classify(e: tungstenite::Error) -> End {
    match e {
        tungstenite::Error::Capacity(_) => End::Close(Disconnect::FrameTooBig),
        tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
            End::Close(Disconnect::ProtocolError)
        }
        _ => End::Gone,
    }
}

// The replay (`fill`) and frame handling (`on_frame`, the whole send path) are boxed where
// they are awaited: an idle socket's task is sized by its largest await point, and these
// two would make every idle socket pay for what only active ones use.

/// The close for a credential that expired while its socket was open.
const EXPIRED: End = End::Close(Disconnect::TokenExpired);

/// When the socket's timer should next fire: the next ping, the moment the client's
/// silence (`silent_at`) reaches the idle limit, or the credential's expiry, whichever is
/// soonest. The expiry is read from the node's clock (injectable) and re-checked when the
/// timer fires, so a clock that differs from the monotonic one only delays the check.
fn next_wake(state: &AppState, next_ping: Instant, silent_at: Instant, expires_ms: i64) -> Instant {
    let left = expires_ms.saturating_sub(state.now_ms()).max(0) as u64;
    let now = Instant::now();
    next_ping
        .min(silent_at)
        .min(now + Duration::from_millis(left).min(PING_EVERY))
}

/// Runs an authenticated, subscribed connection until it ends: replays after `last`,
/// then serves live frames and client frames. `expires_ms` is when the credential expires
/// (epoch ms, node clock): the socket closes with 4401 then.
///
/// A plain `fn` returning an `async move` block rather than an `async fn`: an `async fn`'s
/// future keeps its arguments twice (as passed, and moved into its body), ~350 bytes more
/// in every idle socket's task.
#[allow(clippy::manual_async_fn)]
pub fn serve<L: ChannelLogic, S: Socket>(
    state: AppState,
    mut conn: Conn<S>,
    sub: Subscription,
    mut logic: L,
    mut last: u64,
    ready: String,
    expires_ms: i64,
) -> impl Future<Output = ()> {
    async move {
        let end = async {
            conn.send(ready.into()).await?;
            let mut refill = Refill::default();
            refill.after(Box::pin(fill(&state, &mut conn, &logic, &mut last, false)).await?);
            // One timer for pings and the credential's expiry (an idle socket pays for one).
            let mut next_ping = Instant::now() + PING_EVERY;
            let timer = tokio::time::sleep_until(next_wake(
                &state,
                next_ping,
                conn.last_heard + IDLE_LIMIT,
                expires_ms,
            ));
            let kick = sub.kick_handle();
            // Registered once per connection, not at every wake-up: the shutdown token's
            // waiter list is shared by every socket of the node.
            let shutdown = state.shutdown.cancelled();
            let kicked = kick.wait();
            tokio::pin!(shutdown, kicked, timer);
            loop {
                // A paced socket that wrote less than its delay ago takes nothing from its
                // channel (frames wait there, and go out together) but keeps reading: the
                // one timer also wakes it when it may write again.
                let held = conn.held_until();
                if let Some(at) = held.filter(|at| *at < timer.deadline()) {
                    timer.as_mut().reset(at);
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return Err(End::Close(Disconnect::ShuttingDown)),
                    _ = &mut kicked => return Err(End::Close(Disconnect::TooSlow)),
                    // Before the queue: nothing more goes out on an expired credential.
                    _ = &mut timer => {
                        if state.now_ms() >= expires_ms {
                            return Err(EXPIRED);
                        }
                        // Checked when it falls due, not at the next ping: the timer also
                        // wakes when the last frame heard becomes IDLE_LIMIT old.
                        if conn.last_heard.elapsed() >= IDLE_LIMIT {
                            return Err(End::Close(Disconnect::Idle));
                        }
                        if Instant::now() >= next_ping {
                            conn.send(WireFrame::ping()).await?;
                            next_ping = Instant::now() + PING_EVERY;
                        }
                        timer.as_mut().reset(next_wake(&state, next_ping, conn.last_heard + IDLE_LIMIT, expires_ms));
                    }
                    mut out = sub.recv(), if held.is_none() => {
                        // Whatever is already queued goes out with this frame in one write.
                        for n in 1.. {
                            match (out.class, out.seq) {
                                (Class::Resync, _) => {
                                    refill.after(Box::pin(fill(&state, &mut conn, &logic, &mut last, refill.pending())).await?);
                                }
                                (_, Some(seq)) if seq <= last => {}
                                (_, Some(seq)) => {
                                    // A hole before this frame is filled from the log first; if the
                                    // log cannot be read now, the frame waits for the next attempt
                                    // rather than opening a gap the client would never see filled.
                                    let whole = seq == last + 1 || refill.after(Box::pin(fill(&state, &mut conn, &logic, &mut last, refill.pending())).await?);
                                    if whole && seq > last {
                                        unless_stopped(shutdown.as_mut(), kicked.as_mut(), conn.feed(out.frame.clone())).await?;
                                        last = seq;
                                    }
                                }
                                (_, None) => unless_stopped(shutdown.as_mut(), kicked.as_mut(), conn.feed(out.frame.clone())).await?,
                            }
                            if n == WRITE_BATCH {
                                break;
                            }
                            match sub.try_recv() {
                                Some(next) => out = next,
                                None => break,
                            }
                        }
                        unless_stopped(shutdown.as_mut(), kicked.as_mut(), conn.flush()).await?;
                    }
                    text = conn.next_text() => {
                        let text = text?;
                        // The timer may not have fired yet (or the node's clock moved): a
                        // frame on an expired credential is never acted on.
                        if state.now_ms() >= expires_ms {
                            return Err(EXPIRED);
                        }
                        match ClientFrame::parse(&text) {
                            Ok(frame) => Box::pin(logic.on_frame(&state, frame, &sub)).await,
                            Err(msg) => sub.reply(frames::error(ErrorCode::InvalidFrame, &msg)),
                        }
                    }
                    _ = refill.due(), if refill.pending() => {
                        refill.after(Box::pin(fill(&state, &mut conn, &logic, &mut last, true)).await?);
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), End>(())
        }
        .await;
        if let Err(End::Close(why)) = end {
            // Boxed, once per connection: inline, its timer and frame would enlarge every
            // idle socket's task.
            Box::pin(conn.close(why)).await;
        }
    }
}

/// A log read that failed is retried on a timer (from 200 ms, doubling up to 5 s) until it
/// succeeds: after a store outage nothing else may ever arrive to trigger it (a broker's
/// `Resync` can come while the store itself is still reconnecting), and the client would
/// never see what was stored after the outage.
#[derive(Default)]
struct Refill {
    /// When to read the log again; `None` while the connection has everything.
    at: Option<Instant>,
    backoff: Duration,
}

impl Refill {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    /// Records a fill's outcome (`true`: the log was read to its end); returns it.
    fn after(&mut self, whole: bool) -> bool {
        if whole {
            self.at = None;
            self.backoff = Duration::ZERO;
        } else {
            self.backoff = (self.backoff * 2).clamp(Self::FIRST, Self::MAX);
            self.at = Some(Instant::now() + self.backoff);
        }
        whole
    }

    fn pending(&self) -> bool {
        self.at.is_some()
    }

    async fn due(&self) {
        match self.at {
            // Boxed: only a connection whose log read failed waits here, and an inline
            // timer would take room in every idle socket's task.
            Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
            None => std::future::pending().await,
        }
    }
}

/// Runs a write, giving up if the hub kicks this consumer (`kicked`) or the node shuts
/// down (`shutdown`) while the socket is not draining. The waiters are the connection's
/// own, registered once: not a second pair per write, nor their room in every idle task.
async fn unless_stopped(
    shutdown: Pin<&mut WaitForCancellationFuture<'_>>,
    kicked: Pin<&mut impl Future<Output = ()>>,
    write: impl Future<Output = Result<(), End>>,
) -> Result<(), End> {
    // The write first: it almost always completes at once.
    tokio::select! {
        biased;
        r = write => r,
        _ = kicked => Err(End::Close(Disconnect::TooSlow)),
        _ = shutdown => Err(End::Close(Disconnect::ShuttingDown)),
    }
}

/// Sends everything in the log after `last`, advancing it. `Ok(false)` when the log could
/// not be read to its end; the client is told so unless `quiet` (a retry of a failure it
/// was already told about).
async fn fill<L: ChannelLogic, S: Socket>(
    state: &AppState,
    conn: &mut Conn<S>,
    logic: &L,
    last: &mut u64,
    quiet: bool,
) -> Result<bool, End> {
    loop {
        match logic.backlog(state, *last).await {
            Ok(Some((items, more))) => {
                for (seq, text) in items {
                    if seq > *last {
                        conn.feed(text).await?;
                        *last = seq;
                    }
                }
                conn.flush().await?;
                if !more {
                    return Ok(true);
                }
            }
            Ok(None) => {
                conn.send(
                    frames::error(
                        ErrorCode::NotRecovered,
                        "events were lost to retention: reload over HTTP",
                    )
                    .into(),
                )
                .await?;
                return Ok(true);
            }
            Err(e) => {
                // The store is down: say so and keep the socket; the fill is retried (see
                // `Refill`).
                if !quiet {
                    conn.send(frames::error(e.code, &e.message).into()).await?;
                }
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection loop driven through channels instead of a socket, with tokio's clock
    //! paused: a test's 60 s of idleness take no real time.

    use std::task::{Context, Poll};

    use confab_store::{Channel, EventSink, Published};
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    use super::*;
    use crate::state::Clock;

    /// A socket made of two channels: what the server sends arrives in `sent` (decoded back
    /// into messages), what the test pushes into `incoming` is what the client "sent".
    struct TestSocket {
        out: PollSender<Message>,
        queue: std::collections::VecDeque<WireFrame>,
        incoming: mpsc::Receiver<Result<Message, tungstenite::Error>>,
    }

    /// The client's end of a [`TestSocket`].
    struct Client {
        sent: mpsc::Receiver<Message>,
        incoming: mpsc::Sender<Result<Message, tungstenite::Error>>,
    }

    /// `outbound` bounds what the server can write before its sends wait (a slow client).
    fn socket(outbound: usize) -> (TestSocket, Client) {
        let (out_tx, out_rx) = mpsc::channel(outbound);
        let (in_tx, in_rx) = mpsc::channel(16);
        (
            TestSocket {
                out: PollSender::new(out_tx),
                queue: Default::default(),
                incoming: in_rx,
            },
            Client {
                sent: out_rx,
                incoming: in_tx,
            },
        )
    }

    /// A frame the server wrote, as the client reads it.
    fn decode(frame: &WireFrame) -> Message {
        let payload = frame.payload();
        match frame.bytes()[0] & 0x0f {
            0x1 => Message::Text(frame.as_text().into()),
            0x8 => Message::Close(Some(tungstenite::protocol::CloseFrame {
                code: u16::from_be_bytes([payload[0], payload[1]]).into(),
                reason: std::str::from_utf8(&payload[2..])
                    .unwrap()
                    .to_owned()
                    .into(),
            })),
            0x9 => Message::Ping(payload.to_vec().into()),
            op => panic!("unexpected opcode {op}"),
        }
    }

    impl Socket for TestSocket {
        fn poll_next(
            &mut self,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Message, tungstenite::Error>>> {
            self.incoming.poll_recv(cx)
        }

        fn queue(&mut self, frame: WireFrame) {
            self.queue.push_back(frame);
        }

        fn queued(&self) -> usize {
            self.queue.iter().map(|f| f.bytes().len()).sum()
        }

        fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            while let Some(frame) = self.queue.front() {
                let broken = |_| std::io::Error::from(std::io::ErrorKind::BrokenPipe);
                std::task::ready!(self.out.poll_reserve(cx)).map_err(broken)?;
                let message = decode(frame);
                self.out.send_item(message).map_err(broken)?;
                self.queue.pop_front();
            }
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.out.close();
            Poll::Ready(Ok(()))
        }
    }

    impl Client {
        async fn text(&mut self, t: &str) {
            let _ = self.incoming.send(Ok(Message::Text(t.into()))).await;
        }

        /// The next frame the server sent (`None` once it is done sending).
        async fn next(&mut self) -> Option<Message> {
            self.sent.recv().await
        }

        /// The next text frame's JSON, skipping pings.
        async fn json(&mut self) -> serde_json::Value {
            loop {
                match self.next().await.expect("a frame") {
                    Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                    Message::Ping(_) => {}
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        }

        /// Reads to the close frame; its code.
        async fn close_code(&mut self) -> u16 {
            loop {
                match self.next().await.expect("a close frame") {
                    Message::Close(Some(f)) => return f.code.into(),
                    Message::Close(None) => panic!("close without a code"),
                    _ => {}
                }
            }
        }
    }

    async fn node() -> AppState {
        AppState::for_tests(Clock::system()).await
    }

    fn channel() -> Channel {
        Channel::Conversation {
            tenant: "demo".into(),
            conversation_id: "c".into(),
        }
    }

    fn frame(seq: u64) -> WireFrame {
        frames::visitor_message_new(&format!(r#"{{"n":{seq}}}"#)).into()
    }

    /// A channel whose log holds messages `1..=log` (paged two at a time).
    struct Log {
        log: u64,
    }

    impl ChannelLogic for Log {
        async fn backlog(&self, _: &AppState, after: u64) -> Result<Backlog, ApiError> {
            let items: Vec<_> = (after + 1..=self.log)
                .take(2)
                .map(|s| (s, frame(s)))
                .collect();
            let more = items.last().is_some_and(|(s, _)| *s < self.log);
            Ok(Some((items, more)))
        }

        async fn on_frame(&mut self, _: &AppState, frame: ClientFrame, sub: &Subscription) {
            if frame == ClientFrame::Ping {
                sub.reply(frames::PONG);
            }
        }
    }

    const NEVER: i64 = i64::MAX / 2;

    /// Message `seq` of the test conversation, as the store would publish it.
    fn publish(state: &AppState, seq: u64) {
        state.hub.publish(Published::Message {
            tenant: "demo".into(),
            conversation_id: "c".into(),
            seq,
            json: format!(r#"{{"n":{seq}}}"#).into(),
        });
    }

    /// Serves a connection on `state` that may fall `queue` frames behind and whose
    /// client takes `outbound` frames before the server's writes wait; `after` and `log`
    /// set up the replay, `expires_ms` the credential.
    async fn open(
        state: &AppState,
        queue: usize,
        outbound: usize,
        log: u64,
        after: u64,
        expires_ms: i64,
    ) -> (tokio::task::JoinHandle<()>, Client) {
        open_paced(
            state,
            queue,
            outbound,
            log,
            after,
            expires_ms,
            Duration::ZERO,
        )
        .await
    }

    /// [`open`], its writes paced by `write_delay`.
    async fn open_paced(
        state: &AppState,
        queue: usize,
        outbound: usize,
        log: u64,
        after: u64,
        expires_ms: i64,
        write_delay: Duration,
    ) -> (tokio::task::JoinHandle<()>, Client) {
        let sub = state
            .hub
            .subscribe_live(&state.broker, channel(), queue, false)
            .await;
        let (sock, client) = socket(outbound);
        let task = tokio::spawn(serve(
            state.clone(),
            Conn::new(sock).paced(write_delay),
            sub,
            Log { log },
            after,
            r#"{"type":"ready"}"#.into(),
            expires_ms,
        ));
        (task, client)
    }

    #[tokio::test(start_paused = true)]
    async fn no_auth_frame_closes_after_5_s() {
        let (sock, mut client) = socket(8);
        let mut conn = Conn::new(sock);
        let started = Instant::now();
        let r = conn.authenticate(&CancellationToken::new()).await;
        assert_eq!(r.unwrap_err(), Some(Disconnect::AuthTimeout));
        assert_eq!(started.elapsed(), AUTH_TIMEOUT);
        // Anything but auth first is answered, and the clock keeps running.
        let (sock, mut c2) = socket(8);
        let mut conn2 = Conn::new(sock);
        c2.text(r#"{"type":"ping"}"#).await;
        c2.text(r#"{"type":"auth","token":"t","after":"7"}"#).await;
        assert_eq!(
            conn2.authenticate(&CancellationToken::new()).await.unwrap(),
            ("t".to_owned(), Some("7".to_owned()))
        );
        assert_eq!(c2.json().await["code"], "invalid_frame");
        drop(client.incoming);
        assert!(client.sent.try_recv().is_err(), "nothing sent before auth");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed_after_60_s() {
        let state = node().await;
        let started = Instant::now();
        let (task, mut client) = open(&state, 16, 64, 0, 0, NEVER).await;
        assert_eq!(client.json().await["type"], "ready");
        let mut pings = 0;
        let code = loop {
            match client.next().await.expect("a frame") {
                Message::Ping(_) => pings += 1,
                Message::Close(Some(f)) => break u16::from(f.code),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(code, Disconnect::Idle.code());
        assert!(pings >= 2, "pinged every 25 s while silent ({pings})");
        assert!(started.elapsed() >= IDLE_LIMIT);
        // When the silence reaches the limit, not at the next ping after it.
        assert!(
            started.elapsed() < IDLE_LIMIT + Duration::from_secs(1),
            "closed after {:?}",
            started.elapsed()
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_stays_open() {
        let state = node().await;
        let (task, mut client) = open(&state, 16, 64, 0, 0, NEVER).await;
        client.json().await;
        for _ in 0..6 {
            // Answer each ping: two and a half minutes of virtual time, still open.
            match client.next().await.expect("a frame") {
                Message::Ping(p) => {
                    let _ = client.incoming.send(Ok(Message::Pong(p))).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        client.text(r#"{"type":"ping"}"#).await;
        assert_eq!(client.json().await["type"], "pong");
        state.shutdown.cancel();
        assert_eq!(client.close_code().await, Disconnect::ShuttingDown.code());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_socket_sends_a_burst_together_and_after_a_quiet_spell_at_once() {
        const DELAY: Duration = Duration::from_millis(10);
        let state = node().await;
        let (task, mut client) = open_paced(&state, 16, 64, 0, 0, NEVER, DELAY).await;
        assert_eq!(client.json().await["type"], "ready");
        let ready_at = Instant::now();
        // Both come within DELAY of the last write (the ready frame): held, then together.
        // The client's frames are still read meanwhile: 3 pings sent while held are
        // answered in that same write, not one write (and one delay) each.
        publish(&state, 1);
        tokio::time::advance(Duration::from_millis(4)).await;
        publish(&state, 2);
        for _ in 0..3 {
            client.text(r#"{"type":"ping"}"#).await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(client.sent.try_recv().is_err(), "held for {DELAY:?}");
        assert_eq!(client.json().await["data"]["n"], 1);
        let written_at = Instant::now();
        assert!(
            written_at - ready_at >= DELAY,
            "held until {DELAY:?} after the last write"
        );
        assert!(written_at - ready_at < DELAY * 2, "held once");
        assert_eq!(client.json().await["data"]["n"], 2);
        for _ in 0..3 {
            assert_eq!(client.json().await["type"], "pong");
        }
        assert_eq!(Instant::now(), written_at, "in the same write");
        // After a quiet spell longer than DELAY, a frame goes out at once.
        tokio::time::advance(DELAY * 3).await;
        let published_at = Instant::now();
        publish(&state, 3);
        assert_eq!(client.json().await["data"]["n"], 3);
        assert_eq!(Instant::now(), published_at, "not held");
        state.shutdown.cancel();
        assert_eq!(client.close_code().await, Disconnect::ShuttingDown.code());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn resume_replays_the_log_then_live_without_gap_or_duplicate() {
        let state = node().await;
        let (task, mut client) = open(&state, 16, 64, 3, 1, NEVER).await;
        // Published after the subscription, before the replay ran (the connection's task
        // has not been polled yet): 4 and 5 are live only, 3 is in both.
        for seq in [3, 4, 5] {
            publish(&state, seq);
        }
        client.json().await;
        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.push(client.json().await["data"]["n"].as_u64().unwrap());
        }
        assert_eq!(seen, vec![2, 3, 4, 5]);
        state.shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_cannot_keep_up_is_closed_with_1013() {
        let state = node().await;
        // The client reads nothing: the server's writes wait after one frame.
        let (task, mut client) = open(&state, 4, 1, 0, 0, NEVER).await;
        for seq in 1..=64 {
            publish(&state, seq);
            tokio::task::yield_now().await;
        }
        assert!(state.hub.kicks.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        // Now the client reads: what was written, then the 1013.
        assert_eq!(client.close_code().await, Disconnect::TooSlow.code());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_credential_closes_with_4401() {
        // The node's clock, moved by hand: the expiry needs no real waiting either.
        let now = Arc::new(std::sync::atomic::AtomicI64::new(1_800_000_000_000));
        let clock_now = now.clone();
        let state = AppState::for_tests(Clock::from_fn(move || {
            clock_now.load(std::sync::atomic::Ordering::Relaxed)
        }))
        .await;
        let expires = state.now_ms() + 3_000;
        let (task, mut client) = open(&state, 16, 64, 0, 0, expires).await;
        client.json().await;
        let started = Instant::now();
        // Time passes for both clocks; the socket closes when its credential expires.
        let ticker = {
            let now = now.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        assert_eq!(client.close_code().await, Disconnect::TokenExpired.code());
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(
            started.elapsed() < PING_EVERY,
            "closed at expiry, not at a ping"
        );
        ticker.abort();
        task.await.unwrap();
    }
}
