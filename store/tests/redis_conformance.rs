//! The conformance suite and the fault tests on the Redis backend, each against its own
//! `redis-server` (skipped when none is installed, unless `CONFAB_REQUIRE_REDIS` is set).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_store::conformance::{run_all, Factory};
use confab_store::Retention;
use confab_store::redis::testing::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_conforms() {
    let Some(redis) = RedisServer::start_or_skip("redis_backend_conforms").await else { return };
    let redis = Arc::new(redis);
    // A database per backend: each check starts from an empty store, as with SQLite.
    let next_db = Arc::new(AtomicU32::new(1));
    let factory: Factory = Arc::new(move |retention: Retention| {
        let url = redis.url_db(next_db.fetch_add(1, Ordering::SeqCst));
        Box::pin(async move { confab_store::open(&url, retention).await.unwrap() })
    });
    run_all(factory).await;
}

#[allow(dead_code)]
const SLOW: Duration = Duration::from_secs(3);
