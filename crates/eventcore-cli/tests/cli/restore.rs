//! Backup and restore for real, on throwaway clusters of `scripts/dev-db`
//! (each in a state dir of its own under `CARGO_TARGET_TMPDIR`, on a port
//! of its own, destroyed when its test ends, passing or not): `pg_dump` /
//! `pg_restore` of several stores in two databases, `eventcore
//! restore-check`, `pg_resetwal`. The shared server (`DATABASE_URL`) is
//! not touched.
//!
//! The source cluster, built once for the tests that restore it, holds
//! `app.eventcore` (11,000 events, half-way through which the projection
//! `applied` keeps its read model and checkpoint), `app.audit` (100) and,
//! after the source's epoch was raised to 5, `billing.eventcore` (10,000,
//! with its own `applied`). So the epoch to restore with (6) is set by a
//! store outside the database the check connects to.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use eventcore::{
    AppendRequest, EventId, EventMetadata, EventStore, ExpectedVersion, GlobalPosition, NewEvent,
    ProjectionRunner, RunSummary, RunnerOptions, StreamId, StreamVersion,
    testing::bank::AccountEvent,
};
use eventcore_postgres::{
    PostgresCheckpointStore, PostgresConfigBuilder, PostgresError, PostgresEventStore,
};
use eventcore_test_support::{AppliedRecorder, DEV_DB, applications};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

