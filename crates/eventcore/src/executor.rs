//! Runs commands: read, fold, decide, append, retry.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tracing::Instrument;

use crate::{
    AppendOutcome, AppendRequest, Command, CommandError, Decision, Error, EventMetadata,
    EventStore, ExpectedVersion, NewEvent, RetryPolicy, StreamId, StreamVersion,
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
    /// How many times the command was run or its append sent (1 = first try).
    pub attempts: u32,
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
#[derive(Clone, Debug)]
pub struct CommandExecutor<S> {
    store: S,
    retry: RetryPolicy,
    cache: Arc<StateCache>,
}

/// Folded state plus the version each stream was read at.
struct Snapshot<C: Command> {
    state: C::State,
    streams: Vec<StreamId>,
    versions: HashMap<StreamId, StreamVersion>,
}

impl<C: Command> Snapshot<C> {
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
        }
    }
}

impl<C: Command<State: Clone>> Clone for Snapshot<C> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            streams: self.streams.clone(),
            versions: self.versions.clone(),
        }
    }
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

/// Most snapshots the executor keeps; past it the cache starts over.
const STATE_CACHE_CAPACITY: usize = 10_000;

/// Snapshots by command type and key, shared by clones of an executor.
#[derive(Debug, Default)]
struct StateCache {
    /// Shared, so the lock is held only to look up or swap an entry; the
    /// copy an execution folds into is made outside it.
    entries: Mutex<HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>>,
}

impl<S: EventStore> CommandExecutor<S> {
    /// An executor with the default [`RetryPolicy`].
    pub fn new(store: S) -> Self {
        Self {
            store,
            retry: RetryPolicy::default(),
            cache: Arc::default(),
        }
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
        self.run(&command, metadata, Snapshot::fresh(&command), |_| {})
            .instrument(span)
            .await
    }

    /// Like [`execute`](Self::execute), but starts from the state cached by
    /// the last successful execution with the same [`state_key`]
    /// (`CacheableCommand::state_key`) and reads only newer events. Worth it
    /// for long or hot streams.
    ///
    /// [`state_key`]: CacheableCommand::state_key
    pub async fn execute_cached<C: CacheableCommand>(
        &self,
        command: C,
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        let key = (TypeId::of::<C>(), command.state_key());
        let cached = self
            .cache
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let start = cached
            .as_deref()
            .and_then(|entry| entry.downcast_ref::<Snapshot<C>>())
            .cloned()
            .unwrap_or_else(|| Snapshot::fresh(&command));
        let span = tracing::debug_span!(
            "eventcore.execute",
            command = std::any::type_name::<C>(),
            cached = true
        );
        let cache = &self.cache;
        self.run(&command, EventMetadata::new(), start, move |snapshot| {
            let snapshot = Arc::new(snapshot);
            let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
            // Keep the freshest snapshot: concurrent executions may finish
            // out of order.
            let newer = entries
                .get(&key)
                .and_then(|entry| entry.downcast_ref::<Snapshot<C>>())
                .is_none_or(|old| {
                    old.versions
                        .iter()
                        .all(|(s, v)| snapshot.versions.get(s).is_some_and(|n| n >= v))
                });
            if newer {
                if entries.len() >= STATE_CACHE_CAPACITY && !entries.contains_key(&key) {
                    entries.clear();
                }
                // The replaced snapshot is dropped after the lock is released.
                let old = entries.insert(key, snapshot);
                drop(entries);
                drop(old);
            }
        })
        .instrument(span)
        .await
    }

    /// Reads, decides and appends, starting from `snapshot`; `on_success`
    /// is handed the snapshot the successful decision was made on.
    ///
    /// The retry policy counts every attempt (a re-read, a re-run after a
    /// conflict, a re-send) against one budget of attempts and time.
    async fn run<C: Command>(
        &self,
        command: &C,
        metadata: EventMetadata,
        mut snapshot: Snapshot<C>,
        on_success: impl FnOnce(Snapshot<C>),
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
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
                    let decided = match self.catch_up(command, &mut snapshot).await {
                        Ok(()) => self.decide(command, &mut snapshot, &metadata).await,
                        Err(e) => Err(e.into()),
                    };
                    match decided {
                        Ok(Some(request)) => request,
                        Ok(None) => {
                            return Ok(ExecutionOutcome {
                                append: None,
                                events_written: 0,
                                attempts: attempt,
                            });
                        }
                        // Reads are safe to repeat: a transient read failure
                        // re-runs the attempt from where the snapshot got to.
                        Err(CommandError::Store(e)) if e.is_transient() => {
                            match self.retry.next_delay(attempt, started.elapsed()) {
                                Some(delay) => {
                                    tracing::debug!(attempt, error = %e, "transient read failure; retrying");
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
                    on_success(snapshot);
                    return Ok(ExecutionOutcome {
                        append: Some(append),
                        events_written,
                        attempts: attempt,
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
                            crate::telemetry::command_retry(if e.as_conflict().is_some() {
                                "conflict"
                            } else {
                                "transient"
                            });
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
    /// in, so a retry after a conflict costs only the new events.
    async fn catch_up<C: Command>(
        &self,
        command: &C,
        snapshot: &mut Snapshot<C>,
    ) -> Result<(), Error> {
        let from: Vec<(StreamId, StreamVersion)> = snapshot
            .streams
            .iter()
            .map(|s| {
                let known = snapshot.versions.get(s).copied().unwrap_or_default();
                (s.clone(), known.next())
            })
            .collect();
        // Decode everything before folding anything, so a bad event leaves
        // the snapshot as it was.
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
                command.apply(&mut snapshot.state, recorded);
                version = recorded.stream_version.get();
            }
            snapshot
                .versions
                .insert(stream, StreamVersion::new(version));
        }
        Ok(())
    }

    /// Runs `handle` until it stops asking for more streams, then builds the
    /// append. `None` when it decided on no events.
    async fn decide<C: Command>(
        &self,
        command: &C,
        snapshot: &mut Snapshot<C>,
        metadata: &EventMetadata,
    ) -> Result<Option<AppendRequest>, CommandError<C::Error>> {
        for _ in 0..MAX_DISCOVERY_ROUNDS {
            let mut decision = Decision::new(snapshot.streams.clone());
            command
                .handle(&snapshot.state, &mut decision)
                .map_err(CommandError::Rejected)?;
            let (events, more) = decision.into_parts();
            if !more.is_empty() {
                snapshot.streams.extend(more);
                self.catch_up(command, snapshot).await?;
                continue;
            }
            if events.is_empty() {
                return Ok(None);
            }
            let mut per_stream: HashMap<StreamId, Vec<NewEvent>> = HashMap::new();
            for (stream, event) in events {
                if !snapshot.versions.contains_key(&stream) {
                    return Err(Error::UndeclaredStream { stream_id: stream }.into());
                }
                let new = NewEvent::new(&event, metadata.clone())?;
                per_stream.entry(stream).or_default().push(new);
            }
            // Every stream read gets an expectation, written or not: that is
            // what rules out write skew.
            let mut request = AppendRequest::new();
            for stream in &snapshot.streams {
                let expected = ExpectedVersion::from_read(snapshot.versions[stream]);
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
