//! Durable projection checkpoints, skip records and fenced runner leases in
//! PostgreSQL.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use eventcore::{
    CheckpointStore, Error, GlobalPosition, Lease, ReadBlocker, SkippedEvent, StreamId,
};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::{oneshot, watch};

use crate::{ClusterHistory, PostgresEventStore, lease_row, pool::Call, sql};

/// How often a lease connection checks that it is alive. In between it is
/// idle, so releasing the lease (closing it) is immediate.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(50);

/// A heartbeat that takes longer than this means the link is dead: the
/// lease is given up.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(5);

/// [`CheckpointStore`] in the store's schema (tables from migrations 0002
/// and 0004).
///
/// ## One runner per projection, fenced
///
/// A lease is a session advisory lock held on a connection of its own, so
/// it dies with its process: a waiting runner takes over within its
/// `lease_retry`. Taking it also bumps a **generation** kept in the
/// projection's checkpoint row (the statement locks the row, so it waits
/// for a checkpoint transaction of the previous runner still in flight),
/// and every checkpoint write of this store compares that generation: a
/// runner that lost its lease, even one that has not noticed yet, can no
/// longer write a checkpoint; its write fails with [`Error::LeaseLost`] and
/// changes nothing. The lease connection runs a heartbeat, so a runner
/// learns that its connection died within moments and stops
/// ([`Lease::lost`]).
///
/// The generation a lease took is remembered by this value and its clones:
/// [`save_in`](Self::save_in), [`save`](CheckpointStore::save) and
/// [`reset`](CheckpointStore::reset) must be called on the checkpoint
/// store the runner was given, or a clone of it. (A value that holds no
/// lease for the projection refuses them with [`Error::Projection`].) One
/// value holds at most one lease per projection: a second runner given a
/// clone waits until the first has stopped and dropped its lease.
///
/// ## Exactly-once read models
///
/// A projection whose read model lives in the same database calls
/// [`save_in`](Self::save_in) inside the transaction that updates the read
/// model: the effect, the checkpoint and the fence commit together, so
/// neither a restart nor a takeover ever applies an event twice. Apply
/// pages rather than single events ([`Projection::apply_batch`]) to commit
/// one transaction per page:
///
/// ```no_run
/// use eventcore::{BoxError, Projection, RecordedEvent, testing::bank::AccountEvent};
/// use eventcore_postgres::PostgresCheckpointStore;
/// use sqlx::PgPool;
///
/// struct Deposits {
///     pool: PgPool,
///     /// A clone of the checkpoint store given to the runner.
///     checkpoints: PostgresCheckpointStore,
/// }
///
/// impl Projection for Deposits {
///     type Event = AccountEvent;
///
///     fn name(&self) -> &str {
///         "deposits"
///     }
///
///     async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
///         self.apply_batch(vec![event]).await
///     }
///
///     async fn apply_batch(&mut self, events: Vec<RecordedEvent<AccountEvent>>) -> Result<(), BoxError> {
///         let Some(last) = events.last().map(|e| e.position) else {
///             return Ok(());
///         };
///         let mut tx = self.pool.begin().await?;
///         for e in &events {
///             if let AccountEvent::Deposited { amount } = e.event {
///                 sqlx::query("INSERT INTO deposits (stream_id, amount) VALUES ($1, $2)")
///                     .bind(e.stream_id.as_str())
///                     .bind(amount as i64)
///                     .execute(&mut *tx)
///                     .await?;
///             }
///         }
///         // The checkpoint and the fence in the same transaction: if another
///         // runner took over, this fails with `Error::LeaseLost`, nothing
///         // commits and the runner stops.
///         self.checkpoints.save_in(&mut tx, "deposits", last).await?;
///         tx.commit().await?;
///         Ok(())
///     }
/// }
/// ```
///
/// If the transaction fails, the runner delivers the page's events one at a
/// time through `apply` to find the one that fails, and applies its
/// [`ErrorStrategy`](eventcore::ErrorStrategy) to it.
///
/// [`Projection::apply_batch`]: eventcore::Projection::apply_batch
#[derive(Clone, Debug)]
pub struct PostgresCheckpointStore {
    pub(crate) store: PostgresEventStore,
    /// The leases this value and its clones hold, by projection.
    leases: Arc<Mutex<HashMap<String, HeldLease>>>,
}

