-- EventCore schema, version 3: projection runner leases as rows.
--
-- Behind a transaction-mode pooler (PgBouncer) a session advisory lock
-- stays on a server connection that other clients then use, so a runner of
-- such a store holds its lease as a row: a holder, and an expiry on the
-- server's clock that the holder renews (src/lease_row.rs). Whoever takes
-- an expired row bumps the generation in projection_checkpoints, the fence
-- of every checkpoint write, exactly as an advisory-lock runner does.
CREATE TABLE projection_leases (
    projection   TEXT        NOT NULL,
    -- One value per taking of the lease: a renewal or release by an
    -- earlier holder finds no row.
    holder       UUID        NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    acquired_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    renewed_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- Who holds it, for operators: the session that took it (behind a
    -- pooler, the client address is the pooler's).
    application  TEXT        NOT NULL,
    client       TEXT        NOT NULL,
    role         TEXT        NOT NULL,
    CONSTRAINT projection_leases_pkey PRIMARY KEY (projection)
);
