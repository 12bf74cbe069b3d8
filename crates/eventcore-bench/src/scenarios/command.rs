//! A-cmd, C and D: writes through the `CommandExecutor` (read the streams,
//! fold, decide, append, retry on conflict).

use std::{convert::Infallible, sync::Arc, time::Duration};

use eventcore::{
    CacheableCommand, Command, CommandError, CommandExecutor, Decision, EventStore,
    ExecutionOutcome, RecordedEvent, RetryPolicy, StreamId,
    testing::bank::{AccountEvent, Transfer},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use super::{
    Ctx, Measured, OrderPlaced, Outcome, Timing, Worker, append::AppendWorker, close, drive,
    seed_order, stream_ids, write_streams,
};
use crate::{db::Script, report::Row};

/// Folds its stream (counting its events) and appends one `OrderPlaced`.
#[derive(Clone, Debug)]
pub(crate) struct PlaceOrder {
    stream: StreamId,
    order: u64,
}

impl Command for PlaceOrder {
    type Event = OrderPlaced;
    type State = u64;
    type Error = Infallible;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.stream.clone()]
    }

    fn apply(&self, seen: &mut u64, _event: &RecordedEvent<OrderPlaced>) {
        *seen += 1;
    }

    fn handle(&self, _seen: &u64, d: &mut Decision<OrderPlaced>) -> Result<(), Infallible> {
        d.emit(&self.stream, OrderPlaced::sample(self.order));
        Ok(())
    }
}

impl CacheableCommand for PlaceOrder {
    fn state_key(&self) -> String {
        self.stream.to_string()
    }
}

/// Runs commands made by `make` through `executor`, with
/// [`CommandExecutor::execute_cached`] if `cached`. A command that runs out
/// of retries is counted as a conflict.
pub(crate) struct CommandWorker<S, F> {
    executor: CommandExecutor<S>,
    make: F,
    rng: SmallRng,
    cached: bool,
}

fn outcome<E: std::error::Error + Send + Sync + 'static>(
    result: Result<ExecutionOutcome, CommandError<E>>,
) -> anyhow::Result<Outcome> {
    match result {
        Ok(outcome) => Ok(Outcome::Ok {
            events: outcome.events_written as u64,
            retries: u64::from(outcome.attempts.saturating_sub(1)),
        }),
        Err(CommandError::RetriesExhausted { attempts, .. }) => Ok(Outcome::Conflict {
            retries: u64::from(attempts.saturating_sub(1)),
        }),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

impl<S, F, C> Worker for CommandWorker<S, F>
where
    S: EventStore + Clone + 'static,
    F: FnMut(&mut SmallRng) -> C + Send + 'static,
    C: CacheableCommand,
{
    async fn op(&mut self) -> anyhow::Result<Outcome> {
        let command = (self.make)(&mut self.rng);
        if self.cached {
            outcome(self.executor.execute_cached(command).await)
        } else {
            outcome(self.executor.execute(command).await)
        }
    }
}

/// `writers` workers running [`PlaceOrder`] on random streams of `streams`
/// with the executor retrying conflicts by `retry`. With `cached`, they
/// share one executor and its state cache
/// ([`CommandExecutor::execute_cached`]); otherwise each has its own and
/// every command reads its stream from the start.
pub(crate) async fn measure_place_order<S: EventStore + Clone + 'static>(
    store: &S,
    streams: &Arc<[StreamId]>,
    writers: usize,
    cached: bool,
    retry: &RetryPolicy,
    timing: Timing,
) -> anyhow::Result<Measured> {
    let executor = || CommandExecutor::new(store.clone()).with_retry_policy(retry.clone());
    let shared = executor();
    let workers = (0..writers)
        .map(|id| {
            let streams = streams.clone();
            let mut order = (id as u64) << 32;
            CommandWorker {
                executor: if cached { shared.clone() } else { executor() },
                cached,
                make: move |rng: &mut SmallRng| {
                    order += 1;
                    PlaceOrder {
                        stream: streams[rng.random_range(0..streams.len())].clone(),
                        order,
                    }
                },
                rng: SmallRng::seed_from_u64(0xC0 + id as u64),
            }
        })
        .collect();
    drive(workers, timing).await
}

/// `writers` workers running bank [`Transfer`]s of 1 cent between two
/// distinct random accounts.
pub(crate) async fn measure_transfers<S: EventStore + Clone + 'static>(
    store: &S,
    accounts: &Arc<[StreamId]>,
    writers: usize,
    timing: Timing,
) -> anyhow::Result<Measured> {
    let workers = (0..writers)
        .map(|id| {
            let accounts = accounts.clone();
            CommandWorker {
                executor: CommandExecutor::new(store.clone()),
                cached: false,
                make: move |rng: &mut SmallRng| {
                    let n = accounts.len();
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    Transfer {
                        from: accounts[a].clone(),
                        to: accounts[b].clone(),
                        amount: 1,
                    }
                },
                rng: SmallRng::seed_from_u64(0xD0 + id as u64),
            }
        })
        .collect();
    drive(workers, timing).await
}

/// Starting balance of every account: enough for every transfer of a run.
pub(crate) const OPENING_BALANCE: u64 = 1_000_000_000;

pub(crate) fn funded(_: usize) -> AccountEvent {
    AccountEvent::Deposited {
        amount: OPENING_BALANCE,
    }
}