/// A lease this checkpoint store holds.
#[derive(Clone, Debug)]
struct HeldLease {
    generation: i64,
    /// Set once the lease is lost: its connection died, or a fenced write
    /// found another runner's generation.
    lost: Arc<watch::Sender<bool>>,
}

fn lock(leases: &Mutex<HashMap<String, HeldLease>>) -> MutexGuard<'_, HashMap<String, HeldLease>> {
    leases.lock().unwrap_or_else(|e| e.into_inner())
}

/// A row of `SELECT_CHECKPOINT`: position, recorded history (system
/// identifier, timeline), current history.
type LoadRow = (Option<i64>, Option<i64>, Option<i32>, i64, i32);

/// A row of `SAVE_CHECKPOINT`: rows saved, recorded history, current history.
pub(crate) type SaveRow = (i64, Option<i64>, Option<i32>, i64, i32);

fn to_i64(position: GlobalPosition) -> i64 {
    i64::try_from(position.get()).unwrap_or(i64::MAX)
}

impl PostgresCheckpointStore {
    /// Checkpoints next to `store`'s events.
    pub fn new(store: PostgresEventStore) -> Self {
        Self {
            store,
            leases: Arc::default(),
        }
    }

    /// Saves a checkpoint on `conn` (typically inside your own transaction),
    /// fenced: it fails with [`Error::LeaseLost`], writing nothing, if the
    /// lease this checkpoint store holds for `projection` was lost or
    /// another runner took it over since (roll your transaction back: `?`
    /// does). Checkpoints only move forward.
    pub async fn save_in(
        &self,
        conn: &mut PgConnection,
        projection: &str,
        position: GlobalPosition,
    ) -> Result<(), Error> {
        let generation = self.generation(projection)?;
        let saved = sqlx::query_as(sql::sql(&self.store.sql().save_checkpoint))
            .persistent(self.store.named())
            .bind(projection)
            .bind(to_i64(position))
            .bind(generation)
            .fetch_one(conn)
            .await
            .map_err(|e| self.store.map_err("save checkpoint", e))?;
        self.saved(projection, saved)
    }

    /// Checks the answer of `SAVE_CHECKPOINT`: saved, refused because the
    /// checkpoint belongs to another history, or fenced.
    pub(crate) fn saved(&self, projection: &str, row: SaveRow) -> Result<(), Error> {
        let (saved, recorded_s, recorded_t, current_s, current_t) = row;
        if saved == 0
            && let (Some(s), Some(t)) = (recorded_s, recorded_t)
        {
            let current = ClusterHistory::from_columns(current_s, current_t);
            current.admits(
                ClusterHistory::from_columns(s, t),
                &format!("the checkpoint of projection '{projection}'"),
            )?;
        }
        self.fenced(projection, saved as u64)
    }

    /// Forgets the checkpoint on `conn` (typically inside the transaction
    /// that empties your read model, for a rebuild), fenced like
    /// [`save_in`](Self::save_in).
    pub async fn reset_in(&self, conn: &mut PgConnection, projection: &str) -> Result<(), Error> {
        let generation = self.generation(projection)?;
        let reset = sqlx::query(sql::sql(&self.store.sql().reset_checkpoint))
            .persistent(self.store.named())
            .bind(projection)
            .bind(generation)
            .execute(conn)
            .await
            .map_err(|e| self.store.map_err("reset checkpoint", e))?;
        self.fenced(projection, reset.rows_affected())
    }

    /// The generation of the lease held for `projection`.
    pub(crate) fn generation(&self, projection: &str) -> Result<i64, Error> {
        match lock(&self.leases).get(projection) {
            Some(held) if !*held.lost.borrow() => Ok(held.generation),
            Some(_) => Err(Error::LeaseLost {
                projection: projection.to_owned(),
            }),
            None => Err(Error::Projection {
                projection: projection.to_owned(),
                position: None,
                stream_id: None,
                source: "this PostgresCheckpointStore holds no lease for the projection: \
                         checkpoints are written through the checkpoint store its runner \
                         was given (or a clone of it), while the runner holds the lease"
                    .into(),
            }),
        }
    }

