//! Test tools: the store contract suite, a command test harness, and a
//! small bank domain the suite uses.
//!
//! * [`contract`]: every guarantee of [`EventStore`] as a test case. A store
//!   implementation runs all of them with [`event_store_contract_tests!`](crate::event_store_contract_tests).
//! * [`given`]: `given(history).when(command).then(events)` for your own
//!   command tests, without a database.
//! * [`CountingStore`]: counts the read round trips a subscriber makes.
//! * [`snapshots`]: the contract of snapshot stores and of the executor's
//!   use of them, run with
//!   [`snapshot_contract_tests!`](crate::snapshot_contract_tests).

pub mod bank;
pub mod contract;
mod counting;
mod harness;
pub mod projections;
pub mod snapshots;

pub use counting::{CountingStore, ReadCounts};
pub use harness::{CommandTest, TestOutcome, given};

use crate::{
    AppendOutcome, AppendRequest, Error, Event, EventMetadata, EventStore, ExpectedVersion,
    NewEvent, StreamId,
};

/// Appends `events` to `stream` with no expectation: a shortcut for seeding
/// test data.
pub async fn seed<S, E>(
    store: &S,
    stream: &StreamId,
    events: impl IntoIterator<Item = E>,
) -> Result<AppendOutcome, Error>
where
    S: EventStore + ?Sized,
    E: Event,
{
    let events = events
        .into_iter()
        .map(|e| NewEvent::new(&e, EventMetadata::new()))
        .collect::<Result<Vec<_>, _>>()?;
    store
        .append(AppendRequest::new().append(stream.clone(), ExpectedVersion::Any, events))
        .await
}

/// Asserts two sequences are equal, reporting lengths and the first
/// difference instead of printing thousands of items.
#[track_caller]
pub fn assert_same_sequence<T: PartialEq + std::fmt::Debug>(
    what: &str,
    actual: &[T],
    expected: &[T],
) {
    if actual != expected {
        let first = actual.iter().zip(expected).position(|(a, b)| a != b);
        let detail = match first {
            Some(i) => format!(
                "first difference at index {i}: {:?} vs {:?}",
                actual[i], expected[i]
            ),
            None => format!(
                "one is a prefix of the other; next expected: {:?}",
                expected.get(actual.len())
            ),
        };
        panic!(
            "{what}: got {} items, expected {}; {detail}",
            actual.len(),
            expected.len()
        );
    }
}

/// Positions of the events whose stream id starts with `prefix`, in global
/// order, once at least `count` of them are readable: `read_all` may hold
/// fresh events back for a moment while older transactions elsewhere (other
/// tests sharing the database) are open. Panics after 30 s.
pub async fn settled_positions<S: EventStore + ?Sized>(
    store: &S,
    prefix: &str,
    count: usize,
) -> Vec<crate::GlobalPosition> {
    let wait = async {
        loop {
            let mut out = Vec::new();
            let mut after = crate::GlobalPosition::START;
            loop {
                let page = store.read_all(after, 1000).await.expect("read_all");
                let Some(last) = page.last() else { break };
                after = last.position;
                out.extend(
                    page.iter()
                        .filter(|e| e.stream_id.as_str().starts_with(prefix))
                        .map(|e| e.position),
                );
            }
            if out.len() >= count {
                return out;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect("events became readable")
}
