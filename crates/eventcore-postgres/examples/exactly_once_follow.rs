//! How fast an exactly-once projection follows concurrent writers.
//!
//! Writers append one event per append to streams of their own for a few
//! seconds while a `ProjectionRunner` (on a store of its own, as in another
//! process) applies every page it reads in one transaction: a row per event
//! and the checkpoint with its lease fence together (the test support's
//! `AppliedRecorder`: `Projection::apply_batch` +
//! `PostgresCheckpointStore::save_in`). It prints, each second and at the
//! end, the writers' events/s, the projection's applied events/s and how
//! many committed events it has yet to apply (its lag), then checks that
//! every event was applied exactly once.
//!
//! ```text
//! cargo run --release -p eventcore-postgres --example exactly_once_follow -- \
//!     --writers 16 --seconds 10
//! ```
//!
//! The server is `DATABASE_URL`, else `scripts/dev-db`'s. It works in a
//! fresh schema, dropped at the end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventcore::{
    GlobalPosition, ProjectionRunner, RunnerOptions, StreamId,
    testing::{bank::AccountEvent, seed},
};
use eventcore_postgres::{PostgresConfigBuilder, PostgresEventStore};
use eventcore_test_support::{AppliedRecorder, applications, drop_schema, fresh_schema};

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
    let url = eventcore_test_support::database_url()?;
    let writers = arg("--writers", 16) as usize;
    let seconds = arg("--seconds", 10);
    let batch = arg("--batch", 500) as usize;
    let schema = fresh_schema();

    let writer_store = store(&url, &schema, writers as u32 + 2).await;
    writer_store.initialize().await?;
    let projection_store = store(&url, &schema, 4).await;
    let projection = AppliedRecorder::<AccountEvent>::new(&projection_store).await;
    let checkpoints = projection.checkpoints();
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

    // Appends counted in `written` have committed, so the lag is exact up
    // to the appends in flight.
    let applied = async || applications(&writer_store).await.0 as u64;
    println!("{writers} writers, {seconds} s, projection pages of up to {batch} events");
    let (mut prev_written, mut prev_applied) = (0, 0);
    for second in 1..=seconds {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let (w, a) = (written.load(Ordering::Relaxed), applied().await);
        println!(
            "  {second:>3} s: written {:>6}/s, applied {:>6}/s, lag {:>6} events",
            w - prev_written,
            a - prev_applied,
            w.saturating_sub(a)
        );
        (prev_written, prev_applied) = (w, a);
    }
    writing.store(false, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total_written = written.load(Ordering::Relaxed);
    let applied_by_then = applied().await;
    let drain_started = Instant::now();
    while applied().await < total_written {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_in = drain_started.elapsed();
    stop.send(()).map_err(|()| "runner gone")?;
    let summary = runner.await??;

    let (rows, events) = applications(&writer_store).await;
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
        "  lag when the writers stopped: {} events, applied {:.0} ms later",
        total_written - applied_by_then.min(total_written),
        drained_in.as_secs_f64() * 1e3
    );
    println!(
        "  read model: {rows} rows for {events} events; checkpoint {:?}",
        summary.checkpoint.map(GlobalPosition::get)
    );
    let exact = rows == events && events == total_written as i64;
    println!(
        "  {}",
        if exact {
            "ok: every event applied exactly once"
        } else {
            "MISMATCH: the read model does not hold every event exactly once"
        }
    );
    drop_schema(&writer_store).await?;
    if exact {
        Ok(())
    } else {
        Err("mismatch".into())
    }
}
