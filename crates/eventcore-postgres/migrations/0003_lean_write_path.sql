-- EventCore schema, version 3: a leaner write path.
--
-- PostgreSQL re-reads and re-plans every CHECK expression of a table for
-- each statement that writes it (ExecConstraints -> stringToNode ->
-- ExecPrepareExpr; nothing is cached across statements). Profiled with 16
-- writers, the four checks below cost 8-10 % of the server's CPU per
-- single-event append, for values the append statements compute themselves:
-- versions are the locked row's version plus a positive count, stream ids
-- and event types are validated by the client library (StreamId, Event).
--
-- What the database still enforces on its own: one event per stream version
-- (events_stream_version_key), unique event ids (events_event_id_key),
-- unique positions (events_pkey), NOT NULL everywhere, and append-only
-- events (the events_append_only and events_no_truncate triggers).

ALTER TABLE event_streams
    DROP CONSTRAINT event_streams_stream_id_check,
    DROP CONSTRAINT event_streams_version_check;

ALTER TABLE events
    DROP CONSTRAINT events_stream_version_check,
    DROP CONSTRAINT events_event_type_check;

-- No planner statistics on the payload columns. Autovacuum analyzes the
-- events table every ~10 % of growth, and sorting sampled JSONB values
-- (compareJsonbContainers) is most of each ANALYZE: it showed up as ~10 %
-- of the server's CPU in one profile of a growing store, and ANALYZE of
-- 200,000 events took 200-265 ms with these statistics, 143 ms without. No
-- statement of the store filters on these columns; an application that
-- queries payloads in SQL and wants statistics can SET STATISTICS back to -1.
ALTER TABLE events
    ALTER COLUMN event_data SET STATISTICS 0,
    ALTER COLUMN metadata SET STATISTICS 0;

-- Multi-stream appends (and appends with check-only streams) get a lean
-- replacement for append_events. The old function locked every row with one
-- query, then checked, inserted through unnest and a window function, and
-- updated through another unnest: with 16 writers it cost ~30 % more server
-- CPU per two-stream append than the statements below run by hand. This
-- one runs, per stream, the same check-and-bump as the single-stream path, in
-- the order the client gives (stream-id order: one global lock order, so no
-- deadlocks), in one round trip and one implicit transaction.
DROP FUNCTION append_events(TEXT[], BIGINT[], TEXT[], UUID[], TEXT[], INTEGER[], JSONB[], JSONB[]);

-- $1 p_streams          the request's streams, in lock order (sorted by id)
-- $2 p_expected         per stream: -1 any, -2 no stream, -3 stream exists, n >= 0 exact
-- $3 p_counts           per stream: how many events it gets (0 = check only)
-- $4 p_offsets          per stream: how many of the append's events precede its own
-- $5 p_event_ids .. $9  per event, in the request's order: id, type, schema
--                       version, payload, metadata
--
-- Returns base_position (positions are base_position + 1 .. + n, NULL when
-- nothing is written) and versions (per stream, after the append). A failed
-- expectation raises SQLSTATE EC002 and everything is rolled back; the
-- client then reads the actual versions.
CREATE FUNCTION append_to_streams(
    p_streams         TEXT[],
    p_expected        BIGINT[],
    p_counts          INTEGER[],
    p_offsets         INTEGER[],
    p_event_ids       UUID[],
    p_event_types     TEXT[],
    p_schema_versions INTEGER[],
    p_data            JSONB[],
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
    base BIGINT;
BEGIN
    versions := p_expected;
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        n := p_counts[i];
        e := p_expected[i];
        v := NULL;
        IF n = 0 THEN
            -- Check only: lock the row (a version-0 placeholder if the
            -- stream does not exist, so a concurrent creator waits) and
            -- compare. Only DO UPDATE locks and returns an existing row.
            INSERT INTO event_streams AS es (stream_id, version) VALUES (p_streams[i], 0)
            ON CONFLICT (stream_id) DO UPDATE SET version = es.version
            RETURNING es.version INTO v;
            IF NOT (e = -1 OR (e = -2 AND v = 0) OR (e = -3 AND v > 0) OR e = v) THEN
                v := NULL;
            END IF;
        ELSE
            IF base_position IS NULL THEN
                base_position := pg_current_xact_id()::text::bigint << 20;
            END IF;
            base := base_position + p_offsets[i];
            IF e > 0 OR e = -3 THEN
                -- The stream must exist: UPDATE waits for a competing
                -- writer and re-checks its WHERE on the committed row.
                UPDATE event_streams es SET version = es.version + n, updated_at = now()
                WHERE es.stream_id = p_streams[i]
                  AND ((e = -3 AND es.version > 0) OR es.version = e)
                RETURNING es.version INTO v;
            ELSE
                -- Any, no stream, or exact 0: create the row or take a
                -- placeholder; ON CONFLICT waits and re-checks likewise.
                INSERT INTO event_streams AS es (stream_id, version) VALUES (p_streams[i], n)
                ON CONFLICT (stream_id) DO UPDATE SET version = es.version + n, updated_at = now()
                WHERE e = -1 OR es.version = 0
                RETURNING es.version INTO v;
            END IF;
            IF v IS NOT NULL THEN
                INSERT INTO events (global_position, event_id, stream_id, stream_version,
                                    event_type, schema_version, event_data, metadata)
                SELECT base + k, p_event_ids[p_offsets[i] + k], p_streams[i], v - n + k,
                       p_event_types[p_offsets[i] + k], p_schema_versions[p_offsets[i] + k],
                       p_data[p_offsets[i] + k], p_metadata[p_offsets[i] + k]
                FROM generate_series(1, n) AS k;
            END IF;
        END IF;
        IF v IS NULL THEN
            RAISE EXCEPTION 'expected version failed on stream %', p_streams[i]
                USING ERRCODE = 'EC002';
        END IF;
        versions[i] := v;
    END LOOP;
END
$$;
