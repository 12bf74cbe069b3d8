//! Every statement the store sends, one named constant each; the append
//! path's statements are files in `sql/` (`verb_noun.sql`, each listing its
//! parameters), which paste into psql once `{schema}` is replaced.
//!
//! `{schema}` stands for the configured schema and is filled in once per
//! store by [`Statements::new`] as a quoted identifier (`"user"`), so
//! reserved words work; everything else is a bind parameter, listed above
//! each statement. Build no SQL with the schema name any other way.

use std::sync::Arc;

use eventcore::{Error, ExpectedVersion, StreamId};
use sqlx::AssertSqlSafe;

/// Columns of a stored event, in the order [`crate::store`] decodes them.
macro_rules! event_columns {
    () => {
        "global_position, event_id, stream_id, stream_version, event_type, schema_version, \
         event_data, occurred_at, correlation_id, causation_id, metadata, created_at"
    };
}

/// The columns every event read selects, in order.
pub(crate) const EVENT_COLUMNS: &str = event_columns!();

/// The read horizon as a position: the oldest running transaction's id
/// `<< 20`, as a scalar subquery (evaluated once per statement). Past the
/// encodable range every position that can exist is settled, so the
/// horizon is then the largest BIGINT rather than a wrapped value.
macro_rules! read_horizon {
    () => {
        "(SELECT CASE WHEN x < '8796093022208'::xid8 THEN x::text::bigint << 20 \
                 ELSE 9223372036854775807 END \
          FROM pg_snapshot_xmin(pg_current_snapshot()) AS x)"
    };
}
pub(crate) use read_horizon;

/// Every append, to one stream or several: a call of the
/// `append_to_streams` function. Parameters in the file.
pub(crate) const APPEND_TO_STREAMS: &str = include_str!("../sql/append_to_streams.sql");

/// The single-stream fast path (one statement instead of a function call;
/// ADR 0002): one event on a stream that may be new. Parameters in the file.
pub(crate) const APPEND_ONE_TO_NEW_STREAM: &str =
    include_str!("../sql/append_one_to_new_stream.sql");
/// One event on a stream that must exist.
pub(crate) const APPEND_ONE_TO_EXISTING_STREAM: &str =
    include_str!("../sql/append_one_to_existing_stream.sql");
/// Several events on a stream that may be new.
pub(crate) const APPEND_TO_NEW_STREAM: &str = include_str!("../sql/append_to_new_stream.sql");
/// Several events on a stream that must exist.
pub(crate) const APPEND_TO_EXISTING_STREAM: &str =
    include_str!("../sql/append_to_existing_stream.sql");

/// After `append_to_streams` raised a failed expectation. Parameters in the
/// file.
pub(crate) const SELECT_CONFLICT_STATES: &str = include_str!("../sql/select_conflict_states.sql");

/// After a conflict or duplicate id, to tell a re-send from a clash.
/// Parameters in the file.
pub(crate) const SELECT_EVENTS_BY_ID: &str = include_str!("../sql/select_events_by_id.sql");

/// How an [`ExpectedVersion`] travels to `append_to_streams` (`$2`): an
/// exact version as itself, the others as negative codes no version can
/// take. The SQL side reads them in migrations/0001_event_store.sql.
pub(crate) mod expected_version {
    pub(crate) const ANY: i64 = -1;
    pub(crate) const NO_STREAM: i64 = -2;
    pub(crate) const STREAM_EXISTS: i64 = -3;
}

/// The code of `expected` for `stream`; a version beyond `i64::MAX` (which
/// would collide with the codes above) is refused.
pub(crate) fn expected_version_code(
    stream: &StreamId,
    expected: ExpectedVersion,
) -> Result<i64, Error> {
    Ok(match expected {
        ExpectedVersion::Any => expected_version::ANY,
        ExpectedVersion::NoStream => expected_version::NO_STREAM,
        ExpectedVersion::StreamExists => expected_version::STREAM_EXISTS,
        ExpectedVersion::Exact(v) => i64::try_from(v.get()).map_err(|_| Error::InvalidAppend {
            reason: format!(
                "stream '{stream}' is expected at version {v}, beyond the largest a stream can reach ({})",
                i64::MAX
            ),
        })?,
    })
}

/// Sends a NOTIFY on `$1` (the channel) with an empty payload. The channel
/// travels as a value, never spliced into SQL; `LISTEN` quotes it (sqlx).
pub(crate) const NOTIFY_CHANNEL: &str = "SELECT pg_notify($1, '')";

