//! The restore check: after a logical restore, is the cluster's transaction
//! counter past the positions of every EventCore store, in every database?
//! (`eventcore restore-check`; "Backup and restore" in `docs/operations.md`.)

use std::time::Duration;

use eventcore::GlobalPosition;
use sqlx::{ConnectOptions, Connection, PgConnection, Row, postgres::PgConnectOptions};

use crate::{
    MAX_TRANSACTION_ID, PostgresConfig, PostgresError,
    counter::{self, INDEX_BITS},
    redact_secrets, sql,
};

/// One EventCore store found in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreHighWater {
    /// Its database.
    pub database: String,
    /// Its schema.
    pub schema: String,
    /// Its newest event's position (`None`: no events).
    pub newest_position: Option<GlobalPosition>,
    /// Its projections' newest checkpoint (`None`: none).
    pub newest_checkpoint: Option<GlobalPosition>,
}

impl StoreHighWater {
    /// The highest transaction id its positions and checkpoints carry.
    pub fn newest_transaction_id(&self) -> Option<u64> {
        self.newest_position
            .max(self.newest_checkpoint)
            .map(|p| p.get() >> INDEX_BITS)
    }
}

/// A database the check could not look into.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UncheckedDatabase {
    /// Its name.
    pub database: String,
    /// Why (the connection or query error, password redacted).
    pub reason: String,
}

/// What [`restore_check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreCheck {
    /// The next transaction id the cluster will assign (64-bit: epoch
    /// `<< 32` plus the 32-bit id), read after every store's positions.
    pub next_transaction_id: u64,
    /// Every EventCore store of the cluster, by database and schema.
    pub stores: Vec<StoreHighWater>,
    /// Databases that could not be checked: no verdict can be given.
    pub unchecked: Vec<UncheckedDatabase>,
}

/// What to do before writers start, by [`RestoreCheck::verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestoreVerdict {
    /// The counter is past every store's positions and inside the range
    /// positions can encode: writers may start.
    Ready,
    /// The counter is behind: stop the cluster cleanly, run
    /// `pg_resetwal -e <epoch> -D <data directory>` as its owner, start it
    /// and check again. Only the epoch (the upper 32 bits of the 64-bit
    /// transaction id) moves; the 32-bit ids PostgreSQL keeps in its data
    /// files stay as they are.
    AdvanceEpoch {
        /// The lowest epoch above every store's positions.
        epoch: u32,
    },
    /// The counter is past [`MAX_TRANSACTION_ID`], or the stores' positions
    /// leave no epoch inside it: no write can get a new position.
    Exhausted {
        /// The lowest epoch above every store's positions, if it is inside
        /// the range (setting it *lowers* the counter: see
        /// `docs/operations.md` before doing so).
        lowest_safe_epoch: Option<u32>,
    },
    /// Some databases could not be checked.
    Incomplete,
}

impl RestoreCheck {
    /// The highest transaction id any store's positions carry.
    pub fn newest_transaction_id(&self) -> Option<u64> {
        self.stores
            .iter()
            .filter_map(StoreHighWater::newest_transaction_id)
            .max()
    }

    /// The lowest epoch whose every transaction id is above every store's
    /// positions (0 when there are none), if it is inside the range.
    fn lowest_safe_epoch(&self) -> Option<u32> {
        let epoch = self.newest_transaction_id().map_or(0, |id| (id >> 32) + 1);
        u32::try_from(epoch)
            .ok()
            .filter(|e| (u64::from(*e) << 32) <= MAX_TRANSACTION_ID)
    }

    /// What to do before writers start.
    pub fn verdict(&self) -> RestoreVerdict {
        if !self.unchecked.is_empty() {
            return RestoreVerdict::Incomplete;
        }
        let lowest_safe_epoch = self.lowest_safe_epoch();
        if self.next_transaction_id > MAX_TRANSACTION_ID {
            return RestoreVerdict::Exhausted { lowest_safe_epoch };
        }
        let behind = self
            .newest_transaction_id()
            .is_some_and(|newest| self.next_transaction_id <= newest);
        match (behind, lowest_safe_epoch) {
            (false, _) => RestoreVerdict::Ready,
            (true, Some(epoch)) => RestoreVerdict::AdvanceEpoch { epoch },
            (true, None) => RestoreVerdict::Exhausted {
                lowest_safe_epoch: None,
            },
        }
    }
}

