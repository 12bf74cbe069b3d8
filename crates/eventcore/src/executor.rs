//! Runs commands: read, fold, decide, append, retry.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use lru::LruCache;
use tracing::Instrument;

use crate::{
    AppendOutcome, AppendRequest, Command, CommandError, Decision, Error, EventMetadata,
    EventStore, ExpectedVersion, NewEvent, RetryPolicy, Snapshot, SnapshotPlan, SnapshotStore,
    StreamId, StreamVersion,
};

/// The error for a policy spent on `last`, telling a possible commit apart.
fn exhausted<E>(attempts: u32, last: Error, in_doubt: Option<AppendRequest>) -> CommandError<E> {
    match in_doubt {
        Some(request) => CommandError::MaybeCommitted {
            attempts,
            last,
            request: Box::new(request),
        },
        None => CommandError::RetriesExhausted { attempts, last },
    }
}

/// How many times one execution may discover new streams to read before it
/// is considered a runaway command.
const MAX_DISCOVERY_ROUNDS: usize = 32;

/// What a successful execution did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionOutcome {
    /// The append's outcome; `None` when the command decided on no events.
    pub append: Option<AppendOutcome>,
    /// Number of events written.
    pub events_written: usize,
    /// How many times the command was run or its append sent (1 = first
    /// try): `1 + conflicts + transient_retries`.
    pub attempts: u32,
    /// Attempts that lost an optimistic-concurrency race: another writer
    /// changed a stream the command read, so it re-read and decided again.
    /// Many of them mean a hot stream.
    pub conflicts: u32,
    /// Attempts repeated after a transient fault (a dropped connection, a
    /// serialization failure, an append whose answer was lost and was sent
    /// again). Many of them mean an unhealthy store, not contention.
    pub transient_retries: u32,
}

/// Executes [`Command`]s against an [`EventStore`].
///
/// ```
/// # use eventcore::{Command, Decision, Event, RecordedEvent, StreamId};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum Counter { Incremented }
/// # impl Event for Counter { fn event_type(&self) -> &'static str { "Incremented" } }
/// # struct Increment { counter: StreamId }
/// # impl Command for Increment {
/// #     type Event = Counter; type State = u64; type Error = std::convert::Infallible;
/// #     fn read_streams(&self) -> Vec<StreamId> { vec![self.counter.clone()] }
/// #     fn apply(&self, n: &mut u64, _: &RecordedEvent<Counter>) { *n += 1; }
/// #     fn handle(&self, _: &u64, d: &mut Decision<Counter>) -> Result<(), Self::Error> {
/// #         d.emit(&self.counter, Counter::Incremented); Ok(())
/// #     }
/// # }
/// use eventcore::{CommandExecutor, EventStore, InMemoryEventStore};
///
/// # tokio_test_block_on(async {
/// let executor = CommandExecutor::new(InMemoryEventStore::new());
/// let counter = StreamId::new("counter-1")?;
/// executor.execute(Increment { counter: counter.clone() }).await?;
/// executor.execute(Increment { counter: counter.clone() }).await?;
/// assert_eq!(executor.store().stream_version(&counter).await?.get(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
///
/// ## Keeping long and hot streams cheap
///
/// A command reads every event of its streams, so its cost grows with them.
/// Two remedies, which combine:
///
/// * **The state cache**, [`execute_cached`](Self::execute_cached): the
///   executor keeps the folded state of recent commands in memory (the
///   [`state_cache_capacity`](Self::with_state_cache_capacity) most
///   recently used, 10,000 by default) and reads only newer events. For hot
///   streams that one process writes again and again. Lost on restart, and
///   not shared between processes.
/// * **Durable snapshots**, [`with_snapshots`](Self::with_snapshots): a
///   [`State`](crate::State) type that opts in
///   ([`State::snapshots`](crate::State::snapshots)) is saved every N events
///   of a stream, and a command loads the latest snapshot and reads only
///   the events after it. For long streams: every process, and every
///   restart, starts from the snapshot.
#[derive(Clone)]
pub struct CommandExecutor<S> {
    store: S,
    retry: RetryPolicy,
    cache: Arc<StateCache>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
}

