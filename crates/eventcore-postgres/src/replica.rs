//! Reads from hot standbys (streaming replicas of the primary).
//!
//! What a standby allows, verified on PostgreSQL 15 (see "Replication and
//! failover" in `docs/operations.md`):
//!
//! * `pg_current_snapshot()` works, with an empty xip list but an xmin that
//!   is the primary's oldest running transaction as replayed: the `$all`
//!   read horizon (`read_horizon!()`, xmin only) is the same statement on a
//!   standby and never lets a reader pass a commit the standby has not
//!   replayed yet.
//! * `LISTEN` is refused (SQLSTATE 25006): wake-ups come from the primary.
//! * Replay cancels reads that hold back row versions or locks it must
//!   apply (recovery conflicts, SQLSTATE 40001), or ends the session when
//!   it idles in a transaction (FATAL 40001): both are transient errors of
//!   the read ([`eventcore::Error::Aborted`]), retried by the caller's
//!   policy; reads stay short (one page of a subscription per statement)
//!   so that they rarely conflict.
//! * A commit's end is the primary's `pg_current_wal_insert_lsn()` read
//!   after the commit returned; a standby has it once its
//!   `pg_last_wal_replay_lsn()` reached it.

use std::time::{Duration, Instant};

use eventcore::{AppendOutcome, Error, GlobalPosition};

use crate::{
    PostgresConfig, PostgresError, PostgresEventStore, instrument,
    pool::{Call, Pool},
};

/// The primary's WAL insert position as a number: at or past the end of
/// every commit that returned before it was read.
const SELECT_INSERT_LSN: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";

/// The primary's WAL write position, what lag is measured against.
const SELECT_CURRENT_LSN: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8";

/// On a replica: whether it is in recovery (a standby), what it has
/// replayed (a server that is no standby counts as having everything it
/// wrote), when the last replayed commit was made on the primary (seconds
/// ago) and whether its WAL receiver streams.
const SELECT_REPLAY: &str = "SELECT pg_is_in_recovery(), \
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END \
        - '0/0'::pg_lsn)::int8, \
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')";

/// On a replica: `$1` an LSN, `$2` a position (-1: none). Whether it has
/// replayed up to the LSN and its `$all` horizon is past the position.
const SELECT_CAUGHT_UP: &str = concat!(
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                  ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::int8 >= $1 \
            AND $2 < ",
    crate::sql::read_horizon!()
);

/// How often a read-your-writes wait asks the replicas again.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

/// A point in the primary's history that reads can wait for: the end of
/// an append's commit (its WAL position, read after the commit returned)
/// and, for `$all` readers, the append's last position. Made by
/// [`PostgresEventStore::commit_token`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitToken {
    /// The primary's WAL insert position after the commit, in bytes.
    pub lsn: u64,
    /// The append's last global position, if it wrote events.
    pub position: Option<GlobalPosition>,
}

/// One replica as a health check or [`replica_lag`](PostgresEventStore::replica_lag)
/// found it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaStatus {
    /// Its address (`host:port`; never credentials).
    pub replica: String,
    /// Whether a round trip succeeded.
    pub reachable: bool,
    /// Whether it is a standby in recovery (a promoted replica is not, and
    /// reads from it no longer follow the primary).
    pub in_recovery: bool,
    /// Whether its WAL receiver is streaming from the primary. While it is
    /// not, the replica falls behind without bound.
    pub receiving: bool,
    /// WAL the primary has written and the replica has not replayed, in
    /// bytes (exact; 0 when caught up).
    pub lag_bytes: u64,
    /// How far behind the replica's data is: 0 when it has replayed
    /// everything the primary had written when asked, otherwise the age
    /// of the last commit it replayed. (That age alone is no lag: on an
    /// idle primary it grows while the replica is fully caught up.)
    pub lag: Duration,
}

/// A replica: a pool of its own, the same kind the primary has.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) db: Pool,
    /// `host:port`, for messages and metric labels.
    pub(crate) name: String,
}

/// The configured replicas, taken in turn.
#[derive(Debug, Default)]
pub(crate) struct Replicas {
    list: Vec<Replica>,
    next: std::sync::atomic::AtomicUsize,
}

impl Replicas {
    /// One lazily connecting pool per `config.read_replicas` URL.
    pub(crate) fn new(config: &PostgresConfig) -> Result<Self, PostgresError> {
        let list = config
            .read_replicas
            .iter()
            .map(|url| {
                let options = config.connect_options_for("read_replicas", url)?;
                Ok(Replica {
                    name: format!("{}:{}", options.get_host(), options.get_port()),
                    db: Pool::new(Pool::replica(config, url)?, config),
                })
            })
            .collect::<Result<_, PostgresError>>()?;
        Ok(Self {
            list,
            next: Default::default(),
        })
    }

    /// The pool for the next read: a replica's in turn, if any.
    pub(crate) fn pick(&self) -> Option<&Replica> {
        if self.list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.list.len();
        self.list.get(i)
    }

    pub(crate) fn all(&self) -> &[Replica] {
        &self.list
    }
}

fn lsn_param(lsn: u64) -> i64 {
    i64::try_from(lsn).unwrap_or(i64::MAX)
}

