//! The attachment routes: uploads (visitor and tenant side) and downloads. The rules —
//! sniffing, limits, links, storage — are `service::attachments`; this module reads the
//! request (raw body or `multipart/form-data`, as a stream: the 64 KiB JSON limit does not
//! apply, `max_bytes` does), authenticates, and writes the download's headers.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use confab_protocol::{validate, ApiError, ErrorCode};
use confab_store::AttachmentRecord;
use futures_util::StreamExt;
use utoipa::IntoParams;

use super::json_text;
use super::openapi::{
    ConversationNotFound, InvalidCredentials, InvalidSession, OriginNotAllowed, PayloadTooLarge,
    RateLimited, StoreUnavailable, ValidationFailed,
};
use crate::auth::{authenticate_tenant, bearer, verify_session};
use crate::error::{error_response, HandlerResult, Params};
use crate::policy::limits::Limit;
use crate::service::attachments::{self as svc, UploadBody, Uploaded};
use crate::settings::Tenant;
use crate::state::AppState;

/// Query of the upload routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct UploadQuery {
    /// The file's name, for a raw body (a multipart part brings its own).
    filename: Option<String>,
    /// Visitor route only: the session token, for clients that cannot set
    /// `Authorization`.
    session_token: Option<String>,
}

/// Query of the download route.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DownloadQuery {
    /// `attachment` (default) or `inline` (honoured for raster images, PDF, plain text).
    disposition: Option<String>,
    /// A signed link's tenant, expiry (unix seconds) and signature — as in a Message's
    /// `url`. Without them (or when expired or tampered) a credential is needed.
    t: Option<String>,
    exp: Option<i64>,
    sig: Option<String>,
    /// A visitor's session token, instead of `Authorization`.
    #[into_params(rename = "sessionToken")]
    session_token: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such attachment")
}

/// Room for a multipart body's part headers and boundaries around the file, when its
/// announced length is checked against the file limit.
const MULTIPART_OVERHEAD: u64 = 16 * 1024;

/// The request's file as a stream: the body itself, or the `file` part of a
/// `multipart/form-data` body (parsed by `multer` as it arrives).
async fn file_of(
    req: Request,
    max_bytes: u64,
    query_filename: Option<&str>,
) -> Result<(String, UploadBody<'static>), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let multipart = ct.to_ascii_lowercase().starts_with("multipart/form-data");
    // A multipart body may exceed the file by its part headers and boundaries.
    let room = if multipart { MULTIPART_OVERHEAD } else { 0 };
    if super::announces_more_than(req.headers(), max_bytes.saturating_add(room)) {
        return Err(crate::service::attachments::too_large(max_bytes));
    }
    let stream = req.into_body().into_data_stream();
    if !multipart {
        let name = query_filename
            .filter(|f| !f.is_empty())
            .ok_or_else(|| ApiError::invalid("filename", "give ?filename= with a raw body"))?;
        let body = stream
            .map(|r| {
                r.map_err(|_| ApiError::new(ErrorCode::BadRequest, "the upload was interrupted"))
            })
            .boxed();
        return Ok((name.to_owned(), body));
    }
    let boundary = multer::parse_boundary(&ct).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "multipart/form-data without a boundary",
        )
    })?;
    // The whole body may exceed the file by its part headers and other small fields.
    let limits = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(max_bytes.saturating_add(64 * 1024))
            .per_field(max_bytes.saturating_add(1)),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, limits);
    loop {
        let field = multipart.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else {
            return Err(ApiError::invalid(
                "file",
                "the multipart body has no `file` part",
            ));
        };
        if field.name() != Some("file") {
            continue;
        }
        let name = field
            .file_name()
            .map(str::to_owned)
            .or_else(|| query_filename.map(str::to_owned))
            .unwrap_or_default();
        return Ok((name, field.map(|r| r.map_err(multipart_error)).boxed()));
    }
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the file is larger than this widget accepts",
            )
        }
        e => ApiError::new(
            ErrorCode::BadRequest,
            format!("malformed multipart/form-data body: {e}"),
        ),
    }
}

fn created(u: &Uploaded) -> Response {
    json_text(
        StatusCode::CREATED,
        serde_json::to_string(u).unwrap_or_default(),
    )
}

