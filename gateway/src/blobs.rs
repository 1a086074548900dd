//! Where attachment bytes live: one interface, the `object_store` crate, over local files
//! (the embedded default), an S3-compatible store (Redis mode: nodes share no disk) or
//! memory (`store = "memory"`, nothing survives the process — like that store).
//!
//! Why `object_store`: it is the Apache Arrow project's maintained client for local files,
//! S3 and every S3-compatible server, with streaming reads, ranged reads and multipart
//! writes behind one trait, so the upload and download code has no backend branches.
//! Version 0.12 because it uses reqwest 0.12 with rustls + ring, like the rest of the
//! workspace (later versions pull a second TLS stack, aws-lc-rs).
//!
//! **Durability.** Writes go through `put_multipart`: `LocalFileSystem` writes a staging
//! file next to the target and renames it into place on `complete` — but it never fsyncs.
//! So after `complete` this module fsyncs the file and its directory itself (both, or a
//! crash could lose the data or the rename), and only then does the upload answer 201.
//! An S3 store has committed the object when `CompleteMultipartUpload` answers.
//!
//! **Memory.** A writer buffers at most one part before handing it to the store, and waits
//! for that part before taking more of the request body: 256 KiB for files, S3's 5 MiB
//! minimum part size for S3, so one upload never holds more than about two parts
//! whatever the file's size.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};

use crate::config::Config;

/// Part size for local files: large enough for few syscalls, small enough to stay cheap.
const FILE_PART: usize = 256 * 1024;
/// S3's minimum multipart part size (all parts but the last).
const S3_PART: usize = 5 * 1024 * 1024;

/// `attachments_store`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory (created when missing).
    File(PathBuf),
    /// An S3-compatible bucket; credentials come from `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (and the other `AWS_*` variables the AWS tools read).
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
    /// In the process (with `store = "memory"` only).
    Memory,
    /// Redis mode without `attachments_store`: uploads are refused (503).
    Unconfigured,
}

impl Location {
    /// Where a configuration keeps its attachments; `Err` explains a bad or missing
    /// `attachments_store` (Redis mode needs an S3 store: its nodes share no disk).
    pub fn of(c: &Config) -> Result<Location, String> {
        let redis = c.store.starts_with("redis://")
            || c.store.starts_with("rediss://")
            || c.store.starts_with("redis-cluster://");
        let Some(url) = &c.attachments_store else {
            if redis {
                // Nodes share no disk: without an S3 store there is nowhere to put files.
                // The gateway runs, and uploads answer 503 saying what to configure.
                return Ok(Location::Unconfigured);
            }
            if let Some(rest) = c.store.strip_prefix("sqlite:") {
                let db = rest.split('?').next().unwrap_or(rest);
                let dir = std::path::Path::new(db)
                    .parent()
                    .map(|p| p.to_path_buf())
                    .unwrap_or_default();
                return Ok(Location::File(dir.join("attachments")));
            }
            return Ok(Location::Memory);
        };
        if let Some(dir) = url.strip_prefix("file:") {
            if dir.is_empty() {
                return Err("attachments_store: file: needs a directory".into());
            }
            if redis {
                return Err(
                    "attachments_store: Redis mode needs an S3-compatible store, \
                            not local files (the nodes share no disk)"
                        .into(),
                );
            }
            return Ok(Location::File(PathBuf::from(dir)));
        }
        if url == "memory" {
            if redis {
                return Err("attachments_store: Redis mode needs an S3-compatible store".into());
            }
            return Ok(Location::Memory);
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
            if bucket.is_empty() || bucket.contains('/') {
                return Err(format!(
                    "attachments_store: {url:?} needs a bucket: s3://BUCKET?…"
                ));
            }
            let (mut endpoint, mut region) = (None, None);
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("endpoint", v)) if !v.is_empty() => endpoint = Some(v.to_owned()),
                    Some(("region", v)) if !v.is_empty() => region = Some(v.to_owned()),
                    _ => {
                        return Err(format!(
                            "attachments_store: unknown option {pair:?} (endpoint=, region=)"
                        ))
                    }
                }
            }
            if let Some(e) = &endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err("attachments_store: endpoint must be an http(s) URL".into());
                }
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                endpoint,
                region,
            });
        }
        Err(format!(
            "attachments_store: {url:?} is not file:DIR or s3://BUCKET?endpoint=…&region=…"
        ))
    }
}

/// Object store errors, as the callers need them.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such object (a record whose bytes are gone).
    #[error("not found")]
    NotFound,
    /// The store failed; nothing can be promised.
    #[error("object store: {0}")]
    Store(String),
    /// There is no store to write to (Redis mode without `attachments_store`).
    #[error("no attachments_store: Redis mode needs an s3:// store for attachments")]
    Unconfigured,
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound,
            e => BlobError::Store(e.to_string()),
        }
    }
}

/// The attachment byte store of a node.
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The directory of a `file:` store: what gets fsynced after a write.
    local: Option<PathBuf>,
    part: usize,
    /// False in Redis mode without `attachments_store`: every write is refused.
    enabled: bool,
}

