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
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;

use super::bank::AccountEvent;
use super::{CountingStore, seed};
use crate::{
    AppendRequest, BoxError, CheckpointStore, Error, ErrorStrategy, EventFilter, EventId,
    EventStore, ExpectedVersion, GlobalPosition, NewEvent, Projection, ProjectionRunner,
    RecordedEvent, RunnerOptions, StoredEvent, StreamId, SubscriptionOptions, subscribe,
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
        );
        $crate::projection_contract_tests!(@both $store, $checkpoints;
            runner_resumes_after_being_killed,
            one_active_runner_per_name,
            poison_events_follow_the_error_strategy,
            rebuild_replays_from_the_start,
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
            strategy: ErrorStrategy::Stop,
        }
    }

    fn seen(&self) -> Vec<GlobalPosition> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
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
    assert_eq!(skipped[0].stream_id, s);

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
