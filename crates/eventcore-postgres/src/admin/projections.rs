//! Projections as an operator sees them, and what an operator does to them:
//! reset, rebuild, skip a poison event. Every action is refused while a
//! runner is active unless forced, and recorded in `projection_operations`.

use std::fmt;

use chrono::{DateTime, Utc};
use eventcore::{Error, GlobalPosition, StreamId};
use serde::Serialize;
use sqlx::{Connection, PgConnection, Row, postgres::PgRow};

use super::sql::{self, fill};
use crate::{PostgresError, PostgresEventStore, pool::Call, sql as store_sql};

/// A projection's state, from its checkpoint row, its skips, the events
/// after its checkpoint and the session holding its runner lease.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// The last position it finished (`None`: nothing yet, or reset).
    pub checkpoint: Option<GlobalPosition>,
    /// When its checkpoint row last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// Lease generation: bumped by every runner that takes over and by
    /// every operator action.
    pub generation: i64,
    /// Events after the checkpoint that readers can see (whether or not
    /// the projection's filter wants them). The checkpoint is saved every
    /// `checkpoint_every` events and when a runner idles, so an active
    /// runner is usually a little ahead of it.
    pub lag_events: u64,
    /// How long the oldest of those events has waited, in seconds (0 when
    /// there are none): the projection's lag in time.
    pub lag_seconds: f64,
    /// The runner holding its lease, if one is active.
    pub runner: Option<RunnerInfo>,
    /// Events skipped (by its error strategy or by operators).
    pub skips: u64,
    /// The position of the last event skipped.
    pub last_skip: Option<GlobalPosition>,
    /// The error its last runner stopped on, if any was recorded.
    pub last_error: Option<LastError>,
    /// When an operator asked for a rebuild that no runner has started yet.
    pub rebuild_requested_at: Option<DateTime<Utc>>,
}

/// The error a projection's runner last stopped on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastError {
    /// The error and its causes.
    pub message: String,
    /// The event it stopped on, if one caused it.
    pub position: Option<GlobalPosition>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Whether the checkpoint has since moved past that event (passed or
    /// skipped).
    pub passed: bool,
}

/// The session holding a projection's runner lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunnerInfo {
    /// Its backend's process id (`pg_terminate_backend` ends the lease).
    pub pid: i32,
    /// Its `application_name`.
    pub application: String,
    /// Its client address (`local` for a Unix socket).
    pub client: String,
    /// Its database role.
    pub role: String,
    /// When its lease connection opened: since when it holds the lease.
    pub since: DateTime<Utc>,
}

impl fmt::Display for RunnerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {}, application '{}', client {}, role {}, since {}",
            self.pid,
            self.application,
            self.client,
            self.role,
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// Who asks for an operator action, why, and whether to act while a
/// runner is active.
#[derive(Clone, Debug, Default)]
pub struct ProjectionRequest {
    /// Act even while a runner is active. The action fences it out: its
    /// next checkpoint write fails with [`Error::LeaseLost`] and it stops
    /// (restart it to pick up the change). Default `false`: refuse with
    /// [`PostgresError::ProjectionBusy`].
    pub force: bool,
    /// Why, for the record.
    pub reason: String,
    /// Who, as the caller knows them (an OS user, say); the record adds
    /// the database role, client address and application.
    pub operator: String,
}

impl ProjectionRequest {
    /// A request by `operator`, not forced, with no reason given.
    pub fn new(operator: impl Into<String>) -> Self {
        Self {
            operator: operator.into(),
            ..Self::default()
        }
    }

    /// Sets the reason recorded.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Acts even while a runner is active (see [`ProjectionRequest::force`]).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
}

