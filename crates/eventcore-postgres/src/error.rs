//! The crate's error type and the mapping of database errors onto
//! [`eventcore::Error`].

use std::time::Duration;

/// SQLSTATE codes the store reacts to, by name.
pub(crate) mod sqlstate {
    pub(crate) const UNIQUE_VIOLATION: &str = "23505";
    pub(crate) const UNDEFINED_TABLE: &str = "42P01";
    pub(crate) const INVALID_SCHEMA_NAME: &str = "3F000";
    pub(crate) const SERIALIZATION_FAILURE: &str = "40001";
    pub(crate) const DEADLOCK_DETECTED: &str = "40P01";
    pub(crate) const QUERY_CANCELED: &str = "57014";
    pub(crate) const ADMIN_SHUTDOWN: &str = "57P01";
    pub(crate) const CRASH_SHUTDOWN: &str = "57P02";
    pub(crate) const CANNOT_CONNECT_NOW: &str = "57P03";
    pub(crate) const TOO_MANY_CONNECTIONS: &str = "53300";
    pub(crate) const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    /// Class 08: connection exceptions.
    pub(crate) const CONNECTION_EXCEPTION_CLASS: &str = "08";
}

/// SQLSTATE raised by the trigger that refuses `UPDATE`, `DELETE` and
/// `TRUNCATE` on the events table (see `migrations/0001_event_store.sql`).
pub const APPEND_ONLY_SQLSTATE: &str = "EC001";

/// SQLSTATE raised by `append_to_streams` when a stream's expected version
/// does not hold (see `migrations/0001_event_store.sql`). The store
/// turns it into a [`eventcore::VersionConflict`] after reading the actual
/// versions; should it escape, it is a transient abort.
pub(crate) const CONFLICT_SQLSTATE: &str = "EC002";

/// SQLSTATE raised by `append_to_streams`, which computes every position, when
/// the transaction's id is past the largest a position can encode
/// ([`MAX_TRANSACTION_ID`](crate::MAX_TRANSACTION_ID); see
/// `migrations/0001_event_store.sql`). The store reports it as
/// [`PostgresError::PositionsExhausted`].
pub const POSITIONS_EXHAUSTED_SQLSTATE: &str = "EC003";

/// Constraint names from the migrations that map to domain errors.
pub(crate) mod constraint {
    pub(crate) const EVENTS_EVENT_ID_KEY: &str = "events_event_id_key";
    pub(crate) const EVENTS_STREAM_VERSION_KEY: &str = "events_stream_version_key";
}

