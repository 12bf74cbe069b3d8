//! The contract of snapshot stores, and of the executor's use of them, for
//! every store.
//!
//! ```no_run
//! eventcore::snapshot_contract_tests!(
//!     || async { eventcore::InMemoryEventStore::new() },
//!     |_store: &eventcore::InMemoryEventStore| eventcore::InMemorySnapshotStore::new()
//! );
//! ```

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{CountingStore, bank::AccountEvent, seed};
use crate::{
    CommandExecutor, CommandStreams, Decide, Decision, EventData, EventId, EventStore, Snapshot,
    SnapshotStore, Snapshots, State, States, StreamId, StreamVersion,
};

/// Generates one `#[tokio::test]` per case. Arguments: a closure returning a
/// future of a fresh event store, and a closure making a snapshot store for
/// it.
#[macro_export]
macro_rules! snapshot_contract_tests {
    ($store:expr, $snapshots:expr) => {
        $crate::snapshot_contract_tests!(@cases $store, $snapshots;
            snapshot_store_keeps_the_latest_per_key,
            commands_start_from_the_latest_snapshot_and_top_it_up,
            a_changed_state_version_ignores_old_snapshots,
            unreadable_snapshots_are_ignored_and_replaced,
        );
    };
    (@cases $store:expr, $snapshots:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = ($store)().await;
                let snapshots = ($snapshots)(&store);
                $crate::testing::snapshots::$case(store, snapshots).await;
            }
        )*
    };
}

/// The snapshot name of the states below.
const NAME: &str = "contract.balance";

/// One account's balance and event count, snapshotted every 100 events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    /// The balance.
    pub balance: i128,
    /// Events folded.
    pub events: u64,
}

impl State for Balance {
    type Event = AccountEvent;

    fn apply(&mut self, event: &AccountEvent) {
        self.balance += event.delta();
        self.events += 1;
    }

    fn snapshots() -> Option<Snapshots<Self>> {
        Some(Snapshots::new(NAME).version(1).every(100))
    }
}

/// The same state at version 2 of its shape: what a deployment that
/// changed the fold runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalanceV2 {
    /// The balance.
    pub balance: i128,
}

impl State for BalanceV2 {
    type Event = AccountEvent;

    fn apply(&mut self, event: &AccountEvent) {
        self.balance += event.delta();
    }

    fn snapshots() -> Option<Snapshots<Self>> {
        Some(Snapshots::new(NAME).version(2).every(100))
    }
}

/// The overdraft rule refused a withdrawal.
#[derive(Debug, thiserror::Error)]
#[error("insufficient funds: balance {balance}")]
pub struct Insufficient {
    /// The balance seen.
    pub balance: i128,
}

/// What [`Withdraw`] needs of a state.
pub trait HasBalance {
    /// The balance.
    fn balance(&self) -> i128;
}

impl HasBalance for Balance {
    fn balance(&self) -> i128 {
        self.balance
    }
}

impl HasBalance for BalanceV2 {
    fn balance(&self) -> i128 {
        self.balance
    }
}

/// Withdraws from one account, never below zero, deciding on the shared
/// state `S`. (Its streams by hand, not derived: this module builds without
/// the `derive` feature.)
pub struct Withdraw<S> {
    /// The account.
    pub account: StreamId,
    /// The amount.
    pub amount: u64,
    /// The state it decides on.
    pub state: std::marker::PhantomData<fn() -> S>,
}

impl<S> Withdraw<S> {
    /// Withdraws `amount` from `account`.
    pub fn new(account: &StreamId, amount: u64) -> Self {
        Self {
            account: account.clone(),
            amount,
            state: std::marker::PhantomData,
        }
    }
}

impl<S> CommandStreams for Withdraw<S> {
    fn streams(&self) -> Vec<StreamId> {
        vec![self.account.clone()]
    }
}

impl<S: State<Event = AccountEvent> + HasBalance> Decide for Withdraw<S> {
    type State = S;
    type Error = Insufficient;

    fn decide(
        &self,
        states: &States<S>,
        d: &mut Decision<AccountEvent>,
    ) -> Result<(), Insufficient> {
        let balance = states[&self.account].balance();
        if balance < i128::from(self.amount) {
            return Err(Insufficient { balance });
        }
        d.emit(
            &self.account,
            AccountEvent::Debited {
                amount: self.amount,
                to: "cash".into(),
            },
        );
        Ok(())
    }
}

