//! Error codes and the one error body of the SPEC:
//! `{ "error": { "code": "snake_case_code", "message": "…", "field": "optional.path" } }`.
//! Each code maps to exactly one HTTP status, here and nowhere else.

use serde::{Deserialize, Serialize};

/// Every error code Confab answers with. The string form is the wire `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400 (or another 4xx without a code of its own): a request HTTP itself refuses, e.g. a
    /// WebSocket route asked without an upgrade.
    BadRequest,
    /// 422: a field breaks a rule (`field` says which).
    ValidationFailed,
    /// 413: body over 64 KiB.
    PayloadTooLarge,
    /// 415: an uploaded file's type (sniffed from its bytes) is not in the tenant's
    /// `allowed_types`.
    UnsupportedMediaType,
    /// 416: a download's `Range` lies outside the file.
    RangeNotSatisfiable,
    /// 401: missing, tampered or expired session token.
    InvalidSession,
    /// 401: missing or invalid agent JWT / server key on a tenant route.
    InvalidCredentials,
    /// 403: the credential is valid but not for this route (agent JWT on a server-key route).
    Forbidden,
    /// 403: init challenge missing, malformed, expired, reused or another tenant's.
    InvalidChallenge,
    /// 403: honeypot filled or too fast.
    BotSuspected,
    /// 403: `Origin` not on the allowlist.
    OriginNotAllowed,
    /// 404: no tenant has this public key.
    UnknownPublicKey,
    /// 404: no such conversation (for this tenant).
    ConversationNotFound,
    /// 404: no such route.
    NotFound,
    /// 404: the assistant has no phone number (`POST /v1/voice`).
    VoiceUnavailable,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 429: over a rate limit (`Retry-After` says when to try again).
    RateLimited,
    /// 503: the store cannot be reached; nothing was acknowledged.
    StoreUnavailable,
    /// 503: the gateway is shutting down or at its connection limit.
    Unavailable,
    /// 503: this client IP already holds `max_connections_per_ip` open connections.
    TooManyConnections,
    /// 408: the request body stalled (nothing arrived for 30 s); the connection is closed.
    RequestTimeout,
    /// 500: a bug or an unexpected store error.
    Internal,
    /// WebSocket only: an unparseable or unknown frame.
    InvalidFrame,
    /// WebSocket only: the events after the client's `after` fell out of retention; what
    /// is retained follows, but the client must reload its state over HTTP.
    NotRecovered,
}

impl ErrorCode {
    /// Every code, once (for tests and documentation that must cover them all).
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::InvalidJson,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::BadRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidSession,
        ErrorCode::InvalidCredentials,
        ErrorCode::Forbidden,
        ErrorCode::InvalidChallenge,
        ErrorCode::BotSuspected,
        ErrorCode::OriginNotAllowed,
        ErrorCode::UnknownPublicKey,
        ErrorCode::ConversationNotFound,
        ErrorCode::NotFound,
        ErrorCode::VoiceUnavailable,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::StoreUnavailable,
        ErrorCode::Unavailable,
        ErrorCode::TooManyConnections,
        ErrorCode::RequestTimeout,
        ErrorCode::Internal,
        ErrorCode::InvalidFrame,
        ErrorCode::NotRecovered,
    ];

    /// The wire `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::InvalidSession => "invalid_session",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidChallenge => "invalid_challenge",
            ErrorCode::BotSuspected => "bot_suspected",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::UnknownPublicKey => "unknown_public_key",
            ErrorCode::ConversationNotFound => "conversation_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VoiceUnavailable => "voice_unavailable",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::NotRecovered => "not_recovered",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::BadRequest | ErrorCode::InvalidFrame => 400,
            ErrorCode::InvalidSession | ErrorCode::InvalidCredentials => 401,
            ErrorCode::Forbidden
            | ErrorCode::InvalidChallenge
            | ErrorCode::BotSuspected
            | ErrorCode::OriginNotAllowed => 403,
            ErrorCode::UnknownPublicKey
            | ErrorCode::ConversationNotFound
            | ErrorCode::NotFound
            | ErrorCode::VoiceUnavailable => 404,
            ErrorCode::MethodNotAllowed => 405,
            // Never an HTTP answer; `Gone` is what it means.
            ErrorCode::NotRecovered => 410,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::ValidationFailed => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::StoreUnavailable
            | ErrorCode::Unavailable
            | ErrorCode::TooManyConnections => 503,
        }
    }
}