    /// Checks a fenced write: no row means another runner took over.
    pub(crate) fn fenced(&self, projection: &str, rows: u64) -> Result<(), Error> {
        if rows > 0 {
            return Ok(());
        }
        if let Some(held) = lock(&self.leases).get(projection) {
            held.lost.send_replace(true);
        }
        tracing::warn!(
            projection,
            "checkpoint write refused: another runner holds the lease"
        );
        Err(Error::LeaseLost {
            projection: projection.to_owned(),
        })
    }

    /// On `conn`, a connection of its own: the advisory lock, then the
    /// generation bump. `None` if another session holds the lock.
    async fn take_lease(
        &self,
        conn: &mut PgConnection,
        projection: &str,
    ) -> Result<Option<i64>, Error> {
        let s = &self.store;
        let key = format!("eventcore:projection:{}:{projection}", s.config().schema);
        let got: bool = sqlx::query_scalar(sql::TRY_LOCK_PROJECTION)
            .persistent(true)
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| s.map_err("acquire lease", e))?;
        if !got {
            return Ok(None);
        }
        // A runner of a store behind a transaction pooler holds a lease row
        // instead (and takes this lock only while taking the row).
        if lease_row::live(conn, &s.config().schema, projection, true)
            .await
            .map_err(|e| s.map_err("acquire lease", e))?
        {
            return Ok(None);
        }
        let generation: i64 = sqlx::query_scalar(sql::sql(&s.sql().bump_lease_generation))
            .persistent(true)
            .bind(projection)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| s.map_err("acquire lease", e))?;
        Ok(Some(generation))
    }
}

/// What keeps a lease taken: a connection holding the session advisory
/// lock, or a lease row renewed through the pool.
enum Holding {
    Session(PgConnection),
    Row {
        holder: uuid::Uuid,
        /// When the statement that took the row was sent.
        sent: std::time::Instant,
    },
}

impl PostgresCheckpointStore {
    /// The advisory-lock lease on a connection of its own: its generation
    /// and the connection, or `None` if another runner holds it.
    async fn take_session_lease(
        &self,
        projection: &str,
    ) -> Result<Option<(i64, PgConnection)>, Error> {
        let s = &self.store;
        let options = (*s.db().connect_options()).clone();
        let connect_timeout = s.config().connect_timeout;
        let mut conn =
            match tokio::time::timeout(connect_timeout, PgConnection::connect_with(&options)).await
            {
                Ok(conn) => conn.map_err(|e| s.map_err("acquire lease", e))?,
                Err(_) => {
                    return Err(Error::Timeout {
                        operation: "acquire lease",
                        elapsed: connect_timeout,
                    });
                }
            };
        let deadline = s.db().deadline();
        let taken = tokio::time::timeout(deadline, self.take_lease(&mut conn, projection))
            .await
            .unwrap_or(Err(Error::Timeout {
                operation: "acquire lease",
                elapsed: deadline,
            }));
        match taken {
            Ok(Some(generation)) => Ok(Some((generation, conn))),
            other => {
                // Closing the connection releases the lock, if it was taken.
                let _ = conn.close().await;
                other.map(|_| None)
            }
        }
    }
}

