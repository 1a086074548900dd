//! Attachments (SPEC "Attachments"): uploads, the signed links a served message carries,
//! the checks a send makes, downloads, and the 24 h sweep of uploads never sent.
//!
//! - **Upload** ([`upload`]): the body streams through — the first 8 KiB are held to sniff
//!   the type (the `infer` crate, plus a UTF-8 test for `text/plain` and a markup test so
//!   HTML/SVG are never taken for text), then every chunk is hashed (SHA-256), counted
//!   against `max_bytes` and handed to the object store ([`crate::blobs`]) before the next
//!   is read. A refused type is refused before anything is written; an oversized body is
//!   cut off the moment it passes the limit. The record goes to the store only once the
//!   bytes are durable, so an acknowledged upload survives kill -9.
//! - **Links** ([`Links`]): messages are stored with `url: ""`; whoever serves a message
//!   (history, socket replay, the hub's live frames, tenant events, webhooks) passes its
//!   JSON through [`Links::message_json`], which mints `url`s valid for
//!   `attachment_url_ttl_secs`. A message without files ends with `"attachments":[]}` (the
//!   field is last), which is checked first: the common case costs one comparison.
//! - **Download** ([`download`]): a valid link, else the visitor session of the file's
//!   conversation, else an agent JWT / server key of its tenant; anything else is 404.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use confab_protocol::model::{Attachment, Message};
use confab_protocol::token::{sign_attachment_link, verify_attachment_link, Keyring};
use confab_protocol::{validate, ApiError, ErrorCode};
use confab_store::{AttachmentRecord, Clock};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::blobs::{BlobError, Blobs};
use crate::settings::Tenant;
use crate::state::AppState;

/// Bytes held back to decide a file's type.
const SNIFF_BYTES: usize = 8192;
/// Unsent uploads older than this are deleted.
pub const UNSENT_TTL_MS: i64 = 24 * 3600 * 1000;

/// Mints and checks the signed links of attachments.
pub struct Links {
    keys: Keyring,
    ttl_secs: i64,
    clock: Clock,
}

impl Links {
    pub fn new(keys: Keyring, ttl_secs: u64, clock: Clock) -> Links {
        Links {
            keys,
            ttl_secs: ttl_secs as i64,
            clock,
        }
    }

    /// `/v1/attachments/{id}?t=TENANT&exp=…&sig=…`, valid for the configured TTL.
    pub fn url(&self, tenant: &str, id: &str) -> String {
        let exp = self.clock.now_ms() / 1000 + self.ttl_secs;
        let sig = sign_attachment_link(&self.keys, tenant, id, exp);
        format!("/v1/attachments/{id}?t={tenant}&exp={exp}&sig={sig}")
    }

    /// Whether a link's `exp`/`sig` are valid now for (tenant, id).
    pub fn verify(&self, tenant: &str, id: &str, exp: i64, sig: &str) -> bool {
        verify_attachment_link(&self.keys, tenant, id, exp, sig, self.clock.now_ms())
    }

    /// A stored message's JSON as it is served: with fresh links, and with
    /// `attachments: []` on messages stored before the field existed. Borrowed (free)
    /// when the message has no files.
    pub fn message_json<'a>(&self, tenant: &str, json: &'a str) -> Cow<'a, str> {
        if json.ends_with(r#""attachments":[]}"#) {
            return Cow::Borrowed(json);
        }
        let Ok(mut m) = serde_json::from_str::<Message>(json) else {
            return Cow::Borrowed(json);
        };
        for a in &mut m.attachments {
            a.url = self.url(tenant, &a.id);
        }
        serde_json::to_string(&m).map_or(Cow::Borrowed(json), Cow::Owned)
    }

    /// A tenant event's `data` as served (`message:new` carries a message).
    pub fn event_data<'a>(&self, tenant: &str, kind: &str, data: &'a str) -> Cow<'a, str> {
        if kind == "message:new" {
            self.message_json(tenant, data)
        } else {
            Cow::Borrowed(data)
        }
    }
}

