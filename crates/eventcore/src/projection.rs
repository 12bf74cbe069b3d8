//! Projections: named read models that follow the global order with durable
//! checkpoints, one active runner per name, and an explicit policy for
//! events they cannot handle.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;

use crate::{
    Error, Event, EventFilter, EventStore, GlobalPosition, RecordedEvent, StoredEvent, StreamId,
    SubscriptionOptions, subscribe,
};

/// A boxed error from user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A read model built from events.
///
/// Delivery is **at least once**: after a crash the runner resumes from the
/// last saved checkpoint, so `apply` may see a few events again and must be
/// idempotent (upserts, or remembering the last position applied). A
/// projection that writes to the same PostgreSQL as the store can instead
/// commit its writes and its checkpoint in one transaction for an
/// exactly-once effect (see `eventcore-postgres`).
#[async_trait]
pub trait Projection: Send {
    /// The events it reads.
    type Event: Event;

    /// Unique name: the key of its checkpoint and of its runner lock.
    fn name(&self) -> &str;

    /// Which events to deliver. Default: all.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// What to do when `apply` fails or an event does not decode. Default:
    /// retry 5 times with backoff, then stop the runner with the error.
    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::default()
    }

    /// Applies one event.
    async fn apply(&mut self, event: RecordedEvent<Self::Event>) -> Result<(), BoxError>;

    /// Forgets everything, before a rebuild from the first event.
    async fn reset(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// How a runner treats an event its projection cannot handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorStrategy {
    /// Retry with exponential backoff; after `max_attempts` stop the runner
    /// with [`Error::Projection`]. The event is never skipped.
    Retry {
        /// Attempts in total.
        max_attempts: u32,
        /// First delay; doubles each time.
        base_delay: Duration,
    },
    /// Record the failure with the checkpoint store (visible to operators)
    /// and go on with the next event.
    Skip,
    /// Stop at once with [`Error::Projection`].
    Stop,
}

impl Default for ErrorStrategy {
    fn default() -> Self {
        ErrorStrategy::Retry {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
        }
    }
}

/// A failure recorded under [`ErrorStrategy::Skip`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEvent {
    /// The projection that skipped it.
    pub projection: String,
    /// Its position.
    pub position: GlobalPosition,
    /// Its stream.
    pub stream_id: StreamId,
    /// Why it was skipped.
    pub error: String,
}

/// Proof that this process is the one active runner of a projection.
/// Dropping it gives the role up.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Whether the lease still holds (a PostgreSQL lease dies with its
    /// connection, for instance). A runner stops when it does not.
    async fn is_held(&self) -> bool;
}

/// Durable projection state: checkpoints, skipped events, runner leases.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The last position the projection finished, if any.
    async fn load(&self, projection: &str) -> Result<Option<GlobalPosition>, Error>;
    /// Records that everything up to `position` is done.
    async fn save(&self, projection: &str, position: GlobalPosition) -> Result<(), Error>;
    /// Forgets the checkpoint (for a rebuild).
    async fn reset(&self, projection: &str) -> Result<(), Error>;
    /// Records an event skipped under [`ErrorStrategy::Skip`].
    async fn record_skip(&self, skipped: SkippedEvent) -> Result<(), Error>;
    /// Events skipped by `projection`.
    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, Error>;
    /// Becomes the one active runner of `projection`, or `None` if another
    /// holds the role.
    async fn try_acquire(&self, projection: &str) -> Result<Option<Box<dyn Lease>>, Error>;
}

/// Checkpoints in memory, for tests and the in-memory store.
#[derive(Clone, Debug, Default)]
pub struct InMemoryCheckpointStore {
    inner: Arc<Mutex<MemoryCheckpoints>>,
}

#[derive(Debug, Default)]
struct MemoryCheckpoints {
    positions: HashMap<String, GlobalPosition>,
    skipped: Vec<SkippedEvent>,
    leases: HashSet<String>,
}

impl InMemoryCheckpointStore {
    /// An empty checkpoint store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryCheckpoints> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct MemoryLease {
    name: String,
    store: InMemoryCheckpointStore,
}

#[async_trait]
impl Lease for MemoryLease {
    async fn is_held(&self) -> bool {
        self.store.lock().leases.contains(&self.name)
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.store.lock().leases.remove(&self.name);
    }
}

#[async_trait]
impl CheckpointStore for InMemoryCheckpointStore {
    async fn load(&self, projection: &str) -> Result<Option<GlobalPosition>, Error> {
        Ok(self.lock().positions.get(projection).copied())
    }

