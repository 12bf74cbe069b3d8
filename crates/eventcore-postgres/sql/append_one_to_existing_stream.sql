-- append_one_to_existing_stream: the single-stream fast path for one event
-- on a stream that must exist (expected exactly n > 0, or stream exists).
-- See append_one_to_new_stream.sql for why it is not a call of
-- append_to_streams; the check and bump are that function's for such a
-- stream.
--
-- $1  stream id                                text
-- $2  expected version code (n > 0 exact, -3 stream exists)   bigint
-- $3  event count, 1                           bigint
-- $4..$11 as in append_one_to_new_stream.sql
--
-- The event's position and the stream's new version; no row if the
-- expectation failed. UPDATE in READ COMMITTED waits for a competing
-- writer and re-evaluates its WHERE on the committed row.
WITH v AS (
    UPDATE {schema}.event_streams es SET version = es.version + $3::bigint, updated_at = now()
    WHERE es.stream_id = $1 AND (($2::bigint = -3 AND es.version > 0) OR es.version = $2::bigint)
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