impl PostgresEventStore {
    /// What to wait for to read an append's events from a replica: the
    /// primary's WAL position now, which is at or past the end of the
    /// append's commit (it returned before), and its last position. One
    /// round trip on the primary; take it right after the append.
    pub async fn commit_token(&self, outcome: &AppendOutcome) -> Result<CommitToken, Error> {
        let lsn = self
            .db()
            .call("commit token", Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar::<_, i64>(SELECT_INSERT_LSN)
                        .persistent(self.named())
                        .fetch_one(&mut **conn)
                        .await
                        .map_err(|e| self.map_err("commit token", e))
                })
            })
            .await?;
        Ok(CommitToken {
            lsn: lsn.max(0) as u64,
            position: outcome.positions.map(|(_, last)| last),
        })
    }

    /// Waits until every replica has replayed `token`'s commit and, when
    /// it has a position, until `$all` readers there can see it: after
    /// that, `read_stream` and `read_all` return the append's events.
    /// Returns at once without replicas. Past `timeout`, including when a
    /// replica does not answer in time, [`PostgresError::ReplicaBehind`]
    /// (transient as an [`eventcore::Error`]); a replica that refuses the
    /// question fails the wait with its error.
    pub async fn wait_for_replicas(
        &self,
        token: &CommitToken,
        timeout: Duration,
    ) -> Result<(), PostgresError> {
        let started = Instant::now();
        let lsn = lsn_param(token.lsn);
        let position = token.position.map_or(-1, |p| lsn_param(p.get()));
        for replica in self.replicas().all() {
            loop {
                // The question too is bounded by what is left of `timeout`:
                // a replica gone silent would otherwise hold the caller for
                // the pool's whole client deadline.
                let remaining = timeout.saturating_sub(started.elapsed());
                let asked = tokio::time::timeout(
                    remaining,
                    replica.db.call("wait for replica", Call::Read, |conn| {
                        Box::pin(async move {
                            sqlx::query_scalar(SELECT_CAUGHT_UP)
                                .persistent(self.named())
                                .bind(lsn)
                                .bind(position)
                                .fetch_one(&mut **conn)
                                .await
                                .map_err(|e| self.map_err("wait for replica", e))
                        })
                    }),
                )
                .await;
                let caught_up: bool = match asked {
                    Ok(answer) => answer.map_err(PostgresError::Store)?,
                    Err(_) => false,
                };
                if caught_up {
                    break;
                }
                if started.elapsed() >= timeout {
                    return Err(PostgresError::ReplicaBehind {
                        replica: replica.name.clone(),
                        lsn: token.lsn,
                        waited: started.elapsed(),
                    });
                }
                tokio::time::sleep(CATCH_UP_POLL.min(remaining)).await;
            }
        }
        Ok(())
    }

    /// Every replica's state and lag, also published as the metrics
    /// [`REPLICA_LAG_BYTES`](crate::instrument::REPLICA_LAG_BYTES) and
    /// [`REPLICA_LAG_SECONDS`](crate::instrument::REPLICA_LAG_SECONDS).
    /// Empty without replicas. Fails only when the primary cannot be asked;
    /// an unreachable replica is reported as such.
    pub async fn replica_lag(&self) -> Result<Vec<ReplicaStatus>, Error> {
        if self.replicas().all().is_empty() {
            return Ok(Vec::new());
        }
        // The primary first: a replica that replayed past this is caught up.
        let primary: i64 = self
            .db()
            .call("replica lag", Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(SELECT_CURRENT_LSN)
                        .persistent(self.named())
                        .fetch_one(&mut **conn)
                        .await
                        .map_err(|e| self.map_err("replica lag", e))
                })
            })
            .await?;
        let mut out = Vec::new();
        for replica in self.replicas().all() {
            let row: Result<(bool, i64, Option<f64>, bool), Error> = replica
                .db
                .call("replica lag", Call::Read, |conn| {
                    Box::pin(async move {
                        sqlx::query_as(SELECT_REPLAY)
                            .persistent(self.named())
                            .fetch_one(&mut **conn)
                            .await
                            .map_err(|e| self.map_err("replica lag", e))
                    })
                })
                .await;
            let status = match row {
                Ok((in_recovery, replayed, age, receiving)) => {
                    let lag_bytes = (primary - replayed).max(0) as u64;
                    let lag = if lag_bytes == 0 {
                        Duration::ZERO
                    } else {
                        Duration::from_secs_f64(age.unwrap_or(0.0).max(0.0))
                    };
                    ReplicaStatus {
                        replica: replica.name.clone(),
                        reachable: true,
                        in_recovery,
                        receiving,
                        lag_bytes,
                        lag,
                    }
                }
                Err(e) => {
                    tracing::warn!(replica = %replica.name, error = %e, "cannot ask a replica for its lag");
                    ReplicaStatus {
                        replica: replica.name.clone(),
                        reachable: false,
                        in_recovery: false,
                        receiving: false,
                        lag_bytes: 0,
                        lag: Duration::ZERO,
                    }
                }
            };
            instrument::replica_lag(&status);
            out.push(status);
        }
        Ok(out)
    }
}

impl ReplicaStatus {
    /// Why this replica is unhealthy, if it is, against `max_lag`.
    pub(crate) fn problem(&self, max_lag: Duration) -> Option<String> {
        let r = &self.replica;
        if !self.reachable {
            Some(format!("replica {r} unreachable"))
        } else if !self.in_recovery {
            Some(format!(
                "replica {r} is not a standby (promoted?): its reads no longer follow the primary"
            ))
        } else if !self.receiving {
            Some(format!(
                "replica {r} has no WAL receiver streaming from the primary (behind by {} bytes)",
                self.lag_bytes
            ))
        } else if self.lag > max_lag {
            Some(format!(
                "replica {r} is {:.1} s ({} bytes) behind the primary, more than {max_lag:?}",
                self.lag.as_secs_f64(),
                self.lag_bytes
            ))
        } else {
            None
        }
    }
}
