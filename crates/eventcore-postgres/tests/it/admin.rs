//! The operator functions: projections' state and actions, export and
//! import, verify, and the metrics recorded through the facade.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use eventcore::{
    BoxError, CheckpointStore, CommandExecutor, Error, ErrorStrategy, EventMetadata, EventStore,
    GlobalPosition, Projection, ProjectionRunner, RecordedEvent, StreamId,
    testing::{
        bank::{AccountEvent, Transfer},
        seed,
    },
};
use eventcore_postgres::{
    CheckStatus, ExportSelection, PostgresCheckpointStore, PostgresError, PostgresEventStore,
    ProjectionRequest,
};
use eventcore_test_support::fresh_store;
use sqlx::AssertSqlSafe;

/// Counts what it applies; fails on deposits of `poison` cents.
struct Counter {
    applied: Arc<AtomicU32>,
    resets: Arc<AtomicU32>,
    poison: Option<u64>,
}

impl Projection for Counter {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "counter"
    }

    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::Stop
    }

    async fn apply(&mut self, e: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        if matches!(e.event, AccountEvent::Deposited { amount } if Some(amount) == self.poison) {
            return Err("poison deposit".into());
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.applied.store(0, Ordering::SeqCst);
        Ok(())
    }
}

fn counter(poison: Option<u64>) -> (Counter, Arc<AtomicU32>, Arc<AtomicU32>) {
    let applied = Arc::new(AtomicU32::new(0));
    let resets = Arc::new(AtomicU32::new(0));
    let p = Counter {
        applied: applied.clone(),
        resets: resets.clone(),
        poison,
    };
    (p, applied, resets)
}

fn request() -> ProjectionRequest {
    ProjectionRequest::new("tester").reason("test")
}