pub(crate) async fn run_a_cmd(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
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
        ctx.ceiling_before(&Script::append1(), writers).await;
        let m = measure_place_order(
            &store,
            &streams,
            writers,
            cached,
            &RetryPolicy::default(),
            ctx.timing,
        )
        .await?;
        close(store).await;
        let ceiling = ctx.ceiling(&Script::append1(), writers).await;
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
                .extra(
                    "retries_per_sec",
                    crate::report::round(m.retries as f64 / m.seconds),
                )
                .note(format!(
                    "ceiling: A_append1; 2 round trips (read + append); {how}"
                ))
                .with_same_work("A_cmd_read_append1", same_work.as_ref(), 1.0),
        );
    }
    Ok(rows)
}

pub(crate) async fn run_c(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers = 16;
    eprintln!("[C] {writers} writers");
    let accounts = stream_ids("stream", crate::db::STREAMS)?;
    let store = ctx
        .prepared_store("bench_c_w16", writers, &accounts, funded)
        .await?;
    ctx.ceiling_before(&Script::two_streams(), writers).await;
    let m = measure_transfers(&store, &accounts, writers, ctx.timing).await?;
    close(store).await;
    let ceiling = ctx.ceiling(&Script::two_streams(), writers).await;
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

/// A transfer row: events/s is 2 x transfers/s (a debit and a credit).
pub(crate) fn transfer_row(name: &str, writers: usize, m: &Measured) -> Row {
    let tx = m.ops as f64 / m.seconds;
    Row::from_measured(name, writers, 2, m)
        .extra("transfers_per_sec", crate::report::round(tx))
        .extra(
            "retries_per_sec",
            crate::report::round(m.retries as f64 / m.seconds),
        )
        .note(format!("{tx:.0} transfers/s; events/s = 2 x transfers/s"))
}

/// The executor's retry policy for the hot stream of D, unless `--d-retry`
/// says otherwise: 200 attempts, base delay 5 ms, cap 20 ms. The cap keeps
/// a writer that lost several races from sleeping while the others take
/// turn after turn (20 ms is about one commit each for 16 writers); the
/// 5 ms base spreads the first retries of the losers of one race; 200
/// attempts leave room (the most seen in a run was ~90). The default
/// policy (10 attempts, 2 ms, 1 s) let writers give up and starve: per-writer
/// successes 9 to 468 in 2 s. See docs/benchmarks.md for the comparison.
pub(crate) fn hot_stream_retry() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(200)
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

/// `attempts/base/max` of a retry policy, for the notes.
pub(crate) fn describe_retry(p: &RetryPolicy) -> String {
    format!(
        "retry {} attempts, base {} ms, max {} ms",
        p.max_attempts,
        p.base_delay.as_secs_f64() * 1000.0,
        p.max_delay.as_secs_f64() * 1000.0
    )
}

/// D through the executor: `D` with `execute_cached` on one shared executor
/// (only the events added since the last run are read: the documented way
/// to handle hot or long streams), `D-uncached` with `execute` (every
/// command reads the hot stream from its start). Both retry by
/// `ctx.d_retry`.
async fn hot_command_row(
    ctx: &mut Ctx,
    cached: bool,
    writers: usize,
    script: &Script,
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
    let retry = ctx.d_retry.clone();
    ctx.ceiling_before(script, writers).await;
    let m = measure_place_order(&store, &hot, writers, cached, &retry, ctx.timing).await?;
    let length = store.stream_version(&hot[0]).await?.get();
    close(store).await;
    let ceiling = ctx.ceiling(script, writers).await;
    let min = m.per_worker_ops.iter().copied().min().unwrap_or(0);
    let max = m.per_worker_ops.iter().copied().max().unwrap_or(0);
    let reads = if cached {
        "execute_cached: commands read only new events".to_owned()
    } else {
        format!("execute: each command re-reads the whole hot stream ({length} events at the end)")
    };
    Ok(Row::from_measured(name, writers, 1, &m)
        .with_ceiling(ceiling.as_ref(), 1.0)
        .extra(
            "retries_per_sec",
            crate::report::round(m.retries as f64 / m.seconds),
        )
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
            "{reads}; {}; retries/s {:.0}; per-writer successes min {min} max {max}; \
             {} gave up; most attempts a success took: {}",
            describe_retry(&retry),
            m.retries as f64 / m.seconds,
            m.conflicts,
            m.max_retries + 1
        )))
}

pub(crate) async fn run_d(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers = 16;
    let hot = stream_ids("stream", 1)?;
    let script = Script::hot_stream();
    let cached_row = hot_command_row(ctx, true, writers, &script).await?;
    let uncached_row = hot_command_row(ctx, false, writers, &script).await?;
    eprintln!("[D-append] {writers} writers on one stream, version read + append");
    let store = ctx
        .prepared_store("bench_d_append_w16", writers, &write_streams()?, seed_order)
        .await?;
    let workers = (0..writers)
        .map(|id| AppendWorker::new(store.clone(), hot.clone(), 1, id))
        .collect();
    ctx.ceiling_before(&script, writers).await;
    let m = drive(workers, ctx.timing).await?;
    close(store).await;
    let ceiling = ctx.ceiling(&script, writers).await;
    let min = m.per_worker_ops.iter().copied().min().unwrap_or(0);
    let max = m.per_worker_ops.iter().copied().max().unwrap_or(0);
    let append_row = Row::from_measured("D-append", writers, 1, &m)
        .with_ceiling(ceiling.as_ref(), 1.0)
        .extra("per_writer_successes_min", min)
        .extra("per_writer_successes_max", max)
        .note(format!(
            "store level, like D_hot_stream.sql: conflicts/s {:.0} (counted, not retried); \
             per-writer successes min {min} max {max}",
            m.conflicts as f64 / m.seconds
        ));
    Ok(vec![cached_row, uncached_row, append_row])
}
