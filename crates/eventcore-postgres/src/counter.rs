//! The cluster's transaction counter against a store's positions.
//!
//! A global position is the writing transaction's 64-bit id (`xid8`)
//! shifted left by [`INDEX_BITS`], plus the event's index in its append,
//! in a signed 64-bit column (ADR 0001). So a new event sorts after every
//! stored one only while the counter is past the transaction ids of the
//! stored positions (a logical restore into a fresh cluster breaks that),
//! and a position exists only while the counter stays at or below
//! [`MAX_TRANSACTION_ID`].

use eventcore::GlobalPosition;
use sqlx::PgConnection;

use crate::{PostgresError, sql};

/// Bits of a position below the transaction id: up to 2^20 events per append.
pub(crate) const INDEX_BITS: u32 = 20;

/// The largest transaction id a global position can encode: 2^43 - 1 =
/// 8,796,093,022,207 (the last id of epoch 2047). That is 27.9 years of
/// 10,000 write transactions a second, every database of the cluster
/// counted. Past it, writes are refused
/// ([`PostgresError::PositionsExhausted`]) rather than given positions that
/// wrap.
pub const MAX_TRANSACTION_ID: u64 = (1 << (63 - INDEX_BITS)) - 1;

/// Fewer transaction ids left than this is a health problem: 2^38, about
/// 318 days at 10,000 write transactions a second. Only an epoch raised by
/// `pg_resetwal` gets a cluster there in practice.
const FEW_IDS_LEFT: u64 = 1 << 38;

/// The cluster's transaction counter next to a store's newest position, as
/// [`PostgresEventStore::health_check`](crate::PostgresEventStore::health_check)
/// reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransactionCounter {
    /// The cluster's transaction counter: every transaction id assigned
    /// from now on is at least this (the current snapshot's `xmax`). A
    /// 64-bit id (`xid8`): epoch `<< 32` plus the 32-bit id.
    pub next_transaction_id: u64,
    /// The store's newest event position (`None`: no events).
    pub newest_position: Option<GlobalPosition>,
}

impl TransactionCounter {
    /// The id of the transaction that wrote the newest event.
    pub fn newest_transaction_id(&self) -> Option<u64> {
        self.newest_position.map(|p| p.get() >> INDEX_BITS)
    }

    /// Whether new transactions could get ids at or below the newest
    /// event's: the database was restored from a logical dump and the
    /// counter not advanced. Writes are refused then.
    pub fn is_behind(&self) -> bool {
        self.newest_transaction_id()
            .is_some_and(|newest| self.next_transaction_id <= newest)
    }

    /// Whether the counter is past [`MAX_TRANSACTION_ID`]. Writes are
    /// refused then.
    pub fn is_exhausted(&self) -> bool {
        self.next_transaction_id > MAX_TRANSACTION_ID
    }

    /// Transaction ids left before positions run out.
    pub fn ids_left(&self) -> u64 {
        (MAX_TRANSACTION_ID + 1).saturating_sub(self.next_transaction_id)
    }

    /// Why `schema` must not be written to, if it must not.
    pub(crate) fn refusal(&self, schema: &str) -> Option<PostgresError> {
        if self.is_behind() {
            Some(PostgresError::TransactionCounterBehind {
                schema: schema.to_owned(),
                newest_position: self.newest_position?,
                next_transaction_id: self.next_transaction_id,
            })
        } else if self.is_exhausted() {
            Some(PostgresError::PositionsExhausted {
                next_transaction_id: Some(self.next_transaction_id),
            })
        } else {
            None
        }
    }

    /// What a health check reports: a refusal, or few ids left.
    pub(crate) fn problem(&self, schema: &str) -> Option<String> {
        if let Some(refusal) = self.refusal(schema) {
            return Some(refusal.to_string());
        }
        (self.ids_left() < FEW_IDS_LEFT).then(|| {
            format!(
                "only {} transaction ids are left before global positions run out (the cluster is at \
                 {} of {MAX_TRANSACTION_ID}); see docs/operations.md, Backup and restore",
                self.ids_left(),
                self.next_transaction_id
            )
        })
    }
}

