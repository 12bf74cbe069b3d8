//! Projection runner leases as rows, for stores behind a transaction-mode
//! pooler ([`Pooler::Transaction`](crate::Pooler::Transaction)), where a
//! session advisory lock would stay on a server connection that other
//! clients then use.
//!
//! A lease is a row of `projection_leases` (migration 0003) naming its
//! holder and an expiry on the server's clock. Taking it is one
//! transaction: the projection's transaction-scoped advisory lock (so a
//! runner of a direct store, which holds that lock for its session, and an
//! operator's action exclude it), the row if it is free or expired, and the
//! generation bump that fences every earlier holder's checkpoint writes
//! (the same fence as for advisory-lock leases). The holder renews the
//! expiry every [`RENEW_EVERY`]; it counts the lease lost when a renewal
//! finds the row taken over, or when renewals have failed for so long that
//! the row might have expired: it stops before anyone else can take over,
//! and should it not, its writes are fenced by the generation.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use eventcore::Error;
use sqlx::{AssertSqlSafe, PgConnection};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::{PostgresEventStore, pool::Call, sql::quote_ident};

/// How long a lease row stays valid after its last renewal: the longest a
/// crashed runner's projection waits for another runner to take over.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often the holder renews its row.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(1);

/// `$1` projection, `$2` holder, `$3` time to live in ms. Takes the lease
/// row if it is free or expired and bumps the generation of the
/// projection's checkpoint row (creating it), returning the generation; no
/// row when a live holder has it.
const TAKE: &str = "WITH lease AS ( \
       INSERT INTO {schema}.projection_leases AS l \
         (projection, holder, expires_at, application, client, role) \
       VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 millisecond', \
         current_setting('application_name'), coalesce(host(inet_client_addr()), 'local'), \
         current_user) \
       ON CONFLICT (projection) DO UPDATE SET holder = excluded.holder, \
         expires_at = excluded.expires_at, acquired_at = clock_timestamp(), \
         renewed_at = clock_timestamp(), application = excluded.application, \
         client = excluded.client, role = excluded.role \
       WHERE l.expires_at <= clock_timestamp() \
       RETURNING projection) \
     INSERT INTO {schema}.projection_checkpoints AS c (projection, position, generation) \
       SELECT projection, NULL, 1 FROM lease \
     ON CONFLICT (projection) DO UPDATE SET generation = c.generation + 1, updated_at = now() \
     RETURNING generation";

/// `$1` projection, `$2` holder, `$3` time to live in ms. No row: the
/// lease was taken over (or deleted by a forced operator action).
const RENEW: &str = "UPDATE {schema}.projection_leases \
     SET expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond', \
         renewed_at = clock_timestamp() \
     WHERE projection = $1 AND holder = $2";

/// `$1` projection, `$2` holder.
const RELEASE: &str =
    "DELETE FROM {schema}.projection_leases WHERE projection = $1 AND holder = $2";

/// `$1` projection. Whether a runner holds an unexpired lease row (for
/// runners taking the advisory lock, and operators).
pub(crate) const LIVE: &str = "SELECT EXISTS (SELECT 1 FROM {schema}.projection_leases \
     WHERE projection = $1 AND expires_at > clock_timestamp())";

/// `$1` projection. An operator's forced action: whoever holds the row.
const FORCE_RELEASE: &str = "DELETE FROM {schema}.projection_leases WHERE projection = $1";

/// `$1` lock name. The lease's advisory lock for this transaction only.
const TRY_LOCK_XACT: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))";

/// `template` with the store's schema filled in. The schema was validated
/// as a plain identifier and is quoted: the text is injection-free.
pub(crate) fn fill(template: &str, schema: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(template.replace("{schema}", &quote_ident(schema)))
}

fn ttl_ms() -> f64 {
    LEASE_TTL.as_secs_f64() * 1000.0
}

/// The advisory-lock name of a projection's lease.
pub(crate) fn lock_name(schema: &str, projection: &str) -> String {
    format!("eventcore:projection:{schema}:{projection}")
}