    async fn save(&self, projection: &str, position: GlobalPosition) -> Result<(), Error> {
        let mut inner = self.lock();
        let entry = inner.positions.entry(projection.to_owned()).or_default();
        *entry = (*entry).max(position);
        Ok(())
    }

    async fn reset(&self, projection: &str) -> Result<(), Error> {
        self.lock().positions.remove(projection);
        Ok(())
    }

    async fn record_skip(&self, skipped: SkippedEvent) -> Result<(), Error> {
        self.lock().skipped.push(skipped);
        Ok(())
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, Error> {
        Ok(self
            .lock()
            .skipped
            .iter()
            .filter(|s| s.projection == projection)
            .cloned()
            .collect())
    }

    async fn try_acquire(&self, projection: &str) -> Result<Option<Box<dyn Lease>>, Error> {
        if self.lock().leases.insert(projection.to_owned()) {
            Ok(Some(Box::new(MemoryLease {
                name: projection.to_owned(),
                store: self.clone(),
            })))
        } else {
            Ok(None)
        }
    }
}

/// Settings of a [`ProjectionRunner`].
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Events read per query. Default 500.
    pub batch_size: usize,
    /// Longest wait for new events without a wake-up. Default 500 ms.
    pub poll_interval: Duration,
    /// Save the checkpoint after this many events, and when the runner
    /// stops. Default 100. (A crash replays at most this many events.)
    pub checkpoint_every: usize,
    /// How often a runner waiting for the lease tries again. Default 1 s.
    pub lease_retry: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            checkpoint_every: 100,
            lease_retry: Duration::from_secs(1),
        }
    }
}

/// What a runner did before it returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Events applied.
    pub applied: u64,
    /// Events skipped under [`ErrorStrategy::Skip`].
    pub skipped: u64,
    /// The last checkpoint saved.
    pub checkpoint: Option<GlobalPosition>,
}

/// Runs a [`Projection`]: waits to become its one active runner, resumes
/// from its checkpoint, catches up, then follows new events live until
/// shut down.
///
/// ```
/// use eventcore::{
///     BoxError, InMemoryCheckpointStore, InMemoryEventStore, Projection, ProjectionRunner,
///     RecordedEvent, StreamId, testing::{bank::AccountEvent, seed},
/// };
///
/// #[derive(Default)]
/// struct Deposits { total: u64 }
///
/// #[async_trait::async_trait]
/// impl Projection for Deposits {
///     type Event = AccountEvent;
///     fn name(&self) -> &str { "deposits" }
///     async fn apply(&mut self, e: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
///         if let AccountEvent::Deposited { amount } = e.event { self.total += amount; }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// seed(&store, &StreamId::new("account-1")?, [AccountEvent::Deposited { amount: 7 }]).await?;
/// let mut runner = ProjectionRunner::new(Deposits::default(), store, InMemoryCheckpointStore::new());
/// let summary = runner.run_until_caught_up().await?;
/// assert_eq!(summary.applied, 1);
/// assert_eq!(runner.projection().total, 7);
/// # Ok(()) }
/// ```
pub struct ProjectionRunner<P, S, C> {
    projection: P,
    store: S,
    checkpoints: C,
    options: RunnerOptions,
}

