//! The statements of the operator functions, one named constant each, in
//! the form of `crate::sql`: `{schema}` is filled in with the quoted schema
//! name ([`fill`]); everything else is a bind parameter, listed above each.
//! They run rarely, so they are filled in on use rather than kept per store.

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use crate::sql::quote_ident;

/// `template` with the schema filled in, as sqlx takes it. The schema was
/// validated as a plain identifier and is quoted: the text is injection-free.
pub(crate) fn fill(template: &str, schema: &str) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::from(
        template.replace("{schema}", &quote_ident(schema)),
    ))
}

/// The advisory-lock key of a projection's runner lease, from the schema's
/// (unquoted) name and the projection's: the key `PostgresCheckpointStore`
/// locks (`eventcore:projection:<schema>:<projection>`).
macro_rules! lease_key {
    ($schema:literal, $projection:literal) => {
        concat!(
            "hashtextextended('eventcore:projection:' || ",
            $schema,
            " || ':' || ",
            $projection,
            ", 0)"
        )
    };
}

/// Who holds a projection's lease: the session holding the advisory lock
/// of `lease_key!($1, n.projection)` in this database. Columns `runner_pid`,
/// `runner_application`, `runner_client`, `runner_since` (the lease
/// connection's start), `runner_role`.
macro_rules! runner_lateral {
    () => {
        concat!(
            "LEFT JOIN LATERAL ( \
               SELECT a.pid AS runner_pid, a.application_name AS runner_application, \
                      coalesce(host(a.client_addr), 'local') AS runner_client, \
                      a.backend_start AS runner_since, a.usename::text AS runner_role \
               FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                 AND l.pid <> pg_backend_pid() \
                 AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
                 AND ((l.classid::bigint << 32) | l.objid::bigint) = ",
            lease_key!("$1", "n.projection"),
            " ORDER BY a.backend_start LIMIT 1) r ON true "
        )
    };
}

/// `$1` schema name (unquoted), `$2` one projection's name or NULL for
/// every projection. Per projection known to the store (a checkpoint row,
/// skips or operations): checkpoint, generation, updated_at, last error
/// (text, position, time), rebuild request time, skips (count, last
/// position, last time), events after the checkpoint that readers can see,
/// the record time of the first of them and the server's now, then the
/// runner's columns (see `runner_lateral!`).
pub(crate) const SELECT_PROJECTIONS: &str = concat!(
    "WITH names AS ( \
       SELECT projection FROM {schema}.projection_checkpoints \
       UNION SELECT projection FROM {schema}.projection_skips \
       UNION SELECT projection FROM {schema}.projection_operations), \
     horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20 AS h) \
     SELECT n.projection, c.position, coalesce(c.generation, 0), c.updated_at, \
            c.last_error, c.last_error_position, c.last_error_at, c.rebuild_requested_at, \
            (SELECT count(*) FROM {schema}.projection_skips s WHERE s.projection = n.projection), \
            (SELECT max(s.position) FROM {schema}.projection_skips s WHERE s.projection = n.projection), \
            (SELECT max(s.recorded_at) FROM {schema}.projection_skips s WHERE s.projection = n.projection), \
            (SELECT count(*) FROM {schema}.events e, horizon \
              WHERE e.global_position > coalesce(c.position, 0) AND e.global_position < horizon.h), \
            (SELECT e.created_at FROM {schema}.events e, horizon \
              WHERE e.global_position > coalesce(c.position, 0) AND e.global_position < horizon.h \
              ORDER BY e.global_position LIMIT 1), \
            now(), \
            r.runner_pid, r.runner_application, r.runner_client, r.runner_since, r.runner_role \
     FROM names n \
     LEFT JOIN {schema}.projection_checkpoints c ON c.projection = n.projection ",
    runner_lateral!(),
    "WHERE $2::text IS NULL OR n.projection = $2 \
     ORDER BY n.projection"
);

/// `$1` lock name (`eventcore:projection:<schema>:<projection>`). The
/// runner lease's lock, for the operator's transaction: taken only while no
/// runner holds it, released at commit.
pub(crate) const TRY_LOCK_PROJECTION_XACT: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))";

/// `$1` projection. Forgets the checkpoint (the next runner starts from
/// the first event with the read model as it is).
pub(crate) const OPERATOR_RESET: &str = "UPDATE {schema}.projection_checkpoints \
     SET position = NULL, updated_at = now() WHERE projection = $1";

