//! Faults: backends terminated in the middle of appends and reads.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use eventcore::testing::contract::{TransferLoad, run_transfer_load};
use eventcore_test_support::{config, store_with, test_database_url};

/// Terminates this store's busy backends every few milliseconds while
/// transfers run. Every terminated append either committed whole or left
/// nothing, and the executor recovers: the load's invariants (money
/// conserved, two events per committed transfer, no duplicate, no skip)
/// all hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_backends_leave_nothing_half_written() {
    let app = format!("eventcore-fault-{}", uuid::Uuid::now_v7().simple());
    let store = store_with(
        config()
            .application_name(app.clone())
            .max_connections(20)
            .build()
            .unwrap(),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, killed) = (stop.clone(), killed.clone());
        let admin = sqlx::PgPool::connect(test_database_url()).await.unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = $1 AND state = 'active'",
                )
                .bind(&app)
                .fetch_one(&admin)
                .await
                .unwrap();
                killed.fetch_add(n as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let report = run_transfer_load(
        &store,
        TransferLoad {
            tasks: 16,
            transfers_per_task: 40,
            accounts: 6,
            initial_balance: 5_000,
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    killer.await.unwrap();
    let killed = killed.load(Ordering::Relaxed);
    assert!(
        killed >= 5,
        "the test must actually terminate backends (killed {killed})"
    );
    assert!(report.succeeded > 0, "{report:?}");
}
