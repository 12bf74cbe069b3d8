-- select_events_by_id: after a conflict or a duplicate event id, to tell a
-- re-send of an earlier append from a genuine clash.
--
-- $1  event ids    uuid[]
--
-- One row per stored id: id, stream, stream version, global position.
SELECT event_id, stream_id, stream_version, global_position
FROM {schema}.events
WHERE event_id = ANY ($1)