/// `$1` projection. Forgets the checkpoint and asks the next runner to
/// reset its read model first (`CheckpointStore::rebuild_requested`).
pub(crate) const OPERATOR_REQUEST_REBUILD: &str = "UPDATE {schema}.projection_checkpoints \
     SET position = NULL, rebuild_requested_at = now(), updated_at = now() WHERE projection = $1";

/// `$1` projection, `$2` position. Moves the checkpoint to a skipped event.
pub(crate) const OPERATOR_SKIP: &str = "UPDATE {schema}.projection_checkpoints \
     SET position = $2, updated_at = now() WHERE projection = $1";

/// `$1` projection, `$2` action, `$3` forced, `$4` the runner fenced out,
/// `$5` checkpoint before, `$6` after, `$7` the event skipped, `$8` reason,
/// `$9` the operator as the caller names them. Records an operator's action
/// with the session's identity; returns the row.
pub(crate) const INSERT_OPERATION: &str = "INSERT INTO {schema}.projection_operations \
       (projection, action, forced, displaced_runner, checkpoint_before, checkpoint_after, \
        event_position, reason, performed_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
       $9 || ' as ' || current_user || '@' || coalesce(host(inet_client_addr()), 'local') \
          || ' (' || current_setting('application_name') || ')') \
     RETURNING id, projection, action, forced, displaced_runner, checkpoint_before, \
       checkpoint_after, event_position, reason, performed_by, performed_at";

/// `$1` projection or NULL for all, `$2` limit. Operators' actions, newest
/// first.
pub(crate) const SELECT_OPERATIONS: &str = "SELECT id, projection, action, forced, displaced_runner, \
       checkpoint_before, checkpoint_after, event_position, reason, performed_by, performed_at \
     FROM {schema}.projection_operations WHERE $1::text IS NULL OR projection = $1 \
     ORDER BY id DESC LIMIT $2";

/// `$1` projection, `$2` position or NULL, `$3` error text. A runner's
/// last error.
pub(crate) const UPSERT_PROJECTION_ERROR: &str = "INSERT INTO {schema}.projection_checkpoints AS c \
       (projection, position, generation, last_error, last_error_position, last_error_at) \
     VALUES ($1, NULL, 0, $3, $2, now()) \
     ON CONFLICT (projection) DO UPDATE \
       SET last_error = $3, last_error_position = $2, last_error_at = now()";

/// `$1` projection. Whether an operator asked for a rebuild.
pub(crate) const SELECT_REBUILD_REQUESTED: &str = "SELECT rebuild_requested_at IS NOT NULL \
     FROM {schema}.projection_checkpoints WHERE projection = $1";

/// `$1` after (exclusive), `$2` up to (inclusive). Events between two
/// positions (rebuild progress).
pub(crate) const COUNT_EVENTS_BETWEEN: &str = "SELECT count(*) FROM {schema}.events \
     WHERE global_position > $1 AND global_position <= $2";

/// `$1` prefix (matched literally), `$2` stream to list after (exclusive,
/// '' from the start), `$3` limit. Streams with events, by id: id, version,
/// last write.
pub(crate) const SELECT_STREAMS: &str = "SELECT stream_id, version, updated_at \
     FROM {schema}.event_streams \
     WHERE version > 0 AND starts_with(stream_id, $1) AND stream_id > $2 \
     ORDER BY stream_id COLLATE \"C\" LIMIT $3";

/// `$1` how many. The position after which the last `$1` readable events
/// lie (0 if there are fewer).
pub(crate) const SELECT_RECENT_START: &str = "SELECT coalesce((SELECT global_position \
       FROM {schema}.events \
       WHERE global_position < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20) \
       ORDER BY global_position DESC OFFSET $1 LIMIT 1), 0)";

/// Connections to this server, grouped by database, application and
/// state: how many, how many wait on a lock, the oldest transaction's age
/// in seconds; and the server's `max_connections`.
pub(crate) const SELECT_CONNECTIONS: &str = "SELECT coalesce(datname, ''), coalesce(application_name, ''), \
       coalesce(state, ''), count(*), \
       count(*) FILTER (WHERE wait_event_type = 'Lock'), \
       max(extract(epoch FROM now() - xact_start))::float8, \
       current_setting('max_connections')::int \
     FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend' \
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

