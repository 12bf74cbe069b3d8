//! Many tasks making random transfers at once through one executor.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use eventcore::{CommandError, CommandExecutor, EventStore};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::task::JoinSet;

use crate::domain::{AccountId, BankError, Transfer};

/// How much concurrent work to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    /// Concurrent tasks.
    pub(crate) tasks: usize,
    /// Transfers in total, spread evenly over the tasks.
    pub(crate) transfers: usize,
    /// Largest random amount, in dollars.
    pub(crate) max_amount: u64,
}

/// What the tasks achieved.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    /// Transfers appended.
    pub(crate) succeeded: u64,
    /// Transfers refused by the overdraft rule.
    pub(crate) rejected: u64,
    /// Transfers still conflicting after the retry policy's last attempt.
    pub(crate) gave_up: u64,
    /// Attempts that lost a race for an account and were decided again.
    pub(crate) conflicts: u64,
    /// Attempts repeated after a transient fault of the store.
    pub(crate) transient_retries: u64,
    /// The most attempts any one transfer needed.
    pub(crate) max_attempts: u32,
    /// Dollars moved by the successful transfers.
    pub(crate) moved: u64,
    /// Wall-clock time of the whole run.
    pub(crate) elapsed: Duration,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.succeeded += other.succeeded;
        self.rejected += other.rejected;
        self.gave_up += other.gave_up;
        self.conflicts += other.conflicts;
        self.transient_retries += other.transient_retries;
        self.max_attempts = self.max_attempts.max(other.max_attempts);
        self.moved += other.moved;
    }

    /// Transfers attempted.
    pub(crate) fn total(&self) -> u64 {
        self.succeeded + self.rejected + self.gave_up
    }
}

/// Runs `workload` against `accounts` (at least two) and waits for every
/// task. Business rejections and exhausted retries are counted; any other
/// error (the store failing) aborts the run.
pub(crate) async fn run<S: EventStore + 'static>(
    executor: Arc<CommandExecutor<S>>,
    accounts: &[AccountId],
    workload: Workload,
) -> anyhow::Result<Stats> {
    anyhow::ensure!(accounts.len() >= 2, "random transfers need two accounts");
    let started = Instant::now();
    let tasks = workload.tasks.max(1);
    let mut set = JoinSet::new();
    for task in 0..tasks {
        let share = workload.transfers / tasks + usize::from(task < workload.transfers % tasks);
        let executor = Arc::clone(&executor);
        let accounts = accounts.to_vec();
        set.spawn(async move {
            let mut rng = StdRng::from_rng(&mut rand::rng());
            let mut stats = Stats::default();
            for _ in 0..share {
                let transfer = random_transfer(&mut rng, &accounts, workload.max_amount);
                let amount = transfer.amount;
                match executor.execute(transfer).await {
                    Ok(outcome) => {
                        stats.succeeded += 1;
                        stats.moved += amount;
                        stats.conflicts += u64::from(outcome.conflicts);
                        stats.transient_retries += u64::from(outcome.transient_retries);
                        stats.max_attempts = stats.max_attempts.max(outcome.attempts);
                    }
                    Err(CommandError::Rejected(BankError::InsufficientFunds { .. })) => {
                        stats.rejected += 1;
                    }
                    Err(CommandError::RetriesExhausted { attempts, .. }) => {
                        stats.gave_up += 1;
                        stats.conflicts += u64::from(attempts.saturating_sub(1));
                        stats.max_attempts = stats.max_attempts.max(attempts);
                    }
                    Err(other) => {
                        return Err(anyhow::Error::new(other))
                            .with_context(|| format!("task {task}: transfer failed"));
                    }
                }
            }
            Ok::<_, anyhow::Error>(stats)
        });
    }
    let mut total = Stats::default();
    while let Some(joined) = set.join_next().await {
        total.merge(joined.context("a transfer task panicked")??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// A transfer between two distinct random accounts, of 1 to `max_amount`
/// dollars.
fn random_transfer(rng: &mut impl Rng, accounts: &[AccountId], max_amount: u64) -> Transfer {
    let from = rng.random_range(0..accounts.len());
    let mut to = rng.random_range(0..accounts.len() - 1);
    if to >= from {
        to += 1;
    }
    let amount = rng.random_range(1..=max_amount.max(1));
    Transfer::new(accounts[from].clone(), accounts[to].clone(), amount)
}