fn unique(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", EventId::new())).expect("valid id")
}

fn snapshot(stream: &StreamId, version: u64, state_version: u32, data: EventData) -> Snapshot {
    Snapshot {
        state: NAME.to_owned(),
        state_version,
        stream_id: stream.clone(),
        stream_version: StreamVersion::new(version),
        data,
    }
}

fn balance_data(balance: i128, events: u64) -> EventData {
    EventData::from_serialize(&Balance { balance, events }).expect("serializes")
}

async fn deposits<S: EventStore + ?Sized>(store: &S, stream: &StreamId, n: usize) {
    seed(
        store,
        stream,
        (0..n).map(|_| AccountEvent::Deposited { amount: 1 }),
    )
    .await
    .expect("seed");
}

async fn stored<N: SnapshotStore + ?Sized>(
    snapshots: &N,
    state_version: u32,
    stream: &StreamId,
) -> Option<Snapshot> {
    let mut found = snapshots
        .load(NAME, state_version, std::slice::from_ref(stream))
        .await
        .expect("load snapshots");
    assert!(found.len() <= 1, "one snapshot per key, got {found:?}");
    found.pop()
}

/// A store keeps, per state name, state version and stream, the snapshot
/// of the highest stream version, and loads several streams at once.
pub async fn snapshot_store_keeps_the_latest_per_key<S, N>(_store: S, snapshots: N)
where
    N: SnapshotStore,
{
    let a = unique("snap");
    let b = unique("snap");
    assert_eq!(stored(&snapshots, 1, &a).await, None);
    snapshots
        .save(snapshot(&a, 10, 1, balance_data(10, 10)))
        .await
        .unwrap();
    let got = stored(&snapshots, 1, &a).await.expect("saved");
    assert_eq!(got.stream_version, StreamVersion::new(10));
    assert_eq!(got.state, NAME);
    assert_eq!(got.state_version, 1);
    assert_eq!(
        got.data.deserialize::<Balance>().unwrap(),
        Balance {
            balance: 10,
            events: 10
        }
    );
    // An older one does not replace it; a newer one does.
    snapshots
        .save(snapshot(&a, 5, 1, balance_data(5, 5)))
        .await
        .unwrap();
    assert_eq!(
        stored(&snapshots, 1, &a)
            .await
            .unwrap()
            .stream_version
            .get(),
        10
    );
    snapshots
        .save(snapshot(&a, 20, 1, balance_data(20, 20)))
        .await
        .unwrap();
    assert_eq!(
        stored(&snapshots, 1, &a)
            .await
            .unwrap()
            .stream_version
            .get(),
        20
    );
    // Keyed by state version, name and stream too.
    assert_eq!(stored(&snapshots, 2, &a).await, None);
    assert_eq!(stored(&snapshots, 1, &b).await, None);
    let mut other = snapshot(&a, 30, 1, balance_data(1, 1));
    other.state = "contract.other".into();
    snapshots.save(other).await.unwrap();
    assert_eq!(
        stored(&snapshots, 1, &a)
            .await
            .unwrap()
            .stream_version
            .get(),
        20
    );
    snapshots
        .save(snapshot(&b, 3, 1, balance_data(3, 3)))
        .await
        .unwrap();
    let mut both = snapshots
        .load(NAME, 1, &[a.clone(), b.clone(), unique("snap")])
        .await
        .unwrap();
    both.sort_by_key(|s| s.stream_version);
    let versions: Vec<(StreamId, u64)> = both
        .iter()
        .map(|s| (s.stream_id.clone(), s.stream_version.get()))
        .collect();
    assert_eq!(versions, [(b, 3), (a, 20)]);
}