/// Holds a lease connection: a heartbeat until the lease is released (the
/// connection is then closed, which releases the advisory lock at once) or
/// the connection fails (the lease is then lost).
async fn hold(
    mut conn: PgConnection,
    lost: Arc<watch::Sender<bool>>,
    mut released: oneshot::Receiver<()>,
    projection: String,
) {
    loop {
        tokio::select! {
            _ = &mut released => {
                let _ = conn.close().await;
                return;
            }
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
        let beat = tokio::time::timeout(
            HEARTBEAT_DEADLINE,
            sqlx::query(sql::LEASE_HEARTBEAT)
                .persistent(true)
                .execute(&mut conn),
        )
        .await;
        let failure = match beat {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {HEARTBEAT_DEADLINE:?}"),
        };
        lost.send_replace(true);
        tracing::warn!(projection, error = %failure, "projection lease connection failed; the lease is lost");
        return;
    }
}

/// A runner lease: a session advisory lock on a connection of its own (see
/// [`hold`]), and the generation it took.
struct PgLease {
    projection: String,
    generation: i64,
    lost: Arc<watch::Sender<bool>>,
    leases: Arc<Mutex<HashMap<String, HeldLease>>>,
    /// Dropped with the lease: tells [`hold`] to let go.
    _release: oneshot::Sender<()>,
}

#[async_trait]
impl Lease for PgLease {
    async fn is_held(&self) -> bool {
        !*self.lost.borrow()
    }

    async fn lost(&self) {
        let mut lost = self.lost.subscribe();
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        let mut leases = lock(&self.leases);
        if leases
            .get(&self.projection)
            .is_some_and(|held| held.generation == self.generation)
        {
            leases.remove(&self.projection);
        }
    }
}

impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, projection: &str) -> Result<Option<GlobalPosition>, Error> {
        let s = &self.store;
        s.db()
            .call("load checkpoint", Call::Read, |conn| {
                Box::pin(async move {
                    let row: Option<LoadRow> = sqlx::query_as(sql::sql(&s.sql().select_checkpoint))
                        .persistent(s.named())
                        .bind(projection)
                        .fetch_optional(&mut **conn)
                        .await
                        .map_err(|e| s.map_err("load checkpoint", e))?;
                    let Some((Some(position), recorded_s, recorded_t, current_s, current_t)) = row
                    else {
                        return Ok(None);
                    };
                    // Migration 0002 stamped every checkpoint there was with
                    // the history of its day: only a hand-made row lacks one.
                    if let (Some(s), Some(t)) = (recorded_s, recorded_t) {
                        ClusterHistory::from_columns(current_s, current_t).admits(
                            ClusterHistory::from_columns(s, t),
                            &format!("the checkpoint of projection '{projection}'"),
                        )?;
                    }
                    Ok(Some(GlobalPosition::new(position as u64)))
                })
            })
            .await
    }

    async fn save(&self, projection: &str, position: GlobalPosition) -> Result<(), Error> {
        let s = &self.store;
        s.db()
            .call("save checkpoint", Call::Write, |conn| {
                Box::pin(self.save_in(conn, projection, position))
            })
            .await
    }

    async fn reset(&self, projection: &str) -> Result<(), Error> {
        let s = &self.store;
        let generation = self.generation(projection)?;
        s.db()
            .call("reset checkpoint", Call::Write, |conn| {
                Box::pin(async move {
                    let reset = sqlx::query(sql::sql(&s.sql().reset_checkpoint))
                        .persistent(s.named())
                        .bind(projection)
                        .bind(generation)
                        .execute(&mut **conn)
                        .await
                        .map_err(|e| s.map_err("reset checkpoint", e))?;
                    self.fenced(projection, reset.rows_affected())
                })
            })
            .await
    }

    async fn record_skip(&self, skipped: SkippedEvent) -> Result<(), Error> {
        let s = &self.store;
        let skipped = &skipped;
        s.db()
            .call("record skip", Call::Write, |conn| {
                Box::pin(async move {
                    sqlx::query(sql::sql(&s.sql().insert_projection_skip))
                        .persistent(s.named())
                        .bind(&skipped.projection)
                        .bind(to_i64(skipped.position))
                        .bind(skipped.stream_id.as_ref().map(StreamId::as_str))
                        .bind(&skipped.error)
                        .execute(&mut **conn)
                        .await
                        .map_err(|e| s.map_err("record skip", e))
                })
            })
            .await?;
        Ok(())
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, Error> {
        let s = &self.store;
        let rows = s
            .db()
            .call("list skips", Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(sql::sql(&s.sql().select_projection_skips))
                        .persistent(s.named())
                        .bind(projection)
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| s.map_err("list skips", e))
                })
            })
            .await?;
        rows.iter()
            .map(|row| {
                let get = |e| s.map_err("list skips", e);
                let position: i64 = row.try_get(0).map_err(get)?;
                let stream: Option<String> = row.try_get(1).map_err(get)?;
                let stream_id = stream
                    .map(|stream| {
                        StreamId::new(&stream).map_err(|e| Error::CorruptRow {
                            what: format!("projection skip at position {position}"),
                            position: u64::try_from(position).ok().map(GlobalPosition::new),
                            reason: e.to_string(),
                        })
                    })
                    .transpose()?;
                Ok(SkippedEvent {
                    projection: projection.to_owned(),
                    position: GlobalPosition::new(position as u64),
                    stream_id,
                    error: row.try_get(2).map_err(get)?,
                })
            })
            .collect()
    }

    async fn try_acquire(&self, projection: &str) -> Result<Option<Box<dyn Lease>>, Error> {
        // Another runner of this process holds it through this value.
        if lock(&self.leases).contains_key(projection) {
            return Ok(None);
        }
        let s = &self.store;
        let holding = if s.config().transaction_pooled() {
            let holder = uuid::Uuid::now_v7();
            let sent = std::time::Instant::now();
            let schema = s.config().schema.as_str();
            // One call: behind the pooler, one transaction.
            let taken = s
                .db()
                .call("acquire lease", Call::Write, |conn| {
                    Box::pin(async move {
                        lease_row::take(conn, schema, projection, holder)
                            .await
                            .map_err(|e| s.map_err("acquire lease", e))
                    })
                })
                .await?;
            match taken {
                Some(generation) => (generation, Holding::Row { holder, sent }),
                None => return Ok(None),
            }
        } else {
            match self.take_session_lease(projection).await? {
                Some((generation, conn)) => (generation, Holding::Session(conn)),
                None => return Ok(None),
            }
        };
        let (generation, holding) = holding;
        // No await from here on: the lease is registered and handed out
        // together, or (if the caller gave up waiting) neither.
        let lost = Arc::new(watch::Sender::new(false));
        lock(&self.leases).insert(
            projection.to_owned(),
            HeldLease {
                generation,
                lost: Arc::clone(&lost),
            },
        );
        let (release, released) = oneshot::channel();
        match holding {
            Holding::Session(conn) => tokio::spawn(hold(
                conn,
                Arc::clone(&lost),
                released,
                projection.to_owned(),
            )),
            Holding::Row { holder, sent } => tokio::spawn(lease_row::hold(
                s.clone(),
                projection.to_owned(),
                holder,
                sent,
                Arc::clone(&lost),
                released,
            )),
        };
        tracing::debug!(projection, generation, "projection lease taken");
        Ok(Some(Box::new(PgLease {
            projection: projection.to_owned(),
            generation,
            lost,
            leases: Arc::clone(&self.leases),
            _release: release,
        })))
    }

    async fn record_error(
        &self,
        projection: &str,
        position: Option<GlobalPosition>,
        error: &str,
    ) -> Result<(), Error> {
        self.store
            .record_projection_error(projection, position, error)
            .await
    }

    async fn rebuild_requested(&self, projection: &str) -> Result<bool, Error> {
        self.store.projection_rebuild_requested(projection).await
    }

    /// Passes the event at `position` by hand, in one transaction: records
    /// the skip and moves the checkpoint to it. Refuses while a runner of
    /// the projection is active, when the checkpoint is already at or past
    /// `position`, when there is no event at `position` or it is not
    /// readable yet, and when events lie between the checkpoint and it
    /// (they would be passed unrecorded: let the runner reach it first).
    async fn skip(
        &self,
        projection: &str,
        position: GlobalPosition,
        reason: &str,
    ) -> Result<(), Error> {
        const OP: &str = "skip event";
        let refused = |why: String| Error::Projection {
            projection: projection.to_owned(),
            position: Some(position),
            stream_id: None,
            source: format!("cannot skip the event at {position}: {why}").into(),
        };
        let Some(lease) = self.try_acquire(projection).await? else {
            return Err(refused(
                "a runner of the projection is active; stop it first".into(),
            ));
        };
        let generation = self.generation(projection)?;
        let s = &self.store;
        let q = s.sql();
        let refused = &refused;
        s.db()
            .call(OP, Call::Write, |conn| {
                Box::pin(async move {
                    let mut tx = conn.begin().await.map_err(|e| s.map_err(OP, e))?;
                    let checkpoint: Option<i64> =
                        sqlx::query_scalar(sql::sql(&q.select_checkpoint_for_update))
                            .persistent(s.named())
                            .bind(projection)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(|e| s.map_err(OP, e))?;
                    let stream = match skip_target(&mut tx, s, checkpoint, position, OP).await? {
                        Ok(stream) => stream,
                        Err(why) => return Err(refused(why)),
                    };
                    sqlx::query(sql::sql(&q.insert_projection_skip))
                        .persistent(s.named())
                        .bind(projection)
                        .bind(to_i64(position))
                        .bind(StreamId::new(&stream).ok().as_ref().map(StreamId::as_str))
                        .bind(format!("skipped by an operator: {reason}"))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| s.map_err(OP, e))?;
                    let saved = sqlx::query_as(sql::sql(&q.save_checkpoint))
                        .persistent(s.named())
                        .bind(projection)
                        .bind(to_i64(position))
                        .bind(generation)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| s.map_err(OP, e))?;
                    self.saved(projection, saved)?;
                    tx.commit().await.map_err(|e| s.map_err(OP, e))?;
                    Ok(())
                })
            })
            .await?;
        tracing::warn!(projection, %position, reason, "event skipped by an operator");
        drop(lease);
        Ok(())
    }
}

