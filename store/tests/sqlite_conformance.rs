//! The conformance suite on the embedded backend: in memory and on a file.

use std::sync::Arc;

use confab_store::conformance::{run_all, Factory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    let factory: Factory = Arc::new(|retention| {
        Box::pin(async move { confab_store::open("memory", retention).await.unwrap() })
    });
    run_all(factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend_conforms() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let factory: Factory = Arc::new(move |retention| {
        let path = dir
            .path()
            .join(format!("db-{}.sqlite", rand::random::<u64>()));
        Box::pin(async move {
            confab_store::open(&format!("sqlite:{}", path.display()), retention)
                .await
                .unwrap()
        })
    });
    run_all(factory).await;
}
