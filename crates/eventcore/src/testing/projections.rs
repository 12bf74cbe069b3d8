//! The contract of subscriptions and projection runners, for every store
//! and checkpoint store.
//!
//! ```no_run
//! eventcore::projection_contract_tests!(
//!     || async { eventcore::InMemoryEventStore::new() },
//!     |_store: &eventcore::InMemoryEventStore| eventcore::InMemoryCheckpointStore::new()
//! );
//! ```

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;

use super::bank::AccountEvent;
use super::{CountingStore, seed};
use crate::{
    AppendOutcome, AppendRequest, BoxError, CatchUpTimeout, CheckpointStore, Error, ErrorStrategy,
    EventFilter, EventId, EventStore, ExpectedVersion, GlobalPosition, Lease, NewEvent, Projection,
    ProjectionRunner, ReadBlocker, RecordedEvent, RunnerOptions, SkippedEvent, StoredEvent,
    StreamId, StreamVersion, SubscriptionOptions, subscribe,
};

/// Generates one `#[tokio::test]` per case. Arguments: a closure returning a
/// future of a fresh store, and a closure making a checkpoint store for it.
#[macro_export]
macro_rules! projection_contract_tests {
    ($store:expr, $checkpoints:expr) => {
        $crate::projection_contract_tests!(@store $store;
            subscription_catches_up_then_follows_live,
            subscription_filters_by_category_and_type,
            subscribers_see_every_event_once_under_concurrent_writers,
            woken_reads_are_paced_under_steady_appends,
            unreadable_events_are_reported_once_then_passed,
        );
        $crate::projection_contract_tests!(@both $store, $checkpoints;
            runner_resumes_after_being_killed,
            one_active_runner_per_name,
            poison_events_follow_the_error_strategy,
            rebuild_replays_from_the_start,
            runners_pass_unreadable_events_by_strategy_or_by_hand,
            batches_are_applied_whole_or_located_one_by_one,
            runner_stops_at_once_when_its_lease_is_lost,
            catch_up_names_what_holds_it_back_and_times_out,
        );
    };
    (@store $store:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = ($store)().await;
                $crate::testing::projections::$case(&store).await;
            }
        )*
    };
    (@both $store:expr, $checkpoints:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = ($store)().await;
                let checkpoints = ($checkpoints)(&store);
                $crate::testing::projections::$case(store, checkpoints).await;
            }
        )*
    };
}

const PATIENCE: Duration = Duration::from_secs(30);

fn category() -> String {
    format!("c{}-", EventId::new().as_uuid().simple())
}

fn stream(category: &str, n: usize) -> StreamId {
    StreamId::new(format!("{category}{n}")).expect("valid id")
}

fn deposit(amount: u64) -> AccountEvent {
    AccountEvent::Deposited { amount }
}

async fn head<S: EventStore + ?Sized>(store: &S) -> GlobalPosition {
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all(after, 1000).await.expect("read_all");
        match page.last() {
            Some(last) => after = last.position,
            None => return after,
        }
    }
}

async fn next_within<T>(stream: &mut (impl futures::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("subscription delivered in time")
        .expect("subscriptions never end")
}

/// History first, then live events, in order, exactly once.
pub async fn subscription_catches_up_then_follows_live<S: EventStore + Clone + 'static>(store: &S) {
    let cat = category();
    let a = stream(&cat, 1);
    seed(store, &a, [deposit(1), deposit(2), deposit(3)])
        .await
        .unwrap();
    let options = SubscriptionOptions::default()
        .filter(EventFilter::all().stream_prefix(cat.clone()))
        .batch_size(2);
    let mut live = Box::pin(subscribe(store.clone(), options));
    let mut amounts = Vec::new();
    for _ in 0..3 {
        let e = next_within(&mut live).await.unwrap();
        amounts.push(e.decode::<AccountEvent>().unwrap().event);
    }
    assert_eq!(amounts, [deposit(1), deposit(2), deposit(3)]);
    let writer = {
        let store = store.clone();
        let b = stream(&cat, 2);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seed(&store, &b, [deposit(4)]).await.unwrap();
            seed(&store, &b, [deposit(5)]).await.unwrap();
        })
    };
    let fourth = next_within(&mut live).await.unwrap();
    let fifth = next_within(&mut live).await.unwrap();
    writer.await.unwrap();
    assert_eq!(fourth.decode::<AccountEvent>().unwrap().event, deposit(4));
    assert_eq!(fifth.decode::<AccountEvent>().unwrap().event, deposit(5));
    assert!(fourth.position < fifth.position);
}

