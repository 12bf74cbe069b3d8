SELECT global_position, event_id, stream_id, stream_version, event_type, event_data, occurred_at, correlation_id, causation_id, metadata, created_at,
       max(stream_version) FILTER (WHERE stream_id = 'stream-' || :lo) OVER () AS evlo,
       max(stream_version) FILTER (WHERE stream_id = 'stream-' || :hi) OVER () AS evhi
FROM events WHERE stream_id = ANY (ARRAY['stream-' || :lo, 'stream-' || :hi]) AND stream_version >= 1
ORDER BY stream_id, stream_version LIMIT 5000 \aset
