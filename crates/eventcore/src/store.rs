//! The storage contract every backend implements.

use std::{fmt, sync::Arc, time::Duration};

use crate::{
    AppendOutcome, AppendRequest, Error, GlobalPosition, StoredEvent, StreamId, StreamVersion,
};

/// Page size used by the provided whole-stream read.
pub const DEFAULT_READ_PAGE: usize = 1000;

/// An event store: atomic multi-stream appends with optimistic concurrency,
/// per-stream reads and a global, skip-free order.
///
/// Every implementation must pass [`crate::testing::contract`], which pins
/// these semantics down:
///
/// * [`append`](EventStore::append) checks every stream's expectation
///   (including check-only streams) and writes every event, atomically; a
///   failed expectation is [`Error::Conflict`] and writes nothing. Two appends
///   whose expectations overlap can never both succeed on stale state.
/// * Appends are idempotent by event id: re-sending an append whose events
///   are all stored returns the original outcome with `replayed = true`.
/// * [`read_all`](EventStore::read_all) returns events in global order, and
///   a reader that has seen position `P` never later finds an event below `P`.
pub trait EventStore: Send + Sync {
    /// Atomically checks expectations and appends events to several streams.
    fn append(
        &self,
        request: AppendRequest,
    ) -> impl Future<Output = Result<AppendOutcome, Error>> + Send;

    /// Reads up to `limit` events of `stream` with version `>= from`, in
    /// version order. An empty page means the end of the stream.
    fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, Error>> + Send;

    /// Reads up to `limit` events with position `> after`, in global order.
    /// Only events that can no longer be preceded by a later commit are
    /// returned, so paging with the last position seen never skips an event.
    fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, Error>> + Send;

    /// The current version of `stream` (0 if it has no events).
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<StreamVersion, Error>> + Send;

    /// Reads every event of several streams, each from its own version on:
    /// one `Vec` per requested stream, in request order. Stores override it
    /// to do it in one round trip (the executor reads all of a command's
    /// streams this way); the default reads them one after another.
    fn read_streams_to_end(
        &self,
        streams: &[(StreamId, StreamVersion)],
    ) -> impl Future<Output = Result<Vec<Vec<StoredEvent>>, Error>> + Send {
        async move { read_each_stream(self, streams).await }
    }

    /// The position of the newest committed event (`START` if none). Events
    /// below it may still be invisible to [`read_all`](EventStore::read_all)
    /// for a moment while older transactions finish.
    ///
    /// The default pages through `read_all`; stores override it.
    fn head_position(&self) -> impl Future<Output = Result<GlobalPosition, Error>> + Send {
        async move {
            let mut head = GlobalPosition::START;
            loop {
                let page = self.read_all(head, DEFAULT_READ_PAGE).await?;
                match page.last() {
                    Some(last) => head = last.position,
                    None => return Ok(head),
                }
            }
        }
    }

    /// A signal that changes whenever new events may have become readable,
    /// for [`subscribe`](crate::subscribe) to wait on instead of polling.
    /// `None` (the default) means subscribers poll.
    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }

    /// What keeps committed events from being readable by
    /// [`read_all`](EventStore::read_all) right now, if the store can tell:
    /// on PostgreSQL, the oldest open transaction that holds a transaction
    /// id (readers stop below it, see `docs/adr/0001-global-order.md`).
    /// Readers waiting for events they know are committed report it
    /// ([`ProjectionRunner::run_until_caught_up`](crate::ProjectionRunner::run_until_caught_up),
    /// `eventcore tail`). `None` (the default) means nothing is known to.
    fn read_blocker(&self) -> impl Future<Output = Result<Option<ReadBlocker>, Error>> + Send {
        async move { Ok(None) }
    }

    /// Reads every event of `stream` from version `from` on, page by page.
    fn read_stream_to_end(
        &self,
        stream: &StreamId,
        from: StreamVersion,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, Error>> + Send {
        read_stream_pages(from, move |next| {
            self.read_stream(stream, next, DEFAULT_READ_PAGE)
        })
    }
}