/// An operator's action, as recorded in `projection_operations`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProjectionOperation {
    /// The record's id.
    pub id: i64,
    /// The projection.
    pub projection: String,
    /// `reset`, `rebuild` or `skip`.
    pub action: String,
    /// Whether it was forced past an active runner.
    pub forced: bool,
    /// The runner it fenced out, if one was active.
    pub displaced_runner: Option<String>,
    /// The checkpoint before.
    pub checkpoint_before: Option<GlobalPosition>,
    /// The checkpoint after.
    pub checkpoint_after: Option<GlobalPosition>,
    /// The event skipped (`skip`).
    pub event_position: Option<GlobalPosition>,
    /// Why.
    pub reason: String,
    /// Who: the operator's name as given, the database role, client
    /// address and application.
    pub performed_by: String,
    /// When.
    pub performed_at: DateTime<Utc>,
}

/// What an operator does.
#[derive(Clone, Copy)]
enum Action {
    Reset,
    Rebuild,
    Skip(GlobalPosition),
    AcceptHistory,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::Rebuild => "rebuild",
            Action::Skip(_) => "skip",
            Action::AcceptHistory => "accept-history",
        }
    }
}

fn position(p: Option<i64>) -> Option<GlobalPosition> {
    p.and_then(|p| u64::try_from(p).ok())
        .map(GlobalPosition::new)
}

fn to_i64(p: GlobalPosition) -> i64 {
    i64::try_from(p.get()).unwrap_or(i64::MAX)
}

