//! Versioned migrations, applied by [`PostgresEventStore::initialize`],
//! and the checks that the schema still holds what the store relies on.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{PgConnection, Row};

use crate::{
    PostgresError, PostgresEventStore, counter,
    error::{db_error_parts, sqlstate},
    pool::Call,
    sql,
};

/// One migration file from `migrations/`.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, oldest first. Later releases append; never edit one
/// that has shipped.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_store",
        sql: include_str!("../migrations/0001_event_store.sql"),
    },
    Migration {
        version: 2,
        name: "history_stamps",
        sql: include_str!("../migrations/0002_history_stamps.sql"),
    },
    Migration {
        version: 3,
        name: "lease_rows",
        sql: include_str!("../migrations/0003_lease_rows.sql"),
    },
];

/// The schema version this release creates.
pub const SCHEMA_VERSION: i32 = 3;

/// Every migration's version and name, oldest first (what the ledger
/// should hold).
pub(crate) fn migration_names() -> impl Iterator<Item = (i32, &'static str)> {
    MIGRATIONS.iter().map(|m| (m.version, m.name))
}

/// A database object the store relies on.
struct Required {
    /// The migration that creates it (objects a later migration drops are
    /// not listed).
    since: i32,
    kind: &'static str,
    name: &'static str,
    /// For a trigger: its table.
    on_table: Option<&'static str>,
}

const fn required(since: i32, kind: &'static str, name: &'static str) -> Required {
    Required {
        since,
        kind,
        name,
        on_table: None,
    }
}

/// What the store relies on, by the migration that creates it: the tables,
/// the unique indexes that keep ids, versions and positions unique (and
/// that `ON CONFLICT` needs), the correlation-id index, the write
/// functions, and the triggers that keep events append-only. Later
/// releases append.
const REQUIRED: &[Required] = &[
    required(1, "table", "schema_migrations"),
    required(1, "table", "event_streams"),
    required(1, "index", "event_streams_pkey"),
    required(1, "table", "events"),
    required(1, "index", "events_pkey"),
    required(1, "index", "events_event_id_key"),
    required(1, "index", "events_stream_version_key"),
    required(1, "function", "refuse_event_mutation"),
    Required {
        on_table: Some("events"),
        ..required(1, "trigger", "events_append_only")
    },
    Required {
        on_table: Some("events"),
        ..required(1, "trigger", "events_no_truncate")
    },
    required(1, "index", "events_correlation_id_idx"),
    required(1, "function", "append_to_streams"),
    required(1, "function", "refuse_position_overflow"),
    required(1, "table", "projection_checkpoints"),
    required(1, "index", "projection_checkpoints_pkey"),
    required(1, "table", "projection_skips"),
    required(1, "table", "projection_operations"),
    required(1, "table", "snapshots"),
    required(1, "index", "snapshots_pkey"),
    required(3, "table", "projection_leases"),
    required(3, "index", "projection_leases_pkey"),
];

/// What of [`REQUIRED`] (up to schema `version`) is missing or disabled in
/// `schema`, one entry per object (`table events missing`), in one
/// catalog query.
pub(crate) async fn find_damage(
    conn: &mut PgConnection,
    schema: &str,
    version: i32,
) -> Result<Vec<String>, sqlx::Error> {
    let wanted: Vec<&Required> = REQUIRED.iter().filter(|r| r.since <= version).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = wanted.iter().map(|r| r.kind).collect();
    let names: Vec<&str> = wanted.iter().map(|r| r.name).collect();
    let tables: Vec<Option<&str>> = wanted.iter().map(|r| r.on_table).collect();
    let rows = sqlx::query(sql::SELECT_SCHEMA_DAMAGE)
        .persistent(false)
        .bind(schema)
        .bind(&kinds)
        .bind(&names)
        .bind(&tables)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            let problem: String = row.try_get(2)?;
            Ok(format!("{kind} {name} {problem}"))
        })
        .collect()
}

