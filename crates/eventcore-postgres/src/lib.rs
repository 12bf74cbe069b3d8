//! # eventcore-postgres
//!
//! The PostgreSQL store for [EventCore](eventcore): atomic multi-stream
//! appends with optimistic concurrency, a gap-safe global order for
//! projections, typed events, pooled connections with metrics and health
//! checks.
//!
//! ```no_run
//! use eventcore::CommandExecutor;
//! use eventcore_postgres::{PostgresConfig, PostgresConfigBuilder, PostgresEventStore};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Defaults for everything but the URL...
//! let config = PostgresConfig::new("postgres://localhost/eventcore");
//! // ...or the builder, which validates.
//! let config = PostgresConfigBuilder::new()
//!     .database_url("postgres://localhost/eventcore")
//!     .max_connections(20)
//!     .query_timeout(Duration::from_secs(30))
//!     .build()?;
//!
//! let store = PostgresEventStore::new(config).await?;
//! store.initialize().await?; // creates or migrates the schema; safe to repeat
//! let executor = CommandExecutor::new(store.clone());
//!
//! let health = store.health_check().await?;
//! println!("healthy: {}, latency: {:?}", health.is_healthy, health.database_latency);
//! let metrics = store.get_pool_metrics();
//! println!("pool: {}/{} in use", metrics.current_connections - metrics.idle_connections, metrics.max_connections);
//! # Ok(()) }
//! ```
//!
//! ## Schema
//!
//! Everything lives in one PostgreSQL schema (default `eventcore`,
//! [`PostgresConfig::schema`]): `event_streams` (one row per stream, its
//! version), `events` (the log, append-only by trigger) and
//! `schema_migrations`. [`PostgresEventStore::initialize`] applies the
//! versioned migrations of `migrations/` under an advisory lock, then checks
//! in the catalogs that every table, unique index, function and append-only
//! trigger the store relies on is there and enabled
//! ([`PostgresError::SchemaDamaged`] otherwise; [`health_check`] reports the
//! same). The schema name is quoted in every statement, so reserved words
//! work; see [`PostgresConfig::schema`] for the names allowed.
//!
//! [`health_check`]: PostgresEventStore::health_check
//!
//! ## Secrets
//!
//! The password of the database URL never appears in `{:?}` of
//! [`PostgresConfig`], [`PostgresConfigBuilder`] or [`PostgresEventStore`],
//! nor in this crate's errors and health reports: [`redact_secrets`] masks
//! it, and is there for your own logging of URLs too.
//!
//! ## Global order
//!
//! An event's [`GlobalPosition`](eventcore::GlobalPosition) is derived from
//! the id of the transaction that wrote it, and `$all` reads stop below the
//! oldest transaction still running anywhere in the cluster. A reader can
//! therefore never skip an event that commits late; the price is that a
//! long-running transaction holds readers back
//! ([`HealthStatus::oldest_transaction_age`] reports it). Transaction ids do
//! not survive `pg_dump`/restore: after a logical restore, [`restore_check`]
//! (`eventcore restore-check`) says how to advance the cluster's counter
//! past every store's positions, and until then stores refuse to write
//! ([`PostgresError::TransactionCounterBehind`]). Positions encode
//! transaction ids up to [`MAX_TRANSACTION_ID`]; past it writes are refused
//! ([`PostgresError::PositionsExhausted`]), never given wrapped positions.

