//! Test tools: the store contract suite, a command test harness, and a
//! small bank domain the suite uses.
//!
//! * [`contract`]: every guarantee of [`EventStore`] as a test case. A store
//!   implementation runs all of them with [`event_store_contract_tests!`](crate::event_store_contract_tests).
//! * [`given`]: `given(history).when(command).then(events)` for your own
//!   command tests, without a database.

pub mod bank;
pub mod contract;
mod harness;
pub mod projections;

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