async fn upload_into(
    state: &AppState,
    tenant: &Tenant,
    conversation_id: &str,
    params: &Params,
    req: Request,
) -> HandlerResult<Response> {
    let (name, body) = file_of(
        req,
        tenant.cfg.attachments.max_bytes,
        params.get("filename"),
    )
    .await?;
    let u = svc::upload(state, tenant, conversation_id, &name, body).await?;
    Ok(created(&u))
}

/// `POST /v1/attachments`: a visitor uploads a file into their conversation — the raw body
/// with `?filename=`, or `multipart/form-data` with one `file` part. The type is sniffed
/// from the bytes; the file is durably stored before the answer. Send it by naming its
/// `id` in a message's `attachments`; unsent, it is deleted after 24 h.
#[utoipa::path(
    post,
    path = "/v1/attachments",
    operation_id = "uploadAttachment",
    tag = "widget",
    params(UploadQuery),
    request_body(
        description = "The file's bytes as the raw body (any type: it is sniffed), or \
`multipart/form-data` with one `file` part.",
        content((Vec<u8> = "application/octet-stream"), (Object = "multipart/form-data")),
    ),
    security(("visitorSession" = [])),
    responses(
        (status = 201, description = "Stored.", body = Uploaded),
        (status = 400, description = "`bad_request`: a malformed multipart body.", body = confab_protocol::ErrorBody),
        (status = 401, response = InvalidSession),
        (status = 403, response = OriginNotAllowed),
        (status = 413, response = PayloadTooLarge),
        (status = 415, description = "`unsupported_media_type`: the sniffed type is not in the tenant's `allowed_types`.", body = confab_protocol::ErrorBody),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
    req: Request,
) -> HandlerResult<Response> {
    let session = verify_session(&state, bearer(&headers).or(params.get("sessionToken")))?;
    session.tenant.policy.check(&headers)?;
    crate::service::limits::charge(
        &state,
        &session.tenant,
        Limit::UploadsPerSession,
        &session.claims.visitor_id,
    )
    .await?;
    let conv = session.claims.conversation_id.clone();
    upload_into(&state, &session.tenant, &conv, &params, req).await
}

