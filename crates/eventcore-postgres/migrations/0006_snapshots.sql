-- EventCore schema, version 6: durable snapshots of command state.
--
-- One row per state type (its snapshot name), state schema version and
-- stream: the state folded from the stream's events up to stream_version.
-- The state version is part of the key, so a release that changed a
-- state's shape ignores the old rows (and two releases running side by
-- side during a deploy keep their own). Rows are a cache of what the
-- events already say: deleting any of them is always safe.
CREATE TABLE snapshots (
    state           TEXT        NOT NULL,
    state_version   INTEGER     NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    data            JSONB       NOT NULL,
    taken_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (state, state_version, stream_id)
);