/// What holds `read_all`'s horizon back: a transaction that is still open
/// and may yet commit events below the newest ones (see
/// [`EventStore::read_blocker`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBlocker {
    /// The server process (PostgreSQL backend pid) running the transaction;
    /// `None` for a prepared (two-phase) transaction, which has none.
    pub pid: Option<u32>,
    /// How long the transaction has been open.
    pub age: Duration,
    /// What the session is doing (`active`, `idle in transaction`, ...).
    pub state: String,
    /// The session's `application_name` (for a prepared transaction, its
    /// global id).
    pub application_name: String,
}

impl fmt::Display for ReadBlocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "the transaction of backend pid {pid}")?,
            None => write!(f, "a prepared transaction")?,
        }
        write!(
            f,
            " (application '{}', {}), open for {:.1} s",
            self.application_name,
            self.state,
            self.age.as_secs_f64()
        )
    }
}

/// Every event of a stream from `from` on, read page by page through
/// `page` (which reads up to [`DEFAULT_READ_PAGE`] events from the version
/// it is given) until a page comes back short: what
/// [`EventStore::read_stream_to_end`] does with `read_stream`, for a store
/// that reads some other way (from its primary only, say).
pub async fn read_stream_pages<F, Fut>(
    from: StreamVersion,
    mut page: F,
) -> Result<Vec<StoredEvent>, Error>
where
    F: FnMut(StreamVersion) -> Fut,
    Fut: Future<Output = Result<Vec<StoredEvent>, Error>>,
{
    let mut events = Vec::new();
    let mut next = from;
    loop {
        let read = page(next).await?;
        let full = read.len() == DEFAULT_READ_PAGE;
        if let Some(last) = read.last() {
            next = last.stream_version.next();
        }
        events.extend(read);
        if !full {
            return Ok(events);
        }
    }
}

/// [`EventStore::read_streams_to_end`] done one stream after another: the
/// default, and a fallback for stores whose batched read hits its limit.
pub async fn read_each_stream<S: EventStore + ?Sized>(
    store: &S,
    streams: &[(StreamId, StreamVersion)],
) -> Result<Vec<Vec<StoredEvent>>, Error> {
    let mut out = Vec::with_capacity(streams.len());
    for (stream, from) in streams {
        out.push(store.read_stream_to_end(stream, *from).await?);
    }
    Ok(out)
}

/// Forwards every method to the pointee, so `&S`, `Arc<S>` and `Box<S>` are
/// stores too (an executor can borrow a store or share one).
macro_rules! forward_store {
    ($($ptr:ty),*) => {$(
                impl<S: EventStore + ?Sized> EventStore for $ptr {
            async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
                (**self).append(request).await
            }

            async fn read_stream(
                &self,
                stream: &StreamId,
                from: StreamVersion,
                limit: usize,
            ) -> Result<Vec<StoredEvent>, Error> {
                (**self).read_stream(stream, from, limit).await
            }

            async fn read_all(
                &self,
                after: GlobalPosition,
                limit: usize,
            ) -> Result<Vec<StoredEvent>, Error> {
                (**self).read_all(after, limit).await
            }

            async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
                (**self).stream_version(stream).await
            }

            async fn head_position(&self) -> Result<GlobalPosition, Error> {
                (**self).head_position().await
            }

            async fn read_streams_to_end(
                &self,
                streams: &[(StreamId, StreamVersion)],
            ) -> Result<Vec<Vec<StoredEvent>>, Error> {
                (**self).read_streams_to_end(streams).await
            }

            fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
                (**self).commit_signal()
            }

            async fn read_blocker(&self) -> Result<Option<ReadBlocker>, Error> {
                (**self).read_blocker().await
            }
        }
    )*};
}

forward_store!(&S, Arc<S>, Box<S>);