/// A steady stream of commits wakes a subscriber over and over; its reads
/// still start at least `min_read_interval` apart, and it misses nothing.
pub async fn woken_reads_are_paced_under_steady_appends<S: EventStore + Clone + 'static>(
    store: &S,
) {
    const APPENDS: u64 = 200;
    const EVERY: Duration = Duration::from_millis(2);
    const INTERVAL: Duration = Duration::from_millis(50);
    let cat = category();
    let counting = CountingStore::new(store.clone());
    let counts = counting.counts();
    let options = SubscriptionOptions::default()
        .after(head(store).await)
        .filter(EventFilter::all().stream_prefix(cat.clone()))
        .wake_delay(Duration::ZERO)
        .min_read_interval(INTERVAL);
    let mut live = Box::pin(subscribe(counting, options));
    let writer = {
        let store = store.clone();
        let a = stream(&cat, 1);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            for n in 1..=APPENDS {
                seed(&store, &a, [deposit(n)]).await.unwrap();
                tokio::time::sleep(EVERY).await;
            }
            started.elapsed()
        })
    };
    for n in 1..=APPENDS {
        let e = next_within(&mut live).await.unwrap();
        assert_eq!(e.decode::<AccountEvent>().unwrap().event, deposit(n));
    }
    let took = writer.await.unwrap();
    // Unpaced, every append would have cost a read (~200). Paced: one per
    // interval while the writer ran and one more to deliver its last
    // events, plus the first read, plus the quick re-read that may follow
    // each empty read (events committed but not readable yet).
    let reads = counts.reads();
    let empty = counts
        .empty_reads
        .load(std::sync::atomic::Ordering::Relaxed);
    let bound = (took.as_millis() / INTERVAL.as_millis()) as u64 + 3 + empty;
    assert!(
        reads <= bound,
        "{reads} reads ({empty} empty) for {APPENDS} appends over {took:?}: expected at most {bound}"
    );
}

/// Category and type filters drop the rest but keep order.
pub async fn subscription_filters_by_category_and_type<S: EventStore + Clone + 'static>(store: &S) {
    let cat = category();
    let other = category();
    seed(store, &stream(&other, 1), [deposit(1)]).await.unwrap();
    seed(store, &stream(&cat, 1), [deposit(2)]).await.unwrap();
    seed(
        store,
        &stream(&cat, 2),
        [
            AccountEvent::Credited {
                amount: 3,
                from: "x".into(),
            },
            deposit(4),
        ],
    )
    .await
    .unwrap();
    let options = SubscriptionOptions::default().filter(
        EventFilter::all()
            .stream_prefix(cat.clone())
            .event_types(["Deposited"]),
    );
    let mut live = Box::pin(subscribe(store.clone(), options));
    let first = next_within(&mut live).await.unwrap();
    let second = next_within(&mut live).await.unwrap();
    assert_eq!(first.decode::<AccountEvent>().unwrap().event, deposit(2));
    assert_eq!(second.decode::<AccountEvent>().unwrap().event, deposit(4));
}

/// Sixteen writers commit concurrently while a subscriber follows: it gets
/// every event exactly once, in the order `read_all` settles on.
pub async fn subscribers_see_every_event_once_under_concurrent_writers<S>(store: &S)
where
    S: EventStore + Clone + 'static,
{
    const WRITERS: usize = 16;
    const APPENDS: usize = 30;
    let cat = category();
    let start = head(store).await;
    let options = SubscriptionOptions::default()
        .after(start)
        .filter(EventFilter::all().stream_prefix(cat.clone()));
    let subscriber = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut live = Box::pin(subscribe(store, options));
            let mut seen = Vec::new();
            while seen.len() < WRITERS * APPENDS {
                let e: StoredEvent = next_within(&mut live).await.unwrap();
                seen.push((e.position, e.event_id));
            }
            seen
        })
    };
    futures::future::join_all((0..WRITERS).map(|w| {
        let s = stream(&cat, w % 4);
        async move {
            for i in 0..APPENDS {
                seed(store, &s, [deposit(i as u64)]).await.unwrap();
            }
        }
    }))
    .await;
    let seen = subscriber.await.unwrap();
    let mut settled = Vec::new();
    let mut after = start;
    loop {
        let page = store.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        settled.extend(
            page.into_iter()
                .filter(|e| e.stream_id.as_str().starts_with(&cat))
                .map(|e| (e.position, e.event_id)),
        );
    }
    super::assert_same_sequence("subscriber saw every event once, in order", &seen, &settled);
}

