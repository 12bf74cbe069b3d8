-- EventCore schema, version 4: fenced projection leases.
--
-- A runner that takes a projection's lease bumps the row's generation, in
-- a statement that locks the row: it waits for a checkpoint transaction of
-- the previous runner still in flight. Checkpoint writes compare the
-- generation their runner took, in the caller's transaction, so a runner
-- that lost its lease can no longer commit (src/projection.rs).
ALTER TABLE projection_checkpoints ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- The row exists from the first lease on; until a checkpoint is saved (and
-- after a reset, which keeps the generation) it has no position.
ALTER TABLE projection_checkpoints ALTER COLUMN position DROP NOT NULL;

-- A row that cannot be read may have no valid stream id to record.
ALTER TABLE projection_skips ALTER COLUMN stream_id DROP NOT NULL;