/// `POST /v1/tenant/conversations/{id}/attachments`: an agent (or the tenant's backend)
/// uploads a file into a conversation, to send it with a reply.
#[utoipa::path(
    post,
    path = "/v1/tenant/conversations/{id}/attachments",
    operation_id = "uploadConversationAttachment",
    tag = "tenant",
    params(("id" = String, Path, description = "The conversation's id (a UUID)."), UploadQuery),
    request_body(
        description = "The file's bytes as the raw body (any type: it is sniffed), or \
`multipart/form-data` with one `file` part.",
        content((Vec<u8> = "application/octet-stream"), (Object = "multipart/form-data")),
    ),
    security(("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 201, description = "Stored.", body = Uploaded),
        (status = 400, description = "`bad_request`: a malformed multipart body.", body = confab_protocol::ErrorBody),
        (status = 401, response = InvalidCredentials),
        (status = 403, response = OriginNotAllowed),
        (status = 404, response = ConversationNotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, description = "`unsupported_media_type`: the sniffed type is not in the tenant's `allowed_types`.", body = confab_protocol::ErrorBody),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn tenant_upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Params,
    req: Request,
) -> HandlerResult<Response> {
    let auth = authenticate_tenant(&state, &headers)?;
    auth.tenant.policy.check(&headers)?;
    let found = state
        .store
        .conversation(&auth.tenant.cfg.id, &id)
        .await
        .map_err(crate::error::store_error)?;
    if found.is_none() {
        return Err(ApiError::new(ErrorCode::ConversationNotFound, "no such conversation").into());
    }
    upload_into(&state, &auth.tenant, &id, &params, req).await
}

/// Who may read `id`: a valid signed link, else a credential of its conversation or
/// tenant. `None` (→ 404) for everyone else, so ids cannot be probed.
async fn authorised(
    state: &AppState,
    id: &str,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Option<AttachmentRecord>, ApiError> {
    let lookup = |tenant: String| async move {
        state
            .store
            .attachment(&tenant, id)
            .await
            .map_err(crate::error::store_error)
    };
    if let (Some(t), Some(exp), Some(sig)) = (params.get("t"), params.get("exp"), params.get("sig"))
    {
        let exp = exp.parse::<i64>().unwrap_or(0);
        if state.tenants.by_id(t).is_some() && state.attachments.links.verify(t, id, exp, sig) {
            return lookup(t.to_owned()).await;
        }
        // Tampered or expired: fall back to credentials.
    }
    let token = bearer(headers).or(params.get("sessionToken"));
    if let Ok(session) = verify_session(state, token) {
        let c = &session.claims;
        return Ok(lookup(c.tenant.clone())
            .await?
            .filter(|r| r.conversation_id == c.conversation_id));
    }
    if bearer(headers).is_some() {
        if let Ok(auth) = authenticate_tenant(state, headers) {
            return lookup(auth.tenant.cfg.id.clone()).await;
        }
    }
    Ok(None)
}

/// `GET /v1/attachments/{id}`: the file. With a Message's signed `url` no credential is
/// needed (`&disposition=` may be added to it); otherwise the visitor session of its
/// conversation, or an agent JWT / server key of its tenant; anyone else gets 404.
/// `ETag` + `If-None-Match` → 304; a single `Range` → 206 (416 when outside the file).
#[utoipa::path(
    get,
    path = "/v1/attachments/{id}",
    operation_id = "downloadAttachment",
    tag = "widget",
    params(("id" = String, Path, description = "The attachment's id (`att_…`)."), DownloadQuery),
    security((), ("visitorSession" = []), ("agentJwt" = []), ("serverKey" = [])),
    responses(
        (status = 200, description = "The file, with `Content-Disposition` (RFC 6266 `filename*`), \
`ETag`, `Content-Security-Policy: sandbox` and `X-Content-Type-Options: nosniff`; its \
`Content-Type` is the sniffed type of the file.",
            content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "The requested range (`Content-Range`), in the file's type.", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "`If-None-Match` matched the `ETag`."),
        (status = 404, description = "`not_found`: no such attachment, or no right to it.", body = confab_protocol::ErrorBody),
        (status = 416, description = "`range_not_satisfiable`: the `Range` lies outside the file.", body = confab_protocol::ErrorBody),
        (status = 422, response = ValidationFailed),
        (status = 503, response = StoreUnavailable),
    ),
)]
pub async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Params,
) -> HandlerResult<Response> {
    let inline = match params.get("disposition") {
        None | Some("") | Some("attachment") => false,
        Some("inline") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "disposition",
                "disposition must be attachment or inline",
            )
            .into())
        }
    };
    if !validate::is_attachment_id(&id) {
        return Err(not_found().into());
    }
    let record = authorised(&state, &id, &params, &headers)
        .await?
        .ok_or_else(not_found)?;
    let etag = format!("\"{}\"", record.sha256);
    let mut b = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "private, max-age=300")
        .header(header::CONTENT_SECURITY_POLICY, "sandbox")
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let hit = inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
        if hit {
            let resp = b.status(StatusCode::NOT_MODIFIED).body(Body::empty());
            return Ok(resp.unwrap_or_else(|_| error_response(&internal())));
        }
    }
    let inline = inline && svc::inline_allowed(&record.content_type);
    let content_type = if record.content_type == "text/plain" {
        "text/plain; charset=utf-8".to_owned()
    } else {
        record.content_type.clone()
    };
    b = b.header(header::CONTENT_TYPE, content_type).header(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&svc::content_disposition(inline, &record.filename))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    let size = record.size;
    let range = svc::parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, range) = match range {
        None => (StatusCode::OK, 0..size),
        Some(Ok(r)) => {
            b = b.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        Some(Err(())) => {
            let mut resp = error_response(&ApiError::new(
                ErrorCode::RangeNotSatisfiable,
                format!("the file has {size} bytes"),
            ));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let stream = svc::open(&state, &record, range.clone()).await?;
    let resp = b
        .status(status)
        .header(header::CONTENT_LENGTH, range.end - range.start)
        .body(Body::from_stream(stream));
    Ok(resp.unwrap_or_else(|_| error_response(&internal())))
}

fn internal() -> ApiError {
    ApiError::new(ErrorCode::Internal, "internal error")
}