/// Records what it applies; can be told to hang after some events, or to
/// fail on events of a given type.
#[derive(Clone)]
struct Recorder {
    name: String,
    category: String,
    seen: Arc<Mutex<Vec<GlobalPosition>>>,
    hang_after: Option<usize>,
    fail_on: Option<&'static str>,
    /// After this many events, `apply` fails as a fenced write of a runner
    /// that lost its lease does.
    lease_lost_after: Option<usize>,
    strategy: ErrorStrategy,
}

impl Recorder {
    fn new(category: &str) -> Self {
        Self {
            name: format!("recorder-{category}"),
            category: category.to_owned(),
            seen: Arc::default(),
            hang_after: None,
            fail_on: None,
            lease_lost_after: None,
            strategy: ErrorStrategy::Stop,
        }
    }

    fn seen(&self) -> Vec<GlobalPosition> {
        self.seen.lock().unwrap().clone()
    }
}

impl Projection for Recorder {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix(self.category.clone())
    }

    fn error_strategy(&self) -> ErrorStrategy {
        self.strategy.clone()
    }

    async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        if self
            .hang_after
            .is_some_and(|n| self.seen.lock().unwrap().len() >= n)
        {
            futures::future::pending::<()>().await;
        }
        if self
            .lease_lost_after
            .is_some_and(|n| self.seen.lock().unwrap().len() >= n)
        {
            return Err(Box::new(Error::LeaseLost {
                projection: self.name.clone(),
            }));
        }
        if let (Some(kind), AccountEvent::Credited { .. }) = (self.fail_on, &event.event) {
            return Err(format!("refusing {kind}").into());
        }
        self.seen.lock().unwrap().push(event.position);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.seen.lock().unwrap().clear();
        Ok(())
    }
}

fn fast() -> RunnerOptions {
    RunnerOptions {
        batch_size: 7,
        poll_interval: Duration::from_millis(20),
        checkpoint_every: 5,
        lease_retry: Duration::from_millis(20),
        ..RunnerOptions::default()
    }
}

/// A runner that dies mid-stream (its task dropped, no graceful shutdown)
/// is replaced by a second one that resumes from the checkpoint: nothing is
/// lost, and only events after the last checkpoint are seen twice.
pub async fn runner_resumes_after_being_killed<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    for i in 0..40 {
        seed(&store, &stream(&cat, i % 3), [deposit(i as u64)])
            .await
            .unwrap();
    }
    let all = super::settled_positions(&store, &cat, 40).await;
    let mut first = Recorder::new(&cat);
    first.hang_after = Some(23);
    let seen_first = first.seen.clone();
    let mut runner =
        ProjectionRunner::new(first, store.clone(), checkpoints.clone()).with_options(fast());
    let killed = tokio::time::timeout(
        Duration::from_millis(1500),
        runner.run_continuous(futures::future::pending()),
    )
    .await;
    assert!(killed.is_err(), "the first runner was hung, not finished");
    drop(runner);
    let died_at = seen_first.lock().unwrap().len();
    assert_eq!(died_at, 23);
    let checkpoint = checkpoints
        .load(&format!("recorder-{cat}"))
        .await
        .unwrap()
        .expect("a checkpoint was saved");

    let second = Recorder::new(&cat);
    let mut runner = ProjectionRunner::new(second.clone(), store.clone(), checkpoints.clone())
        .with_options(fast());
    let summary = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("second runner took over")
        .unwrap();
    let seen_second = second.seen();
    assert!(
        seen_second.iter().all(|p| *p > checkpoint),
        "resumed after the checkpoint"
    );
    let mut union: Vec<_> = seen_first
        .lock()
        .unwrap()
        .iter()
        .chain(&seen_second)
        .copied()
        .collect();
    union.sort();
    union.dedup();
    super::assert_same_sequence("no event lost across the takeover", &union, &all);
    assert_eq!(summary.applied as usize, seen_second.len());
    assert_eq!(seen_second.last(), all.last());
}

