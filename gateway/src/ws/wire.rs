//! The server's side of a WebSocket, over the connection hyper upgraded.
//!
//! Frames out are encoded once, where they are made ([`WireFrame`]: a publication's frame
//! is shared by every socket of its channel), and written to the socket straight from those
//! shared buffers, several per vectored write. Frames in are parsed by tungstenite's
//! protocol state (unmasking, size limits, UTF-8, fragments, and the automatic replies to
//! pings and closes), fed from the socket through [`Io`].
//!
//! Why not tokio-tungstenite's stream, which axum's `WebSocket` wraps: it frames every
//! message again for every socket, copies it into that socket's write buffer, and routes
//! each read and write through proxy wakers (it allows reading and writing from different
//! tasks; a connection here is one task). In a broadcast to 1,000 agents, where the gateway's
//! core is mostly the kernel's `sendto`, that per-socket work was the largest part of what
//! remained (BENCHMARKS.md, "A WebSocket writer of our own").

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error, Message};

/// A complete server-to-client frame (header and payload), encoded once and shared: cloning
/// it clones a reference, not the bytes.
#[derive(Debug, Clone)]
pub struct WireFrame(Bytes);

impl WireFrame {
    /// Stands in where a queue entry carries no frame (a broker's resync marker); never
    /// written.
    pub const NONE: WireFrame = WireFrame(Bytes::new());

    /// A text frame.
    pub fn text(payload: &str) -> WireFrame {
        WireFrame::encode(OpCode::Data(Data::Text), payload.as_bytes())
    }

    /// A ping with no payload.
    pub fn ping() -> WireFrame {
        WireFrame(Bytes::from_static(&[0x89, 0x00]))
    }

    /// A close frame with `code` and `reason` (RFC 6455 §5.5.1: the code, big-endian, then
    /// the reason).
    pub fn close(code: u16, reason: &'static str) -> WireFrame {
        let payload = [&code.to_be_bytes()[..], reason.as_bytes()].concat();
        WireFrame::encode(OpCode::Control(Control::Close), &payload)
    }

    /// tungstenite's header (final, unmasked) and the payload, copied once into one buffer.
    fn encode(opcode: OpCode, payload: &[u8]) -> WireFrame {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let len = payload.len() as u64;
        let mut out = Vec::with_capacity(header.len(len) + payload.len());
        header.format(len, &mut out).expect("writing to a Vec");
        out.extend_from_slice(payload);
        WireFrame(out.into())
    }

    /// The frame as it goes on the wire.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The payload (after the header) of a frame made here: unmasked, so the header is 2, 4
    /// or 10 bytes by its length field.
    pub fn payload(&self) -> &[u8] {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            None => return &[],
            Some(126) => 4,
            Some(127) => 10,
            Some(_) => 2,
        };
        &self.0[header.min(self.0.len())..]
    }

    /// A text frame's payload as text (tests and logs).
    pub fn as_text(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or("")
    }
}

impl From<String> for WireFrame {
    fn from(text: String) -> WireFrame {
        WireFrame::text(&text)
    }
}

impl From<&'static str> for WireFrame {
    fn from(text: &'static str) -> WireFrame {
        WireFrame::text(text)
    }
}

/// What a connection runs over: [`WireSocket`] in production; in the connection loop's
/// unit tests, channels (so that auth timeouts, pings, idle closes, kicks and resume are
/// tested without a socket and with paused time).
pub trait Socket: Send + Unpin + 'static {
    /// The client's next message (control frames included, their replies queued); `None`
    /// once the connection is gone.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>>;

    /// Queues a frame; nothing is written before [`poll_flush`](Self::poll_flush).
    fn queue(&mut self, frame: WireFrame);

    /// Bytes queued and not yet written.
    fn queued(&self) -> usize;

    /// Writes everything queued.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the connection's sending side (after a close frame was flushed).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Most segments handed to one vectored write.
const MAX_SLICES: usize = 64;
/// Queue slots an emptied queue may keep (a few frames' worth); a larger one is freed.
const IDLE_SLOTS: usize = 8;