impl<S: fmt::Debug> fmt::Debug for CommandExecutor<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("store", &self.store)
            .field("retry", &self.retry)
            .field("cache", &self.cache)
            .field("snapshots", &self.snapshots.is_some())
            .finish()
    }
}

/// Folded state plus the version each stream was read at.
struct Folded<C: Command> {
    state: C::State,
    streams: Vec<StreamId>,
    versions: HashMap<StreamId, StreamVersion>,
    /// The version of each stream's last snapshot, loaded or taken.
    snapshot_at: HashMap<StreamId, StreamVersion>,
}

impl<C: Command> Folded<C> {
    fn fresh(command: &C) -> Self {
        let mut streams = Vec::new();
        for stream in command.read_streams() {
            if !streams.contains(&stream) {
                streams.push(stream);
            }
        }
        Self {
            state: C::State::default(),
            streams,
            versions: HashMap::new(),
            snapshot_at: HashMap::new(),
        }
    }
}

impl<C: Command<State: Clone>> Clone for Folded<C> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            streams: self.streams.clone(),
            versions: self.versions.clone(),
            snapshot_at: self.snapshot_at.clone(),
        }
    }
}

/// Counts of an execution's repeated attempts.
#[derive(Default)]
struct Retries {
    conflicts: u32,
    transient: u32,
}

/// A command whose folded state may be cached between executions, so a
/// command on a long stream reads only the events added since the last run
/// ([`CommandExecutor::execute_cached`]).
///
/// **The key is a promise**: two commands with equal keys (and the same
/// type) must fold the same events into the same state, whatever else
/// differs between them. Put into it every field `read_streams` and
/// `apply` depend on (typically the stream ids), and nothing `handle` alone
/// uses (amounts and the like).
pub trait CacheableCommand: Command<State: Clone> + 'static {
    /// Identifies the folded state.
    fn state_key(&self) -> String;
}

/// Most folded states [`CommandExecutor::execute_cached`] keeps by
/// default; past it the least recently used one is dropped.
const STATE_CACHE_CAPACITY: usize = 10_000;

type CacheKey = (TypeId, String);

/// Folded states by command type and key, least recently used evicted
/// first, shared by clones of an executor.
struct StateCache {
    /// Shared, so the lock is held only to look up or swap an entry; the
    /// copy an execution folds into is made outside it.
    entries: Mutex<LruCache<CacheKey, Arc<dyn Any + Send + Sync>>>,
}

impl StateCache {
    fn new(capacity: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<CacheKey, Arc<dyn Any + Send + Sync>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for StateCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.lock();
        f.debug_struct("StateCache")
            .field("len", &entries.len())
            .field("capacity", &entries.cap())
            .finish()
    }
}

impl<S: EventStore> CommandExecutor<S> {
    /// An executor with the default [`RetryPolicy`].
    pub fn new(store: S) -> Self {
        let capacity = NonZeroUsize::new(STATE_CACHE_CAPACITY).expect("non-zero");
        Self {
            store,
            retry: RetryPolicy::default(),
            cache: Arc::new(StateCache::new(capacity)),
            snapshots: None,
        }
    }

    /// Bounds [`execute_cached`](Self::execute_cached)'s cache to
    /// `capacity` folded states (default 10,000; at least 1), evicting the
    /// least recently used. Starts an empty cache, not shared with clones
    /// made before.
    pub fn with_state_cache_capacity(mut self, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        self.cache = Arc::new(StateCache::new(capacity));
        self
    }

