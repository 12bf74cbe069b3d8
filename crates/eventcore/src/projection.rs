//! Projections: named read models that follow the global order with durable
//! checkpoints, one active runner per name, and an explicit policy for
//! events they cannot handle.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{
    Error, Event, EventFilter, EventStore, GlobalPosition, ReadBlocker, RecordedEvent, RetryPolicy,
    StoredEvent, StreamId, SubscriptionOptions, subscription::Subscription,
};

/// A boxed error from user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A read model built from events.
///
/// Delivery is **at least once**: after a crash the runner resumes from the
/// last saved checkpoint, so `apply` may see a few events again and must be
/// idempotent (upserts, or remembering the last position applied). A
/// projection that writes to the same PostgreSQL as the store can instead
/// commit its writes and its checkpoint in one transaction, fenced against
/// a runner that lost its lease, for an exactly-once effect (see
/// `PostgresCheckpointStore` in `eventcore-postgres`); with
/// [`apply_batch`](Projection::apply_batch) that is one transaction per page
/// of events rather than per event.
pub trait Projection: Send {
    /// The events it reads.
    type Event: Event;

    /// Unique name: the key of its checkpoint and of its runner lock.
    fn name(&self) -> &str;

    /// Which events to deliver. Default: all.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// What to do when `apply` fails or an event cannot be read or decoded.
    /// Default: retry 5 times with backoff, then stop the runner with the
    /// error.
    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::default()
    }

    /// Applies one event.
    fn apply(
        &mut self,
        event: RecordedEvent<Self::Event>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Applies several events, in global order: the runner hands over the
    /// events of each page it reads (those passing [`filter`](Self::filter)
    /// that decode), so a projection can write them in one transaction
    /// together with its checkpoint. The default calls
    /// [`apply`](Self::apply) for each in turn.
    ///
    /// If it fails, the runner delivers the batch's events again one at a
    /// time through `apply`, under the [`ErrorStrategy`], to find the event
    /// that fails. So a failed batch must have had no effect (its
    /// transaction rolled back), or it must say how many of its first events
    /// did take effect by returning [`PartialBatch`] (as the default does):
    /// those are not delivered again.
    fn apply_batch(
        &mut self,
        events: Vec<RecordedEvent<Self::Event>>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move {
            for (applied, event) in events.into_iter().enumerate() {
                if let Err(source) = self.apply(event).await {
                    return Err(Box::new(PartialBatch { applied, source }) as BoxError);
                }
            }
            Ok(())
        }
    }

    /// Forgets everything, before a rebuild from the first event.
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move { Ok(()) }
    }
}

/// A failed [`Projection::apply_batch`] whose first `applied` events took
/// effect: the runner goes on from the event after them, whose failure
/// `source` is (its first attempt under the [`ErrorStrategy`]).
#[derive(Debug, thiserror::Error)]
#[error("batch failed after {applied} events were applied: {source}")]
pub struct PartialBatch {
    /// How many events, from the first, took effect.
    pub applied: usize,
    /// Why the next one failed.
    #[source]
    pub source: BoxError,
}

/// How a runner treats an event its projection cannot handle: `apply`
/// fails, the event does not decode ([`Error::Decode`]), or its stored row
/// cannot be read at all ([`Error::CorruptRow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorStrategy {
    /// Retry with exponential backoff; after `max_attempts` stop the runner
    /// with [`Error::Projection`]. The event is never skipped. (An
    /// unreadable row is not retried: the runner stops with its
    /// [`Error::CorruptRow`].)
    Retry {
        /// Attempts in total.
        max_attempts: u32,
        /// First delay; doubles each time.
        base_delay: Duration,
    },
    /// Record the failure with the checkpoint store (visible to operators,
    /// `projection_skips` on PostgreSQL), move the checkpoint past the event
    /// and go on with the next one.
    Skip,
    /// Stop at once with [`Error::Projection`] (or the read's
    /// [`Error::CorruptRow`]).
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