/// A command folds a long stream once, saves a snapshot, and from then on
/// starts from the latest snapshot and reads only the events after it: a
/// planted snapshot (with a balance no event produced) is what later
/// commands decide on, topped up with the events appended since.
pub async fn commands_start_from_the_latest_snapshot_and_top_it_up<S, N>(store: S, snapshots: N)
where
    S: EventStore + Clone + 'static,
    N: SnapshotStore + Clone + 'static,
{
    let account = unique("snap");
    deposits(&store, &account, 250).await;
    let store = CountingStore::new(store);
    let counts = store.counts();
    let executor = || CommandExecutor::new(store.clone()).with_snapshots(snapshots.clone());
    let read = || counts.stream_events.load(Ordering::Relaxed);

    executor()
        .execute(Withdraw::<Balance>::new(&account, 10))
        .await
        .expect("withdraw from 250");
    assert_eq!(read(), 250, "the first command folds the whole stream");
    let taken = stored(&snapshots, 1, &account).await.expect("a snapshot");
    assert_eq!(taken.stream_version.get(), 250);
    assert_eq!(
        taken.data.deserialize::<Balance>().unwrap(),
        Balance {
            balance: 250,
            events: 250
        }
    );

    // A fresh executor (no cache): the snapshot and the one event after it.
    executor()
        .execute(Withdraw::<Balance>::new(&account, 10))
        .await
        .expect("withdraw from 240");
    assert_eq!(read(), 251, "only the event after the snapshot is read");

    // The stream is at 252 (balance 230). A snapshot planted at 252 says
    // 1,000,000: a withdrawal only the snapshot can cover succeeds.
    snapshots
        .save(snapshot(&account, 252, 1, balance_data(1_000_000, 252)))
        .await
        .unwrap();
    executor()
        .execute(Withdraw::<Balance>::new(&account, 600_000))
        .await
        .expect("the snapshot's balance is what the command decided on");
    // Topped up with that withdrawal (event 253): 400,000 left.
    let refused = executor()
        .execute(Withdraw::<Balance>::new(&account, 400_001))
        .await
        .expect_err("400,000 left");
    assert_eq!(
        refused.rejection().map(|r| r.balance),
        Some(400_000),
        "the snapshot was topped up with the newer event"
    );
    executor()
        .execute(Withdraw::<Balance>::new(&account, 400_000))
        .await
        .expect("exactly the balance");
    assert_eq!(
        store.stream_version(&account).await.unwrap().get(),
        254,
        "every decision was appended once"
    );
}

/// Snapshots of another state version are not used: a state whose fold or
/// shape changed starts from the events, and keeps its own snapshots.
pub async fn a_changed_state_version_ignores_old_snapshots<S, N>(store: S, snapshots: N)
where
    S: EventStore + Clone + 'static,
    N: SnapshotStore + Clone + 'static,
{
    let account = unique("snap");
    deposits(&store, &account, 120).await;
    // A version 1 snapshot no event produced.
    snapshots
        .save(snapshot(&account, 120, 1, balance_data(1_000_000, 120)))
        .await
        .unwrap();
    let executor = CommandExecutor::new(store.clone()).with_snapshots(snapshots.clone());
    let refused = executor
        .execute(Withdraw::<BalanceV2>::new(&account, 1_000))
        .await
        .expect_err("version 2 folds the 120 events");
    assert_eq!(refused.rejection().map(|r| r.balance), Some(120));
    let v2 = stored(&snapshots, 2, &account)
        .await
        .expect("a version 2 snapshot");
    assert_eq!(v2.stream_version.get(), 120);
    assert_eq!(
        v2.data.deserialize::<BalanceV2>().unwrap(),
        BalanceV2 { balance: 120 }
    );
    // The version 1 snapshot is still there for version 1 states.
    let ok = executor
        .execute(Withdraw::<Balance>::new(&account, 1_000))
        .await;
    assert!(ok.is_ok(), "version 1 still reads its own snapshot: {ok:?}");
}

/// A snapshot that does not decode is ignored (the stream is folded from
/// its events) and replaced by a good one.
pub async fn unreadable_snapshots_are_ignored_and_replaced<S, N>(store: S, snapshots: N)
where
    S: EventStore + Clone + 'static,
    N: SnapshotStore + Clone + 'static,
{
    let account = unique("snap");
    deposits(&store, &account, 150).await;
    let garbage = EventData::from_json(r#"{"not": "a balance"}"#).unwrap();
    snapshots
        .save(snapshot(&account, 150, 1, garbage))
        .await
        .unwrap();
    let executor = CommandExecutor::new(store.clone()).with_snapshots(snapshots.clone());
    let refused = executor
        .execute(Withdraw::<Balance>::new(&account, 151))
        .await
        .expect_err("150 in the account");
    assert_eq!(refused.rejection().map(|r| r.balance), Some(150));
    let replaced = stored(&snapshots, 1, &account).await.expect("a snapshot");
    assert_eq!(
        replaced.data.deserialize::<Balance>().ok(),
        Some(Balance {
            balance: 150,
            events: 150
        }),
        "the unreadable snapshot was replaced"
    );
}
