//! The service layer: what the transports (`http`, `ws`) ask of the node once they have
//! parsed and authenticated a request. Services enforce limits, idempotency and the PII
//! policy and are the code that calls the `Store`.
//!
//! - [`sessions`] — starting and resuming visitor sessions.
//!
//! Still outside it (moving here is the next step of the restructuring): the chat
//! operations in `chat` (visitor sends, agent replies, status, typing) and the reads of
//! `http::tenant`.

pub mod sessions;