/// `$1` stream id, `$2` first version (inclusive), `$3` limit.
pub(crate) const READ_STREAM_FORWARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM {schema}.events WHERE stream_id = $1 AND stream_version >= $2 \
     ORDER BY stream_version LIMIT $3"
);

/// Several streams at once: `$1` stream ids, `$2` lowest first version
/// among them, `$3` limit. The client drops rows below each stream's own
/// first version; a plain `= ANY` index scan plans far cheaper than joining
/// an `unnest` of per-stream versions.
pub(crate) const READ_STREAMS_FORWARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM {schema}.events WHERE stream_id = ANY($1) AND stream_version >= $2 \
     ORDER BY stream_id, stream_version LIMIT $3"
);

/// `$1` position to read after (exclusive), `$2` limit.
///
/// Only positions below the oldest running transaction's id are read: every
/// transaction that could still commit a lower position has finished, so
/// nothing can later appear below the last position returned. The scalar
/// subquery is evaluated once and bounds the primary-key scan.
pub(crate) const READ_ALL_FORWARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM {schema}.events \
     WHERE global_position > $1 \
       AND global_position < ",
    read_horizon!(),
    " ORDER BY global_position LIMIT $2"
);

/// `$1` stream id.
pub(crate) const SELECT_STREAM_VERSION: &str =
    "SELECT version FROM {schema}.event_streams WHERE stream_id = $1";

/// The newest committed position, read backwards off the primary key.
pub(crate) const SELECT_HEAD_POSITION: &str = "SELECT max(global_position) FROM {schema}.events";

/// The next transaction id the cluster will assign (as text: an `xid8`
/// may exceed BIGINT), without assigning one. Read after the newest
/// position, whose writer's id is then necessarily below it.
pub(crate) const SELECT_NEXT_TRANSACTION_ID: &str =
    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text";

/// The first position readers cannot see yet, and the oldest running
/// transaction's age (what holds that horizon back).
pub(crate) const SELECT_HORIZON: &str = concat!(
    "SELECT ",
    read_horizon!(),
    " AS horizon, \
       (SELECT extract(epoch FROM now() - min(xact_start))::float8 \
          FROM pg_stat_activity WHERE backend_xid IS NOT NULL) AS oldest_xact_seconds"
);

/// The newest applied migration, if the table exists.
pub(crate) const SELECT_SCHEMA_VERSION: &str =
    "SELECT max(version) FROM {schema}.schema_migrations";

/// Every database of the cluster, and whether it takes connections: a
/// restore check covers them all (transaction ids are cluster-wide).
pub(crate) const SELECT_DATABASES: &str =
    "SELECT datname, datallowconn FROM pg_catalog.pg_database ORDER BY datname";

/// The EventCore stores of the connected database, found in the catalogs:
/// schemas with an `events` table that has a `global_position` column and a
/// `schema_migrations` ledger, whatever their names. Per schema, whether it
/// has `projection_checkpoints` (a damaged schema may have lost it).
pub(crate) const SELECT_STORE_SCHEMAS: &str = "SELECT n.nspname, \
       EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid \
               AND c.relname = 'projection_checkpoints' AND c.relkind IN ('r', 'p')) \
     FROM pg_catalog.pg_namespace n \
     WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                   WHERE c.relnamespace = n.oid AND c.relname = 'events' AND c.relkind IN ('r', 'p') \
                     AND a.attname = 'global_position' AND NOT a.attisdropped) \
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid \
                   AND c.relname = 'schema_migrations' AND c.relkind IN ('r', 'p')) \
     ORDER BY n.nspname";

/// The newest checkpoint of any projection (a restore check counts it like
/// an event's position).
pub(crate) const SELECT_NEWEST_CHECKPOINT: &str =
    "SELECT max(position) FROM {schema}.projection_checkpoints";

/// Cheapest round trip for health checks.
pub(crate) const SELECT_ONE: &str = "SELECT 1";

