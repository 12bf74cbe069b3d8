//! # EventCore
//!
//! Event sourcing for Rust: typed events, commands that read several streams
//! and append to them atomically with optimistic concurrency, and a global,
//! skip-free order for projections.
//!
//! This crate holds the model and has no I/O: the [`EventStore`] trait, the
//! [`CommandExecutor`], an [`InMemoryEventStore`] and the [`testing`]
//! toolkit. The production store lives in `eventcore-postgres`.
//!
//! ```
//! use eventcore::{
//!     Command, CommandExecutor, Decision, Event, EventStore, InMemoryEventStore, RecordedEvent,
//!     StreamId,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! enum Account {
//!     Deposited { amount: u64 },
//!     Withdrawn { amount: u64 },
//! }
//!
//! impl Event for Account {
//!     fn event_type(&self) -> &'static str {
//!         match self {
//!             Account::Deposited { .. } => "Deposited",
//!             Account::Withdrawn { .. } => "Withdrawn",
//!         }
//!     }
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds: balance {balance}, wanted {wanted}")]
//! struct InsufficientFunds { balance: u64, wanted: u64 }
//!
//! /// Moves money between two accounts, never below zero.
//! struct Transfer { from: StreamId, to: StreamId, amount: u64 }
//!
//! #[derive(Default)]
//! struct Balances { from: u64 }
//!
//! impl Command for Transfer {
//!     type Event = Account;
//!     type State = Balances;
//!     type Error = InsufficientFunds;
//!
//!     fn read_streams(&self) -> Vec<StreamId> {
//!         vec![self.from.clone(), self.to.clone()]
//!     }
//!
//!     fn apply(&self, state: &mut Balances, event: &RecordedEvent<Account>) {
//!         if event.stream_id == self.from {
//!             match event.event {
//!                 Account::Deposited { amount } => state.from += amount,
//!                 Account::Withdrawn { amount } => state.from -= amount,
//!             }
//!         }
//!     }
//!
//!     fn handle(&self, state: &Balances, d: &mut Decision<Account>) -> Result<(), InsufficientFunds> {
//!         if state.from < self.amount {
//!             return Err(InsufficientFunds { balance: state.from, wanted: self.amount });
//!         }
//!         d.emit(&self.from, Account::Withdrawn { amount: self.amount });
//!         d.emit(&self.to, Account::Deposited { amount: self.amount });
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryEventStore::new();
//! let alice = StreamId::new("account-alice")?;
//! let bob = StreamId::new("account-bob")?;
//! eventcore::testing::seed(&store, &alice, [Account::Deposited { amount: 100 }]).await?;
//!
//! let executor = CommandExecutor::new(store);
//! executor.execute(Transfer { from: alice.clone(), to: bob.clone(), amount: 30 }).await?;
//! let refused = executor.execute(Transfer { from: bob.clone(), to: alice, amount: 50 }).await;
//! assert!(refused.unwrap_err().rejection().is_some());
//! assert_eq!(executor.store().stream_version(&bob).await?.get(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! ## Guarantees
//!
//! * **Atomic multi-stream append**: an [`AppendRequest`] writes to any
//!   number of streams, all or nothing.
//! * **Optimistic concurrency**: every stream a command read carries an
//!   [`ExpectedVersion`]; a stale one fails with [`Error::Conflict`] naming
//!   the stream and both versions, and the executor re-runs the command.
//! * **Idempotent appends** by [`EventId`].
//! * **Accepted means readable**: every store checks each event before it
//!   writes anything (type name, schema version, JSON depth, characters and
//!   numbers, metadata times; see [`NewEvent`]) and refuses what it could
//!   not read back identically with [`Error::InvalidEvent`] naming it.
//! * **Typed events**: your serde types, decoded back (type name and schema
//!   version checked, see [`Event::decode`]) or failing with
//!   [`Error::Decode`], never skipped.
//! * **Retries**: conflicts re-run the command, transient faults re-send the
//!   append, both per [`RetryPolicy`].

mod append;
mod command;
mod error;
mod event;
mod executor;
mod ids;
mod memory;
mod projection;
mod retry;
mod rules;
mod store;
mod subscription;
pub mod telemetry;
pub mod testing;

pub use append::{
    AppendOutcome, AppendRequest, DEFAULT_MAX_EVENT_BYTES, MAX_EVENTS_PER_APPEND, StreamAppend,
    encoded_size,
};
/// Re-exported so projections can be written without a direct dependency.
pub use async_trait::async_trait;
pub use command::{Command, Decision};
pub use error::{
    CommandError, Error, InvalidEventReason, InvalidStreamId, JsonPart, JsonProblem,
    VersionConflict,
};
pub use event::{
    DecodeError, Event, EventData, EventMetadata, NewEvent, RecordedEvent, StoredEvent,
    decode_current,
};
pub use executor::{CacheableCommand, CommandExecutor, ExecutionOutcome};
pub use ids::{EventId, ExpectedVersion, GlobalPosition, StreamId, StreamVersion};
pub use memory::InMemoryEventStore;
pub use projection::{
    BoxError, CatchUpTimeout, CheckpointStore, ErrorStrategy, InMemoryCheckpointStore, Lease,
    PartialBatch, Projection, ProjectionRunner, RunSummary, RunnerOptions, SkippedEvent,
};
pub use retry::RetryPolicy;
pub use rules::{MAX_EVENT_TYPE_LEN, MAX_JSON_DEPTH, MAX_NUMBER_SCALE, MAX_SCHEMA_VERSION};
pub use store::{DEFAULT_READ_PAGE, EventStore, ReadBlocker, read_each_stream};
pub use subscription::{EventFilter, SubscriptionOptions, subscribe, subscribe_typed};
pub use telemetry::describe_metrics;
