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
use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde_json::Value;

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
        StoreError::Invalid { field, message } => ApiError::invalid(field, message),
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
        let too_large = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than 64 KiB",
            )
        };
        if crate::http::announces_more_than(req.headers(), crate::http::MAX_BODY as u64) {
            return Err(Error(too_large()));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(ErrorCode::InvalidJson, "could not read the request body")
            }
        })?;
        parse_json(&bytes).map(JsonBody).map_err(Error)
    }
}

/// Parses a request body with the SPEC's error classes: anything but one JSON object
/// (malformed JSON, trailing junk, an array, a string, …) is 400 `invalid_json`; an object
/// of the wrong shape is 422 `validation_failed` naming the field.
///
/// The body is read into a [`Value`] first and the typed body is taken from that through
/// [`Strict`], because serde's derived structs also accept an *array* of their fields in
/// declaration order (`["hello"]` as `{"message":"hello"}`), which no client means.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "the body must be a JSON object, not {}",
                match value {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            ),
        ));
    }
    serde_path_to_error::deserialize(Strict(&value)).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        // "missing field `x`": name the missing field itself.
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next());
        let field = match (missing, path.as_str()) {
            (Some(f), ".") => f.to_owned(),
            (Some(f), p) => format!("{p}.{f}"),
            // Unreachable for an object body; a 422 still always names a field.
            (None, ".") => "body".to_owned(),
            (None, p) => p.to_owned(),
        };
        let message = msg.split(" at line").next().unwrap_or(&msg);
        ApiError::invalid(field, confab_protocol::without_type_names(message))
    })
}

/// A parsed JSON value handed to serde strictly: a struct only from a JSON object (serde
/// would also take an array, see [`parse_json`]), an enum only from a string; everything
/// else as `serde_json::Value` itself would. Nested values are strict too.
struct Strict<'a>(&'a Value);

impl Strict<'_> {
    fn unexpected(&self) -> Unexpected<'_> {
        match self.0 {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Unexpected::Unsigned(u),
                (_, Some(i)) => Unexpected::Signed(i),
                _ => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Unexpected::Str(s),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }
}

impl<'de> serde::Deserializer<'de> for Strict<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => v.visit_u64(u),
                (_, Some(i)) => v.visit_i64(i),
                _ => v.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => v.visit_str(s),
            Value::Array(a) => v.visit_seq(StrictSeq(a.iter())),
            Value::Object(m) => v.visit_map(StrictMap {
                entries: m.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(v),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"an object")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::String(s) => v.visit_enum(StrDeserializer::<serde_json::Error>::new(s)),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a string")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct StrictSeq<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for StrictSeq<'_> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct StrictMap<'a> {
    entries: serde_json::map::Iter<'a>,
    /// The value of the key just handed out.
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for StrictMap<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(StrDeserializer::<serde_json::Error>::new(k))
                    .map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| <serde_json::Error as de::Error>::custom("value before key"))?;
        seed.deserialize(Strict(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
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

    #[test]
    fn only_an_object_is_a_body() {
        for body in [
            &br#"["hello"]"#[..],
            br#"["hello", {"email": "a@b.c"}]"#,
            br#""hello""#,
            b"42",
            b"null",
            b"true",
            b"",
            br#"{"message":"x"} junk"#,
        ] {
            let e = parse_json::<Body>(body).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::InvalidJson,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(!e.message.contains("Body"), "{}", e.message);
        }
    }

    #[test]
    fn nested_structs_are_objects_too_and_no_type_names_leak() {
        let e = parse_json::<Body>(br#"{"message":"x","contact":["a@b.c"]}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::ValidationFailed, Some("contact"))
        );
        assert_eq!(e.message, "invalid type: sequence, expected an object");
        let e = parse_json::<Body>(br#"{"message":"x","contact":"a@b.c"}"#).unwrap_err();
        assert!(!e.message.contains("Contact"), "{}", e.message);
        let ok = parse_json::<Body>(br#"{"message":"x","contact":{"email":null},"extra":[1]}"#);
        assert!(ok.is_ok());
    }
}