/// What the store relies on in its schema, checked in the catalogs: `$1`
/// the schema's name (as stored, unquoted), then per object `$2` its kind
/// (`table`, `index`, `function`, `trigger`), `$3` its name and `$4` for a
/// trigger its table. One row per object that is missing (`missing`) or,
/// for a trigger, does not fire in ordinary sessions (`disabled`), in the
/// order given. A missing schema makes every object missing.
pub(crate) const SELECT_SCHEMA_DAMAGE: &str = "SELECT r.kind, r.name, r.problem FROM ( \
       SELECT e.i, e.kind, e.name, CASE e.kind \
         WHEN 'table' THEN CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = n.oid AND c.relname = e.name AND c.relkind IN ('r', 'p')) \
           THEN NULL ELSE 'missing' END \
         WHEN 'index' THEN CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid \
             WHERE c.relnamespace = n.oid AND c.relname = e.name AND x.indisvalid) \
           THEN NULL ELSE 'missing' END \
         WHEN 'function' THEN CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace = n.oid AND p.proname = e.name) \
           THEN NULL ELSE 'missing' END \
         WHEN 'trigger' THEN (SELECT CASE WHEN count(*) = 0 THEN 'missing' \
             WHEN bool_or(t.tgenabled IN ('O', 'A')) THEN NULL ELSE 'disabled' END \
           FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
           WHERE c.relnamespace = n.oid AND c.relname = e.on_table AND t.tgname = e.name) \
         ELSE 'unknown kind' END AS problem \
       FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS e(kind, name, on_table, i) \
       LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1 \
     ) r WHERE r.problem IS NOT NULL ORDER BY r.i";