/// Whether the event at `position` may be passed by hand from `checkpoint`
/// (in a transaction holding the checkpoint row's lock): its stream id, or
/// why not. The one rule for operators' skips, whoever asks.
pub(crate) async fn skip_target(
    conn: &mut PgConnection,
    store: &PostgresEventStore,
    checkpoint: Option<i64>,
    position: GlobalPosition,
    operation: &'static str,
) -> Result<Result<String, String>, Error> {
    if let Some(at) = checkpoint
        && at >= to_i64(position)
    {
        return Ok(Err(format!("its checkpoint is already at {at}")));
    }
    let map = |e| store.map_err(operation, e);
    let target = sqlx::query(sql::sql(&store.sql().select_skip_target))
        .persistent(store.named())
        .bind(checkpoint.unwrap_or(0))
        .bind(to_i64(position))
        .fetch_one(&mut *conn)
        .await
        .map_err(map)?;
    let stream: Option<String> = target.try_get(0).map_err(map)?;
    let between: bool = target.try_get(1).map_err(map)?;
    let readable: bool = target.try_get(2).map_err(map)?;
    Ok(match stream {
        None => Err("there is no event at that position".into()),
        Some(_) if !readable => {
            Err("it is not readable yet (an older transaction is still open)".into())
        }
        Some(_) if between => Err(format!(
            "events between the checkpoint ({}) and it would be passed unrecorded; \
             let the runner reach it first",
            checkpoint.map_or_else(|| "none".to_owned(), |c| c.to_string())
        )),
        Some(stream) => Ok(stream),
    })
}

impl PostgresEventStore {
    /// The open transaction with the oldest transaction id in the cluster:
    /// what holds `read_all`'s horizon back
    /// ([`EventStore::read_blocker`](eventcore::EventStore::read_blocker)).
    /// Sessions of other roles show their age only to roles with
    /// `pg_read_all_stats`; it is 0 otherwise.
    pub(crate) async fn oldest_open_transaction(&self) -> Result<Option<ReadBlocker>, Error> {
        const OP: &str = "read_blocker";
        let row = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(sql::SELECT_READ_BLOCKER)
                        .persistent(self.named())
                        .fetch_optional(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |e| self.map_err(OP, e);
        let pid: Option<i32> = row.try_get(0).map_err(get)?;
        let age: f64 = row.try_get(1).map_err(get)?;
        Ok(Some(ReadBlocker {
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            age: Duration::try_from_secs_f64(age).unwrap_or_default(),
            state: row.try_get(2).map_err(get)?,
            application_name: row.try_get(3).map_err(get)?,
        }))
    }
}