/// While one runner holds a projection, a second waits; it takes over when
/// the first stops.
pub async fn one_active_runner_per_name<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    seed(&store, &stream(&cat, 1), [deposit(1), deposit(2)])
        .await
        .unwrap();
    let first = Recorder::new(&cat);
    let name = first.name.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (store, checkpoints, first) = (store.clone(), checkpoints.clone(), first.clone());
        tokio::spawn(async move {
            let mut runner = ProjectionRunner::new(first, store, checkpoints).with_options(fast());
            runner
                .run_continuous(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    tokio::time::timeout(PATIENCE, async {
        while first.seen().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("first runner processed the events");
    assert!(
        checkpoints.try_acquire(&name).await.unwrap().is_none(),
        "a second runner must not start"
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.applied, 2);
    let lease = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(lease) = checkpoints.try_acquire(&name).await.unwrap() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lease is free once the first runner stopped");
    assert!(lease.is_held().await);
}

/// A poison event is skipped and recorded under `Skip`, stops the runner
/// with an error naming it under `Stop`, and under `Retry` is retried, then
/// stops the runner: it never vanishes silently.
pub async fn poison_events_follow_the_error_strategy<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    let s = stream(&cat, 1);
    seed(&store, &s, [deposit(1)]).await.unwrap();
    // Undecodable: right type name, wrong shape.
    store
        .append(AppendRequest::new().append(
            s.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::raw("Deposited", json!({ "amount": "lots" }))],
        ))
        .await
        .unwrap();
    seed(
        &store,
        &s,
        [
            AccountEvent::Credited {
                amount: 2,
                from: "x".into(),
            },
            deposit(3),
        ],
    )
    .await
    .unwrap();
    let positions = super::settled_positions(&store, &cat, 4).await;

    let mut skipping = Recorder::new(&cat);
    skipping.name = format!("skip-{cat}");
    skipping.strategy = ErrorStrategy::Skip;
    skipping.fail_on = Some("Credited");
    let mut runner = ProjectionRunner::new(skipping.clone(), store.clone(), checkpoints.clone())
        .with_options(fast());
    let summary = runner.run_until_caught_up().await.unwrap();
    assert_eq!((summary.applied, summary.skipped), (2, 2));
    assert_eq!(skipping.seen(), [positions[0], positions[3]]);
    let skipped = checkpoints.skipped(&skipping.name).await.unwrap();
    assert_eq!(
        skipped.iter().map(|s| s.position).collect::<Vec<_>>(),
        [positions[1], positions[2]]
    );
    assert!(skipped[0].error.contains("decode"), "{}", skipped[0].error);
    assert_eq!(skipped[0].stream_id, Some(s.clone()));

    let mut stopping = Recorder::new(&cat);
    stopping.name = format!("stop-{cat}");
    let mut runner = ProjectionRunner::new(stopping.clone(), store.clone(), checkpoints.clone())
        .with_options(fast());
    match runner.run_until_caught_up().await {
        Err(Error::Projection {
            projection,
            position,
            stream_id,
            ..
        }) => {
            assert_eq!(projection, stopping.name);
            assert_eq!(position, Some(positions[1]));
            assert_eq!(stream_id, Some(s.clone()));
        }
        other => panic!("expected the runner to stop on the poison event, got {other:?}"),
    }
    assert_eq!(stopping.seen(), [positions[0]]);
    let resumed = checkpoints.load(&stopping.name).await.unwrap();
    assert!(
        resumed.is_none_or(|p| p < positions[1]),
        "the poison event is not checkpointed past"
    );

    let mut retrying = Recorder::new(&cat);
    retrying.name = format!("retry-{cat}");
    retrying.strategy = ErrorStrategy::Retry {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
    };
    let mut runner = ProjectionRunner::new(retrying.clone(), store.clone(), checkpoints.clone())
        .with_options(fast());
    assert!(matches!(
        runner.run_until_caught_up().await,
        Err(Error::Projection { .. })
    ));
}

/// Rebuild forgets the checkpoint and the read model and replays everything.
pub async fn rebuild_replays_from_the_start<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    seed(&store, &stream(&cat, 1), (0..12).map(deposit))
        .await
        .unwrap();
    let recorder = Recorder::new(&cat);
    let mut runner = ProjectionRunner::new(recorder.clone(), store.clone(), checkpoints.clone())
        .with_options(fast());
    assert_eq!(runner.run_until_caught_up().await.unwrap().applied, 12);
    assert_eq!(
        runner.run_until_caught_up().await.unwrap().applied,
        0,
        "nothing new"
    );
    let summary = runner.rebuild().await.unwrap();
    assert_eq!(summary.applied, 12);
    let seen: HashSet<_> = recorder.seen().into_iter().collect();
    assert_eq!(seen.len(), 12);
    assert_eq!(
        recorder.seen().len(),
        12,
        "reset cleared the read model before the replay"
    );
}

/// Forwards to a store, except that the event at one position cannot be
/// read: `read_all` returns the events before it, and fails with
/// [`Error::CorruptRow`] naming it when it is the first one to return, as
/// a store does with a row it cannot decode. With
/// [`whole_page`](Self::whole_page), every page holding it fails instead
/// (what a store that does not cut pages does).
#[derive(Clone, Debug)]
pub struct UnreadableAt<S> {
    inner: S,
    bad: GlobalPosition,
    whole_page: bool,
}

impl<S> UnreadableAt<S> {
    /// `inner`, with the event at `bad` unreadable.
    pub fn new(inner: S, bad: GlobalPosition) -> Self {
        Self {
            inner,
            bad,
            whole_page: false,
        }
    }

    /// Fails every page that holds the bad event.
    pub fn whole_page(mut self, yes: bool) -> Self {
        self.whole_page = yes;
        self
    }
}

impl<S: EventStore> EventStore for UnreadableAt<S> {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        self.inner.append(request).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        self.inner.read_stream(stream, from, limit).await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut page = self.inner.read_all(after, limit).await?;
        match page.iter().position(|e| e.position == self.bad) {
            None => Ok(page),
            Some(i) if i > 0 && !self.whole_page => {
                page.truncate(i);
                Ok(page)
            }
            Some(_) => Err(Error::CorruptRow {
                what: format!("the event at position {}", self.bad),
                position: Some(self.bad),
                reason: "made unreadable by the test".into(),
            }),
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        self.inner.stream_version(stream).await
    }

    async fn head_position(&self) -> Result<GlobalPosition, Error> {
        self.inner.head_position().await
    }

    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        self.inner.commit_signal()
    }
}

