-- EventCore schema, version 7: what operators see and do.

-- Why a projection's runner last stopped on an error (recorded by the
-- runner, `CheckpointStore::record_error`), and an operator's request that
-- the next runner rebuild the projection (`eventcore projections rebuild`;
-- the runner resets its read model, then the checkpoint, which clears it).
ALTER TABLE projection_checkpoints
    ADD COLUMN last_error TEXT,
    ADD COLUMN last_error_position BIGINT,
    ADD COLUMN last_error_at TIMESTAMPTZ,
    ADD COLUMN rebuild_requested_at TIMESTAMPTZ;

-- Every reset, rebuild request and skip an operator made: who (role,
-- client address, application), when, what the checkpoint was before and
-- after, and whether a running runner was fenced out (forced).
CREATE TABLE projection_operations (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY,
    projection         TEXT        NOT NULL,
    action             TEXT        NOT NULL,
    forced             BOOLEAN     NOT NULL,
    displaced_runner   TEXT,
    checkpoint_before  BIGINT,
    checkpoint_after   BIGINT,
    event_position     BIGINT,
    reason             TEXT        NOT NULL,
    performed_by       TEXT        NOT NULL,
    performed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projection_operations_pkey PRIMARY KEY (id)
);

CREATE INDEX projection_operations_projection_idx ON projection_operations (projection, id);
