//! A-cmd, C and D: writes through the `CommandExecutor` (read the streams,
//! fold, decide, append, retry on conflict).

use std::time::Duration;

use eventcore::{EventStore, RetryPolicy, testing::bank::AccountEvent};

use crate::{
    ceiling::Script,
    ctx::{Ctx, close},
    measure::drive,
    provision::STREAMS,
    report::Row,
    workload::{
        AppendWorker, funded, measure_place_order, measure_transfers, seed_order, stream_ids,
        transfer_row, write_streams,
    },
};

pub(super) async fn run_a_cmd(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers = 16;
    let streams = write_streams()?;
    let mut rows = Vec::new();
    // Uncached: every command reads its whole stream. Cached: the shared
    // executor keeps each stream's folded state and reads only newer events.
    for (name, schema, cached) in [
        ("A-cmd", "bench_a_cmd_w16", false),
        ("A-cmd-cached", "bench_a_cmd_cached_w16", true),
    ] {
        eprintln!("[{name}] {writers} writers");
        let store = ctx
            .prepared_store(schema, writers, &streams, seed_order)
            .await?;
        let (timing, streams) = (ctx.timing, streams.clone());
        let (m, ceiling) = ctx
            .bracketed(&Script::append1(), writers, async move {
                let retry = RetryPolicy::default();
                let m =
                    measure_place_order(&store, &streams, writers, cached, &retry, timing).await?;
                close(store).await;
                Ok(m)
            })
            .await?;
        let same_work = if cached {
            None
        } else {
            ctx.measure_ceiling(&Script::command_append1(), writers)
                .await
        };
        let how = if cached {
            "execute_cached: reads only events newer than the cached state"
        } else {
            "execute: reads the whole stream"
        };
        rows.push(
            Row::from_measured(name, writers, 1, &m)
                .with_ceiling(ceiling.as_ref(), 1.0)
                .retries_per_sec(&m)
                .note(format!(
                    "ceiling: A_append1; 2 round trips (read + append); {how}"
                ))
                .with_same_work("A_cmd_read_append1", same_work.as_ref(), 1.0),
        );
    }
    Ok(rows)
}

pub(super) async fn run_c(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers = 16;
    eprintln!("[C] {writers} writers");
    let accounts = stream_ids("stream", STREAMS)?;
    let store = ctx
        .prepared_store("bench_c_w16", writers, &accounts, funded)
        .await?;
    let (timing, transferred) = (ctx.timing, accounts.clone());
    let (m, ceiling) = ctx
        .bracketed(&Script::two_streams(), writers, async move {
            let m = measure_transfers(&store, &transferred, writers, timing).await?;
            close(store).await;
            Ok(m)
        })
        .await?;
    let transfer = AccountEvent::Debited {
        amount: 1,
        to: accounts[accounts.len() / 2].to_string(),
    };
    let same_work = ctx
        .measure_ceiling(
            &Script::command_two_streams(serde_json::to_string(&transfer)?),
            writers,
        )
        .await;
    Ok(vec![
        transfer_row("C", writers, &m)
            .with_ceiling(ceiling.as_ref(), 2.0)
            .with_same_work("C_cmd_read_two_streams", same_work.as_ref(), 2.0),
    ])
}

/// The executor's retry policy for the hot stream of D, unless `--d-retry`
/// says otherwise: 200 attempts, base delay 5 ms, cap 20 ms. The cap keeps
/// a writer that lost several races from sleeping while the others take
/// turn after turn (20 ms is about one commit each for 16 writers); the
/// 5 ms base spreads the first retries of the losers of one race; 200
/// attempts leave room (the most seen in a run was ~90). ADR 0009 has the
/// measurements.
fn hot_stream_retry() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(200)
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