/// Export: `$1` position to read after (exclusive), `$2` limit, `$3`
/// stream ids (NULL: any), `$4` stream-id prefix (NULL: any). Events below
/// the read horizon in global order, payload and custom metadata as
/// PostgreSQL prints them (the export's stable form): event id, stream,
/// version, type, schema version, payload, occurred_at, correlation id,
/// causation id, custom metadata, position.
pub(crate) const SELECT_EXPORT_PAGE: &str = "SELECT event_id, stream_id, stream_version, event_type, \
       schema_version, event_data::text, occurred_at, correlation_id, causation_id, \
       metadata::text, global_position \
     FROM {schema}.events \
     WHERE global_position > $1 \
       AND global_position < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20) \
       AND ($3::text[] IS NULL OR stream_id = ANY ($3)) \
       AND ($4::text IS NULL OR starts_with(stream_id, $4)) \
     ORDER BY global_position LIMIT $2";

/// Import: `$1` event ids. Those already stored, with their stream and
/// version.
pub(crate) const SELECT_STORED_IDS: &str = "SELECT event_id, stream_id, stream_version \
     FROM {schema}.events WHERE event_id = ANY ($1)";

// verify ---------------------------------------------------------------

/// The ledger: version and name of every applied migration.
pub(crate) const SELECT_LEDGER: &str =
    "SELECT version, name FROM {schema}.schema_migrations ORDER BY version";

/// `$1` schema name (unquoted), `$2` constraint names, `$3` their kinds
/// (`p` primary key, `u` unique). Those missing or not of that kind, or
/// not valid.
pub(crate) const SELECT_MISSING_CONSTRAINTS: &str = "SELECT w.name FROM unnest($2::text[], $3::text[]) AS w(name, kind) \
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
       JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace \
       WHERE n.nspname = $1 AND c.conname = w.name AND c.contype::text = w.kind AND c.convalidated)";

/// `$1` schema name (unquoted). The append-only triggers of `events` as
/// the catalog has them: name, function, enabled, and whether each fires
/// before UPDATE, DELETE, TRUNCATE, per row.
pub(crate) const SELECT_EVENT_TRIGGERS: &str = "SELECT t.tgname::text, p.proname::text, t.tgenabled IN ('O', 'A'), \
       (t.tgtype & 2) <> 0 AS before, (t.tgtype & 1) <> 0 AS per_row, \
       (t.tgtype & 16) <> 0 AS on_update, (t.tgtype & 8) <> 0 AS on_delete, \
       (t.tgtype & 32) <> 0 AS on_truncate \
     FROM pg_catalog.pg_trigger t \
     JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
     WHERE n.nspname = $1 AND c.relname = 'events' AND NOT t.tgisinternal";

/// Tries to change the oldest event, in a transaction the caller rolls
/// back: the trigger must refuse it (SQLSTATE EC001). Changes nothing if
/// the store is empty.
pub(crate) const PROBE_APPEND_ONLY: &str = "UPDATE {schema}.events SET event_type = event_type \
     WHERE global_position = (SELECT min(global_position) FROM {schema}.events)";

/// Streams whose versions are not 1..n without gaps or whose
/// `event_streams` row disagrees: stream, event count, lowest and highest
/// version, recorded version. At most `$1` rows, and how many in all.
pub(crate) const SELECT_VERSION_GAPS: &str = "WITH per_stream AS ( \
       SELECT stream_id, count(*) AS n, min(stream_version) AS lo, max(stream_version) AS hi \
       FROM {schema}.events GROUP BY stream_id), \
     bad AS ( \
       SELECT coalesce(p.stream_id, s.stream_id) AS stream_id, coalesce(p.n, 0) AS n, p.lo, p.hi, \
              s.version \
       FROM per_stream p FULL JOIN {schema}.event_streams s ON s.stream_id = p.stream_id \
       WHERE p.stream_id IS NULL AND s.version > 0 \
          OR s.stream_id IS NULL \
          OR p.lo <> 1 OR p.hi <> p.n OR s.version <> p.hi) \
     SELECT stream_id, n, lo, hi, version, count(*) OVER () FROM bad \
     ORDER BY stream_id LIMIT $1";

/// Event ids stored more than once: id and count, at most `$1`.
pub(crate) const SELECT_DUPLICATE_IDS: &str = "SELECT event_id, count(*) FROM {schema}.events \
     GROUP BY event_id HAVING count(*) > 1 ORDER BY event_id LIMIT $1";

/// Counts for the report: streams with events, events.
pub(crate) const SELECT_COUNTS: &str = "SELECT (SELECT count(*) FROM {schema}.event_streams WHERE version > 0), \
            (SELECT count(*) FROM {schema}.events)";
