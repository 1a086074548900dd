//! Why the server closes a WebSocket: one named table of every close the channels make —
//! its close code, the reason text sent with it, and whether a client should reconnect
//! (resuming with `after`). The gateway picks a [`Disconnect`], never a bare number, so a
//! code means the same thing wherever it is sent (documented in `docs/websocket.md`).

/// Every reason the server closes a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disconnect {
    /// 1000: nothing heard from the client (not even a pong) for 60 s.
    Idle,
    /// 1001: the node is shutting down.
    ShuttingDown,
    /// 1002: the client broke the WebSocket protocol (bad masking, invalid UTF-8, …).
    ProtocolError,
    /// 1003: a binary frame; the channels speak JSON text.
    BinaryFrame,
    /// 1009: a frame or message over 64 KiB.
    FrameTooBig,
    /// 1013: the client's bounded outbound queue filled (it did not keep up).
    TooSlow,
    /// 1013: the store could not be read when the channel opened.
    StoreUnavailable,
    /// 4400: `after` is not an id (visitor) or offset (tenant) of this channel.
    BadAfter,
    /// 4401: the token is missing, malformed, tampered with or expired.
    InvalidToken,
    /// 4401: the session token or agent JWT expired while the socket was open.
    TokenExpired,
    /// 4401: the token belongs to another tenant than the upgrade's `?pk=`.
    OtherTenant,
    /// 4401: the session's conversation does not exist (any more).
    NoConversation,
    /// 4403: the upgrade's `Origin` is not allowed by the token's tenant.
    OriginNotAllowed,
    /// 4408: no `auth` frame within 5 s of the upgrade.
    AuthTimeout,
    /// 4429: the visitor already holds `max_sockets_per_visitor` sockets on this node.
    TooManySockets,
}

impl Disconnect {
    /// Every reason, once.
    pub const ALL: [Disconnect; 15] = [
        Disconnect::Idle,
        Disconnect::ShuttingDown,
        Disconnect::ProtocolError,
        Disconnect::BinaryFrame,
        Disconnect::FrameTooBig,
        Disconnect::TooSlow,
        Disconnect::StoreUnavailable,
        Disconnect::BadAfter,
        Disconnect::InvalidToken,
        Disconnect::TokenExpired,
        Disconnect::OtherTenant,
        Disconnect::NoConversation,
        Disconnect::OriginNotAllowed,
        Disconnect::AuthTimeout,
        Disconnect::TooManySockets,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        use Disconnect::*;
        match self {
            Idle => 1000,
            ShuttingDown => 1001,
            ProtocolError => 1002,
            BinaryFrame => 1003,
            FrameTooBig => 1009,
            TooSlow | StoreUnavailable => 1013,
            BadAfter => 4400,
            InvalidToken | TokenExpired | OtherTenant | NoConversation => 4401,
            OriginNotAllowed => 4403,
            AuthTimeout => 4408,
            TooManySockets => 4429,
        }
    }

    /// The close frame's reason (short: a close reason holds at most 123 bytes).
    pub fn reason(self) -> &'static str {
        use Disconnect::*;
        match self {
            Idle => "no traffic for 60 s",
            ShuttingDown => "server shutting down",
            ProtocolError => "protocol error",
            BinaryFrame => "binary frames are not supported",
            FrameTooBig => "frame over 64 KiB",
            TooSlow => "too slow: resume with after",
            StoreUnavailable => "store unavailable",
            BadAfter => "after is not an id or offset of this channel",
            InvalidToken => "invalid or expired token",
            TokenExpired => "token expired: renew it and resume with after",
            OtherTenant => "token of another tenant than pk",
            NoConversation => "no such conversation",
            OriginNotAllowed => "origin not allowed for this tenant",
            AuthTimeout => "no auth frame within 5 s",
            TooManySockets => "too many sockets for this visitor",
        }
    }

    /// Whether reconnecting (with `after`, and a fresh token where one expired) can
    /// succeed without the client changing anything else.
    pub fn reconnect(self) -> bool {
        use Disconnect::*;
        match self {
            Idle | ShuttingDown | TooSlow | StoreUnavailable | TokenExpired => true,
            // After a wait, once another socket of the visitor has closed.
            TooManySockets => true,
            ProtocolError | BinaryFrame | FrameTooBig | BadAfter | InvalidToken | OtherTenant
            | NoConversation | OriginNotAllowed | AuthTimeout => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_close_frame() {
        use Disconnect::*;
        for d in Disconnect::ALL {
            assert!(d.reason().len() <= 123, "{d:?}");
            assert!(matches!(d.code(), 1000..=1013 | 4400..=4499), "{d:?}");
        }
        assert_eq!(TooSlow.code(), 1013);
        assert!(TooSlow.reconnect() && !InvalidToken.reconnect());
    }
}