/// `$1` lock name (hashed to a key). Serialises concurrent initialize() calls until commit.
pub(crate) const LOCK_MIGRATIONS: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Creates the schema and the migration ledger if missing.
pub(crate) const CREATE_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS {schema}";
pub(crate) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (\
       version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// Points unqualified names in migration files at the store's schema.
pub(crate) const SET_LOCAL_SEARCH_PATH: &str = "SET LOCAL search_path TO {schema}";

/// `$1` version, `$2` name.
pub(crate) const INSERT_MIGRATION: &str =
    "INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)";

/// Counts for the admin CLI: streams and events.
pub(crate) const SELECT_STATS: &str = "SELECT (SELECT count(*) FROM {schema}.event_streams WHERE version > 0) AS streams, \
            (SELECT count(*) FROM {schema}.events) AS events, \
            (SELECT max(global_position) FROM {schema}.events) AS max_position";

/// `template` with `{schema}` filled in as [`Statements::new`] does, for a
/// schema found in the catalogs rather than configured.
pub(crate) fn for_schema(template: &str, schema: &str) -> Arc<str> {
    fill(template, &quote_ident(schema))
}

/// `template` with `{schema}` replaced by `quoted` and its comment lines
/// dropped (they document the files in `sql/`; the server need not parse
/// them, nor logs show them).
fn fill(template: &str, quoted: &str) -> Arc<str> {
    let text: Vec<&str> = template
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    Arc::from(text.join("\n").replace("{schema}", quoted))
}

/// A filled-in statement, in the form sqlx takes. The schema was validated
/// as a plain identifier and is quoted, so the text is injection-free.
pub(crate) fn sql(statement: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(statement.clone())
}

/// `$1` projection name. Its checkpoint, the history the checkpoint was
/// stamped with (NULL when it has none) and the current history (see
/// `history`); no row when the projection has none.
pub(crate) const SELECT_CHECKPOINT: &str = concat!(
    "SELECT c.position, c.system_identifier, c.timeline, h.s, h.t \
     FROM (SELECT ",
    crate::history::current_history!(),
    ") AS h(s, t) JOIN {schema}.projection_checkpoints c ON c.projection = $1"
);

/// `$1` projection name. Takes the runner role: creates the projection's
/// row (no checkpoint yet) or bumps its lease generation, and returns the
/// generation. The row lock makes it wait for a checkpoint transaction of
/// the previous runner still in flight: that one commits first, or fails
/// the fence. A projection without a checkpoint is stamped with the
/// current history here, so that positions its new runner reads before a
/// failover are refused after it.
pub(crate) const BUMP_LEASE_GENERATION: &str = concat!(
    "INSERT INTO {schema}.projection_checkpoints AS c \
       (projection, position, generation, system_identifier, timeline) \
     VALUES ($1, NULL, 1, ",
    crate::history::current_history!(),
    ") ON CONFLICT (projection) DO UPDATE SET generation = c.generation + 1, updated_at = now(), \
       system_identifier = CASE WHEN c.position IS NULL THEN excluded.system_identifier \
                                ELSE c.system_identifier END, \
       timeline = CASE WHEN c.position IS NULL THEN excluded.timeline ELSE c.timeline END \
     RETURNING generation"
);

/// `$1` projection name, `$2` position, `$3` the lease generation of the
/// runner saving. The fence: no row is updated once another runner took
/// the lease, nor when the checkpoint's history is not the current one
/// (the position was read on another history). Checkpoints never move
/// backwards. One row: how many rows were saved (0 or 1), then, to tell
/// the two refusals apart, the history the row was stamped with and the
/// current one.
pub(crate) const SAVE_CHECKPOINT: &str = concat!(
    "WITH h(s, t) AS (SELECT ",
    crate::history::current_history!(),
    "), saved AS ( \
       UPDATE {schema}.projection_checkpoints c \
          SET position = greatest(c.position, $2), system_identifier = h.s, timeline = h.t, \
              updated_at = now() \
         FROM h \
        WHERE c.projection = $1 AND c.generation = $3 \
          AND (c.system_identifier IS NULL OR (c.system_identifier = h.s AND c.timeline = h.t)) \
       RETURNING 1) \
     SELECT (SELECT count(*) FROM saved), c.system_identifier, c.timeline, h.s, h.t \
       FROM h LEFT JOIN {schema}.projection_checkpoints c ON c.projection = $1"
);

/// `$1` projection name, `$2` lease generation. Forgets the checkpoint
/// (and an operator's rebuild request, which this fulfils) but keeps the
/// row, whose generation is the fence. Fenced like a save.
/// The replay that follows starts on the current history: stamped with it.
pub(crate) const RESET_CHECKPOINT: &str = concat!(
    "UPDATE {schema}.projection_checkpoints \
     SET position = NULL, rebuild_requested_at = NULL, updated_at = now(), \
         (system_identifier, timeline) = (SELECT ",
    crate::history::current_history!(),
    ") WHERE projection = $1 AND generation = $2"
);

/// `$1` projection name. Its checkpoint, row locked: an operator's skip.
pub(crate) const SELECT_CHECKPOINT_FOR_UPDATE: &str =
    "SELECT position FROM {schema}.projection_checkpoints WHERE projection = $1 FOR UPDATE";

/// `$1` a projection's checkpoint (0 if none), `$2` a position to skip:
/// the stream of the event there (no row: NULL), whether any event lies
/// between the two, and whether the position is below the read horizon.
pub(crate) const SELECT_SKIP_TARGET: &str = concat!(
    "SELECT (SELECT stream_id FROM {schema}.events WHERE global_position = $2), \
       EXISTS (SELECT 1 FROM {schema}.events WHERE global_position > $1 AND global_position < $2), \
       $2 < ",
    read_horizon!()
);

/// `$1` projection, `$2` position, `$3` stream id, `$4` error text.
pub(crate) const INSERT_PROJECTION_SKIP: &str = "INSERT INTO {schema}.projection_skips (projection, position, stream_id, error) \
     VALUES ($1, $2, $3, $4)";

/// `$1` projection name.
pub(crate) const SELECT_PROJECTION_SKIPS: &str = "SELECT position, stream_id, error FROM {schema}.projection_skips \
     WHERE projection = $1 ORDER BY position, id";

/// `$1` lock name (hashed to a key). A session lock: held until the
/// connection closes, so it dies with its process.
pub(crate) const TRY_LOCK_PROJECTION: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";

/// A lease connection's heartbeat, every few dozen milliseconds: a
/// terminated backend or a dead link is noticed at once, not at the next
/// checkpoint.
pub(crate) const LEASE_HEARTBEAT: &str = "SELECT 1";

/// What holds the read horizon back: the open transaction with the oldest
/// transaction id, in any database of the cluster (ids are cluster-wide),
/// of a session or prepared. Its pid (NULL if prepared), seconds open (0
/// when not visible to this role), state and application name (a prepared
/// transaction's gid).
pub(crate) const SELECT_READ_BLOCKER: &str = "SELECT pid, age_s, state, app FROM ( \
       SELECT pid, age(backend_xid) AS xid_age, \
              coalesce(extract(epoch FROM now() - xact_start)::float8, 0) AS age_s, \
              coalesce(state, '') AS state, coalesce(application_name, '') AS app \
         FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
       UNION ALL \
       SELECT NULL, age(transaction), coalesce(extract(epoch FROM now() - prepared)::float8, 0), \
              'prepared', gid \
         FROM pg_prepared_xacts \
     ) t ORDER BY xid_age DESC LIMIT 1";