    /// Loads and saves durable snapshots of the states that opt in
    /// ([`State::snapshots`](crate::State::snapshots)) in `snapshots`: a
    /// command starts from each stream's latest snapshot and reads only the
    /// events after it, and saves a new one once a stream has grown by the
    /// state's interval. A snapshot that cannot be loaded, decoded or saved
    /// is logged and the events are folded instead.
    pub fn with_snapshots(mut self, snapshots: impl SnapshotStore + 'static) -> Self {
        self.snapshots = Some(Arc::new(snapshots));
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs `command` with fresh metadata (a new correlation id).
    pub async fn execute<C: Command>(
        &self,
        command: C,
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        self.execute_with(command, EventMetadata::new()).await
    }

    /// Runs `command`, stamping every new event with `metadata`.
    pub async fn execute_with<C: Command>(
        &self,
        command: C,
        metadata: EventMetadata,
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        let span = tracing::debug_span!(
            "eventcore.execute",
            command = std::any::type_name::<C>(),
            correlation_id = %metadata.correlation_id,
        );
        self.run(&command, metadata, Folded::fresh(&command), |_| {})
            .instrument(span)
            .await
    }

    /// Like [`execute`](Self::execute), but starts from the state cached by
    /// the last successful execution with the same [`state_key`]
    /// (`CacheableCommand::state_key`) and reads only newer events. Worth it
    /// for long or hot streams (see [the type's docs](Self) for the other
    /// way, snapshots). The cache keeps the most recently used states, up
    /// to [`with_state_cache_capacity`](Self::with_state_cache_capacity).
    ///
    /// [`state_key`]: CacheableCommand::state_key
    pub async fn execute_cached<C: CacheableCommand>(
        &self,
        command: C,
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        let key = (TypeId::of::<C>(), command.state_key());
        let cached = self.cache.lock().get(&key).cloned();
        let start = cached
            .as_deref()
            .and_then(|entry| entry.downcast_ref::<Folded<C>>())
            .cloned()
            .unwrap_or_else(|| Folded::fresh(&command));
        let span = tracing::debug_span!(
            "eventcore.execute",
            command = std::any::type_name::<C>(),
            cached = true
        );
        let cache = &self.cache;
        self.run(&command, EventMetadata::new(), start, move |folded| {
            let folded = Arc::new(folded);
            let mut entries = cache.lock();
            // Keep the freshest state: concurrent executions may finish
            // out of order.
            let newer = entries
                .peek(&key)
                .and_then(|entry| entry.downcast_ref::<Folded<C>>())
                .is_none_or(|old| {
                    old.versions
                        .iter()
                        .all(|(s, v)| folded.versions.get(s).is_some_and(|n| n >= v))
                });
            if newer {
                // The replaced or evicted state is dropped after the lock
                // is released.
                let old = entries.push(key, folded);
                drop(entries);
                drop(old);
            }
        })
        .instrument(span)
        .await
    }

    /// Reads, decides and appends, starting from `folded`; `on_success`
    /// is handed the state the successful decision was made on.
    ///
    /// The retry policy counts every attempt (a re-read, a re-run after a
    /// conflict, a re-send) against one budget of attempts and time.
    async fn run<C: Command>(
        &self,
        command: &C,
        metadata: EventMetadata,
        mut folded: Folded<C>,
        on_success: impl FnOnce(Folded<C>),
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        let started = tokio::time::Instant::now();
        let plan = match &self.snapshots {
            Some(store) => command.snapshot_plan().map(|plan| (&**store, plan)),
            None => None,
        };
        let mut attempt = 0u32;
        let mut retries = Retries::default();
        // An append that was sent and whose outcome is unknown, until a
        // later send of the same request settles it.
        let mut in_doubt: Option<AppendRequest> = None;
        loop {
            attempt += 1;
            let request = match in_doubt.clone() {
                // Re-send, never re-decide: the first send may have
                // committed, and new events would then be written twice.
                Some(request) => request,
                None => {
                    let plan = plan.as_ref().map(|(store, plan)| (*store, plan));
                    let decided = match self.catch_up(command, &mut folded, plan).await {
                        Ok(()) => self.decide(command, &mut folded, &metadata, plan).await,
                        Err(e) => Err(e.into()),
                    };
                    match decided {
                        Ok(Some(request)) => request,
                        Ok(None) => {
                            return Ok(ExecutionOutcome {
                                append: None,
                                events_written: 0,
                                attempts: attempt,
                                conflicts: retries.conflicts,
                                transient_retries: retries.transient,
                            });
                        }
                        // Reads are safe to repeat: a transient read failure
                        // re-runs the attempt from where the snapshot got to.
                        Err(CommandError::Store(e)) if e.is_transient() => {
                            match self.retry.next_delay(attempt, started.elapsed()) {
                                Some(delay) => {
                                    tracing::debug!(attempt, error = %e, "transient read failure; retrying");
                                    retries.transient += 1;
                                    crate::telemetry::command_retry("transient");
                                    tokio::time::sleep(delay).await;
                                    continue;
                                }
                                None => return Err(exhausted(attempt, e, None)),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let events_written = request.event_count();
            let result = self.store.append(request.clone()).await;
            match result {
                Ok(append) => {
                    on_success(folded);
                    return Ok(ExecutionOutcome {
                        append: Some(append),
                        events_written,
                        attempts: attempt,
                        conflicts: retries.conflicts,
                        transient_retries: retries.transient,
                    });
                }
                Err(e) => {
                    if e.may_have_committed() {
                        in_doubt = Some(request);
                    } else if e.as_conflict().is_some() {
                        // A store reports a conflict only after checking
                        // that none of the events is stored (a re-send of
                        // a committed append is answered as a replay), so
                        // no earlier send committed either.
                        in_doubt = None;
                    }
                    // Any other failure settles nothing: an earlier send
                    // may still have committed.
                    let retryable = e.is_transient() || e.as_conflict().is_some();
                    let delay = if retryable {
                        self.retry.next_delay(attempt, started.elapsed())
                    } else {
                        None
                    };
                    match delay {
                        Some(delay) => {
                            tracing::debug!(attempt, error = %e, "append failed; retrying");
                            if e.as_conflict().is_some() {
                                retries.conflicts += 1;
                                crate::telemetry::command_retry("conflict");
                            } else {
                                retries.transient += 1;
                                crate::telemetry::command_retry("transient");
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                        }
                        None if retryable || in_doubt.is_some() => {
                            return Err(exhausted(attempt, e, in_doubt));
                        }
                        None => return Err(CommandError::Store(e)),
                    }
                }
            }
        }
    }

    /// Reads whatever each stream gained since it was last read and folds it
    /// in, so a retry after a conflict costs only the new events. Streams
    /// never read start from their snapshot, when there is a `plan`; streams
    /// that grew by the plan's interval since their last snapshot get a new
    /// one.
    async fn catch_up<C: Command>(
        &self,
        command: &C,
        folded: &mut Folded<C>,
        plan: Option<(&dyn SnapshotStore, &SnapshotPlan<C::State>)>,
    ) -> Result<(), Error> {
        if let Some((store, plan)) = plan {
            load_snapshots(store, plan, folded).await;
        }
        let from: Vec<(StreamId, StreamVersion)> = folded
            .streams
            .iter()
            .map(|s| {
                let known = folded.versions.get(s).copied().unwrap_or_default();
                (s.clone(), known.next())
            })
            .collect();
        // Decode everything before folding anything, so a bad event leaves
        // the state as it was.
        let mut decoded = Vec::with_capacity(from.len());
        for events in self.store.read_streams_to_end(&from).await? {
            let typed = events
                .iter()
                .map(|e| e.decode::<C::Event>())
                .collect::<Result<Vec<_>, _>>()?;
            decoded.push(typed);
        }
        for ((stream, from), events) in from.into_iter().zip(decoded) {
            let mut version = from.get().saturating_sub(1);
            for recorded in &events {
                command.apply(&mut folded.state, recorded);
                version = recorded.stream_version.get();
            }
            folded.versions.insert(stream, StreamVersion::new(version));
        }
        if let Some((store, plan)) = plan {
            save_snapshots(store, plan, folded).await;
        }
        Ok(())
    }

    /// Runs `handle` until it stops asking for more streams, then builds the
    /// append. `None` when it decided on no events.
    async fn decide<C: Command>(
        &self,
        command: &C,
        folded: &mut Folded<C>,
        metadata: &EventMetadata,
        plan: Option<(&dyn SnapshotStore, &SnapshotPlan<C::State>)>,
    ) -> Result<Option<AppendRequest>, CommandError<C::Error>> {
        for _ in 0..MAX_DISCOVERY_ROUNDS {
            let mut decision = Decision::new(folded.streams.clone());
            command
                .handle(&folded.state, &mut decision)
                .map_err(CommandError::Rejected)?;
            let (events, more) = decision.into_parts();
            if !more.is_empty() {
                folded.streams.extend(more);
                self.catch_up(command, folded, plan).await?;
                continue;
            }
            if events.is_empty() {
                return Ok(None);
            }
            let mut per_stream: HashMap<StreamId, Vec<NewEvent>> = HashMap::new();
            for (stream, event) in events {
                if !folded.versions.contains_key(&stream) {
                    return Err(Error::UndeclaredStream { stream_id: stream }.into());
                }
                let new = NewEvent::new(&event, metadata.clone())?;
                per_stream.entry(stream).or_default().push(new);
            }
            // Every stream read gets an expectation, written or not: that is
            // what rules out write skew.
            let mut request = AppendRequest::new();
            for stream in &folded.streams {
                let expected = ExpectedVersion::from_read(folded.versions[stream]);
                let events = per_stream.remove(stream).unwrap_or_default();
                request = request.append(stream.clone(), expected, events);
            }
            return Ok(Some(request));
        }
        Err(Error::InvalidAppend {
            reason: format!(
                "command kept asking for more streams after {MAX_DISCOVERY_ROUNDS} rounds"
            ),
        }
        .into())
    }
}

/// Starts the streams of `folded` that were never read from their latest
/// snapshot. A snapshot that cannot be loaded or decoded is logged and
/// skipped: the stream is then folded from its first event.
async fn load_snapshots<C: Command>(
    store: &dyn SnapshotStore,
    plan: &SnapshotPlan<C::State>,
    folded: &mut Folded<C>,
) {
    let unread: Vec<StreamId> = folded
        .streams
        .iter()
        .filter(|s| !folded.versions.contains_key(*s))
        .cloned()
        .collect();
    if unread.is_empty() {
        return;
    }
    let found = match store.load(plan.name, plan.version, &unread).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(state = plan.name, error = %e, "cannot load snapshots; folding the events instead");
            return;
        }
    };
    for snapshot in found {
        // Only what was asked for, once.
        if !unread.contains(&snapshot.stream_id)
            || folded.versions.contains_key(&snapshot.stream_id)
        {
            continue;
        }
        match (plan.restore)(&mut folded.state, &snapshot) {
            Ok(()) => {
                folded
                    .versions
                    .insert(snapshot.stream_id.clone(), snapshot.stream_version);
                folded
                    .snapshot_at
                    .insert(snapshot.stream_id, snapshot.stream_version);
            }
            Err(e) => {
                tracing::warn!(
                    state = plan.name,
                    stream = %snapshot.stream_id,
                    error = %e,
                    "snapshot does not decode; folding the events instead"
                );
            }
        }
    }
}

/// Saves a snapshot of every stream of `folded` that grew by the plan's
/// interval since its last one. Failures are logged: a missing snapshot
/// costs time, never correctness.
async fn save_snapshots<C: Command>(
    store: &dyn SnapshotStore,
    plan: &SnapshotPlan<C::State>,
    folded: &mut Folded<C>,
) {
    for stream in &folded.streams {
        let version = folded.versions.get(stream).copied().unwrap_or_default();
        let last = folded.snapshot_at.get(stream).copied().unwrap_or_default();
        if version.get().saturating_sub(last.get()) < plan.every {
            continue;
        }
        let data = match (plan.take)(&folded.state, stream) {
            Some(Ok(data)) => data,
            Some(Err(e)) => {
                tracing::warn!(state = plan.name, stream = %stream, error = %e, "cannot serialize a snapshot");
                continue;
            }
            None => continue,
        };
        let snapshot = Snapshot {
            state: plan.name.to_owned(),
            state_version: plan.version,
            stream_id: stream.clone(),
            stream_version: version,
            data,
        };
        match store.save(snapshot).await {
            Ok(()) => {
                folded.snapshot_at.insert(stream.clone(), version);
            }
            Err(e) => {
                tracing::warn!(state = plan.name, stream = %stream, error = %e, "cannot save a snapshot");
            }
        }
    }
}
