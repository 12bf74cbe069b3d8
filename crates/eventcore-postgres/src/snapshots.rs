//! Durable snapshots of command state in PostgreSQL (table `snapshots`,
//! migrations/0001_event_store.sql).

use std::sync::Arc;

use async_trait::async_trait;
use eventcore::{Error, EventData, Snapshot, SnapshotStore, StreamId, StreamVersion};
use sqlx::{AssertSqlSafe, Row};

use crate::{PostgresEventStore, pool::Call, sql};

/// `$1` state name, `$2` state version, `$3` stream ids: the snapshot of
/// each stream that has one (stream id, stream version, state as text).
const SELECT_SNAPSHOTS: &str = "SELECT stream_id, stream_version, data::text \
     FROM {schema}.snapshots \
     WHERE state = $1 AND state_version = $2 AND stream_id = ANY($3)";

/// `$1` state name, `$2` state version, `$3` stream id, `$4` stream
/// version, `$5` the state (JSON text). Keeps the row of the highest stream
/// version (one of the same version is replaced).
const UPSERT_SNAPSHOT: &str = "INSERT INTO {schema}.snapshots AS s \
       (state, state_version, stream_id, stream_version, data) \
     VALUES ($1, $2, $3, $4, $5::jsonb) \
     ON CONFLICT (state, state_version, stream_id) DO UPDATE \
     SET stream_version = excluded.stream_version, data = excluded.data, taken_at = now() \
     WHERE s.stream_version <= excluded.stream_version";

/// [`SnapshotStore`] in the store's schema: one row per state name, state
/// version and stream. Give it to the executor with
/// [`CommandExecutor::with_snapshots`](eventcore::CommandExecutor::with_snapshots):
///
/// ```no_run
/// use eventcore::CommandExecutor;
/// use eventcore_postgres::{PostgresConfig, PostgresEventStore, PostgresSnapshotStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresEventStore::new(PostgresConfig::new("postgres://localhost/bank")).await?;
/// store.initialize().await?;
/// let executor = CommandExecutor::new(store.clone())
///     .with_snapshots(PostgresSnapshotStore::new(store));
/// # Ok(()) }
/// ```
///
/// Snapshots are a cache of what the events say: deleting rows is always
/// safe (the next command folds the events and takes a new one), and rows
/// of state versions no release uses any more can be deleted by hand.
#[derive(Clone, Debug)]
pub struct PostgresSnapshotStore {
    store: PostgresEventStore,
    select: Arc<str>,
    upsert: Arc<str>,
}

impl PostgresSnapshotStore {
    /// Snapshots next to `store`'s events.
    pub fn new(store: PostgresEventStore) -> Self {
        let schema = sql::quote_ident(&store.config().schema);
        let fill = |template: &str| Arc::from(template.replace("{schema}", &schema));
        Self {
            select: fill(SELECT_SNAPSHOTS),
            upsert: fill(UPSERT_SNAPSHOT),
            store,
        }
    }
}

fn to_i64(v: StreamVersion) -> i64 {
    i64::try_from(v.get()).unwrap_or(i64::MAX)
}

#[async_trait]
impl SnapshotStore for PostgresSnapshotStore {
    async fn load(
        &self,
        state: &str,
        state_version: u32,
        streams: &[StreamId],
    ) -> Result<Vec<Snapshot>, Error> {
        const OP: &str = "load snapshots";
        let s = &self.store;
        let ids: Vec<&str> = streams.iter().map(StreamId::as_str).collect();
        let version = i32::try_from(state_version).unwrap_or(i32::MAX);
        let ids = &ids;
        let rows = s
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(Arc::clone(&self.select)))
                        .persistent(self.store.named())
                        .bind(state)
                        .bind(version)
                        .bind(ids)
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| s.map_err(OP, e))
                })
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let get = |e| s.map_err(OP, e);
            let stream: String = row.try_get(0).map_err(get)?;
            let stream_version: i64 = row.try_get(1).map_err(get)?;
            let data: String = row.try_get(2).map_err(get)?;
            // A row no command could have written is no snapshot.
            let Ok(stream_id) = StreamId::new(&stream) else {
                continue;
            };
            out.push(Snapshot {
                state: state.to_owned(),
                state_version,
                stream_id,
                stream_version: StreamVersion::new(u64::try_from(stream_version).unwrap_or(0)),
                // The server checked it on the way in.
                data: EventData::from_json_unchecked(data),
            });
        }
        Ok(out)
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), Error> {
        const OP: &str = "save snapshot";
        let s = &self.store;
        let version = i32::try_from(snapshot.state_version).unwrap_or(i32::MAX);
        let snapshot = &snapshot;
        s.db()
            .call(OP, Call::Write, |conn| {
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(Arc::clone(&self.upsert)))
                        .persistent(self.store.named())
                        .bind(&snapshot.state)
                        .bind(version)
                        .bind(snapshot.stream_id.as_str())
                        .bind(to_i64(snapshot.stream_version))
                        .bind(snapshot.data.get())
                        .execute(&mut **conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| s.map_err(OP, e))
                })
            })
            .await
    }
}