/// The answer to an upload: the Attachment plus its SHA-256.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    #[serde(flatten)]
    pub attachment: Attachment,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

/// What the transports hand [`upload`]: the file's bytes, errors already mapped.
pub type UploadBody<'a> = BoxStream<'a, Result<Bytes, ApiError>>;

pub(crate) fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the file is larger than this widget accepts ({max} bytes)"),
    )
}

fn blob_error(e: BlobError) -> ApiError {
    if matches!(e, BlobError::Unconfigured) {
        // Said at start too; a retry cannot succeed until the operator configures it.
        return ApiError::new(
            ErrorCode::StoreUnavailable,
            "uploads are not set up on this server (it needs an attachments_store); nothing was stored",
        );
    }
    tracing::warn!(error = %e, "attachment store failed");
    ApiError::new(
        ErrorCode::StoreUnavailable,
        "the attachment store is unavailable; nothing was stored, retry later",
    )
}

/// Streams an upload into storage and records it (see the module doc).
pub async fn upload(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
    filename: &str,
    mut body: UploadBody<'_>,
) -> Result<Uploaded, ApiError> {
    let rules = &tenant.cfg.attachments;
    let max = rules.max_bytes;
    // Hold the first bytes back: the type is decided before anything is written.
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_BYTES);
    let mut rest: Option<Bytes> = None;
    while head.len() < SNIFF_BYTES {
        let Some(chunk) = body.next().await.transpose()? else {
            break;
        };
        let take = (SNIFF_BYTES - head.len()).min(chunk.len());
        head.extend_from_slice(&chunk[..take]);
        if head.len() as u64 > max {
            return Err(too_large(max));
        }
        if take < chunk.len() {
            rest = Some(chunk.slice(take..));
        }
    }
    if head.is_empty() {
        return Err(ApiError::invalid("file", "the file is empty"));
    }
    let content_type = sniff(&head);
    if !rules.allowed_types.iter().any(|t| t == content_type) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "files of type {content_type} are not accepted here (allowed: {})",
                rules.allowed_types.join(", ")
            ),
        ));
    }
    let id = format!("att_{:032x}", rand::random::<u128>());
    let t = &tenant.cfg.id;
    let mut writer = state
        .attachments
        .blobs
        .writer(t, &id)
        .await
        .map_err(blob_error)?;
    let mut hasher = Sha256::new();
    let mut text = (content_type == "text/plain").then(Utf8Check::default);
    let mut size: u64 = 0;
    let result: Result<(), ApiError> = async {
        let mut next = Some(Bytes::from(head));
        if let Some(r) = rest.take() {
            // Keep order: the head, then what came with its last chunk, then the body.
            let first = next.take().unwrap_or_default();
            let mut joined = Vec::with_capacity(first.len() + r.len());
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&r);
            next = Some(Bytes::from(joined));
        }
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => match body.next().await.transpose()? {
                    Some(c) => c,
                    None => break,
                },
            };
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large(max));
            }
            hasher.update(&chunk);
            if let Some(t) = &mut text {
                t.feed(&chunk);
            }
            writer.write(&chunk).await.map_err(blob_error)?;
        }
        if text.is_some_and(|t| !t.valid()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the file looked like text but is not valid UTF-8",
            ));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        writer.abort().await;
        return Err(e);
    }
    writer.finish().await.map_err(blob_error)?;
    let record = AttachmentRecord {
        id: id.clone(),
        tenant: t.clone(),
        conversation_id: conversation_id.to_owned(),
        filename: validate::sanitize_filename(filename),
        content_type: content_type.to_owned(),
        size,
        sha256: hex(&hasher.finalize()),
        created_ms: state.now_ms(),
        message_id: None,
    };
    if let Err(e) = state.store.create_attachment(&record).await {
        // Unrecorded bytes would never be served nor swept: take them back.
        let _ = state.attachments.blobs.delete(t, &id).await;
        return Err(crate::error::store_error(e));
    }
    let mut attachment = record.wire();
    attachment.url = state.attachments.links.url(t, &id);
    Ok(Uploaded {
        attachment,
        sha256: record.sha256,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The type of a file from its first bytes: a known signature (`infer`), else markup
/// (refused by default: HTML and SVG run in browsers), else `text/plain` for UTF-8 text
/// without NULs, else `application/octet-stream`.
pub fn sniff(head: &[u8]) -> &'static str {
    let markup = looks_like_markup(head);
    if let Some(kind) = infer::get(head) {
        let mime = kind.mime_type();
        if mime == "text/xml" && markup == Some("image/svg+xml") {
            return "image/svg+xml";
        }
        return mime;
    }
    if let Some(m) = markup {
        return m;
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // Cut mid-character by the sniff window: still text.
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    };
    if text && !head.contains(&0) {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

/// Whether [`sniff`] can give `ty` (a configured allowed type must be one of these).
pub fn can_sniff(ty: &str) -> bool {
    matches!(
        ty,
        "text/plain" | "application/octet-stream" | "text/html" | "text/xml" | "image/svg+xml"
    ) || infer::is_mime_supported(ty)
}

/// `Some(type)` when the text opens like HTML, SVG or XML (after a BOM and whitespace).
fn looks_like_markup(head: &[u8]) -> Option<&'static str> {
    let start = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = &start[start.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    if !start.starts_with(b"<") {
        return None;
    }
    let lower = String::from_utf8_lossy(&start[..start.len().min(1024)]).to_ascii_lowercase();
    if lower.contains("<svg") {
        Some("image/svg+xml")
    } else if lower.starts_with("<?xml") {
        Some("text/xml")
    } else {
        Some("text/html")
    }
}

/// A streaming UTF-8 check: chunk borders may cut a character.
#[derive(Default, Clone, Copy)]
struct Utf8Check {
    carry: [u8; 3],
    carried: usize,
    bad: bool,
}

impl Utf8Check {
    fn feed(&mut self, chunk: &[u8]) {
        if self.bad {
            return;
        }
        let mut buf = Vec::with_capacity(self.carried + chunk.len());
        buf.extend_from_slice(&self.carry[..self.carried]);
        buf.extend_from_slice(chunk);
        self.carried = 0;
        if let Err(e) = std::str::from_utf8(&buf) {
            let tail = buf.len() - e.valid_up_to();
            if e.error_len().is_some() || tail > 3 {
                self.bad = true;
            } else {
                self.carry[..tail].copy_from_slice(&buf[e.valid_up_to()..]);
                self.carried = tail;
            }
        }
    }

    fn valid(self) -> bool {
        !self.bad && self.carried == 0
    }
}

/// The attachments of a message about to be sent: each id well formed, an upload of this
/// tenant in `conversation_id` (422 naming `attachments[i]` otherwise). Whether it is still
/// unsent is decided by the store, atomically with the append (after its idempotency
/// check, so a retried send still gets its duplicate answer).
pub async fn for_message(
    state: &AppState,
    tenant: &str,
    conversation_id: &str,
    ids: &[String],
) -> Result<Vec<Attachment>, ApiError> {
    validate::attachment_ids(ids)?;
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let record = state
            .store
            .attachment(tenant, id)
            .await
            .map_err(crate::error::store_error)?;
        match record {
            Some(r) if r.conversation_id == conversation_id => out.push(r.wire()),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("attachments[{i}]"),
                    "uploaded in another conversation",
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    format!("attachments[{i}]"),
                    "no such upload",
                ))
            }
        }
    }
    Ok(out)
}

