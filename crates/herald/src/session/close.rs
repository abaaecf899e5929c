//! Why the server ends a connection, the same on every transport: a WebSocket
//! close code, a name, and whether the client should come back.

/// Why the server closes a connection; each has a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 4000: a frame broke the protocol beyond repair. Do not reconnect unchanged.
    ProtocolError,
    /// 4001: no valid credentials. Reconnect only with a new token.
    AuthFailed,
    /// 4002: the token expired. Reconnect with a fresh token.
    TokenExpired,
    /// 4003: nothing heard within the heartbeat timeout. Reconnect.
    HeartbeatTimeout,
    /// 4008: the send queue overflowed. Reconnect and resume with `since`.
    SlowConsumer,
    /// 4009: the tenant holds its maximum number of connections. Reconnect later, with backoff.
    TooManyConnections,
    /// 4029: kept sending over the rate limit. Reconnect later, with backoff.
    RateLimited,
    /// 1001: the server is shutting down. Reconnect (to another node) and resume.
    ShuttingDown,
    /// 1013: the store did not answer. Reconnect later, with backoff, and resume.
    Unavailable,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ProtocolError => 4000,
            CloseReason::AuthFailed => 4001,
            CloseReason::TokenExpired => 4002,
            CloseReason::HeartbeatTimeout => 4003,
            CloseReason::SlowConsumer => 4008,
            CloseReason::TooManyConnections => 4009,
            CloseReason::RateLimited => 4029,
            CloseReason::ShuttingDown => 1001,
            CloseReason::Unavailable => 1013,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::ShuttingDown => "shutting_down",
            CloseReason::Unavailable => "unavailable",
        }
    }

    /// What the client should do, in words, for goodbye messages and logs.
    pub fn advice(self) -> &'static str {
        match self {
            CloseReason::ProtocolError => "a frame broke the protocol; do not reconnect unchanged",
            CloseReason::AuthFailed => "no valid credentials; reconnect only with a new token",
            CloseReason::TokenExpired => "token expired; reconnect with a fresh token",
            CloseReason::HeartbeatTimeout => "nothing heard within the heartbeat timeout; reconnect",
            CloseReason::SlowConsumer => "send queue overflowed; reconnect and resume with since",
            CloseReason::TooManyConnections => "the tenant is at its connection limit; reconnect later",
            CloseReason::RateLimited => "over the message rate limit for too long; reconnect later",
            CloseReason::ShuttingDown => "server is shutting down; reconnect and resume",
            CloseReason::Unavailable => "the store did not answer; reconnect later and resume",
        }
    }

    /// Whether a client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        !matches!(self, CloseReason::ProtocolError | CloseReason::AuthFailed)
    }
}
