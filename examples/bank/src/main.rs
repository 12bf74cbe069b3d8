//! # Bank: an EventCore example
//!
//! ```text
//! cargo run -p bank                # PostgreSQL, provisioned automatically
//! cargo run -p bank -- --memory    # in-memory store, no database needed
//! cargo run -p bank -- --metrics 127.0.0.1:9000   # and Prometheus metrics
//! ```
//!
//! Each account is an event stream, `account-<name>`, folded into one
//! [`domain::Account`] state that every command shares (and that is
//! snapshotted every 100 events). Opening an account, a deposit and a
//! withdrawal touch one stream; a transfer reads both accounts and appends
//! to both in one atomic append, so money is never in both accounts or in
//! neither, and an overdraft is refused with a typed business error
//! ([`domain::BankError`]).
//!
//! The run opens a few accounts, makes some transfers by hand (including
//! refused ones), then starts a **live projection** and lets 8 tasks make 200
//! random transfers at once through one [`CommandExecutor`] (conflicts are
//! retried by the executor). It folds every account back from its stream and
//! checks the books: money conserved, no negative balance, every transfer
//! booked on both sides. Finally it waits for the projection to catch up,
//! stops it, compares its balances with the folded ones, and rebuilds it from
//! the first event to show the replay gives the same answer.
//!
//! The projection ([`projection::BalanceProjection`]) follows the `account-`
//! events in global order with a [`ProjectionRunner`] and keeps one balance
//! per account: in a `HashMap` with `--memory` (at-least-once delivery, made
//! harmless by an idempotent `apply`), or in the table
//! `<schema>.account_balances`, a `PostgresProjection` whose every page of
//! events commits in one transaction with the projection's checkpoint (an
//! exactly-once effect).
//!
//! PostgreSQL: the URL comes from `DATABASE_URL` (or `--database-url`), else
//! from `scripts/dev-db url`, which starts a throwaway local cluster if none is
//! running. Every run uses a fresh schema `bank_<uuid>` so reruns start clean;
//! `--schema NAME` picks (or reuses) a schema instead, and the projection then
//! resumes from its checkpoint. See `--help` for the rest, and
//! `RUST_LOG=eventcore=debug` to watch conflicts being retried.
//!
//! `--metrics ADDR` installs the Prometheus exporter
//! (`metrics-exporter-prometheus`) as the process's `metrics` recorder,
//! serving `http://ADDR/metrics`: the store's and the runner's counters and
//! histograms (`eventcore_*`, see docs/operations.md). The example then
//! stays up after its run, until Ctrl-C, so the page can be scraped.

mod audit;
mod domain;
mod projection;
mod simulation;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use eventcore::{
    CheckpointStore, CommandError, CommandExecutor, EventStore, ExecutionOutcome, GlobalPosition,
    InMemoryCheckpointStore, InMemoryEventStore, InMemorySnapshotStore, ProjectionRunner,
    RetryPolicy, RunSummary, RunnerOptions, SnapshotStore,
};
use eventcore_postgres::{
    PostgresCheckpointStore, PostgresConfigBuilder, PostgresEventStore, PostgresSnapshotStore,
    redact_secrets,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing_subscriber::EnvFilter;

use crate::{
    audit::Books,
    domain::{AccountId, Deposit, OpenAccount, STREAM_PREFIX, Transfer, Withdraw, money},
    projection::{BalanceProjection, Balances, NAME, Progress, ReadModel},
    simulation::{Stats, Workload},
};

/// EventCore example: bank accounts as streams, atomic transfers, a live
/// balance projection.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Use the in-memory store instead of PostgreSQL.
    #[arg(long)]
    memory: bool,

    /// PostgreSQL URL. Default: the output of `scripts/dev-db url`.
    /// (Ignored with `--memory`, so an exported `DATABASE_URL` does no harm.)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// PostgreSQL schema to use, created if missing and reused if present.
    /// Default: a fresh `bank_<uuid>` per run.
    #[arg(long, value_name = "NAME", conflicts_with = "memory")]
    schema: Option<String>,

    /// Concurrent tasks making random transfers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    tasks: u16,

    /// Random transfers in total, spread over the tasks.
    #[arg(long, default_value_t = 200)]
    transfers: usize,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g.
    /// 127.0.0.1:9000), and stay up after the run until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    if let Some(addr) = args.metrics {
        // The application picks the exporter; the library only records
        // through the `metrics` facade.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        eventcore_postgres::describe_metrics();
        println!("Metrics: http://{addr}/metrics");
    }
    let workload = Workload {
        tasks: usize::from(args.tasks),
        transfers: args.transfers,
        max_amount: 40,
    };

    let result = if args.memory {
        println!("Store: in memory (nothing is kept after the run)");
        run(
            InMemoryEventStore::new(),
            InMemorySnapshotStore::new(),
            InMemoryCheckpointStore::new(),
            ReadModel::memory(),
            workload,
        )
        .await
    } else {
        run_postgres(&args, workload).await
    };
    if let (Ok(()), Some(addr)) = (&result, args.metrics) {
        println!("Metrics stay up on http://{addr}/metrics; Ctrl-C stops.");
        tokio::signal::ctrl_c().await?;
    }
    result
}

