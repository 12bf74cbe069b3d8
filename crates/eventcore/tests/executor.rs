//! Executor behaviour beyond the store contract: the state cache.

use std::sync::atomic::Ordering;

use eventcore::{
    CommandExecutor, EventStore, InMemoryEventStore, StreamId, StreamVersion,
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
