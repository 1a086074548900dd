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
//! 4. Until the end: frames in, queue out, pings every [`PING_EVERY`], close after
//!    [`IDLE_LIMIT`] of silence, 1013 when the hub kicks a consumer that cannot keep up,
//!    1001 at shutdown, 1009 for frames over 64 KiB, 1003 for binary frames, 4401 when
//!    the credential expires (by the node's clock, checked before every client frame too,
//!    so nothing is accepted on an expired credential).
//!
//! Buffers are small on purpose (an idle socket should cost a few KiB): tungstenite reads
//! in [`READ_BUFFER`] chunks and writes through without an accumulation buffer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use confab_protocol::frames::{self, ClientFrame};
use confab_protocol::{ApiError, Disconnect, ErrorCode};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{timeout, Instant};

use crate::error::{error_response, Params};
use crate::hub::{Class, KickHandle, Subscription};
use crate::state::{AppState, Tenant};

pub mod tenant;
pub mod visitor;

/// The first frame must arrive within this.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The server pings this often.
pub const PING_EVERY: Duration = Duration::from_secs(25);
/// A connection that sends nothing (not even a pong) for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Largest accepted frame / message.
pub const MAX_FRAME: usize = 64 * 1024;
/// tungstenite's read chunk (its default, 128 KiB, would dominate an idle socket's cost).
pub const READ_BUFFER: usize = 2 * 1024;
/// Frames are coalesced up to this many bytes before a write (a burst to one socket costs
/// one syscall, not one per frame); every batch ends with a flush, so nothing waits.
pub const WRITE_BUFFER: usize = 8 * 1024;
/// Most queued frames written in one batch.
const WRITE_BATCH: usize = 64;
/// Most bytes tungstenite may hold unsent before `send` waits (backpressure then comes
/// from the hub queue, see `hub`).
pub const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// A kicked or closing connection gets this long to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A page of a channel's log: (seq, encoded frame) in order, and whether more follows;
/// `None` when that part of the log is gone (retention).
pub type Backlog = Option<(Vec<(u64, Utf8Bytes)>, bool)>;

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
/// handed to `run` with what the request said ([`Upgrade`]). `ip` is the client's (for
/// the unknown-`pk` limit).
pub async fn accept<F, Fut>(
    state: AppState,
    ip: std::net::IpAddr,
    headers: HeaderMap,
    params: Params,
    ws: WebSocketUpgrade,
    gauge: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicI64,
    run: F,
) -> Response
where
    F: FnOnce(AppState, Conn, Upgrade) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tenant = match pk_tenant(&state, params.get("pk"), ip).await {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let (ws, permit, tenant) = match prepare(&state, &headers, tenant, ws) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let upgrade = Upgrade {
        origin: origin_of(&headers),
        tenant,
    };
    drop((headers, params));
    let tracker = state.sockets.clone();
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            let _permit = permit;
            use std::sync::atomic::Ordering::Relaxed;
            gauge(&state.metrics).fetch_add(1, Relaxed);
            run(state.clone(), Conn::new(socket), upgrade).await;
            gauge(&state.metrics).fetch_sub(1, Relaxed);
        })
    })
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
            state.rate_limit_unknown_key(&ip.to_string()).await?;
            Err(ApiError::new(
                ErrorCode::UnknownPublicKey,
                "no widget has this public key",
            ))
        }
    }
}

/// Checks what can be checked before upgrading and configures the socket; passes on the
/// `pk` tenant, if one was named (its allowlist then decides the origin).
#[allow(clippy::type_complexity)]
pub fn prepare(
    state: &AppState,
    headers: &HeaderMap,
    tenant: Option<Arc<Tenant>>,
    ws: WebSocketUpgrade,
) -> Result<
    (
        WebSocketUpgrade,
        tokio::sync::OwnedSemaphorePermit,
        Option<Arc<Tenant>>,
    ),
    Box<Response>,
> {
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| match &tenant {
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
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        refuse(ApiError::new(
            ErrorCode::Unavailable,
            "connection limit reached",
        ))
    })?;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME);
    Ok((ws, permit, tenant))
}

/// The socket halves plus liveness bookkeeping.
pub struct Conn {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    last_heard: Instant,
}

/// Why a connection loop ended, and how to say so.
enum End {
    Close(Disconnect),
    /// The peer is gone: nothing to send.
    Gone,
}

impl Conn {
    pub fn new(socket: WebSocket) -> Conn {
        let (sink, stream) = socket.split();
        Conn {
            sink,
            stream,
            last_heard: Instant::now(),
        }
    }

    async fn send(&mut self, text: Utf8Bytes) -> Result<(), End> {
        self.sink
            .send(Message::Text(text))
            .await
            .map_err(|_| End::Gone)
    }

