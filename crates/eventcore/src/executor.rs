//! Runs commands: read, fold, decide, append, retry.

use std::collections::HashMap;

use tracing::Instrument;

use crate::{
    AppendOutcome, AppendRequest, Command, CommandError, Decision, Error, EventMetadata,
    EventStore, ExpectedVersion, NewEvent, RetryPolicy, StreamId, StreamVersion,
};

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
}

/// Folded state plus the version each stream was read at.
struct Snapshot<C: Command> {
    state: C::State,
    streams: Vec<StreamId>,
    versions: HashMap<StreamId, StreamVersion>,
}

impl<S: EventStore> CommandExecutor<S> {
    /// An executor with the default [`RetryPolicy`].
    pub fn new(store: S) -> Self {
        Self {
            store,
            retry: RetryPolicy::default(),
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
        self.run(&command, metadata).instrument(span).await
    }

    async fn run<C: Command>(
        &self,
        command: &C,
        metadata: EventMetadata,
    ) -> Result<ExecutionOutcome, CommandError<C::Error>> {
        let mut snapshot = Snapshot::<C> {
            state: C::State::default(),
            streams: Vec::new(),
            versions: HashMap::new(),
        };
        for stream in command.read_streams() {
            if !snapshot.streams.contains(&stream) {
                snapshot.streams.push(stream);
            }
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let decided = match self.catch_up(command, &mut snapshot).await {
                Ok(()) => self.decide(command, &mut snapshot, &metadata).await,
                Err(e) => Err(e.into()),
            };
            let request = match decided {
                Ok(Some(request)) => request,
                Ok(None) => {
                    return Ok(ExecutionOutcome {
                        append: None,
                        events_written: 0,
                        attempts: attempt,
                    });
                }
                // Reads are safe to repeat: a transient read failure re-runs
                // the attempt from where the snapshot got to.
                Err(CommandError::Store(e))
                    if e.is_transient() && attempt < self.retry.max_attempts =>
                {
                    tracing::debug!(attempt, error = %e, "transient read failure; retrying");
                    tokio::time::sleep(self.retry.delay_after(attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let events_written = request.event_count();

            // A transient failure may hide a commit whose acknowledgement was
            // lost, so the same request (same event ids) is re-sent rather
            // than re-decided: the store recognises a re-send.
            let result = loop {
                match self.store.append(request.clone()).await {
                    Err(e) if e.is_transient() && attempt < self.retry.max_attempts => {
                        tracing::debug!(attempt, error = %e, "transient append failure; re-sending");
                        tokio::time::sleep(self.retry.delay_after(attempt)).await;
                        attempt += 1;
                    }
                    other => break other,
                }
            };
            match result {
                Ok(append) => {
                    return Ok(ExecutionOutcome {
                        append: Some(append),
                        events_written,
                        attempts: attempt,
                    });
                }
                Err(Error::Conflict(conflict)) if attempt < self.retry.max_attempts => {
                    tracing::debug!(attempt, %conflict, "conflict; re-reading and re-running");
                    let delay = self.retry.delay_after(attempt);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(e) if e.is_transient() || e.as_conflict().is_some() => {
                    return Err(CommandError::RetriesExhausted {
                        attempts: attempt,
                        last: e,
                    });
                }
                Err(e) => return Err(CommandError::Store(e)),
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
        for stream in &snapshot.streams {
            let known = snapshot.versions.get(stream).copied().unwrap_or_default();
            let events = self.store.read_stream_to_end(stream, known.next()).await?;
            let mut version = known;
            for stored in &events {
                let recorded = stored.decode::<C::Event>()?;
                command.apply(&mut snapshot.state, &recorded);
                version = stored.stream_version;
            }
            snapshot.versions.insert(stream.clone(), version);
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
