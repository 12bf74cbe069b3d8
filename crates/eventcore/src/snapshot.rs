//! Durable snapshots of shared state: opt in per [`State`] type with
//! [`State::snapshots`], store them with a [`SnapshotStore`] given to the
//! executor ([`CommandExecutor::with_snapshots`]).
//!
//! [`CommandExecutor::with_snapshots`]: crate::CommandExecutor::with_snapshots

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, EventData, State, States, StreamId, StreamVersion};

/// A [`State`] type's opt-in to durable snapshots: its name and schema
/// version (together with the stream, the key of a snapshot) and how often
/// one is taken. Returned by [`State::snapshots`].
///
/// ```
/// use eventcore::{Event, Snapshots, State};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// enum Ticked { Tick }
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Ticks(u64);
///
/// impl State for Ticks {
///     type Event = Ticked;
///     fn apply(&mut self, _: &Ticked) { self.0 += 1; }
///     fn snapshots() -> Option<Snapshots<Self>> {
///         // Bump the version whenever the fold or the fields change: older
///         // snapshots are then ignored.
///         Some(Snapshots::new("ticks").version(1).every(500))
///     }
/// }
/// ```
pub struct Snapshots<S> {
    name: &'static str,
    version: u32,
    every: u64,
    encode: fn(&S) -> Result<EventData, serde_json::Error>,
    decode: fn(&EventData) -> Result<S, serde_json::Error>,
}

fn encode<S: Serialize>(state: &S) -> Result<EventData, serde_json::Error> {
    EventData::from_serialize(state)
}

fn decode<S: DeserializeOwned>(data: &EventData) -> Result<S, serde_json::Error> {
    data.deserialize()
}

impl<S: Serialize + DeserializeOwned> Snapshots<S> {
    /// Snapshots stored under `name` (keep it stable, and unique among
    /// your state types), schema version 1, taken every 100 events.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            version: 1,
            every: 100,
            encode: encode::<S>,
            decode: decode::<S>,
        }
    }
}

impl<S> Snapshots<S> {
    /// The state's own schema version (default 1). Bump it whenever the
    /// fold or the serialized shape changes: snapshots of another version
    /// are ignored, and the first command after the change folds from the
    /// first event again (and takes a new snapshot).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Takes a snapshot of a stream once it has this many events more than
    /// its last snapshot (default 100, at least 1). A command then reads at
    /// most about this many events of the stream, however long it is.
    pub fn every(mut self, events: u64) -> Self {
        self.every = events.max(1);
        self
    }

    /// The name snapshots are stored under.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The state's schema version.
    pub fn state_version(&self) -> u32 {
        self.version
    }

    /// How many new events make a new snapshot due.
    pub fn interval(&self) -> u64 {
        self.every
    }
}

impl<S> fmt::Debug for Snapshots<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshots")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("every", &self.every)
            .finish()
    }
}

/// A stored snapshot: the state `state` (at schema version
/// `state_version`) of stream `stream_id` folded up to `stream_version`.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The state type's snapshot name ([`Snapshots::new`]).
    pub state: String,
    /// The state type's schema version ([`Snapshots::version`]).
    pub state_version: u32,
    /// The stream folded.
    pub stream_id: StreamId,
    /// The version of the last event folded in.
    pub stream_version: StreamVersion,
    /// The state, serialized.
    pub data: EventData,
}

/// Where snapshots live. A snapshot is keyed by state name, state version
/// and stream; a store keeps the one of the highest stream version per key.
///
/// Failures are not fatal to commands: the executor logs them and folds
/// from the events instead.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The stored snapshot of each of `streams` (those that have one) for
    /// state `state` at `state_version`, in any order.
    async fn load(
        &self,
        state: &str,
        state_version: u32,
        streams: &[StreamId],
    ) -> Result<Vec<Snapshot>, Error>;

    /// Stores `snapshot`, unless one of the same key and a higher stream
    /// version is stored already (one of the same version is replaced: it
    /// may be one that no longer decodes).
    async fn save(&self, snapshot: Snapshot) -> Result<(), Error>;
}

#[async_trait]
impl<T: SnapshotStore + ?Sized> SnapshotStore for Arc<T> {
    async fn load(
        &self,
        state: &str,
        state_version: u32,
        streams: &[StreamId],
    ) -> Result<Vec<Snapshot>, Error> {
        (**self).load(state, state_version, streams).await
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), Error> {
        (**self).save(snapshot).await
    }
}

/// State name, state version, stream.
type SnapshotKey = (String, u32, StreamId);

/// Snapshots in memory, for the in-memory store and tests. Clones share
/// the snapshots.
#[derive(Clone, Debug, Default)]
pub struct InMemorySnapshotStore {
    inner: Arc<Mutex<HashMap<SnapshotKey, Snapshot>>>,
}

impl InMemorySnapshotStore {
    /// An empty snapshot store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many snapshots it holds.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn load(
        &self,
        state: &str,
        state_version: u32,
        streams: &[StreamId],
    ) -> Result<Vec<Snapshot>, Error> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(streams
            .iter()
            .filter_map(|s| inner.get(&(state.to_owned(), state_version, s.clone())))
            .cloned()
            .collect())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), Error> {
        let key = (
            snapshot.state.clone(),
            snapshot.state_version,
            snapshot.stream_id.clone(),
        );
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner
            .get(&key)
            .is_none_or(|old| old.stream_version <= snapshot.stream_version)
        {
            inner.insert(key, snapshot);
        }
        Ok(())
    }
}

/// How the executor snapshots a command's state, stream by stream: what a
/// command on a shared [`State`] returns from
/// [`Command::snapshot_plan`](crate::Command::snapshot_plan). Built by
/// [`SnapshotPlan::per_stream`].
pub struct SnapshotPlan<St> {
    pub(crate) name: &'static str,
    pub(crate) version: u32,
    pub(crate) every: u64,
    /// Puts a snapshot's state in place for its stream.
    pub(crate) restore: Box<Restore<St>>,
    /// Serializes the state of a stream, if it has one.
    pub(crate) take: Box<Take<St>>,
}

type Restore<St> = dyn Fn(&mut St, &Snapshot) -> Result<(), serde_json::Error> + Send + Sync;
type Take<St> =
    dyn Fn(&St, &StreamId) -> Option<Result<EventData, serde_json::Error>> + Send + Sync;

impl<S: State> SnapshotPlan<States<S>> {
    /// The plan of the per-stream [`States`] of `S`, if `S` opted in
    /// ([`State::snapshots`]).
    pub fn per_stream() -> Option<Self> {
        let policy = S::snapshots()?;
        let (encode, decode) = (policy.encode, policy.decode);
        Some(Self {
            name: policy.name,
            version: policy.version,
            every: policy.every,
            restore: Box::new(move |states: &mut States<S>, snapshot: &Snapshot| {
                let state = decode(&snapshot.data)?;
                states.restore(snapshot.stream_id.clone(), state, snapshot.stream_version);
                Ok(())
            }),
            take: Box::new(move |states: &States<S>, stream: &StreamId| {
                states.get(stream).map(encode)
            }),
        })
    }
}

impl<St> fmt::Debug for SnapshotPlan<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotPlan")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}