/// The example on PostgreSQL: snapshots, checkpoints and the read model
/// next to the events.
async fn run_postgres(args: &Args, workload: Workload) -> anyhow::Result<()> {
    let store = connect_postgres(args, workload).await?;
    // Publishes the pool's gauges (and logs it at info level) every 5 s.
    let _pool_gauges = args
        .metrics
        .map(|_| store.start_pool_monitoring(Duration::from_secs(5)));
    let snapshots = PostgresSnapshotStore::new(store.clone());
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    let read_model = ReadModel::postgres(&store, checkpoints.clone()).await?;
    run(store, snapshots, checkpoints, read_model, workload).await
}

/// Connects to PostgreSQL and creates the schema's tables.
async fn connect_postgres(args: &Args, workload: Workload) -> anyhow::Result<PostgresEventStore> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        // DATABASE_URL was empty or unset: the throwaway local cluster.
        None => eventcore_test_support::database_url()
            .context("no PostgreSQL server: set DATABASE_URL, or use --memory")?,
    };
    let (schema, fresh) = match &args.schema {
        Some(schema) => (schema.clone(), false),
        None => (format!("bank_{}", uuid::Uuid::now_v7().simple()), true),
    };
    let config = PostgresConfigBuilder::new()
        .database_url(&url)
        .schema(&schema)
        // One connection per task, plus a few for the audit and the
        // projection (its reads, its transactions, the progress lines).
        .max_connections(
            u32::try_from(workload.tasks)
                .unwrap_or(u32::MAX)
                .saturating_add(4),
        )
        .min_connections(0)
        .build()
        .context("invalid PostgreSQL settings")?;
    let store = PostgresEventStore::new(config)
        .await
        .with_context(|| format!("cannot connect to {}", redact_secrets(&url)))?;
    store
        .initialize()
        .await
        .with_context(|| format!("cannot create the event store in schema {schema}"))?;
    println!(
        "Store: PostgreSQL at {}, schema {schema}{}",
        redact_secrets(&url),
        if fresh { " (fresh for this run)" } else { "" }
    );
    Ok(store)
}

/// The accounts of the example.
struct Accounts {
    alice: AccountId,
    bob: AccountId,
    carol: AccountId,
    dave: AccountId,
    /// Never opened.
    zoe: AccountId,
}

impl Accounts {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            alice: AccountId::new("alice")?,
            bob: AccountId::new("bob")?,
            carol: AccountId::new("carol")?,
            dave: AccountId::new("dave")?,
            zoe: AccountId::new("zoe")?,
        })
    }

    /// The accounts that get opened.
    fn open(&self) -> Vec<AccountId> {
        vec![
            self.alice.clone(),
            self.bob.clone(),
            self.carol.clone(),
            self.dave.clone(),
        ]
    }
}

