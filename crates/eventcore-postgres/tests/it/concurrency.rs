//! Many writers and a live reader on a real PostgreSQL.

use eventcore::testing::contract::{TransferLoad, run_transfer_load};
use eventcore_test_support::{config, store_with};

/// 32 writers, 2,560 transfer attempts over 12 accounts, two of them hot,
/// with a live `$all` reader: money conserved, versions contiguous, no
/// event lost, duplicated or skipped (checked inside `run_transfer_load`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_writers_with_hot_accounts() {
    let store = store_with(config().max_connections(40).build().unwrap()).await;
    let report = run_transfer_load(
        &store,
        TransferLoad {
            tasks: 32,
            transfers_per_task: 80,
            accounts: 12,
            initial_balance: 10_000,
        },
    )
    .await;
    assert!(
        report.succeeded >= 1_000,
        "too few transfers committed: {report:?}"
    );
    assert!(
        report.retries > 0,
        "hot accounts must have caused conflicts: {report:?}"
    );
}
