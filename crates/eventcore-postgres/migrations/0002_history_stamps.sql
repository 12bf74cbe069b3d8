-- EventCore schema, version 2: which history of the cluster a checkpoint
-- belongs to. Positions encode transaction ids, and a failover to an
-- asynchronous standby can hand the ids of lost commits out again, so a
-- checkpoint is stamped with the cluster's system identifier and timeline
-- (the one being written, from the current WAL file's name) and refused
-- on another history (see src/history.rs, docs/operations.md).
ALTER TABLE projection_checkpoints
    ADD COLUMN system_identifier BIGINT,
    ADD COLUMN timeline INTEGER;

-- Existing checkpoints were taken on the history the store runs on now.
UPDATE projection_checkpoints
   SET system_identifier = (SELECT system_identifier FROM pg_control_system()),
       timeline = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
 WHERE position IS NOT NULL;