impl Blobs {
    /// Opens the store at `location` (creating a local directory).
    pub fn open(location: &Location) -> Result<Blobs, String> {
        match location {
            Location::Unconfigured => Ok(Blobs {
                store: Arc::new(object_store::memory::InMemory::new()),
                local: None,
                part: FILE_PART,
                enabled: false,
            }),
            Location::Memory => Ok(Blobs {
                store: Arc::new(object_store::memory::InMemory::new()),
                local: None,
                part: FILE_PART,
                enabled: true,
            }),
            Location::File(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("attachments_store {}: {e}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| format!("attachments_store {}: {e}", dir.display()))?;
                let dir = dir
                    .canonicalize()
                    .map_err(|e| format!("attachments_store {}: {e}", dir.display()))?;
                Ok(Blobs {
                    store: Arc::new(fs),
                    local: Some(dir),
                    part: FILE_PART,
                    enabled: true,
                })
            }
            Location::S3 {
                bucket,
                endpoint,
                region,
            } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if let Some(r) = region {
                    b = b.with_region(r);
                }
                let s3 = b.build().map_err(|e| format!("attachments_store: {e}"))?;
                Ok(Blobs {
                    store: Arc::new(s3),
                    local: None,
                    part: S3_PART,
                    enabled: true,
                })
            }
        }
    }

    fn path(tenant: &str, id: &str) -> ObjectPath {
        // Both are from closed alphabets (tenant ids `[A-Za-z0-9_-]`, `att_` + hex).
        ObjectPath::from(format!("{tenant}/{id}"))
    }

    /// Starts writing an object; nothing is visible under its name until `finish`.
    pub async fn writer(&self, tenant: &str, id: &str) -> Result<BlobWriter, BlobError> {
        if !self.enabled {
            return Err(BlobError::Unconfigured);
        }
        let path = Self::path(tenant, id);
        let upload = self.store.put_multipart(&path).await?;
        Ok(BlobWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, self.part),
            local: self.local.as_ref().map(|d| d.join(tenant).join(id)),
        })
    }

    /// The object's bytes, or a range of them, as a stream.
    pub async fn read(
        &self,
        tenant: &str,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, BlobError> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = self.store.get_opts(&Self::path(tenant, id), opts).await?;
        Ok(got
            .into_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .boxed())
    }

    /// Deletes an object (a missing one is not an error).
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::path(tenant, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// An object being written: [`write`](Self::write) the parts in order, then
/// [`finish`](Self::finish) — or drop it / [`abort`](Self::abort) to leave nothing behind.
pub struct BlobWriter {
    inner: WriteMultipart,
    /// The final file of a `file:` store, fsynced after `finish`.
    local: Option<PathBuf>,
}

impl BlobWriter {
    /// Appends bytes; waits while a part is still being written, so at most about two
    /// parts of one upload are in memory.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.inner.write(bytes);
        self.inner.wait_for_capacity(1).await?;
        Ok(())
    }

    /// Completes the object and makes it durable.
    pub async fn finish(self) -> Result<(), BlobError> {
        self.inner.finish().await?;
        if let Some(file) = self.local {
            tokio::task::spawn_blocking(move || fsync_file_and_dirs(&file))
                .await
                .map_err(|e| BlobError::Store(e.to_string()))?
                .map_err(|e| BlobError::Store(format!("fsync: {e}")))?;
        }
        Ok(())
    }

    /// Gives the object up (best effort: a failed abort leaves a staging file or an
    /// incomplete S3 upload, never a visible object).
    pub async fn abort(self) {
        if let Err(e) = self.inner.abort().await {
            tracing::debug!(error = %e, "attachment upload not aborted cleanly");
        }
    }
}

/// fsyncs the file, then its directory (the rename) and the tenant directory's parent
/// (the tenant directory may be new).
fn fsync_file_and_dirs(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        std::fs::File::open(d)?.sync_all()?;
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(store: &str, att: Option<&str>) -> Config {
        let mut c = Config::demo();
        c.store = store.into();
        c.attachments_store = att.map(str::to_owned);
        c
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::of(&cfg("sqlite:data/confab.db", None)).unwrap(),
            Location::File(PathBuf::from("data/attachments"))
        );
        assert_eq!(
            Location::of(&cfg("memory", None)).unwrap(),
            Location::Memory
        );
        assert_eq!(
            Location::of(&cfg("redis://127.0.0.1/0", None)).unwrap(),
            Location::Unconfigured
        );
        assert!(Location::of(&cfg("redis://127.0.0.1/0", Some("file:x"))).is_err());
        assert_eq!(
            Location::of(&cfg(
                "redis://127.0.0.1/0",
                Some("s3://b?endpoint=http://127.0.0.1:9000&region=us-east-1")
            ))
            .unwrap(),
            Location::S3 {
                bucket: "b".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into())
            }
        );
        assert!(Location::of(&cfg("memory", Some("s3://?region=x"))).is_err());
        assert!(Location::of(&cfg("memory", Some("s3://b?bogus=1"))).is_err());
        assert!(Location::of(&cfg("memory", Some("ftp://x"))).is_err());
    }
}
