//! Live subscriptions to the global order: catch up from storage in batches,
//! then follow new commits.

use std::{collections::VecDeque, time::Duration};

use futures::Stream;
use tokio::{sync::watch, time::Instant};

use crate::{Error, Event, EventStore, GlobalPosition, RecordedEvent, RetryPolicy, StoredEvent};

/// Which events a subscription delivers. Filtering happens after reading,
/// so the cursor still advances past events that do not match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    stream_prefix: Option<String>,
    event_types: Option<Vec<String>>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of streams whose id starts with `prefix` (a category such
    /// as `account-`).
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = Some(prefix.into());
        self
    }

    /// Only events whose recorded type is one of `types`.
    pub fn event_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.stream_prefix
            .as_deref()
            .is_none_or(|p| event.stream_id.as_str().starts_with(p))
            && self
                .event_types
                .as_ref()
                .is_none_or(|types| types.contains(&event.event_type))
    }
}

/// Where a subscription starts and how it waits.
#[derive(Clone, Debug)]
pub struct SubscriptionOptions {
    /// Deliver events after this position (exclusive). Default: the start.
    pub after: GlobalPosition,
    /// Which events to deliver. Default: all.
    pub filter: EventFilter,
    /// Events read per query. Default 500.
    pub batch_size: usize,
    /// Longest wait between polls when no wake-up arrives. Default 500 ms:
    /// stores that signal new commits wake subscribers long before it.
    pub poll_interval: Duration,
    /// After a wake-up, wait this long before reading, so one read collects
    /// the commits of a burst instead of one read per commit. Default 1 ms:
    /// it adds at most that to delivery latency and, under a steady stream
    /// of appends, divides the subscriber's queries several times over.
    pub wake_delay: Duration,
    /// Reads triggered by wake-ups start at least this far apart. Default
    /// 5 ms. Under a steady stream of appends wake-ups never stop, and most
    /// of a read's cost is fixed (a round trip, a server wake-up, a
    /// snapshot), not per event: pacing reads bounds what a live subscriber
    /// takes from the writers (docs/adr/0007-subscription-read-pacing.md).
    /// Delivery latency under load grows by up to this much; after a quiet
    /// spell a commit is still read `wake_delay` after it wakes the
    /// subscriber. Catching up (full pages) is never paced.
    pub min_read_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            after: GlobalPosition::START,
            filter: EventFilter::all(),
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            wake_delay: Duration::from_millis(1),
            min_read_interval: Duration::from_millis(5),
        }
    }
}