/// Statements with the schema filled in, shared by all connections.
#[derive(Debug)]
pub(crate) struct Statements {
    // Arc<str>: handing a statement to sqlx is a reference-count bump.
    pub(crate) append_to_streams: Arc<str>,
    pub(crate) append_one_to_new_stream: Arc<str>,
    pub(crate) append_one_to_existing_stream: Arc<str>,
    pub(crate) append_to_new_stream: Arc<str>,
    pub(crate) append_to_existing_stream: Arc<str>,
    pub(crate) select_conflict_states: Arc<str>,
    pub(crate) read_stream_forward: Arc<str>,
    pub(crate) read_streams_forward: Arc<str>,
    pub(crate) read_all_forward: Arc<str>,
    pub(crate) select_stream_version: Arc<str>,
    pub(crate) select_events_by_id: Arc<str>,
    pub(crate) select_schema_version: Arc<str>,
    pub(crate) create_schema: Arc<str>,
    pub(crate) create_migrations_table: Arc<str>,
    pub(crate) set_local_search_path: Arc<str>,
    pub(crate) insert_migration: Arc<str>,
    pub(crate) select_stats: Arc<str>,
    pub(crate) select_checkpoint: Arc<str>,
    pub(crate) select_head_position: Arc<str>,
    pub(crate) bump_lease_generation: Arc<str>,
    pub(crate) save_checkpoint: Arc<str>,
    pub(crate) reset_checkpoint: Arc<str>,
    pub(crate) select_checkpoint_for_update: Arc<str>,
    pub(crate) select_skip_target: Arc<str>,
    pub(crate) insert_projection_skip: Arc<str>,
    pub(crate) select_projection_skips: Arc<str>,
    /// Whether this store has found its schema fit for writes (see
    /// `schema::ensure_writable`); kept here as the store's per-schema state.
    pub(crate) write_gate: crate::schema::WriteGate,
}

/// `name` as a quoted SQL identifier: `user` becomes `"user"`.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Statements {
    /// `schema` must already be validated (see `PostgresConfig::validate`);
    /// it is quoted, so reserved words such as `user` work.
    pub(crate) fn new(schema: &str) -> Self {
        let quoted = quote_ident(schema);
        let fill = |template: &str| fill(template, &quoted);
        Self {
            write_gate: Default::default(),
            append_to_streams: fill(APPEND_TO_STREAMS),
            append_one_to_new_stream: fill(APPEND_ONE_TO_NEW_STREAM),
            append_one_to_existing_stream: fill(APPEND_ONE_TO_EXISTING_STREAM),
            append_to_new_stream: fill(APPEND_TO_NEW_STREAM),
            append_to_existing_stream: fill(APPEND_TO_EXISTING_STREAM),
            select_conflict_states: fill(SELECT_CONFLICT_STATES),
            read_stream_forward: fill(READ_STREAM_FORWARD),
            read_streams_forward: fill(READ_STREAMS_FORWARD),
            read_all_forward: fill(READ_ALL_FORWARD),
            select_stream_version: fill(SELECT_STREAM_VERSION),
            select_events_by_id: fill(SELECT_EVENTS_BY_ID),
            select_schema_version: fill(SELECT_SCHEMA_VERSION),
            create_schema: fill(CREATE_SCHEMA),
            create_migrations_table: fill(CREATE_MIGRATIONS_TABLE),
            set_local_search_path: fill(SET_LOCAL_SEARCH_PATH),
            insert_migration: fill(INSERT_MIGRATION),
            select_stats: fill(SELECT_STATS),
            select_checkpoint: fill(SELECT_CHECKPOINT),
            select_head_position: fill(SELECT_HEAD_POSITION),
            bump_lease_generation: fill(BUMP_LEASE_GENERATION),
            save_checkpoint: fill(SAVE_CHECKPOINT),
            reset_checkpoint: fill(RESET_CHECKPOINT),
            select_checkpoint_for_update: fill(SELECT_CHECKPOINT_FOR_UPDATE),
            select_skip_target: fill(SELECT_SKIP_TARGET),
            insert_projection_skip: fill(INSERT_PROJECTION_SKIP),
            select_projection_skips: fill(SELECT_PROJECTION_SKIPS),
        }
    }
}