/// On `tx` (a transaction: the store's calls behind a transaction pooler
/// run in one): takes the lease for `holder`; its generation, or `None`
/// when a runner holds it.
pub(crate) async fn take(
    tx: &mut PgConnection,
    schema: &str,
    projection: &str,
    holder: Uuid,
) -> Result<Option<i64>, sqlx::Error> {
    let free: bool = sqlx::query_scalar(TRY_LOCK_XACT)
        .persistent(false)
        .bind(lock_name(schema, projection))
        .fetch_one(&mut *tx)
        .await?;
    if !free {
        return Ok(None);
    }
    sqlx::query_scalar(fill(TAKE, schema))
        .persistent(false)
        .bind(projection)
        .bind(holder)
        .bind(ttl_ms())
        .fetch_optional(&mut *tx)
        .await
}

/// On `tx`: whether a runner holds a live lease row for `projection`.
pub(crate) async fn live(
    tx: &mut PgConnection,
    schema: &str,
    projection: &str,
    persistent: bool,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(fill(LIVE, schema))
        .persistent(persistent)
        .bind(projection)
        .fetch_one(&mut *tx)
        .await
}

/// On `tx`: deletes the projection's lease row, whoever holds it (an
/// operator's forced action, which also bumps the generation).
pub(crate) async fn force_release(
    tx: &mut PgConnection,
    schema: &str,
    projection: &str,
    persistent: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(fill(FORCE_RELEASE, schema))
        .persistent(persistent)
        .bind(projection)
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// One renewal or release (a store call: a transaction of its own).
async fn write(
    store: &PostgresEventStore,
    operation: &'static str,
    template: &str,
    projection: &str,
    holder: Uuid,
) -> Result<u64, Error> {
    let statement = fill(template, &store.config().schema).0;
    let statement = statement.as_str();
    store
        .db()
        .call(operation, Call::Write, |conn| {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(statement))
                    .persistent(false)
                    .bind(projection)
                    .bind(holder)
                    .bind(ttl_ms())
                    .execute(&mut **conn)
                    .await
                    .map_err(|e| store.map_err(operation, e))?;
                Ok(done.rows_affected())
            })
        })
        .await
}

/// Holds a lease row: renews it until the lease is released (the row is
/// then deleted, so the next runner need not wait for the expiry) or lost.
/// `renewed` is when the statement that took the lease was sent.
pub(crate) async fn hold(
    store: PostgresEventStore,
    projection: String,
    holder: Uuid,
    renewed: Instant,
    lost: Arc<watch::Sender<bool>>,
    mut released: oneshot::Receiver<()>,
) {
    // The row is valid until at least `LEASE_TTL` after a renewal was sent
    // (the server stamped it later). The lease counts as lost one renewal
    // period before that, whatever a renewal in flight is doing.
    let mut give_up = renewed + LEASE_TTL - RENEW_EVERY;
    loop {
        tokio::select! {
            _ = &mut released => {
                if let Err(e) = write(&store, "release lease", RELEASE, &projection, holder).await {
                    tracing::debug!(projection, error = %e, "releasing the lease row failed; it expires");
                }
                return;
            }
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let sent = Instant::now();
        let renewal = write(&store, "renew lease", RENEW, &projection, holder);
        let failure = match tokio::time::timeout_at(give_up.into(), renewal).await {
            Ok(Ok(1..)) => {
                give_up = sent + LEASE_TTL - RENEW_EVERY;
                continue;
            }
            Ok(Ok(0)) => "another runner took the lease over".to_owned(),
            Ok(Err(e)) if Instant::now() + RENEW_EVERY < give_up => {
                tracing::debug!(projection, error = %e, "renewing the lease failed; retrying");
                continue;
            }
            Ok(Err(e)) => format!("renewals failed until the lease could expire: {e}"),
            Err(_) => "no renewal answered before the lease could expire".to_owned(),
        };
        lost.send_replace(true);
        tracing::warn!(projection, error = %failure, "projection lease lost");
        return;
    }
}