#[tokio::test]
async fn projections_show_lag_runner_and_errors_and_operators_act_on_them() {
    let store = fresh_store().await;
    let account = StreamId::new("account-1").unwrap();
    seed(
        &store,
        &account,
        [5, 13, 7].map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
    let checkpoints = PostgresCheckpointStore::new(store.clone());

    // A runner stops on the poison event: its error is recorded.
    let (p, applied, _) = counter(Some(13));
    let mut runner = ProjectionRunner::new(p, store.clone(), checkpoints.clone());
    let stopped = runner.run_until_caught_up().await.unwrap_err();
    let poison = stopped.position().expect("the poison event's position");
    assert_eq!(applied.load(Ordering::SeqCst), 1);
    let status = store.projection("counter").await.unwrap().unwrap();
    assert_eq!(status.lag_events, 2, "{status:?}");
    assert!(status.lag_seconds >= 0.0);
    assert!(status.runner.is_none());
    let error = status.last_error.expect("last error recorded");
    assert_eq!(error.position, Some(poison));
    assert!(
        error.message.contains("poison deposit"),
        "{}",
        error.message
    );
    assert!(!error.passed);

    // While a runner holds the lease, operators are refused...
    let lease = checkpoints.try_acquire("counter").await.unwrap().unwrap();
    let running = store.projection("counter").await.unwrap().unwrap();
    let runner_info = running.runner.expect("the lease holder is shown");
    assert!(runner_info.pid > 0);
    let refused = store
        .skip_projection_event("counter", poison, &request())
        .await;
    assert!(
        matches!(refused, Err(PostgresError::ProjectionBusy { .. })),
        "{refused:?}"
    );
    // ...unless forced, which fences the runner out.
    let skipped = store
        .skip_projection_event("counter", poison, &request().force(true))
        .await
        .unwrap();
    assert!(skipped.forced);
    assert!(skipped.displaced_runner.is_some());
    assert_eq!(skipped.event_position, Some(poison));
    assert!(matches!(
        checkpoints.save("counter", poison).await,
        Err(Error::LeaseLost { .. })
    ));
    drop(lease);
    // The lease connection closes in the background: wait until the
    // server no longer shows a runner before acting as an operator again.
    let released = std::time::Instant::now();
    while store
        .projection("counter")
        .await
        .unwrap()
        .unwrap()
        .runner
        .is_some()
    {
        assert!(
            released.elapsed() < std::time::Duration::from_secs(10),
            "the dropped lease was not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let status = store.projection("counter").await.unwrap().unwrap();
    assert_eq!(status.checkpoint, Some(poison));
    assert_eq!(status.skips, 1);
    assert!(status.last_error.unwrap().passed);

    // A rebuild request: the next runner resets the read model and
    // replays every event (the poison one too: the projection was fixed).
    store
        .request_projection_rebuild("counter", &request())
        .await
        .unwrap();
    assert!(
        store
            .projection("counter")
            .await
            .unwrap()
            .unwrap()
            .rebuild_requested_at
            .is_some()
    );
    let (p, applied, resets) = counter(None);
    let mut runner = ProjectionRunner::new(p, store.clone(), checkpoints.clone());
    runner.run_until_caught_up().await.unwrap();
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    assert_eq!(applied.load(Ordering::SeqCst), 3);
    let status = store.projection("counter").await.unwrap().unwrap();
    assert!(status.rebuild_requested_at.is_none());
    assert_eq!(status.lag_events, 0);

    // A reset forgets the checkpoint only.
    store.reset_projection("counter", &request()).await.unwrap();
    assert_eq!(
        store
            .projection("counter")
            .await
            .unwrap()
            .unwrap()
            .checkpoint,
        None
    );
    let history = store
        .projection_operations(Some("counter"), 10)
        .await
        .unwrap();
    let actions: Vec<&str> = history.iter().map(|o| o.action.as_str()).collect();
    assert_eq!(actions, ["reset", "rebuild", "skip"]);
    assert!(history[0].performed_by.starts_with("tester as "));

    let unknown = store.reset_projection("nope", &request()).await;
    assert!(
        matches!(&unknown, Err(PostgresError::UnknownProjection { known, .. }) if known == &["counter"]),
        "{unknown:?}"
    );
}

/// Bank-like history: deposits, then transfers appending to two streams
/// in one transaction, with custom metadata.
async fn bank_history(store: &PostgresEventStore) {
    let accounts: Vec<StreamId> = (1..=4)
        .map(|i| StreamId::new(format!("account-{i}")).unwrap())
        .collect();
    for a in &accounts {
        seed(store, a, [AccountEvent::Deposited { amount: 100 }])
            .await
            .unwrap();
    }
    let executor = CommandExecutor::new(store.clone());
    for i in 0..12 {
        let mut metadata = EventMetadata::new();
        metadata.custom.insert(
            "note".into(),
            serde_json::json!({"i": i, "text": "ünïcode \"q\""}),
        );
        executor
            .execute_with(
                Transfer {
                    from: accounts[i % 4].clone(),
                    to: accounts[(i + 1) % 4].clone(),
                    amount: 3,
                },
                metadata,
            )
            .await
            .unwrap();
    }
    seed(
        store,
        &StreamId::new("audit-1").unwrap(),
        [AccountEvent::Deposited { amount: 1 }],
    )
    .await
    .unwrap();
}

async fn export_all(store: &PostgresEventStore, selection: &ExportSelection) -> Vec<u8> {
    let mut out = Vec::new();
    store.export(selection, &mut out, |_| {}).await.unwrap();
    out
}

#[tokio::test]
async fn export_then_import_is_idempotent_and_exports_the_same_bytes() {
    let source = fresh_store().await;
    bank_history(&source).await;
    let exported = export_all(&source, &ExportSelection::All).await;
    let lines = exported
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines, 4 + 24 + 1);

    let target = fresh_store().await;
    let first = target.import(&mut &exported[..], |_| {}).await.unwrap();
    assert_eq!((first.events, first.imported), (29, 29));
    let again = target.import(&mut &exported[..], |_| {}).await.unwrap();
    assert_eq!((again.imported, again.already_present), (0, 29));
    assert_eq!(export_all(&target, &ExportSelection::All).await, exported);

    // Relative global order and versions are kept.
    let src = source.read_all(GlobalPosition::START, 100).await.unwrap();
    let dst = target.read_all(GlobalPosition::START, 100).await.unwrap();
    let key = |e: &eventcore::StoredEvent| (e.event_id, e.stream_id.clone(), e.stream_version);
    assert_eq!(
        src.iter().map(key).collect::<Vec<_>>(),
        dst.iter().map(key).collect::<Vec<_>>()
    );

    // A category, and a half-finished import completed by a re-run.
    let category = export_all(&source, &ExportSelection::Category("audit-".into())).await;
    assert_eq!(
        category
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        1
    );
    let partial = fresh_store().await;
    let half: Vec<u8> = exported
        .split_inclusive(|b| *b == b'\n')
        .take(10)
        .flatten()
        .copied()
        .collect();
    partial.import(&mut &half[..], |_| {}).await.unwrap();
    let rest = partial.import(&mut &exported[..], |_| {}).await.unwrap();
    assert_eq!((rest.imported, rest.already_present), (19, 10));
    assert_eq!(export_all(&partial, &ExportSelection::All).await, exported);

    // A target with other events on a stream: refused, naming the line.
    let clash = fresh_store().await;
    seed(
        &clash,
        &StreamId::new("account-2").unwrap(),
        [AccountEvent::Deposited { amount: 9 }],
    )
    .await
    .unwrap();
    let refused = clash.import(&mut &exported[..], |_| {}).await.unwrap_err();
    assert!(
        matches!(&refused, PostgresError::Import { line: 2, reason } if reason.contains("account-2")),
        "{refused}"
    );
    let garbage = clash.import(&mut &b"{\"event_id\": 1}\n"[..], |_| {}).await;
    assert!(matches!(
        garbage,
        Err(PostgresError::Import { line: 1, .. })
    ));
}

#[tokio::test]
async fn verify_passes_on_a_sound_store_and_names_what_is_broken() {
    let store = fresh_store().await;
    bank_history(&store).await;
    let report = store.verify().await.unwrap();
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.events, Some(29));
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "migration ledger",
            "tables, indexes, functions, triggers",
            "constraints",
            "append-only trigger",
            "stream versions",
            "unique event ids"
        ]
    );
    assert!(report.checks[3].detail.contains("EC001"), "{report:#?}");

    // A version gap written behind the store's back (inserts are allowed).
    let schema = &store.config().schema;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".events (global_position, event_id, stream_id, stream_version, \
           event_type, schema_version, event_data, metadata, occurred_at, correlation_id) \
         VALUES (1, '01900000-0000-7000-8000-000000000001', 'account-1', 99, 'Deposited', 1, '{{}}', '{{}}', now(), gen_random_uuid())"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE \"{schema}\".events DISABLE TRIGGER events_append_only"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let report = store.verify().await.unwrap();
    assert!(!report.passed());
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.name)
        .collect();
    assert_eq!(
        failed,
        [
            "tables, indexes, functions, triggers",
            "append-only trigger"
        ],
        "{report:#?}"
    );
    // Damage skips the scans; with the trigger back, the gap shows.
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE \"{schema}\".events ENABLE TRIGGER events_append_only"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let report = store.verify().await.unwrap();
    let versions = &report.checks[4];
    assert_eq!(versions.status, CheckStatus::Fail, "{report:#?}");
    assert!(
        versions.detail.contains("'account-1'"),
        "{}",
        versions.detail
    );
}