/// A cluster of `scripts/dev-db` of this test's own.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn start(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("restore-{name}-{}", std::process::id()));
        // A port the kernel just handed out is free, and no other cluster
        // of this run asks for it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let cluster = Cluster { dir, port };
        cluster.dev_db(&["start"], None);
        cluster
    }

    /// Runs `scripts/dev-db args` for this cluster (never `DATABASE_URL`'s
    /// server), with `stdin` as its input; its stdout.
    fn dev_db(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let mut cmd = Command::new(DEV_DB);
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("EVENTCORE_DEV_DB_DIR", &self.dir)
            .env("EVENTCORE_DEV_DB_PORT", self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = match stdin {
            None => cmd.stdin(Stdio::null()).output(),
            Some(bytes) => {
                let mut child = cmd.stdin(Stdio::piped()).spawn().expect("run dev-db");
                let mut input = child.stdin.take().expect("stdin");
                let bytes = bytes.to_vec();
                let writer = std::thread::spawn(move || {
                    std::io::Write::write_all(&mut input, &bytes).expect("write stdin")
                });
                let out = child.wait_with_output();
                writer.join().expect("writer");
                out
            }
        }
        .expect("run dev-db");
        assert!(
            out.status.success(),
            "dev-db {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the cluster cleanly, runs `pg_resetwal args` on it, starts it.
    fn reset_wal(&self, args: &[&str]) {
        self.dev_db(&["stop"], None);
        let mut all = vec!["resetwal"];
        all.extend_from_slice(args);
        self.dev_db(&all, None);
        self.dev_db(&["start"], None);
    }

    /// `pg_dump -Fc` of `database`.
    fn dump(&self, database: &str) -> Vec<u8> {
        self.dev_db(&["tool", "pg_dump", "-Fc", "-d", &self.url(database)], None)
    }

    /// Creates `database` and `pg_restore`s `dump` into it.
    async fn restore(&self, database: &str, dump: &[u8]) {
        let admin = PgPool::connect(&self.url("postgres")).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = self.url(database);
        self.dev_db(
            &["tool", "pg_restore", "--exit-on-error", "-d", &url],
            Some(dump),
        );
    }

    async fn store(&self, database: &str, schema: &str) -> PostgresEventStore {
        self.store_with(database, schema, 4).await
    }

    async fn store_with(
        &self,
        database: &str,
        schema: &str,
        connections: u32,
    ) -> PostgresEventStore {
        let config = PostgresConfigBuilder::new()
            .database_url(self.url(database))
            .schema(schema)
            .max_connections(connections)
            .min_connections(0)
            .build()
            .expect("valid config");
        PostgresEventStore::new(config).await.expect("connect")
    }

    /// `eventcore --json args` against the store `eventcore` of `database`.
    fn eventcore(&self, database: &str, args: &[&str]) -> (Option<i32>, Value, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_eventcore"))
            .env("DATABASE_URL", self.url(database))
            .env_remove("EVENTCORE_SCHEMA")
            .env_remove("RUST_LOG")
            .arg("--json")
            .args(args)
            .output()
            .expect("run eventcore");
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let json = stdout
            .lines()
            .next()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .unwrap_or(Value::Null);
        let stderr = String::from_utf8(out.stderr).expect("utf-8");
        (out.status.code(), json, stderr)
    }

    /// `eventcore restore-check`: its exit status and report.
    fn restore_check(&self) -> (Option<i32>, Value) {
        let (code, json, stderr) = self.eventcore("postgres", &["restore-check"]);
        assert!(json.is_object(), "no report: {stderr}");
        (code, json)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(DEV_DB)
            .arg("destroy")
            .env_remove("DATABASE_URL")
            .env("EVENTCORE_DEV_DB_DIR", &self.dir)
            .env("EVENTCORE_DEV_DB_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs the exactly-once [`AppliedRecorder`] on `store` until it has caught up.
async fn project(store: &PostgresEventStore) -> RunSummary {
    let projection = AppliedRecorder::<AccountEvent>::new(store).await;
    let checkpoints = projection.checkpoints();
    ProjectionRunner::new(projection, store.clone(), checkpoints)
        .with_options(RunnerOptions {
            poll_interval: Duration::from_millis(50),
            catch_up_timeout: Some(Duration::from_secs(20)),
            ..RunnerOptions::default()
        })
        .run_until_caught_up()
        .await
        .expect("the projection catches up")
}

fn stream(i: usize) -> StreamId {
    StreamId::new(format!("acct-{}", i % 50)).unwrap()
}

/// `appends` appends of `per_append` deposits each, then `transfers`
/// two-stream transfers (two events each, through `append_to_streams`).
async fn write(store: &PostgresEventStore, appends: usize, per_append: usize, transfers: usize) {
    for i in 0..appends {
        let events = (0..per_append)
            .map(|k| {
                let e = AccountEvent::Deposited { amount: k as u64 };
                NewEvent::new(&e, EventMetadata::new()).unwrap()
            })
            .collect();
        store
            .append(AppendRequest::new().append(stream(i), ExpectedVersion::Any, events))
            .await
            .expect("append");
    }
    for i in 0..transfers {
        let (from, to) = (stream(i), stream(i + 1));
        let debit = AccountEvent::Debited {
            amount: 1,
            to: to.to_string(),
        };
        let credit = AccountEvent::Credited {
            amount: 1,
            from: from.to_string(),
        };
        let request = AppendRequest::new()
            .append(
                from,
                ExpectedVersion::Any,
                vec![NewEvent::new(&debit, EventMetadata::new()).unwrap()],
            )
            .append(
                to,
                ExpectedVersion::Any,
                vec![NewEvent::new(&credit, EventMetadata::new()).unwrap()],
            );
        store.append(request).await.expect("transfer");
    }
}

/// Every event `read_all` returns, in order: position and id.
async fn read_everything(store: &PostgresEventStore) -> Vec<(GlobalPosition, EventId)> {
    let mut all = Vec::new();
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all(after, 1_000).await.expect("read_all");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page.iter().map(|e| (e.position, e.event_id)));
    }
}

/// One store of the source, as dumped.
struct Dumped {
    database: &'static str,
    schema: &'static str,
    /// Its events in global order.
    events: Vec<(GlobalPosition, EventId)>,
    /// The checkpoint of `applied`, if it ran there.
    checkpoint: Option<GlobalPosition>,
}

struct Source {
    dumps: Vec<(&'static str, Vec<u8>)>,
    stores: Vec<Dumped>,
    figures: String,
}

impl Source {
    fn store(&self, database: &str, schema: &str) -> &Dumped {
        self.stores
            .iter()
            .find(|s| s.database == database && s.schema == schema)
            .expect("a dumped store")
    }

    fn events(&self) -> usize {
        self.stores.iter().map(|s| s.events.len()).sum()
    }

    async fn restore_into(&self, cluster: &Cluster) -> Duration {
        let started = Instant::now();
        for (database, dump) in &self.dumps {
            cluster.restore(database, dump).await;
        }
        started.elapsed()
    }
}

/// The source cluster's stores, dumped (built by the first test to ask;
/// the source cluster is gone once they are).
fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| runtime().block_on(build_source()))
}

async fn build_source() -> Source {
    let started = Instant::now();
    let cluster = Cluster::start("source");
    let admin = PgPool::connect(&cluster.url("postgres")).await.unwrap();
    for db in ["app", "billing"] {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;

    let app = cluster.store("app", "eventcore").await;
    app.initialize().await.unwrap();
    write(&app, 50, 100, 250).await;
    project(&app).await;
    // Events after the checkpoint: the restored projection has work left.
    write(&app, 50, 100, 250).await;
    let audit = cluster.store("app", "audit").await;
    audit.initialize().await.unwrap();
    write(&audit, 10, 10, 0).await;
    for store in [app, audit] {
        store.pool().close().await;
    }

    cluster.reset_wal(&["-e", "5"]);
    let billing = cluster.store("billing", "eventcore").await;
    billing.initialize().await.unwrap();
    write(&billing, 100, 100, 0).await;
    project(&billing).await;
    billing.pool().close().await;
    let written = started.elapsed();

    let mut stores = Vec::new();
    for (database, schema) in [
        ("app", "eventcore"),
        ("app", "audit"),
        ("billing", "eventcore"),
    ] {
        let store = cluster.store(database, schema).await;
        let checkpoints = PostgresCheckpointStore::new(store.clone());
        stores.push(Dumped {
            database,
            schema,
            events: read_everything(&store).await,
            checkpoint: eventcore::CheckpointStore::load(
                &checkpoints,
                AppliedRecorder::<AccountEvent>::NAME,
            )
            .await
            .unwrap(),
        });
        store.pool().close().await;
    }
    let dump_started = Instant::now();
    let dumps: Vec<_> = ["app", "billing"]
        .into_iter()
        .map(|db| (db, cluster.dump(db)))
        .collect();
    let dumped = dump_started.elapsed();
    let figures = format!(
        "source: {} events in 3 stores of 2 databases written in {:.1?} (cluster start, \
         epoch raised to 5 half-way, projections included); pg_dump -Fc of both in {dumped:.1?} ({} KiB)",
        stores.iter().map(|s| s.events.len()).sum::<usize>(),
        written,
        dumps.iter().map(|(_, d)| d.len()).sum::<usize>() / 1024,
    );
    drop(cluster);
    Source {
        dumps,
        stores,
        figures,
    }
}

/// The typed source of a refused write.
fn refusal(e: &eventcore::Error) -> &PostgresError {
    match e {
        eventcore::Error::Backend { source, .. } => source
            .downcast_ref::<PostgresError>()
            .unwrap_or_else(|| panic!("not a PostgresError: {e}")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The restore procedure of docs/operations.md, end to end: restore both
/// databases into a fresh cluster, `eventcore restore-check` (exit 1: the
/// epoch must go to 6), `pg_resetwal -e 6`, check again (exit 0), then
/// write more. Every restored event reads back in its old place, every new
/// one after them, and the restored projections resume and apply each new
/// event exactly once (their read models, not deduplicated, hold one row
/// per event).
#[test]
fn restore_check_then_pg_resetwal_keeps_the_global_order() {
    let source = source();
    let cluster = Cluster::start("restored");
    runtime().block_on(async {
        let restored_in = source.restore_into(&cluster).await;

        let check_started = Instant::now();
        let (code, report) = cluster.restore_check();
        let checked_in = check_started.elapsed();
        assert_eq!(code, Some(1), "{report}");
        assert_eq!(report["verdict"], "advance_epoch", "{report}");
        assert_eq!(report["epoch"], 6, "{report}");
        assert_eq!(report["command"], "pg_resetwal -e 6 -D <data directory>");
        let found: Vec<String> = report["stores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{}.{}", s["database"].as_str().unwrap(), s["schema"].as_str().unwrap()))
            .collect();
        assert_eq!(found, ["app.audit", "app.eventcore", "billing.eventcore"]);

        let reset_started = Instant::now();
        cluster.reset_wal(&["-e", "6"]);
        let reset_in = reset_started.elapsed();
        let (code, report) = cluster.restore_check();
        assert_eq!((code, &report["verdict"]), (Some(0), &Value::from("ready")), "{report}");

        let mut new_events = 0;
        let write_started = Instant::now();
        let mut resumed = Vec::new();
        for (database, schema) in [("app", "eventcore"), ("billing", "eventcore"), ("app", "audit")] {
            let old = source.store(database, schema);
            let store = cluster.store(database, schema).await;
            store.initialize().await.expect("initialize after the procedure");
            let health = store.health_check().await.unwrap();
            assert!(health.is_healthy, "{:?}", health.problems);

            let before = store.stream_version(&stream(0)).await.unwrap();
            write(&store, 50, 10, 250).await;
            new_events += 1_000;
            let after = store.stream_version(&stream(0)).await.unwrap();
            let versions: Vec<u64> = store
                .read_stream(&stream(0), StreamVersion::new(1), 100_000)
                .await
                .unwrap()
                .iter()
                .map(|e| e.stream_version.get())
                .collect();
            assert_eq!(versions, (1..=after.get()).collect::<Vec<_>>(), "versions go on");
            assert!(after > before);

            let all = read_everything(&store).await;
            assert_eq!(all.len(), old.events.len() + 1_000, "{database}.{schema}: every event visible");
            assert_eq!(all[..old.events.len()], old.events[..], "restored events in their places");
            assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "strictly in order");
            let newest_old = old.events.last().unwrap().0;
            assert!(all[old.events.len()..].iter().all(|(p, _)| *p > newest_old), "new after old");

            if let Some(checkpoint) = old.checkpoint {
                let backlog = old.events.iter().filter(|(p, _)| *p > checkpoint).count();
                let (rows_before, _) = applications(&store).await;
                let summary = project(&store).await;
                assert_eq!(summary.applied as usize, backlog + 1_000, "{database}.{schema}");
                assert_eq!(summary.checkpoint, all.last().map(|(p, _)| *p));
                let (rows, distinct) = applications(&store).await;
                assert_eq!(rows, distinct, "no event applied twice");
                assert_eq!(rows as usize, all.len(), "every event applied once");
                resumed.push(format!(
                    "{database}.{schema}: {} restored rows, resumed from {checkpoint}, applied {} ({backlog} restored after the checkpoint + 1,000 new)",
                    rows_before, summary.applied
                ));
            }
            store.pool().close().await;
        }
        eprintln!(
            "restore figures: {}\n  restored {} events into a fresh cluster in {restored_in:.1?}; \
             restore-check in {checked_in:.1?}; stop + pg_resetwal -e 6 + start in {reset_in:.1?}; \
             {new_events} new events written, read back and projected in {:.1?}\n  {}",
            source.figures,
            source.events(),
            write_started.elapsed(),
            resumed.join("\n  ")
        );
    });
}

/// Skipping the procedure: the restored cluster's counter is behind, and
/// `initialize()`, `health_check()`, the first append, `eventcore init`
/// and `eventcore restore-check` all say so; nothing is written.
#[test]
fn skipping_the_procedure_is_refused() {
    let source = source();
    let cluster = Cluster::start("unadvanced");
    runtime().block_on(async {
        source.restore_into(&cluster).await;
        let (code, report) = cluster.restore_check();
        assert_eq!(code, Some(1), "{report}");
        assert_eq!(report["epoch"], 6, "{report}");

        let old = source.store("billing", "eventcore");
        let store = cluster.store("billing", "eventcore").await;
        let behind = |e: &PostgresError| {
            assert!(
                matches!(e, PostgresError::TransactionCounterBehind { newest_position, .. }
                    if *newest_position == old.events.last().unwrap().0),
                "{e:?}"
            );
            assert!(e.to_string().contains("restore-check"), "{e}");
        };
        behind(&store.initialize().await.expect_err("initialize refuses"));
        let health = store.health_check().await.unwrap();
        assert!(!health.is_healthy);
        assert!(health.transaction_counter.unwrap().is_behind());
        let err = store
            .append(AppendRequest::new().append(
                stream(0),
                ExpectedVersion::Any,
                vec![NewEvent::raw("Deposited", serde_json::json!({"amount": 1}))],
            ))
            .await
            .expect_err("the first append refuses");
        assert!(!err.is_transient() && !err.may_have_committed(), "{err}");
        behind(refusal(&err));
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM eventcore.events")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(count as usize, old.events.len(), "nothing written");
        store.pool().close().await;

        let (code, _, stderr) = cluster.eventcore("billing", &["init"]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("eventcore restore-check"), "{stderr}");
        let (code, health, stderr) = cluster.eventcore("billing", &["health"]);
        assert_eq!(code, Some(1), "{health}");
        assert_eq!(health["transaction_counter"]["behind"], true, "{health}");
        assert!(
            stderr.contains("hint: stop all writers and run `eventcore restore-check`"),
            "{stderr}"
        );
    });
}

/// Past the last transaction id a position can encode (epoch 2048), the
/// database refuses every kind of append with SQLSTATE EC003, mapped to
/// `PositionsExhausted` (the store's write check had passed before, so
/// this is the SQL guard); old events stay readable; `initialize()`,
/// health and `restore-check` say so. Setting the epoch back to the
/// lowest one above the stored positions (the mistaken-`pg_resetwal`
/// recovery of docs/operations.md) makes the store write again, in order.
#[test]
fn positions_never_wrap_past_the_encodable_range() {
    let cluster = Cluster::start("range-end");
    runtime().block_on(async {
        // One connection: the read after the restart replaces it, so the
        // appends below get the database's answer, not a lost connection's
        // unknown outcome.
        let store = cluster.store_with("postgres", "eventcore", 1).await;
        store.initialize().await.unwrap();
        write(&store, 3, 2, 2).await;
        let old = read_everything(&store).await;
        assert_eq!(old.len(), 10);

        cluster.reset_wal(&["-e", "2048"]);
        assert_eq!(read_everything(&store).await, old, "old events stay readable");
        let deposit = || NewEvent::raw("Deposited", serde_json::json!({"amount": 1}));
        for (what, request) in [
            ("one event", AppendRequest::new().append(stream(0), ExpectedVersion::Any, vec![deposit()])),
            (
                "several events",
                AppendRequest::new().append(stream(0), ExpectedVersion::Any, vec![deposit(), deposit()]),
            ),
            (
                "two streams",
                AppendRequest::new()
                    .append(stream(0), ExpectedVersion::Any, vec![deposit()])
                    .append(stream(1), ExpectedVersion::Any, vec![deposit()]),
            ),
        ] {
            let err = store.append(request).await.expect_err(what);
            assert!(!err.may_have_committed(), "{what}: {err}");
            assert!(
                matches!(refusal(&err), PostgresError::PositionsExhausted { next_transaction_id: None }),
                "{what}: {err:?}"
            );
        }
        assert_eq!(read_everything(&store).await, old, "nothing written");
        store.pool().close().await;

        let store = cluster.store("postgres", "eventcore").await;
        let err = store.initialize().await.expect_err("initialize refuses");
        assert!(
            matches!(err, PostgresError::PositionsExhausted { next_transaction_id: Some(n) } if n >> 32 == 2048),
            "{err:?}"
        );
        let health = store.health_check().await.unwrap();
        assert!(!health.is_healthy);
        assert!(health.transaction_counter.unwrap().is_exhausted());
        assert_eq!(health.read_horizon, Some(GlobalPosition::new(i64::MAX as u64)));
        store.pool().close().await;
        let (code, report) = cluster.restore_check();
        assert_eq!(code, Some(1), "{report}");
        assert_eq!(report["verdict"], "exhausted", "{report}");
        assert_eq!(report["lowest_safe_epoch"], 1, "{report}");

        cluster.reset_wal(&["-e", "1"]);
        let store = cluster.store("postgres", "eventcore").await;
        store.initialize().await.expect("inside the range again");
        write(&store, 1, 1, 0).await;
        let all = read_everything(&store).await;
        assert_eq!(all[..old.len()], old[..]);
        assert_eq!(all.len(), old.len() + 1);
        assert!(all[old.len()].0 > old.last().unwrap().0);
        store.pool().close().await;
    });
}
