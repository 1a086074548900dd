//! # Confab protocol
//!
//! Everything a Confab client library needs, and nothing that does IO:
//!
//! - [`time`] — the one timestamp format on the wire (RFC 3339, milliseconds, `Z`).
//! - [`model`] — the JSON shapes of the SPEC: `Message`, `Conversation`, tenant events.
//! - [`frames`] — WebSocket client frames (parsed) and server frames (encoded once).
//! - [`error`] — the error codes and the `{ "error": { … } }` body.
//! - [`disconnect`] — why the server closes a WebSocket: close code, reason, reconnect?
//! - [`token`] — session tokens, init challenges, agent JWTs (HS256), visitor tokens.
//! - [`validate`] — the input rules (lengths in Unicode scalar values, variables, email,
//!   BCP-47 locale, public keys, event types).

pub mod disconnect;
pub mod error;
pub mod frames;
pub mod model;
pub mod time;
pub mod token;
pub mod validate;

pub use disconnect::Disconnect;
pub use error::{without_type_names, ApiError, ErrorBody, ErrorCode};