/// Four deposits in one stream of a fresh category, appended one by one;
/// their positions.
async fn four_deposits<S: EventStore + ?Sized>(store: &S, cat: &str) -> Vec<GlobalPosition> {
    let s = stream(cat, 1);
    for amount in 1..=4 {
        seed(store, &s, [deposit(amount)]).await.unwrap();
    }
    super::settled_positions(store, cat, 4).await
}

/// An event that cannot be read reaches a subscriber after every event
/// before it, as one error naming its position; the events after it
/// follow, and the error is not repeated, whether the store cuts its pages
/// before the bad event or fails them whole.
pub async fn unreadable_events_are_reported_once_then_passed<S: EventStore + Clone + 'static>(
    store: &S,
) {
    let cat = category();
    let positions = four_deposits(store, &cat).await;
    for whole_page in [false, true] {
        let poisoned = UnreadableAt::new(store.clone(), positions[1]).whole_page(whole_page);
        let options = SubscriptionOptions::default()
            .filter(EventFilter::all().stream_prefix(cat.clone()))
            .batch_size(3)
            .poll_interval(Duration::from_millis(20));
        let mut live = Box::pin(subscribe(poisoned, options));
        let first = next_within(&mut live).await.unwrap();
        assert_eq!(first.position, positions[0], "whole page {whole_page}");
        match next_within(&mut live).await {
            Err(Error::CorruptRow { position, .. }) => assert_eq!(position, Some(positions[1])),
            other => panic!("expected the unreadable event, got {other:?}"),
        }
        for expected in &positions[2..] {
            assert_eq!(next_within(&mut live).await.unwrap().position, *expected);
        }
        let more = tokio::time::timeout(Duration::from_millis(300), live.next()).await;
        assert!(
            more.is_err(),
            "nothing more, the error is not repeated: {more:?}"
        );
    }
}