/// Whether a type may be shown `inline`: raster images, PDF, plain text.
pub fn inline_allowed(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/bmp"
            | "image/avif"
            | "image/x-icon"
            | "application/pdf"
            | "text/plain"
    )
}

/// `Content-Disposition` per RFC 6266: an ASCII `filename` fallback and the exact name as
/// `filename*=UTF-8''…`.
pub fn content_disposition(inline: bool, filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(filename.len() * 3);
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "{}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}",
        if inline { "inline" } else { "attachment" }
    )
}

/// A parsed `Range` header against a file of `size` bytes: `None` to serve it whole
/// (no header, or forms this server does not split: several ranges, other units),
/// `Some(Err)` when unsatisfiable.
pub fn parse_range(header: Option<&str>, size: u64) -> Option<Result<Range<u64>, ()>> {
    let spec = header?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size
        } else {
            let e: u64 = b.parse().ok()?;
            if e < start {
                return None;
            }
            e.saturating_add(1).min(size)
        };
        if start >= size {
            return Some(Err(()));
        }
        start..end
    };
    Some(Ok(range))
}

/// Reads an attachment's bytes (all of them, or `range`).
pub async fn open(
    state: &AppState,
    record: &AttachmentRecord,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, ApiError> {
    if range.is_empty() {
        return Ok(futures_util::stream::empty().boxed());
    }
    state
        .attachments
        .blobs
        .read(&record.tenant, &record.id, Some(range))
        .await
        .map_err(|e| match e {
            BlobError::NotFound => {
                tracing::error!(id = %record.id, "attachment recorded but its bytes are gone");
                ApiError::new(ErrorCode::NotFound, "no such attachment")
            }
            e => blob_error(e),
        })
}

/// Deletes uploads never sent within 24 h: the record first (only while still unsent, so
/// a concurrent send either claimed it or finds it gone), then the bytes.
pub async fn sweep(state: &AppState) {
    let before = state.now_ms() - UNSENT_TTL_MS;
    loop {
        let stale = match state.store.stale_attachments(before, 100).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "attachment sweep failed");
                return;
            }
        };
        let n = stale.len();
        for r in stale {
            match state.store.delete_unsent_attachment(&r.tenant, &r.id).await {
                Ok(true) => {
                    if let Err(e) = state.attachments.blobs.delete(&r.tenant, &r.id).await {
                        tracing::warn!(error = %e, id = %r.id, "unsent attachment's bytes not deleted");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "attachment sweep failed");
                    return;
                }
            }
        }
        if n < 100 {
            return;
        }
    }
}

