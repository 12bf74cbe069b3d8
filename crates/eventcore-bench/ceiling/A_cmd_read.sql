SELECT global_position, event_id, stream_id, stream_version AS ev, event_type, event_data, occurred_at, correlation_id, causation_id, metadata, created_at
FROM events WHERE stream_id = 'stream-' || :s AND stream_version >= 1
ORDER BY stream_version LIMIT 5000 \aset