//!
//! ## Live subscriptions
//!
//! Subscribers ([`eventcore::subscribe`], and the projection runners built
//! on it) are woken by the store that appended, in process, and across
//! processes by `NOTIFY`, sent outside the append transactions at most every
//! [`PostgresConfig::notify_interval`].
//!
//! ## Read replicas and failover
//!
//! [`PostgresConfigBuilder::read_replica`] sends `read_stream` and
//! `read_all` (so subscriptions and projection catch-up) to hot standbys;
//! writes, the reads commands decide on, checkpoints and wake-ups stay on
//! the primary. [`PostgresEventStore::commit_token`] and
//! [`wait_for_replicas`](PostgresEventStore::wait_for_replicas) read one's
//! own writes there; [`replica_lag`](PostgresEventStore::replica_lag) and
//! [`health_check`](PostgresEventStore::health_check) report lag.
//! Projection checkpoints are stamped with the cluster's
//! [`ClusterHistory`] (system identifier and timeline), and a runner
//! resuming on another history stops with
//! [`Error::HistoryChanged`](eventcore::Error::HistoryChanged);
//! [`StampedPosition`] does the same for positions you persist. See
//! "Replication and failover" in `docs/operations.md`.
//!
//! ## Behind PgBouncer
//!
//! A pooler in session mode needs nothing. Through one in transaction mode
//! (PgBouncer's `pool_mode = transaction`, which lets many clients share
//! few server connections) set
//! [`pooler(Pooler::Transaction)`](PostgresConfigBuilder::pooler): each
//! store call is then one explicit transaction carrying its own
//! `statement_timeout` (`SET LOCAL`), its statements are unnamed, and a
//! projection runner's lease is a renewed row with an expiry instead of a
//! session advisory lock, fenced by the same generation. `LISTEN` cannot
//! work through such a pooler: give the store a direct
//! [`notify_url`](PostgresConfigBuilder::notify_url) for wake-ups, or let
//! subscribers poll. [`Pooler::Transaction`] lists what changes; your own
//! statements on [`PostgresEventStore::pool`] must follow the same rules.
//!
//! ## Operations
//!
//! What the `eventcore` CLI and its web page do is here as functions:
//! [`projections`](PostgresEventStore::projections) (checkpoint, lag, the
//! runner holding the lease, skips, last error),
//! [`reset_projection`](PostgresEventStore::reset_projection),
//! [`request_projection_rebuild`](PostgresEventStore::request_projection_rebuild)
//! and [`skip_projection_event`](PostgresEventStore::skip_projection_event)
//! (refused while a runner is active unless forced, recorded:
//! [`projection_operations`](PostgresEventStore::projection_operations)),
//! [`export`](PostgresEventStore::export) and
//! [`import`](PostgresEventStore::import) as JSON Lines,
//! [`verify`](PostgresEventStore::verify),
//! [`streams`](PostgresEventStore::streams) and
//! [`connections`](PostgresEventStore::connections). Metrics go through the
//! `metrics` facade ([`instrument`], [`describe_metrics`]), spans through
//! `tracing`.

mod admin;
mod config;
mod counter;
mod error;
mod history;
pub mod instrument;
mod jsonb;
mod lease_row;
mod metrics;
mod notify;
mod pg_projection;
mod pool;
mod projection;
mod replica;
mod restore;
mod schema;
mod snapshots;
mod sql;
mod store;

/// `docs/guide.md`, whose code blocks run as this crate's doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
mod guide {}

pub use admin::{
    Check, CheckStatus, ConnectionGroup, Connections, ExportSelection, ExportSummary,
    ImportSummary, LastError, ProjectionOperation, ProjectionRequest, ProjectionStatus, RunnerInfo,
    StreamSummary, VerifyReport,
};
pub use config::{Pooler, PostgresConfig, PostgresConfigBuilder, redact_secrets};
pub use counter::{MAX_TRANSACTION_ID, TransactionCounter};
pub use error::{APPEND_ONLY_SQLSTATE, POSITIONS_EXHAUSTED_SQLSTATE, PostgresError};
pub use history::{ClusterHistory, InvalidStampedPosition, StampedPosition};
pub use instrument::describe_metrics;
pub use metrics::{HealthStatus, PoolMetrics, PoolMonitor, StoreStats};
pub use pg_projection::{PostgresProjection, Transactional};
pub use projection::PostgresCheckpointStore;
pub use replica::{CommitToken, ReplicaStatus};
pub use restore::{RestoreCheck, RestoreVerdict, StoreHighWater, UncheckedDatabase, restore_check};
pub use schema::SCHEMA_VERSION;
pub use snapshots::PostgresSnapshotStore;
pub use store::PostgresEventStore;