/// The whole example, on any store, with the account snapshots in
/// `snapshots` and the balance projection keeping its checkpoint in
/// `checkpoints` and its balances in `read_model`.
async fn run<S, C>(
    store: S,
    snapshots: impl SnapshotStore + 'static,
    checkpoints: C,
    read_model: ReadModel,
    workload: Workload,
) -> anyhow::Result<()>
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    // Eight writers on four accounts is deliberately hot contention: a
    // transfer occasionally loses the race ten times in a row, the default
    // policy's limit, so this executor is more patient.
    let executor = Arc::new(
        CommandExecutor::new(store.clone())
            .with_retry_policy(RetryPolicy::new().max_attempts(30))
            .with_snapshots(snapshots),
    );
    let accounts = Accounts::new()?;

    heading("1. Opening accounts");
    open_accounts(&executor, &accounts).await?;

    heading("2. A few transfers by hand");
    scripted_transfers(&executor, &accounts).await?;
    let before = Books::load(&store, &accounts.open()).await?;
    println!("  Balances now:");
    before.print();

    heading(&format!(
        "3. A live projection follows {} tasks making {} random transfers",
        workload.tasks, workload.transfers
    ));
    println!(
        "  projection '{NAME}': {STREAM_PREFIX}* events -> {}",
        read_model.describe()
    );
    let live = LiveProjection::start(store.clone(), checkpoints, read_model);
    let stats = transfers_with_progress(&executor, &accounts, workload, &store, &live).await?;
    print_stats(&stats);
    let (mut runner, summary) = live.stop_when_caught_up(&store).await?;

    heading("4. Final balances, folded from each account's stream");
    let after = Books::load(&store, &accounts.open()).await?;
    after.print();
    audit(&before, &after, &stats)?;

    heading("5. The projection next to the streams");
    let folded: Balances = after
        .accounts
        .iter()
        .map(|(account, state)| (account.name().to_owned(), state.balance))
        .collect();
    let live_ok = compare(&folded, &runner.projection().balances().await?, true);
    let started = Instant::now();
    let rebuilt = runner
        .rebuild()
        .await
        .context("rebuilding the projection failed")?;
    println!(
        "  Rebuild: reset, then replayed {} events from the first in {:.0} ms",
        rebuilt.applied,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let rebuild_ok = compare(&folded, &runner.projection().balances().await?, false);
    anyhow::ensure!(
        live_ok && rebuild_ok,
        "the projection's balances differ from the streams'"
    );

    println!();
    let gave_up = match stats.gave_up {
        0 => String::new(),
        n => format!(", {n} gave up"),
    };
    println!(
        "Summary: {} succeeded, {} rejected, {} conflicts retried{gave_up}; \
         the projection applied {} events live and agrees with the streams.",
        stats.succeeded, stats.rejected, stats.conflicts, summary.applied
    );
    Ok(())
}

/// The runner of the balance projection, as its task hands it back.
type BalanceRunner<S, C> = ProjectionRunner<BalanceProjection, S, C>;

/// The balance projection running in a task of its own.
struct LiveProjection<S, C> {
    progress: Arc<Progress>,
    checkpoints: C,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<(BalanceRunner<S, C>, Result<RunSummary, eventcore::Error>)>,
}

/// How long the projection may take to catch up once the writers are done.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Lag counts stop here (one read of the log).
const LAG_CAP: usize = 1_000;

