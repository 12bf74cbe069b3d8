//! An in-memory store with the same semantics as the PostgreSQL one.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use chrono::Utc;
use tokio::sync::watch;

use crate::{
    AppendOutcome, AppendRequest, DEFAULT_MAX_EVENT_BYTES, Error, EventId, EventStore,
    GlobalPosition, StoredEvent, StreamId, StreamVersion, VersionConflict,
};

/// An event store held in memory, for tests, examples and prototypes.
///
/// It keeps exactly the contract of [`EventStore`] (atomic multi-stream
/// appends, expectations on check-only streams, idempotency by event id,
/// global order), proven by the same [`crate::testing::contract`] suite the
/// PostgreSQL store passes. Positions are dense: 1, 2, 3, ...
///
/// Cloning gives another handle to the same store.
#[derive(Clone, Debug)]
pub struct InMemoryEventStore {
    inner: Arc<Mutex<Inner>>,
    /// Changes on every append that writes events.
    signal: watch::Sender<()>,
    max_event_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// The global log; event at position `p` lives at index `p - 1`.
    log: Vec<StoredEvent>,
    /// Log indexes of each stream's events, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Log index of every stored event id.
    ids: HashMap<EventId, usize>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            signal: watch::Sender::new(()),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Sets the per-event size limit (default [`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append
        // (all checks happen before the first mutation), so poison is benign.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn version(&self, stream: &StreamId) -> StreamVersion {
        StreamVersion::new(self.streams.get(stream).map_or(0, |v| v.len() as u64))
    }

    /// The outcome of an earlier append whose events are all stored, or an
    /// error if the request overlaps stored events without being a re-send.
    fn replay(&self, request: &AppendRequest) -> Result<Option<AppendOutcome>, Error> {
        let mut found = 0;
        let mut first_missing = None;
        for s in request.streams() {
            for e in &s.events {
                match self.ids.get(&e.event_id) {
                    Some(&i) if self.log[i].stream_id == s.stream_id => found += 1,
                    Some(_) => {
                        return Err(Error::DuplicateEventId {
                            event_id: e.event_id,
                        });
                    }
                    None => first_missing = first_missing.or(Some(e.event_id)),
                }
            }
        }
        if found == 0 {
            return Ok(None);
        }
        if first_missing.is_some() {
            let event_id = request
                .event_ids()
                .find(|id| self.ids.contains_key(id))
                .expect("found > 0");
            return Err(Error::DuplicateEventId { event_id });
        }
        let mut outcome = AppendOutcome {
            stream_versions: BTreeMap::new(),
            positions: None,
            replayed: true,
        };
        let mut lo = u64::MAX;
        let mut hi = 0;
        for id in request.event_ids() {
            let stored = &self.log[self.ids[&id]];
            let v = outcome
                .stream_versions
                .entry(stored.stream_id.clone())
                .or_default();
            *v = (*v).max(stored.stream_version);
            lo = lo.min(stored.position.get());
            hi = hi.max(stored.position.get());
        }
        outcome.positions = Some((GlobalPosition::new(lo), GlobalPosition::new(hi)));
        Ok(Some(outcome))
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        request.validate(self.max_event_bytes)?;
        let mut inner = self.lock();
        if let Some(outcome) = inner.replay(&request)? {
            return Ok(outcome);
        }
        for s in request.streams() {
            let actual = inner.version(&s.stream_id);
            if !s.expected.is_met_by(actual) {
                return Err(VersionConflict {
                    stream_id: s.stream_id.clone(),
                    expected: s.expected,
                    actual,
                }
                .into());
            }
        }
        let now = Utc::now();
        let mut outcome = AppendOutcome {
            stream_versions: BTreeMap::new(),
            positions: None,
            replayed: false,
        };
        let first = inner.log.len() as u64 + 1;
        for s in request.into_streams() {
            if s.events.is_empty() {
                continue;
            }
            let mut version = inner.version(&s.stream_id);
            for e in s.events {
                version = version.next();
                let index = inner.log.len();
                inner.ids.insert(e.event_id, index);
                inner
                    .streams
                    .entry(s.stream_id.clone())
                    .or_default()
                    .push(index);
                inner.log.push(StoredEvent {
                    event_id: e.event_id,
                    stream_id: s.stream_id.clone(),
                    stream_version: version,
                    position: GlobalPosition::new(index as u64 + 1),
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    data: e.data,
                    metadata: e.metadata,
                    recorded_at: now,
                });
            }
            outcome.stream_versions.insert(s.stream_id, version);
        }
        let last = inner.log.len() as u64;
        if last >= first {
            outcome.positions = Some((GlobalPosition::new(first), GlobalPosition::new(last)));
            drop(inner);
            self.signal.send_replace(());
        }
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let inner = self.lock();
        let Some(indexes) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = from.get().saturating_sub(1) as usize;
        Ok(indexes
            .iter()
            .skip(skip)
            .take(limit)
            .map(|&i| inner.log[i].clone())
            .collect())
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let inner = self.lock();
        let start = (after.get() as usize).min(inner.log.len());
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        Ok(self.lock().version(stream))
    }

    async fn head_position(&self) -> Result<GlobalPosition, Error> {
        Ok(GlobalPosition::new(self.lock().log.len() as u64))
    }

    fn commit_signal(&self) -> Option<watch::Receiver<()>> {
        Some(self.signal.subscribe())
    }
}