/// A server WebSocket over `IO` (the upgraded connection).
pub struct WireSocket<IO> {
    io: IO,
    protocol: WebSocketContext,
    /// Segments to write, in order; the first may be partly written already.
    out: VecDeque<Bytes>,
    queued: usize,
}

impl<IO> WireSocket<IO> {
    /// The server's side of a connection that just switched protocols; `config` bounds
    /// what tungstenite reads (its write settings are unused: it writes only its control
    /// replies, into the same queue as everything else).
    pub fn server(io: IO, config: WebSocketConfig) -> WireSocket<IO> {
        WireSocket {
            io,
            protocol: WebSocketContext::new(Role::Server, Some(config)),
            out: VecDeque::new(),
            queued: 0,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket for WireSocket<IO> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let mut io = Io {
            io: &mut self.io,
            cx,
            out: &mut self.out,
            queued: &mut self.queued,
        };
        let read = self.protocol.read(&mut io);
        if let Ok(Message::Close(_)) = read {
            // tungstenite has queued the echo of the client's close; this hands it over
            // (and then reports the connection closed, which the caller learns next).
            let _ = self.protocol.flush(&mut io);
        }
        // A control reply tungstenite just queued (a pong, a close) goes out now, not with
        // the next frame this socket happens to send; if the socket is full, it goes at the
        // next flush (the write's waker is registered either way).
        if !self.out.is_empty() {
            if let Poll::Ready(Err(_)) = self.poll_flush(cx) {
                return Poll::Ready(None);
            }
        }
        match read {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn queue(&mut self, frame: WireFrame) {
        self.queued += frame.0.len();
        self.out.push_back(frame.0);
    }

    fn queued(&self) -> usize {
        self.queued
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.out.len().min(MAX_SLICES);
            for (slice, segment) in slices.iter_mut().zip(&self.out) {
                *slice = IoSlice::new(segment);
            }
            let mut written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= written;
            while written > 0 {
                let front = self.out.front_mut().expect("written bytes were queued");
                if written < front.len() {
                    front.advance(written);
                    break;
                }
                written -= front.len();
                self.out.pop_front();
            }
        }
        // A burst (a replay, a backlog) grows the queue; an idle socket should not keep
        // that room for the rest of its life.
        if self.out.capacity() > IDLE_SLOTS {
            self.out = VecDeque::new();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The socket as tungstenite's blocking `Read + Write`, for one poll: a read that would
/// wait reports `WouldBlock` (the task's waker is registered with the socket); what
/// tungstenite writes (its pongs and close replies) joins the queue of frames to send.
struct Io<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
    out: &'a mut VecDeque<Bytes>,
    queued: &'a mut usize,
}

impl<IO: AsyncRead + Unpin> Read for Io<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO> Write for Io<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.queued += buf.len();
        self.out.push_back(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::protocol::frame::Frame;

    use super::*;

    /// Parses a frame made here with tungstenite's own header parser.
    fn parse(frame: &WireFrame) -> (FrameHeader, Vec<u8>) {
        let mut cursor = io::Cursor::new(frame.bytes().to_vec());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let at = cursor.position() as usize;
        let payload = frame.bytes()[at..].to_vec();
        assert_eq!(payload.len() as u64, len, "the whole payload follows");
        (header, payload)
    }

    #[test]
    fn frames_of_every_length_class_parse_back() {
        for n in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let text = "x".repeat(n);
            let frame = WireFrame::from(text.clone());
            let (header, payload) = parse(&frame);
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(header.mask, None, "servers do not mask");
            assert_eq!(payload, text.as_bytes());
            assert_eq!(frame.payload(), text.as_bytes(), "payload() finds it ({n})");
        }
        let (header, payload) = parse(&WireFrame::close(1013, "too slow"));
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(&payload[..2], &1013u16.to_be_bytes());
        assert_eq!(&payload[2..], b"too slow");
        let (header, payload) = parse(&WireFrame::ping());
        assert_eq!(header.opcode, OpCode::Control(Control::Ping));
        assert!(payload.is_empty());
    }

    /// A [`WireSocket`] and tokio-tungstenite's client over an in-memory pipe of `buffer`
    /// bytes each way (small, so that writes are partial and wait for the reader).
    async fn pair(
        buffer: usize,
    ) -> (
        WireSocket<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(buffer);
        let config = WebSocketConfig::default().max_message_size(Some(1 << 16));
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (WireSocket::server(server, config), client)
    }

    async fn next(
        socket: &mut WireSocket<tokio::io::DuplexStream>,
    ) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| socket.poll_next(cx)).await
    }

    #[tokio::test]
    async fn a_real_client_reads_every_frame_in_order_through_partial_writes() {
        let (mut server, mut client) = pair(300).await;
        let frames: Vec<String> = (0..200)
            .map(|i| format!("{i}:{}", "y".repeat(i * 7)))
            .collect();
        let writer = tokio::spawn(async move {
            for f in &frames {
                server.queue(WireFrame::from(f.clone()));
            }
            server.queue(WireFrame::ping());
            std::future::poll_fn(|cx| server.poll_flush(cx))
                .await
                .unwrap();
            assert_eq!(server.queued(), 0);
            (server, frames)
        });
        let mut got = Vec::new();
        while got.len() < 200 {
            match client.next().await.unwrap().unwrap() {
                tungstenite::Message::Text(t) => got.push(t.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(
            client.next().await,
            Some(Ok(tungstenite::Message::Ping(_)))
        ));
        let (_, frames) = writer.await.unwrap();
        assert_eq!(got, frames);
    }

    #[tokio::test]
    async fn pings_are_answered_fragments_joined_and_limits_enforced() {
        let (mut server, mut client) = pair(4096).await;
        client
            .send(tungstenite::Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        assert!(matches!(
            next(&mut server).await,
            Some(Ok(Message::Ping(_)))
        ));
        // The pong goes out without the server sending anything itself; the client reads it
        // while it waits for something else.
        let read = tokio::spawn(async move {
            let pong = client.next().await;
            (client, pong)
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), next(&mut server))
                .await
                .is_err(),
            "nothing more from the client yet"
        );
        let (mut client, pong) = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the pong went out")
            .unwrap();
        match pong {
            Some(Ok(tungstenite::Message::Pong(p))) => assert_eq!(&p[..], b"hi"),
            other => panic!("expected the pong, got {other:?}"),
        }
        // A message in two fragments arrives whole.
        let first = Frame::message(Bytes::from_static(b"hel"), OpCode::Data(Data::Text), false);
        let rest = Frame::message(
            Bytes::from_static(b"lo"),
            OpCode::Data(Data::Continue),
            true,
        );
        client
            .send(tungstenite::Message::Frame(first))
            .await
            .unwrap();
        client
            .send(tungstenite::Message::Frame(rest))
            .await
            .unwrap();
        match next(&mut server).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello"),
            other => panic!("expected the joined text, got {other:?}"),
        }
        // Over the limit: a capacity error (the connection turns it into 1009) as soon as
        // the header says so; the client's send never completes, so it runs on its own.
        let sending = tokio::spawn(async move {
            let _ = client
                .send(tungstenite::Message::text("z".repeat((1 << 16) + 1)))
                .await;
        });
        assert!(matches!(
            next(&mut server).await,
            Some(Err(Error::Capacity(_)))
        ));
        sending.abort();
    }

    #[tokio::test]
    async fn a_closing_client_is_seen_and_then_gone() {
        let (mut server, mut client) = pair(4096).await;
        client.close(None).await.unwrap();
        assert!(matches!(
            next(&mut server).await,
            Some(Ok(Message::Close(_)))
        ));
        // The close is echoed, which completes the client's closing handshake.
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), client.next())
            .await
            .expect("the close was echoed");
        assert!(
            matches!(echoed, Some(Ok(tungstenite::Message::Close(_)))),
            "{echoed:?}"
        );
        drop(client);
        assert!(next(&mut server).await.is_none());
    }
}
