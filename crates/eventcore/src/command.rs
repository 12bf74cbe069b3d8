//! Commands: read streams, fold state, decide new events.

use crate::{Event, RecordedEvent, SnapshotPlan, StreamId};

/// A command reads one or more streams, folds their events into a state and
/// decides which new events to append, to any of the streams it read.
///
/// The executor appends the decision atomically, expecting every stream to
/// still be at the version it read (write skew is impossible), and re-runs
/// the command on a conflict. `handle` must therefore be a pure decision:
/// no side effects, since it may run several times.
///
/// ```
/// use eventcore::{Command, Decision, Event, RecordedEvent, StreamId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum Counter { Incremented }
/// impl Event for Counter {
///     fn event_type(&self) -> &'static str { "Incremented" }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("counter is full")]
/// struct Full;
///
/// struct Increment { counter: StreamId, max: u64 }
///
/// impl Command for Increment {
///     type Event = Counter;
///     type State = u64;
///     type Error = Full;
///
///     fn read_streams(&self) -> Vec<StreamId> { vec![self.counter.clone()] }
///
///     fn apply(&self, count: &mut u64, _event: &RecordedEvent<Counter>) { *count += 1; }
///
///     fn handle(&self, count: &u64, decision: &mut Decision<Counter>) -> Result<(), Full> {
///         if *count >= self.max { return Err(Full); }
///         decision.emit(&self.counter, Counter::Incremented);
///         Ok(())
///     }
/// }
/// ```
pub trait Command: Send + Sync {
    /// The events of the streams it reads and writes.
    type Event: Event;
    /// The state folded from those events.
    type State: Default + Send + Sync;
    /// The business error `handle` may return; it reaches the caller untouched.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Streams to read before deciding. More can be requested while
    /// handling, with [`Decision::read_also`].
    fn read_streams(&self) -> Vec<StreamId>;

    /// Folds one event into the state. Events of each stream arrive in
    /// version order; the interleaving of different streams is unspecified.
    fn apply(&self, state: &mut Self::State, event: &RecordedEvent<Self::Event>);

    /// Decides: emits events to declared streams, asks for more streams, or
    /// rejects the request.
    fn handle(
        &self,
        state: &Self::State,
        decision: &mut Decision<Self::Event>,
    ) -> Result<(), Self::Error>;

    /// How the executor keeps this command's state in durable snapshots,
    /// if at all. `None` (the default) for commands that fold their own
    /// state; commands on a shared [`State`](crate::State) (see
    /// [`Decide`](crate::Decide)) take it from the state type's
    /// [`State::snapshots`](crate::State::snapshots).
    fn snapshot_plan(&self) -> Option<SnapshotPlan<Self::State>> {
        None
    }
}

/// What [`Command::handle`] decided: events per stream, and streams it wants
/// read before it can decide.
#[derive(Debug)]
pub struct Decision<E> {
    read: Vec<StreamId>,
    events: Vec<(StreamId, E)>,
    more: Vec<StreamId>,
}

impl<E> Decision<E> {
    pub(crate) fn new(read: Vec<StreamId>) -> Self {
        Self {
            read,
            events: Vec::new(),
            more: Vec::new(),
        }
    }

    /// Appends `event` to `stream` (a [`StreamId`], or your own id type
    /// that is `AsRef<StreamId>`), which must be one of the streams read.
    /// (Emitting to any other stream fails the execution with
    /// [`Error::UndeclaredStream`](crate::Error::UndeclaredStream).)
    pub fn emit(&mut self, stream: &(impl AsRef<StreamId> + ?Sized), event: E) {
        self.events.push((stream.as_ref().clone(), event));
    }

    /// Asks for `stream` to be read too. If it was not read yet, the executor
    /// discards this decision, reads it, folds its events and calls `handle`
    /// again.
    pub fn read_also(&mut self, stream: StreamId) {
        if !self.read.contains(&stream) && !self.more.contains(&stream) {
            self.more.push(stream);
        }
    }

    /// The streams read for this decision.
    pub fn streams(&self) -> &[StreamId] {
        &self.read
    }

    /// Whether `stream` was read for this decision.
    pub fn has_read(&self, stream: &StreamId) -> bool {
        self.read.contains(stream)
    }

    pub(crate) fn into_parts(self) -> (Vec<(StreamId, E)>, Vec<StreamId>) {
        (self.events, self.more)
    }
}