impl SubscriptionOptions {
    /// Starts after `position`.
    pub fn after(mut self, position: GlobalPosition) -> Self {
        self.after = position;
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the delay between a wake-up and the read it triggers.
    pub fn wake_delay(mut self, d: Duration) -> Self {
        self.wake_delay = d;
        self
    }

    /// Sets the shortest time between the starts of two woken reads.
    pub fn min_read_interval(mut self, d: Duration) -> Self {
        self.min_read_interval = d;
        self
    }

    /// Sets the poll interval.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
}

/// Delivers every event after a position, in global order, exactly once,
/// first from storage and then live as writers commit. It does not end by
/// itself, except after an error it cannot read past (below); drop it to
/// stop.
///
/// Errors:
///
/// * A transient read error ([`Error::is_transient`]) is retried with
///   backoff, never yielded.
/// * An unreadable stored event ([`Error::CorruptRow`] with a position, or
///   any error with an [`Error::position`] past the last event delivered) is
///   yielded **once**, after every event before it, and the subscription
///   then goes on *after* it: the consumer decides whether to stop (drop the
///   stream) or to record it and read on. It is never repeated. (If a page
///   of a read fails as a whole, the subscription re-reads it one event at a
///   time to deliver the good events before the bad one.) Such errors are
///   not filtered: the stream of a row that cannot be read may not be
///   known.
/// * Any other error (no position: a missing table, refused permissions)
///   is yielded once, and the subscription ends.
///
/// ```
/// use eventcore::{subscribe, testing::{bank::AccountEvent, seed}, InMemoryEventStore, StreamId, SubscriptionOptions};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let mut live = Box::pin(subscribe(store.clone(), SubscriptionOptions::default()));
/// seed(&store, &StreamId::new("account-1")?, [AccountEvent::Deposited { amount: 5 }]).await?;
/// let first = live.next().await.unwrap()?;
/// assert_eq!(first.event_type, "Deposited");
/// # Ok(()) }
/// ```
pub fn subscribe<S>(
    store: S,
    options: SubscriptionOptions,
) -> impl Stream<Item = Result<StoredEvent, Error>>
where
    S: EventStore,
{
    futures::stream::unfold(Subscription::new(store, options), |mut state| async move {
        if state.ended {
            return None;
        }
        let item = state.next().await;
        Some((item, state))
    })
}

/// [`subscribe`], decoding each event into `E`. An undecodable event is an
/// [`Error::Decode`] item naming it; the subscription continues after it.
pub fn subscribe_typed<E, S>(
    store: S,
    options: SubscriptionOptions,
) -> impl Stream<Item = Result<RecordedEvent<E>, Error>>
where
    E: Event,
    S: EventStore,
{
    use futures::StreamExt;
    subscribe(store, options).map(|r| r.and_then(|e| e.decode::<E>()))
}

/// The state behind [`subscribe`]; projection runners take whole pages
/// from it ([`Subscription::next_page`]).
pub(crate) struct Subscription<S> {
    store: S,
    cursor: GlobalPosition,
    buffer: VecDeque<StoredEvent>,
    options: SubscriptionOptions,
    /// The store's commit signal, if it has one; `None` means pure polling.
    signal: Option<watch::Receiver<()>>,
    /// Transient read failures in a row.
    failures: u32,
    /// The last read returned a short page.
    caught_up: bool,
    /// Empty reads in a row since a wake-up or since finding committed
    /// events not readable yet (an older transaction is still open): look
    /// again soon.
    lagging: u32,
    /// When the last read started, for `min_read_interval`.
    last_read: Option<Instant>,
    /// A read failed on the event at this position: read one event at a
    /// time up to it, so the good events before it are delivered.
    narrow_to: Option<GlobalPosition>,
    /// An error nobody can read past was yielded: nothing more comes.
    ended: bool,
}

/// Short re-reads after a wake-up (0.5 ms doubling up to 64 ms) before
/// falling back to waiting.
const MAX_LAGGING_READS: u32 = 8;

/// Backoff between retries of transient read failures: 10 ms doubling to
/// 2 s, with full jitter. A subscription never gives up on them.
fn transient_backoff() -> RetryPolicy {
    RetryPolicy::new()
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_secs(2))
}

impl<S: EventStore> Subscription<S> {
    pub(crate) fn new(store: S, options: SubscriptionOptions) -> Self {
        Self {
            signal: store.commit_signal(),
            store,
            cursor: options.after,
            buffer: VecDeque::new(),
            options,
            failures: 0,
            caught_up: false,
            lagging: 0,
            last_read: None,
            narrow_to: None,
            ended: false,
        }
    }

    async fn next(&mut self) -> Result<StoredEvent, Error> {
        self.fill().await?;
        Ok(self.buffer.pop_front().expect("fill leaves an event"))
    }

    /// Every event buffered (at least one), in order: the rest of the last
    /// page read, or the next page.
    pub(crate) async fn next_page(&mut self) -> Result<Vec<StoredEvent>, Error> {
        self.fill().await?;
        Ok(self.buffer.drain(..).collect())
    }

