//! # EventCore
//!
//! Event sourcing for Rust: typed events, commands that read several streams
//! and append to them atomically with optimistic concurrency, and a global,
//! skip-free order for projections.
//!
//! This crate holds the model and has no I/O: the [`EventStore`] trait, the
//! [`CommandExecutor`], an [`InMemoryEventStore`] and, with the `testing`
//! feature (for `[dev-dependencies]`), the [`testing`] toolkit. The
//! production store lives in `eventcore-postgres`.
//!
//! ```
//! use eventcore::{
//!     Command, CommandExecutor, Decide, Decision, Event, EventStore, InMemoryEventStore, State,
//!     States, StreamId,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! /// Recorded as "Deposited" and "Withdrawn": serde's tags.
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
//! enum Account {
//!     Deposited { amount: u64 },
//!     Withdrawn { amount: u64 },
//! }
//!
//! /// One account's balance: the fold every command on accounts shares.
//! #[derive(Default)]
//! struct Balance(u64);
//!
//! impl State for Balance {
//!     type Event = Account;
//!     fn apply(&mut self, event: &Account) {
//!         match event {
//!             Account::Deposited { amount } => self.0 += amount,
//!             Account::Withdrawn { amount } => self.0 -= amount,
//!         }
//!     }
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds: balance {balance}, wanted {wanted}")]
//! struct InsufficientFunds { balance: u64, wanted: u64 }
//!
//! /// Moves money between two accounts, never below zero: reads both
//! /// streams (the `#[stream]` fields) and appends to both atomically.
//! #[derive(Command)]
//! struct Transfer { #[stream] from: StreamId, #[stream] to: StreamId, amount: u64 }
//!
//! impl Decide for Transfer {
//!     type State = Balance;
//!     type Error = InsufficientFunds;
//!
//!     fn decide(&self, accounts: &States<Balance>, d: &mut Decision<Account>) -> Result<(), InsufficientFunds> {
//!         let balance = accounts[&self.from].0;
//!         if balance < self.amount {
//!             return Err(InsufficientFunds { balance, wanted: self.amount });
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
//! `docs/guide.md` in the repository takes a new user from there: state,
//! commands, PostgreSQL, transactional projections, testing, upcasting,
//! snapshots, operations. For a command with a fold of its own, implement
//! [`Command`](trait@Command) by hand.
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
//!   append, both per [`RetryPolicy`]; [`ExecutionOutcome`] counts each.
//! * **Evolving events**: [`Upcasters`] turn older schema versions and old
//!   type names into the current shape while decoding.
//! * **Long and hot streams**: durable [`Snapshots`] of a [`State`], and
//!   [`CommandExecutor::execute_cached`]'s bounded state cache.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The derives name `::eventcore`, which must resolve inside this crate too.
extern crate self as eventcore;

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
mod snapshot;
mod state;
mod store;
mod subscription;
pub mod telemetry;
// Documented whether or not the feature is on, so its links resolve.
#[cfg(any(feature = "testing", doc))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod upcast;

pub use append::{
    AppendOutcome, AppendRequest, DEFAULT_MAX_EVENT_BYTES, MAX_EVENTS_PER_APPEND, StreamAppend,
    encoded_size,
};
/// Re-exported for implementing the two traits used as trait objects,
/// [`SnapshotStore`] and [`Lease`], without a direct dependency.
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
/// Derives [`CommandStreams`] from `#[stream]` fields; see the macro's own
/// documentation.
#[cfg(feature = "derive")]
pub use eventcore_macros::Command;
/// Derives [`Event`](trait@Event) for an enum or a struct; see the
/// macro's own documentation.
#[cfg(feature = "derive")]
pub use eventcore_macros::Event;
pub use executor::{CacheableCommand, CommandExecutor, ExecutionOutcome};
pub use ids::{EventId, ExpectedVersion, GlobalPosition, StreamId, StreamVersion};
pub use memory::InMemoryEventStore;
pub use projection::{
    BoxError, CatchUpTimeout, CheckpointStore, ErrorStrategy, InMemoryCheckpointStore, Lease,
    PartialBatch, Projection, ProjectionRunner, RunSummary, RunnerOptions, SkippedEvent,
};
pub use retry::RetryPolicy;
pub use rules::{MAX_EVENT_TYPE_LEN, MAX_JSON_DEPTH, MAX_NUMBER_SCALE, MAX_SCHEMA_VERSION};
pub use snapshot::{InMemorySnapshotStore, Snapshot, SnapshotPlan, SnapshotStore, Snapshots};
pub use state::{CommandStreams, Decide, State, States, StreamField};
pub use store::{DEFAULT_READ_PAGE, EventStore, ReadBlocker, read_each_stream, read_stream_pages};
pub use subscription::{EventFilter, SubscriptionOptions, subscribe, subscribe_typed};
pub use telemetry::describe_metrics;
pub use upcast::{UpcastError, Upcasters};