/// The recorded schema version on `conn`; `None` if the schema or its
/// ledger does not exist.
pub(crate) async fn read_version(
    conn: &mut PgConnection,
    statements: &sql::Statements,
) -> Result<Option<i32>, sqlx::Error> {
    let result = sqlx::query(sql::sql(&statements.select_schema_version))
        .persistent(false)
        .fetch_one(&mut *conn)
        .await;
    match result {
        Ok(row) => row.try_get::<Option<i32>, _>(0),
        Err(e) if is_undefined(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// No schema or no ledger yet: not initialized.
fn is_undefined(e: &sqlx::Error) -> bool {
    db_error_parts(e).is_some_and(|(code, _)| {
        code == sqlstate::UNDEFINED_TABLE || code == sqlstate::INVALID_SCHEMA_NAME
    })
}

/// Whether a store has found its schema fit for writes. Only success is
/// remembered: a store keeps refusing (and re-checking) while the schema is
/// wrong, and once it was right, later damage is [`health_check`]'s to
/// report.
///
/// [`health_check`]: PostgresEventStore::health_check
#[derive(Debug, Default)]
pub(crate) struct WriteGate {
    verified: AtomicBool,
}

/// Why the schema cannot take writes, if it cannot.
async fn write_refusal(
    conn: &mut PgConnection,
    store: &PostgresEventStore,
) -> Result<Option<PostgresError>, sqlx::Error> {
    let schema = store.config().schema.as_str();
    Ok(match read_version(conn, store.sql()).await? {
        Some(v) if v > SCHEMA_VERSION => Some(PostgresError::SchemaTooNew {
            found: v,
            known: SCHEMA_VERSION,
        }),
        Some(SCHEMA_VERSION) => {
            let missing = find_damage(conn, schema, SCHEMA_VERSION).await?;
            if missing.is_empty() {
                counter::read(conn, store.sql()).await?.refusal(schema)
            } else {
                Some(PostgresError::SchemaDamaged {
                    schema: schema.to_owned(),
                    missing,
                })
            }
        }
        found => Some(PostgresError::SchemaNotCurrent {
            schema: schema.to_owned(),
            found,
            expected: SCHEMA_VERSION,
        }),
    })
}

/// Checks, once per store (until it passes), that the schema is at
/// [`SCHEMA_VERSION`] and holds everything the store relies on, and that
/// the cluster's transaction counter is past the newest position and inside
/// the encodable range, so that a schema migrated by a newer release, not
/// migrated yet, tampered with, or restored without advancing the counter
/// refuses writes before the first append instead of misbehaving. The
/// refusal is [`eventcore::Error::Backend`] with a [`PostgresError`] source
/// ([`SchemaTooNew`](PostgresError::SchemaTooNew),
/// [`SchemaNotCurrent`](PostgresError::SchemaNotCurrent),
/// [`SchemaDamaged`](PostgresError::SchemaDamaged),
/// [`TransactionCounterBehind`](PostgresError::TransactionCounterBehind) or
/// [`PositionsExhausted`](PostgresError::PositionsExhausted)); a connection
/// failure during the check is the usual transient error. A few extra round
/// trips per store, on its first append.
pub(crate) async fn ensure_writable(store: &PostgresEventStore) -> Result<(), eventcore::Error> {
    const OP: &str = "append";
    let gate = &store.sql().write_gate;
    if gate.verified.load(Ordering::Acquire) {
        return Ok(());
    }
    let refusal = store
        .db()
        .call(OP, Call::Read, |conn| {
            Box::pin(async move {
                write_refusal(conn, store)
                    .await
                    .map_err(|e| store.map_err(OP, e))
            })
        })
        .await?;
    match refusal {
        None => {
            gate.verified.store(true, Ordering::Release);
            Ok(())
        }
        Some(e) => Err(eventcore::Error::Backend {
            operation: OP,
            source: Box::new(e),
        }),
    }
}

impl PostgresEventStore {
    /// Creates the schema or migrates it to [`SCHEMA_VERSION`]. Idempotent,
    /// and safe when many processes call it at once: they queue on a
    /// transaction-scoped advisory lock, and each migration commits together
    /// with its ledger row, so a crash leaves the previous version intact.
    ///
    /// Then checks the cluster's transaction counter: after a logical
    /// restore that did not advance it, this fails with
    /// [`PostgresError::TransactionCounterBehind`], past the range positions
    /// can encode with [`PostgresError::PositionsExhausted`] (the schema is
    /// migrated either way; writes are refused until the counter is fixed).
    pub async fn initialize(&self) -> Result<(), PostgresError> {
        let s = self.sql();
        let schema = self.config().schema.as_str();
        let mut tx = self.db().begin().await.map_err(PostgresError::Connect)?;
        let step = |version: i32, name: &'static str| {
            move |source| PostgresError::Migration {
                version,
                name,
                source,
            }
        };
        sqlx::query(sql::LOCK_MIGRATIONS)
            .persistent(self.named())
            .bind(format!("eventcore:migrations:{schema}"))
            .execute(&mut *tx)
            .await
            .map_err(step(0, "lock"))?;
        sqlx::raw_sql(sql::sql(&s.create_schema))
            .execute(&mut *tx)
            .await
            .map_err(step(0, "create schema"))?;
        sqlx::raw_sql(sql::sql(&s.create_migrations_table))
            .execute(&mut *tx)
            .await
            .map_err(step(0, "create ledger"))?;
        let applied: i32 = sqlx::query(sql::sql(&s.select_schema_version))
            .persistent(self.named())
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get::<Option<i32>, _>(0))
            .map_err(step(0, "read ledger"))?
            .unwrap_or(0);
        if applied > SCHEMA_VERSION {
            return Err(PostgresError::SchemaTooNew {
                found: applied,
                known: SCHEMA_VERSION,
            });
        }
        // What the applied migrations created must still be there, or the
        // next migration would fail on it (or build on a broken base).
        let missing = find_damage(&mut tx, schema, applied)
            .await
            .map_err(step(applied, "check"))?;
        if !missing.is_empty() {
            return Err(PostgresError::SchemaDamaged {
                schema: schema.to_owned(),
                missing,
            });
        }
        sqlx::raw_sql(sql::sql(&s.set_local_search_path))
            .execute(&mut *tx)
            .await
            .map_err(step(0, "search_path"))?;
        for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
            tracing::info!(
                schema,
                version = m.version,
                name = m.name,
                "applying migration"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql))
                .execute(&mut *tx)
                .await
                .map_err(step(m.version, m.name))?;
            sqlx::query(sql::sql(&s.insert_migration))
                .persistent(self.named())
                .bind(m.version)
                .bind(m.name)
                .execute(&mut *tx)
                .await
                .map_err(step(m.version, m.name))?;
        }
        // Every migration's ledger row may be there while what it created
        // is gone (a dropped table, a disabled trigger): check what the
        // store relies on before declaring the schema ready.
        let missing = find_damage(&mut tx, schema, SCHEMA_VERSION)
            .await
            .map_err(step(SCHEMA_VERSION, "check"))?;
        if !missing.is_empty() {
            return Err(PostgresError::SchemaDamaged {
                schema: schema.to_owned(),
                missing,
            });
        }
        let counter = counter::read(&mut tx, s)
            .await
            .map_err(step(SCHEMA_VERSION, "check the transaction counter"))?;
        tx.commit().await.map_err(step(SCHEMA_VERSION, "commit"))?;
        // The schema is fine and stays migrated; writing is what must wait
        // (a restore whose counter was not advanced, or a cluster past the
        // encodable range).
        match counter.refusal(schema) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// The schema version recorded in the database (`None` before
    /// [`initialize`](Self::initialize)).
    pub async fn schema_version(&self) -> Result<Option<i32>, PostgresError> {
        self.db()
            .call("schema_version", Call::Read, |conn| {
                Box::pin(async move {
                    read_version(conn, self.sql())
                        .await
                        .map_err(|e| self.map_err("schema_version", e).into())
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                i as i32 + 1,
                "migration {} is out of order",
                m.name
            );
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