    /// Reads until the buffer holds an event, or fails.
    async fn fill(&mut self) -> Result<(), Error> {
        loop {
            if !self.buffer.is_empty() {
                return Ok(());
            }
            // A short page means we were caught up: wait for news before
            // reading again instead of paying for an empty read.
            if self.caught_up {
                self.caught_up = false;
                self.lagging = u32::from(self.wait().await);
            }
            // Mark the signal seen *before* reading, so a commit that lands
            // between the read and the wait still wakes us.
            if let Some(signal) = &mut self.signal {
                signal.borrow_and_update();
            }
            self.last_read = Some(Instant::now());
            let limit = if self.narrow_to.is_some() {
                1
            } else {
                self.options.batch_size
            };
            match self.store.read_all(self.cursor, limit).await {
                Ok(page) if page.is_empty() => {
                    self.failures = 0;
                    // Committed events may sit behind an older transaction
                    // that is still open. Nobody signals when it ends, so
                    // look again soon rather than waiting for the next
                    // commit (which, on a quiet store, may never come):
                    // first a few short re-reads after a wake-up, then, for
                    // as long as the head is ahead of us, every 64 ms.
                    let retry = (1..MAX_LAGGING_READS).contains(&self.lagging)
                        || matches!(self.store.head_position().await, Ok(h) if h > self.cursor);
                    if retry {
                        let step = self.lagging.clamp(1, MAX_LAGGING_READS);
                        let delay = Duration::from_micros(250 << step);
                        tokio::time::sleep(delay.min(self.options.poll_interval)).await;
                        self.lagging = (step + 1).min(MAX_LAGGING_READS);
                    } else {
                        self.lagging = u32::from(self.wait().await);
                    }
                }
                Ok(page) => {
                    self.failures = 0;
                    self.lagging = 0;
                    let last = page.last().map_or(self.cursor, |e| e.position);
                    match self.narrow_to {
                        // Still short of the bad event: keep reading one by
                        // one, without waiting.
                        Some(bad) if last < bad => {}
                        _ => {
                            self.narrow_to = None;
                            self.caught_up = page.len() < limit;
                        }
                    }
                    self.cursor = last;
                    crate::telemetry::subscription_page(&page);
                    let filter = &self.options.filter;
                    self.buffer
                        .extend(page.into_iter().filter(|e| filter.matches(e)));
                }
                Err(e) if e.is_transient() => {
                    self.failures += 1;
                    let delay = transient_backoff().delay_after(self.failures);
                    tracing::warn!(error = %e, retry_in = ?delay, "subscription read failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    self.failures = 0;
                    match e.position() {
                        // Good events may precede the bad one in the page
                        // that failed: fetch them one at a time first.
                        Some(bad) if bad > self.cursor && limit > 1 => {
                            tracing::debug!(error = %e, "read failed on one event; reading up to it one by one");
                            self.narrow_to = Some(bad);
                        }
                        // The bad event is the next one: report it once and
                        // go on after it.
                        Some(bad) if bad > self.cursor => {
                            tracing::warn!(error = %e, position = %bad, "subscription cannot read an event; reporting it and reading on after it");
                            self.narrow_to = None;
                            self.cursor = bad;
                            return Err(e);
                        }
                        // Nothing to step past: report it once and end.
                        _ => {
                            tracing::error!(error = %e, "subscription failed; ending it");
                            self.ended = true;
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Waits for the store's commit signal or the poll interval; true if
    /// signalled.
    async fn wait(&mut self) -> bool {
        let poll = self.options.poll_interval;
        match &mut self.signal {
            Some(signal) => {
                let woken = matches!(
                    tokio::time::timeout(poll, signal.changed()).await,
                    Ok(Ok(()))
                );
                if woken {
                    let mut start = Instant::now() + self.options.wake_delay;
                    if let Some(last) = self.last_read {
                        start = start.max(last + self.options.min_read_interval);
                    }
                    tokio::time::sleep_until(start).await;
                }
                woken
            }
            None => {
                tokio::time::sleep(poll).await;
                false
            }
        }
    }
}