/// Retries `skip` while the lease of a runner that just stopped is still
/// being given up (a PostgreSQL lease lets go of its connection within a
/// moment).
async fn skip_when_free<C: CheckpointStore>(
    checkpoints: &C,
    projection: &str,
    position: GlobalPosition,
    reason: &str,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match checkpoints.skip(projection, position, reason).await {
            Err(e)
                if e.to_string().contains("active") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// A runner meets an event it cannot read after applying every event
/// before it. Under `Skip` it records it (no stream known), moves the
/// checkpoint past it and applies the rest; under `Stop` it stops with the
/// read's `CorruptRow` and its checkpoint stays just before it, until an
/// operator passes it with `CheckpointStore::skip`, which refuses to move
/// the checkpoint backwards or to act while a runner is active.
pub async fn runners_pass_unreadable_events_by_strategy_or_by_hand<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    let positions = four_deposits(&store, &cat).await;
    let poisoned = UnreadableAt::new(store.clone(), positions[1]);
    let good = [positions[0], positions[2], positions[3]];

    let mut skipping = Recorder::new(&cat);
    skipping.name = format!("skip-{cat}");
    skipping.strategy = ErrorStrategy::Skip;
    let mut runner = ProjectionRunner::new(skipping.clone(), poisoned.clone(), checkpoints.clone())
        .with_options(fast());
    let summary = runner.run_until_caught_up().await.unwrap();
    assert_eq!((summary.applied, summary.skipped), (3, 1));
    assert_eq!(skipping.seen(), good);
    let skipped = checkpoints.skipped(&skipping.name).await.unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].position, positions[1]);
    assert_eq!(skipped[0].stream_id, None);
    assert!(skipped[0].error.contains("corrupt"), "{}", skipped[0].error);
    let saved = checkpoints.load(&skipping.name).await.unwrap();
    assert!(saved >= Some(positions[3]), "{saved:?}");

    let stopping = Recorder::new(&cat);
    let name = stopping.name.clone();
    let mut runner = ProjectionRunner::new(stopping.clone(), poisoned.clone(), checkpoints.clone())
        .with_options(fast());
    match runner.run_until_caught_up().await {
        Err(Error::CorruptRow { position, .. }) => assert_eq!(position, Some(positions[1])),
        other => panic!("expected the runner to stop on the unreadable event, got {other:?}"),
    }
    drop(runner);
    assert_eq!(stopping.seen(), [positions[0]]);
    assert_eq!(
        checkpoints.load(&name).await.unwrap(),
        Some(positions[0]),
        "everything before the bad event is checkpointed, the bad one is not"
    );

    // An operator passes it: not backwards, not under an active runner.
    let backwards = skip_when_free(&checkpoints, &name, positions[0], "test").await;
    assert!(
        matches!(&backwards, Err(Error::Projection { .. })),
        "{backwards:?}"
    );
    let lease = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(lease) = checkpoints.try_acquire(&name).await.unwrap() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no runner is active");
    let busy = checkpoints.skip(&name, positions[1], "test").await;
    assert!(
        matches!(&busy, Err(e) if e.to_string().contains("active")),
        "{busy:?}"
    );
    drop(lease);
    skip_when_free(&checkpoints, &name, positions[1], "bad row, see ticket 7")
        .await
        .unwrap();
    assert_eq!(checkpoints.load(&name).await.unwrap(), Some(positions[1]));
    let skipped = checkpoints.skipped(&name).await.unwrap();
    assert_eq!(
        skipped.iter().map(|s| s.position).collect::<Vec<_>>(),
        [positions[1]]
    );
    assert!(
        skipped[0].error.contains("ticket 7"),
        "{}",
        skipped[0].error
    );
    let mut runner =
        ProjectionRunner::new(stopping.clone(), poisoned, checkpoints.clone()).with_options(fast());
    let summary = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("the lease is free")
        .unwrap();
    assert_eq!(summary.applied, 2);
    assert_eq!(stopping.seen(), good);
}

/// Keeps what it applies in a batch only if the whole batch succeeds (as a
/// transaction would); refuses `Credited` events.
#[derive(Clone)]
struct Atomic {
    name: String,
    category: String,
    seen: Arc<Mutex<Vec<GlobalPosition>>>,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Projection for Atomic {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix(self.category.clone())
    }

    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::Skip
    }

    async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        self.apply_batch(vec![event]).await
    }

    async fn apply_batch(
        &mut self,
        events: Vec<RecordedEvent<AccountEvent>>,
    ) -> Result<(), BoxError> {
        self.batches.lock().unwrap().push(events.len());
        if let Some(bad) = events
            .iter()
            .find(|e| matches!(e.event, AccountEvent::Credited { .. }))
        {
            return Err(format!("refusing the event at {}", bad.position).into());
        }
        self.seen
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| e.position));
        Ok(())
    }
}

