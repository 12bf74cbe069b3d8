//! A store wrapper that counts the read round trips made through it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    AppendOutcome, AppendRequest, Error, EventStore, GlobalPosition, StoredEvent, StreamId,
    StreamVersion,
};

/// Forwards to a store and counts its `read_all` calls (and the empty
/// ones), the events they returned, and `head_position` calls: what a
/// subscriber costs the database; and the events stream reads returned:
/// what a command executor read. Clones share the counts.
#[derive(Clone, Debug)]
pub struct CountingStore<S> {
    inner: S,
    counts: Arc<ReadCounts>,
}

/// The counters of a [`CountingStore`].
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// `read_all` calls that returned.
    pub reads: AtomicU64,
    /// Of those, the ones that returned no events.
    pub empty_reads: AtomicU64,
    /// Events all `read_all` calls returned.
    pub events: AtomicU64,
    /// `head_position` calls.
    pub head_reads: AtomicU64,
    /// Events `read_stream` and `read_streams_to_end` returned.
    pub stream_events: AtomicU64,
}

impl ReadCounts {
    /// `read_all` calls so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl<S> CountingStore<S> {
    /// Wraps `inner` with counts at zero.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counts: Arc::default(),
        }
    }

    /// The counts, shared with every clone.
    pub fn counts(&self) -> Arc<ReadCounts> {
        self.counts.clone()
    }
}

impl<S: EventStore> EventStore for CountingStore<S> {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        self.inner.append(request).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let events = self.inner.read_stream(stream, from, limit).await?;
        (self.counts.stream_events).fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(events)
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let page = self.inner.read_all(after, limit).await?;
        let c = &self.counts;
        c.reads.fetch_add(1, Ordering::Relaxed);
        c.events.fetch_add(page.len() as u64, Ordering::Relaxed);
        if page.is_empty() {
            c.empty_reads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(page)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        self.inner.stream_version(stream).await
    }

    async fn head_position(&self) -> Result<GlobalPosition, Error> {
        self.counts.head_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.head_position().await
    }

    async fn read_streams_to_end(
        &self,
        streams: &[(StreamId, StreamVersion)],
    ) -> Result<Vec<Vec<StoredEvent>>, Error> {
        let events = self.inner.read_streams_to_end(streams).await?;
        let n: usize = events.iter().map(Vec::len).sum();
        (self.counts.stream_events).fetch_add(n as u64, Ordering::Relaxed);
        Ok(events)
    }

    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.commit_signal()
    }
}