/// An event passed without being applied: under [`ErrorStrategy::Skip`], or
/// by an operator ([`CheckpointStore::skip`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEvent {
    /// The projection that skipped it.
    pub projection: String,
    /// Its position.
    pub position: GlobalPosition,
    /// Its stream, when it is known (a row that cannot be read at all may
    /// not have a valid one).
    pub stream_id: Option<StreamId>,
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

    /// Resolves once the lease is lost; a runner stops at once when it
    /// does. The default asks [`is_held`](Self::is_held) every 250 ms;
    /// stores that learn of a loss sooner override it.
    async fn lost(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !self.is_held().await {
                return;
            }
        }
    }
}

/// Durable projection state: checkpoints, skipped events, runner leases.
///
/// A store whose leases can be lost (PostgreSQL) fences its writes:
/// [`save`](Self::save) and [`reset`](Self::reset) succeed only while this
/// handle holds the projection's lease and no other runner took it over
/// since; otherwise they fail with [`Error::LeaseLost`] and change nothing.
pub trait CheckpointStore: Send + Sync {
    /// The last position the projection finished, if any.
    fn load(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<GlobalPosition>, Error>> + Send;
    /// Records that everything up to `position` is done. Checkpoints only
    /// move forward.
    fn save(
        &self,
        projection: &str,
        position: GlobalPosition,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Forgets the checkpoint (for a rebuild).
    fn reset(&self, projection: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Records an event skipped under [`ErrorStrategy::Skip`].
    fn record_skip(&self, skipped: SkippedEvent) -> impl Future<Output = Result<(), Error>> + Send;
    /// Events skipped by `projection`.
    fn skipped(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<SkippedEvent>, Error>> + Send;
    /// Becomes the one active runner of `projection`, or `None` if another
    /// holds the role.
    fn try_acquire(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Box<dyn Lease>>, Error>> + Send;

    /// Records why a runner of `projection` stopped, and at which event
    /// if one caused it, for operators (`eventcore projections` lists the
    /// last one). Best effort: a runner logs a failure here and goes on.
    /// Default: nothing is kept.
    fn record_error(
        &self,
        projection: &str,
        position: Option<GlobalPosition>,
        error: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            let _ = (projection, position, error);
            Ok(())
        }
    }

    /// Whether an operator asked for `projection` to be rebuilt
    /// (`eventcore projections rebuild` on PostgreSQL). A runner that finds
    /// a request when it takes the lease resets the projection
    /// ([`Projection::reset`]) and then the checkpoint (which clears the
    /// request), and replays from the first event. Default: never.
    fn rebuild_requested(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        async move {
            let _ = projection;
            Ok(false)
        }
    }

    /// Passes a poison event by hand: records the event at `position` as
    /// skipped (with `reason`) and moves the checkpoint to it, so the next
    /// runner starts after it. For a runner that stopped on the event
    /// (under [`ErrorStrategy::Stop`] or `Retry`, or on an unreadable row).
    ///
    /// Refuses, with [`Error::Projection`] and changing nothing, while a
    /// runner of the projection is active, or when the checkpoint is
    /// already at or past `position` (checkpoints never move backwards).
    /// Stores that can check more do (PostgreSQL also refuses when there is
    /// no event at `position`, or when events between the checkpoint and it
    /// would be passed unrecorded).
    fn skip(
        &self,
        projection: &str,
        position: GlobalPosition,
        reason: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            let Some(lease) = self.try_acquire(projection).await? else {
                return Err(skip_refused(
                    projection,
                    position,
                    "a runner of the projection is active; stop it first".into(),
                ));
            };
            if let Some(at) = self.load(projection).await?
                && at >= position
            {
                return Err(skip_refused(
                    projection,
                    position,
                    format!("its checkpoint is already at {at}"),
                ));
            }
            self.record_skip(SkippedEvent {
                projection: projection.to_owned(),
                position,
                stream_id: None,
                error: format!("skipped by an operator: {reason}"),
            })
            .await?;
            self.save(projection, position).await?;
            drop(lease);
            Ok(())
        }
    }
}

/// The error of a refused [`CheckpointStore::skip`].
fn skip_refused(projection: &str, position: GlobalPosition, why: String) -> Error {
    Error::Projection {
        projection: projection.to_owned(),
        position: Some(position),
        stream_id: None,
        source: format!("cannot skip the event at {position}: {why}").into(),
    }
}

/// Checkpoints in memory, for tests and the in-memory store. Its leases
/// live as long as their [`Lease`] value, so they are never lost and its
/// writes need no fence.
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

    async fn lost(&self) {
        // Held until dropped.
        futures::future::pending().await
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.store.lock().leases.remove(&self.name);
    }
}

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
    /// Events read per query, and so at most per
    /// [`apply_batch`](Projection::apply_batch). Default 500.
    pub batch_size: usize,
    /// Longest wait for new events without a wake-up. Default 500 ms.
    pub poll_interval: Duration,
    /// Save the checkpoint once this many events were processed (checked
    /// after each page), after a skipped event, after 1 s without new
    /// events, and when the runner stops.
    /// Default 100. (A crash replays the events after the last save.)
    pub checkpoint_every: usize,
    /// How often a runner waiting for the lease tries again. Default 1 s.
    pub lease_retry: Duration,
    /// How long [`run_until_caught_up`](ProjectionRunner::run_until_caught_up)
    /// waits, without any new event becoming readable, for events it knows
    /// are committed (an open transaction holds readers back; see
    /// [`EventStore::read_blocker`]) before failing with
    /// [`Error::Projection`] whose source is a [`CatchUpTimeout`] naming
    /// what holds it back. `None` (the default): wait as long as it takes,
    /// logging a warning with what holds it back every 10 s.
    pub catch_up_timeout: Option<Duration>,
    /// Backoff for transient failures ([`Error::is_transient`]) of the
    /// runner's own store calls: loading and saving the checkpoint,
    /// recording skips, reading the head. Default: 10 attempts, 10 ms
    /// doubling to 2 s.
    pub retry: RetryPolicy,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            checkpoint_every: 100,
            lease_retry: Duration::from_secs(1),
            catch_up_timeout: None,
            retry: RetryPolicy::new()
                .base_delay(Duration::from_millis(10))
                .max_delay(Duration::from_secs(2)),
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

/// [`ProjectionRunner::run_until_caught_up`] waited longer than
/// [`RunnerOptions::catch_up_timeout`] for committed events that were not
/// readable: the source of the [`Error::Projection`] it returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CatchUpTimeout {
    /// The position it was to reach (the head when it started).
    pub target: GlobalPosition,
    /// The last position it finished.
    pub reached: Option<GlobalPosition>,
    /// How long nothing new was readable.
    pub waited: Duration,
    /// What held readers back when it gave up, if the store could tell.
    pub blocker: Option<ReadBlocker>,
}

impl fmt::Display for CatchUpTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events up to position {} are committed but were not readable for {:.1} s (reached {})",
            self.target,
            self.waited.as_secs_f64(),
            self.reached.unwrap_or(GlobalPosition::START),
        )?;
        match &self.blocker {
            Some(b) => write!(f, "; held back by {b}"),
            None => write!(f, "; the store reports nothing holding readers back"),
        }
    }
}

