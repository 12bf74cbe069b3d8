-- select_conflict_states: after append_to_streams raised a failed
-- expectation (SQLSTATE EC002, nothing written).
--
-- $1  the request's streams    text[]
-- $2  its event ids            uuid[]
--
-- One row: each stream's version (0 if it does not exist) in $1's order,
-- and whether any of the ids is already stored (a re-send of an append
-- whose acknowledgement was lost).
SELECT
    (SELECT array_agg(coalesce(es.version, 0) ORDER BY s.i)
       FROM unnest($1::text[]) WITH ORDINALITY AS s(stream_id, i)
       LEFT JOIN {schema}.event_streams es ON es.stream_id = s.stream_id),
    EXISTS (SELECT 1 FROM {schema}.events WHERE event_id = ANY ($2))
