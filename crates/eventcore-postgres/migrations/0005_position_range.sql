-- EventCore schema, version 5: positions never wrap.
--
-- A global position is (writing transaction's xid8 << 20) + index in a
-- signed 64-bit column (docs/adr/0001-global-order.md), so it can encode
-- transaction ids up to 2^43 - 1 = 8,796,093,022,207 (epoch 2047 of
-- PostgreSQL's 64-bit transaction id). BIGINT's << does not check for
-- overflow: past that id (one `pg_resetwal -e 2048` is enough) positions
-- came out negative, and from epoch 4096 on small and positive, sorting
-- before every event already stored. Every statement that computes a
-- position now evaluates
--
--     CASE WHEN pg_current_xact_id() < '8796093022208'::xid8
--          THEN pg_current_xact_id()::text::bigint << 20
--          ELSE refuse_position_overflow() END
--
-- (src/sql.rs for the single-stream statements, append_to_streams below):
-- the function only runs past the range, where it refuses the write with
-- SQLSTATE EC003, which the store maps to PostgresError::PositionsExhausted.

CREATE FUNCTION refuse_position_overflow() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transaction id % is past the largest one a global position can encode (8796093022207): write refused',
        pg_current_xact_id()
        USING ERRCODE = 'EC003',
              HINT = 'see "Backup and restore" in docs/operations.md of eventcore-postgres';
END
$$;

-- As in migration 3, but with the guarded base position.
CREATE OR REPLACE FUNCTION append_to_streams(
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
                base_position := CASE WHEN pg_current_xact_id() < '8796093022208'::xid8
                                      THEN pg_current_xact_id()::text::bigint << 20
                                      ELSE refuse_position_overflow() END;
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
