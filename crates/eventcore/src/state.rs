//! State defined once and shared by commands: a [`State`] folds the events
//! of one stream; a command made of [`CommandStreams`] (usually
//! `#[derive(Command)]`) and [`Decide`] gets one folded state per stream it
//! reads, in [`States`].

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    ops::Index,
};

use crate::{
    CacheableCommand, Command, Decision, Event, RecordedEvent, SnapshotPlan, Snapshots, StreamId,
    StreamVersion,
};

/// What one stream's events fold into: an account's balance, an order's
/// lines. Defined once, and shared by every command that reads such
/// streams (through [`Decide`]), so no command repeats the fold.
///
/// ```
/// use eventcore::{Event, State};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount: u64 },
///     Withdrawn { amount: u64 },
/// }
///
/// #[derive(Debug, Default, Clone)]
/// struct Account { open: bool, balance: u64 }
///
/// impl State for Account {
///     type Event = AccountEvent;
///
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Opened { .. } => self.open = true,
///             AccountEvent::Deposited { amount } => self.balance += amount,
///             AccountEvent::Withdrawn { amount } => self.balance -= amount,
///         }
///     }
/// }
/// ```
///
/// The fold must be a pure function of the events: the executor may start
/// from a cached or snapshotted state instead of the first event.
pub trait State: Default + Send + Sync + 'static {
    /// The events of the streams it folds.
    type Event: Event;

    /// Folds one event of the stream in, in version order.
    fn apply(&mut self, event: &Self::Event);

    /// Opts this state into durable snapshots: `Some(`[`Snapshots::new`]`)`
    /// with the state's name, its own schema version and how often to take
    /// one. `None` (the default): every command folds its streams from the
    /// first event (or from [`CommandExecutor::execute_cached`]'s cache).
    /// The executor uses them once given a snapshot store
    /// ([`CommandExecutor::with_snapshots`]).
    ///
    /// [`CommandExecutor::execute_cached`]: crate::CommandExecutor::execute_cached
    /// [`CommandExecutor::with_snapshots`]: crate::CommandExecutor::with_snapshots
    fn snapshots() -> Option<Snapshots<Self>>
    where
        Self: Sized,
    {
        None
    }
}

/// The folded [`State`] of each stream a command read, by stream.
///
/// Indexing with a stream id (or anything that is `AsRef<StreamId>`) gives
/// that stream's state; a stream without events, or one that was not read,
/// gives the default state.
pub struct States<S> {
    streams: HashMap<StreamId, (S, StreamVersion)>,
    empty: S,
}

impl<S: State> States<S> {
    /// Folds `event` into the state of its stream.
    pub fn apply(&mut self, event: &RecordedEvent<S::Event>) {
        let (state, version) = self.streams.entry(event.stream_id.clone()).or_default();
        state.apply(&event.event);
        *version = event.stream_version;
    }

    /// Puts `state`, the fold of `stream` up to `version`, in place (from a
    /// snapshot).
    pub(crate) fn restore(&mut self, stream: StreamId, state: S, version: StreamVersion) {
        self.streams.insert(stream, (state, version));
    }
}

impl<S> States<S> {
    /// The state of `stream`, if any of its events was folded.
    pub fn get(&self, stream: &(impl AsRef<StreamId> + ?Sized)) -> Option<&S> {
        self.streams.get(stream.as_ref()).map(|(state, _)| state)
    }

    /// The version of the last event folded for `stream` (0 if none): for
    /// "does this stream exist" checks.
    pub fn version(&self, stream: &(impl AsRef<StreamId> + ?Sized)) -> StreamVersion {
        self.streams
            .get(stream.as_ref())
            .map_or(StreamVersion::NONE, |(_, version)| *version)
    }

    /// Every stream with events, and its state.
    pub fn iter(&self) -> impl Iterator<Item = (&StreamId, &S)> {
        self.streams
            .iter()
            .map(|(stream, (state, _))| (stream, state))
    }
}

impl<S: Default> Default for States<S> {
    fn default() -> Self {
        Self {
            streams: HashMap::new(),
            empty: S::default(),
        }
    }
}

impl<S: Clone> Clone for States<S> {
    fn clone(&self) -> Self {
        Self {
            streams: self.streams.clone(),
            empty: self.empty.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for States<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.streams.iter().map(|(k, (s, _))| (k, s)))
            .finish()
    }
}

impl<S, K: AsRef<StreamId> + ?Sized> Index<&K> for States<S> {
    type Output = S;

    fn index(&self, stream: &K) -> &S {
        self.streams
            .get(stream.as_ref())
            .map_or(&self.empty, |(state, _)| state)
    }
}

/// The streams a command reads. `#[derive(Command)]` implements it from
/// the fields marked `#[stream]`; implement it by hand for streams computed
/// otherwise.
pub trait CommandStreams {
    /// The streams to read, in order; duplicates are read once.
    fn streams(&self) -> Vec<StreamId>;
}

