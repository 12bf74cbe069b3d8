-- append_to_new_stream: the single-stream fast path for several events on
-- a stream that may be new (see append_one_to_new_stream.sql).
--
-- $1  stream id                                text
-- $2  expected version code (-1, -2 or 0)      bigint
-- $3  event count                              bigint
-- $4  event ids                                uuid[]
-- $5  event types                              text[]
-- $6  schema versions                          int[]
-- $7  payloads                                 jsonb[]
-- $8  occurred_at                              timestamptz[]
-- $9  correlation ids                          uuid[]
-- $10 causation ids (NULL: none)               uuid[]
-- $11 custom metadata                          jsonb[]
--
-- One row: the stream's new version and the first event's position, both
-- NULL if the expectation failed (nothing written).
WITH v AS (
    INSERT INTO {schema}.event_streams AS es (stream_id, version) VALUES ($1, $3::bigint)
    ON CONFLICT (stream_id) DO UPDATE SET version = es.version + $3::bigint, updated_at = now()
    WHERE $2::bigint = -1 OR es.version = 0
    RETURNING es.version
), appended AS (
    INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type,
                                 schema_version, event_data, occurred_at, correlation_id,
                                 causation_id, metadata)
    SELECT (CASE WHEN pg_current_xact_id() < '8796093022208'::xid8
                 THEN pg_current_xact_id()::text::bigint << 20
                 ELSE {schema}.refuse_position_overflow() END) + e.n,
           e.id, $1, v.version - $3::bigint + e.n, e.t, e.sv, e.d, e.oa, e.ci, e.ca, e.m
    FROM v, unnest($4::uuid[], $5::text[], $6::int[], $7::jsonb[], $8::timestamptz[],
                   $9::uuid[], $10::uuid[], $11::jsonb[])
            WITH ORDINALITY AS e(id, t, sv, d, oa, ci, ca, m, n)
    RETURNING global_position
)
SELECT (SELECT version FROM v) AS version,
       (SELECT min(global_position) FROM appended) AS first_position