fn status_of(row: &PgRow) -> Result<ProjectionStatus, sqlx::Error> {
    let checkpoint = position(row.try_get(1)?);
    let error_position = position(row.try_get(5)?);
    let last_error = match (row.try_get::<Option<String>, _>(4)?, row.try_get(6)?) {
        (Some(message), Some(at)) => Some(LastError {
            message,
            position: error_position,
            at,
            passed: matches!((checkpoint, error_position), (Some(c), Some(e)) if c >= e),
        }),
        _ => None,
    };
    let oldest: Option<DateTime<Utc>> = row.try_get(12)?;
    let now: DateTime<Utc> = row.try_get(13)?;
    let runner = match row.try_get::<Option<i32>, _>(14)? {
        Some(pid) => Some(RunnerInfo {
            pid,
            application: row.try_get::<Option<String>, _>(15)?.unwrap_or_default(),
            client: row.try_get::<Option<String>, _>(16)?.unwrap_or_default(),
            since: row.try_get::<Option<DateTime<Utc>>, _>(17)?.unwrap_or(now),
            role: row.try_get::<Option<String>, _>(18)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(ProjectionStatus {
        name: row.try_get(0)?,
        checkpoint,
        generation: row.try_get(2)?,
        updated_at: row.try_get(3)?,
        last_error,
        rebuild_requested_at: row.try_get(7)?,
        skips: row.try_get::<i64, _>(8)?.max(0) as u64,
        last_skip: position(row.try_get(9)?),
        lag_events: row.try_get::<i64, _>(11)?.max(0) as u64,
        lag_seconds: oldest.map_or(0.0, |at| {
            (now - at).to_std().map_or(0.0, |d| d.as_secs_f64())
        }),
        runner,
    })
}

fn operation_of(row: &PgRow) -> Result<ProjectionOperation, sqlx::Error> {
    Ok(ProjectionOperation {
        id: row.try_get(0)?,
        projection: row.try_get(1)?,
        action: row.try_get(2)?,
        forced: row.try_get(3)?,
        displaced_runner: row.try_get(4)?,
        checkpoint_before: position(row.try_get(5)?),
        checkpoint_after: position(row.try_get(6)?),
        event_position: position(row.try_get(7)?),
        reason: row.try_get(8)?,
        performed_by: row.try_get(9)?,
        performed_at: row.try_get(10)?,
    })
}

impl PostgresEventStore {
    /// Every projection the store knows (a checkpoint, skips or operator
    /// actions), by name, with checkpoint, lag, active runner, skips and
    /// last error. Counting the lag reads the events after each checkpoint:
    /// slow for a projection far behind on a large store.
    pub async fn projections(&self) -> Result<Vec<ProjectionStatus>, PostgresError> {
        self.select_projections(None).await
    }

    /// One projection's state, `None` if the store has no record of it.
    pub async fn projection(&self, name: &str) -> Result<Option<ProjectionStatus>, PostgresError> {
        Ok(self.select_projections(Some(name)).await?.pop())
    }

    async fn select_projections(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<ProjectionStatus>, PostgresError> {
        const OP: &str = "list projections";
        let schema = self.config().schema.as_str();
        let rows = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(fill(sql::SELECT_PROJECTIONS, schema))
                        .persistent(self.named())
                        .bind(schema)
                        .bind(name)
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        rows.iter()
            .map(|row| status_of(row).map_err(|e| self.map_err(OP, e).into()))
            .collect()
    }

    /// Operators' actions on `projection` (all projections if `None`),
    /// newest first, at most `limit`.
    pub async fn projection_operations(
        &self,
        projection: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProjectionOperation>, PostgresError> {
        const OP: &str = "list projection operations";
        let schema = self.config().schema.as_str();
        let rows = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(fill(sql::SELECT_OPERATIONS, schema))
                        .persistent(self.named())
                        .bind(projection)
                        .bind(i64::from(limit))
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        rows.iter()
            .map(|row| operation_of(row).map_err(|e| self.map_err(OP, e).into()))
            .collect()
    }

    /// Forgets `projection`'s checkpoint: its next runner starts from the
    /// first event, applying every event again **to the read model as it
    /// is** (for projections whose `apply` is idempotent; see
    /// [`request_projection_rebuild`](Self::request_projection_rebuild) to
    /// start from an empty read model). Refused while a runner is active
    /// unless `request.force`; recorded.
    pub async fn reset_projection(
        &self,
        projection: &str,
        request: &ProjectionRequest,
    ) -> Result<ProjectionOperation, PostgresError> {
        self.operate(projection, request, Action::Reset).await
    }

    /// Asks for `projection` to be rebuilt: its checkpoint is forgotten and
    /// its next runner, on taking the lease, resets the read model
    /// ([`Projection::reset`](eventcore::Projection::reset)) and replays
    /// every event. Progress shows in [`projection`](Self::projection):
    /// `rebuild_requested_at` clears when a runner starts the rebuild, and
    /// the checkpoint then climbs to the head. Refused while a runner is
    /// active unless `request.force`; recorded.
    pub async fn request_projection_rebuild(
        &self,
        projection: &str,
        request: &ProjectionRequest,
    ) -> Result<ProjectionOperation, PostgresError> {
        self.operate(projection, request, Action::Rebuild).await
    }

    /// Passes the poison event at `position` that `projection`'s runner
    /// stopped on: records it as skipped and moves the checkpoint to it.
    /// Refused (with [`Error::Projection`], changing nothing) when the
    /// checkpoint is at or past it, when there is no event there or it is
    /// not readable yet, and when events lie between the checkpoint and it
    /// (they would be passed unrecorded). Refused while a runner is active
    /// unless `request.force`; recorded.
    pub async fn skip_projection_event(
        &self,
        projection: &str,
        position: GlobalPosition,
        request: &ProjectionRequest,
    ) -> Result<ProjectionOperation, PostgresError> {
        self.operate(projection, request, Action::Skip(position))
            .await
    }

    /// Declares that `projection`'s checkpoint is valid on the history the
    /// store serves now (see [`ClusterHistory`](crate::ClusterHistory)):
    /// the checkpoint is re-stamped with it, keeping its position, and the
    /// next runner resumes there instead of stopping with
    /// [`Error::HistoryChanged`]. Only right when the new history holds
    /// every event the checkpoint covers (a planned switchover, a failover
    /// to a synchronous standby, a restore checked with `eventcore
    /// restore-check`); otherwise rebuild. Refused while a runner is active
    /// unless `request.force`; recorded.
    pub async fn accept_projection_history(
        &self,
        projection: &str,
        request: &ProjectionRequest,
    ) -> Result<ProjectionOperation, PostgresError> {
        self.operate(projection, request, Action::AcceptHistory)
            .await
    }

    /// Events after position `after` up to `upto` (both may be 0): a
    /// rebuild's progress.
    pub async fn count_events_between(
        &self,
        after: GlobalPosition,
        upto: GlobalPosition,
    ) -> Result<u64, PostgresError> {
        const OP: &str = "count events";
        let schema = self.config().schema.as_str();
        let n: i64 = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(fill(sql::COUNT_EVENTS_BETWEEN, schema))
                        .persistent(self.named())
                        .bind(to_i64(after))
                        .bind(to_i64(upto))
                        .fetch_one(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    /// One operator action in one transaction: the runner lease's lock
    /// (or, forced, none), the generation bump that fences any runner, the
    /// change and its record.
    async fn operate(
        &self,
        projection: &str,
        request: &ProjectionRequest,
        action: Action,
    ) -> Result<ProjectionOperation, PostgresError> {
        const OP: &str = "projection operation";
        let Some(status) = self.projection(projection).await? else {
            let known = self
                .projections()
                .await?
                .into_iter()
                .map(|p| p.name)
                .collect();
            return Err(PostgresError::UnknownProjection {
                projection: projection.to_owned(),
                known,
            });
        };
        let status = &status;
        let schema = self.config().schema.as_str();
        let map = |e| PostgresError::from(self.map_err(OP, e));
        self.db()
            .call(OP, Call::Write, |conn| {
                Box::pin(async move {
                    let mut tx = conn.begin().await.map_err(map)?;
                    let free: bool = sqlx::query_scalar(sql::TRY_LOCK_PROJECTION_XACT)
                        .persistent(self.named())
                        .bind(format!("eventcore:projection:{schema}:{projection}"))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map)?;
                    // A runner behind a transaction pooler holds a lease row.
                    let row_held = free
                        && crate::lease_row::live(&mut tx, schema, projection, self.named())
                            .await
                            .map_err(map)?;
                    let displaced = if free && !row_held {
                        None
                    } else {
                        let runner = match &status.runner {
                            Some(r) => r.to_string(),
                            None if row_held => "a runner holding a lease row".to_owned(),
                            None => "a runner that just started".to_owned(),
                        };
                        if !request.force {
                            return Err(PostgresError::ProjectionBusy {
                                projection: projection.to_owned(),
                                runner,
                            });
                        }
                        Some(runner)
                    };
                    let q = self.sql();
                    sqlx::query(store_sql::sql(&q.bump_lease_generation))
                        .persistent(self.named())
                        .bind(projection)
                        .execute(&mut *tx)
                        .await
                        .map_err(map)?;
                    if row_held {
                        // Fenced by the bump; its next renewal finds no row
                        // and it stops, and the next runner need not wait
                        // for the expiry.
                        crate::lease_row::force_release(&mut tx, schema, projection, self.named())
                            .await
                            .map_err(map)?;
                    }
                    let before: Option<i64> =
                        sqlx::query_scalar(store_sql::sql(&q.select_checkpoint_for_update))
                            .persistent(self.named())
                            .bind(projection)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(map)?;
                    let (after, skipped) = match action {
                        Action::Reset | Action::Rebuild => {
                            let statement = if matches!(action, Action::Reset) {
                                sql::OPERATOR_RESET
                            } else {
                                sql::OPERATOR_REQUEST_REBUILD
                            };
                            sqlx::query(fill(statement, schema))
                                .persistent(self.named())
                                .bind(projection)
                                .execute(&mut *tx)
                                .await
                                .map_err(map)?;
                            (None, None)
                        }
                        Action::Skip(target) => {
                            self.skip_in(&mut tx, projection, before, target, request)
                                .await?;
                            (Some(to_i64(target)), Some(to_i64(target)))
                        }
                        Action::AcceptHistory => {
                            sqlx::query(fill(sql::OPERATOR_ACCEPT_HISTORY, schema))
                                .persistent(self.named())
                                .bind(projection)
                                .execute(&mut *tx)
                                .await
                                .map_err(map)?;
                            (before, None)
                        }
                    };
                    let reason = if request.reason.trim().is_empty() {
                        "no reason given"
                    } else {
                        request.reason.as_str()
                    };
                    let operator = if request.operator.trim().is_empty() {
                        "someone"
                    } else {
                        request.operator.as_str()
                    };
                    let row = sqlx::query(fill(sql::INSERT_OPERATION, schema))
                        .persistent(self.named())
                        .bind(projection)
                        .bind(action.name())
                        .bind(displaced.is_some())
                        .bind(&displaced)
                        .bind(before)
                        .bind(after)
                        .bind(skipped)
                        .bind(reason)
                        .bind(operator)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map)?;
                    let record = operation_of(&row).map_err(map)?;
                    tx.commit().await.map_err(map)?;
                    tracing::info!(
                        projection,
                        action = action.name(),
                        forced = record.forced,
                        by = %record.performed_by,
                        "projection changed by an operator"
                    );
                    Ok(record)
                })
            })
            .await
    }

    /// The checks and writes of a skip, in the operator's transaction
    /// (which holds the checkpoint row's lock).
    async fn skip_in(
        &self,
        tx: &mut PgConnection,
        projection: &str,
        checkpoint: Option<i64>,
        target: GlobalPosition,
        request: &ProjectionRequest,
    ) -> Result<(), PostgresError> {
        const OP: &str = "skip event";
        let refused = |why: String| {
            PostgresError::Store(Error::Projection {
                projection: projection.to_owned(),
                position: Some(target),
                stream_id: None,
                source: format!("cannot skip the event at {target}: {why}").into(),
            })
        };
        let map = |e| PostgresError::from(self.map_err(OP, e));
        let stream = match crate::projection::skip_target(tx, self, checkpoint, target, OP).await? {
            Ok(stream) => stream,
            Err(why) => return Err(refused(why)),
        };
        let reason = if request.reason.trim().is_empty() {
            "no reason given"
        } else {
            request.reason.as_str()
        };
        sqlx::query(store_sql::sql(&self.sql().insert_projection_skip))
            .persistent(self.named())
            .bind(projection)
            .bind(to_i64(target))
            .bind(StreamId::new(&stream).ok().as_ref().map(StreamId::as_str))
            .bind(format!("skipped by an operator: {reason}"))
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        sqlx::query(fill(sql::OPERATOR_SKIP, &self.config().schema))
            .persistent(self.named())
            .bind(projection)
            .bind(to_i64(target))
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        Ok(())
    }

    /// [`CheckpointStore::record_error`](eventcore::CheckpointStore::record_error)
    /// for `PostgresCheckpointStore`.
    pub(crate) async fn record_projection_error(
        &self,
        projection: &str,
        position: Option<GlobalPosition>,
        error: &str,
    ) -> Result<(), Error> {
        const OP: &str = "record projection error";
        let schema = self.config().schema.as_str();
        self.db()
            .call(OP, Call::Write, |conn| {
                Box::pin(async move {
                    sqlx::query(fill(sql::UPSERT_PROJECTION_ERROR, schema))
                        .persistent(self.named())
                        .bind(projection)
                        .bind(position.map(to_i64))
                        .bind(crate::redact_secrets(error))
                        .execute(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        Ok(())
    }

    /// [`CheckpointStore::rebuild_requested`](eventcore::CheckpointStore::rebuild_requested)
    /// for `PostgresCheckpointStore`.
    pub(crate) async fn projection_rebuild_requested(
        &self,
        projection: &str,
    ) -> Result<bool, Error> {
        const OP: &str = "read rebuild request";
        let schema = self.config().schema.as_str();
        let requested: Option<bool> = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(fill(sql::SELECT_REBUILD_REQUESTED, schema))
                        .persistent(self.named())
                        .bind(projection)
                        .fetch_optional(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        Ok(requested.unwrap_or(false))
    }
}