/// A runner that has had no new events for this long saves its checkpoint.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// How often a runner catching up checks whether it is stuck.
const STALL_CHECK: Duration = Duration::from_millis(250);
/// A runner catching up that found nothing new for this long says what it
/// waits for...
const STALL_WARNING: Duration = Duration::from_secs(1);
/// ...and repeats it at most this often.
const STALL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Runs a [`Projection`]: waits to become its one active runner, resumes
/// from its checkpoint, catches up, then follows new events live until
/// shut down.
///
/// Each page read is handed to [`Projection::apply_batch`] (the events that
/// pass the filter and decode); failures go through the projection's
/// [`ErrorStrategy`]. An event whose row cannot be read
/// ([`Error::CorruptRow`]) arrives after every event before it; under
/// [`ErrorStrategy::Skip`] it is recorded and passed, otherwise the runner
/// stops with it (an operator can then pass it with
/// [`CheckpointStore::skip`]).
///
/// If the lease is lost (its connection died, or another runner took
/// over), the runner stops at once with [`Error::LeaseLost`], without
/// saving anything more.
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

/// Where a run stands.
#[derive(Default)]
struct RunState {
    /// The last position finished (applied, filtered out or skipped).
    done: Option<GlobalPosition>,
    /// Events finished since the last checkpoint.
    unsaved: usize,
    /// A skip was recorded: save the checkpoint past it soon.
    skipped_since_save: bool,
    summary: RunSummary,
}

