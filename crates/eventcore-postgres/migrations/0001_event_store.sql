-- EventCore schema, version 1.
--
-- Runs inside initialize()'s transaction with search_path set to the
-- configured schema, so names here are unqualified. Functions pin that
-- search_path (SET search_path FROM CURRENT) so they find their tables
-- whatever the caller's search_path is.

-- One row per stream: its current version (= number of events). Appends lock
-- these rows (never the events) to serialise writers of a stream. A row at
-- version 0 is a placeholder: a stream that was checked, never written.
CREATE TABLE event_streams (
    stream_id   TEXT        NOT NULL,
    version     BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT event_streams_pkey PRIMARY KEY (stream_id),
    CONSTRAINT event_streams_stream_id_check CHECK (octet_length(stream_id) BETWEEN 1 AND 255),
    CONSTRAINT event_streams_version_check CHECK (version >= 0)
);

-- The log. global_position = (writing transaction's xid8 << 20) + the
-- event's index within that append (see docs/adr/0001-global-order.md):
-- ordering by it orders by transaction id, then by position inside the
-- transaction, and readers only read below the oldest running transaction.
CREATE TABLE events (
    global_position BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    event_data      JSONB       NOT NULL,
    metadata        JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_stream_version_check CHECK (stream_version > 0),
    CONSTRAINT events_event_type_check CHECK (event_type <> '')
);

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

-- Appends to several streams, or with check-only streams, in one round trip
-- and one implicit transaction. (A single-stream append with no check-only
-- streams takes a one-statement fast path instead: APPEND_TO_STREAM in
-- src/sql.rs.)
--
-- $1 p_streams          every stream of the request (written or check-only)
-- $2 p_expected         per stream: -1 any, -2 no stream, -3 stream exists, n >= 0 exact
-- $3 p_event_streams    per event: its stream (events grouped by stream, in order)
-- $4 p_event_ids        per event: id
-- $5 p_event_types      per event: type name
-- $6 p_schema_versions  per event: schema version
-- $7 p_data             per event: payload
-- $8 p_metadata         per event: metadata
--
-- Returns conflict_index = 0, base_position and versions (per stream, after
-- the append) on success. On a failed expectation nothing is written:
-- conflict_index is the 1-based index of the stream, actual_version its
-- version, and id_seen says whether any of the event ids is already stored
-- (the request may be a re-send of an append whose acknowledgement was
-- lost; the client then checks).
--
-- Concurrency: every stream row is locked FOR UPDATE, in stream-id order,
-- before any version is read. Streams that do not exist yet get a version-0
-- placeholder row first, so there is always a row to lock: a concurrent
-- creator of a checked stream waits instead of slipping past the check.
-- One global lock order means no deadlocks; row locks mean no SERIALIZABLE
-- aborts and no write skew. Single-stream appends lock just their one row.
CREATE FUNCTION append_events(
    p_streams         TEXT[],
    p_expected        BIGINT[],
    p_event_streams   TEXT[],
    p_event_ids       UUID[],
    p_event_types     TEXT[],
    p_schema_versions INTEGER[],
    p_data            JSONB[],
    p_metadata        JSONB[],
    OUT conflict_index INTEGER,
    OUT actual_version BIGINT,
    OUT base_position  BIGINT,
    OUT versions       BIGINT[],
    OUT id_seen        BOOLEAN
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Custom plans are re-planned on every call (the array parameters make
-- them look attractive); planning cost more than the statements themselves.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    current_versions BIGINT[];
    expected BIGINT;
    actual BIGINT;
BEGIN
    INSERT INTO event_streams (stream_id, version)
    SELECT s, 0 FROM unnest(p_streams) AS s ORDER BY s COLLATE "C"
    ON CONFLICT (stream_id) DO NOTHING;

    -- A new statement, so a new snapshot: FOR UPDATE waits for competing
    -- writers and then returns the rows as they committed.
    WITH locked AS (
        SELECT es.stream_id, es.version
        FROM event_streams es
        WHERE es.stream_id = ANY (p_streams)
        ORDER BY es.stream_id COLLATE "C"
        FOR UPDATE
    )
    SELECT array_agg(l.version ORDER BY r.i)
    INTO current_versions
    FROM unnest(p_streams) WITH ORDINALITY AS r(s, i)
    JOIN locked l ON l.stream_id = r.s;

    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        expected := p_expected[i];
        actual := current_versions[i];
        IF NOT (expected = -1
                OR (expected = -2 AND actual = 0)
                OR (expected = -3 AND actual > 0)
                OR expected = actual) THEN
            conflict_index := i;
            actual_version := actual;
            id_seen := EXISTS (SELECT 1 FROM events WHERE event_id = ANY (p_event_ids));
            RETURN;
        END IF;
    END LOOP;

    conflict_index := 0;
    versions := current_versions;
    IF coalesce(array_length(p_event_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;

    base_position := pg_current_xact_id()::text::bigint << 20;

    INSERT INTO events (global_position, event_id, stream_id, stream_version,
                        event_type, schema_version, event_data, metadata)
    SELECT base_position + e.n,
           e.id,
           e.s,
           cur.v + row_number() OVER (PARTITION BY e.s ORDER BY e.n),
           e.t, e.sv, e.d, e.m
    FROM unnest(p_event_streams, p_event_ids, p_event_types, p_schema_versions, p_data, p_metadata)
         WITH ORDINALITY AS e(s, id, t, sv, d, m, n)
    JOIN unnest(p_streams, current_versions) AS cur(s, v) ON cur.s = e.s;

    SELECT array_agg(cur.v + coalesce(w.n, 0) ORDER BY cur.i)
    INTO versions
    FROM unnest(p_streams, current_versions) WITH ORDINALITY AS cur(s, v, i)
    LEFT JOIN (SELECT s, count(*) AS n FROM unnest(p_event_streams) AS s GROUP BY s) w
           ON w.s = cur.s;

    UPDATE event_streams es
    SET version = w.v, updated_at = now()
    FROM unnest(p_streams, versions, current_versions) AS w(s, v, old)
    WHERE es.stream_id = w.s AND w.v > w.old;
END
$$;
