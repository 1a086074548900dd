//! The Redis backend (scale-out): not built yet.

use crate::{Backend, Result, Retention, StoreError};

/// Opens the Redis backend.
pub async fn open(_url: &str, _retention: Retention) -> Result<Backend> {
    Err(StoreError::Unavailable("the Redis backend is not available in this build".into()))
}