/// An error as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The offending field's path (`contact.email`, `variables.cart`), for 422s.
    pub field: Option<String>,
    /// Seconds until a rate-limited request may succeed (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// A 422 `validation_failed` naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            code: ErrorCode::ValidationFailed,
            message: message.into(),
            field: Some(field.into()),
            retry_after_secs: None,
        }
    }

    /// A 429 with its `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError {
            code: ErrorCode::RateLimited,
            message: format!("rate limit exceeded; retry in {retry_after_secs} s"),
            field: None,
            retry_after_secs: Some(retry_after_secs),
        }
    }

    /// The SPEC's error body.
    pub fn body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                field: self.field.clone(),
            },
        })
        .unwrap_or_default()
    }
}

/// Rewrites serde's "expected struct SendBody" / "expected internally tagged enum
/// ClientFrame" into words a client understands: Rust type names are not part of the API.
pub fn without_type_names(message: &str) -> String {
    let mut out: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    let mut words = message.split(' ').peekable();
    while let Some(w) = words.next() {
        // "internally tagged enum X", "adjacently tagged enum X", "unit struct X", …
        if matches!(
            w,
            "internally" | "adjacently" | "unit" | "newtype" | "tuple"
        ) && words
            .peek()
            .is_some_and(|n| matches!(*n, "tagged" | "struct" | "variant"))
        {
            continue;
        }
        if w == "tagged" && words.peek().is_some_and(|n| *n == "enum") {
            continue;
        }
        let named = words
            .peek()
            .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_uppercase()));
        match w {
            "struct" if named => {
                words.next();
                out.push("an object".into());
            }
            "enum" | "variant" if named => {
                words.next();
                out.push("one of the allowed values".into());
            }
            _ => {
                // Primitive numbers ("expected f64", "expected u64"), perhaps followed in
                // the same word by punctuation or a line break.
                let core = w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                match number_words(core) {
                    Some(words) => out.push(format!("{words}{}", &w[core.len()..]).into()),
                    None => out.push(w.into()),
                }
            }
        }
    }
    out.join(" ")
}

/// Words for a Rust number type's name.
fn number_words(name: &str) -> Option<&'static str> {
    Some(match name {
        "f32" | "f64" => "a number",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        _ => return None,
    })
}

/// The body of every 4xx/5xx answer: `{ "error": { "code", "message", "field"? } }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`), people (`message`) and forms (`field`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable; one HTTP status per code.
    pub code: ErrorCode,
    /// Human-readable; may change between versions.
    pub message: String,
    /// The offending input's path (`contact.email`, `variables.cart`, `limit`): present on
    /// every 422 `validation_failed`, absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_spec_shape() {
        let e = ApiError::invalid("contact.email", "not an email");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "validation_failed");
        assert_eq!(v["error"]["field"], "contact.email");
        assert_eq!(e.code.status(), 422);
        let v: serde_json::Value =
            serde_json::from_str(&ApiError::new(ErrorCode::Internal, "x").body()).unwrap();
        assert!(v["error"].get("field").is_none());
    }

    #[test]
    fn type_names_are_rewritten() {
        assert_eq!(
            without_type_names("invalid type: string \"x\", expected struct SendBody"),
            "invalid type: string \"x\", expected an object"
        );
        assert_eq!(
            without_type_names(
                "invalid type: sequence, expected internally tagged enum ClientFrame"
            ),
            "invalid type: sequence, expected one of the allowed values"
        );
        assert_eq!(
            without_type_names("expected enum AuthorKind"),
            "expected one of the allowed values"
        );
        assert_eq!(without_type_names("a struct of b"), "a struct of b");
        assert_eq!(
            without_type_names("invalid type: string \"5000\", expected f64"),
            "invalid type: string \"5000\", expected a number"
        );
        assert_eq!(
            without_type_names("invalid value: integer `-1`, expected u64"),
            "invalid value: integer `-1`, expected a non-negative integer"
        );
        assert_eq!(
            without_type_names("invalid type: floating point `50.5`, expected u64\n"),
            "invalid type: floating point `50.5`, expected a non-negative integer\n"
        );
    }

    #[test]
    fn serde_names_are_the_wire_codes() {
        for c in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::from(c.as_str())
            );
        }
    }
}
