//! How errors leave the gateway: every 4xx/5xx carries the SPEC's error body, and the
//! mapping from code to status lives in `confab_protocol::ErrorCode`, once. Also the
//! request extractors whose failures must speak the same language (`invalid_json`, 413,
//! `validation_failed` with the offending field).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use confab_protocol::{ApiError, ErrorCode};
use confab_store::StoreError;
use serde::de::DeserializeOwned;

/// A handler error: an [`ApiError`] that renders itself.
#[derive(Debug)]
pub struct Error(pub ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error(store_error(e))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

/// Store failures as the API reports them: 503 when nothing was stored because the
/// backend is unreachable (clients retry with the same `clientMessageId`), 500 otherwise.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(msg) => {
            tracing::warn!(%msg, "store unavailable");
            ApiError::new(
                ErrorCode::StoreUnavailable,
                "the message store is unavailable; nothing was stored, retry later",
            )
        }
        StoreError::Internal(msg) => {
            tracing::error!(%msg, "store error");
            ApiError::new(ErrorCode::Internal, "internal error")
        }
    }
}

/// The response for an error.
pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        e.body(),
    )
        .into_response();
    if let Some(secs) = e.retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub type HandlerResult<T> = Result<T, Error>;

/// A JSON body, with the SPEC's errors: over 64 KiB → 413, not JSON → 400
/// `invalid_json`, JSON of the wrong shape → 422 `validation_failed` naming the field.
/// The `Content-Type` is not insisted on (legacy clients and `sendBeacon` send text/plain).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than 64 KiB",
                )
            } else {
                ApiError::new(ErrorCode::InvalidJson, "could not read the request body")
            }
        })?;
        parse_json(&bytes).map(JsonBody).map_err(Error)
    }
}

/// Parses JSON with the SPEC's error classes.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                // "missing field `x` at line …": name the missing field itself.
                let field = msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .map(|f| {
                        if path == "." {
                            f.to_owned()
                        } else {
                            format!("{path}.{f}")
                        }
                    })
                    .unwrap_or(if path == "." { String::new() } else { path });
                let message = msg.split(" at line").next().unwrap_or(&msg).to_owned();
                ApiError {
                    field: (!field.is_empty()).then_some(field),
                    ..ApiError::invalid("", message)
                }
            }
            _ => ApiError::new(ErrorCode::InvalidJson, format!("malformed JSON: {inner}")),
        }
    })?;
    // Anything but whitespace after the value (`{"message":"x"} junk`) is malformed too.
    de.end()
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// The query string as a map; malformed encoding is a 422 rather than axum's plain text.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(m)| Params(m))
            .map_err(|_| Error(ApiError::invalid("query", "malformed query string")))
    }
}

impl Params {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// An optional integer within `range`.
    pub fn int(
        &self,
        k: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(
                    k,
                    format!(
                        "{k} must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        message: String,
        contact: Option<Contact>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Contact {
        email: Option<String>,
    }

    #[test]
    fn error_classes() {
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let e = parse_json::<Body>(b"{}").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::ValidationFailed, Some("message"))
        );
        let e = parse_json::<Body>(br#"{"message":"x","contact":{"email":5}}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::ValidationFailed, Some("contact.email"))
        );
        let e = parse_json::<Body>(br#"{"message":1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("message"));
    }
}