/// D through the executor: `D` with `execute_cached` on one shared executor
/// (only the events added since the last run are read: the documented way
/// to handle hot or long streams), `D-uncached` with `execute` (every
/// command reads the hot stream from its start). Both retry by `retry`.
async fn hot_command_row(
    ctx: &mut Ctx,
    cached: bool,
    writers: usize,
    script: &Script,
    retry: &RetryPolicy,
) -> anyhow::Result<Row> {
    let (name, schema) = if cached {
        ("D", "bench_d_w16")
    } else {
        ("D-uncached", "bench_d_uncached_w16")
    };
    eprintln!("[{name}] {writers} writers on one stream, through CommandExecutor");
    let hot = stream_ids("stream", 1)?;
    let store = ctx
        .prepared_store(schema, writers, &write_streams()?, seed_order)
        .await?;
    let timing = ctx.timing;
    let ((m, length), ceiling) = ctx
        .bracketed(script, writers, async move {
            let m = measure_place_order(&store, &hot, writers, cached, retry, timing).await?;
            let length = store.stream_version(&hot[0]).await?.get();
            close(store).await;
            Ok((m, length))
        })
        .await?;
    let (min, max) = m.per_worker_range();
    let reads = if cached {
        "execute_cached: commands read only new events".to_owned()
    } else {
        format!("execute: each command re-reads the whole hot stream ({length} events at the end)")
    };
    Ok(Row::from_measured(name, writers, 1, &m)
        .with_ceiling(ceiling.as_ref(), 1.0)
        .retries_per_sec(&m)
        .extra("gave_up", m.conflicts)
        .extra("max_attempts_used", m.max_retries + 1)
        .extra("per_writer_successes_min", min)
        .extra("per_writer_successes_max", max)
        .extra("hot_stream_length", length)
        .extra("retry_max_attempts", retry.max_attempts)
        .extra(
            "retry_base_delay_ms",
            retry.base_delay.as_secs_f64() * 1000.0,
        )
        .extra("retry_max_delay_ms", retry.max_delay.as_secs_f64() * 1000.0)
        .note(format!(
            "{reads}; retry {} attempts, base {} ms, max {} ms; retries/s {:.0}; \
             per-writer successes min {min} max {max}; {} gave up; \
             most attempts a success took: {}",
            retry.max_attempts,
            retry.base_delay.as_secs_f64() * 1000.0,
            retry.max_delay.as_secs_f64() * 1000.0,
            m.per_sec(m.retries),
            m.conflicts,
            m.max_retries + 1
        )))
}

pub(super) async fn run_d(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers = 16;
    let hot = stream_ids("stream", 1)?;
    let script = Script::hot_stream();
    let retry = ctx.d_retry.clone().unwrap_or_else(hot_stream_retry);
    let cached_row = hot_command_row(ctx, true, writers, &script, &retry).await?;
    let uncached_row = hot_command_row(ctx, false, writers, &script, &retry).await?;
    eprintln!("[D-append] {writers} writers on one stream, version read + append");
    let store = ctx
        .prepared_store("bench_d_append_w16", writers, &write_streams()?, seed_order)
        .await?;
    let workers = (0..writers)
        .map(|id| AppendWorker::new(store.clone(), hot.clone(), 1, id))
        .collect();
    let timing = ctx.timing;
    let (m, ceiling) = ctx
        .bracketed(&script, writers, async move {
            let m = drive(workers, timing).await?;
            close(store).await;
            Ok(m)
        })
        .await?;
    let (min, max) = m.per_worker_range();
    let append_row = Row::from_measured("D-append", writers, 1, &m)
        .with_ceiling(ceiling.as_ref(), 1.0)
        .extra("per_writer_successes_min", min)
        .extra("per_writer_successes_max", max)
        .note(format!(
            "store level, like D_hot_stream.sql: conflicts/s {:.0} (counted, not retried); \
             per-writer successes min {min} max {max}",
            m.per_sec(m.conflicts)
        ));
    Ok(vec![cached_row, uncached_row, append_row])
}
