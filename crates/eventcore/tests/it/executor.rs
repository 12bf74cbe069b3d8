//! Executor behaviour beyond the store contract: the state cache, and
//! retries under faults (what a failed command says about its write).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use eventcore::{
    AppendOutcome, AppendRequest, CommandError, CommandExecutor, Error, EventStore, GlobalPosition,
    InMemoryEventStore, RetryPolicy, StoredEvent, StreamId, StreamVersion,
    testing::{
        CountingStore,
        bank::{AccountEvent, Transfer},
        seed,
    },
};

#[tokio::test]
async fn cached_executions_read_only_new_events_and_decide_the_same() {
    let a = StreamId::new("account-a").unwrap();
    let b = StreamId::new("account-b").unwrap();
    let run = |cached: bool| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let store = CountingStore::new(InMemoryEventStore::new());
            seed(&store, &a, [AccountEvent::Deposited { amount: 100 }])
                .await
                .unwrap();
            let executor = CommandExecutor::new(store.clone());
            let mut refused = 0;
            for _ in 0..60 {
                let command = Transfer {
                    from: a.clone(),
                    to: b.clone(),
                    amount: 2,
                };
                let result = if cached {
                    executor.execute_cached(command).await
                } else {
                    executor.execute(command).await
                };
                if result.is_err() {
                    refused += 1;
                }
            }
            (
                store.counts().stream_events.load(Ordering::Relaxed),
                refused,
                store.stream_version(&a).await.unwrap(),
            )
        }
    };
    let (read_plain, refused_plain, version_plain) = run(false).await;
    let (read_cached, refused_cached, version_cached) = run(true).await;
    // 50 transfers of 2 empty the account; the last 10 are refused either way.
    assert_eq!((refused_plain, refused_cached), (10, 10));
    assert_eq!(version_plain, version_cached);
    assert!(
        read_plain > 2_000,
        "uncached re-reads the streams each time: {read_plain}"
    );
    assert!(
        read_cached < 250,
        "cached reads only what is new: {read_cached}"
    );
}

/// Reads an order, discovers from it which account to charge, and charges
/// it: the account is only known after folding the order's events.
struct ChargeOrder {
    order: StreamId,
}

#[derive(Debug, thiserror::Error)]
#[error("the order names no account")]
struct NoAccount;

impl eventcore::Command for ChargeOrder {
    type Event = AccountEvent;
    type State = Option<StreamId>;
    type Error = NoAccount;

    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.order.clone()]
    }

    fn apply(
        &self,
        account: &mut Option<StreamId>,
        event: &eventcore::RecordedEvent<AccountEvent>,
    ) {
        if let AccountEvent::Credited { from, .. } = &event.event
            && event.stream_id == self.order
        {
            *account = StreamId::new(from).ok();
        }
    }

    fn handle(
        &self,
        account: &Option<StreamId>,
        decision: &mut eventcore::Decision<AccountEvent>,
    ) -> Result<(), NoAccount> {
        let account = account.clone().ok_or(NoAccount)?;
        if !decision.has_read(&account) {
            decision.read_also(account);
            return Ok(());
        }
        decision.emit(
            &account,
            AccountEvent::Debited {
                amount: 5,
                to: self.order.to_string(),
            },
        );
        Ok(())
    }
}

#[tokio::test]
async fn commands_can_discover_streams_while_deciding() {
    let store = InMemoryEventStore::new();
    let order = StreamId::new("order-1").unwrap();
    let account = StreamId::new("account-7").unwrap();
    seed(
        &store,
        &order,
        [AccountEvent::Credited {
            amount: 0,
            from: "account-7".into(),
        }],
    )
    .await
    .unwrap();
    seed(&store, &account, [AccountEvent::Deposited { amount: 50 }])
        .await
        .unwrap();
    let executor = CommandExecutor::new(store.clone());
    let outcome = executor
        .execute(ChargeOrder {
            order: order.clone(),
        })
        .await
        .unwrap();
    assert_eq!(outcome.events_written, 1);
    assert_eq!(
        store.stream_version(&account).await.unwrap(),
        StreamVersion::new(2)
    );

    // The charge landed on the stream discovered while deciding.
    let charged = store
        .read_stream_to_end(&account, StreamVersion::new(2))
        .await
        .unwrap();
    assert_eq!(charged[0].event_type, "Debited");
}