/// A value that names streams: the type of a `#[stream]` field of
/// `#[derive(Command)]`.
///
/// Implemented for [`StreamId`] and every type that is `AsRef<StreamId>`
/// (implement that for your own id types), and for `Option`, `Vec`, arrays,
/// slices and `BTreeSet`s of those.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a #[stream] field: it names no stream",
    label = "not a stream id",
    note = "a #[stream] field is a `StreamId`, a type that implements `AsRef<StreamId>` \
            (implement it for your own id types), or an `Option`, `Vec`, array or \
            `BTreeSet` of those"
)]
pub trait StreamField {
    /// Appends the stream ids this value names to `out`.
    fn collect_streams(&self, out: &mut Vec<StreamId>);
}

impl AsRef<StreamId> for StreamId {
    fn as_ref(&self) -> &StreamId {
        self
    }
}

impl<T: AsRef<StreamId> + ?Sized> StreamField for T {
    fn collect_streams(&self, out: &mut Vec<StreamId>) {
        out.push(self.as_ref().clone());
    }
}

impl<T: StreamField> StreamField for Option<T> {
    fn collect_streams(&self, out: &mut Vec<StreamId>) {
        if let Some(inner) = self {
            inner.collect_streams(out);
        }
    }
}

impl<T: StreamField> StreamField for [T] {
    fn collect_streams(&self, out: &mut Vec<StreamId>) {
        for inner in self {
            inner.collect_streams(out);
        }
    }
}

impl<T: StreamField, const N: usize> StreamField for [T; N] {
    fn collect_streams(&self, out: &mut Vec<StreamId>) {
        self.as_slice().collect_streams(out);
    }
}

impl<T: StreamField> StreamField for Vec<T> {
    fn collect_streams(&self, out: &mut Vec<StreamId>) {
        self.as_slice().collect_streams(out);
    }
}

impl<T: StreamField> StreamField for BTreeSet<T> {
    fn collect_streams(&self, out: &mut Vec<StreamId>) {
        for inner in self {
            inner.collect_streams(out);
        }
    }
}

/// The decision of a command on shared [`State`]: with [`CommandStreams`]
/// (usually `#[derive(Command)]`), it makes the type a [`Command`] whose
/// state is the [`States`] of the streams it reads. It is also a
/// [`CacheableCommand`] when the state is `Clone`.
///
/// ```
/// use eventcore::{Command, Decide, Decision, Event, State, States, StreamId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// enum AccountEvent { Deposited { amount: u64 }, Withdrawn { amount: u64 } }
///
/// #[derive(Default)]
/// struct Balance(u64);
///
/// impl State for Balance {
///     type Event = AccountEvent;
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Deposited { amount } => self.0 += amount,
///             AccountEvent::Withdrawn { amount } => self.0 -= amount,
///         }
///     }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("insufficient funds")]
/// struct InsufficientFunds;
///
/// #[derive(Command)]
/// struct Transfer {
///     #[stream] from: StreamId,
///     #[stream] to: StreamId,
///     amount: u64,
/// }
///
/// impl Decide for Transfer {
///     type State = Balance;
///     type Error = InsufficientFunds;
///
///     fn decide(&self, accounts: &States<Balance>, d: &mut Decision<AccountEvent>) -> Result<(), InsufficientFunds> {
///         if accounts[&self.from].0 < self.amount {
///             return Err(InsufficientFunds);
///         }
///         d.emit(&self.from, AccountEvent::Withdrawn { amount: self.amount });
///         d.emit(&self.to, AccountEvent::Deposited { amount: self.amount });
///         Ok(())
///     }
/// }
/// ```
pub trait Decide: CommandStreams + Send + Sync {
    /// The state of each stream read.
    type State: State;
    /// The business error `decide` may return; it reaches the caller
    /// untouched, as [`CommandError::Rejected`](crate::CommandError::Rejected).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides, from the state of every stream read: emits events to those
    /// streams, asks for more streams ([`Decision::read_also`]), or
    /// rejects the request. Must be pure: it may run several times.
    fn decide(
        &self,
        states: &States<Self::State>,
        decision: &mut Decision<<Self::State as State>::Event>,
    ) -> Result<(), Self::Error>;
}

impl<T: Decide> Command for T {
    type Event = <T::State as State>::Event;
    type State = States<T::State>;
    type Error = T::Error;

    fn read_streams(&self) -> Vec<StreamId> {
        self.streams()
    }

    fn apply(&self, states: &mut States<T::State>, event: &RecordedEvent<Self::Event>) {
        states.apply(event);
    }

    fn handle(
        &self,
        states: &States<T::State>,
        decision: &mut Decision<Self::Event>,
    ) -> Result<(), T::Error> {
        self.decide(states, decision)
    }

    fn snapshot_plan(&self) -> Option<SnapshotPlan<States<T::State>>> {
        SnapshotPlan::per_stream()
    }
}

/// The folded state of such a command is a function of the streams it
/// reads, so they are its key.
impl<T> CacheableCommand for T
where
    T: Decide + 'static,
    T::State: Clone,
{
    fn state_key(&self) -> String {
        let mut key = String::new();
        for stream in self.streams() {
            // Stream ids hold no control characters.
            key.push_str(stream.as_str());
            key.push('\n');
        }
        key
    }
}
