-- EventCore schema, version 2: projection checkpoints and skipped events.

-- The last global position each projection has finished. A projection that
-- keeps its read model in this database can update its row in the same
-- transaction as the read model for an exactly-once effect.
CREATE TABLE projection_checkpoints (
    projection  TEXT        NOT NULL,
    position    BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (projection)
);

-- Events a projection skipped under its Skip error strategy: the audit
-- trail that keeps a poison event from vanishing silently.
CREATE TABLE projection_skips (
    id           BIGINT GENERATED ALWAYS AS IDENTITY,
    projection   TEXT        NOT NULL,
    position     BIGINT      NOT NULL,
    stream_id    TEXT        NOT NULL,
    error        TEXT        NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projection_skips_pkey PRIMARY KEY (id)
);

CREATE INDEX projection_skips_projection_idx ON projection_skips (projection, position);
