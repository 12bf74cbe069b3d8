//! Durable projection checkpoints, skip records and runner leases in
//! PostgreSQL.

use async_trait::async_trait;
use eventcore::{CheckpointStore, Error, GlobalPosition, Lease, SkippedEvent, StreamId};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;

use crate::{PostgresEventStore, sql, store::Call};

/// [`CheckpointStore`] in the store's schema (tables from migration 0002).
///
/// Leases are session-level advisory locks held on a dedicated connection:
/// when the process holding one dies, its connection closes, the lock is
/// released and a waiting runner takes over within its `lease_retry`.
///
/// ## Exactly-once read models
///
/// A projection whose read model lives in the same database can call
/// [`save_in`](Self::save_in) inside the transaction that updates the read
/// model: the effect and the checkpoint then commit together, so a restart
/// never applies an event twice. Otherwise delivery is at-least-once.
#[derive(Clone, Debug)]
pub struct PostgresCheckpointStore {
    store: PostgresEventStore,
}

impl PostgresCheckpointStore {
    /// Checkpoints next to `store`'s events.
    pub fn new(store: PostgresEventStore) -> Self {
        Self { store }
    }

    /// Saves a checkpoint on `conn` (typically inside your own transaction).
    /// Checkpoints only move forward.
    pub async fn save_in(
        &self,
        conn: &mut PgConnection,
        projection: &str,
        position: GlobalPosition,
    ) -> Result<(), Error> {
        sqlx::query(sql::sql(&self.store.inner.sql.upsert_checkpoint))
            .bind(projection)
            .bind(position.get() as i64)
            .execute(conn)
            .await
            .map_err(|e| self.store.map_err("save checkpoint", e))?;
        Ok(())
    }
}

/// A runner lease: a session advisory lock on a connection of its own.
struct PgLease {
    conn: Mutex<PgConnection>,
}

#[async_trait]
impl Lease for PgLease {
    async fn is_held(&self) -> bool {
        // The session lock lives exactly as long as the connection.
        self.conn.lock().await.ping().await.is_ok()
    }
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, projection: &str) -> Result<Option<GlobalPosition>, Error> {
        let s = &self.store;
        s.call("load checkpoint", Call::Read, || async {
            let mut conn = s.acquire("load checkpoint").await?;
            let position = sqlx::query_scalar(sql::sql(&s.inner.sql.select_checkpoint))
                .bind(projection)
                .fetch_optional(&mut *conn)
                .await;
            conn.finished(&position);
            let position: Option<i64> = position.map_err(|e| s.map_err("load checkpoint", e))?;
            Ok(position.map(|p| GlobalPosition::new(p as u64)))
        })
        .await
    }

    async fn save(&self, projection: &str, position: GlobalPosition) -> Result<(), Error> {
        let s = &self.store;
        s.call("save checkpoint", Call::Write, || async {
            let mut conn = s.acquire("save checkpoint").await?;
            let saved = self.save_in(&mut conn, projection, position).await;
            if saved.is_ok() {
                conn.finished(&Ok::<_, sqlx::Error>(()));
            }
            saved
        })
        .await
    }

    async fn reset(&self, projection: &str) -> Result<(), Error> {
        let s = &self.store;
        sqlx::query(sql::sql(&s.inner.sql.delete_checkpoint))
            .bind(projection)
            .execute(s.pool())
            .await
            .map_err(|e| s.map_err("reset checkpoint", e))?;
        Ok(())
    }

    async fn record_skip(&self, skipped: SkippedEvent) -> Result<(), Error> {
        let s = &self.store;
        sqlx::query(sql::sql(&s.inner.sql.insert_projection_skip))
            .bind(&skipped.projection)
            .bind(skipped.position.get() as i64)
            .bind(skipped.stream_id.as_str())
            .bind(&skipped.error)
            .execute(s.pool())
            .await
            .map_err(|e| s.map_err("record skip", e))?;
        Ok(())
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, Error> {
        let s = &self.store;
        let rows = sqlx::query(sql::sql(&s.inner.sql.select_projection_skips))
            .bind(projection)
            .fetch_all(s.pool())
            .await
            .map_err(|e| s.map_err("list skips", e))?;
        rows.iter()
            .map(|row| {
                let get = |e| s.map_err("list skips", e);
                let position: i64 = row.try_get(0).map_err(get)?;
                let stream: String = row.try_get(1).map_err(get)?;
                Ok(SkippedEvent {
                    projection: projection.to_owned(),
                    position: GlobalPosition::new(position as u64),
                    stream_id: StreamId::new(&stream).map_err(|e| Error::CorruptRow {
                        what: format!("projection skip at position {position}"),
                        position: u64::try_from(position).ok().map(GlobalPosition::new),
                        reason: e.to_string(),
                    })?,
                    error: row.try_get(2).map_err(get)?,
                })
            })
            .collect()
    }

    async fn try_acquire(&self, projection: &str) -> Result<Option<Box<dyn Lease>>, Error> {
        let s = &self.store;
        let options = (*s.pool().connect_options()).clone();
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| s.map_err("acquire lease", e))?;
        let key = format!("eventcore:projection:{}:{projection}", s.config().schema);
        let got: bool = sqlx::query_scalar(sql::TRY_LOCK_PROJECTION)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| s.map_err("acquire lease", e))?;
        if got {
            Ok(Some(Box::new(PgLease {
                conn: Mutex::new(conn),
            })))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
