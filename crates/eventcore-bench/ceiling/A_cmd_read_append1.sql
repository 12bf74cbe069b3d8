\set s random(1, 10000)
SELECT global_position, event_id, stream_id, stream_version AS ev, event_type, event_data, metadata, created_at
FROM events WHERE stream_id = 'stream-' || :s AND stream_version >= 1
ORDER BY stream_version LIMIT 5000 \aset
WITH st AS (
  INSERT INTO event_streams AS es (stream_id, version) VALUES ('stream-' || :s, :ev::bigint + 1)
  ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version WHERE es.version = :ev::bigint
  RETURNING es.version)
INSERT INTO events (event_id, stream_id, stream_version, event_type, event_data, metadata)
VALUES (gen_random_uuid(), 'stream-' || :s,
        coalesce((SELECT version FROM st), wrong_expected_version('stream-' || :s)),
        'OrderPlaced', :payload::jsonb, :meta::jsonb);
