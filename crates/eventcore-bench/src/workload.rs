//! The workload the write scenarios share: the event they append, the
//! streams they write to, and the workers that append (A, B, D, F, G) or
//! run commands (A-cmd, C, D, G).

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use eventcore::{
    AppendRequest, CacheableCommand, Command, CommandError, CommandExecutor, Decision, Error,
    Event, EventId, EventMetadata, EventStore, ExecutionOutcome, ExpectedVersion, GlobalPosition,
    NewEvent, RecordedEvent, RetryPolicy, StreamId,
    testing::bank::{AccountEvent, Transfer},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

use crate::{
    measure::{Measured, Outcome, Timing, Worker, drive},
    provision::STREAMS,
    report::{Row, round},
};

/// The event every write scenario appends: about 200 bytes of JSON, like
/// the ceiling's `payload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    order: u64,
    customer: String,
    sku: String,
    quantity: u32,
    price_cents: u64,
    currency: String,
    comment: String,
}

impl Event for OrderPlaced {
    fn event_type(&self) -> &'static str {
        "OrderPlaced"
    }
}

impl OrderPlaced {
    pub(crate) fn sample(order: u64) -> Self {
        Self {
            order: 1_000_000 + order % 1_000_000,
            customer: format!("customer-{:06}", order % 100_000),
            sku: "SKU-48213-BLUE-XL".into(),
            quantity: 3,
            price_cents: 12_999,
            currency: "EUR".into(),
            comment: "leave at the back door; ring twice; fragile, handle with care".into(),
        }
    }
}

/// The seed event of the `i`-th stream.
pub(crate) fn seed_order(i: usize) -> OrderPlaced {
    OrderPlaced::sample(i as u64)
}

/// The payload and metadata the ceiling sends, as JSON text: the same shape
/// and size as what the library writes.
pub(crate) fn ceiling_payload() -> (String, String) {
    let payload = serde_json::to_string(&OrderPlaced::sample(0)).expect("serializable");
    let meta = serde_json::to_string(&EventMetadata::new()).expect("serializable");
    (payload, meta)
}

/// `prefix-1` .. `prefix-n`.
pub(crate) fn stream_ids(prefix: &str, n: usize) -> anyhow::Result<Arc<[StreamId]>> {
    (1..=n)
        .map(|i| Ok(StreamId::new(format!("{prefix}-{i}"))?))
        .collect()
}

/// The 10,000 streams of the write scenarios.
pub(crate) fn write_streams() -> anyhow::Result<Arc<[StreamId]>> {
    stream_ids("stream", STREAMS)
}

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

/// A command's result as a worker's [`Outcome`]: running out of retries is
/// a conflict, any other error an error.
pub(crate) fn command_outcome<E: std::error::Error + Send + Sync + 'static>(
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
            command_outcome(self.executor.execute_cached(command).await)
        } else {
            command_outcome(self.executor.execute(command).await)
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
const OPENING_BALANCE: u64 = 1_000_000_000;

pub(crate) fn funded(_: usize) -> AccountEvent {
    AccountEvent::Deposited {
        amount: OPENING_BALANCE,
    }
}

/// A transfer row: events/s is 2 x transfers/s (a debit and a credit).
pub(crate) fn transfer_row(name: &str, writers: usize, m: &Measured) -> Row {
    let tx = m.per_sec(m.ops);
    Row::from_measured(name, writers, 2, m)
        .extra("transfers_per_sec", round(tx))
        .retries_per_sec(m)
        .note(format!("{tx:.0} transfers/s; events/s = 2 x transfers/s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_about_300_bytes_with_metadata() {
        let (payload, meta) = ceiling_payload();
        assert!((180..=220).contains(&payload.len()), "{}", payload.len());
        assert!((70..=120).contains(&meta.len()), "{}", meta.len());
    }
}