impl<S, C> LiveProjection<S, C>
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    /// Spawns the runner: it resumes from the checkpoint (if any), catches up
    /// and follows new commits until told to stop.
    fn start(store: S, checkpoints: C, read_model: ReadModel) -> Self {
        let projection = BalanceProjection::new(read_model);
        let progress = projection.progress();
        let mut runner = ProjectionRunner::new(projection, store, checkpoints.clone())
            // In memory, at most this many events are delivered again after a
            // restart; on PostgreSQL every event saves the checkpoint anyway.
            .with_options(RunnerOptions {
                checkpoint_every: 50,
                ..RunnerOptions::default()
            });
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let result = runner
                .run_continuous(async {
                    // A dropped sender stops the runner too.
                    let _ = stop.await;
                })
                .await;
            (runner, result)
        });
        Self {
            progress,
            checkpoints,
            shutdown,
            task,
        }
    }

    /// The furthest position the projection is known to have finished: its
    /// last event, or its saved checkpoint if that is further (after a
    /// restart, or past events of other streams).
    async fn position(&self) -> anyhow::Result<GlobalPosition> {
        let saved = self.checkpoints.load(NAME).await?.unwrap_or_default();
        Ok(saved.max(self.progress.last_position()))
    }

    /// One progress line: events applied, and how many events of the log the
    /// projection has yet to see (positions are not dense on PostgreSQL, so
    /// the lag is counted rather than subtracted from the head).
    async fn print_progress(&self, store: &S) -> anyhow::Result<()> {
        let behind = store.read_all(self.position().await?, LAG_CAP).await?.len();
        let plus = if behind == LAG_CAP { "+" } else { "" };
        println!(
            "  projection: {:>4} events applied, lag {behind}{plus}",
            self.progress.applied()
        );
        Ok(())
    }

    /// Waits until the projection has reached the store's head, then stops
    /// the runner gracefully and takes it back.
    async fn stop_when_caught_up(
        self,
        store: &S,
    ) -> anyhow::Result<(BalanceRunner<S, C>, RunSummary)> {
        let started = Instant::now();
        let head = store.head_position().await?;
        while self.position().await? < head && !self.task.is_finished() {
            anyhow::ensure!(
                started.elapsed() < CATCH_UP_TIMEOUT,
                "the projection did not catch up within {CATCH_UP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waited = started.elapsed();
        // Fails only if the runner has already returned; its result says why.
        let _ = self.shutdown.send(());
        let (runner, result) = self.task.await.context("the projection task panicked")?;
        let summary = result.context("the projection runner failed")?;
        let duplicates = match runner.projection().progress().duplicates() {
            0 => String::new(),
            n => format!(", {n} redelivered events ignored"),
        };
        println!(
            "  projection: {:>4} events applied, caught up {:.0} ms after the last transfer; \
             stopped{duplicates}",
            summary.applied,
            waited.as_secs_f64() * 1000.0,
        );
        Ok((runner, summary))
    }
}

/// Runs the random transfers, printing the projection's progress at the
/// start and every half second.
async fn transfers_with_progress<S, C>(
    executor: &Arc<CommandExecutor<S>>,
    accounts: &Accounts,
    workload: Workload,
    store: &S,
    live: &LiveProjection<S, C>,
) -> anyhow::Result<Stats>
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let open = accounts.open();
    let transfers = simulation::run(Arc::clone(executor), &open, workload);
    tokio::pin!(transfers);
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            stats = &mut transfers => return stats,
            _ = ticks.tick() => live.print_progress(store).await?,
        }
    }
}

/// Prints the projection's balances next to the folded ones, as a table if
/// `table` (else only the differences); true if they agree on every account.
fn compare(folded: &Balances, projected: &Balances, table: bool) -> bool {
    let names: BTreeSet<&String> = folded.keys().chain(projected.keys()).collect();
    let show = |b: Option<&i128>| b.map_or_else(|| "-".to_owned(), |b| money(*b));
    if table {
        println!("  {:<8} {:>9} {:>11}", "account", "streams", "projection");
    }
    let mut mismatches = 0;
    for name in &names {
        let (f, p) = (folded.get(*name), projected.get(*name));
        let ok = f == p;
        mismatches += usize::from(!ok);
        if table || !ok {
            let verdict = if ok { "ok" } else { "MISMATCH" };
            println!("  {name:<8} {:>9} {:>11}   {verdict}", show(f), show(p));
        }
    }
    let what = if table { "live" } else { "rebuilt" };
    if mismatches == 0 {
        println!(
            "  ok  The {what} projection matches the streams on all {} accounts",
            names.len()
        );
    } else {
        println!("  MISMATCH  The {what} projection differs on {mismatches} account(s)");
    }
    mismatches == 0
}

async fn open_accounts<S: EventStore>(
    executor: &CommandExecutor<S>,
    accounts: &Accounts,
) -> anyhow::Result<()> {
    for (account, owner, initial_deposit) in [
        (&accounts.alice, "Alice", 100),
        (&accounts.bob, "Bob", 50),
        (&accounts.carol, "Carol", 80),
        (&accounts.dave, "Dave", 20),
    ] {
        let open = OpenAccount {
            account: account.clone(),
            owner: owner.into(),
            initial_deposit,
        };
        let what = format!("{owner} opens '{account}' with {}", money(initial_deposit));
        show(&what, executor.execute(open).await)?;
    }
    let again = OpenAccount {
        account: accounts.alice.clone(),
        owner: "Mallory".into(),
        initial_deposit: 1_000_000,
    };
    show(
        "Mallory tries to open 'alice' again",
        executor.execute(again).await,
    )?;
    Ok(())
}