    /// Queues a frame in tungstenite's write buffer (written once it exceeds
    /// [`WRITE_BUFFER`], or at [`flush`](Self::flush)).
    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), End> {
        self.sink
            .feed(Message::Text(text))
            .await
            .map_err(|_| End::Gone)
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.sink.flush().await.map_err(|_| End::Gone)
    }

    pub async fn close(mut self, why: Disconnect) {
        let frame = CloseFrame {
            code: why.code(),
            reason: Utf8Bytes::from_static(why.reason()),
        };
        let _ = timeout(CLOSE_GRACE, async {
            let _ = self.sink.send(Message::Close(Some(frame))).await;
            let _ = self.sink.close().await;
        })
        .await;
    }

    /// Reads until a text frame, handling control frames. `Err` ends the connection.
    async fn next_text(&mut self) -> Result<Utf8Bytes, End> {
        loop {
            let msg = match self.stream.next().await {
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
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    /// Waits for the auth frame: `(token, after)`. `Err(None)`: the peer is gone.
    pub async fn authenticate(&mut self) -> Result<(String, Option<String>), Option<Disconnect>> {
        let deadline = Instant::now() + AUTH_TIMEOUT;
        loop {
            let text = match tokio::time::timeout_at(deadline, self.next_text()).await {
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

fn classify(e: axum::Error) -> End {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(boxed) => match *boxed {
            tungstenite::Error::Capacity(_) => End::Close(Disconnect::FrameTooBig),
            tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
                End::Close(Disconnect::ProtocolError)
            }
            _ => End::Gone,
        },
        Err(_) => End::Gone,
    }
}

// The replay (`fill`) and frame handling (`on_frame`, the whole send path) are boxed where
// they are awaited: an idle socket's task is sized by its largest await point, and these
// two would make every idle socket pay for what only active ones use.

/// The close for a credential that expired while its socket was open.
const EXPIRED: End = End::Close(Disconnect::TokenExpired);

/// When the socket's timer should next fire: the next ping, or the credential's expiry if
/// sooner. The expiry is read from the node's clock (injectable) and re-checked when the
/// timer fires, so a clock that differs from the monotonic one only delays the check.
fn next_wake(state: &AppState, next_ping: Instant, expires_ms: i64) -> Instant {
    let left = expires_ms.saturating_sub(state.now_ms()).max(0) as u64;
    let now = Instant::now();
    next_ping.min(now + Duration::from_millis(left).min(PING_EVERY))
}

/// Runs an authenticated, subscribed connection until it ends: replays after `last`,
/// then serves live frames and client frames. `expires_ms` is when the credential expires
/// (epoch ms, node clock): the socket closes with 4401 then.
pub async fn serve<L: ChannelLogic>(
    state: AppState,
    mut conn: Conn,
    mut sub: Subscription,
    mut logic: L,
    mut last: u64,
    ready: String,
    expires_ms: i64,
) {
    let end = async {
        conn.send(ready.into()).await?;
        let mut refill = Refill::default();
        refill.after(Box::pin(fill(&state, &mut conn, &logic, &mut last, false)).await?);
        // One timer for pings and the credential's expiry (an idle socket pays for one).
        let mut next_ping = Instant::now() + PING_EVERY;
        let timer = tokio::time::sleep_until(next_wake(&state, next_ping, expires_ms));
        let kick = sub.kick_handle();
        // Registered once per connection, not at every wake-up: the shutdown token's
        // waiter list is shared by every socket of the node.
        let shutdown = state.shutdown.cancelled();
        let kicked = kick.wait();
        tokio::pin!(shutdown, kicked, timer);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return Err(End::Close(Disconnect::ShuttingDown)),
                _ = &mut kicked => return Err(End::Close(Disconnect::TooSlow)),
                // Before the queue: nothing more goes out on an expired credential.
                _ = &mut timer => {
                    if state.now_ms() >= expires_ms {
                        return Err(EXPIRED);
                    }
                    if Instant::now() >= next_ping {
                        if conn.last_heard.elapsed() > IDLE_LIMIT {
                            return Err(End::Close(Disconnect::Idle));
                        }
                        conn.sink.send(Message::Ping(Default::default())).await.map_err(|_| End::Gone)?;
                        next_ping = Instant::now() + PING_EVERY;
                    }
                    timer.as_mut().reset(next_wake(&state, next_ping, expires_ms));
                }
                out = sub.rx.recv() => {
                    let Some(mut out) = out else { return Err(End::Gone) };
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
                                    unless_stopped(&state, &kick, conn.feed(out.text.clone())).await?;
                                    last = seq;
                                }
                            }
                            (_, None) => unless_stopped(&state, &kick, conn.feed(out.text.clone())).await?,
                        }
                        if n == WRITE_BATCH {
                            break;
                        }
                        match sub.rx.try_recv() {
                            Ok(next) => out = next,
                            Err(_) => break,
                        }
                    }
                    unless_stopped(&state, &kick, conn.flush()).await?;
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
        conn.close(why).await;
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
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Runs a write, giving up if the hub kicks this consumer or the node shuts down while
/// the socket is not draining.
async fn unless_stopped(
    state: &AppState,
    kick: &KickHandle,
    write: impl std::future::Future<Output = Result<(), End>>,
) -> Result<(), End> {
    // The write first: it almost always completes at once, and then the waiters are never
    // registered.
    tokio::select! {
        biased;
        r = write => r,
        _ = kick.wait() => Err(End::Close(Disconnect::TooSlow)),
        _ = state.shutdown.cancelled() => Err(End::Close(Disconnect::ShuttingDown)),
    }
}

/// Sends everything in the log after `last`, advancing it. `Ok(false)` when the log could
/// not be read to its end; the client is told so unless `quiet` (a retry of a failure it
/// was already told about).
async fn fill<L: ChannelLogic>(
    state: &AppState,
    conn: &mut Conn,
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