/// How far a page is finished.
struct PageCursor<'a> {
    page: &'a [StoredEvent],
    /// `page[..finished]` is done.
    finished: usize,
}

impl PageCursor<'_> {
    /// Marks `page[..upto]` done.
    fn advance(&mut self, run: &mut RunState, upto: usize) {
        if upto > self.finished {
            run.done = Some(self.page[upto - 1].position);
            run.unsaved += upto - self.finished;
            self.finished = upto;
        }
    }
}

/// What a runner waiting for its next page got.
enum Next {
    Page(Result<Vec<StoredEvent>, Error>),
    Shutdown,
    LeaseLost,
    /// Stuck catching up, or a checkpoint write while idle failed.
    Stalled(Error),
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
        self.run(shutdown, None, None).await
    }

    /// Processes every event committed before the call, then returns.
    ///
    /// Events committed before the call may not be readable yet while an
    /// older transaction is still open (see [`EventStore::read_blocker`]);
    /// the runner then waits, logs what holds it back, and gives up after
    /// [`RunnerOptions::catch_up_timeout`] if one is set.
    pub async fn run_until_caught_up(&mut self) -> Result<RunSummary, Error> {
        let name = self.projection.name().to_owned();
        let target = retry_transient(&self.options.retry, &name, "read the head", || {
            self.store.head_position()
        })
        .await?;
        self.run(futures::future::pending(), Some(target), None)
            .await
    }

    /// Resets the projection and its checkpoint, then catches up from the
    /// first event, holding the lease throughout.
    pub async fn rebuild(&mut self) -> Result<RunSummary, Error> {
        let name = self.projection.name().to_owned();
        let never = futures::future::pending::<()>();
        tokio::pin!(never);
        let Some(lease) = self.acquire(never).await? else {
            unreachable!("acquire gives up only on shutdown");
        };
        self.reset_for_rebuild(&name).await?;
        let target = retry_transient(&self.options.retry, &name, "read the head", || {
            self.store.head_position()
        })
        .await?;
        self.run(futures::future::pending(), Some(target), Some(lease))
            .await
    }

    /// Resets the projection, then its checkpoint (under the lease).
    async fn reset_for_rebuild(&mut self, name: &str) -> Result<(), Error> {
        if let Err(source) = self.projection.reset().await {
            if let Some(changed) = history_changed_in(&*source) {
                return Err(changed);
            }
            return Err(if lease_lost_in(&*source) {
                lease_lost(name)
            } else {
                projection_error(name, None, source)
            });
        }
        retry_transient(&self.options.retry, name, "reset the checkpoint", || {
            self.checkpoints.reset(name)
        })
        .await
    }

    /// Waits for the lease; `None` if `shutdown` came first.
    async fn acquire<F: Future<Output = ()>>(
        &self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<Option<Box<dyn Lease>>, Error> {
        let name = self.projection.name();
        loop {
            let attempt = tokio::select! {
                attempt = self.checkpoints.try_acquire(name) => attempt,
                () = &mut shutdown => return Ok(None),
            };
            match attempt {
                Ok(Some(lease)) => return Ok(Some(lease)),
                Ok(None) => tracing::debug!(projection = name, "another runner is active; waiting"),
                Err(e) if e.is_transient() => {
                    tracing::warn!(projection = name, error = %e, "cannot take the lease now; trying again");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.lease_retry) => {}
                () = &mut shutdown => return Ok(None),
            }
        }
    }

    async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        until: Option<GlobalPosition>,
        lease: Option<Box<dyn Lease>>,
    ) -> Result<RunSummary, Error> {
        tokio::pin!(shutdown);
        let lease = match lease {
            Some(lease) => lease,
            None => match self.acquire(shutdown.as_mut()).await? {
                Some(lease) => lease,
                None => return Ok(RunSummary::default()),
            },
        };
        let name = self.projection.name().to_owned();
        if retry_transient(&self.options.retry, &name, "ask for a rebuild", || {
            self.checkpoints.rebuild_requested(&name)
        })
        .await?
        {
            tracing::warn!(projection = %name, "an operator asked for a rebuild: resetting the projection");
            self.reset_for_rebuild(&name).await?;
        }
        let start = retry_transient(&self.options.retry, &name, "load the checkpoint", || {
            self.checkpoints.load(&name)
        })
        .await?;
        let mut run = RunState {
            done: start,
            summary: RunSummary {
                checkpoint: start,
                ..RunSummary::default()
            },
            ..RunState::default()
        };
        tracing::info!(projection = %name, from = ?start, "projection runner started");
        let options = SubscriptionOptions::default()
            .after(start.unwrap_or(GlobalPosition::START))
            .filter(EventFilter::all())
            .batch_size(self.options.batch_size)
            .poll_interval(self.options.poll_interval);
        let filter = self.projection.filter();
        let mut events = Subscription::new(self.store.clone(), options);
        let mut lost = lease.lost();
        let mut waiting_since = Instant::now();
        let mut warned_at = None;
        let mut outcome = loop {
            if let Some(target) = until
                && run.done.unwrap_or(GlobalPosition::START) >= target
            {
                break Ok(());
            }
            let next = {
                let page = events.next_page();
                tokio::pin!(page);
                let idle = tokio::time::sleep(IDLE_CHECKPOINT);
                tokio::pin!(idle);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut lost => break Next::LeaseLost,
                        () = &mut shutdown => break Next::Shutdown,
                        page = &mut page => break Next::Page(page),
                        // Caught up and nothing new: save what is done, so
                        // the checkpoint (and the lag operators see) does
                        // not trail behind while the store is quiet.
                        () = &mut idle, if run.unsaved > 0 => {
                            if let Err(e) = self.checkpoint(&name, &*lease, &mut run).await {
                                break Next::Stalled(e);
                            }
                        }
                        () = tokio::time::sleep(self.stall_check_every()), if until.is_some() => {
                            let target = until.unwrap_or(GlobalPosition::START);
                            if let Some(e) = self
                                .check_stall(&name, target, run.done, waiting_since, &mut warned_at)
                                .await
                            {
                                break Next::Stalled(e);
                            }
                        }
                    }
                }
            };
            let step = match next {
                Next::LeaseLost => break Err(lease_lost(&name)),
                Next::Shutdown => break Ok(()),
                Next::Stalled(e) => break Err(e),
                Next::Page(Ok(page)) => {
                    self.process_page(&name, &filter, &page, &*lease, &mut run)
                        .await
                }
                Next::Page(Err(e)) => self.pass_unreadable(&name, e, &mut run).await,
            };
            if let Err(e) = step {
                break Err(e);
            }
            if (run.unsaved >= self.options.checkpoint_every || run.skipped_since_save)
                && let Err(e) = self.checkpoint(&name, &*lease, &mut run).await
            {
                break Err(e);
            }
            waiting_since = Instant::now();
        };
        // Save what is done, unless another runner may own it by now.
        if run.unsaved > 0
            && !matches!(outcome, Err(Error::LeaseLost { .. }))
            && let Err(e) = self.checkpoint(&name, &*lease, &mut run).await
        {
            match outcome {
                Ok(()) => outcome = Err(e),
                Err(_) => {
                    tracing::warn!(projection = %name, error = %e, "cannot save the checkpoint of a failed run");
                }
            }
        }
        match &outcome {
            Ok(()) => {
                tracing::info!(projection = %name, applied = run.summary.applied, skipped = run.summary.skipped, "projection runner stopped");
            }
            Err(e) => {
                tracing::error!(projection = %name, applied = run.summary.applied, error = %e, "projection runner stopped on an error");
                crate::telemetry::projection_error(&name);
                if !matches!(e, Error::LeaseLost { .. })
                    && let Err(failed) = self
                        .checkpoints
                        .record_error(&name, e.position(), &error_chain(e))
                        .await
                {
                    tracing::warn!(projection = %name, error = %failed, "cannot record the runner's error");
                }
            }
        }
        outcome.map(|()| run.summary)
    }

    fn stall_check_every(&self) -> Duration {
        self.options
            .catch_up_timeout
            .map_or(STALL_CHECK, |t| t.min(STALL_CHECK))
    }

    /// While catching up with nothing new readable: says what holds readers
    /// back, and gives up past the catch-up timeout.
    async fn check_stall(
        &self,
        name: &str,
        target: GlobalPosition,
        reached: Option<GlobalPosition>,
        since: Instant,
        warned_at: &mut Option<Instant>,
    ) -> Option<Error> {
        let waited = since.elapsed();
        let expired = self.options.catch_up_timeout.is_some_and(|t| waited >= t);
        let warn = waited >= STALL_WARNING
            && warned_at.is_none_or(|at| at.elapsed() >= STALL_WARNING_EVERY);
        if !warn && !expired {
            return None;
        }
        let blocker = match self.store.read_blocker().await {
            Ok(blocker) => blocker,
            Err(e) => {
                tracing::debug!(projection = name, error = %e, "cannot ask the store what holds readers back");
                None
            }
        };
        if expired {
            return Some(Error::Projection {
                projection: name.to_owned(),
                position: None,
                stream_id: None,
                source: Box::new(CatchUpTimeout {
                    target,
                    reached,
                    waited,
                    blocker,
                }),
            });
        }
        *warned_at = Some(Instant::now());
        let holder = blocker.map_or_else(
            || "nothing the store can name".to_owned(),
            |b| b.to_string(),
        );
        tracing::warn!(
            projection = name,
            %target,
            reached = %reached.unwrap_or(GlobalPosition::START),
            waited_s = waited.as_secs_f64(),
            held_back_by = %holder,
            "catching up: committed events are not readable yet; waiting"
        );
        None
    }

    /// Saves the checkpoint at the last finished position.
    async fn checkpoint(
        &self,
        name: &str,
        lease: &dyn Lease,
        run: &mut RunState,
    ) -> Result<(), Error> {
        let Some(position) = run.done else {
            return Ok(());
        };
        if !lease.is_held().await {
            return Err(lease_lost(name));
        }
        retry_transient(&self.options.retry, name, "save the checkpoint", || {
            self.checkpoints.save(name, position)
        })
        .await?;
        crate::telemetry::projection_checkpoint(name, position);
        run.summary.checkpoint = Some(position);
        run.unsaved = 0;
        run.skipped_since_save = false;
        Ok(())
    }

    /// One page: batches of the events that pass the filter and decode,
    /// each event that does not decode on its own, in order.
    async fn process_page(
        &mut self,
        name: &str,
        filter: &EventFilter,
        page: &[StoredEvent],
        lease: &dyn Lease,
        run: &mut RunState,
    ) -> Result<(), Error> {
        let mut cursor = PageCursor { page, finished: 0 };
        let mut indexes = Vec::new();
        let mut batch = Vec::new();
        for (i, stored) in page.iter().enumerate() {
            if !filter.matches(stored) {
                continue;
            }
            match stored.decode::<P::Event>() {
                Ok(event) => {
                    indexes.push(i);
                    batch.push(event);
                }
                Err(e) => {
                    self.apply_events(
                        name,
                        &mut cursor,
                        &indexes,
                        std::mem::take(&mut batch),
                        lease,
                        run,
                    )
                    .await?;
                    indexes.clear();
                    cursor.advance(run, i);
                    self.deliver(name, stored, Some(Box::new(e)), lease, run)
                        .await?;
                    cursor.advance(run, i + 1);
                }
            }
        }
        self.apply_events(name, &mut cursor, &indexes, batch, lease, run)
            .await?;
        cursor.advance(run, page.len());
        crate::telemetry::projection_page(name, page);
        Ok(())
    }

    /// Applies `batch` (the events at `indexes` of the page) in one call;
    /// if that fails, delivers them one at a time to find the bad one.
    async fn apply_events(
        &mut self,
        name: &str,
        cursor: &mut PageCursor<'_>,
        indexes: &[usize],
        batch: Vec<RecordedEvent<P::Event>>,
        lease: &dyn Lease,
        run: &mut RunState,
    ) -> Result<(), Error> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let Err(source) = self.projection.apply_batch(batch).await else {
            crate::telemetry::projection_applied(name, n, started.elapsed());
            run.summary.applied += n as u64;
            cursor.advance(run, indexes[n - 1] + 1);
            return Ok(());
        };
        if let Some(changed) = history_changed_in(&*source) {
            return Err(changed);
        }
        if lease_lost_in(&*source) || !lease.is_held().await {
            return Err(lease_lost(name));
        }
        // Which event failed, if the batch says; its failure counts as its
        // first attempt.
        let (from, mut failure) = match source.downcast::<PartialBatch>() {
            Ok(partial) => (partial.applied.min(n - 1), Some(partial.source)),
            Err(source) if n == 1 => (0, Some(source)),
            Err(source) => {
                tracing::warn!(projection = name, events = n, error = %source, "batch failed; delivering its events one at a time");
                (0, None)
            }
        };
        if from > 0 {
            run.summary.applied += from as u64;
            cursor.advance(run, indexes[from - 1] + 1);
        }
        for &i in &indexes[from..] {
            self.deliver(name, &cursor.page[i], failure.take(), lease, run)
                .await?;
            cursor.advance(run, i + 1);
        }
        Ok(())
    }

    /// Applies one event under the projection's error strategy; `failed` is
    /// the failure of a first attempt already made.
    async fn deliver(
        &mut self,
        name: &str,
        stored: &StoredEvent,
        mut failed: Option<BoxError>,
        lease: &dyn Lease,
        run: &mut RunState,
    ) -> Result<(), Error> {
        let strategy = self.projection.error_strategy();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = match failed.take() {
                Some(failure) => Err(failure),
                None => match stored.decode::<P::Event>() {
                    Ok(event) => self.projection.apply(event).await,
                    Err(e) => Err(Box::new(e) as BoxError),
                },
            };
            let Err(source) = result else {
                crate::telemetry::projection_applied(name, 1, started.elapsed());
                run.summary.applied += 1;
                return Ok(());
            };
            if let Some(changed) = history_changed_in(&*source) {
                return Err(changed);
            }
            if lease_lost_in(&*source) || !lease.is_held().await {
                return Err(lease_lost(name));
            }
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
                    self.record_skip(SkippedEvent {
                        projection: name.to_owned(),
                        position: stored.position,
                        stream_id: Some(stored.stream_id.clone()),
                        error: error_chain(&*source),
                    })
                    .await?;
                    crate::telemetry::projection_skipped(name);
                    run.summary.skipped += 1;
                    run.skipped_since_save = true;
                    return Ok(());
                }
                _ => {
                    tracing::error!(projection = name, position = %stored.position, error = %source, "projection stopped on an event");
                    return Err(projection_error(name, Some(stored), source));
                }
            }
        }
    }

    /// A read that failed on one stored event (after delivering every event
    /// before it): passed and recorded under [`ErrorStrategy::Skip`],
    /// otherwise the runner stops with it.
    async fn pass_unreadable(
        &mut self,
        name: &str,
        e: Error,
        run: &mut RunState,
    ) -> Result<(), Error> {
        let skippable = matches!(e, Error::CorruptRow { .. } | Error::Decode { .. });
        let (Some(position), true, ErrorStrategy::Skip) =
            (e.position(), skippable, self.projection.error_strategy())
        else {
            return Err(e);
        };
        tracing::error!(projection = name, %position, error = %e, "projection skipped an unreadable event");
        let stream_id = match &e {
            Error::Decode { stream_id, .. } => Some(stream_id.clone()),
            _ => None,
        };
        self.record_skip(SkippedEvent {
            projection: name.to_owned(),
            position,
            stream_id,
            error: e.to_string(),
        })
        .await?;
        crate::telemetry::projection_skipped(name);
        run.summary.skipped += 1;
        run.skipped_since_save = true;
        run.done = Some(position);
        run.unsaved += 1;
        Ok(())
    }

    async fn record_skip(&self, skipped: SkippedEvent) -> Result<(), Error> {
        let name = skipped.projection.clone();
        retry_transient(&self.options.retry, &name, "record a skip", || {
            self.checkpoints.record_skip(skipped.clone())
        })
        .await
    }
}

