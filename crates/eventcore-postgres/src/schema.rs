//! Versioned migrations, applied by [`PostgresEventStore::initialize`].

use sqlx::Row;

use crate::{
    PostgresError, PostgresEventStore,
    error::{db_error_parts, sqlstate},
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
        name: "projections",
        sql: include_str!("../migrations/0002_projections.sql"),
    },
    Migration {
        version: 3,
        name: "lean_write_path",
        sql: include_str!("../migrations/0003_lean_write_path.sql"),
    },
    Migration {
        version: 4,
        name: "fenced_leases",
        sql: include_str!("../migrations/0004_fenced_leases.sql"),
    },
];

/// The schema version this release creates.
pub const SCHEMA_VERSION: i32 = 4;

impl PostgresEventStore {
    /// Creates the schema or migrates it to [`SCHEMA_VERSION`]. Idempotent,
    /// and safe when many processes call it at once: they queue on a
    /// transaction-scoped advisory lock, and each migration commits together
    /// with its ledger row, so a crash leaves the previous version intact.
    pub async fn initialize(&self) -> Result<(), PostgresError> {
        let s = &self.inner.sql;
        let schema = self.inner.config.schema.as_str();
        let mut tx = self.pool().begin().await.map_err(PostgresError::Connect)?;
        let step = |version: i32, name: &'static str| {
            move |source| PostgresError::Migration {
                version,
                name,
                source,
            }
        };
        sqlx::query(sql::LOCK_MIGRATIONS)
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
                .bind(m.version)
                .bind(m.name)
                .execute(&mut *tx)
                .await
                .map_err(step(m.version, m.name))?;
        }
        tx.commit().await.map_err(step(SCHEMA_VERSION, "commit"))?;
        Ok(())
    }

    /// The schema version recorded in the database (`None` before
    /// [`initialize`](Self::initialize)).
    pub async fn schema_version(&self) -> Result<Option<i32>, PostgresError> {
        let result = sqlx::query(sql::sql(&self.inner.sql.select_schema_version))
            .fetch_one(self.pool())
            .await;
        match result {
            Ok(row) => Ok(row
                .try_get::<Option<i32>, _>(0)
                .map_err(|e| self.map_err("schema_version", e))?),
            // No schema or no ledger yet: not initialized.
            Err(e)
                if db_error_parts(&e).is_some_and(|(code, _)| {
                    code == sqlstate::UNDEFINED_TABLE || code == sqlstate::INVALID_SCHEMA_NAME
                }) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.map_err("schema_version", e).into()),
        }
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