/// A node's attachment machinery: the byte store and the link signer.
pub struct Attachments {
    pub blobs: Blobs,
    pub links: std::sync::Arc<Links>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff("héllo wörld\n".as_bytes()), "text/plain");
        assert_eq!(sniff(b"\xEF\xBB\xBF  <!DOCTYPE html><html>"), "text/html");
        assert_eq!(
            sniff(b"<svg xmlns='http://www.w3.org/2000/svg'>"),
            "image/svg+xml"
        );
        assert_eq!(
            sniff(b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'>"),
            "image/svg+xml"
        );
        // An executable is never text: refused unless a tenant allows its type.
        let elf = sniff(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0");
        assert!(["application/x-executable", "application/octet-stream"].contains(&elf));
        assert_eq!(sniff(b"a\0b"), "application/octet-stream");
        // A multi-byte character cut by the sniff window is still text.
        let mut t = vec![b'a'; SNIFF_BYTES - 1];
        t.push(0xC3);
        assert_eq!(sniff(&t), "text/plain");
    }

    #[test]
    fn utf8_across_chunks() {
        let s = "aé€😀".as_bytes();
        for cut in 0..s.len() {
            let mut c = Utf8Check::default();
            c.feed(&s[..cut]);
            c.feed(&s[cut..]);
            assert!(c.valid(), "cut at {cut}");
        }
        let mut c = Utf8Check::default();
        c.feed(b"ok\xC3");
        assert!(!c.valid(), "a truncated character at the end");
        let mut c = Utf8Check::default();
        c.feed(b"\xFF");
        assert!(!c.valid());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), None);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Some(Ok(0..4)));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Some(Ok(5..10)));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Some(Ok(7..10)));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Some(Ok(8..10)));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), None);
        assert_eq!(parse_range(Some("items=0-1"), 10), None);
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            content_disposition(false, "Rechnung März.pdf"),
            "attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
        );
        assert!(content_disposition(true, "a\"b.txt").starts_with("inline; filename=\"a_b.txt\""));
    }
}