/// Runs `op` until it succeeds, fails for good, or `policy` runs out on
/// transient failures, sleeping [`RetryPolicy::delay_after`] in between.
async fn retry_transient<T, F, Fut>(
    policy: &RetryPolicy,
    projection: &str,
    what: &'static str,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut failures = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && failures + 1 < policy.max_attempts => {
                failures += 1;
                let delay = policy.delay_after(failures);
                tracing::warn!(projection, what, attempt = failures, error = %e, retry_in = ?delay, "projection store call failed; retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// Whether `e`, or an error it wraps, is [`Error::LeaseLost`]: the
/// projection's own fenced write (`save_in` on PostgreSQL) found that
/// another runner took over.
fn lease_lost_in(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if matches!(e.downcast_ref::<Error>(), Some(Error::LeaseLost { .. })) {
            return true;
        }
        next = e.source();
    }
    false
}

/// [`Error::HistoryChanged`] if `e` is or wraps one (a projection's own
/// checkpoint write, `save_in` on PostgreSQL, found the store on another
/// history): no event is to blame and no error strategy applies, the
/// runner stops with it.
fn history_changed_in(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(Error::HistoryChanged {
            subject,
            recorded,
            current,
        }) = e.downcast_ref::<Error>()
        {
            return Some(Error::HistoryChanged {
                subject: subject.clone(),
                recorded: recorded.clone(),
                current: current.clone(),
            });
        }
        next = e.source();
    }
    None
}

