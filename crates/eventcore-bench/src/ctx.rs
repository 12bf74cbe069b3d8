//! What the scenarios run against: the settings of this invocation, the
//! benchmark database and the ceiling, and the steps every write
//! measurement shares (a prepared store, a ceiling bracketing the run).

use std::future::Future;

use anyhow::Context as _;
use eventcore::{Event, RetryPolicy, StreamId};
use eventcore_postgres::PostgresEventStore;

use crate::{
    ceiling::{Ceiling, CeilingResult, Script},
    measure::Timing,
    provision::{BenchDb, seed_streams},
};

pub(crate) struct Ctx {
    pub(crate) quick: bool,
    pub(crate) timing: Timing,
    /// `--writers`: the writer (reader) counts of the scenarios that sweep
    /// them, instead of their own.
    pub(crate) writers: Option<Vec<usize>>,
    /// `None` when only in-memory scenarios were selected.
    pub(crate) db: Option<BenchDb>,
    /// `None` without pgbench or with `--no-ceiling`.
    pub(crate) ceiling: Option<Ceiling>,
    /// `--d-retry`: the executor's retry policy in D, if not D's own.
    pub(crate) d_retry: Option<RetryPolicy>,
}

impl Ctx {
    pub(crate) fn db(&self) -> anyhow::Result<&BenchDb> {
        self.db.as_ref().context("this scenario needs PostgreSQL")
    }

    /// The writer counts a sweeping scenario runs: `--writers` if given,
    /// else `quick` with `--quick`, else `full`.
    pub(crate) fn sweep(&self, quick: &[usize], full: &[usize]) -> Vec<usize> {
        match &self.writers {
            Some(w) => w.clone(),
            None if self.quick => quick.to_vec(),
            None => full.to_vec(),
        }
    }

    /// Runs `library` (a library measurement, which releases its store when
    /// done) between two pgbench runs of the write `script` at `clients`,
    /// and returns its result with the two ceiling runs combined. A ceiling
    /// that brackets its library run cancels the drift of this machine's
    /// fsync latency, which moves pgbench alone by +-10 % within minutes.
    pub(crate) async fn bracketed<T>(
        &mut self,
        script: &Script,
        clients: usize,
        library: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<(T, Option<CeilingResult>)> {
        let before = self.measure_ceiling(script, clients).await;
        let result = library.await?;
        let after = self.measure_ceiling(script, clients).await;
        let ceiling = match (before, after) {
            (Some(before), Some(after)) => Some(CeilingResult::combine(&before, &after)),
            (_, after) => after,
        };
        Ok((result, ceiling))
    }

    /// The pgbench figure for `script` at `clients`, measured now (reads:
    /// once per invocation), or `None` without a ceiling.
    pub(crate) async fn measure_ceiling(
        &mut self,
        script: &Script,
        clients: usize,
    ) -> Option<CeilingResult> {
        let (Some(ceiling), Some(db)) = (self.ceiling.as_mut(), self.db.as_ref()) else {
            return None;
        };
        ceiling
            .measure(db, script, clients, self.timing.measure)
            .await
    }

    /// A fresh store in `schema` seeded with `streams`, vacuumed, analyzed and
    /// checkpointed like the ceiling tables, its pool warm for `writers`.
    pub(crate) async fn prepared_store<E: Event>(
        &self,
        schema: &str,
        writers: usize,
        streams: &[StreamId],
        seed: impl Fn(usize) -> E,
    ) -> anyhow::Result<PostgresEventStore> {
        let db = self.db()?;
        let store = db.fresh_store(schema, writers).await?;
        seed_streams(&store, streams, seed).await?;
        db.settle(schema).await?;
        BenchDb::warm_pool(store.pool(), writers).await?;
        Ok(store)
    }
}

/// Releases a store's connections before the next run (and the ceiling).
pub(crate) async fn close(store: PostgresEventStore) {
    store.pool().close().await;
}
