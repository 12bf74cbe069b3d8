//! A and B: plain `EventStore::append`, the version read first and expected
//! exactly, like the ceiling scripts A_append1 and B_append10.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use eventcore::{
    AppendRequest, Error, EventId, EventMetadata, EventStore, ExpectedVersion, GlobalPosition,
    NewEvent, StreamId,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use super::{
    Ctx, Measured, OrderPlaced, Outcome, Timing, Worker, close, drive, seed_order, write_streams,
};
use crate::{db::Script, report::Row};

/// What the writers of scenario F note after each successful append: each
/// event's id, the append's last global position, and when it returned.
#[derive(Debug, Default)]
pub(crate) struct Stamps {
    pub(crate) log: Mutex<Vec<(EventId, GlobalPosition, Instant)>>,
    /// The highest position any append has returned so far.
    pub(crate) high: AtomicU64,
}

pub(crate) type StampLog = Arc<Stamps>;

/// Picks a random stream, reads its version, appends `per_append` events
/// expecting exactly that version. A conflict is counted, not retried.
pub(crate) struct AppendWorker<S> {
    store: S,
    streams: Arc<[StreamId]>,
    per_append: usize,
    rng: SmallRng,
    seq: u64,
    stamps: Option<StampLog>,
}

impl<S: EventStore + Clone + 'static> AppendWorker<S> {
    pub(crate) fn new(store: S, streams: Arc<[StreamId]>, per_append: usize, id: usize) -> Self {
        Self {
            store,
            streams,
            per_append,
            rng: SmallRng::seed_from_u64(0xA0 + id as u64),
            seq: (id as u64) << 32,
            stamps: None,
        }
    }

    /// Also records, right after each successful append returns, its events
    /// in `log` (scenario F).
    pub(crate) fn stamped(mut self, log: StampLog) -> Self {
        self.stamps = Some(log);
        self
    }
}

impl<S: EventStore + Clone + 'static> Worker for AppendWorker<S> {
    async fn op(&mut self) -> anyhow::Result<Outcome> {
        let stream = &self.streams[self.rng.random_range(0..self.streams.len())];
        let version = self.store.stream_version(stream).await?;
        let mut events = Vec::with_capacity(self.per_append);
        for _ in 0..self.per_append {
            self.seq += 1;
            events.push(NewEvent::new(
                &OrderPlaced::sample(self.seq),
                EventMetadata::new(),
            )?);
        }
        let ids: Vec<EventId> = match self.stamps {
            Some(_) => events.iter().map(|e| e.event_id).collect(),
            None => Vec::new(),
        };
        let request =
            AppendRequest::new().append(stream.clone(), ExpectedVersion::Exact(version), events);
        let result = self.store.append(request).await;
        if let (Ok(outcome), Some(stamps)) = (&result, &self.stamps) {
            let returned = Instant::now();
            let last = outcome
                .positions
                .map_or(GlobalPosition::START, |(_, last)| last);
            stamps.high.fetch_max(last.get(), Ordering::Relaxed);
            let mut log = stamps.log.lock().unwrap_or_else(|e| e.into_inner());
            log.extend(ids.into_iter().map(|id| (id, last, returned)));
        }
        match result {
            Ok(_) => Ok(Outcome::Ok {
                events: self.per_append as u64,
                retries: 0,
            }),
            Err(Error::Conflict(_)) => Ok(Outcome::Conflict { retries: 0 }),
            Err(e) => Err(e.into()),
        }
    }
}

/// `writers` [`AppendWorker`]s on `store` for one timed run.
pub(crate) async fn measure_appends<S: EventStore + Clone + 'static>(
    store: &S,
    streams: &Arc<[StreamId]>,
    writers: usize,
    per_append: usize,
    timing: Timing,
) -> anyhow::Result<Measured> {
    let workers = (0..writers)
        .map(|id| AppendWorker::new(store.clone(), streams.clone(), per_append, id))
        .collect();
    drive(workers, timing).await
}

/// One library run plus its ceiling: a fresh store seeded with the 10,000
/// streams, and pgbench on `script` at the same client count just before
/// and just after the library run.
async fn append_row(
    ctx: &mut Ctx,
    name: &str,
    script: &Script,
    writers: usize,
    per_append: usize,
) -> anyhow::Result<Row> {
    eprintln!("[{name}] {writers} writers, {per_append} events per append");
    let streams = write_streams()?;
    let schema = format!("bench_{}_w{writers}", name.to_lowercase());
    let store = ctx
        .prepared_store(&schema, writers, &streams, seed_order)
        .await?;
    ctx.ceiling_before(script, writers).await;
    let m = measure_appends(&store, &streams, writers, per_append, ctx.timing).await?;
    close(store).await;
    let ceiling = ctx.ceiling(script, writers).await;
    let mut row = Row::from_measured(name, writers, per_append, &m)
        .with_ceiling(ceiling.as_ref(), per_append as f64);
    if m.conflicts > 0 {
        row = row.note(format!(
            "{} version conflict(s) (counted, not retried)",
            m.conflicts
        ));
    }
    Ok(row)
}

pub(crate) async fn run_a(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers: &[usize] = if ctx.quick { &[1, 16] } else { &[1, 4, 16, 64] };
    let mut rows = Vec::new();
    for &w in writers {
        rows.push(append_row(ctx, "A", &Script::append1(), w, 1).await?);
    }
    Ok(rows)
}

pub(crate) async fn run_b(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers: &[usize] = if ctx.quick { &[16] } else { &[1, 16] };
    let mut rows = Vec::new();
    for per_append in [10, 100] {
        for &w in writers {
            let name = format!("B{per_append}");
            rows.push(append_row(ctx, &name, &Script::append_n(per_append), w, per_append).await?);
        }
    }
    Ok(rows)
}