/// Checks every database of the cluster `config` points at (any database
/// of it will do; the role must be able to connect to each and read the
/// stores' `events` and `projection_checkpoints`): finds the EventCore
/// stores by catalog (schemas with an `events` table that has a
/// `global_position` column and a `schema_migrations` ledger), reads each
/// one's newest position and checkpoint, then the cluster's transaction
/// counter. Run it after restoring every database and before any writer
/// starts; [`RestoreCheck::verdict`] says what to do. `template0`, which
/// takes no connections by design, is skipped; any other database that
/// cannot be checked makes the verdict [`RestoreVerdict::Incomplete`].
pub async fn restore_check(config: &PostgresConfig) -> Result<RestoreCheck, PostgresError> {
    config.validate()?;
    let options = config.connect_options()?;
    let timeout = config.connect_timeout;
    let mut admin = connect(&options, timeout)
        .await
        .map_err(PostgresError::Connect)?;
    // A server that answers the connect and then goes silent would hold
    // each query forever: the client's clock bounds them too.
    let within = Duration::from_secs(1)
        .saturating_add(config.query_timeout)
        .saturating_add(timeout);
    let failed = |e| {
        PostgresError::Store(crate::error::map_sqlx(
            "restore check",
            config.query_timeout,
            e,
        ))
    };
    let databases: Vec<(String, bool)> = bounded(
        within,
        sqlx::query_as(sql::SELECT_DATABASES).fetch_all(&mut admin),
    )
    .await
    .map_err(failed)?;
    let mut check = RestoreCheck {
        next_transaction_id: 0,
        stores: Vec::new(),
        unchecked: Vec::new(),
    };
    for (database, allows_connections) in databases {
        if !allows_connections {
            if database != "template0" {
                check.unchecked.push(UncheckedDatabase {
                    reason: "it does not allow connections (ALTER DATABASE ... ALLOW_CONNECTIONS true to check it)".into(),
                    database,
                });
            }
            continue;
        }
        let found = async {
            let mut conn = connect(&options.clone().database(&database), timeout).await?;
            let found = bounded(within, stores_in(&mut conn, &database)).await;
            let _ = conn.close().await;
            found
        }
        .await;
        match found {
            Ok(stores) => check.stores.extend(stores),
            Err(e) => check.unchecked.push(UncheckedDatabase {
                database,
                reason: redact_secrets(&e.to_string()),
            }),
        }
    }
    // Last: every position read above was written by a transaction below it.
    check.next_transaction_id = bounded(within, counter::next_transaction_id(&mut admin))
        .await
        .map_err(failed)?;
    let _ = admin.close().await;
    Ok(check)
}

async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, sqlx::Error> {
    bounded(timeout, options.connect()).await
}

/// `work`, or a timed-out I/O error once `limit` has passed.
async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        ))),
    }
}

/// The stores of the database `conn` is connected to.
async fn stores_in(
    conn: &mut PgConnection,
    database: &str,
) -> Result<Vec<StoreHighWater>, sqlx::Error> {
    let schemas = sqlx::query(sql::SELECT_STORE_SCHEMAS)
        .fetch_all(&mut *conn)
        .await?;
    let mut stores = Vec::with_capacity(schemas.len());
    for row in schemas {
        let schema: String = row.try_get(0)?;
        let has_checkpoints: bool = row.try_get(1)?;
        let newest_position: Option<i64> = sqlx::query_scalar(sql::sql(&sql::for_schema(
            sql::SELECT_HEAD_POSITION,
            &schema,
        )))
        .fetch_one(&mut *conn)
        .await?;
        let newest_checkpoint: Option<i64> = if has_checkpoints {
            sqlx::query_scalar(sql::sql(&sql::for_schema(
                sql::SELECT_NEWEST_CHECKPOINT,
                &schema,
            )))
            .fetch_one(&mut *conn)
            .await?
        } else {
            None
        };
        let position = |p: Option<i64>| {
            p.and_then(|p| u64::try_from(p).ok())
                .map(GlobalPosition::new)
        };
        stores.push(StoreHighWater {
            database: database.to_owned(),
            schema,
            newest_position: position(newest_position),
            newest_checkpoint: position(newest_checkpoint),
        });
    }
    Ok(stores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(next: u64, newest_ids: &[u64]) -> RestoreCheck {
        RestoreCheck {
            next_transaction_id: next,
            stores: newest_ids
                .iter()
                .enumerate()
                .map(|(i, id)| StoreHighWater {
                    database: format!("db{i}"),
                    schema: "eventcore".into(),
                    newest_position: Some(GlobalPosition::new((id << INDEX_BITS) + 3)),
                    newest_checkpoint: None,
                })
                .collect(),
            unchecked: Vec::new(),
        }
    }

    #[test]
    fn the_epoch_clears_the_newest_store_of_any_database() {
        let behind = check(800, &[1_000, (5 << 32) + 17, 900]);
        assert_eq!(
            behind.verdict(),
            RestoreVerdict::AdvanceEpoch { epoch: 6 },
            "above the newest of all, not of the first"
        );
        assert_eq!(
            check(800, &[1_000]).verdict(),
            RestoreVerdict::AdvanceEpoch { epoch: 1 }
        );
        assert_eq!(check(1_001, &[1_000]).verdict(), RestoreVerdict::Ready);
        assert_eq!(
            check(1_000, &[1_000]).verdict(),
            RestoreVerdict::AdvanceEpoch { epoch: 1 }
        );
        assert_eq!(check(5, &[]).verdict(), RestoreVerdict::Ready, "no stores");
    }

    #[test]
    fn checkpoints_count_like_positions() {
        let mut c = check(2_000, &[1_000]);
        c.stores[0].newest_checkpoint = Some(GlobalPosition::new((3 << 32) << INDEX_BITS));
        assert_eq!(c.verdict(), RestoreVerdict::AdvanceEpoch { epoch: 4 });
    }

    #[test]
    fn past_the_range_or_without_room_it_is_exhausted() {
        assert_eq!(
            check(MAX_TRANSACTION_ID + 1, &[1_000]).verdict(),
            RestoreVerdict::Exhausted {
                lowest_safe_epoch: Some(1)
            }
        );
        assert_eq!(
            check(800, &[MAX_TRANSACTION_ID]).verdict(),
            RestoreVerdict::Exhausted {
                lowest_safe_epoch: None
            }
        );
        assert_eq!(
            check(800, &[(2047 << 32) - 1]).verdict(),
            RestoreVerdict::AdvanceEpoch { epoch: 2047 },
            "the last epoch inside the range"
        );
    }

    #[test]
    fn an_unchecked_database_leaves_no_verdict() {
        let mut c = check(1_001, &[1_000]);
        c.unchecked.push(UncheckedDatabase {
            database: "locked".into(),
            reason: "permission denied".into(),
        });
        assert_eq!(c.verdict(), RestoreVerdict::Incomplete);
    }
}