/// Errors of the PostgreSQL store's own operations (configuration,
/// connection, schema). Event store operations return [`eventcore::Error`],
/// which this type converts into and wraps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// A configuration value is invalid; the message starts with the
    /// setting's name and says why (for a duration, its allowed range).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The database could not be reached. The message names the cause
    /// (connection refused, no answer, authentication, ...), with any
    /// password redacted.
    #[error("cannot connect to the database: {}", crate::redact_secrets(&.0.to_string()))]
    Connect(#[source] sqlx::Error),

    /// A migration failed; the schema is left at the previous version.
    #[error("migration {version} ({name}) failed: {}", crate::redact_secrets(&.source.to_string()))]
    Migration {
        /// The failing migration's version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },

    /// The schema was migrated by a newer release than this one.
    #[error(
        "schema is at version {found}, newer than this release knows ({known}); upgrade eventcore-postgres"
    )]
    SchemaTooNew {
        /// The version recorded in the database.
        found: i32,
        /// The newest version this release ships.
        known: i32,
    },

    /// Objects the store relies on are missing from its schema or disabled
    /// (a dropped table, a dropped or disabled append-only trigger, ...):
    /// found by [`initialize`](crate::PostgresEventStore::initialize) and,
    /// as the source of [`eventcore::Error::Backend`], by the first append
    /// of a store. See "Damaged schemas" in `docs/operations.md`.
    #[error(
        "schema {schema} is damaged: {}; restore it from a backup (see docs/operations.md)",
        missing.join(", ")
    )]
    SchemaDamaged {
        /// The schema.
        schema: String,
        /// What is wrong, one entry per object: `table events missing`,
        /// `trigger events_append_only disabled`, ...
        missing: Vec<String>,
    },

    /// The schema is not at the version this release needs (not initialized,
    /// or created by an older release and not migrated yet): the first
    /// append of a store refuses with this as the source of
    /// [`eventcore::Error::Backend`]. Run
    /// [`initialize`](crate::PostgresEventStore::initialize).
    #[error(
        "schema {schema} is {}; this release needs version {expected}: run initialize()",
        found.map_or_else(|| "not initialized".to_owned(), |v| format!("at version {v}"))
    )]
    SchemaNotCurrent {
        /// The schema.
        schema: String,
        /// The version recorded in the database (`None`: no ledger).
        found: Option<i32>,
        /// The version this release needs.
        expected: i32,
    },

    /// The cluster's transaction counter is not past the transaction id of
    /// the schema's newest event (or checkpoint): the database was restored
    /// from a logical dump (`pg_dump`/`pg_restore`) into a cluster whose
    /// counter was not advanced. New events would take positions at or
    /// below restored ones, and `$all` readers would not see the restored
    /// events until the counter passed them, so writes are refused; found
    /// by [`initialize`](crate::PostgresEventStore::initialize),
    /// [`health_check`](crate::PostgresEventStore::health_check) and, as
    /// the source of [`eventcore::Error::Backend`], the first append of a
    /// store. Stop every writer and follow `eventcore restore-check`
    /// ("Backup and restore" in `docs/operations.md`).
    #[error(
        "schema {schema}: the cluster's transaction counter ({next_transaction_id}) is not past the newest \
         position ({newest_position}, written by transaction {}); was the database restored from a \
         logical dump? Writes are refused: stop all writers and run `eventcore restore-check` \
         (docs/operations.md, Backup and restore)",
        newest_position.get() >> crate::counter::INDEX_BITS
    )]
    TransactionCounterBehind {
        /// The schema.
        schema: String,
        /// Its newest event's position.
        newest_position: eventcore::GlobalPosition,
        /// The next transaction id the cluster will assign (64-bit: epoch
        /// `<< 32` plus the 32-bit id).
        next_transaction_id: u64,
    },

    /// The cluster's transaction ids are past the largest a global
    /// position can encode ([`MAX_TRANSACTION_ID`](crate::MAX_TRANSACTION_ID)):
    /// writes are refused rather than given positions that wrap. Found like
    /// [`TransactionCounterBehind`](Self::TransactionCounterBehind), and by
    /// the database itself in every append (SQLSTATE
    /// [`POSITIONS_EXHAUSTED_SQLSTATE`]). Usually an operator's
    /// `pg_resetwal -e` set the epoch too high: see "Backup and restore" in
    /// `docs/operations.md`.
    #[error(
        "the cluster's transaction id{} is past the largest a global position can encode ({}): \
         writes are refused; run `eventcore restore-check` (docs/operations.md, Backup and restore)",
        next_transaction_id.map(|n| format!(" ({n})")).unwrap_or_default(),
        crate::MAX_TRANSACTION_ID
    )]
    PositionsExhausted {
        /// The next transaction id the cluster will assign, when known
        /// (`None` when the database refused an append).
        next_transaction_id: Option<u64>,
    },

    /// An operator's action on a projection was refused because a runner
    /// of it is active (see [`ProjectionRequest::force`](crate::ProjectionRequest::force)).
    #[error("a runner of projection {projection} is active ({runner}); stop it first, or force")]
    ProjectionBusy {
        /// The projection.
        projection: String,
        /// Who holds its lease: backend pid, application, client, since when.
        runner: String,
    },

    /// An operator named a projection the store has no record of.
    #[error("no projection named {projection:?} in this schema{}", known_names(.known))]
    UnknownProjection {
        /// The name given.
        projection: String,
        /// The projections the store knows.
        known: Vec<String>,
    },

    /// A line of an import could not be taken: not an event of the export
    /// format, or at odds with what the target store holds. Nothing of that
    /// line or after it was written.
    #[error("import line {line}: {reason}")]
    Import {
        /// The line, counted from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading an import or writing an export failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// An event store operation failed.
    #[error(transparent)]
    Store(#[from] eventcore::Error),
}

fn known_names(known: &[String]) -> String {
    if known.is_empty() {
        " (it has none)".to_owned()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

impl From<PostgresError> for eventcore::Error {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Store(inner) => inner,
            PostgresError::Connect(source) => eventcore::Error::Unavailable {
                operation: "connect",
                source: Box::new(source),
            },
            other => eventcore::Error::Backend {
                operation: "setup",
                source: Box::new(other),
            },
        }
    }
}

/// The SQLSTATE and constraint of a database error, if it is one.
pub(crate) fn db_error_parts(e: &sqlx::Error) -> Option<(String, Option<String>)> {
    match e {
        sqlx::Error::Database(db) => Some((
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().map(str::to_owned),
        )),
        _ => None,
    }
}

/// Whether a SQLSTATE says the server ended the session: terminated,
/// crashed, or the connection itself failed.
pub(crate) fn ends_session(code: &str) -> bool {
    code.starts_with(sqlstate::CONNECTION_EXCEPTION_CLASS)
        || code == sqlstate::ADMIN_SHUTDOWN
        || code == sqlstate::CRASH_SHUTDOWN
}

/// Whether `e` means the connection it happened on is gone.
pub(crate) fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(_) => db_error_parts(e).is_some_and(|(code, _)| ends_session(&code)),
        _ => false,
    }
}

/// Maps a sqlx error onto the core error by SQLSTATE and error kind.
pub(crate) fn map_sqlx(
    operation: &'static str,
    query_timeout: Duration,
    e: sqlx::Error,
) -> eventcore::Error {
    use eventcore::Error as E;
    let transient_db = |code: &str| {
        ends_session(code)
            || matches!(
                code,
                sqlstate::CANNOT_CONNECT_NOW | sqlstate::TOO_MANY_CONNECTIONS
            )
    };
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                sqlstate::SERIALIZATION_FAILURE
                | sqlstate::DEADLOCK_DETECTED
                | CONFLICT_SQLSTATE => E::Aborted {
                    operation,
                    source: Box::new(e),
                },
                POSITIONS_EXHAUSTED_SQLSTATE => E::Backend {
                    operation,
                    source: Box::new(PostgresError::PositionsExhausted {
                        next_transaction_id: None,
                    }),
                },
                sqlstate::QUERY_CANCELED => E::Timeout {
                    operation,
                    elapsed: query_timeout,
                },
                c if transient_db(c) => E::Unavailable {
                    operation,
                    source: Box::new(e),
                },
                _ => E::Backend {
                    operation,
                    source: Box::new(e),
                },
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => E::Unavailable {
            operation,
            source: Box::new(e),
        },
        _ => E::Backend {
            operation,
            source: Box::new(e),
        },
    }
}
