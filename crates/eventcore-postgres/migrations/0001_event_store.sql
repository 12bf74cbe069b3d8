-- EventCore schema, version 1.
--
-- Runs inside initialize()'s transaction with search_path set to the
-- configured schema, so names here are unqualified. Functions pin that
-- search_path (SET search_path FROM CURRENT) so they find their tables
-- whatever the caller's search_path is. Later changes go into new numbered
-- files; a file that has shipped is never edited.

-- ----- streams and events ------------------------------------------------

-- One row per stream: its current version (= number of events). Appends lock
-- these rows (never the events) to serialise writers of a stream. A row at
-- version 0 is a placeholder: a stream that was checked, never written.
CREATE TABLE event_streams (
    stream_id   TEXT        NOT NULL,
    version     BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT event_streams_pkey PRIMARY KEY (stream_id)
);

-- The log. global_position = (writing transaction's xid8 << 20) + the
-- event's index within that append (see docs/adr/0001-global-order.md):
-- ordering by it orders by transaction id, then by position inside the
-- transaction, and readers only read below the oldest running transaction.
--
-- occurred_at, correlation_id and causation_id are the writer's metadata;
-- metadata holds its custom entries (a JSON object, '{}' when there are
-- none). created_at is the commit side's own time.
--
-- There are no CHECK constraints: PostgreSQL re-plans every CHECK
-- expression for each statement that writes the table, which cost 8-10 %
-- of the server's CPU per single-event append, for values the append
-- function computes itself (versions) or the client validates (stream ids,
-- type names). The database enforces on its own: one event per stream
-- version, unique event ids, unique positions, NOT NULL, and append-only
-- events (the triggers below).
CREATE TABLE events (
    global_position BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    event_data      JSONB       NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    correlation_id  UUID        NOT NULL,
    causation_id    UUID,
    metadata        JSONB       NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- Every event of one originating request.
CREATE INDEX events_correlation_id_idx ON events (correlation_id);

-- No planner statistics on the JSON columns: sorting sampled jsonb values
-- was most of each autovacuum ANALYZE of a growing store (~10 % of the
-- server's CPU in one profile), and no statement of the store filters on
-- them. An application that queries them in SQL and wants statistics can
-- SET STATISTICS back to -1.
ALTER TABLE events
    ALTER COLUMN event_data SET STATISTICS 0,
    ALTER COLUMN metadata SET STATISTICS 0;

-- Events are facts: refuse UPDATE, DELETE and TRUNCATE. SQLSTATE EC001 lets
-- clients recognise the refusal without reading the message.
CREATE FUNCTION refuse_event_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP
        USING ERRCODE = 'EC001', HINT = 'create a new event that corrects the old one';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_event_mutation();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_mutation();

-- ----- appending ---------------------------------------------------------

-- A position is a transaction id << 20 in a signed 64-bit column, so it can
-- encode transaction ids up to 2^43 - 1 = 8,796,093,022,207 (epoch 2047 of
-- PostgreSQL's 64-bit transaction id). BIGINT's << does not check for
-- overflow: past that id positions would come out negative, or from epoch
-- 4096 on small and positive, sorting before every stored event. Where
-- append_to_streams computes a position it evaluates this function only
-- past the range, where it refuses the write with SQLSTATE EC003.
CREATE FUNCTION refuse_position_overflow() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transaction id % is past the largest one a global position can encode (8796093022207): write refused',
        pg_current_xact_id()
        USING ERRCODE = 'EC003',
              HINT = 'see "Backup and restore" in docs/operations.md of eventcore-postgres';
END
$$;

-- Every append: the request's streams checked and bumped, its events
-- inserted, in one round trip and one transaction.
--
-- $1  p_streams          the request's streams, in lock order (sorted by id)
-- $2  p_expected         per stream, the expected version:
--                          -1 any, -2 no stream, -3 stream exists, n >= 0 exactly n
-- $3  p_counts           per stream: how many events it gets (0 = check only)
-- $4  p_offsets          per stream: how many of the append's events precede its own
-- $5  p_event_ids        per event, in the request's order: id
-- $6  p_event_types        type name
-- $7  p_schema_versions    schema version
-- $8  p_data               payload
-- $9  p_occurred_at        the writer's time
-- $10 p_correlation_ids    correlation id
-- $11 p_causation_ids      causation id (NULL: none)
-- $12 p_metadata           custom metadata (a JSON object)
--
-- Returns base_position (positions are base_position + 1 .. + n, NULL when
-- nothing is written) and versions (per stream, after the append). A failed
-- expectation raises SQLSTATE EC002 and everything is rolled back; the
-- client then reads the actual versions.
--
-- Concurrency: the stream rows are the locks, taken in the order given
-- (stream-id order: one global lock order, so no deadlocks; see
-- docs/adr/0002-stream-row-locks.md). A stream's UPDATE or
-- INSERT .. ON CONFLICT waits for a competing writer, then re-checks its
-- condition against the committed row, so a stale expectation matches no
-- row. A check-only stream that does not exist gets a version-0
-- placeholder row, so a concurrent creator waits instead of slipping past
-- the check.
CREATE FUNCTION append_to_streams(
    p_streams         TEXT[],
    p_expected        BIGINT[],
    p_counts          INTEGER[],
    p_offsets         INTEGER[],
    p_event_ids       UUID[],
    p_event_types     TEXT[],
    p_schema_versions INTEGER[],
    p_data            JSONB[],
    p_occurred_at     TIMESTAMPTZ[],
    p_correlation_ids UUID[],
    p_causation_ids   UUID[],
    p_metadata        JSONB[],
    OUT base_position BIGINT,
    OUT versions      BIGINT[]
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Generic plans: custom ones would be re-planned on every call.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    i INTEGER;
    n INTEGER;
    e BIGINT;
    v BIGINT;
    o INTEGER;
BEGIN
    versions := p_expected;
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        n := p_counts[i];
        e := p_expected[i];
        v := NULL;
        IF n = 0 THEN
            -- Check only: lock the row and compare. Only DO UPDATE locks
            -- and returns an existing row.
            INSERT INTO event_streams AS es (stream_id, version) VALUES (p_streams[i], 0)
            ON CONFLICT (stream_id) DO UPDATE SET version = es.version
            RETURNING es.version INTO v;
            IF NOT (e = -1 OR (e = -2 AND v = 0) OR (e = -3 AND v > 0) OR e = v) THEN
                v := NULL;
            END IF;
        ELSIF e > 0 OR e = -3 THEN
            -- The stream must exist.
            UPDATE event_streams es SET version = es.version + n, updated_at = now()
            WHERE es.stream_id = p_streams[i]
              AND ((e = -3 AND es.version > 0) OR es.version = e)
            RETURNING es.version INTO v;
        ELSE
            -- Any, no stream, or exactly 0: create the row or take a
            -- placeholder.
            INSERT INTO event_streams AS es (stream_id, version) VALUES (p_streams[i], n)
            ON CONFLICT (stream_id) DO UPDATE SET version = es.version + n, updated_at = now()
            WHERE e = -1 OR es.version = 0
            RETURNING es.version INTO v;
        END IF;
        IF v IS NULL THEN
            RAISE EXCEPTION 'expected version failed on stream %', p_streams[i]
                USING ERRCODE = 'EC002';
        END IF;
        IF n > 0 THEN
            IF base_position IS NULL THEN
                base_position := CASE WHEN pg_current_xact_id() < '8796093022208'::xid8
                                      THEN pg_current_xact_id()::text::bigint << 20
                                      ELSE refuse_position_overflow() END;
            END IF;
            o := p_offsets[i];
            INSERT INTO events (global_position, event_id, stream_id, stream_version,
                                event_type, schema_version, event_data,
                                occurred_at, correlation_id, causation_id, metadata)
            SELECT base_position + o + k, p_event_ids[o + k], p_streams[i], v - n + k,
                   p_event_types[o + k], p_schema_versions[o + k], p_data[o + k],
                   p_occurred_at[o + k], p_correlation_ids[o + k], p_causation_ids[o + k],
                   p_metadata[o + k]
            FROM generate_series(1, n) AS k;
        END IF;
        versions[i] := v;
    END LOOP;
END
$$;

-- ----- projections -------------------------------------------------------

-- Per projection: the last global position it has finished (NULL until a
-- checkpoint is saved, and after a reset), and the generation of its lease.
-- A runner that takes the lease bumps the generation in a statement that
-- locks the row, so it waits for a checkpoint transaction of the previous
-- runner still in flight; checkpoint writes compare the generation their
-- runner took, in the caller's transaction, so a runner that lost its
-- lease can no longer commit (src/projection.rs). A projection whose read
-- model lives in this database updates its row in the read model's
-- transaction for an exactly-once effect.
--
-- last_error*: why its runner last stopped on an error. rebuild_requested_at:
-- an operator's request (`eventcore projections rebuild`) that the next
-- runner rebuild it; the runner resets its read model, then the checkpoint,
-- which clears it.
CREATE TABLE projection_checkpoints (
    projection            TEXT        NOT NULL,
    position              BIGINT,
    generation            BIGINT      NOT NULL DEFAULT 0,
    last_error            TEXT,
    last_error_position   BIGINT,
    last_error_at         TIMESTAMPTZ,
    rebuild_requested_at  TIMESTAMPTZ,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (projection)
);

-- Events a projection skipped (its Skip error strategy, or an operator):
-- the audit trail that keeps a poison event from vanishing silently. A row
-- that cannot be read may have no valid stream id to record.
CREATE TABLE projection_skips (
    id           BIGINT GENERATED ALWAYS AS IDENTITY,
    projection   TEXT        NOT NULL,
    position     BIGINT      NOT NULL,
    stream_id    TEXT,
    error        TEXT        NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projection_skips_pkey PRIMARY KEY (id)
);

CREATE INDEX projection_skips_projection_idx ON projection_skips (projection, position);

-- Every reset, rebuild request and skip an operator made: who (role,
-- client address, application), when, what the checkpoint was before and
-- after, and whether a running runner was fenced out (forced).
CREATE TABLE projection_operations (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY,
    projection         TEXT        NOT NULL,
    action             TEXT        NOT NULL,
    forced             BOOLEAN     NOT NULL,
    displaced_runner   TEXT,
    checkpoint_before  BIGINT,
    checkpoint_after   BIGINT,
    event_position     BIGINT,
    reason             TEXT        NOT NULL,
    performed_by       TEXT        NOT NULL,
    performed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projection_operations_pkey PRIMARY KEY (id)
);

CREATE INDEX projection_operations_projection_idx ON projection_operations (projection, id);

-- ----- snapshots ---------------------------------------------------------

-- One row per state type (its snapshot name), state schema version and
-- stream: the state folded from the stream's events up to stream_version.
-- The state version is part of the key, so a release that changed a
-- state's shape ignores the old rows (and two releases running side by
-- side during a deploy keep their own). Rows are a cache of what the
-- events already say: deleting any of them is always safe.
CREATE TABLE snapshots (
    state           TEXT        NOT NULL,
    state_version   INTEGER     NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    data            JSONB       NOT NULL,
    taken_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (state, state_version, stream_id)
);