#[tokio::test]
async fn store_calls_and_runners_record_metrics_through_the_facade() {
    use metrics_util::debugging::DebuggingRecorder;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Global, for the runner's tasks: this binary's other tests record
    // into it too, which changes nothing here.
    recorder
        .install()
        .expect("the only recorder of this binary");

    let store = fresh_store().await;
    let account = StreamId::new("account-m").unwrap();
    seed(&store, &account, [AccountEvent::Deposited { amount: 1 }])
        .await
        .unwrap();
    let stale = eventcore::AppendRequest::new().append(
        account.clone(),
        eventcore::ExpectedVersion::NoStream,
        vec![
            eventcore::NewEvent::new(&AccountEvent::Deposited { amount: 2 }, EventMetadata::new())
                .unwrap(),
        ],
    );
    assert!(matches!(store.append(stale).await, Err(Error::Conflict(_))));
    store.get_pool_metrics();
    let (p, _, _) = counter(None);
    ProjectionRunner::new(
        p,
        store.clone(),
        PostgresCheckpointStore::new(store.clone()),
    )
    .run_until_caught_up()
    .await
    .unwrap();

    let names: std::collections::BTreeSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, ..)| key.key().name().to_owned())
        .collect();
    for expected in [
        "eventcore_appends_total",
        "eventcore_events_appended_total",
        "eventcore_append_conflicts_total",
        "eventcore_store_calls_total",
        "eventcore_store_call_duration_seconds",
        "eventcore_events_read_total",
        "eventcore_pool_acquire_duration_seconds",
        "eventcore_pool_connections",
        "eventcore_subscription_lag_seconds",
        "eventcore_projection_events_total",
        "eventcore_projection_apply_duration_seconds",
        "eventcore_projection_lag_seconds",
        "eventcore_projection_checkpoint_position",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
}
