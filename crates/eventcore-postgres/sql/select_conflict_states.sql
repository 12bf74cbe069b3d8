-- select_conflict_states: after an append found a failed expectation
-- (nothing written).
--
-- $1  the request's streams    text[]
-- $2  its event ids            uuid[]
--
-- One row: each stream's version (0 if it does not exist) in $1's order,
-- and whether any of the ids is already stored (a re-send of an append
-- whose acknowledgement was lost).
--
-- Each version is a scalar subquery by primary key, over the array's
-- subscripts. The plain form (unnest($1) LEFT JOIN event_streams) gets a
-- cheaper custom plan than its generic one for every short array, so
-- PostgreSQL planned it again at every execution: on a hot stream, where
-- most appends conflict, 40 % more server CPU per attempt (ADR 0002). This
-- form costs the same either way, and the generic plan is kept.
SELECT
    ARRAY(SELECT coalesce((SELECT es.version FROM {schema}.event_streams es
                            WHERE es.stream_id = $1[i]), 0)
            FROM generate_subscripts($1::text[], 1) AS i
           ORDER BY i),
    EXISTS (SELECT 1 FROM {schema}.events WHERE event_id = ANY ($2))