async fn scripted_transfers<S: EventStore>(
    executor: &CommandExecutor<S>,
    a: &Accounts,
) -> anyhow::Result<()> {
    let transfers = [
        (&a.alice, &a.bob, 30),
        (&a.bob, &a.alice, 10),
        (&a.carol, &a.dave, 25),
        // Alice has $80 by now: refused for overdraft.
        (&a.alice, &a.bob, 500),
        (&a.alice, &a.alice, 5),
        (&a.alice, &a.zoe, 5),
    ];
    for (from, to, amount) in transfers {
        let what = format!("'{from}' sends '{to}' {}", money(amount));
        let transfer = Transfer::new(from.clone(), to.clone(), amount);
        show(&what, executor.execute(transfer).await)?;
    }
    let deposit = Deposit {
        account: a.bob.clone(),
        amount: 25,
    };
    show("'bob' deposits $25", executor.execute(deposit).await)?;
    let withdraw = Withdraw {
        account: a.dave.clone(),
        amount: 5,
    };
    show("'dave' withdraws $5", executor.execute(withdraw).await)?;
    Ok(())
}

/// Prints what a command did. A business rejection is an expected outcome
/// and is printed; any other error ends the run.
fn show<E>(
    what: &str,
    result: Result<ExecutionOutcome, CommandError<E>>,
) -> anyhow::Result<Option<ExecutionOutcome>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(outcome) => {
            let retried = match outcome.attempts {
                1 => String::new(),
                n => format!(" (after {n} attempts)"),
            };
            println!("  ok       {what}{retried}");
            Ok(Some(outcome))
        }
        Err(CommandError::Rejected(reason)) => {
            println!("  REFUSED  {what}: {reason}");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("{what}: failed"))),
    }
}

fn print_stats(stats: &Stats) {
    let secs = stats.elapsed.as_secs_f64();
    println!(
        "  {} transfers in {:.0} ms ({:.0}/s)",
        stats.total(),
        secs * 1000.0,
        stats.total() as f64 / secs.max(1e-9)
    );
    println!(
        "  succeeded: {:>4}   ({} moved)",
        stats.succeeded,
        money(stats.moved)
    );
    println!("  rejected:  {:>4}   (insufficient funds)", stats.rejected);
    println!(
        "  conflicts: {:>4}   (lost races re-run by the executor; worst case {} attempts)",
        stats.conflicts,
        stats.max_attempts.max(1)
    );
    if stats.transient_retries > 0 {
        println!(
            "  transient: {:>4}   (store faults retried)",
            stats.transient_retries
        );
    }
    if stats.gave_up > 0 {
        println!(
            "  gave up:   {:>4}   (still conflicting after the last retry)",
            stats.gave_up
        );
    }
}

/// Checks the books and says so; an error if any invariant is broken.
fn audit(before: &Books, after: &Books, stats: &Stats) -> anyhow::Result<()> {
    after.check()?;
    anyhow::ensure!(
        after.total() == before.total(),
        "the random transfers changed the total from {} to {}",
        money(before.total()),
        money(after.total())
    );
    let booked = after.transfers() - before.transfers();
    anyhow::ensure!(
        booked as u64 == stats.succeeded,
        "{} transfers succeeded but {booked} were booked",
        stats.succeeded
    );
    println!();
    println!(
        "  ok  Money is conserved: {} in the accounts, the same as before the random transfers",
        money(after.total())
    );
    println!("      and exactly what was paid in minus what was taken out");
    println!("  ok  No balance is negative");
    println!(
        "  ok  All {} transfers are booked on both sides (same id, accounts and amount), \
         {booked} of them by the concurrent tasks",
        after.transfers()
    );
    Ok(())
}

fn heading(title: &str) {
    println!();
    println!("== {title} ==");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_whole_example_keeps_the_books_in_memory() {
        let workload = Workload {
            tasks: 8,
            transfers: 200,
            max_amount: 40,
        };
        run(
            InMemoryEventStore::new(),
            InMemorySnapshotStore::new(),
            InMemoryCheckpointStore::new(),
            ReadModel::memory(),
            workload,
        )
        .await
        .unwrap();
    }

    /// On PostgreSQL (`DATABASE_URL`, else `scripts/dev-db`), with enough
    /// transfers for the accounts to be snapshotted, in a `t_` schema that
    /// scripts/sweep-test-schemas drops later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_whole_example_keeps_the_books_on_postgres() {
        let schema = eventcore_test_support::fresh_schema();
        let args = Args::parse_from(["bank", "--transfers", "400", "--schema", &schema]);
        let workload = Workload {
            tasks: usize::from(args.tasks),
            transfers: args.transfers,
            max_amount: 40,
        };
        run_postgres(&args, workload).await.unwrap();
    }
}
