-- append_one_to_new_stream: the single-stream fast path for one event on a
-- stream that may be new (expected any, no stream, or exactly 0). One
-- statement instead of a call of append_to_streams, which measured
-- 26 % more appends/s in scenario A16 (docs/adr/0002-stream-row-locks.md).
-- The check and bump are append_to_streams' for such a stream.
--
-- $1  stream id                                text
-- $2  expected version code (-1 any, -2 no stream, 0 exact)   bigint
-- $3  event count, 1                           bigint
-- $4  event id                                 uuid
-- $5  event type                               text
-- $6  schema version                           int
-- $7  payload                                  jsonb
-- $8  occurred_at                              timestamptz
-- $9  correlation id                           uuid
-- $10 causation id (NULL: none)                uuid
-- $11 custom metadata                          jsonb
--
-- The event's position and the stream's new version; no row if the
-- expectation failed (nothing written). The stream row is the lock:
-- ON CONFLICT DO UPDATE waits for a competing writer, then re-checks its
-- condition against the committed row.
WITH v AS (
    INSERT INTO {schema}.event_streams AS es (stream_id, version) VALUES ($1, $3::bigint)
    ON CONFLICT (stream_id) DO UPDATE SET version = es.version + $3::bigint, updated_at = now()
    WHERE $2::bigint = -1 OR es.version = 0
    RETURNING es.version
)
INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type,
                             schema_version, event_data, occurred_at, correlation_id,
                             causation_id, metadata)
SELECT (CASE WHEN pg_current_xact_id() < '8796093022208'::xid8
             THEN pg_current_xact_id()::text::bigint << 20
             ELSE {schema}.refuse_position_overflow() END) + 1,
       $4, $1, v.version, $5, $6, $7, $8, $9, $10, $11
FROM v
RETURNING global_position, stream_version
