//! How fast an exactly-once projection follows concurrent writers.
//!
//! Writers append one event per append to streams of their own for a few
//! seconds while a `ProjectionRunner` (on a store of its own, as in another
//! process) applies every page it reads in one transaction: the read
//! model's rows, the checkpoint and the lease fence together
//! (`Projection::apply_batch` + `PostgresCheckpointStore::save_in`). It
//! prints, each second and at the end, the writers' events/s, the
//! projection's applied events/s and how many committed events it has yet
//! to apply (its lag), then checks that every event was applied exactly
//! once.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo run --release -p eventcore-postgres \
//!     --example exactly_once_follow -- --writers 16 --seconds 10
//! ```
//!
//! It works in a fresh schema `follow_<uuid>`, dropped at the end.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventcore::{
    BoxError, EventFilter, GlobalPosition, Projection, ProjectionRunner, RecordedEvent,
    RunnerOptions, StreamId,
    testing::{bank::AccountEvent, seed},
};
use eventcore_postgres::{PostgresCheckpointStore, PostgresConfigBuilder, PostgresEventStore};
use sqlx::{AssertSqlSafe, PgPool};

/// Totals per stream, one transaction per page of events.
struct Totals {
    pool: PgPool,
    checkpoints: PostgresCheckpointStore,
    upsert: Arc<str>,
    applied: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
}

impl Projection for Totals {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "totals"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix("acct-")
    }

    async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        self.apply_batch(vec![event]).await
    }

    async fn apply_batch(
        &mut self,
        events: Vec<RecordedEvent<AccountEvent>>,
    ) -> Result<(), BoxError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let mut per_stream: HashMap<&str, (i64, i64)> = HashMap::new();
        for e in &events {
            let amount = match e.event {
                AccountEvent::Deposited { amount } => amount as i64,
                _ => 0,
            };
            let entry = per_stream.entry(e.stream_id.as_str()).or_default();
            entry.0 += amount;
            entry.1 += 1;
        }
        let (streams, sums): (Vec<&str>, Vec<(i64, i64)>) = per_stream.into_iter().unzip();
        let (totals, counts): (Vec<i64>, Vec<i64>) = sums.into_iter().unzip();
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(Arc::clone(&self.upsert)))
            .bind(&streams)
            .bind(&totals)
            .bind(&counts)
            .execute(&mut *tx)
            .await?;
        self.checkpoints.save_in(&mut tx, "totals", last).await?;
        tx.commit().await?;
        self.applied
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.last.store(last.get(), Ordering::Relaxed);
        Ok(())
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

async fn store(url: &str, schema: &str, connections: u32) -> PostgresEventStore {
    let config = PostgresConfigBuilder::new()
        .database_url(url)
        .schema(schema)
        .max_connections(connections)
        .build()
        .expect("valid config");
    PostgresEventStore::new(config).await.expect("connect")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let writers = arg("--writers", 16) as usize;
    let seconds = arg("--seconds", 10);
    let batch = arg("--batch", 500) as usize;
    let schema = format!("follow_{}", uuid::Uuid::now_v7().simple());

    let writer_store = store(&url, &schema, writers as u32 + 2).await;
    writer_store.initialize().await?;
    let projection_store = store(&url, &schema, 4).await;
    let pool = projection_store.pool().clone();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.totals (stream_id TEXT PRIMARY KEY, total BIGINT NOT NULL, events BIGINT NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    let upsert: Arc<str> = format!(
        "INSERT INTO {schema}.totals AS t (stream_id, total, events) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
         ON CONFLICT (stream_id) DO UPDATE \
         SET total = t.total + excluded.total, events = t.events + excluded.events"
    )
    .into();
    let checkpoints = PostgresCheckpointStore::new(projection_store.clone());
    let applied = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let projection = Totals {
        pool: pool.clone(),
        checkpoints: checkpoints.clone(),
        upsert,
        applied: Arc::clone(&applied),
        last: Arc::clone(&last),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        ProjectionRunner::new(projection, projection_store, checkpoints)
            .with_options(RunnerOptions {
                batch_size: batch,
                ..RunnerOptions::default()
            })
            .run_continuous(async {
                let _ = stopped.await;
            })
            .await
    });

    let writing = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, writing, written) = (
                writer_store.clone(),
                Arc::clone(&writing),
                Arc::clone(&written),
            );
            tokio::spawn(async move {
                let stream = StreamId::new(format!("acct-{w}")).expect("valid id");
                let mut amount = 0;
                while writing.load(Ordering::Relaxed) {
                    amount += 1;
                    seed(&store, &stream, [AccountEvent::Deposited { amount }])
                        .await
                        .expect("append");
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let lag_sql = format!("SELECT count(*) FROM {schema}.events WHERE global_position > $1");
    let lag = async |after: u64| -> i64 {
        sqlx::query_scalar(AssertSqlSafe(lag_sql.clone()))
            .bind(after as i64)
            .fetch_one(&pool)
            .await
            .expect("count the lag")
    };
    println!("{writers} writers, {seconds} s, projection pages of up to {batch} events");
    let (mut prev_written, mut prev_applied) = (0, 0);
    for second in 1..=seconds {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let (w, a) = (
            written.load(Ordering::Relaxed),
            applied.load(Ordering::Relaxed),
        );
        println!(
            "  {second:>3} s: written {:>6}/s, applied {:>6}/s, lag {:>6} events",
            w - prev_written,
            a - prev_applied,
            lag(last.load(Ordering::Relaxed)).await
        );
        (prev_written, prev_applied) = (w, a);
    }
    writing.store(false, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total_written = written.load(Ordering::Relaxed);
    let applied_by_then = applied.load(Ordering::Relaxed);
    let lag_at_end = lag(last.load(Ordering::Relaxed)).await;
    let drain_started = Instant::now();
    while applied.load(Ordering::Relaxed) < total_written {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_in = drain_started.elapsed();
    stop.send(()).map_err(|()| "runner gone")?;
    let summary = runner.await??;

    let (events_in_model, rows): (Option<i64>, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT sum(events)::bigint, count(*) FROM {schema}.totals"
    )))
    .fetch_one(&pool)
    .await?;
    println!("over {elapsed:.1} s:");
    println!(
        "  writers:    {total_written} events, {:.0} events/s",
        total_written as f64 / elapsed
    );
    println!(
        "  projection: {applied_by_then} events applied while they wrote, {:.0} events/s",
        applied_by_then as f64 / elapsed
    );
    println!(
        "  lag when the writers stopped: {lag_at_end} events, applied {:.0} ms later",
        drained_in.as_secs_f64() * 1e3
    );
    println!(
        "  read model: {} events in {rows} rows; checkpoint {:?}",
        events_in_model.unwrap_or(0),
        summary.checkpoint.map(GlobalPosition::get)
    );
    let exact = events_in_model == Some(total_written as i64);
    println!(
        "  {}",
        if exact {
            "ok: every event applied exactly once"
        } else {
            "MISMATCH: the read model does not hold every event exactly once"
        }
    );
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(writer_store.pool())
        .await?;
    if exact {
        Ok(())
    } else {
        Err("mismatch".into())
    }
}