impl<P, S, C> ProjectionRunner<P, S, C>
where
    P: Projection,
    S: EventStore + Clone,
    C: CheckpointStore,
{
    /// A runner with default [`RunnerOptions`].
    pub fn new(projection: P, store: S, checkpoints: C) -> Self {
        Self {
            projection,
            store,
            checkpoints,
            options: RunnerOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// The projection (its read model).
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Consumes the runner, returning the projection.
    pub fn into_projection(self) -> P {
        self.projection
    }

    /// Follows events until `shutdown` resolves, then saves the checkpoint,
    /// gives up the lease and returns. Waits first if another runner of the
    /// same name is active, taking over when it stops or dies.
    pub async fn run_continuous(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunSummary, Error> {
        self.run(shutdown, None).await
    }

    /// Processes every event committed before the call, then returns.
    pub async fn run_until_caught_up(&mut self) -> Result<RunSummary, Error> {
        let target = self.store.head_position().await?;
        self.run(futures::future::pending(), Some(target)).await
    }

    /// Resets the projection and its checkpoint, then catches up from the
    /// first event.
    pub async fn rebuild(&mut self) -> Result<RunSummary, Error> {
        let name = self.projection.name().to_owned();
        let _lease = self.acquire(futures::future::pending::<()>()).await?;
        self.projection
            .reset()
            .await
            .map_err(|source| projection_error(&name, None, source))?;
        self.checkpoints.reset(&name).await?;
        drop(_lease);
        self.run_until_caught_up().await
    }

    async fn acquire(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Option<Box<dyn Lease>>, Error> {
        let name = self.projection.name();
        tokio::pin!(shutdown);
        loop {
            if let Some(lease) = self.checkpoints.try_acquire(name).await? {
                return Ok(Some(lease));
            }
            tracing::debug!(projection = name, "another runner is active; waiting");
            tokio::select! {
                _ = tokio::time::sleep(self.options.lease_retry) => {}
                _ = &mut shutdown => return Ok(None),
            }
        }
    }

    async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        until: Option<GlobalPosition>,
    ) -> Result<RunSummary, Error> {
        tokio::pin!(shutdown);
        let Some(lease) = self.acquire(&mut shutdown).await? else {
            return Ok(RunSummary::default());
        };
        let name = self.projection.name().to_owned();
        let start = self.checkpoints.load(&name).await?;
        let mut summary = RunSummary {
            checkpoint: start,
            ..RunSummary::default()
        };
        tracing::info!(projection = %name, from = ?start, "projection runner started");
        let options = SubscriptionOptions::default()
            .after(start.unwrap_or(GlobalPosition::START))
            .filter(EventFilter::all())
            .batch_size(self.options.batch_size)
            .poll_interval(self.options.poll_interval);
        let filter = self.projection.filter();
        let mut events = Box::pin(subscribe(self.store.clone(), options));
        let mut position = start;
        let mut unsaved = 0usize;
        loop {
            if until.is_some_and(|target| position.unwrap_or(GlobalPosition::START) >= target) {
                break;
            }
            let next = tokio::select! {
                next = events.next() => next,
                _ = &mut shutdown => break,
            };
            let stored = match next {
                Some(Ok(stored)) => stored,
                Some(Err(e)) => return Err(e),
                None => break,
            };
            if filter.matches(&stored) {
                match self.deliver(&name, &stored).await? {
                    Delivery::Applied => summary.applied += 1,
                    Delivery::Skipped => summary.skipped += 1,
                }
            }
            position = Some(stored.position);
            unsaved += 1;
            if unsaved >= self.options.checkpoint_every {
                if !lease.is_held().await {
                    return Err(lost_lease(&name));
                }
                self.checkpoints.save(&name, stored.position).await?;
                summary.checkpoint = position;
                unsaved = 0;
            }
        }
        if let Some(p) = position.filter(|_| unsaved > 0)
            && lease.is_held().await
        {
            self.checkpoints.save(&name, p).await?;
            summary.checkpoint = position;
        }
        tracing::info!(projection = %name, applied = summary.applied, "projection runner stopped");
        Ok(summary)
    }

    /// Applies one event under the projection's error strategy.
    async fn deliver(&mut self, name: &str, stored: &StoredEvent) -> Result<Delivery, Error> {
        let strategy = self.projection.error_strategy();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match stored.decode::<P::Event>() {
                Ok(event) => self.projection.apply(event).await,
                Err(e) => Err(Box::new(e) as BoxError),
            };
            let Err(source) = result else {
                return Ok(Delivery::Applied);
            };
            match &strategy {
                ErrorStrategy::Retry {
                    max_attempts,
                    base_delay,
                } if attempt < *max_attempts => {
                    let delay = base_delay.saturating_mul(1 << (attempt - 1).min(10));
                    tracing::warn!(projection = name, position = %stored.position, attempt, error = %source, "projection failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                ErrorStrategy::Skip => {
                    tracing::error!(projection = name, position = %stored.position, stream = %stored.stream_id, error = %source, "projection skipped an event");
                    self.checkpoints
                        .record_skip(SkippedEvent {
                            projection: name.to_owned(),
                            position: stored.position,
                            stream_id: stored.stream_id.clone(),
                            error: source.to_string(),
                        })
                        .await?;
                    return Ok(Delivery::Skipped);
                }
                _ => {
                    tracing::error!(projection = name, position = %stored.position, error = %source, "projection stopped on an event");
                    return Err(projection_error(name, Some(stored), source));
                }
            }
        }
    }
}

enum Delivery {
    Applied,
    Skipped,
}

fn projection_error(name: &str, event: Option<&StoredEvent>, source: BoxError) -> Error {
    Error::Projection {
        projection: name.to_owned(),
        position: event.map(|e| e.position),
        stream_id: event.map(|e| e.stream_id.clone()),
        source,
    }
}

fn lost_lease(name: &str) -> Error {
    Error::Projection {
        projection: name.to_owned(),
        position: None,
        stream_id: None,
        source: "the runner lost its lease (another runner may have taken over)".into(),
    }
}