/// A store that fails on cue: each append and each stream read first pops
/// a scripted fault, if any is left, and otherwise forwards.
#[derive(Clone)]
struct Faulty {
    inner: InMemoryEventStore,
    appends: Arc<Mutex<VecDeque<AppendFault>>>,
    reads: Arc<Mutex<VecDeque<Error>>>,
    sends: Arc<AtomicU32>,
}

enum AppendFault {
    /// Fails before the store sees the append.
    Before(Error),
    /// Commits the append, then loses the acknowledgement.
    LostAck,
}

fn unavailable() -> Error {
    Error::Unavailable {
        operation: "test",
        source: "connection refused".into(),
    }
}

fn lost_ack() -> Error {
    Error::OutcomeUnknown {
        operation: "append",
        source: "connection lost after send".into(),
    }
}

impl Faulty {
    fn new(appends: Vec<AppendFault>, reads: Vec<Error>) -> Self {
        Self {
            inner: InMemoryEventStore::new(),
            appends: Arc::new(Mutex::new(appends.into())),
            reads: Arc::new(Mutex::new(reads.into())),
            sends: Arc::default(),
        }
    }
}

impl EventStore for Faulty {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        self.sends.fetch_add(1, Ordering::Relaxed);
        let fault = self.appends.lock().unwrap().pop_front();
        match fault {
            Some(AppendFault::Before(e)) => Err(e),
            Some(AppendFault::LostAck) => {
                self.inner.append(request).await?;
                Err(lost_ack())
            }
            None => self.inner.append(request).await,
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        if let Some(e) = self.reads.lock().unwrap().pop_front() {
            return Err(e);
        }
        self.inner.read_stream(stream, from, limit).await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        self.inner.read_all(after, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        self.inner.stream_version(stream).await
    }
}

fn transfer(from: &StreamId, to: &StreamId) -> Transfer {
    Transfer {
        from: from.clone(),
        to: to.clone(),
        amount: 10,
    }
}

async fn funded(store: &Faulty) -> (StreamId, StreamId) {
    let a = StreamId::new("account-a").unwrap();
    let b = StreamId::new("account-b").unwrap();
    seed(&store.inner, &a, [AccountEvent::Deposited { amount: 100 }])
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn a_lost_acknowledgement_is_settled_by_a_resend_not_a_second_decision() {
    let store = Faulty::new(vec![AppendFault::LostAck], vec![]);
    let (a, b) = funded(&store).await;
    let executor = CommandExecutor::new(store.clone());
    let outcome = executor.execute(transfer(&a, &b)).await.unwrap();
    let append = outcome.append.unwrap();
    assert!(append.replayed, "the re-send found the first send's commit");
    // Written once: 100 - 10, not 100 - 20.
    assert_eq!(store.inner.stream_version(&a).await.unwrap().get(), 2);
    assert_eq!(store.inner.stream_version(&b).await.unwrap().get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unsettled_send_is_reported_as_maybe_committed_with_its_request() {
    // The first send commits and loses its acknowledgement; every re-send
    // then fails before reaching the store, until the policy is spent.
    let mut faults = vec![AppendFault::LostAck];
    faults.extend((0..20).map(|_| AppendFault::Before(unavailable())));
    let store = Faulty::new(faults, vec![]);
    let (a, b) = funded(&store).await;
    let executor =
        CommandExecutor::new(store.clone()).with_retry_policy(RetryPolicy::new().max_attempts(4));
    let err = executor.execute(transfer(&a, &b)).await.unwrap_err();
    assert!(err.may_have_committed(), "{err}");
    let CommandError::MaybeCommitted {
        attempts, request, ..
    } = err
    else {
        panic!("expected MaybeCommitted, got {err:?}");
    };
    assert_eq!(attempts, 4);
    assert_eq!(store.sends.load(Ordering::Relaxed), 4);
    // Re-sending the reported request settles it: it had committed.
    let settled = store.inner.append(*request).await.unwrap();
    assert!(settled.replayed);
    assert_eq!(store.inner.stream_version(&a).await.unwrap().get(), 2);
}

#[tokio::test(start_paused = true)]
async fn faults_before_any_send_say_nothing_was_written() {
    let faults = (0..20)
        .map(|_| AppendFault::Before(unavailable()))
        .collect();
    let store = Faulty::new(faults, vec![]);
    let (a, b) = funded(&store).await;
    let executor =
        CommandExecutor::new(store.clone()).with_retry_policy(RetryPolicy::new().max_attempts(3));
    let err = executor.execute(transfer(&a, &b)).await.unwrap_err();
    assert!(!err.may_have_committed());
    assert!(
        matches!(err, CommandError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(store.inner.stream_version(&b).await.unwrap().get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_transient_read_failure_on_the_last_attempt_is_retries_exhausted() {
    // Regression: the last attempt's transient read failure used to come
    // back as `CommandError::Store`, documented as not worth retrying.
    let store = Faulty::new(vec![], (0..3).map(|_| unavailable()).collect());
    let (a, b) = funded(&store).await;
    let executor =
        CommandExecutor::new(store.clone()).with_retry_policy(RetryPolicy::new().max_attempts(3));
    let err = executor.execute(transfer(&a, &b)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(!err.may_have_committed());
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_policy_deadline() {
    // Regression: a store that is down (say, an exhausted pool) kept a
    // command retrying for minutes; the total budget now bounds it.
    let faults = (0..10_000)
        .map(|_| AppendFault::Before(unavailable()))
        .collect();
    let store = Faulty::new(faults, vec![]);
    let (a, b) = funded(&store).await;
    let policy = RetryPolicy::new()
        .max_attempts(10_000)
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200))
        .max_elapsed(Duration::from_secs(3));
    let executor = CommandExecutor::new(store.clone()).with_retry_policy(policy);
    let started = tokio::time::Instant::now();
    let err = executor.execute(transfer(&a, &b)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::RetriesExhausted { .. }),
        "{err:?}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed <= Duration::from_secs(3), "{elapsed:?}");
    let sends = store.sends.load(Ordering::Relaxed);
    assert!(sends > 5 && sends < 200, "{sends} sends");
}

#[tokio::test(start_paused = true)]
async fn outcomes_count_conflicts_and_transient_retries_apart() {
    let conflict = |stream: &StreamId| {
        Error::from(eventcore::VersionConflict {
            stream_id: stream.clone(),
            expected: eventcore::ExpectedVersion::Exact(StreamVersion::new(1)),
            actual: StreamVersion::new(2),
        })
    };
    let a = StreamId::new("account-a").unwrap();
    // A failed read, then a send that never reached the store, then a lost
    // race, then success.
    let store = Faulty::new(
        vec![
            AppendFault::Before(unavailable()),
            AppendFault::Before(conflict(&a)),
        ],
        vec![unavailable()],
    );
    let (a, b) = funded(&store).await;
    let executor = CommandExecutor::new(store.clone());
    let outcome = executor.execute(transfer(&a, &b)).await.unwrap();
    assert_eq!(outcome.attempts, 4);
    assert_eq!(outcome.conflicts, 1);
    assert_eq!(outcome.transient_retries, 2);

    let quiet = executor.execute(transfer(&a, &b)).await.unwrap();
    assert_eq!(
        (quiet.attempts, quiet.conflicts, quiet.transient_retries),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn the_state_cache_evicts_the_least_recently_used() {
    let store = CountingStore::new(InMemoryEventStore::new());
    let account = |name: &str| StreamId::new(format!("account-{name}")).unwrap();
    let sink = account("sink");
    for name in ["a", "b", "c"] {
        let deposits = (0..50).map(|_| AccountEvent::Deposited { amount: 10 });
        seed(&store, &account(name), deposits).await.unwrap();
    }
    let executor = CommandExecutor::new(store.clone()).with_state_cache_capacity(2);
    let counts = store.counts();
    // Events read by one cached transfer out of `from`.
    let read = async |from: &str| {
        let before = counts.stream_events.load(Ordering::Relaxed);
        executor
            .execute_cached(Transfer {
                from: account(from),
                to: sink.clone(),
                amount: 1,
            })
            .await
            .unwrap();
        counts.stream_events.load(Ordering::Relaxed) - before
    };
    assert!(read("a").await >= 50, "a miss folds the stream");
    assert!(read("b").await >= 50);
    assert!(read("a").await <= 3, "a hit reads only newer events");
    // Full: c evicts b, the least recently used (a was just used).
    assert!(read("c").await >= 50);
    assert!(read("a").await <= 3, "a was kept");
    assert!(read("b").await >= 50, "b was evicted");
}