/// Pages reach `apply_batch` whole; when a batch fails, its events are
/// delivered one at a time to find the bad one, which goes through the
/// error strategy: every good event is applied exactly once, in order.
pub async fn batches_are_applied_whole_or_located_one_by_one<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    let s = stream(&cat, 1);
    seed(&store, &s, (0..9).map(deposit)).await.unwrap();
    seed(
        &store,
        &s,
        [AccountEvent::Credited {
            amount: 1,
            from: "x".into(),
        }],
    )
    .await
    .unwrap();
    seed(&store, &s, (10..20).map(deposit)).await.unwrap();
    let positions = super::settled_positions(&store, &cat, 20).await;
    let projection = Atomic {
        name: format!("atomic-{cat}"),
        category: cat.clone(),
        seen: Arc::default(),
        batches: Arc::default(),
    };
    let mut runner =
        ProjectionRunner::new(projection.clone(), store, checkpoints.clone()).with_options(fast());
    let summary = runner.run_until_caught_up().await.unwrap();
    assert_eq!((summary.applied, summary.skipped), (19, 1));
    let expected: Vec<_> = positions
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 9)
        .map(|(_, p)| *p)
        .collect();
    super::assert_same_sequence(
        "every good event once, in order",
        &projection.seen.lock().unwrap(),
        &expected,
    );
    let batches = projection.batches.lock().unwrap().clone();
    assert!(
        batches.iter().any(|n| *n > 1),
        "pages are delivered as batches: {batches:?}"
    );
    let skipped = checkpoints.skipped(&projection.name).await.unwrap();
    assert_eq!(
        skipped.iter().map(|s| s.position).collect::<Vec<_>>(),
        [positions[9]]
    );
}