/// `e` and its causes, joined by `: `, skipping causes its message already
/// includes.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        next = cause.source();
    }
    text
}

fn projection_error(name: &str, event: Option<&StoredEvent>, source: BoxError) -> Error {
    Error::Projection {
        projection: name.to_owned(),
        position: event.map(|e| e.position),
        stream_id: event.map(|e| e.stream_id.clone()),
        source,
    }
}

fn lease_lost(name: &str) -> Error {
    Error::LeaseLost {
        projection: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lost_is_found_inside_wrapped_errors() {
        let lost: BoxError = Box::new(lease_lost("p"));
        assert!(lease_lost_in(&*lost));
        let wrapped: BoxError = Box::new(PartialBatch {
            applied: 2,
            source: lost,
        });
        assert!(lease_lost_in(&*wrapped));
        let other: BoxError = "nope".into();
        assert!(!lease_lost_in(&*other));
    }

    #[test]
    fn a_changed_history_is_found_inside_wrapped_errors() {
        let changed = || Error::HistoryChanged {
            subject: "p".into(),
            recorded: "a".into(),
            current: "b".into(),
        };
        let wrapped: BoxError = Box::new(PartialBatch {
            applied: 1,
            source: Box::new(changed()),
        });
        assert!(matches!(
            history_changed_in(&*wrapped),
            Some(Error::HistoryChanged { recorded, current, .. }) if recorded == "a" && current == "b"
        ));
        assert!(
            history_changed_in(&*Box::<dyn std::error::Error + Send + Sync>::from("nope"))
                .is_none()
        );
    }
}
