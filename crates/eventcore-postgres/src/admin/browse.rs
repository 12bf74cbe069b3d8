//! Listings for people: streams by prefix, the server's connections.

use chrono::{DateTime, Utc};
use eventcore::{GlobalPosition, StreamId, StreamVersion};
use serde::Serialize;
use sqlx::Row;

use super::sql::{self, fill};
use crate::{PostgresError, PostgresEventStore, pool::Call};

/// A stream with events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// Its id.
    pub stream_id: StreamId,
    /// Its version (= its number of events).
    pub version: StreamVersion,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// The connections to the database server, as `pg_stat_activity` shows
/// them: every application's pool, not just this process's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Connections {
    /// The server's `max_connections`.
    pub max_connections: i32,
    /// Client connections in all, over every database.
    pub total: i64,
    /// By database, application and state.
    pub groups: Vec<ConnectionGroup>,
}

/// Client connections of one database, application and state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionGroup {
    /// The database.
    pub database: String,
    /// The `application_name` (`eventcore` by default for the store's pools).
    pub application: String,
    /// `active`, `idle`, `idle in transaction`, ... (empty when the role
    /// may not see it).
    pub state: String,
    /// How many.
    pub count: i64,
    /// How many of them wait for a lock.
    pub waiting_on_locks: i64,
    /// The age of the oldest open transaction among them, in seconds.
    pub oldest_transaction_seconds: Option<f64>,
}

impl PostgresEventStore {
    /// Streams with events whose id starts with `prefix`, in id order
    /// (bytewise), after `after` (exclusive; `None` from the start), at
    /// most `limit`.
    pub async fn streams(
        &self,
        prefix: &str,
        after: Option<&StreamId>,
        limit: u32,
    ) -> Result<Vec<StreamSummary>, PostgresError> {
        const OP: &str = "list streams";
        let schema = self.config().schema.as_str();
        let rows = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(fill(sql::SELECT_STREAMS, schema))
                        .persistent(self.named())
                        .bind(prefix)
                        .bind(after.map_or("", StreamId::as_str))
                        .bind(i64::from(limit))
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(|e| self.map_err(OP, e))?;
                let version: i64 = row.try_get(1).map_err(|e| self.map_err(OP, e))?;
                Ok(StreamSummary {
                    stream_id: StreamId::new(&id).map_err(|e| eventcore::Error::CorruptRow {
                        what: format!("stream row '{id}'"),
                        position: None,
                        reason: e.to_string(),
                    })?,
                    version: StreamVersion::new(version.max(0) as u64),
                    updated_at: row.try_get(2).map_err(|e| self.map_err(OP, e))?,
                })
            })
            .collect()
    }

    /// The position after which the newest `n` readable events lie
    /// ([`GlobalPosition::START`] if there are fewer): where to start
    /// reading to show the latest events.
    pub async fn recent_start(&self, n: u32) -> Result<GlobalPosition, PostgresError> {
        const OP: &str = "find recent events";
        let schema = self.config().schema.as_str();
        let at: i64 = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(fill(sql::SELECT_RECENT_START, schema))
                        .persistent(self.named())
                        .bind(i64::from(n))
                        .fetch_one(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        Ok(GlobalPosition::new(at.max(0) as u64))
    }

    /// Every client connection to the server, grouped by database,
    /// application and state (what `eventcore connections` prints). Roles
    /// without `pg_read_all_stats` see other roles' sessions without
    /// their state.
    pub async fn connections(&self) -> Result<Connections, PostgresError> {
        const OP: &str = "list connections";
        let rows = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(sql::SELECT_CONNECTIONS)
                        .persistent(self.named())
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        let mut max_connections = 0;
        let mut groups = Vec::with_capacity(rows.len());
        for row in &rows {
            let get = |e| self.map_err(OP, e);
            max_connections = row.try_get(6).map_err(get)?;
            groups.push(ConnectionGroup {
                database: row.try_get(0).map_err(get)?,
                application: row.try_get(1).map_err(get)?,
                state: row.try_get(2).map_err(get)?,
                count: row.try_get(3).map_err(get)?,
                waiting_on_locks: row.try_get(4).map_err(get)?,
                oldest_transaction_seconds: row.try_get(5).map_err(get)?,
            });
        }
        Ok(Connections {
            max_connections,
            total: groups.iter().map(|g| g.count).sum(),
            groups,
        })
    }
}