/// Wraps a checkpoint store; [`revoke`](Revocable::revoke) makes its
/// leases lost and its writes fail with `LeaseLost`, as when another
/// runner takes over.
#[derive(Clone)]
struct Revocable<C> {
    inner: C,
    revoked: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<C> Revocable<C> {
    fn new(inner: C) -> Self {
        Self {
            inner,
            revoked: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    fn revoke(&self) {
        self.revoked.send_replace(true);
    }

    fn fence(&self, projection: &str) -> Result<(), Error> {
        if *self.revoked.borrow() {
            Err(Error::LeaseLost {
                projection: projection.to_owned(),
            })
        } else {
            Ok(())
        }
    }
}

struct RevocableLease {
    inner: Box<dyn Lease>,
    revoked: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl Lease for RevocableLease {
    async fn is_held(&self) -> bool {
        !*self.revoked.borrow() && self.inner.is_held().await
    }

    async fn lost(&self) {
        let mut revoked = self.revoked.clone();
        tokio::select! {
            _ = revoked.wait_for(|r| *r) => {}
            () = self.inner.lost() => {}
        }
    }
}

impl<C: CheckpointStore> CheckpointStore for Revocable<C> {
    async fn load(&self, projection: &str) -> Result<Option<GlobalPosition>, Error> {
        self.inner.load(projection).await
    }

    async fn save(&self, projection: &str, position: GlobalPosition) -> Result<(), Error> {
        self.fence(projection)?;
        self.inner.save(projection, position).await
    }

    async fn reset(&self, projection: &str) -> Result<(), Error> {
        self.fence(projection)?;
        self.inner.reset(projection).await
    }

    async fn record_skip(&self, skipped: SkippedEvent) -> Result<(), Error> {
        self.inner.record_skip(skipped).await
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, Error> {
        self.inner.skipped(projection).await
    }

    async fn try_acquire(&self, projection: &str) -> Result<Option<Box<dyn Lease>>, Error> {
        Ok(self.inner.try_acquire(projection).await?.map(|inner| {
            Box::new(RevocableLease {
                inner,
                revoked: self.revoked.subscribe(),
            }) as Box<dyn Lease>
        }))
    }
}

/// A runner whose lease is lost stops at once with `LeaseLost`, long before
/// its next checkpoint is due and without saving one; and a projection
/// whose own fenced write fails with `LeaseLost` stops the runner the same
/// way, even under `Skip` (nothing is recorded as skipped).
pub async fn runner_stops_at_once_when_its_lease_is_lost<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    let s = stream(&cat, 1);
    seed(&store, &s, (0..10).map(deposit)).await.unwrap();
    super::settled_positions(&store, &cat, 10).await;
    let revocable = Revocable::new(checkpoints.clone());
    let recorder = Recorder::new(&cat);
    let name = recorder.name.clone();
    let options = RunnerOptions {
        checkpoint_every: 1_000_000,
        ..fast()
    };
    let task = {
        let (store, revocable, recorder) = (store.clone(), revocable.clone(), recorder.clone());
        let options = options.clone();
        tokio::spawn(async move {
            ProjectionRunner::new(recorder, store, revocable)
                .with_options(options)
                .run_continuous(futures::future::pending())
                .await
        })
    };
    tokio::time::timeout(PATIENCE, async {
        while recorder.seen().len() < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the runner applied the events");
    let revoked_at = tokio::time::Instant::now();
    revocable.revoke();
    let result = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the runner stopped")
        .unwrap();
    assert!(
        matches!(&result, Err(Error::LeaseLost { projection }) if *projection == name),
        "{result:?}"
    );
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "stopped {:?} after losing the lease",
        revoked_at.elapsed()
    );
    assert_eq!(
        checkpoints.load(&name).await.unwrap(),
        None,
        "nothing saved"
    );
    seed(&store, &s, [deposit(10)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(recorder.seen().len(), 10, "nothing applied after the loss");

    let mut fenced = Recorder::new(&cat);
    fenced.name = format!("fenced-{cat}");
    fenced.strategy = ErrorStrategy::Skip;
    fenced.lease_lost_after = Some(4);
    let mut runner = ProjectionRunner::new(fenced.clone(), store.clone(), checkpoints.clone())
        .with_options(fast());
    let result = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("the runner stopped");
    assert!(matches!(result, Err(Error::LeaseLost { .. })), "{result:?}");
    assert_eq!(fenced.seen().len(), 4);
    assert!(checkpoints.skipped(&fenced.name).await.unwrap().is_empty());
}

/// Hides the events after a position from `read_all` while `hidden` is
/// set, and names a made-up transaction as what holds them back.
#[derive(Clone)]
struct HeldBack<S> {
    inner: S,
    visible_to: GlobalPosition,
    hidden: Arc<AtomicBool>,
}

/// The made-up blocker [`HeldBack`] reports.
fn made_up_blocker() -> ReadBlocker {
    ReadBlocker {
        pid: Some(4242),
        age: Duration::from_secs(61),
        state: "idle in transaction".into(),
        application_name: "forgotten-psql".into(),
    }
}

impl<S: EventStore> EventStore for HeldBack<S> {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        self.inner.append(request).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        self.inner.read_stream(stream, from, limit).await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut page = self.inner.read_all(after, limit).await?;
        if self.hidden.load(Ordering::Relaxed) {
            page.retain(|e| e.position <= self.visible_to);
        }
        Ok(page)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        self.inner.stream_version(stream).await
    }

    async fn head_position(&self) -> Result<GlobalPosition, Error> {
        self.inner.head_position().await
    }

    async fn read_blocker(&self) -> Result<Option<ReadBlocker>, Error> {
        Ok(self.hidden.load(Ordering::Relaxed).then(made_up_blocker))
    }
}

/// `run_until_caught_up` facing committed events it cannot read yet
/// applies what it can, then, past `catch_up_timeout`, fails with a
/// `CatchUpTimeout` naming what the store says holds readers back; once
/// that is gone it catches up.
pub async fn catch_up_names_what_holds_it_back_and_times_out<S, C>(store: S, checkpoints: C)
where
    S: EventStore + Clone + 'static,
    C: CheckpointStore + Clone + 'static,
{
    let cat = category();
    let positions = four_deposits(&store, &cat).await;
    let held = HeldBack {
        inner: store.clone(),
        visible_to: positions[1],
        hidden: Arc::new(AtomicBool::new(true)),
    };
    let recorder = Recorder::new(&cat);
    let options = RunnerOptions {
        catch_up_timeout: Some(Duration::from_millis(400)),
        ..fast()
    };
    let mut runner = ProjectionRunner::new(recorder.clone(), held.clone(), checkpoints.clone())
        .with_options(options);
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("the timeout fired");
    let timeout = match &result {
        Err(Error::Projection { source, .. }) => source
            .downcast_ref::<CatchUpTimeout>()
            .unwrap_or_else(|| panic!("expected a CatchUpTimeout, got {result:?}")),
        other => panic!("expected a CatchUpTimeout, got {other:?}"),
    };
    assert_eq!(timeout.blocker, Some(made_up_blocker()));
    assert!(timeout.target >= positions[3]);
    assert_eq!(timeout.reached.map(|p| p >= positions[1]), Some(true));
    let message = result.unwrap_err().to_string();
    assert!(message.contains("4242"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(recorder.seen(), positions[..2]);

    held.hidden.store(false, Ordering::Relaxed);
    let summary = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("caught up once nothing holds it back")
        .unwrap();
    assert_eq!(summary.applied, 2);
    assert_eq!(recorder.seen(), positions);
}