/// The cluster's transaction counter (see
/// [`TransactionCounter::next_transaction_id`]), without assigning an id.
pub(crate) async fn next_transaction_id(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let text: String = sqlx::query_scalar(sql::SELECT_NEXT_TRANSACTION_ID)
        .persistent(false)
        .fetch_one(conn)
        .await?;
    text.parse()
        .map_err(|e: std::num::ParseIntError| sqlx::Error::Decode(Box::new(e)))
}

/// The counter and the newest position of the store whose statements are
/// `statements`. The position is read first: every transaction that wrote
/// a position it sees has an id below the counter read afterwards, so a
/// concurrent writer is never mistaken for a counter behind.
pub(crate) async fn read(
    conn: &mut PgConnection,
    statements: &sql::Statements,
) -> Result<TransactionCounter, sqlx::Error> {
    let newest: Option<i64> = sqlx::query_scalar(sql::sql(&statements.select_head_position))
        .persistent(false)
        .fetch_one(&mut *conn)
        .await?;
    Ok(TransactionCounter {
        next_transaction_id: next_transaction_id(conn).await?,
        newest_position: newest
            .and_then(|p| u64::try_from(p).ok())
            .map(GlobalPosition::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(next: u64, newest: Option<u64>) -> TransactionCounter {
        TransactionCounter {
            next_transaction_id: next,
            newest_position: newest.map(GlobalPosition::new),
        }
    }

    #[test]
    fn the_largest_transaction_id_fills_a_bigint_position() {
        let last = (MAX_TRANSACTION_ID << INDEX_BITS) | ((1 << INDEX_BITS) - 1);
        assert_eq!(last, i64::MAX as u64);
        assert_eq!(
            MAX_TRANSACTION_ID,
            (2048 << 32) - 1,
            "the last id of epoch 2047"
        );
    }

    #[test]
    fn behind_means_new_ids_could_be_at_or_below_the_newest_event() {
        let newest = (1000 << INDEX_BITS) + 7;
        assert!(counter(1000, Some(newest)).is_behind());
        assert!(counter(3, Some(newest)).is_behind());
        assert!(!counter(1001, Some(newest)).is_behind());
        assert!(
            !counter(3, None).is_behind(),
            "no events: nothing to be behind"
        );
        let e = counter(900, Some(newest)).refusal("s").unwrap().to_string();
        assert!(e.contains("restore-check") && e.contains("(900)"), "{e}");
    }

    /// The SQL writes the limit as a literal: `MAX_TRANSACTION_ID + 1`,
    /// where `append_to_streams` computes a position and in every statement
    /// that computes the read horizon.
    #[test]
    fn the_sql_guards_use_the_same_limit() {
        let limit = format!("'{}'::xid8", MAX_TRANSACTION_ID + 1);
        let migration = include_str!("../migrations/0001_event_store.sql");
        assert!(migration.contains(&limit));
        assert!(migration.contains("refuse_position_overflow()"));
        for (name, statement) in [
            ("read_all_forward", sql::READ_ALL_FORWARD),
            ("select_horizon", sql::SELECT_HORIZON),
            ("select_skip_target", sql::SELECT_SKIP_TARGET),
        ] {
            assert!(statement.contains(&limit), "{name}");
        }
    }

    #[test]
    fn past_the_range_is_refused_and_the_last_epochs_are_a_problem() {
        let at_limit = counter(MAX_TRANSACTION_ID, Some(5 << INDEX_BITS));
        assert!(!at_limit.is_exhausted());
        assert_eq!(at_limit.ids_left(), 1);
        assert!(at_limit.refusal("s").is_none());
        assert!(
            at_limit
                .problem("s")
                .unwrap()
                .contains("only 1 transaction ids")
        );
        let past = counter(MAX_TRANSACTION_ID + 1, Some(5 << INDEX_BITS));
        assert!(past.is_exhausted());
        assert_eq!(past.ids_left(), 0);
        assert!(matches!(
            past.refusal("s"),
            Some(PostgresError::PositionsExhausted {
                next_transaction_id: Some(n)
            }) if n == MAX_TRANSACTION_ID + 1
        ));
        assert_eq!(counter(750, None).problem("s"), None, "a young cluster");
    }
}
