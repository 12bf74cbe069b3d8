\set a random(1, 10000)
\set b 1 + (:a + random(0, 9998)) % 10000
\set lo least(:a, :b)
\set hi greatest(:a, :b)
SELECT global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, created_at,
       max(stream_version) FILTER (WHERE stream_id = 'stream-' || :lo) OVER () AS evlo,
       max(stream_version) FILTER (WHERE stream_id = 'stream-' || :hi) OVER () AS evhi
FROM events WHERE stream_id = ANY (ARRAY['stream-' || :lo, 'stream-' || :hi]) AND stream_version >= 1
ORDER BY stream_id, stream_version LIMIT 5000 \aset
BEGIN;
WITH st AS (
  INSERT INTO event_streams AS es (stream_id, version) VALUES ('stream-' || :lo, :evlo::bigint + 1)
  ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version WHERE es.version = :evlo::bigint
  RETURNING es.version)
INSERT INTO events (event_id, stream_id, stream_version, event_type, event_data, metadata)
VALUES (gen_random_uuid(), 'stream-' || :lo,
        coalesce((SELECT version FROM st), wrong_expected_version('stream-' || :lo)),
        'FundsDebited', :payload::jsonb, :meta::jsonb);
WITH st AS (
  INSERT INTO event_streams AS es (stream_id, version) VALUES ('stream-' || :hi, :evhi::bigint + 1)
  ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version WHERE es.version = :evhi::bigint
  RETURNING es.version)
INSERT INTO events (event_id, stream_id, stream_version, event_type, event_data, metadata)
VALUES (gen_random_uuid(), 'stream-' || :hi,
        coalesce((SELECT version FROM st), wrong_expected_version('stream-' || :hi)),
        'FundsCredited', :payload::jsonb, :meta::jsonb);
COMMIT;
