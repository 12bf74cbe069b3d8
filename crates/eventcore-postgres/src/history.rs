//! Which history of the cluster positions belong to.
//!
//! A global position encodes the id of the transaction that wrote it. A
//! failover to an asynchronous standby that had not replayed every commit
//! hands out the lost commits' transaction ids again, to other
//! transactions (reproduced in `docs/operations.md`, "Replication and
//! failover"): a projection checkpoint or a saved subscription position
//! taken on the old primary can then name other events on the new one.
//! PostgreSQL tells the histories apart: the system identifier (fixed at
//! `initdb`, kept by `pg_basebackup` copies, so a standby and its primary
//! share it) and the timeline (bumped by every promotion). Positions are
//! stamped with both, and a position of another history is refused with
//! [`Error::HistoryChanged`] until an operator acknowledges the new history
//! or rebuilds.

use std::{fmt, str::FromStr};

use eventcore::{Error, GlobalPosition};

use crate::{PostgresEventStore, pool::Call};

/// The current history as two columns (`system_identifier`, `timeline`).
/// The timeline is the one of the WAL being written, from the file name of
/// the current WAL position: `pg_control_checkpoint()` lags behind a
/// promotion until the next checkpoint. Primary only (PostgreSQL refuses
/// `pg_walfile_name` during recovery).
macro_rules! current_history {
    () => {
        "(SELECT system_identifier FROM pg_control_system()), \
         ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
    };
}
pub(crate) use current_history;

/// The cluster's current history.
const SELECT_HISTORY: &str = concat!("SELECT ", current_history!());

/// A history of a PostgreSQL cluster: its system identifier and timeline.
/// Positions of one history mean the same events wherever they are read
/// (the primary or any of its standbys); positions of two histories are not
/// comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterHistory {
    /// `pg_control_system().system_identifier`: fixed when the cluster was
    /// created, shared by its physical copies.
    pub system_identifier: u64,
    /// The timeline: 1 at creation, bumped by each promotion of a standby.
    pub timeline: u32,
}

impl ClusterHistory {
    pub(crate) fn from_columns(system_identifier: i64, timeline: i32) -> Self {
        Self {
            // Stored as BIGINT/INTEGER, PostgreSQL's own types for them.
            system_identifier: system_identifier as u64,
            timeline: timeline as u32,
        }
    }

    /// `Ok` if a position recorded on `recorded` may be used on `self`,
    /// otherwise [`Error::HistoryChanged`] naming `subject`.
    pub(crate) fn admits(self, recorded: ClusterHistory, subject: &str) -> Result<(), Error> {
        if recorded == self {
            return Ok(());
        }
        Err(Error::HistoryChanged {
            subject: subject.to_owned(),
            recorded: recorded.to_string(),
            current: self.to_string(),
        })
    }
}

impl fmt::Display for ClusterHistory {
    /// `system 7714477235976744247, timeline 2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "system {}, timeline {}",
            self.system_identifier, self.timeline
        )
    }
}

/// A global position together with the history it was read on: what to
/// persist for a subscription (or anything else that resumes from a
/// position) so that resuming on another history fails instead of skipping
/// events. Its text form, `<system identifier>/<timeline>/<position>`, is
/// what [`Display`](fmt::Display) writes and [`FromStr`] reads.
///
/// ```
/// use eventcore::GlobalPosition;
/// use eventcore_postgres::{ClusterHistory, StampedPosition};
///
/// let stamped = StampedPosition {
///     position: GlobalPosition::new(42),
///     history: ClusterHistory { system_identifier: 7714477235976744247, timeline: 2 },
/// };
/// assert_eq!(stamped.to_string(), "7714477235976744247/2/42");
/// assert_eq!("7714477235976744247/2/42".parse::<StampedPosition>().unwrap(), stamped);
/// assert!("42".parse::<StampedPosition>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StampedPosition {
    /// The position (exclusive start of a subscription resumed from it).
    pub position: GlobalPosition,
    /// The history it belongs to.
    pub history: ClusterHistory,
}

impl fmt::Display for StampedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.history.system_identifier,
            self.history.timeline,
            self.position.get()
        )
    }
}

/// Why a text is not a [`StampedPosition`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stamped position (<system identifier>/<timeline>/<position>): {0:?}")]
pub struct InvalidStampedPosition(String);

impl FromStr for StampedPosition {
    type Err = InvalidStampedPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidStampedPosition(s.to_owned());
        let mut parts = s.split('/');
        let (Some(system), Some(timeline), Some(position), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(StampedPosition {
            position: GlobalPosition::new(position.parse().map_err(|_| bad())?),
            history: ClusterHistory {
                system_identifier: system.parse().map_err(|_| bad())?,
                timeline: timeline.parse().map_err(|_| bad())?,
            },
        })
    }
}

impl PostgresEventStore {
    /// The history the primary serves now (see [`ClusterHistory`]).
    pub async fn history(&self) -> Result<ClusterHistory, Error> {
        self.db()
            .call("read history", Call::Read, |conn| {
                Box::pin(async move {
                    let (system, timeline) = sqlx::query_as::<_, (i64, i32)>(SELECT_HISTORY)
                        .persistent(self.named())
                        .fetch_one(&mut **conn)
                        .await
                        .map_err(|e| self.map_err("read history", e))?;
                    Ok(ClusterHistory::from_columns(system, timeline))
                })
            })
            .await
    }

    /// `position` stamped with the current history, to persist where a
    /// subscription resumes (with [`resume_after`](Self::resume_after)).
    /// Stamp positions as they are read: a position read before a failover
    /// and stamped after it would carry the new history.
    pub async fn stamp(&self, position: GlobalPosition) -> Result<StampedPosition, Error> {
        Ok(StampedPosition {
            position,
            history: self.history().await?,
        })
    }

    /// The position to resume a subscription after
    /// ([`SubscriptionOptions::after`](eventcore::SubscriptionOptions::after)),
    /// if `stamped` belongs to the current history; otherwise
    /// [`Error::HistoryChanged`]: start over from the beginning (or from a
    /// position you know to be safe on the new history).
    pub async fn resume_after(&self, stamped: &StampedPosition) -> Result<GlobalPosition, Error> {
        self.history()
            .await?
            .admits(stamped.history, "a subscription position")?;
        Ok(stamped.position)
    }
}
